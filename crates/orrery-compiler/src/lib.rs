//! orrery-compiler: turns a [`Graph`] into a [`Plan`], the ahead-of-time schedule the runtime
//! executes.
//!
//! Today a plan is the verified graph, one kernel per op node in graph order, each value's
//! last use (so the runtime frees it at once), and the totals `orrery compile` reports. The
//! rewrite passes (fusion) and the static memory planner slot in here: the runtime consumes
//! only the `Plan`, so they change nothing downstream.
//!
//! Architecture invariant: everything the runtime does is decided here, before any data
//! exists: kernel order, frees and memory totals. The compiler never touches tensors or files.

mod plan;

pub use plan::{compile, Kernel, Plan};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CompileError {
    #[error("invalid graph: {0}")]
    InvalidGraph(#[from] orrery_ir::IrError),
}
