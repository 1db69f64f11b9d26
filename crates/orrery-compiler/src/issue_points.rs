//! When to start each weight load: the latest moment that still has it arrive before its first
//! use, by a cost model, computed backwards over the whole run.
//!
//! The ring already bounds how early a load can start (`issue_after`). Starting it as late as
//! the model allows instead keeps the loader out of the way of the kernels it would compete
//! with (memory bandwidth, cores, a shared link) while it has slack, and keeps it running flat
//! out where the reads are the bottleneck, where the backward pass degenerates to "as early as
//! the ring allows". Because a model is only a guess, every load is given
//! [`ISSUE_SLACK`] times its modelled duration plus [`ISSUE_MARGIN_SECONDS`], and the runtime re-runs the same pass between
//! invocations with the kernel and load times it measured (see
//! `orrery_runtime::WeightStream`). The pass moves issue points only; the order and the
//! offsets of the loads are the timeline's.

use crate::{Plan, RunPoint, WeightLoad, WeightTimeline};

/// Each load is planned to take this many times its modelled (or measured) duration …
pub const ISSUE_SLACK: f64 = 1.5;
/// … plus this many seconds: a loader thread woken on a busy machine may wait a scheduler
/// time slice (a few ms on Linux) before it runs.
pub const ISSUE_MARGIN_SECONDS: f64 = 0.004;

/// The speeds a timeline's issue points are first scheduled with: a roofline per kernel and a
/// bandwidth for loads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IssueModel {
    /// Sustained FLOP/s on the plans' kernels.
    pub flop_rate: f64,
    /// Bytes per second between memory and the compute units.
    pub memory_bandwidth: f64,
    /// Seconds every kernel costs besides its work.
    pub kernel_overhead: f64,
    /// Bytes per second weights arrive at.
    pub load_bandwidth: f64,
}

impl IssueModel {
    /// A kernel's modelled seconds: overhead plus the larger of its compute and memory time.
    pub fn kernel_seconds(&self, plan: &Plan, k: usize) -> f64 {
        let cost = &plan.kernels[k].cost;
        let work = cost.flops as f64 / self.flop_rate;
        self.kernel_overhead + work.max(cost.bytes as f64 / self.memory_bandwidth)
    }
}

impl WeightTimeline {
    /// Sets every load's `issue_at` from `model`; `invocations` are the plans the timeline was
    /// placed for, in run order. Keeps the modelled kernel times for the runtime's re-timing.
    pub fn schedule_issue_points(&mut self, invocations: &[&Plan], model: &IssueModel) {
        let plans = self.plan_of_invocation.iter().copied().max().map_or(0, |m| m + 1);
        let mut modelled = vec![Vec::new(); plans];
        for (plan, &id) in invocations.iter().zip(&self.plan_of_invocation) {
            if modelled[id].is_empty() {
                modelled[id] = (0..plan.kernels.len()).map(|k| model.kernel_seconds(plan, k)).collect();
            }
        }
        self.modelled_kernel_seconds = modelled;
        self.modelled_load_bandwidth = model.load_bandwidth;
        let per_invocation: Vec<&[f64]> =
            self.plan_of_invocation.iter().map(|&id| self.modelled_kernel_seconds[id].as_slice()).collect();
        let bandwidth = model.load_bandwidth;
        let gates = self.issue_gates(&per_invocation, &|l| l.bytes as f64 / bandwidth);
        for (load, gate) in self.loads.iter_mut().zip(gates) {
            load.issue_at = gate.checked_sub(1).map(|s| point_of(&self.kernels_per_invocation, s));
        }
    }

    /// For each load, how many kernels of the run must have finished before it starts: the
    /// latest start that meets its first use given `kernel_seconds` (per invocation, per kernel)
    /// and `load_seconds`, one load at a time in order, but never before its ring bytes are
    /// free (`issue_after`).
    pub fn issue_gates(&self, kernel_seconds: &[&[f64]], load_seconds: &dyn Fn(&WeightLoad) -> f64) -> Vec<usize> {
        // finished_by[s]: when s kernels of the run have finished, without stalls.
        let mut finished_by = vec![0.0f64];
        for times in kernel_seconds {
            for &t in times.iter() {
                finished_by.push(finished_by.last().copied().unwrap_or(0.0) + t.max(0.0));
            }
        }
        let at = |s: usize| finished_by[s.min(finished_by.len() - 1)];
        let mut gates = vec![0usize; self.loads.len()];
        // The latest moment the next load (in order) may start: this one must be done by then.
        let mut next_start = f64::INFINITY;
        for (j, load) in self.loads.iter().enumerate().rev() {
            let deadline = at(self.sequence(load.first_use)).min(next_start);
            let start = deadline - ISSUE_SLACK * load_seconds(load) - ISSUE_MARGIN_SECONDS;
            next_start = start;
            // The most kernels finished by `start` (0 when it lies before the run).
            let gate = finished_by.partition_point(|&t| t <= start).saturating_sub(1);
            let ring = load.issue_after.map_or(0, |p| self.sequence(p) + 1);
            // Never after the kernel that needs it has started (kernels of zero modelled time
            // put several run points at one moment).
            gates[j] = gate.max(ring).min(self.sequence(load.first_use));
        }
        gates
    }
}

