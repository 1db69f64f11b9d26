//! Collectives among threads of one process: each rank deposits its contribution in a shared
//! slot, waits until every rank has deposited for the same collective, computes the result
//! from all of them (the same arithmetic on every rank, in rank order) and marks the
//! collective taken; a rank's next deposit waits until every rank has taken the previous one,
//! so no contribution is overwritten before all have read it.

use crate::{Collective, CollectiveError, DEFAULT_TIMEOUT};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One rank's contribution to a collective.
struct Deposit {
    /// The collective's sequence number on this rank (1, 2, …).
    seq: u64,
    op: &'static str,
    data: Arc<Vec<f32>>,
}

struct State {
    slots: Vec<Option<Deposit>>,
    /// Per rank: the last collective whose result it has computed.
    taken: Vec<u64>,
    /// Per rank: why it left the group, once it has.
    left: Vec<Option<String>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    timeout: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock cannot leave a slot half-written (each
        // update is one assignment), so the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates the ranks of an in-process group.
pub struct InProcessGroup;

impl InProcessGroup {
    /// `size` connected ranks with the default timeout; hand one to each thread.
    pub fn ranks(size: usize) -> Vec<InProcessComm> {
        InProcessGroup::with_timeout(size, DEFAULT_TIMEOUT)
    }

    /// `size` connected ranks whose collectives fail after waiting `timeout` for the others.
    pub fn with_timeout(size: usize, timeout: Duration) -> Vec<InProcessComm> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                slots: (0..size).map(|_| None).collect(),
                taken: vec![0; size],
                left: vec![None; size],
            }),
            changed: Condvar::new(),
            timeout,
        });
        (0..size).map(|rank| InProcessComm { rank, size, seq: 0, shared: shared.clone(), left: false }).collect()
    }
}

/// One rank of an [`InProcessGroup`]. Dropping it (also while unwinding from a panic) leaves
/// the group, which fails the other ranks' collectives instead of hanging them.
pub struct InProcessComm {
    rank: usize,
    size: usize,
    seq: u64,
    shared: Arc<Shared>,
    left: bool,
}

impl InProcessComm {
    /// Deposits `data` for collective `op` and returns every rank's contribution, in rank order.
    fn exchange(&mut self, op: &'static str, data: Vec<f32>) -> Result<Vec<Arc<Vec<f32>>>, CollectiveError> {
        if self.left {
            return Err(self.invalid(op, "this rank has left the group"));
        }
        self.seq += 1;
        let seq = self.seq;
        let deadline = Instant::now() + self.shared.timeout;
        let mut state = self.shared.lock();
        // Our previous contribution must have been read by every rank before it is replaced.
        state = self.wait(state, op, deadline, |s, r| s.taken[r] >= seq - 1)?;
        state.slots[self.rank] = Some(Deposit { seq, op, data: Arc::new(data) });
        self.shared.changed.notify_all();
        state = self.wait(state, op, deadline, |s, r| s.slots[r].as_ref().is_some_and(|d| d.seq == seq))?;
        let mut all = Vec::with_capacity(self.size);
        for (r, slot) in state.slots.iter().enumerate() {
            let d = slot.as_ref().expect("every rank deposited (checked above)");
            if d.op != op {
                return Err(CollectiveError::Mismatch { me: self.rank, rank: r, op, other: d.op });
            }
            all.push(d.data.clone());
        }
        state.taken[self.rank] = seq;
        drop(state);
        self.shared.changed.notify_all();
        Ok(all)
    }

    /// Waits until `ready(state, r)` holds for every rank `r`, failing if one of the ranks not
    /// ready has left or the deadline passes.
    fn wait<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        op: &'static str,
        deadline: Instant,
        ready: impl Fn(&State, usize) -> bool,
    ) -> Result<MutexGuard<'a, State>, CollectiveError> {
        loop {
            let waiting: Vec<usize> = (0..self.size).filter(|&r| !ready(&state, r)).collect();
            if waiting.is_empty() {
                return Ok(state);
            }
            if let Some(&rank) = waiting.iter().find(|&&r| state.left[r].is_some()) {
                let reason = state.left[rank].clone().unwrap_or_default();
                return Err(CollectiveError::RankLost { rank, size: self.size, me: self.rank, op, reason });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CollectiveError::Timeout {
                    me: self.rank,
                    size: self.size,
                    op,
                    seconds: self.shared.timeout.as_secs_f64(),
                    waiting_for: waiting,
                });
            }
            state = self.shared.changed.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn invalid(&self, op: &'static str, reason: impl Into<String>) -> CollectiveError {
        CollectiveError::Invalid { me: self.rank, op, reason: reason.into() }
    }

    fn leave(&mut self, reason: String) {
        if !self.left {
            self.left = true;
            self.shared.lock().left[self.rank] = Some(reason);
            self.shared.changed.notify_all();
        }
    }
}

impl Collective for InProcessComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        let all = self.exchange("all_reduce_sum", data.to_vec())?;
        let parts: Vec<&[f32]> = all.iter().map(|d| d.as_slice()).collect();
        crate::sum_in_rank_order(self.rank, &parts, data)
    }

    fn all_gather(&mut self, data: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        let all = self.exchange("all_gather", data.to_vec())?;
        Ok(all.iter().flat_map(|d| d.iter().copied()).collect())
    }

    fn all_to_all(&mut self, data: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        if !data.len().is_multiple_of(self.size) {
            let reason = format!("{} values do not split into {} equal parts", data.len(), self.size);
            // Still take part, so the other ranks fail on this rank's error rather than wait.
            self.leave(format!("all_to_all: {reason}"));
            return Err(self.invalid("all_to_all", reason));
        }
        let all = self.exchange("all_to_all", data.to_vec())?;
        if let Some((r, d)) = all.iter().enumerate().find(|(_, d)| d.len() != data.len()) {
            let reason = format!("{} values here, {} on rank {r}", data.len(), d.len());
            return Err(self.invalid("all_to_all", reason));
        }
        let part = data.len() / self.size;
        let mine = self.rank * part..(self.rank + 1) * part;
        Ok(all.iter().flat_map(|d| d[mine.clone()].iter().copied()).collect())
    }

    fn broadcast(&mut self, data: &mut Vec<f32>, root: usize) -> Result<(), CollectiveError> {
        if root >= self.size {
            return Err(self.invalid("broadcast", format!("root {root} is not a rank of {}", self.size)));
        }
        let mine = if self.rank == root { std::mem::take(data) } else { Vec::new() };
        let all = self.exchange("broadcast", mine)?;
        *data = all[root].as_ref().clone();
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.exchange("barrier", Vec::new()).map(|_| ())
    }

    fn abort(&mut self, reason: &str) {
        self.leave(format!("aborted: {reason}"));
    }
}

impl Drop for InProcessComm {
    fn drop(&mut self) {
        let reason = if std::thread::panicking() { "its thread panicked" } else { "it exited" };
        self.leave(reason.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rank_is_its_own_group() {
        let mut comms = InProcessGroup::ranks(1);
        let c = &mut comms[0];
        let mut x = vec![1.0, 2.0];
        c.all_reduce_sum(&mut x).unwrap();
        assert_eq!(x, [1.0, 2.0]);
        assert_eq!(c.all_to_all(&[3.0, 4.0]).unwrap(), [3.0, 4.0]);
        c.barrier().unwrap();
    }
}
