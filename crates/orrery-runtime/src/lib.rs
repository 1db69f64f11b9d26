//! orrery-runtime: executes a compiled [`Plan`](orrery_compiler::Plan) on the CPU backend.
//!
//! A [`Session`] owns a plan, a weight resolver and a thread pool. Each run binds the named
//! inputs (checking names, dtypes and shapes), resolves weights lazily on first use (and keeps
//! them for later runs), runs the kernels in plan order inside the pool, and drops every
//! intermediate right after its last use as the plan says.
//!
//! Architecture invariant: the runtime decides nothing about order or memory; it follows the
//! plan. It does not parse files: weights arrive through [`WeightResolver`].

mod allocator;
mod byte_size;
mod chunks;
mod derived;
mod error;
mod output_place;
mod session;
mod threads;
mod weight_stream;
mod weights;

pub use allocator::configure_allocator;
pub use byte_size::parse_byte_size;
pub use chunks::{run_chunks, ChunkStats, Concat, Placement, Span};
pub use error::RuntimeError;
pub use session::{peak_rss_bytes, RunStats, Session};
pub use threads::{resolve_threads, ThreadSource};
pub use weight_stream::{EventKind, Prefetch, StreamCursor, StreamEvent, StreamOptions, StreamStats, WeightStream};
pub use weights::{
    default_pack_budget, plan_pack_budget, tensor_from_source, FormatWeights, MemoryWeights, WeightResolver,
};
