use thiserror::Error;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}
