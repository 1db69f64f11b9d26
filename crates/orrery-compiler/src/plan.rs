//! The plan: kernels in execution order with their costs, the values they release and where
//! their outputs live in the activation arena; and the cache of plans per input shapes.

use crate::memory::{plan_memory, validate, BufferSlot, MemoryOptions, MemoryPlan, Storage};
use crate::passes::{optimize, OptimizeOptions, Optimizer, RewriteLog, SplitConvWeights};
use crate::CompileError;
use orrery_ir::{Cost, Graph, NodeId, NodeKind, TensorType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One kernel launch: an op node of the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    pub node: NodeId,
    /// The node's name (`<source>.<suffix>` for rewritten nodes, later).
    pub name: String,
    /// The op with its parameters, as the dump prints it.
    pub op: String,
    pub inputs: Vec<NodeId>,
    pub output: TensorType,
    pub cost: Cost,
    /// True when the output is a view of an input (no memory of its own). A reshape of a
    /// strided value copies, so it is not a view here even though its op is one.
    pub is_view: bool,
    /// Where the output lives in the arena (offset, size, and whether it is in place over an
    /// input or a view of one); `None` for a view of a graph input, weight or constant.
    pub buffer: Option<BufferSlot>,
    /// Values whose last use is this kernel: the runtime releases them right after it.
    pub frees: Vec<NodeId>,
}

/// An executable schedule for one graph at fixed input shapes.
///
/// The memory plan is computed and validated; the CPU runtime writes each kernel's output at
/// its slot in an arena of `arena_bytes` (over the operand, for an output planned in place)
/// and releases values per `Kernel::frees`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub graph: Graph,
    pub kernels: Vec<Kernel>,
    /// Bytes of every weight the graph reads, in its stored dtype.
    pub weight_bytes: u64,
    /// Bytes of the planned activation arena (`memory.arena_bytes`).
    pub arena_bytes: u64,
    /// The most activation bytes live at once: the lower bound `arena_bytes` is measured by.
    pub peak_live_bytes: u64,
    /// The most bytes live at once with the graph inputs counted until their last use
    /// (`memory.peak_resident_bytes`).
    pub peak_resident_bytes: u64,
    pub flops: u64,
    /// Every value's slot in the arena.
    pub memory: MemoryPlan,
    /// The rewrites the optimizer applied, in order (empty with `Passes::None`).
    pub rewrites: RewriteLog,
}

/// Which rewrite passes [`compile_with`] runs before planning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Passes {
    /// The graph as built (to compare against, or to bisect a bad rewrite).
    None,
    /// Canonicalisation, constant folding, CSE and DCE.
    Simplify,
    /// `Simplify` plus elementwise and epilogue fusion.
    #[default]
    Fuse,
}

/// What [`compile_with`] may assume about the target, and which passes it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileOptions {
    pub memory: MemoryOptions,
    pub passes: Passes,
    /// Stop the optimizer after this many rewrites (bisecting a bad rule).
    pub stop_after_rewrites: Option<usize>,
    /// Split each convolution whose weights exceed this many bytes into output-channel slices
    /// (`passes::SplitConvWeights`), so that weights stream through a ring smaller than them.
    pub split_weights_over: Option<u64>,
}

/// Optimizes (simplify + fuse), schedules and plans `graph` with the default options (no arena
/// limit, in place on).
pub fn compile(graph: Graph) -> Result<Plan, CompileError> {
    compile_with(graph, &CompileOptions::default())
}

/// Verifies `graph`, schedules it and plans its memory. The memory plan is always validated
/// ([`validate`]: O(n log n) in the number of nodes, negligible next to planning), so no
/// plan with overlapping live buffers ever leaves the compiler.
pub fn compile_with(graph: Graph, options: &CompileOptions) -> Result<Plan, CompileError> {
    graph.verify()?;
    // One rank of a parallel plan: every value's split state must suit its use.
    if crate::is_parallel(&graph) {
        crate::infer_placements(&graph).map_err(|(node, reason)| CompileError::Placement { node, reason })?;
    }
    // Splitting comes first, on the graph as built, so fusion sees the slices.
    let (graph, mut rewrites) = match options.split_weights_over {
        Some(max_bytes) => Optimizer::new(vec![Box::new(SplitConvWeights { max_bytes })]).run(graph)?,
        None => (graph, RewriteLog::new()),
    };
    let (graph, more) = match options.passes {
        Passes::None => (graph, RewriteLog::new()),
        level => optimize(
            graph,
            &OptimizeOptions {
                stop_after: options.stop_after_rewrites,
                verify_each: cfg!(debug_assertions),
                fuse: level == Passes::Fuse,
            },
        )?,
    };
    rewrites.extend(more);
    let steps: Vec<NodeId> = graph.ids().filter(|id| graph.node(*id).op().is_some()).collect();
    let memory = plan_memory(&graph, &steps, &options.memory)?;
    validate(&memory, &graph)?;
    let kernels = schedule(&graph, &memory);
    let weight_bytes = graph.weights().map(|(_, n)| n.ty.size_bytes()).sum();
    let flops = kernels.iter().map(|k| k.cost.flops).sum();
    Ok(Plan {
        rewrites,
        graph,
        kernels,
        weight_bytes,
        arena_bytes: memory.arena_bytes,
        peak_live_bytes: memory.peak_live_bytes,
        peak_resident_bytes: memory.peak_resident_bytes,
        flops,
        memory,
    })
}

