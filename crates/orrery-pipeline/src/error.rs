use thiserror::Error;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    /// The memory budget is below the smallest one the run's plans need (the message states
    /// that number); `memory_plan` then tries plans with split convolutions.
    #[error("{0}")]
    BudgetTooSmall(String),
    /// The caller's stop flag was raised (Ctrl-C): the run ended between two steps.
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Model(#[from] orrery_models::ModelError),
    #[error(transparent)]
    Compile(#[from] orrery_compiler::CompileError),
    #[error(transparent)]
    Runtime(#[from] orrery_runtime::RuntimeError),
    #[error(transparent)]
    Format(#[from] orrery_formats::FormatError),
    #[error(transparent)]
    Text(#[from] orrery_text::TextError),
    /// A parallel run's ranks could not exchange data (one failed, hung or left).
    #[error(transparent)]
    Collective(#[from] orrery_parallel::CollectiveError),
}
