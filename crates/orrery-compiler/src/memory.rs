//! The static memory planner: every activation gets a byte range in one arena, decided before
//! any data exists.
//!
//! **What lives in the arena.** Op outputs that own memory. Graph inputs are the caller's
//! buffers, weights are mapped from checkpoint files and constants are embedded in the graph:
//! all three live outside the arena and get no slot. A view op (reshape, permute, slice,
//! expand: [`Op::is_view`]) takes no memory: it aliases its first operand, whose buffer then
//! stays alive until the view's last use (transitively, through views of views). A reshape of
//! a value that is not dense row-major is the exception: the CPU kernel copies it, so here it
//! owns a buffer too (see [`classify`]). Graph outputs (and everything they are views of) are
//! never freed: they live to the end of the run.
//!
//! **Liveness** is counted, ggml-alloc style: each buffer starts with the number of operand
//! uses of it and of its views; walking the kernels in execution order, a buffer is released
//! right after the kernel that consumes its last use. A kernel's output is allocated before
//! its inputs are released, so an output never shares bytes with an input, except in place.
//!
//! **In place.** An elementwise kernel may write its output over an operand that dies at that
//! kernel; see [`can_run_in_place`] for the op whitelist and the invariant, and
//! `in_place_operand` for the conditions on the operand.
//!
//! **Placement.** Two placements are computed and the smaller arena kept: the online best-fit
//! free list of ggml-alloc (allocate from the smallest free block that fits, else grow the
//! arena at its end; freed blocks merge with free neighbours) and an offline greedy-by-size
//! pass (largest buffers first, each at the lowest gap left by the already placed buffers
//! whose lifetimes intersect it). Every buffer is aligned to [`ARENA_ALIGN`] bytes.
//!
//! **Validation.** [`validate`] re-derives the lifetimes from the graph and proves, by a sweep
//! over kernel steps with an ordered map of live byte ranges (O(n log n)), that no two
//! simultaneously live buffers overlap and that every buffer lies inside the arena. It is
//! cheap, so [`crate::compile`] runs it on every plan it produces.

use crate::CompileError;
use orrery_ir::{DType, Graph, NodeId, NodeKind, Op};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every buffer's offset is a multiple of this (a cache line; enough for AVX-512 loads).
pub const ARENA_ALIGN: u64 = 64;

/// How a value's bytes are obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Storage {
    /// A buffer of its own, allocated when its kernel runs.
    Owned,
    /// Written over the buffer of operand `over`, which dies at this kernel (elementwise ops).
    InPlace { over: NodeId },
    /// A view of operand `of` (its first operand): no memory of its own; `offset` and `size`
    /// of the slot are those of the buffer it views (the view's elements lie inside it).
    View { of: NodeId },
}

/// Where a value lives in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BufferSlot {
    /// Byte offset in the arena, a multiple of [`ARENA_ALIGN`].
    pub offset: u64,
    /// Bytes of the value (its type's size, before alignment).
    pub size: u64,
    pub storage: Storage,
}

/// What a device allows a plan to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceLimits {
    /// The largest activation arena the device can hold; `None` for no limit.
    pub max_arena_bytes: Option<u64>,
}

impl DeviceLimits {
    /// The CPU backend: no arena limit is enforced at compile time (host memory is shared with
    /// the weights' page cache and other processes, so a number would only be a guess).
    pub fn cpu() -> DeviceLimits {
        DeviceLimits { max_arena_bytes: None }
    }
}

/// Options of [`plan_memory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryOptions {
    /// A plan whose arena exceeds this is refused ([`CompileError::ArenaTooLarge`]).
    pub max_arena_bytes: Option<u64>,
    /// Let elementwise kernels write over an operand that dies there (default true; tests turn
    /// it off to measure reuse by the free list alone).
    pub allow_in_place: bool,
}

impl Default for MemoryOptions {
    fn default() -> MemoryOptions {
        MemoryOptions { max_arena_bytes: None, allow_in_place: true }
    }
}

impl MemoryOptions {
    pub fn for_device(limits: &DeviceLimits) -> MemoryOptions {
        MemoryOptions { max_arena_bytes: limits.max_arena_bytes, ..MemoryOptions::default() }
    }
}