/// One kernel per op node of `graph` in graph order, with its cost, its slot in `memory` and
/// the values whose last use it is: everything in a [`Kernel`] follows from the graph and
/// the memory plan.
fn schedule(graph: &Graph, memory: &MemoryPlan) -> Vec<Kernel> {
    let last_use = last_uses(graph);
    let mut frees_at: Vec<Vec<NodeId>> = vec![Vec::new(); graph.len()];
    for (value, user) in last_use.iter().enumerate() {
        if let Some(user) = user {
            frees_at[user.0].push(NodeId(value));
        }
    }
    let mut kernels = Vec::new();
    for (id, node) in graph.ids().zip(graph.nodes()) {
        let NodeKind::Op(op) = &node.kind else { continue };
        let in_types: Vec<TensorType> = node.inputs.iter().map(|i| graph.node(*i).ty.clone()).collect();
        let buffer = memory.slot(id).copied();
        kernels.push(Kernel {
            node: id,
            name: node.name.clone(),
            op: op.to_string(),
            inputs: node.inputs.clone(),
            output: node.ty.clone(),
            cost: op.cost(&in_types, &node.ty),
            is_view: op.is_view() && !matches!(buffer.map(|b| b.storage), Some(Storage::Owned)),
            buffer,
            frees: std::mem::take(&mut frees_at[id.0]),
        });
    }
    kernels
}

impl Plan {
    /// Checks that the plan is one [`compile_with`] could have produced for its own graph: the
    /// graph verifies, its memory plan is sound ([`validate`]) and schedules the op nodes in
    /// graph order, and the kernels and totals are exactly what the graph and the memory plan
    /// give. A plan read from a file is checked this way before it is used; the rewrites
    /// are a log only and are not checked.
    pub fn verify(&self) -> Result<(), CompileError> {
        let bad = |why: String| Err(CompileError::InvalidPlan(why));
        self.graph.verify()?;
        validate(&self.memory, &self.graph)?;
        let steps = self.graph.ids().filter(|id| self.graph.node(*id).op().is_some());
        if !steps.eq(self.memory.steps.iter().copied()) {
            return bad("the memory plan does not run the op nodes in graph order".into());
        }
        let kernels = schedule(&self.graph, &self.memory);
        if kernels.len() != self.kernels.len() {
            return bad(format!("{} kernels for a graph of {} op nodes", self.kernels.len(), kernels.len()));
        }
        if let Some(k) = self.kernels.iter().zip(&kernels).find(|(k, want)| k != want).map(|(k, _)| k) {
            return bad(format!("kernel `{}` does not match its graph node", k.name));
        }
        let weight_bytes: u64 = self.graph.weights().map(|(_, n)| n.ty.size_bytes()).sum();
        let flops: u64 = kernels.iter().map(|k| k.cost.flops).sum();
        let m = &self.memory;
        let totals = [
            ("weight_bytes", self.weight_bytes, weight_bytes),
            ("flops", self.flops, flops),
            ("arena_bytes", self.arena_bytes, m.arena_bytes),
            ("peak_live_bytes", self.peak_live_bytes, m.peak_live_bytes),
            ("peak_resident_bytes", self.peak_resident_bytes, m.peak_resident_bytes),
        ];
        if let Some((what, got, want)) = totals.iter().find(|(_, got, want)| got != want) {
            return bad(format!("{what} is {got}, the graph gives {want}"));
        }
        Ok(())
    }
}

/// For each value, the op node that uses it last, or `None` when it must outlive the run
/// (graph outputs, weights, which the runtime caches across runs, and unused values).
fn last_uses(graph: &Graph) -> Vec<Option<NodeId>> {
    let mut last: Vec<Option<NodeId>> = vec![None; graph.len()];
    for (id, node) in graph.ids().zip(graph.nodes()) {
        for input in &node.inputs {
            last[input.0] = Some(id);
        }
    }
    for (_, out) in graph.outputs() {
        last[out.0] = None;
    }
    for (id, _) in graph.weights() {
        last[id.0] = None;
    }
    last
}

