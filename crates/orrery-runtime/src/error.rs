use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("missing input `{name}`: expected {expected}")]
    MissingInput { name: String, expected: String },
    #[error("unknown input `{name}`: this plan takes {expected}")]
    UnknownInput { name: String, expected: String },
    #[error("input `{name}` has {got}, expected {expected}")]
    InputMismatch { name: String, got: String, expected: String },
    #[error("weight `{name}`: {reason}")]
    Weight { name: String, reason: String },
    #[error("kernel `{node}` failed: {source}")]
    Kernel { node: String, source: orrery_cpu::CpuError },
    /// A collective of a parallel plan failed (another rank failed, hung or left).
    #[error("`{node}`: {source}")]
    Collective { node: String, source: orrery_parallel::CollectiveError },
    /// A parallel plan was run without its ranks.
    #[error(
        "`{node}` sums over the ranks of a parallel run, but the session was run alone: run a tensor-parallel \
         plan on every rank with Session::run_parallel"
    )]
    NoCollective { node: String },
    #[error("chunked run: {reason}")]
    Chunks { reason: String },
    #[error("weight stream: {0}")]
    Stream(String),
    #[error("could not start a pool of {threads} threads: {reason}")]
    ThreadPool { threads: usize, reason: String },
}
