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
use orrery_ir::{Op, OpFamily, TensorType};
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
