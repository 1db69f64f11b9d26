//! orrery-parallel: what several devices (ranks) running one plan together need.
//!
//! [`Collective`] is the communication a parallel plan inserts between its kernels:
//! all-reduce after a row-parallel linear (tensor parallelism), all-gather of the guidance
//! branches (CFG parallelism), all-to-all between sequence and head sharding (Ulysses
//! sequence parallelism), broadcast of the inputs, barriers. Backends implement it over
//! threads in one process ([`InProcessGroup`], for several CPU devices and for tests) and over
//! MPI between processes (`MpiComm`, with the `mpi` feature: `mpirun -np N`).
//!
//! Architecture invariants:
//! - Every collective is deterministic: reductions add the ranks' contributions in rank order,
//!   so a run's bits depend on the layout, never on timing.
//! - No collective waits forever. A rank that leaves (its handle dropped, including by a panic,
//!   or [`Collective::abort`]) makes every other rank's current and next collective fail with
//!   [`CollectiveError::RankLost`] naming it; a rank that stops calling makes the others fail
//!   with [`CollectiveError::Timeout`] naming the ranks they waited for.

mod in_process;
#[cfg(feature = "mpi")]
mod mpi_backend;

pub use in_process::{InProcessComm, InProcessGroup};
#[cfg(feature = "mpi")]
pub use mpi_backend::MpiComm;

use std::time::Duration;
use thiserror::Error;

/// How long a collective waits for the other ranks by default before it fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Error, Clone, PartialEq)]
pub enum CollectiveError {
    #[error("rank {rank} of {size} was lost ({reason}) while rank {me} waited in {op}")]
    RankLost { rank: usize, size: usize, me: usize, op: &'static str, reason: String },
    #[error(
        "rank {me} waited {seconds:.1} s in {op} for rank(s) {waiting_for:?} of {size}; a rank hangs or has \
         failed without exiting (raise the collective timeout if a step legitimately takes longer)"
    )]
    Timeout { me: usize, size: usize, op: &'static str, seconds: f64, waiting_for: Vec<usize> },
    #[error("rank {me} called {op} but rank {rank} called {other} at the same point: the ranks' plans differ")]
    Mismatch { me: usize, rank: usize, op: &'static str, other: &'static str },
    #[error("{op} on rank {me}: {reason}")]
    Invalid { me: usize, op: &'static str, reason: String },
}

/// Communication among the ranks of one group. Every rank must call the same collectives in
/// the same order (as the plan inserts them); the data is f32. Not `Send` in general: an MPI
/// rank's handle stays on the thread that initialized MPI (the in-process one is `Send`).
pub trait Collective {
    /// This rank, in `0..size()`.
    fn rank(&self) -> usize;
    /// How many ranks the group has.
    fn size(&self) -> usize;
    /// Every rank's `data` summed element-wise (in rank order) into `data` on every rank; all
    /// ranks' lengths must agree.
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CollectiveError>;
    /// Every rank's `data` concatenated in rank order (lengths may differ).
    fn all_gather(&mut self, data: &[f32]) -> Result<Vec<f32>, CollectiveError>;
    /// `data` cut into `size()` equal parts, part `j` sent to rank `j`; returns the parts this
    /// rank received, in rank order. All ranks' lengths must agree and divide by `size()`.
    fn all_to_all(&mut self, data: &[f32]) -> Result<Vec<f32>, CollectiveError>;
    /// Rank `root`'s `data` on every rank (other ranks' contents are replaced).
    fn broadcast(&mut self, data: &mut Vec<f32>, root: usize) -> Result<(), CollectiveError>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError>;
    /// Leaves the group because of `reason`: every other rank's collectives fail naming this
    /// rank and the reason.
    fn abort(&mut self, reason: &str);
}

/// Sums every rank's contribution (`parts`, in rank order) element-wise into `out`, adding in
/// rank order so every backend and every rank gets the same bits; all lengths must be
/// `out.len()`.
pub(crate) fn sum_in_rank_order(me: usize, parts: &[&[f32]], out: &mut [f32]) -> Result<(), CollectiveError> {
    if let Some((r, p)) = parts.iter().enumerate().find(|(_, p)| p.len() != out.len()) {
        let reason = format!("{} values here, {} on rank {r}", out.len(), p.len());
        return Err(CollectiveError::Invalid { me, op: "all_reduce_sum", reason });
    }
    let Some((first, rest)) = parts.split_first() else { return Ok(()) };
    out.copy_from_slice(first);
    for part in rest {
        out.iter_mut().zip(part.iter()).for_each(|(o, &v)| *o += v);
    }
    Ok(())
}

/// A boxed collective (a backend chosen at run time) is a collective.
impl<C: Collective + ?Sized> Collective for Box<C> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn size(&self) -> usize {
        (**self).size()
    }
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        (**self).all_reduce_sum(data)
    }
    fn all_gather(&mut self, data: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        (**self).all_gather(data)
    }
    fn all_to_all(&mut self, data: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        (**self).all_to_all(data)
    }
    fn broadcast(&mut self, data: &mut Vec<f32>, root: usize) -> Result<(), CollectiveError> {
        (**self).broadcast(data, root)
    }
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        (**self).barrier()
    }
    fn abort(&mut self, reason: &str) {
        (**self).abort(reason)
    }
}
