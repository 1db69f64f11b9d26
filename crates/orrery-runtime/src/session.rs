//! Running a plan.

use crate::derived::Derived;
use crate::output_place::{is_at, lend_slot, take_in_place_operand};
use crate::{RuntimeError, StreamCursor, WeightResolver};
use orrery_compiler::Plan;
use orrery_cpu::{Arena, CpuTensor, Recycler};
use orrery_ir::{DType, NodeKind, Op, OpFamily, RefTensor, TensorType};
use orrery_parallel::{Collective, CollectiveError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub seconds: f64,
    /// Wall time of each kernel, in plan order (`Plan::kernels`).
    pub kernel_seconds: Vec<f64>,
    /// Bytes of weights resolved during this run (0 once they are cached).
    pub weights_resolved_bytes: u64,
    /// The most activation bytes held at once (distinct buffers owned by this run: inputs,
    /// kernel outputs and their views; weights, memory-mapped or cached, are not counted).
    /// Measured after each kernel, so it compares with the plan's `arena_bytes`.
    pub peak_live_bytes: u64,
    /// The most bytes held at once by activations, the output being made and the buffers kept
    /// for recycling, measured before each kernel. With recycling on it stays within the
    /// plan's `peak_resident_bytes` (which memory budgets are checked against) unless the
    /// live values alone exceed it.
    pub peak_held_bytes: u64,
    /// Bytes of kernel outputs written into buffers freed earlier in the run instead of new
    /// ones ([`Session::set_recycling`]).
    pub recycled_bytes: u64,
    /// Bytes of kernel outputs written at their places in the session's activation arena
    /// ([`Session::set_arena`]); the other outputs were allocated.
    pub arena_output_bytes: u64,
}

/// A plan bound to its weights and a thread pool, ready to run any number of times.
pub struct Session {
    plan: Plan,
    weights: Arc<dyn WeightResolver>,
    pool: rayon::ThreadPool,
    threads: usize,
    /// Weights resolved so far, by node index; they stay for later runs.
    weight_cache: Mutex<HashMap<usize, CpuTensor>>,
    /// Freed activations' buffers, reused for later kernels' outputs within a run (when the
    /// run has no arena).
    recycler: Option<Recycler>,
    /// Whether kernels write their outputs at their planned places in an arena.
    use_arena: bool,
    /// The arena, kept between runs once made (a run takes it, so two runs at once do not
    /// share one).
    arena: Mutex<Option<Arc<Arena>>>,
    /// The values computed from weights and constants alone, kept after the first run that
    /// fits them in the resolver's budget (`derived`).
    derived: Derived,
}

