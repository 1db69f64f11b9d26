//! The weight timeline of a whole pipeline run: when each weight is loaded, where it lives and
//! when its memory may be reused, decided before anything runs.
//!
//! A run is a sequence of plan invocations (T5 twice, the transformer twice per step, the
//! decoder once, …). Under a memory budget the weights cannot all stay resident, so they are
//! streamed through one ring buffer of `capacity` bytes: every invocation loads the weights it
//! reads in the order its kernels first need them, each at the next free offset of the ring
//! (wrapping to 0 when it does not fit before the end). A load may start once every earlier
//! load overlapping its bytes has had its last use (`issue_after`); with the loads issued in
//! order, the loader runs ahead of the kernels as far as the ring allows, so the next
//! subsystem's first weights arrive while the current one computes. Within that bound each
//! load also gets an issue point from a cost model (`issue_points.rs`), which the runtime
//! re-times from the speeds it measures; neither ever changes the order or the offsets.
//!
//! A weight's last use counts the views of it: a transposed weight read later keeps it alive.

use crate::{CompileError, Plan};
use orrery_ir::{NodeId, NodeKind};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A point in the run: kernel `kernel` of invocation `invocation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunPoint {
    pub invocation: usize,
    pub kernel: usize,
}

/// One weight read into the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightLoad {
    pub invocation: usize,
    /// The weight node in the invocation's plan graph.
    pub node: NodeId,
    pub name: String,
    pub bytes: u64,
    /// Byte offset in the ring (aligned to [`LOAD_ALIGN`]).
    pub offset: u64,
    /// The first kernel that reads it: it must be loaded before this kernel starts.
    pub first_use: RunPoint,
    /// The last kernel that reads it or a view of it: its bytes may be reused after this one.
    pub last_use: RunPoint,
    /// The load may start only after this kernel has finished (the last use of the earlier
    /// loads it overwrites); `None`: at once.
    pub issue_after: Option<RunPoint>,
    /// When the cost model says to start the load: after this kernel has finished, the latest
    /// point that still has it arrive in time (with [`crate::ISSUE_SLACK`]), never before
    /// `issue_after`; `None`: at once. Set by [`WeightTimeline::schedule_issue_points`]; the
    /// runtime re-times it from measured speeds.
    pub issue_at: Option<RunPoint>,
    /// Earlier loads whose bytes this one overwrites (indices into the timeline's loads).
    pub overwrites: Vec<usize>,
    /// Kept resident for the whole run (in the pinned region): never overwritten.
    pub pinned: bool,
    /// Later invocations that read this pinned weight without loading it: (first use, last
    /// use) in each.
    pub reused_by: Vec<(RunPoint, RunPoint)>,
}

/// Where every weight of a run lives and when.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightTimeline {
    pub capacity: u64,
    /// Bytes at the front of the memory holding pinned weights; the ring is the rest.
    pub pinned_bytes: u64,
    /// In the order they are issued.
    pub loads: Vec<WeightLoad>,
    /// Kernels per invocation (to turn run points into a running count).
    pub kernels_per_invocation: Vec<usize>,
    /// Which distinct plan each invocation runs (invocations of one plan share an index), so
    /// times measured on one invocation predict the next of the same plan.
    pub plan_of_invocation: Vec<usize>,
    /// Per distinct plan, each kernel's modelled seconds (empty until issue points are
    /// scheduled): the runtime's first guess for plans it has not run yet.
    pub modelled_kernel_seconds: Vec<Vec<f64>>,
    /// The load speed (bytes per second) the issue points were scheduled with.
    pub modelled_load_bandwidth: f64,
}

/// Offsets in the ring are multiples of this (cache lines, and every dtype's alignment).
pub const LOAD_ALIGN: u64 = 64;

fn align(v: u64) -> u64 {
    v.div_ceil(LOAD_ALIGN) * LOAD_ALIGN
}

/// For one plan: each weight node with the kernel indices of its first and last use (views
/// of it included), in order of first use.
pub fn weight_uses(plan: &Plan) -> Vec<(NodeId, usize, usize)> {
    let graph = &plan.graph;
    // The value each node's memory belongs to: a view kernel's output belongs to its operand's.
    let mut root: Vec<NodeId> = graph.ids().collect();
    let mut uses: HashMap<NodeId, (usize, usize)> = HashMap::new();
    for (k, kernel) in plan.kernels.iter().enumerate() {
        for input in &kernel.inputs {
            let r = root[input.0];
            if matches!(graph.node(r).kind, NodeKind::Weight) {
                uses.entry(r).and_modify(|u| u.1 = k).or_insert((k, k));
            }
        }
        if kernel.is_view {
            if let Some(first) = kernel.inputs.first() {
                root[kernel.node.0] = root[first.0];
            }
        }
    }
    // A graph output that is (a view of) a weight lives to the end of the invocation.
    let end = plan.kernels.len().saturating_sub(1);
    for (_, out) in graph.outputs() {
        if let Some(u) = uses.get_mut(&root[out.0]) {
            u.1 = end;
        }
    }
    let mut list: Vec<(NodeId, usize, usize)> = uses.into_iter().map(|(n, (a, b))| (n, a, b)).collect();
    list.sort_by_key(|&(n, first, _)| (first, n));
    list
}

/// The biggest set of weight bytes one kernel reads at once (with alignment): no ring smaller
/// than this can run the plan.
pub fn largest_kernel_weight_set(plan: &Plan) -> u64 {
    let uses = weight_uses(plan);
    let bytes = |n: NodeId| align(plan.graph.node(n).ty.size_bytes());
    (0..plan.kernels.len())
        .map(|k| uses.iter().filter(|&&(_, a, b)| a <= k && k <= b).map(|&(n, _, _)| bytes(n)).sum::<u64>())
        .max()
        .unwrap_or(0)
}

/// Places the weights of `invocations` (in run order) in a ring of `capacity` bytes, every
/// weight loaded again by every invocation that reads it.
pub fn plan_weight_timeline(invocations: &[&Plan], capacity: u64) -> Result<WeightTimeline, CompileError> {
    place(invocations, capacity, &HashSet::new())
}

/// [`plan_weight_timeline`], but the weights of plans invoked more than once (the transformer
/// every step, T5 per prompt) are kept resident where the budget allows: they are loaded once
/// into a pinned region at the start of the ring's memory and never reloaded, which saves
/// (invocations − 1) reads of each. The ring keeps at least a quarter of the capacity (and
/// twice the largest weight set one kernel reads) for the weights that stream.
pub fn plan_weight_timeline_pinned(invocations: &[&Plan], capacity: u64) -> Result<WeightTimeline, CompileError> {
    let mut uses: HashMap<*const Plan, (usize, &Plan)> = HashMap::new();
    for plan in invocations {
        uses.entry(*plan as *const Plan).or_insert((0, plan)).0 += 1;
    }
    let largest = invocations.iter().map(|p| largest_kernel_weight_set(p)).max().unwrap_or(0);
    let ring = (capacity / 4).max(2 * largest).max(min_weight_capacity(invocations)).min(capacity);
    // Candidates: weights of repeated plans, the most reused first, and within a plan the
    // last-read first: with the end of each invocation resident, the ring frees early in it
    // and the next invocation's first weights stream in while the resident end computes.
    let mut candidates: Vec<(usize, usize, *const Plan, NodeId, u64)> = Vec::new();
    for (order, plan) in invocations.iter().enumerate() {
        let (count, _) = uses[&(*plan as *const Plan)];
        if count < 2 || invocations[..order].iter().any(|p| std::ptr::eq(*p, *plan)) {
            continue;
        }
        for (node, first, _) in weight_uses(plan) {
            candidates.push((count, first, *plan as *const Plan, node, align(plan.graph.node(node).ty.size_bytes())));
        }
    }
    candidates.sort_by_key(|&(count, first, _, _, _)| (std::cmp::Reverse(count), std::cmp::Reverse(first)));
    let mut room = capacity - ring;
    let mut pinned = HashSet::new();
    for (_, _, plan, node, size) in candidates {
        if size.max(LOAD_ALIGN) <= room {
            room -= size.max(LOAD_ALIGN);
            pinned.insert((plan, node));
        }
    }
    place(invocations, capacity, &pinned).or_else(|_| place(invocations, capacity, &HashSet::new()))
}

/// The ring's current occupants: start → (end, load index); disjoint intervals.
type Occupants = BTreeMap<u64, (u64, usize)>;

/// Claims `[start, end)` for load `index`, returning the loads whose bytes it overwrites.
fn claim(occupants: &mut Occupants, start: u64, end: u64, index: usize) -> Vec<usize> {
    let overlapping: Vec<(u64, u64, usize)> =
        occupants.range(..end).rev().take_while(|(_, &(e, _))| e > start).map(|(&s, &(e, i))| (s, e, i)).collect();
    for &(s, e, i) in &overlapping {
        occupants.remove(&s);
        if s < start {
            occupants.insert(s, (start, i));
        }
        if e > end {
            occupants.insert(end, (e, i));
        }
    }
    occupants.insert(start, (end, index));
    overlapping.into_iter().map(|(_, _, i)| i).collect()
}

/// Lays out the loads: `pinned` weights (by plan and node) once, at the front; the others
/// through the ring behind them, per invocation.
fn place(
    invocations: &[&Plan],
    capacity: u64,
    pinned: &HashSet<(*const Plan, NodeId)>,
) -> Result<WeightTimeline, CompileError> {
    let mut loads: Vec<WeightLoad> = Vec::new();
    // Where each pinned weight was loaded.
    let mut resident: HashMap<(*const Plan, NodeId), usize> = HashMap::new();
    let mut pinned_end = 0u64;
    // The pinned region: every pinned weight once (the keys name plans of `invocations`).
    let ring_start: u64 = pinned
        .iter()
        .filter_map(|&(p, n)| invocations.iter().find(|q| std::ptr::eq(**q, p)).map(|plan| (plan, n)))
        .map(|(plan, n)| align(plan.graph.node(n).ty.size_bytes()).max(LOAD_ALIGN))
        .sum();
    let mut occupants = Occupants::new();
    let mut cursor = ring_start;
    for (i, plan) in invocations.iter().enumerate() {
        let key = *plan as *const Plan;
        for (node, first, last) in weight_uses(plan) {
            let n = plan.graph.node(node);
            let bytes = n.ty.size_bytes();
            let size = align(bytes).max(LOAD_ALIGN);
            let first_use = RunPoint { invocation: i, kernel: first };
            let last_use = RunPoint { invocation: i, kernel: last };
            if pinned.contains(&(key, node)) {
                if let Some(&j) = resident.get(&(key, node)) {
                    loads[j].reused_by.push((first_use, last_use));
                    continue;
                }
                resident.insert((key, node), loads.len());
                loads.push(WeightLoad {
                    invocation: i,
                    node,
                    name: n.name.clone(),
                    bytes,
                    offset: pinned_end,
                    first_use,
                    last_use,
                    issue_after: None,
                    issue_at: None,
                    overwrites: Vec::new(),
                    pinned: true,
                    reused_by: Vec::new(),
                });
                pinned_end += size;
                continue;
            }
            if size > capacity - ring_start {
                return Err(CompileError::WeightBudget(format!(
                    "weight `{}` ({bytes} bytes) does not fit in a weight budget of {capacity} bytes",
                    n.name
                )));
            }
            let offset = if cursor + size > capacity { ring_start } else { cursor };
            cursor = offset + size;
            // Every earlier load still holding bytes of [offset, offset + size) must be done.
            let overwritten = claim(&mut occupants, offset, offset + size, loads.len());
            let issue_after = overwritten.iter().map(|&j| loads[j].last_use).max();
            if issue_after.is_some_and(|after| after >= first_use) {
                return Err(CompileError::WeightBudget(format!(
                    "a weight budget of {capacity} bytes cannot hold the weights kernel {first} of invocation {i} reads \
                     together with those still in use"
                )));
            }
            loads.push(WeightLoad {
                invocation: i,
                node,
                name: n.name.clone(),
                bytes,
                offset,
                first_use,
                last_use,
                issue_after,
                issue_at: issue_after,
                overwrites: overwritten,
                pinned: false,
                reused_by: Vec::new(),
            });
        }
    }
    let mut distinct: Vec<*const Plan> = Vec::new();
    let plan_of_invocation = invocations
        .iter()
        .map(|p| {
            let key = *p as *const Plan;
            distinct.iter().position(|&d| d == key).unwrap_or_else(|| {
                distinct.push(key);
                distinct.len() - 1
            })
        })
        .collect();
    Ok(WeightTimeline {
        capacity,
        pinned_bytes: ring_start,
        loads,
        kernels_per_invocation: invocations.iter().map(|p| p.kernels.len()).collect(),
        plan_of_invocation,
        modelled_kernel_seconds: Vec::new(),
        modelled_load_bandwidth: f64::INFINITY,
    })
}

/// The smallest ring that runs `invocations` (found by bisection between the largest single
/// kernel's weights and all weights together).
pub fn min_weight_capacity(invocations: &[&Plan]) -> u64 {
    let mut lo = invocations.iter().map(|p| largest_kernel_weight_set(p)).max().unwrap_or(0).max(LOAD_ALIGN);
    let mut hi = invocations
        .iter()
        .map(|p| weight_uses(p).iter().map(|&(n, _, _)| align(p.graph.node(n).ty.size_bytes()).max(LOAD_ALIGN)).sum())
        .max()
        .unwrap_or(0u64)
        .max(lo)
        * 2;
    if plan_weight_timeline(invocations, lo).is_ok() {
        return lo;
    }
    while hi - lo > LOAD_ALIGN {
        let mid = align((lo + hi) / 2);
        if plan_weight_timeline(invocations, mid).is_ok() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

impl WeightTimeline {
    /// The running index of a run point over all invocations.
    pub fn sequence(&self, p: RunPoint) -> usize {
        self.kernels_per_invocation[..p.invocation].iter().sum::<usize>() + p.kernel
    }

    /// Bytes read from the checkpoints over the whole run.
    pub fn bytes_loaded(&self) -> u64 {
        self.loads.iter().map(|l| l.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile_with, CompileOptions, Passes};
    use orrery_ir::{DType, GraphBuilder};

    /// Three linears in a chain (weights of 64·64 f32 = 16 KiB each) with a transposed weight
    /// read by the last one.
    fn chain() -> Plan {
        let mut b = GraphBuilder::new();
        let mut x = b.input("x", DType::F32, [2, 64]).unwrap();
        for i in 0..3 {
            let w = b.weight(&format!("w{i}"), DType::F32, [64, 64]).unwrap();
            x = b.linear(&format!("fc{i}"), x, w, None).unwrap();
        }
        let w = b.weight("wt", DType::F32, [64, 64]).unwrap();
        let t = b.permute("t", w, &[1, 0]).unwrap();
        let y = b.matmul("mm", x, t).unwrap();
        b.output("y", y).unwrap();
        let options = CompileOptions { passes: Passes::None, ..CompileOptions::default() };
        compile_with(b.finish().unwrap(), &options).unwrap()
    }

    #[test]
    fn loads_follow_first_use_and_views_extend_the_last_use() {
        let plan = chain();
        let uses = weight_uses(&plan);
        let names: Vec<&str> = uses.iter().map(|&(n, _, _)| plan.graph.node(n).name.as_str()).collect();
        assert_eq!(names, ["w0", "w1", "w2", "wt"]);
        let mm = plan.kernels.iter().position(|k| k.name == "mm").unwrap();
        assert_eq!(uses[3].2, mm, "the transpose's reader keeps `wt` alive");
        assert_eq!(largest_kernel_weight_set(&plan), 16384);
    }

    #[test]
    fn a_ring_of_two_weights_reuses_memory_in_order_and_refuses_less() {
        let plan = chain();
        let kib16 = 16384;
        // Everything fits: nothing waits.
        let all = plan_weight_timeline(&[&plan, &plan], 8 * kib16).unwrap();
        assert!(all.loads[..4].iter().all(|l| l.issue_after.is_none()));
        assert_eq!(all.bytes_loaded(), 8 * kib16);
        // Two slots: w2 reuses w0's bytes once fc0 is done, and the second invocation's
        // weights wait for the first's.
        let two = plan_weight_timeline(&[&plan, &plan], 2 * kib16).unwrap();
        assert_eq!(two.loads[2].offset, 0);
        assert_eq!(two.loads[2].issue_after, Some(two.loads[0].last_use));
        assert!(two.loads.windows(2).all(|w| w[0].first_use <= w[1].first_use));
        for l in &two.loads {
            assert!(l.issue_after.is_none_or(|a| a < l.first_use));
        }
        assert_eq!(two.sequence(RunPoint { invocation: 1, kernel: 0 }), plan.kernels.len());
        // Each kernel reads one weight (the transpose's view keeps `wt` to `mm`, which reads
        // nothing else), so one slot is the minimum.
        assert_eq!(min_weight_capacity(&[&plan]), kib16);
        assert!(plan_weight_timeline(&[&plan], kib16 - 64).is_err());
    }

    #[test]
    fn repeated_plans_keep_what_fits_resident_and_stream_the_rest() {
        let plan = chain();
        let kib16 = 16384;
        // Room for 3 of the 4 weights of a plan run 4 times: the ring keeps a quarter
        // (and twice the largest kernel set, 2 slots), so 2 weights are pinned.
        let t = plan_weight_timeline_pinned(&[&plan, &plan, &plan, &plan], 4 * kib16).unwrap();
        let pinned: Vec<&WeightLoad> = t.loads.iter().filter(|l| l.pinned).collect();
        assert_eq!(pinned.len(), 2);
        assert_eq!(t.pinned_bytes, 2 * kib16);
        assert!(pinned.iter().all(|l| l.reused_by.len() == 3 && l.issue_after.is_none() && l.offset < t.pinned_bytes));
        assert!(t.loads.iter().filter(|l| !l.pinned).all(|l| l.offset >= t.pinned_bytes));
        // 2 pinned loads once, 2 streamed per invocation.
        assert_eq!(t.loads.len(), 2 + 4 * 2);
        assert_eq!(t.bytes_loaded(), (2 + 8) * kib16);
        // A plan run once pins nothing.
        assert!(plan_weight_timeline_pinned(&[&plan], 4 * kib16).unwrap().loads.iter().all(|l| !l.pinned));
    }
}
