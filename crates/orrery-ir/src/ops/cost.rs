//! The cost model: FLOPs (a multiply-add counts 2) and the minimum bytes an op must move
//! (read every input once, write the output once). The compiler sums these per kernel, and
//! benchmarks compare achieved rates against them.

use super::*;
use crate::TensorType;
use serde::{Deserialize, Serialize};

/// What one op costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    pub flops: u64,
    pub bytes: u64,
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost { flops: self.flops + o.flops, bytes: self.bytes + o.bytes }
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::default(), |a, b| a + b)
    }
}

impl Op {
    /// Cost given the (already inferred) input and output types.
    pub fn cost(&self, inputs: &[TensorType], output: &TensorType) -> Cost {
        let out_n = output.shape.numel() as u64;
        let moved: u64 = inputs.iter().map(TensorType::size_bytes).sum::<u64>() + output.size_bytes();
        let flops = match self {
            Op::Unary(u) => unary_flops(*u) * out_n,
            Op::Fused(p) => p.steps.iter().map(|s| s.flops()).sum::<u64>() * out_n,
            // The base's own FLOPs plus the program's per output element; the bytes (below)
            // are every input once and the output once, as for any other op.
            Op::Epilogue { base, program, .. } => {
                let n_base = base.epilogue_base_inputs().unwrap_or(inputs.len()).min(inputs.len());
                base.cost(&inputs[..n_base], output).flops
                    + program.steps.iter().map(|s| s.flops()).sum::<u64>() * out_n
            }
            Op::Clamp { .. } => 2 * out_n,
            Op::Binary(BinaryOp::Pow) => 16 * out_n,
            Op::Binary(_) | Op::Compare(_) | Op::Where => out_n,
            Op::Reduce { .. } | Op::ArgMax { .. } => inputs[0].shape.numel() as u64,
            Op::MatMul { transpose_a, .. } => {
                let d = inputs[0].shape.dims();
                let k = if *transpose_a { d[d.len() - 2] } else { d[d.len() - 1] };
                2 * out_n * k as u64
            }
            Op::Linear { has_bias } => {
                let k = inputs[1].shape.dims()[1] as u64;
                out_n * (2 * k + u64::from(*has_bias))
            }
            Op::Softmax { .. } | Op::LogSoftmax { .. } => 12 * out_n,
            Op::LayerNorm { .. } | Op::GroupNorm { .. } => 8 * out_n,
            Op::RmsNorm { .. } => 5 * out_n,
            Op::BatchNorm { .. } => 4 * out_n,
            Op::Attention { .. } => {
                let (q, k) = (inputs[0].shape.dims(), inputs[1].shape.dims());
                let r = q.len();
                let rows: u64 = q[..r - 1].iter().product::<usize>() as u64;
                let (lk, d, dv) = (k[r - 2] as u64, q[r - 1] as u64, output.shape.dims()[r - 1] as u64);
                // QKᵀ, PV, and about 10 flops per score for scale, mask, exp and the running sums.
                rows * lk * (2 * d + 2 * dv + 10)
            }
            Op::Rope { .. } => 3 * out_n,
            Op::Conv(_) => {
                let w = inputs[1].shape.dims();
                let per_out: u64 = w[1..].iter().product::<usize>() as u64;
                2 * out_n * per_out
            }
            Op::ConvTranspose(_) => {
                // Each input element meets Cout/groups · ∏K weights (w is [Cin, Cout/g, *K]).
                let w = inputs[1].shape.dims();
                let per_in: u64 = w[1..].iter().product::<usize>() as u64;
                2 * inputs[0].shape.numel() as u64 * per_in
            }
            Op::Pool(p) => out_n * p.kernel.iter().product::<usize>() as u64,
            Op::Resize { mode, .. } => {
                out_n
                    * match mode {
                        ResizeMode::Nearest => 0,
                        ResizeMode::Bilinear => 8,
                        ResizeMode::Bicubic => 32,
                    }
            }
            Op::Cast { .. } => out_n,
            // One add per element and other rank (their count is the run's, not the op's:
            // counted as one); the link's bytes are the parallel layout's business.
            Op::AllReduce => out_n,
            Op::AllToAll { .. } | Op::AllGather { .. } | Op::RankSlice { .. } => 0,
            // Data movement only.
            op => {
                debug_assert_eq!(op.family(), OpFamily::Layout);
                0
            }
        };
        let bytes = match self {
            // A view moves nothing: the consumer reads the source in place.
            op if op.is_view() => 0,
            // Only the selected rows of the table are read.
            Op::Embedding => inputs[1].size_bytes() + 2 * output.size_bytes(),
            _ => moved,
        };
        Cost { flops, bytes }
    }
}

/// FLOPs per element of a unary function (transcendental ones count their polynomial).
pub(crate) fn unary_flops(u: UnaryOp) -> u64 {
    match u {
        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu => 1,
        UnaryOp::Reciprocal | UnaryOp::Sqrt | UnaryOp::Rsqrt => 2,
        UnaryOp::Exp | UnaryOp::Log | UnaryOp::Sin | UnaryOp::Cos => 8,
        UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Silu => 10,
        UnaryOp::GeluErf | UnaryOp::GeluTanh => 14,
    }
}