impl Session {
    pub fn new(plan: Plan, weights: Arc<dyn WeightResolver>, threads: usize) -> Result<Session, RuntimeError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("orrery-worker-{i}"))
            .build()
            .map_err(|e| RuntimeError::ThreadPool { threads, reason: e.to_string() })?;
        let recycler = Some(Recycler::default());
        let derived = Derived::new(&plan.graph);
        Ok(Session {
            plan,
            weights,
            pool,
            threads,
            weight_cache: Mutex::new(HashMap::new()),
            recycler,
            use_arena: true,
            arena: Mutex::new(None),
            derived,
        })
    }

    /// Whether kernels write their outputs at the places the memory plan gave them in an
    /// activation arena of `Plan::arena_bytes` (on by default). The arena is mapped at the first
    /// run and kept until the session drops ([`Session::release_arena`] returns it sooner),
    /// so later runs write into pages already touched: no page faults, and no allocator
    /// calls for those outputs. It never holds more than the plan's arena. Elementwise kernels
    /// planned in place write over their operand (in the arena or not). Outputs the arena
    /// cannot take (values kept between runs, non-f32 values, a place still held by an earlier
    /// output the caller kept) are allocated, recycled buffers first when recycling is on.
    /// Results are the same either way.
    pub fn set_arena(&mut self, on: bool) {
        self.use_arena = on;
        if !on {
            self.release_arena();
        }
    }

    /// Unmaps the activation arena now (the next run maps a new one). Pages holding outputs
    /// a caller still has stay until those are dropped.
    pub fn release_arena(&self) {
        if let Some(arena) = self.arena.lock().expect("arena poisoned").take() {
            let_go(arena);
        }
    }

    /// The arena for one run: the kept one, or a new one (`None` when off, when the plan
    /// needs none, or when it cannot be mapped: the run then allocates its outputs).
    fn take_arena(&self) -> Option<Arc<Arena>> {
        if !self.use_arena || self.plan.arena_bytes == 0 {
            return None;
        }
        let kept = self.arena.lock().expect("arena poisoned").take();
        kept.or_else(|| usize::try_from(self.plan.arena_bytes).ok().and_then(|bytes| Arena::new(bytes).ok()))
    }

    /// Whether kernels may take their outputs from the buffers of values freed earlier in
    /// the run, in runs without an arena ([`Session::set_arena`]) (on by default: it saves
    /// the page faults and zeroing of fresh buffers; the buffers kept for reuse, the live
    /// values and the output being made never exceed the plan's peak of live bytes
    /// (`Plan::peak_resident_bytes`), and the kept buffers are released at the end of each
    /// run). Results are the same either way.
    pub fn set_recycling(&mut self, on: bool) {
        self.recycler = on.then(Recycler::default);
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Bytes of the values computed from weights and constants alone that this session keeps
    /// between runs (0 until a run has kept them; see the `derived` module).
    pub fn kept_derived_bytes(&self) -> u64 {
        self.derived.kept_bytes()
    }

    /// A description of every graph input, e.g. "`x` f32[2, 8], `mask` i64[2, 8]".
    pub fn expected_inputs(&self) -> String {
        let list: Vec<String> = self.plan.graph.inputs().map(|(_, n)| format!("`{}` {}", n.name, n.ty)).collect();
        if list.is_empty() {
            "no inputs".into()
        } else {
            list.join(", ")
        }
    }

    /// Runs the plan once. `inputs` must name every graph input exactly once, with exactly the
    /// declared dtype and shape (callers convert accepted dtypes first).
    pub fn run(
        &self,
        inputs: &HashMap<String, CpuTensor>,
    ) -> Result<(HashMap<String, CpuTensor>, RunStats), RuntimeError> {
        self.run_owned(inputs.clone())
    }

    /// [`Session::run`] taking the inputs: an input the caller holds no other reference to is
    /// freed after its last use instead of living through the whole run.
    pub fn run_owned(
        &self,
        inputs: HashMap<String, CpuTensor>,
    ) -> Result<(HashMap<String, CpuTensor>, RunStats), RuntimeError> {
        self.run_inner(inputs, None, None)
    }

    /// [`Session::run_owned`] with the weights coming from a [`WeightStream`](crate::WeightStream)
    /// instead of the session's resolver: each waits for its load, none is cached, and each is
    /// dropped after its last use so the stream can reuse its memory. The cursor must be the
    /// stream's next invocation, for this plan.
    pub fn run_streamed(
        &self,
        inputs: HashMap<String, CpuTensor>,
        cursor: &StreamCursor<'_>,
    ) -> Result<(HashMap<String, CpuTensor>, RunStats), RuntimeError> {
        self.run_inner(inputs, Some(cursor), None)
    }

    /// [`Session::run_owned`] for one rank of a parallel plan: its [`Op::AllReduce`] kernels
    /// sum over `comm`'s ranks, which must run the same plan shape in step.
    pub fn run_parallel(
        &self,
        inputs: HashMap<String, CpuTensor>,
        comm: &mut dyn Collective,
    ) -> Result<(HashMap<String, CpuTensor>, RunStats), RuntimeError> {
        self.run_inner(inputs, None, Some(comm))
    }

    fn run_inner(
        &self,
        mut inputs: HashMap<String, CpuTensor>,
        cursor: Option<&StreamCursor<'_>>,
        mut comm: Option<&mut dyn Collective>,
    ) -> Result<(HashMap<String, CpuTensor>, RunStats), RuntimeError> {
        let graph = &self.plan.graph;
        for name in inputs.keys() {
            let is_input = graph.find(name).is_some_and(|id| matches!(graph.node(id).kind, NodeKind::Input));
            if !is_input {
                return Err(RuntimeError::UnknownInput { name: name.clone(), expected: self.expected_inputs() });
            }
        }
        let loan = ArenaLoan { session: self, arena: self.take_arena() };
        let arena = &loan.arena;
        // With an arena the outputs it cannot take are allocated: a shelf of recycled buffers
        // beside it could hold as much again.
        let recycler = self.recycler.as_ref().filter(|_| arena.is_none());
        if let Some(r) = recycler {
            r.clear();
        }
        let start = Instant::now();
        let mut stats = RunStats::default();
        let mut values: Vec<Option<CpuTensor>> = vec![None; graph.len()];
        for (id, node) in graph.ids().zip(graph.nodes()) {
            match &node.kind {
                NodeKind::Input => {
                    let t = inputs.remove(&node.name).ok_or_else(|| RuntimeError::MissingInput {
                        name: node.name.clone(),
                        expected: node.ty.to_string(),
                    })?;
                    if t.ty() != node.ty {
                        return Err(RuntimeError::InputMismatch {
                            name: node.name.clone(),
                            got: t.ty().to_string(),
                            expected: node.ty.to_string(),
                        });
                    }
                    values[id.0] = Some(t);
                }
                // Weights and constants are bound when their first consumer runs, below (a
                // constant only read by kept values then costs nothing).
                NodeKind::Constant(_) | NodeKind::Weight | NodeKind::Op(_) => {}
            }
        }
        let plan = &self.plan;
        let weight_nodes: Vec<bool> = graph.nodes().iter().map(|n| matches!(n.kind, NodeKind::Weight)).collect();
        // Values computed from weights alone: kept ones are read instead of their kernels
        // running; otherwise this run offers them for keeping. A streamed run does neither.
        let kept = if cursor.is_none() { self.derived.kept() } else { None };
        let mut capture =
            (cursor.is_none() && kept.is_none()).then(|| self.derived.capture(self.weights.derived_budget()));
        // Values held outside the activations: weights and kept values.
        let resident: Vec<bool> =
            (0..graph.len()).map(|i| weight_nodes[i] || kept.as_ref().is_some_and(|k| k.get(i).is_some())).collect();
        let is_collective =
            |k: usize| graph.node(plan.kernels[k].node).op().is_some_and(|op| op.family() == OpFamily::Collective);
        // Activation bytes live between kernels; an upper bound once buffers freed together
        // are shared (only the recycler's room reads it, and a smaller room is safe).
        let mut live_between = live_bytes(&values, &resident);
        let mut run = |k: usize, comm: Option<&mut dyn Collective>| -> Result<(), RuntimeError> {
            let kernel = &plan.kernels[k];
            if kept.is_some() && self.derived.is_derived_op(kernel.node.0) {
                // Computed by an earlier run; what later kernels read of it is kept.
                stats.kernel_seconds.push(0.0);
                return Ok(());
            }
            let output = if kernel.is_view { 0 } else { graph.node(kernel.node).ty.size_bytes() };
            let shelved = recycler.map_or(0, |recycler| {
                // Room for the shelf beside the live values and the output this kernel makes,
                // within the plan's peak (a memory budget was checked against that peak).
                recycler.fit(plan.peak_resident_bytes.saturating_sub(live_between + output) as usize);
                recycler.bytes() as u64
            });
            stats.peak_held_bytes = stats.peak_held_bytes.max(live_between + output + shelved);
            for &input in &kernel.inputs {
                if values[input.0].is_none() {
                    let node = graph.node(input);
                    let t = match (kept.as_ref().and_then(|k| k.get(input.0)), &node.kind, cursor) {
                        (Some(v), _, _) => v.clone(),
                        (None, NodeKind::Constant(c), _) => constant_tensor(c),
                        (None, _, Some(c)) if weight_nodes[input.0] => c.weight(input, &node.ty, &node.name)?,
                        _ => {
                            let (t, bytes) = self.weight(input.0)?;
                            stats.weights_resolved_bytes += bytes;
                            t
                        }
                    };
                    values[input.0] = Some(t);
                }
            }
            let node = graph.node(kernel.node);
            let op = node.op().expect("kernels are op nodes");
            // Where the output goes (`output_place`): over a dying operand, or at its slot in
            // the arena unless its value is kept between runs.
            let in_place = if comm.is_none() { take_in_place_operand(kernel, &mut values) } else { None };
            let args: Vec<&CpuTensor> = kernel
                .inputs
                .iter()
                .enumerate()
                .filter(|(j, _)| in_place.as_ref().is_none_or(|(at, _)| at != j))
                .map(|(_, i)| values[i.0].as_ref().expect("bound above"))
                .collect();
            let slot = arena
                .as_ref()
                .filter(|_| comm.is_none() && !self.derived.is_derived_op(kernel.node.0))
                .and_then(|arena| lend_slot(arena, kernel, &node.ty));
            let planned_offset = kernel.buffer.and_then(|slot| usize::try_from(slot.offset).ok());
            let offered = (slot.is_some() || in_place.is_some()).then_some(planned_offset).flatten();
            let started = Instant::now();
            let out = match comm {
                Some(comm) => collective(op, args[0], comm)
                    .map_err(|source| RuntimeError::Collective { node: node.name.clone(), source })?,
                None => {
                    let execute = || {
                        let kernel_run = || match in_place {
                            Some((at, operand)) => orrery_cpu::execute_in_place(op, &args, at, operand, &node.ty),
                            None => orrery_cpu::execute(op, &args, &node.ty),
                        };
                        let out = match recycler {
                            Some(r) => r.install(kernel_run),
                            None => kernel_run(),
                        }?;
                        // The plan gives this view a buffer of its own (a narrow graph output):
                        // copy it (into its slot), so the buffer it views can be freed at its
                        // last use.
                        Ok(if op.is_view() && !kernel.is_view { out.compact() } else { out })
                    };
                    match slot {
                        Some(slot) => orrery_cpu::with_output_slot(slot, execute),
                        None => execute(),
                    }
                    .map_err(|source| RuntimeError::Kernel { node: node.name.clone(), source })?
                }
            };
            if let (Some(arena), Some(offset)) = (&arena, offered) {
                if is_at(&out, arena, offset) {
                    stats.arena_output_bytes += node.ty.size_bytes();
                }
            }
            stats.kernel_seconds.push(started.elapsed().as_secs_f64());
            if let Some(capture) = &mut capture {
                capture.offer(kernel.node.0, &out, |buffer| self.is_weight_buffer(buffer));
            }
            values[kernel.node.0] = Some(out);
            let live = live_bytes(&values, &resident);
            stats.peak_live_bytes = stats.peak_live_bytes.max(live);
            let freed: Vec<(usize, CpuTensor)> =
                kernel.frees.iter().filter_map(|f| values[f.0].take().map(|t| (f.0, t))).collect();
            // `live` less the buffers only the freed values held (a buffer they share with each
            // other still counts).
            let gone: u64 = freed
                .iter()
                .filter(|(i, t)| !resident[*i] && Arc::strong_count(t.buffer()) == 1)
                .map(|(_, t)| t.buffer().owned_bytes() as u64)
                .sum();
            live_between = live.saturating_sub(gone);
            if let Some(recycler) = recycler {
                let room = plan.peak_resident_bytes.saturating_sub(live_between);
                freed.into_iter().for_each(|(_, t)| recycler.give(t, room as usize));
            }
            if let Some(c) = cursor {
                for released in c.releases(k) {
                    values[released.0] = None;
                }
                c.finished(k);
            }
            Ok(())
        };
        // The kernels between two collectives run on the pool; each collective runs here, on
        // the caller's thread, which owns the rank's communicator (an MPI handle stays on the
        // thread that made it).
        let mut k = 0;
        while k < plan.kernels.len() {
            let end = (k..plan.kernels.len()).find(|&i| is_collective(i)).unwrap_or(plan.kernels.len());
            self.pool.install(|| (k..end).try_for_each(|i| run(i, None)))?;
            if end < plan.kernels.len() {
                let Some(comm) = comm.as_deref_mut() else {
                    return Err(RuntimeError::NoCollective { node: graph.node(plan.kernels[end].node).name.clone() });
                };
                run(end, Some(comm))?;
            }
            k = end + 1;
        }
        if let Some(c) = cursor {
            c.done(plan.kernels.len())?;
        }
        if let Some(r) = recycler {
            stats.recycled_bytes = r.clear();
        }
        if let Some(capture) = capture {
            capture.finish();
        }
        let mut outputs = HashMap::new();
        for (name, id) in graph.outputs() {
            let value = match (values[id.0].clone(), kept.as_ref().and_then(|k| k.get(id.0))) {
                (Some(v), _) => v,
                (None, Some(v)) => v.clone(),
                // An output that is directly a weight or constant.
                (None, None) => match &graph.node(*id).kind {
                    NodeKind::Constant(c) => constant_tensor(c),
                    _ => self.weight(id.0)?.0,
                },
            };
            outputs.insert(name.clone(), value);
        }
        stats.seconds = start.elapsed().as_secs_f64();
        Ok((outputs, stats))
    }

    /// Whether `buffer` is a resolved weight's.
    fn is_weight_buffer(&self, buffer: &Arc<orrery_cpu::Buffer>) -> bool {
        let cache = self.weight_cache.lock().expect("weight cache poisoned");
        cache.values().any(|w| Arc::ptr_eq(w.buffer(), buffer))
    }

    /// The weight of node `index`, resolving and caching it on first use.
    fn weight(&self, index: usize) -> Result<(CpuTensor, u64), RuntimeError> {
        let node = &self.plan.graph.nodes()[index];
        if let Some(t) = self.weight_cache.lock().expect("weight cache poisoned").get(&index) {
            return Ok((t.clone(), 0));
        }
        let t = self
            .weights
            .resolve(&node.name, &node.ty)
            .map_err(|reason| RuntimeError::Weight { name: node.name.clone(), reason })?;
        if t.ty() != node.ty {
            return Err(RuntimeError::Weight {
                name: node.name.clone(),
                reason: format!("resolved as {}, expected {}", t.ty(), node.ty),
            });
        }
        self.weight_cache.lock().expect("weight cache poisoned").insert(index, t.clone());
        Ok((t, node.ty.size_bytes()))
    }
}

