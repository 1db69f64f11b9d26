//! (being written)
use crate::{CpuError, CpuTensor};
use orrery_ir::{Op, TensorType};

pub(super) fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let _ = (inputs, out);
    Err(CpuError::kernel(op, "no CPU kernel yet"))
}
