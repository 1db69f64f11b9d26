use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{path}: unknown model class `{class}`; supported: {supported}")]
    UnknownClass { path: String, class: String, supported: String },
    #[error("{class} has no method `{method}`; it has: {methods}")]
    UnknownMethod { class: String, method: String, methods: String },
    #[error("input `{name}` has shape {got:?}, expected {expected}")]
    InputShape { name: String, got: Vec<usize>, expected: String },
    #[error("weight `{name}`: {reason}")]
    Weight { name: String, reason: String },
    #[error(transparent)]
    Graph(#[from] orrery_ir::IrError),
    /// A parallel layout the component cannot be cut into.
    #[error("{class}: {reason}")]
    Parallel { class: String, reason: String },
}