/// A run's arena, kept by the session again when the run ends (or fails).
struct ArenaLoan<'a> {
    session: &'a Session,
    arena: Option<Arc<Arena>>,
}

impl Drop for ArenaLoan<'_> {
    fn drop(&mut self) {
        if let Some(arena) = self.arena.take() {
            let mut kept = self.session.arena.lock().expect("arena poisoned");
            // Another run may have put its own back meanwhile: keep one.
            if kept.is_none() {
                *kept = Some(arena);
            } else {
                let_go(arena);
            }
        }
    }
}

/// Drops the session's reference to `arena`: unmapped with the last reference; outputs still
/// held keep only their own pages ([`Arena::retire`]).
fn let_go(arena: Arc<Arena>) {
    if Arc::strong_count(&arena) > 1 {
        arena.retire();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Outputs the caller still holds keep their pages; the rest go back to the OS now.
        self.release_arena();
    }
}

/// Bytes of the distinct buffers behind the live values not `resident` (weights and kept
/// values).
fn live_bytes(values: &[Option<CpuTensor>], resident: &[bool]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    values
        .iter()
        .zip(resident)
        .filter_map(|(v, &resident)| v.as_ref().filter(|_| !resident))
        .filter(|t| seen.insert(Arc::as_ptr(t.buffer())))
        .map(|t| t.buffer().owned_bytes() as u64)
        .sum()
}

