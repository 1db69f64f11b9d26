//! Kernel dispatch: one module per op family.

mod conv;
mod elementwise;
mod epilogue;
mod fused;
mod layout;
pub(crate) mod linalg;
mod norm;
mod reduce;
mod transient;

use crate::{CpuError, CpuTensor};
pub(crate) use elementwise::{dense_copy, output_copy};
use orrery_ir::{DType, Op, OpFamily, TensorType};
pub use transient::transient_bytes;

/// Runs `op` on `inputs`; `out` is the type the IR inferred for the result.
pub fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let result = match op.family() {
        OpFamily::Elementwise => elementwise::execute(op, inputs, out),
        OpFamily::Reduce => reduce::execute(op, inputs, out),
        OpFamily::Norm => norm::execute(op, inputs, out),
        OpFamily::Layout => layout::execute(op, inputs, out),
        OpFamily::Linalg => linalg::execute(op, inputs, out),
        OpFamily::Conv => conv::execute(op, inputs, out),
        OpFamily::Fused => fused::execute(op, inputs, out),
        OpFamily::Epilogue => epilogue::execute(op, inputs, out),
        OpFamily::Collective => {
            return Err(CpuError::kernel(
                op,
                "needs the ranks of a parallel run: the runtime's session executes it through a collective",
            ))
        }
    }?;
    debug_assert_eq!(result.shape(), out.shape.dims(), "{op} produced a wrong shape");
    debug_assert_eq!(result.dtype(), out.dtype, "{op} produced a wrong dtype");
    Ok(result)
}

/// Whether [`execute_in_place`] writes `op`'s output over an input: f32 unary, clamp, binary
/// and fused elementwise ops (the compiler plans only these in place).
pub fn runs_in_place(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Clamp { .. } | Op::Binary(_) | Op::Fused(_))
}

/// [`execute`] with the output written over the memory of the op's input `at`, given by value
/// as `operand` (`inputs` are the other inputs, in order). That happens when the op
/// [`runs_in_place`], `operand` is f32 of the output's shape, dense, and the only reference to
/// its buffer; otherwise `operand` is read like any input and the output allocated. Either
/// way the result has the bits of [`execute`].
pub fn execute_in_place(
    op: &Op,
    inputs: &[&CpuTensor],
    at: usize,
    operand: CpuTensor,
    out: &TensorType,
) -> Result<CpuTensor, CpuError> {
    let fits = runs_in_place(op)
        && at <= inputs.len()
        && operand.dtype() == DType::F32
        && out.dtype == DType::F32
        && operand.shape() == out.shape.dims();
    let mut y = match if fits { operand.try_into_output() } else { Err(operand) } {
        Ok(y) => y,
        Err(operand) => {
            let mut all = inputs.to_vec();
            all.insert(at.min(all.len()), &operand);
            return execute(op, &all, out);
        }
    };
    let dims = out.shape.dims();
    match op {
        Op::Fused(_) => fused::execute_in_place(op, inputs, at, y, out),
        _ => {
            elementwise::execute_in_place(op, inputs, at, &mut y, dims)?;
            Ok(y.into_tensor(dims.to_vec()))
        }
    }
}