/// The result of [`plan_memory`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// Bytes of the activation arena: the end of the highest buffer.
    pub arena_bytes: u64,
    /// The most bytes live at once (values' exact sizes, each buffer counted once, summed over
    /// the buffers live during one kernel): a lower bound for any arena with these lifetimes.
    pub peak_live_bytes: u64,
    /// `peak_live_bytes` with the graph inputs counted too, each until its last use (through
    /// views): what a run holds at most when the caller hands the inputs over (a chunk's
    /// carried state, say). Weights and constants are not counted.
    pub peak_resident_bytes: u64,
    /// The op nodes in execution order; step `i` runs `steps[i]`.
    pub steps: Vec<NodeId>,
    /// Per node (indexed by `NodeId`): its place in the arena, or `None` for values outside it
    /// (graph inputs, weights, constants and views of those).
    pub buffers: Vec<Option<BufferSlot>>,
}

impl MemoryPlan {
    pub fn slot(&self, id: NodeId) -> Option<&BufferSlot> {
        self.buffers.get(id.0).and_then(Option::as_ref)
    }

    /// How many distinct byte ranges the plan's buffers occupy (in-place chains and views
    /// share one): with reuse this is far below the number of op outputs.
    pub fn distinct_ranges(&self) -> usize {
        let mut ranges: Vec<(u64, u64)> = self
            .buffers
            .iter()
            .flatten()
            .filter(|s| s.size > 0)
            .map(|s| (s.offset, s.offset + s.size.div_ceil(ARENA_ALIGN) * ARENA_ALIGN))
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        ranges.len()
    }
}

/// The ops that may write their output over an operand.
///
/// Invariant (what makes it sound): output element `i` depends only on element `i` of each
/// operand that has the output's shape, and the kernel reads those elements before it writes
/// element `i` (broadcast operands are read at other positions, so only an operand whose shape
/// equals the output's may be overwritten; `in_place_operand` checks that, plus equal element
/// size). Unary, clamp and binary ops are such ops, and so are fused elementwise programs (the
/// CPU kernel copies a chunk of every operand into scratch before it writes that chunk); the
/// CPU runtime executes exactly these in place (`orrery_cpu::runs_in_place`), so a plan never
/// counts on sharing the runtime does not do. Where and casts would qualify too but are not
/// executed in place; compare is left out (its output is bool), and so is everything that
/// reads neighbours (norms, softmax, matmul, layout ops).
pub fn can_run_in_place(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Clamp { .. } | Op::Binary(_) | Op::Fused(_))
}

/// How a value gets its memory, derived from the graph alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Input, weight or constant: outside the arena.
    External,
    /// An op output with a buffer of its own (or in place over an operand).
    Owned,
    /// Aliases its first operand.
    View,
}

/// Per node: its class, and the arena value whose buffer holds its bytes (`None` outside the
/// arena). A view aliases its operand unless it is a reshape of a value that is not dense
/// row-major (after a permute, a strided slice or an expand), which the CPU kernel copies.
/// "Dense" is tracked conservatively (size-1 dims are ignored, as `CpuTensor::is_contiguous`
/// does): calling a dense view strided only costs a buffer, never correctness.
fn classify(graph: &Graph) -> (Vec<Class>, Vec<Option<NodeId>>) {
    let n = graph.len();
    let mut class = vec![Class::External; n];
    let mut root: Vec<Option<NodeId>> = vec![None; n];
    let mut dense = vec![true; n];
    let mut is_output = vec![false; n];
    for (_, out) in graph.outputs() {
        is_output[out.0] = true;
    }
    for (id, node) in graph.ids().zip(graph.nodes()) {
        let NodeKind::Op(op) = &node.kind else { continue };
        // A graph output lives to the end: one that views part of a larger value (the last
        // frames of a chunk, kept as the next chunk's state) gets a buffer of its own, or it
        // would pin the whole larger buffer until then.
        let narrows = |s: NodeId| node.ty.shape.numel() < graph.node(s).ty.shape.numel();
        let src = node.inputs.first().copied().filter(|&s| !(is_output[id.0] && narrows(s)));
        let view_dense = |src: NodeId| -> Option<bool> {
            let src_dense = dense[src.0];
            let in_dims = graph.node(src).ty.shape.dims();
            match op {
                Op::Reshape { .. } => src_dense.then_some(true),
                Op::Permute { perm } => {
                    let moved: Vec<usize> = perm.iter().copied().filter(|&p| in_dims[p] != 1).collect();
                    Some(src_dense && moved.windows(2).all(|w| w[0] < w[1]))
                }
                Op::Slice { axis, start, end, step } => {
                    let whole = *start == 0 && *end == in_dims[*axis] && *step == 1;
                    let leading_ones = in_dims[..*axis].iter().all(|&d| d == 1);
                    let one = end.saturating_sub(*start).div_ceil(*step) <= 1;
                    Some(src_dense && (whole || (leading_ones && (*step == 1 || one))))
                }
                Op::Expand { .. } => Some(src_dense && node.ty.shape.numel() == graph.node(src).ty.shape.numel()),
                _ => None,
            }
        };
        match src.filter(|_| op.is_view()).and_then(|s| view_dense(s).map(|d| (s, d))) {
            Some((s, d)) => {
                class[id.0] = Class::View;
                root[id.0] = root[s.0];
                dense[id.0] = d;
            }
            None => {
                class[id.0] = Class::Owned;
                root[id.0] = Some(id);
            }
        }
    }
    (class, root)
}

