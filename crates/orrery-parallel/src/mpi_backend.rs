//! Collectives between processes over MPI (`mpirun -np N …`), behind the `mpi` feature.
//!
//! Every collective is built from MPI's all-gather, all-to-all and broadcast, and reductions
//! add the gathered contributions here in rank order, so results are deterministic (MPI's own
//! reductions may add in any order). Lengths are exchanged first, so a rank passing a wrong
//! length gets an error on every rank instead of undefined behaviour.
//!
//! MPI has no timeouts: a rank that stops calling blocks the others for ever. A watchdog
//! thread per process therefore arms a deadline around each collective; when one passes it
//! prints which collective waited and exits the process with status 124, and `mpirun` then
//! stops every other rank and names the one that exited. A rank that dies is reported by
//! `mpirun` the same way (it terminates the job when any process fails), and
//! [`Collective::abort`] calls `MPI_Abort`, which `mpirun` reports with the rank and the
//! reason printed just before.

use crate::{Collective, CollectiveError, DEFAULT_TIMEOUT};
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;
use mpi::Count;
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The deadline of the collective in progress, watched by a thread of its own.
struct Watchdog {
    armed: Mutex<Option<(Instant, &'static str)>>,
    changed: Condvar,
}

/// This process's rank in `MPI_COMM_WORLD`, or in a group split from it ([`MpiComm::split`]).
/// Holds MPI's environment: MPI is finalized when the last handle is dropped, so keep one for
/// the whole run.
pub struct MpiComm {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    timeout: Duration,
    watchdog: Arc<Watchdog>,
    _universe: Rc<Universe>,
}

impl MpiComm {
    /// Initializes MPI (once per process) with the default collective timeout.
    pub fn init() -> Result<MpiComm, CollectiveError> {
        MpiComm::init_with_timeout(DEFAULT_TIMEOUT)
    }

    /// Initializes MPI; a collective that waits longer than `timeout` stops the job.
    pub fn init_with_timeout(timeout: Duration) -> Result<MpiComm, CollectiveError> {
        let universe = mpi::initialize().ok_or_else(|| CollectiveError::Invalid {
            me: 0,
            op: "init",
            reason: "MPI is already initialized in this process".into(),
        })?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let watchdog = Arc::new(Watchdog { armed: Mutex::new(None), changed: Condvar::new() });
        let watched = watchdog.clone();
        std::thread::Builder::new()
            .name("orrery-mpi-watchdog".into())
            .spawn(move || watch(&watched, rank, size, timeout))
            .map_err(|e| CollectiveError::Invalid { me: rank, op: "init", reason: format!("watchdog thread: {e}") })?;
        Ok(MpiComm { world, rank, size, timeout, watchdog, _universe: Rc::new(universe) })
    }

    /// Splits this group (every rank must call it): the ranks passing the same `color` form a
    /// new group, ordered as here; a rank passing `None` joins none and gets `None`. How a
    /// layout of several kinds (CFG × tensor-parallel) gives each rank the groups it talks in.
    pub fn split(&self, color: Option<u16>) -> Result<Option<MpiComm>, CollectiveError> {
        let color = color.map_or_else(Color::undefined, |c| Color::with_value(c.into()));
        let Some(comm) = self.watched("split", || self.world.split_by_color(color)) else { return Ok(None) };
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        Ok(Some(MpiComm {
            world: comm,
            rank,
            size,
            timeout: self.timeout,
            watchdog: self.watchdog.clone(),
            _universe: self._universe.clone(),
        }))
    }

