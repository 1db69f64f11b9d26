//! Per-op reference evaluation (being written).
use crate::{Op, RefTensor, TensorType};

/// Evaluates one op on f64 data. `out` is the type the op inferred.
pub fn eval_op(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    let _ = (inputs, out);
    Err(format!("{op}: no reference yet"))
}