/// Checks that `steps` lists every op node exactly once, each after its operands. Returns
/// each node's step (`usize::MAX` for leaves).
fn step_index(graph: &Graph, steps: &[NodeId]) -> Result<Vec<usize>, CompileError> {
    let bad = |why: String| CompileError::InvalidPlan(why);
    let mut step_of = vec![usize::MAX; graph.len()];
    for (k, &id) in steps.iter().enumerate() {
        let Some(node) = graph.nodes().get(id.0) else {
            return Err(bad(format!("step {k} names {id}, which is not in the graph")));
        };
        if node.op().is_none() {
            return Err(bad(format!("step {k} is `{}`, which is not an op", node.name)));
        }
        if step_of[id.0] != usize::MAX {
            return Err(bad(format!("`{}` is scheduled twice", node.name)));
        }
        for i in &node.inputs {
            let operand = graph.node(*i);
            if operand.op().is_some() && step_of[i.0] == usize::MAX {
                return Err(bad(format!("`{}` runs at step {k} before its operand `{}`", node.name, operand.name)));
            }
        }
        step_of[id.0] = k;
    }
    if let Some((_, node)) =
        graph.ids().zip(graph.nodes()).find(|(id, n)| n.op().is_some() && step_of[id.0] == usize::MAX)
    {
        return Err(bad(format!("`{}` is never scheduled", node.name)));
    }
    Ok(step_of)
}

/// The operand of `v` that `v` may overwrite, if any: an arena value owning its buffer (not
/// a view, not an input, weight, constant or graph output), with the output's shape and
/// dtype (a cast: its element size), used by nothing after `v` (`remaining` counts the uses
/// of each buffer not yet executed, `v`'s own included), and not read by `v` through a view
/// as well (that view would read elements other than the one being written).
fn in_place_operand(
    graph: &Graph,
    v: NodeId,
    class: &[Class],
    root: &[Option<NodeId>],
    remaining: &[usize],
    pinned: &[bool],
) -> Option<NodeId> {
    let node = graph.node(v);
    let op = node.op()?;
    if !can_run_in_place(op) {
        return None;
    }
    node.inputs.iter().copied().find(|&u| {
        let ut = &graph.node(u).ty;
        // The CPU kernels run in place over f32 only.
        let same_elem = ut.dtype == DType::F32 && node.ty.dtype == DType::F32;
        let direct_uses = node.inputs.iter().filter(|&&w| w == u).count();
        let via_view = node.inputs.iter().any(|&w| w != u && root[w.0] == Some(u));
        class[u.0] == Class::Owned
            && !pinned[u.0]
            && ut.shape == node.ty.shape
            && same_elem
            && remaining[u.0] == direct_uses
            && !via_view
    })
}

