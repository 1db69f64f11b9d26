//! orrery-cpu: the CPU backend's tensors and kernels.
//!
//! [`execute`] runs one op on [`CpuTensor`] inputs. Kernels parallelise with rayon inside
//! whatever pool the caller installed (the runtime installs one with `--threads` workers).
//!
//! Architecture invariant: results are bit-identical for any number of threads. Work is split
//! over output elements in chunks whose size does not depend on the thread count, and every
//! reduction runs in a fixed order. Kernels never read graph or file structures: they see
//! tensors and op parameters only.

mod arena;
mod error;
pub mod kernels;
mod output;
mod recycle;
mod tensor;
mod weight_packs;

pub use arena::{Arena, ArenaValues};
pub use error::CpuError;
pub use kernels::{execute, execute_in_place, runs_in_place, transient_bytes};
pub use output::with_output_slot;
pub use recycle::Recycler;
pub use tensor::{Buffer, CpuTensor, Element, MappedBytes};
pub use weight_packs::{BudgetHold, PackBudget, WeightPacks};