/// What a cached plan is for. `component` identifies the graph builder and everything
/// besides method and shapes that changes the graph (e.g. the config path and weight dtype);
/// the caller picks it and must keep it distinct for different graphs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlanKey {
    pub component: String,
    pub method: String,
    /// Input name → dims.
    pub shapes: BTreeMap<String, Vec<usize>>,
}

/// Plans per (component, method, input shapes), shared as `Arc`s: a pipeline running many
/// denoising steps at one resolution compiles each component once. Thread-safe.
#[derive(Debug, Default)]
pub struct PlanCache {
    options: CompileOptions,
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
}

impl PlanCache {
    pub fn new(options: CompileOptions) -> PlanCache {
        PlanCache { options, plans: Mutex::default() }
    }

    /// The plan for `key`, building its graph with `build` and compiling it on a miss.
    /// The lock is not held while building, so two threads missing on one key may both
    /// compile; the first to finish is kept and returned to both.
    pub fn get_or_compile<E: From<CompileError>>(
        &self,
        key: PlanKey,
        build: impl FnOnce() -> Result<Graph, E>,
    ) -> Result<Arc<Plan>, E> {
        if let Some(plan) = self.lock().get(&key) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(compile_with(build()?, &self.options)?);
        Ok(self.lock().entry(key).or_insert(plan).clone())
    }

    /// How many plans are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PlanKey, Arc<Plan>>> {
        // A panic while holding the lock cannot leave the map half-updated (one insert).
        self.plans.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_ir::{DType, GraphBuilder, UnaryOp};

    #[test]
    fn plan_counts_costs_and_frees_after_last_use() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [4, 8]).unwrap();
        let w = b.weight("w", DType::BF16, [16, 8]).unwrap();
        let h = b.linear("fc", x, w, None).unwrap();
        let a = b.unary("act", UnaryOp::Relu, h).unwrap();
        let r = b.reshape("flat", a, &[64]).unwrap();
        b.output("y", r).unwrap();
        // Unfused: with fusion the relu would become the linear's epilogue.
        let options = CompileOptions { passes: Passes::Simplify, ..CompileOptions::default() };
        let plan = compile_with(b.finish().unwrap(), &options).unwrap();
        assert_eq!(plan.kernels.len(), 3);
        assert_eq!(plan.weight_bytes, 16 * 8 * 2);
        // fc owns 4·16 f32; act runs in place over it (fc dies there); the reshape is a view.
        assert_eq!(plan.arena_bytes, 4 * 16 * 4);
        assert_eq!(plan.peak_live_bytes, 4 * 16 * 4);
        // x (4·8 f32) is live at fc, beside fc's output.
        assert_eq!(plan.peak_resident_bytes, 4 * 16 * 4 + 4 * 8 * 4);
        assert_eq!(plan.kernels[1].buffer.unwrap().storage, Storage::InPlace { over: h });
        assert_eq!(plan.kernels[2].buffer.unwrap().storage, Storage::View { of: a });
        assert!(plan.kernels[2].is_view);
        assert_eq!(plan.flops, 4 * 16 * 2 * 8 + 4 * 16);
        assert_eq!(plan.kernels[0].frees, vec![x]);
        assert_eq!(plan.kernels[1].frees, vec![h]);
        assert_eq!(plan.kernels[2].frees, vec![a]);
    }

    #[test]
    fn narrow_outputs_get_their_own_buffer_and_inputs_count_until_their_last_use() {
        // A chunk keeping its last row as state: y = relu(x) [4, 64]; state = y[3..4]. The
        // state must not pin y to the end, and x (an input) is live at the relu.
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [4, 64]).unwrap();
        let y = b.unary("act", UnaryOp::Relu, x).unwrap();
        let z = b.unary("neg", UnaryOp::Neg, y).unwrap();
        let last = b.narrow("last", y, 0, 3, 4).unwrap();
        b.output("out", z).unwrap();
        b.output("next_state", last).unwrap();
        let plan = compile(b.finish().unwrap()).unwrap();
        let k = plan.kernels.iter().find(|k| k.name == "last").unwrap();
        assert_eq!(k.buffer.unwrap().storage, Storage::Owned, "a narrow output owns its buffer");
        assert!(!k.is_view);
        let row = 64 * 4;
        // Live at most: y, z and the state row (y dies once both have read it).
        assert_eq!(plan.peak_live_bytes, 2 * 4 * row + row);
        // x and y at the relu; x is dead after it.
        assert_eq!(plan.peak_resident_bytes, plan.peak_live_bytes.max(2 * 4 * row));
    }
}