/// Runs collective `op` ([`OpFamily::Collective`]) on this rank's `x` through `comm`.
fn collective(op: &Op, x: &CpuTensor, comm: &mut dyn Collective) -> Result<CpuTensor, CollectiveError> {
    let (me, size) = (comm.rank(), comm.size());
    let invalid = |reason: String| CollectiveError::Invalid { me, op: op.name(), reason };
    let layout = |op: Op, inputs: &[&CpuTensor], out: Vec<usize>| {
        orrery_cpu::execute(&op, inputs, &TensorType::new(DType::F32, out)).map_err(|e| invalid(e.to_string()))
    };
    let ranks = match *op {
        Op::AllReduce => size,
        Op::AllGather { ranks, .. } | Op::AllToAll { ranks, .. } | Op::RankSlice { ranks, .. } => ranks,
        _ => return Err(invalid(format!("{op} is not a collective"))),
    };
    if ranks != size {
        return Err(invalid(format!("the plan was built for {ranks} ranks, the group has {size}")));
    }
    match *op {
        Op::RankSlice { axis, .. } => {
            let mut part = x.shape().to_vec();
            part[axis] /= ranks;
            let slice = Op::Slice { axis, start: me * part[axis], end: (me + 1) * part[axis], step: 1 };
            orrery_cpu::execute(&slice, &[x], &TensorType::new(x.dtype(), part)).map_err(|e| invalid(e.to_string()))
        }
        Op::AllGather { axis, .. } => {
            let all = comm.all_gather(&x.to_f32_vec())?;
            let part = x.shape().to_vec();
            let parts: Vec<CpuTensor> =
                all.chunks(x.numel().max(1)).map(|c| CpuTensor::from_vec(part.clone(), c.to_vec())).collect();
            let mut out = part;
            out[axis] *= ranks;
            layout(Op::Concat { axis }, &parts.iter().collect::<Vec<_>>(), out)
        }
        Op::AllToAll { split, concat, .. } => {
            // Chunk j (along `split`) goes to rank j: the chunks are sent one after another.
            let mut chunk = x.shape().to_vec();
            chunk[split] /= ranks;
            let mut send = Vec::with_capacity(x.numel());
            for j in 0..ranks {
                let slice = Op::Slice { axis: split, start: j * chunk[split], end: (j + 1) * chunk[split], step: 1 };
                send.extend(layout(slice, &[x], chunk.clone())?.to_f32_vec());
            }
            let received = comm.all_to_all(&send)?;
            let parts: Vec<CpuTensor> = received
                .chunks((send.len() / ranks).max(1))
                .map(|c| CpuTensor::from_vec(chunk.clone(), c.to_vec()))
                .collect();
            let mut out = chunk;
            out[concat] *= ranks;
            layout(Op::Concat { axis: concat }, &parts.iter().collect::<Vec<_>>(), out)
        }
        _ => {
            let mut data = x.to_f32_vec();
            comm.all_reduce_sum(&mut data)?;
            Ok(CpuTensor::from_vec(x.shape().to_vec(), data))
        }
    }
}

fn constant_tensor(c: &RefTensor) -> CpuTensor {
    CpuTensor::from_f64(c.dtype, c.shape.clone(), &c.data)
}

/// Peak resident set size of this process in bytes (`VmHWM`), when the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
