//! orrery-compiler: turns a [`Graph`] into a [`Plan`], the ahead-of-time schedule the runtime
//! executes.
//!
//! A plan is the verified graph, one kernel per op node in graph order, each value's last use
//! (so the runtime frees it at once), the static memory plan (every activation's offset in
//! one arena, `memory.rs`) and the totals `orrery compile` reports. Plans are cached per
//! input shapes by [`PlanCache`], and across runs on disk by [`PlanStore`] (`plan_store.rs`). Before planning, the rewrite passes (`passes/`: simplification and
//! elementwise fusion) run to a fixpoint; the runtime consumes only the `Plan`.
//!
//! Architecture invariant: everything the runtime does is decided here, before any data
//! exists: kernel order, frees and memory. The compiler never touches tensors, and files only in
//! `plan_store.rs`, whose plans are verified ([`Plan::verify`]) before they are used.

mod issue_points;
mod memory;
pub mod passes;
mod placement;
mod plan;
mod plan_store;
mod weight_timeline;

pub use issue_points::{IssueModel, ISSUE_MARGIN_SECONDS, ISSUE_SLACK};
pub use memory::{
    can_run_in_place, plan_memory, validate, BufferSlot, DeviceLimits, MemoryOptions, MemoryPlan, Storage, ARENA_ALIGN,
};
pub use passes::{optimize, OptimizeOptions, Optimizer, PassError, RewriteLog};
pub use placement::{infer_placements, is_parallel, Placement};
pub use plan::{compile, compile_with, CompileOptions, Kernel, Passes, Plan, PlanCache, PlanKey};
pub use plan_store::{
    binary_fingerprint, component_identity, PlanStore, StoreKey, StoreWarning, DEFAULT_MAX_BYTES, PLAN_STORE_FORMAT,
};
pub use weight_timeline::{
    largest_kernel_weight_set, min_weight_capacity, plan_weight_timeline, plan_weight_timeline_pinned, weight_uses,
    RunPoint, WeightLoad, WeightTimeline, LOAD_ALIGN,
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CompileError {
    #[error("invalid graph: {0}")]
    InvalidGraph(#[from] orrery_ir::IrError),
    #[error(
        "the plan needs an activation arena of {needed} bytes but the device allows {limit} bytes; \
         compile for smaller input shapes (batch, frames or resolution)"
    )]
    ArenaTooLarge { needed: u64, limit: u64 },
    #[error(transparent)]
    Pass(#[from] PassError),
    /// The weights cannot be streamed within the given weight budget.
    #[error("{0}")]
    WeightBudget(String),
    /// One rank of a parallel plan uses a value in a split state its op cannot take (a model
    /// builder's bug: e.g. a partial sum used before its all-reduce).
    #[error("parallel plan: node `{node}`: {reason}")]
    Placement { node: String, reason: String },
    /// A memory plan failed validation: a planner bug, never a user error.
    #[error("invalid memory plan (a compiler bug): {0}")]
    InvalidPlan(String),
}