/// The run point of running kernel index `s`.
fn point_of(kernels_per_invocation: &[usize], mut s: usize) -> RunPoint {
    for (invocation, &n) in kernels_per_invocation.iter().enumerate() {
        if s < n {
            return RunPoint { invocation, kernel: s };
        }
        s -= n;
    }
    let invocation = kernels_per_invocation.len().saturating_sub(1);
    RunPoint { invocation, kernel: kernels_per_invocation.last().map_or(0, |n| n.saturating_sub(1)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile_with, plan_weight_timeline, CompileOptions, Passes};
    use orrery_ir::{DType, GraphBuilder};

    /// Four linears in a chain, each reading one 64·64 f32 weight (16 KiB).
    fn chain() -> Plan {
        let mut b = GraphBuilder::new();
        let mut x = b.input("x", DType::F32, [2, 64]).unwrap();
        for i in 0..4 {
            let w = b.weight(&format!("w{i}"), DType::F32, [64, 64]).unwrap();
            x = b.linear(&format!("fc{i}"), x, w, None).unwrap();
        }
        b.output("y", x).unwrap();
        let options = CompileOptions { passes: Passes::None, ..CompileOptions::default() };
        compile_with(b.finish().unwrap(), &options).unwrap()
    }

    #[test]
    fn loads_start_as_late_as_the_model_allows_and_no_earlier_than_the_ring() {
        let plan = chain();
        // Room for everything: only the model bounds the issue points.
        let mut t = plan_weight_timeline(&[&plan, &plan], 16 * 16384).unwrap();
        // Each kernel 1 s, each load 0.5 s (×1.5 slack + 4 ms = 0.754 s).
        let kernels: [&[f64]; 2] = [&[1.0; 4], &[1.0; 4]];
        let gates = t.issue_gates(&kernels, &|_| 0.5);
        // Invocation 1's last load (first use at kernel 7, t = 7 s) starts by 6.246 s: after 6
        // kernels. The one before it must be done by then: starts by 5.49 s (after 5), …
        assert_eq!(gates[7], 6);
        assert_eq!(gates[6], 5);
        // The first loads are needed at once: they start at once.
        assert_eq!(gates[0], 0);
        // Slow loads (2 s each, planned as 3.004 s) pile up backwards from the last one (needed
        // at 7 s, so started by 3.996 s: after 3 kernels; the one before by 0.99 s): all others
        // start at once.
        let slow = t.issue_gates(&kernels, &|_| 2.0);
        assert_eq!(slow, [0, 0, 0, 0, 0, 0, 0, 3]);
        // A ring of two weights: a load never starts before the bytes it reuses are free.
        let ring = plan_weight_timeline(&[&plan, &plan], 2 * 16384).unwrap();
        let slow = ring.issue_gates(&kernels, &|_| 2.0);
        for (l, g) in ring.loads.iter().zip(&slow) {
            assert_eq!(*g, l.issue_after.map_or(0, |p| ring.sequence(p) + 1));
        }
        // The schedule stores points and the modelled kernel times for the runtime.
        // Each product of 2 × 64 × 64 takes 16 ms.
        let model =
            IssueModel { flop_rate: 1e6, memory_bandwidth: 1e12, kernel_overhead: 0.0, load_bandwidth: f64::INFINITY };
        t.schedule_issue_points(&[&plan, &plan], &model);
        assert_eq!(t.modelled_kernel_seconds.len(), 1, "one distinct plan");
        assert_eq!(t.plan_of_invocation, vec![0, 0]);
        // Instant loads: each issued the margin before its first use, i.e. after the kernel two
        // before it.
        for l in &t.loads {
            let first = t.sequence(l.first_use);
            let expect = first.checked_sub(2).map(|s| point_of(&t.kernels_per_invocation, s));
            assert_eq!(l.issue_at, expect, "{}", l.name);
        }
    }
}
