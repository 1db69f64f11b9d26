//! Kernel dispatch: one module per op family.

mod conv;
mod elementwise;
mod layout;
mod linalg;
mod norm;
mod reduce;

use crate::{CpuError, CpuTensor};
pub(crate) use elementwise::dense_copy;
use orrery_ir::{Op, TensorType};

/// Runs `op` on `inputs`; `out` is the type the IR inferred for the result.
pub fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let result = match op {
        Op::Unary(_) | Op::Clamp { .. } | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Cast { .. } => {
            elementwise::execute(op, inputs, out)
        }
        Op::Reduce { .. } | Op::ArgMax { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } => {
            reduce::execute(op, inputs, out)
        }
        Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::GroupNorm { .. } | Op::BatchNorm { .. } | Op::Rope { .. } => {
            norm::execute(op, inputs, out)
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
        | Op::Arange { .. } => layout::execute(op, inputs, out),
        Op::MatMul { .. } | Op::Linear { .. } | Op::Attention { .. } => linalg::execute(op, inputs, out),
        Op::Conv(_) | Op::ConvTranspose(_) | Op::Pool(_) | Op::Resize { .. } => conv::execute(op, inputs, out),
    }?;
    debug_assert_eq!(result.shape(), out.shape.dims(), "{op} produced a wrong shape");
    debug_assert_eq!(result.dtype(), out.dtype, "{op} produced a wrong dtype");
    Ok(result)
}
