//! Values a plan computes from its weights and constants alone, kept between runs.
//!
//! Part of a model depends on no input: T5's relative position bias (a gather from a weight
//! table by constant buckets, then a transposing copy: 8 MiB at L 512 and 8 heads, 5.5 ms a
//! run, 3% of the 4-layer benchmark encoder), the DiT's learnable position embedding (its
//! rotary tables depend on the fps input, so they are computed every run). A
//! [`Session`](crate::Session) runs those kernels once, keeps what the rest of the graph reads
//! of them (the *frontier*: each such value read by a node that depends on an input, or that
//! is a graph output), and skips them in later runs. The values are the ones computed, so
//! results are the same bits.
//!
//! What is kept is memory beside the plan, like weights' packs, so it draws from the same
//! budget (`WeightResolver::derived_budget`, the process's pack budget): either every
//! frontier value fits and all are kept, or none is and every run computes them. A run whose
//! weights are streamed keeps nothing (its weights do not stay either).

use orrery_cpu::{BudgetHold, Buffer, CpuTensor, PackBudget};
use orrery_ir::{Graph, NodeKind, OpFamily};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Which nodes depend on weights and constants only, and their kept frontier values.
pub(crate) struct Derived {
    /// Per node index: an op whose value depends on no graph input.
    derived_op: Vec<bool>,
    /// The derived ops whose values the rest of the graph reads.
    frontier: Vec<usize>,
    kept: Mutex<Option<Arc<Kept>>>,
}

/// Every frontier value, and the budget they hold.
pub(crate) struct Kept {
    values: HashMap<usize, CpuTensor>,
    holds: Vec<BudgetHold>,
}

impl Kept {
    pub(crate) fn get(&self, node: usize) -> Option<&CpuTensor> {
        self.values.get(&node)
    }
}

impl Derived {
    pub(crate) fn new(graph: &Graph) -> Derived {
        let nodes = graph.nodes();
        let mut derived = vec![false; nodes.len()];
        let mut derived_op = vec![false; nodes.len()];
        // Nodes come in topological order: every input before its readers.
        for (i, node) in nodes.iter().enumerate() {
            derived[i] = match &node.kind {
                NodeKind::Weight | NodeKind::Constant(_) => true,
                NodeKind::Input => false,
                // A collective's value depends on the other ranks.
                NodeKind::Op(op) => op.family() != OpFamily::Collective && node.inputs.iter().all(|x| derived[x.0]),
            };
            derived_op[i] = derived[i] && matches!(node.kind, NodeKind::Op(_));
        }
        let mut read_outside: HashSet<usize> = graph.outputs().iter().map(|(_, id)| id.0).collect();
        for (i, node) in nodes.iter().enumerate() {
            if !derived[i] {
                read_outside.extend(node.inputs.iter().map(|x| x.0));
            }
        }
        let mut frontier: Vec<usize> = read_outside.into_iter().filter(|&i| derived_op[i]).collect();
        frontier.sort_unstable();
        Derived { derived_op, frontier, kept: Mutex::new(None) }
    }

    /// Whether node `index` is an op computed from weights and constants alone.
    pub(crate) fn is_derived_op(&self, index: usize) -> bool {
        self.derived_op[index]
    }

    /// Whether node `index`'s value is kept once computed (a derived op the rest reads).
    pub(crate) fn is_frontier(&self, index: usize) -> bool {
        self.derived_op[index] && self.frontier.binary_search(&index).is_ok()
    }

    /// The kept values, once a run has kept them all.
    pub(crate) fn kept(&self) -> Option<Arc<Kept>> {
        self.kept.lock().expect("derived values poisoned").clone()
    }

    /// Bytes the kept values hold beside the weights.
    pub(crate) fn kept_bytes(&self) -> u64 {
        self.kept().map_or(0, |k| k.holds.iter().map(BudgetHold::bytes).sum())
    }

    /// Starts collecting a run's frontier values, each drawing its bytes from `budget` as it
    /// comes (none: nothing is kept).
    pub(crate) fn capture(&self, budget: Option<Arc<PackBudget>>) -> Capture<'_> {
        Capture {
            derived: self,
            budget,
            values: HashMap::new(),
            holds: Vec::new(),
            seen: HashSet::new(),
            failed: false,
        }
    }
}

/// A run's frontier values as they are computed, with the budget they hold.
pub(crate) struct Capture<'a> {
    derived: &'a Derived,
    budget: Option<Arc<PackBudget>>,
    values: HashMap<usize, CpuTensor>,
    holds: Vec<BudgetHold>,
    /// Buffers already paid for (by address).
    seen: HashSet<usize>,
    /// A value did not fit: nothing is kept this run.
    failed: bool,
}

impl Capture<'_> {
    /// Takes node `index`'s value `t` when it is a frontier value and fits the budget;
    /// `is_weight(buffer)` tells a weight's buffer (a view of a weight holds nothing new).
    /// Once one does not fit, every value taken is dropped and nothing more is taken.
    pub(crate) fn offer(&mut self, index: usize, t: &CpuTensor, is_weight: impl Fn(&Arc<Buffer>) -> bool) {
        if self.failed || !self.derived.is_frontier(index) {
            return;
        }
        let buffer = t.buffer();
        if self.seen.insert(Arc::as_ptr(buffer) as usize) && !is_weight(buffer) && buffer.owned_bytes() > 0 {
            match self.budget.as_ref().and_then(|b| b.hold(buffer.owned_bytes() as u64)) {
                Some(hold) => self.holds.push(hold),
                None => {
                    self.failed = true;
                    self.values.clear();
                    self.holds.clear();
                    return;
                }
            }
        }
        self.values.insert(index, t.clone());
    }

    /// Keeps the values taken when they are the whole frontier; returns whether they were.
    pub(crate) fn finish(self) -> bool {
        let frontier = &self.derived.frontier;
        if self.failed || frontier.is_empty() || frontier.iter().any(|i| !self.values.contains_key(i)) {
            return false;
        }
        let kept = Kept { values: self.values, holds: self.holds };
        *self.derived.kept.lock().expect("derived values poisoned") = Some(Arc::new(kept));
        true
    }
}
