//! Dispatch of reference evaluation: one module per op family.

use super::{conv, elementwise, fused, layout, linalg, norm, reduce};
use crate::{Op, OpFamily, RefTensor, TensorType};

/// Evaluates one op on f64 data. `out` is the type the op inferred; errors are data-dependent
/// failures (such as an out-of-range index) as sentences.
pub fn eval_op(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    match op.family() {
        OpFamily::Elementwise => elementwise::eval(op, inputs, out),
        OpFamily::Reduce => reduce::eval(op, inputs, out),
        OpFamily::Norm => norm::eval(op, inputs, out),
        OpFamily::Layout => layout::eval(op, inputs, out),
        OpFamily::Linalg => linalg::eval(op, inputs, out),
        OpFamily::Conv => conv::eval(op, inputs, out),
        OpFamily::Fused => fused::eval(op, inputs, out),
        OpFamily::Epilogue => fused::eval_epilogue(op, inputs, out),
        // The reference evaluates one rank's graph alone: a sum over one rank is the value
        // itself; exchanges need the other ranks.
        OpFamily::Collective => match op {
            crate::Op::AllReduce => Ok(inputs[0].clone()),
            _ => Err(format!("{op} needs the other ranks of a parallel run")),
        },
    }
}
