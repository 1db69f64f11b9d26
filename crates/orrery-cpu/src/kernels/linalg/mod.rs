//! MatMul, Linear and Attention kernels, plus the GEMM plumbing the convolution kernels share.

mod attention;
pub(crate) mod blas;
mod fast_exp;
mod gemv;
pub(crate) use blas::{reads_bf16_weights, PackedWeight, PackedWeightA};
pub(crate) use gemv::max_rows;
pub(crate) mod matmul;
pub(crate) mod operand;
#[cfg(target_arch = "x86_64")]
mod sgemm;

use crate::{CpuError, CpuTensor};
use orrery_ir::{AttentionMask, Op, TensorType};

pub(super) fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let wrong_inputs = || CpuError::kernel(op, format!("unexpected number of inputs: {}", inputs.len()));
    match op {
        Op::MatMul { transpose_a, transpose_b } => {
            let [a, b] = inputs else { return Err(wrong_inputs()) };
            Ok(matmul::matmul(a, b, *transpose_a, *transpose_b, out))
        }
        Op::Linear { has_bias } => {
            let (x, w, bias) = match (inputs, has_bias) {
                ([x, w], false) => (x, w, None),
                ([x, w, b], true) => (x, w, Some(*b)),
                _ => return Err(wrong_inputs()),
            };
            Ok(matmul::linear(x, w, bias, out))
        }
        Op::Attention { scale, mask, layout } => {
            let (q, k, v, mask) = match (inputs, mask) {
                ([q, k, v], AttentionMask::None) => (q, k, v, None),
                ([q, k, v, m], kind) if *kind != AttentionMask::None => (q, k, v, Some((*m, *kind))),
                _ => return Err(wrong_inputs()),
            };
            Ok(attention::attention(q, k, v, mask, *scale as f32, *layout, out))
        }
        _ => Err(CpuError::kernel(op, "not a linear-algebra op")),
    }
}