    /// Runs `f` (one MPI collective) under the watchdog's deadline.
    fn watched<T>(&self, op: &'static str, f: impl FnOnce() -> T) -> T {
        *self.watchdog.armed.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now() + self.timeout, op));
        self.watchdog.changed.notify_all();
        let out = f();
        *self.watchdog.armed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        out
    }

    fn invalid(&self, op: &'static str, reason: String) -> CollectiveError {
        CollectiveError::Invalid { me: self.rank, op, reason }
    }

    /// Every rank's length of its contribution to `op`.
    fn lengths(&self, op: &'static str, n: usize) -> Vec<usize> {
        let mut all = vec![0u64; self.size];
        self.watched(op, || self.world.all_gather_into(&(n as u64), &mut all[..]));
        all.into_iter().map(|v| v as usize).collect()
    }

    /// Every rank's `data`, concatenated in rank order, with the lengths.
    fn gather(&self, op: &'static str, data: &[f32]) -> Result<(Vec<f32>, Vec<usize>), CollectiveError> {
        let lengths = self.lengths(op, data.len());
        let total: usize = lengths.iter().sum();
        let count =
            |v: usize| Count::try_from(v).map_err(|_| self.invalid(op, format!("{v} values exceed MPI's count")));
        let counts: Vec<Count> = lengths.iter().map(|&l| count(l)).collect::<Result<_, _>>()?;
        let mut displs = Vec::with_capacity(self.size);
        let mut at = 0usize;
        for &l in &lengths {
            displs.push(count(at)?);
            at += l;
        }
        let mut all = vec![0f32; total];
        self.watched(op, || {
            let mut partition = PartitionMut::new(&mut all[..], counts, &displs[..]);
            self.world.all_gather_varcount_into(data, &mut partition);
        });
        Ok((all, lengths))
    }
}

/// The watchdog: stops this process when a collective outlives its deadline.
fn watch(w: &Watchdog, rank: usize, size: usize, timeout: Duration) {
    let mut armed = w.armed.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match *armed {
            None => armed = w.changed.wait(armed).unwrap_or_else(|e| e.into_inner()),
            Some((deadline, op)) => {
                let now = Instant::now();
                if now >= deadline {
                    eprintln!(
                        "orrery: rank {rank} of {size} waited {:.1} s in {op} for the other ranks: one hangs or \
                         has failed; stopping every rank",
                        timeout.as_secs_f64()
                    );
                    std::process::exit(124);
                }
                armed = w.changed.wait_timeout(armed, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
    }
}

impl Collective for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        let (all, lengths) = self.gather("all_reduce_sum", data)?;
        let mut at = 0;
        let parts: Vec<&[f32]> = lengths
            .iter()
            .map(|&l| {
                at += l;
                &all[at - l..at]
            })
            .collect();
        crate::sum_in_rank_order(self.rank, &parts, data)
    }

    fn all_gather(&mut self, data: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        Ok(self.gather("all_gather", data)?.0)
    }

    fn all_to_all(&mut self, data: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        let lengths = self.lengths("all_to_all", data.len());
        if let Some((r, l)) = lengths.iter().enumerate().find(|(_, &l)| l != data.len() || !l.is_multiple_of(self.size))
        {
            let reason =
                format!("{} values here, {l} on rank {r}; each must split into {} equal parts", data.len(), self.size);
            return Err(self.invalid("all_to_all", reason));
        }
        let mut out = vec![0f32; data.len()];
        self.watched("all_to_all", || self.world.all_to_all_into(data, &mut out[..]));
        Ok(out)
    }

    fn broadcast(&mut self, data: &mut Vec<f32>, root: usize) -> Result<(), CollectiveError> {
        if root >= self.size {
            return Err(self.invalid("broadcast", format!("root {root} is not a rank of {}", self.size)));
        }
        let root_process = self.world.process_at_rank(root as i32);
        let mut len = data.len() as u64;
        self.watched("broadcast", || root_process.broadcast_into(&mut len));
        data.resize(len as usize, 0.0);
        self.watched("broadcast", || root_process.broadcast_into(&mut data[..]));
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.watched("barrier", || self.world.barrier());
        Ok(())
    }

    fn abort(&mut self, reason: &str) {
        eprintln!("orrery: rank {} of {} stops every rank: {reason}", self.rank, self.size);
        self.world.abort(1)
    }
}
