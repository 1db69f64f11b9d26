use thiserror::Error;

/// Errors raised while running a kernel (data-dependent failures the IR could not foresee,
/// such as an out-of-range index).
#[derive(Debug, Error)]
pub enum CpuError {
    #[error("{op}: {reason}")]
    Kernel { op: String, reason: String },
}

impl CpuError {
    pub fn kernel(op: &orrery_ir::Op, reason: impl Into<String>) -> CpuError {
        CpuError::Kernel { op: op.to_string(), reason: reason.into() }
    }
}
