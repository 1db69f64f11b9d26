//! Dispatch of reference evaluation: one module per op family.

use super::{conv, elementwise, layout, linalg, norm, reduce};
use crate::{Op, RefTensor, TensorType};

/// Evaluates one op on f64 data. `out` is the type the op inferred; errors are data-dependent
/// failures (such as an out-of-range index) as sentences.
pub fn eval_op(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    match op {
        Op::Unary(_) | Op::Clamp { .. } | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Cast { .. } => {
            elementwise::eval(op, inputs, out)
        }
        Op::Reduce { .. } | Op::ArgMax { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } => {
            reduce::eval(op, inputs, out)
        }
        Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::GroupNorm { .. } | Op::BatchNorm { .. } | Op::Rope { .. } => {
            norm::eval(op, inputs, out)
        }
        Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Pad { .. }
        | Op::Expand { .. }
        | Op::Repeat { .. }
        | Op::IndexSelect { .. }
        | Op::Gather { .. }
        | Op::Embedding
        | Op::Arange { .. } => layout::eval(op, inputs, out),
        Op::MatMul { .. } | Op::Linear { .. } | Op::Attention { .. } => linalg::eval(op, inputs, out),
        Op::Conv(_) | Op::ConvTranspose(_) | Op::Pool(_) | Op::Resize { .. } => conv::eval(op, inputs, out),
    }
}
