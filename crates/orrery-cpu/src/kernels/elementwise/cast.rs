//! Casts between all seven dtypes, with the rules of the reference (`cast_value` in
//! orrery-ir): floats to f16/bf16 round to nearest even (integers go through f32 first, as in
//! torch); floats to integers truncate toward zero to i64 and then wrap like integer casts;
//! anything to bool is `x != 0`.

use super::strided::{buffer_of, map_view, tensor_from_output, with_scalar_type, Scalar};
use crate::CpuTensor;
use half::{bf16, f16};
use orrery_ir::DType;

/// How a source element enters a cast: floats as f32 (exact for f16 and bf16), integers and
/// bools as i64 (exact).
trait CastSource: Scalar {
    const IS_FLOAT: bool;
    fn to_f32(self) -> f32;
    /// Truncates floats toward zero (saturating, NaN to 0).
    fn to_i64(self) -> i64;
}

macro_rules! float_source {
    ($t:ty, $widen:expr) => {
        impl CastSource for $t {
            const IS_FLOAT: bool = true;
            #[inline(always)]
            fn to_f32(self) -> f32 {
                let widen: fn($t) -> f32 = $widen;
                widen(self)
            }
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self.to_f32() as i64
            }
        }
    };
}
float_source!(f32, |v| v);
float_source!(f16, f16::to_f32);
float_source!(bf16, bf16::to_f32);

macro_rules! int_source {
    ($t:ty) => {
        impl CastSource for $t {
            const IS_FLOAT: bool = false;
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self as i64
            }
        }
    };
}
int_source!(i64);
int_source!(i32);
int_source!(u8);

/// `x` converted to `to`; `None` when x's buffer does not hold its dtype (a corrupt tensor).
pub(super) fn cast(x: &CpuTensor, to: DType) -> Option<CpuTensor> {
    if x.dtype() == to {
        return Some(x.clone());
    }
    with_scalar_type!(x.dtype(), S => cast_from::<S>(x, to))
}

fn cast_from<S: CastSource>(x: &CpuTensor, to: DType) -> Option<CpuTensor> {
    let src = buffer_of::<S>(x)?;
    Some(match to {
        DType::F32 => convert(x, src, to, |s: S| s.to_f32()),
        DType::F16 => convert(x, src, to, |s: S| f16::from_f32(s.to_f32())),
        DType::BF16 => convert(x, src, to, |s: S| bf16::from_f32(s.to_f32())),
        DType::I64 => convert(x, src, to, |s: S| s.to_i64()),
        DType::I32 => convert(x, src, to, |s: S| s.to_i64() as i32),
        DType::U8 => convert(x, src, to, |s: S| s.to_i64() as u8),
        DType::Bool if S::IS_FLOAT => convert(x, src, to, |s: S| u8::from(s.to_f32() != 0.0)),
        DType::Bool => convert(x, src, to, |s: S| u8::from(s.to_i64() != 0)),
    })
}

fn convert<S: Scalar, D: Scalar>(x: &CpuTensor, src: &[S], to: DType, f: impl Fn(S) -> D + Sync) -> CpuTensor {
    tensor_from_output(x.shape(), to, map_view(x, src, f))
}