fn align(bytes: u64) -> u64 {
    bytes.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

/// One allocation: a value's buffer and the in-place values that take it over.
#[derive(Clone, Debug)]
struct Buffer {
    /// Aligned bytes.
    size: u64,
    /// Exact bytes (for the live-bytes count).
    bytes: u64,
    /// First and last step (inclusive) during which the buffer is in use.
    start: usize,
    end: usize,
}

/// Plans the arena for `graph` executed in the order `steps` (every op node once, operands
/// first; `Plan` uses graph order).
pub fn plan_memory(graph: &Graph, steps: &[NodeId], options: &MemoryOptions) -> Result<MemoryPlan, CompileError> {
    step_index(graph, steps)?;
    let (class, root) = classify(graph);
    let n = graph.len();
    let last = steps.len().saturating_sub(1);

    // Uses of each buffer root, counted through views; roots of graph outputs never die.
    let mut remaining = vec![0usize; n];
    for &id in steps {
        for i in &graph.node(id).inputs {
            if let Some(r) = root[i.0] {
                remaining[r.0] += 1;
            }
        }
    }
    let mut pinned = vec![false; n];
    for (_, out) in graph.outputs() {
        if let Some(r) = root[out.0] {
            pinned[r.0] = true;
        }
    }

    let mut buffers: Vec<Buffer> = Vec::new();
    let mut buffer_of: Vec<usize> = vec![usize::MAX; n];
    let mut storage: Vec<Option<Storage>> = vec![None; n];
    for (k, &v) in steps.iter().enumerate() {
        let node = graph.node(v);
        match class[v.0] {
            Class::Owned => {
                let over = options
                    .allow_in_place
                    .then(|| in_place_operand(graph, v, &class, &root, &remaining, &pinned))
                    .flatten();
                if let Some(u) = over {
                    buffer_of[v.0] = buffer_of[u.0];
                    storage[v.0] = Some(Storage::InPlace { over: u });
                } else {
                    let bytes = node.ty.size_bytes();
                    buffer_of[v.0] = buffers.len();
                    buffers.push(Buffer { size: align(bytes), bytes, start: k, end: k });
                    storage[v.0] = Some(Storage::Owned);
                }
            }
            Class::View => storage[v.0] = Some(Storage::View { of: node.inputs[0] }),
            Class::External => unreachable!("steps hold op nodes only"),
        }
        for i in &node.inputs {
            if let Some(r) = root[i.0] {
                remaining[r.0] -= 1;
                let b = &mut buffers[buffer_of[r.0]];
                b.end = b.end.max(k);
            }
        }
    }
    for (id, &p) in pinned.iter().enumerate() {
        if p && class[id] == Class::Owned {
            buffers[buffer_of[id]].end = last;
        }
    }
    let peak_live_bytes = peak_live(&buffers, steps.len());
    let mut with_inputs = buffers.clone();
    with_inputs.extend(input_lifetimes(graph, steps, &class));
    let peak_resident_bytes = peak_live(&with_inputs, steps.len());
    let (best_fit_offsets, best_fit_arena) = place_best_fit(&buffers, steps.len());
    let (greedy_offsets, greedy_arena) = place_greedy_by_size(&buffers);
    let (offsets, arena_bytes) =
        if greedy_arena < best_fit_arena { (greedy_offsets, greedy_arena) } else { (best_fit_offsets, best_fit_arena) };

    if let Some(limit) = options.max_arena_bytes {
        if arena_bytes > limit {
            return Err(CompileError::ArenaTooLarge { needed: arena_bytes, limit });
        }
    }

    let mut slots: Vec<Option<BufferSlot>> = vec![None; n];
    for &v in steps {
        let slot = match storage[v.0] {
            Some(s @ (Storage::Owned | Storage::InPlace { .. })) => {
                Some(BufferSlot { offset: offsets[buffer_of[v.0]], size: graph.node(v).ty.size_bytes(), storage: s })
            }
            Some(s @ Storage::View { .. }) => {
                root[v.0].and_then(|r| slots[r.0]).map(|r| BufferSlot { storage: s, ..r })
            }
            None => None,
        };
        slots[v.0] = slot;
    }
    Ok(MemoryPlan { arena_bytes, peak_live_bytes, peak_resident_bytes, steps: steps.to_vec(), buffers: slots })
}

/// Each graph input as a buffer live from the first step to its last use, counted through
/// the views of it (to the end when a graph output views it).
fn input_lifetimes(graph: &Graph, steps: &[NodeId], class: &[Class]) -> Vec<Buffer> {
    let n = graph.len();
    let mut input_of: Vec<Option<usize>> = vec![None; n];
    let mut lives: Vec<Buffer> = Vec::new();
    for (id, node) in graph.ids().zip(graph.nodes()) {
        if matches!(node.kind, NodeKind::Input) {
            input_of[id.0] = Some(lives.len());
            let bytes = node.ty.size_bytes();
            lives.push(Buffer { size: bytes, bytes, start: 0, end: 0 });
        }
    }
    for (k, &v) in steps.iter().enumerate() {
        let node = graph.node(v);
        for i in &node.inputs {
            if let Some(b) = input_of[i.0] {
                lives[b].end = lives[b].end.max(k);
            }
        }
        if class[v.0] == Class::View {
            input_of[v.0] = node.inputs.first().and_then(|s| input_of[s.0]);
        }
    }
    let last = steps.len().saturating_sub(1);
    for (_, out) in graph.outputs() {
        if let Some(b) = input_of[out.0] {
            lives[b].end = last;
        }
    }
    lives
}

/// The most exact bytes live during any one step.
fn peak_live(buffers: &[Buffer], n_steps: usize) -> u64 {
    let mut delta = vec![0i128; n_steps + 1];
    for b in buffers {
        delta[b.start] += b.bytes as i128;
        delta[b.end + 1] -= b.bytes as i128;
    }
    let mut live = 0i128;
    let mut peak = 0i128;
    for d in delta {
        live += d;
        peak = peak.max(live);
    }
    peak as u64
}

/// ggml-alloc's allocator: walking the steps, allocate each new buffer from the smallest free
/// block that fits (lowest offset on ties), else at the arena's end (extending a free block
/// that touches the end); after each step, return the buffers that died there to the free
/// list, merging adjacent blocks.
fn place_best_fit(buffers: &[Buffer], n_steps: usize) -> (Vec<u64>, u64) {
    let mut offsets = vec![0u64; buffers.len()];
    let mut starts: Vec<Vec<usize>> = vec![Vec::new(); n_steps];
    let mut ends: Vec<Vec<usize>> = vec![Vec::new(); n_steps];
    for (i, b) in buffers.iter().enumerate() {
        starts[b.start].push(i);
        ends[b.end].push(i);
    }
    // Free blocks below `top`, by offset: offset → size.
    let mut free: BTreeMap<u64, u64> = BTreeMap::new();
    let mut top = 0u64;
    for k in 0..n_steps {
        for &i in &starts[k] {
            let size = buffers[i].size;
            if size == 0 {
                continue;
            }
            let fit = free.iter().filter(|(_, &s)| s >= size).min_by_key(|(&o, &s)| (s, o)).map(|(&o, &s)| (o, s));
            offsets[i] = match fit {
                Some((o, s)) => {
                    free.remove(&o);
                    if s > size {
                        free.insert(o + size, s - size);
                    }
                    o
                }
                None => match free.iter().next_back().map(|(&o, &s)| (o, s)) {
                    Some((o, s)) if o + s == top => {
                        free.remove(&o);
                        top = o + size;
                        o
                    }
                    _ => {
                        top += size;
                        top - size
                    }
                },
            };
        }
        for &i in &ends[k] {
            let size = buffers[i].size;
            if size == 0 {
                continue;
            }
            let (mut o, mut s) = (offsets[i], size);
            if let Some((&po, &ps)) = free.range(..o).next_back() {
                if po + ps == o {
                    free.remove(&po);
                    o = po;
                    s += ps;
                }
            }
            if let Some(&ns) = free.get(&(o + s)) {
                free.remove(&(o + s));
                s += ns;
            }
            free.insert(o, s);
        }
    }
    (offsets, top)
}

/// Offline greedy by size: largest buffers first (earliest first on ties); each goes into the
/// smallest gap, between the already placed buffers whose lifetimes intersect its own, that
/// fits it (lowest offset on ties), else above them all.
fn place_greedy_by_size(buffers: &[Buffer]) -> (Vec<u64>, u64) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].size), buffers[i].start, i));
    let mut offsets = vec![0u64; buffers.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0u64;
    for &i in &order {
        let b = &buffers[i];
        if b.size == 0 {
            continue;
        }
        let mut taken: Vec<(u64, u64)> = placed
            .iter()
            .map(|&j| &buffers[j])
            .zip(placed.iter())
            .filter(|(p, _)| p.start <= b.end && b.start <= p.end)
            .map(|(p, &j)| (offsets[j], offsets[j] + p.size))
            .collect();
        taken.sort_unstable();
        let mut best: Option<(u64, u64)> = None; // (gap size, offset)
        let mut cursor = 0u64;
        for (lo, hi) in taken {
            if lo > cursor && lo - cursor >= b.size && best.is_none_or(|(g, _)| lo - cursor < g) {
                best = Some((lo - cursor, cursor));
            }
            cursor = cursor.max(hi);
        }
        offsets[i] = best.map_or(cursor, |(_, o)| o);
        arena = arena.max(offsets[i] + b.size);
        placed.push(i);
    }
    (offsets, arena)
}

