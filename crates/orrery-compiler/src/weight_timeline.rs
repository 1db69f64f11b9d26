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
//! subsystem's first weights arrive while the current one computes. The runtime may move the
//! moment it starts a load (it re-times them from measured speeds), never the order or the
//! offsets.
//!
//! A weight's last use counts the views of it: a transposed weight read later keeps it alive.

use crate::{CompileError, Plan};
use orrery_ir::{NodeId, NodeKind};
use std::collections::HashMap;

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
}

/// Where every weight of a run lives and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightTimeline {
    pub capacity: u64,
    /// In the order they are issued.
    pub loads: Vec<WeightLoad>,
    /// Kernels per invocation (to turn run points into a running count).
    pub kernels_per_invocation: Vec<usize>,
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

/// Places the weights of `invocations` (in run order) in a ring of `capacity` bytes.
pub fn plan_weight_timeline(invocations: &[&Plan], capacity: u64) -> Result<WeightTimeline, CompileError> {
    let mut loads: Vec<WeightLoad> = Vec::new();
    let mut cursor = 0u64;
    for (i, plan) in invocations.iter().enumerate() {
        for (node, first, last) in weight_uses(plan) {
            let n = plan.graph.node(node);
            let bytes = n.ty.size_bytes();
            let size = align(bytes).max(LOAD_ALIGN);
            if size > capacity {
                return Err(CompileError::WeightBudget(format!(
                    "weight `{}` ({bytes} bytes) does not fit in a weight budget of {capacity} bytes",
                    n.name
                )));
            }
            let offset = if cursor + size > capacity { 0 } else { cursor };
            cursor = offset + size;
            let first_use = RunPoint { invocation: i, kernel: first };
            // Every earlier load still holding bytes of [offset, offset + size) must be done.
            let issue_after = loads
                .iter()
                .rev()
                .filter(|l| l.offset < offset + size && offset < l.offset + align(l.bytes).max(LOAD_ALIGN))
                .map(|l| l.last_use)
                .max();
            if let Some(after) = issue_after {
                if after >= first_use {
                    return Err(CompileError::WeightBudget(format!(
                        "a weight budget of {capacity} bytes cannot hold the weights kernel {} of invocation {i} reads \
                         together with those still in use",
                        first
                    )));
                }
            }
            loads.push(WeightLoad {
                invocation: i,
                node,
                name: n.name.clone(),
                bytes,
                offset,
                first_use,
                last_use: RunPoint { invocation: i, kernel: last },
                issue_after,
            });
        }
    }
    Ok(WeightTimeline {
        capacity,
        loads,
        kernels_per_invocation: invocations.iter().map(|p| p.kernels.len()).collect(),
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
        // One slot cannot hold `wt` while the transpose waits for `mm`... it can: one kernel
        // reads one weight, so one slot is the minimum.
        assert_eq!(min_weight_capacity(&[&plan]), kib16);
        assert!(plan_weight_timeline(&[&plan], kib16 - 64).is_err());
    }
}
