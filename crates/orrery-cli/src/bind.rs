//! Converting user tensors to what a component's graph takes, per the `orrery run` contract:
//! float inputs may be f32, f16 or bf16; integer inputs i64 or i32; masks also bool or u8
//! (nonzero = attend; float masks are refused); a scalar is any 0-d or 1-element numeric tensor.

use anyhow::{bail, Result};
use orrery_cpu::CpuTensor;
use orrery_ir::DType;
use orrery_models::{InputKind, InputSpec};

/// Returns the tensor in the graph's dtype for `spec` (f32, i64, i64 0/1, or f32 `[]`).
pub fn convert(spec: &InputSpec, t: &CpuTensor) -> Result<CpuTensor> {
    let expected = || format!("shape {}", spec.shape_hint);
    let dt = t.dtype();
    match spec.kind {
        InputKind::Float => {
            if !dt.is_float() {
                bail!(
                    "input `{}` is {dt}{:?}, expected a float tensor (f32, f16 or bf16) of {}",
                    spec.name,
                    t.shape(),
                    expected()
                );
            }
            Ok(to_dtype_f32(t))
        }
        InputKind::Int => {
            if !matches!(dt, DType::I64 | DType::I32) {
                bail!("input `{}` is {dt}{:?}, expected integers (i64 or i32) of {}", spec.name, t.shape(), expected());
            }
            Ok(CpuTensor::from_vec(t.shape().to_vec(), int_values(t)))
        }
        InputKind::Mask => {
            if dt.is_float() {
                bail!(
                    "input `{}` is a float mask ({dt}); pass 0/1 integers (i64, i32, u8 or bool, nonzero = attend) of {}",
                    spec.name,
                    expected()
                );
            }
            let bits = int_values(t).into_iter().map(|v| i64::from(v != 0)).collect();
            Ok(CpuTensor::from_vec(t.shape().to_vec(), bits))
        }
        InputKind::Scalar => {
            if t.numel() != 1 || dt == DType::Bool {
                bail!(
                    "input `{}` must be a single number (a 0-d or 1-element numeric tensor), got {dt}{:?}",
                    spec.name,
                    t.shape()
                );
            }
            Ok(CpuTensor::from_vec(vec![], vec![t.to_f64_vec()[0] as f32]))
        }
    }
}

/// The elements of an integer or bool tensor as i64, exactly (no trip through f64, which
/// would round ids above 2^53).
fn int_values(t: &CpuTensor) -> Vec<i64> {
    let t = t.contiguous();
    match t.dtype() {
        DType::I64 => t.data::<i64>().map(<[i64]>::to_vec),
        DType::I32 => t.data::<i32>().map(|d| d.iter().map(|&v| i64::from(v)).collect()),
        DType::U8 => t.data::<u8>().map(|d| d.iter().map(|&v| i64::from(v)).collect()),
        DType::Bool => t.bool_data().map(|d| d.iter().map(|&v| i64::from(v)).collect()),
        _ => None,
    }
    .unwrap_or_else(|| t.to_f64_vec().into_iter().map(|v| v as i64).collect())
}

fn to_dtype_f32(t: &CpuTensor) -> CpuTensor {
    if t.dtype() == DType::F32 {
        return t.contiguous();
    }
    CpuTensor::from_vec(t.shape().to_vec(), t.to_f32_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: InputKind) -> InputSpec {
        InputSpec { name: "m".into(), aliases: vec![], kind, shape_hint: "[2]".into(), optional: false }
    }

    #[test]
    fn masks_accept_integers_and_bools_but_not_floats() {
        let b = CpuTensor::from_bools(vec![2], vec![true, false]);
        let m = convert(&spec(InputKind::Mask), &b).unwrap();
        assert_eq!(m.data::<i64>().unwrap(), &[1, 0]);
        let u = CpuTensor::from_vec(vec![2], vec![0u8, 7]);
        assert_eq!(convert(&spec(InputKind::Mask), &u).unwrap().data::<i64>().unwrap(), &[0, 1]);
        let f = CpuTensor::from_vec(vec![2], vec![1f32, 0.]);
        let err = convert(&spec(InputKind::Mask), &f).unwrap_err().to_string();
        assert!(err.contains("0/1 integers"), "{err}");
    }

    #[test]
    fn large_integer_ids_survive_exactly() {
        let big = (1i64 << 53) + 1;
        let t = CpuTensor::from_vec(vec![2], vec![big, -3]);
        assert_eq!(convert(&spec(InputKind::Int), &t).unwrap().data::<i64>().unwrap(), &[big, -3]);
    }

    #[test]
    fn scalars_take_any_single_number() {
        let t = CpuTensor::from_vec(vec![1], vec![24i32]);
        let s = convert(&spec(InputKind::Scalar), &t).unwrap();
        assert_eq!(s.shape(), &[] as &[usize]);
        assert_eq!(s.data::<f32>().unwrap(), &[24.0]);
        assert!(convert(&spec(InputKind::Scalar), &CpuTensor::from_vec(vec![2], vec![1f32, 2.])).is_err());
    }

    #[test]
    fn ints_where_floats_are_expected_are_refused() {
        let t = CpuTensor::from_vec(vec![2], vec![1i64, 2]);
        let err = convert(&spec(InputKind::Float), &t).unwrap_err().to_string();
        assert!(err.contains("`m`") && err.contains("[2]"), "{err}");
    }
}