/// Proves `plan` sound for `graph`: the steps schedule every op once after its operands;
/// each value's slot matches what it is (none outside the arena, views point at their
/// operand's buffer, buffers aligned and inside `arena_bytes`); every in-place claim is legal
/// (whitelisted op, operand of the output's shape and element size, dying exactly there and
/// not also read through a view); and no two buffers live during the same step overlap.
/// Lifetimes are re-derived from the graph, not taken from the planner.
pub fn validate(plan: &MemoryPlan, graph: &Graph) -> Result<(), CompileError> {
    let bad = |why: String| Err(CompileError::InvalidPlan(why));
    if plan.buffers.len() != graph.len() {
        return bad(format!("{} buffer slots for a graph of {} nodes", plan.buffers.len(), graph.len()));
    }
    // Operands named by slots index the graph below: out-of-range ones (a damaged plan read
    // from a file) are refused first.
    for (i, slot) in plan.buffers.iter().enumerate() {
        if let Some(BufferSlot { storage: Storage::InPlace { over: r } | Storage::View { of: r }, .. }) = slot {
            if r.0 >= graph.len() {
                return bad(format!("the slot of `{}` names {r}, which is not in the graph", graph.nodes()[i].name));
            }
        }
    }
    let steps = &plan.steps;
    let step_of = step_index(graph, steps)?;
    let (class, root) = classify(graph);
    let name = |id: NodeId| graph.node(id).name.as_str();
    let last = steps.len().saturating_sub(1);

    // Each buffer root's last step: its last use through any view; graph outputs: the end.
    let mut end = vec![0usize; graph.len()];
    for (k, &id) in steps.iter().enumerate() {
        if class[id.0] == Class::Owned {
            end[id.0] = k;
        }
        for i in &graph.node(id).inputs {
            if let Some(r) = root[i.0] {
                end[r.0] = end[r.0].max(k);
            }
        }
    }
    for (_, out) in graph.outputs() {
        if let Some(r) = root[out.0] {
            end[r.0] = last;
        }
    }

    for (id, node) in graph.ids().zip(graph.nodes()) {
        let slot = plan.buffers[id.0];
        match (class[id.0], slot) {
            (Class::External, None) => {}
            (Class::External, Some(_)) => {
                return bad(format!("`{}` lives outside the arena but has a slot", node.name))
            }
            (Class::View, s) => {
                let want = root[id.0]
                    .and_then(|r| plan.buffers[r.0])
                    .map(|r| BufferSlot { storage: Storage::View { of: node.inputs[0] }, ..r });
                if s != want {
                    return bad(format!("view `{}` has slot {s:?}, expected {want:?}", node.name));
                }
            }
            (Class::Owned, None) => return bad(format!("`{}` owns memory but has no slot", node.name)),
            (Class::Owned, Some(s)) => {
                if s.offset % ARENA_ALIGN != 0 {
                    return bad(format!("`{}` at offset {} is not {ARENA_ALIGN}-byte aligned", node.name, s.offset));
                }
                if s.size != node.ty.size_bytes() {
                    return bad(format!("`{}` has {} bytes but its slot {}", node.name, node.ty.size_bytes(), s.size));
                }
                if s.offset.checked_add(s.size).is_none_or(|e| e > plan.arena_bytes) {
                    return bad(format!(
                        "`{}` [{}, +{}) ends past the arena ({} bytes)",
                        node.name, s.offset, s.size, plan.arena_bytes
                    ));
                }
                match s.storage {
                    Storage::Owned => {}
                    Storage::View { .. } => {
                        return bad(format!("`{}` owns memory but is planned as a view", node.name))
                    }
                    Storage::InPlace { over: u } => {
                        let op = node.op().expect("owned values are op outputs");
                        let us = plan.buffers.get(u.0).copied().flatten();
                        let elem_ok = match op {
                            Op::Cast { .. } => graph.node(u).ty.dtype.size_bytes() == node.ty.dtype.size_bytes(),
                            _ => graph.node(u).ty.dtype == node.ty.dtype,
                        };
                        let legal = can_run_in_place(op)
                            && node.inputs.contains(&u)
                            && class[u.0] == Class::Owned
                            && us.is_some_and(|us| us.offset == s.offset && us.size == s.size)
                            && graph.node(u).ty.shape == node.ty.shape
                            && elem_ok
                            && end[u.0] == step_of[id.0]
                            && !graph.outputs().iter().any(|(_, o)| root[o.0] == Some(u))
                            && !node.inputs.iter().any(|&w| w != u && root[w.0] == Some(u));
                        if !legal {
                            return bad(format!("`{}` may not run in place over `{}`", node.name, name(u)));
                        }
                    }
                }
            }
        }
    }

    // Sweep: at step k the output is added (replacing the operand it overwrites in place),
    // checked against every live range, then the values whose last step is k leave.
    let mut dying: Vec<Vec<NodeId>> = vec![Vec::new(); steps.len()];
    for &id in steps {
        if class[id.0] == Class::Owned {
            dying[end[id.0]].push(id);
        }
    }
    let mut live: BTreeMap<u64, (u64, NodeId)> = BTreeMap::new();
    for (k, &v) in steps.iter().enumerate() {
        if let Some(s) = plan.buffers[v.0].filter(|s| s.size > 0 && class[v.0] == Class::Owned) {
            if let Storage::InPlace { over } = s.storage {
                if live.get(&s.offset).map(|e| e.1) == Some(over) {
                    live.remove(&s.offset);
                } else if graph.node(over).ty.size_bytes() > 0 {
                    return bad(format!("`{}` runs in place over `{}`, which is not live", name(v), name(over)));
                }
            }
            let hi = s.offset + s.size;
            if let Some((&lo2, &(hi2, other))) = live.range(..hi).next_back() {
                if hi2 > s.offset {
                    return bad(format!(
                        "at step {k}, `{}` [{}, {hi}) overlaps live `{}` [{lo2}, {hi2})",
                        name(v),
                        s.offset,
                        name(other)
                    ));
                }
            }
            live.insert(s.offset, (hi, v));
        }
        for &d in &dying[k] {
            if let Some(s) = plan.buffers[d.0].filter(|s| s.size > 0) {
                if live.get(&s.offset).map(|e| e.1) == Some(d) {
                    live.remove(&s.offset);
                }
            }
        }
    }
    if plan.peak_live_bytes > plan.arena_bytes {
        return bad(format!("peak live bytes {} exceed the arena ({})", plan.peak_live_bytes, plan.arena_bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_ir::{DType, GraphBuilder, UnaryOp};

    #[test]
    fn best_fit_reuses_the_smallest_block_and_merges_neighbours() {
        let b = |size, start, end| Buffer { size, bytes: size, start, end };
        // a [0,1] 128, b [0,2] 64, c [2,3] 64 fits a's hole; d [3,3] 192 needs a+... merged.
        let bufs = [b(128, 0, 1), b(64, 0, 2), b(64, 2, 3), b(192, 3, 3)];
        let (offsets, arena) = place_best_fit(&bufs, 4);
        assert_eq!(offsets[..3], [0, 128, 0]);
        // After step 2, b (128..192) frees; free blocks 64..128 and 128..192 merge; d needs 192:
        // the block touching the end grows.
        assert_eq!(offsets[3], 64);
        assert_eq!(arena, 256);
    }

    #[test]
    fn permuted_values_are_copied_by_reshape() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [4, 8]).unwrap();
        let h = b.unary("h", UnaryOp::Exp, x).unwrap();
        let p = b.permute("p", h, &[1, 0]).unwrap();
        let r = b.reshape("r", p, &[32]).unwrap();
        let r2 = b.reshape("r2", h, &[32]).unwrap();
        let y = b.add("y", r, r2).unwrap();
        b.output("y", y).unwrap();
        let g = b.finish().unwrap();
        let (class, root) = classify(&g);
        assert_eq!(class[p.0], Class::View);
        assert_eq!(class[r.0], Class::Owned, "reshape of a transposed value copies");
        assert_eq!(class[r2.0], Class::View);
        assert_eq!(root[r2.0], Some(h));
    }
}
