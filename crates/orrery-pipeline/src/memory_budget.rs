//! Running a pipeline within a memory budget: every model invocation of the run (T5 per
//! prompt, the video encoder, the transformer per step and branch, the decoder) is known
//! before the first one starts, so the weights are planned as one timeline through a ring
//! (`orrery_compiler::plan_weight_timeline`) and streamed by the runtime's loader while the
//! kernels run (`orrery_runtime::WeightStream`). With a budget that holds every weight, or
//! none given, the weights stay mapped and resident instead.
//!
//! Planned memory = the ring (resident weights and weights in flight) + the largest
//! activation footprint of one invocation (invocations run one after another) + the largest
//! transient a kernel allocates besides its output (a bf16 weight widened to f32 inside a
//! product: `orrery_cpu::transient_bytes`). With the
//! planned prefetch, part of that memory keeps the weights of repeated invocations (the
//! transformer's, every step) resident, so fewer bytes are read per step, and each load gets
//! an issue point from a cost model (the budget's, or a first guess for a CPU), which the
//! runtime re-times from what it measures.

use crate::PipelineError;
use orrery_compiler::{
    min_weight_capacity, plan_weight_timeline, plan_weight_timeline_pinned, IssueModel, Plan, WeightTimeline,
};
use orrery_cpu::CpuTensor;
use orrery_runtime::{
    FormatWeights, Prefetch, RunStats, Session, StreamEvent, StreamOptions, StreamStats, WeightStream,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The caller's limit on planned memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryBudget {
    pub bytes: u64,
    /// Bytes per second weights may be read at (simulates a slow disk or link).
    pub io_bandwidth: Option<f64>,
    /// When streamed weights may load: at the planned issue points, as soon as the ring
    /// allows, or a fixed lookahead.
    pub prefetch: Prefetch,
    /// Re-time the planned issue points between invocations from measured times.
    pub retime: bool,
    /// The speeds the issue points are first planned with; `None`: [`cpu_issue_model`].
    pub issue_model: Option<IssueModel>,
}

impl MemoryBudget {
    /// `bytes` with the defaults: planned and re-timed prefetch, reads as fast as they go.
    pub fn new(bytes: u64) -> MemoryBudget {
        MemoryBudget { bytes, io_bandwidth: None, prefetch: Prefetch::Planned, retime: true, issue_model: None }
    }
}

/// A first guess at a CPU's speeds, for issue points before anything was measured: 50 GFLOP/s
/// and 10 GB/s (about two cores of this class), 20 µs per kernel, weights at `io_bandwidth`
/// or 2 GB/s (a local SSD). The runtime replaces it with measured times after the first
/// invocation.
pub fn cpu_issue_model(io_bandwidth: Option<f64>) -> IssueModel {
    IssueModel {
        flop_rate: 50e9,
        memory_bandwidth: 10e9,
        kernel_overhead: 20e-6,
        load_bandwidth: io_bandwidth.unwrap_or(2e9),
    }
}

/// One model invocation of a run, timed from the run's start.
#[derive(Clone, Debug, PartialEq)]
pub struct InvocationSpan {
    /// The component and method, e.g. `transformer`, `vae.decode`.
    pub label: String,
    pub start: Duration,
    pub end: Duration,
    /// The most activation bytes it held at once (measured).
    pub peak_live_bytes: u64,
    /// The rank that ran it (0 unless `--cfg-parallel` put it on the second rank).
    pub rank: usize,
}

/// How a run uses memory, decided before it starts.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Every component's weights, each counted once.
    pub weight_bytes: u64,
    /// The most bytes one invocation's activations and inputs hold at once.
    pub activation_bytes: u64,
    /// The most bytes one kernel allocates besides its output while it runs (0 for f32
    /// weights; a bf16 weight's f32 copy inside a product of more than a few rows).
    pub transient_bytes: u64,
    /// The smallest budget that runs (streaming through the smallest ring).
    pub min_budget: u64,
    /// `Some` when the weights are streamed: the timeline through a ring of
    /// `budget − activation_bytes − transient_bytes` bytes.
    pub timeline: Option<WeightTimeline>,
    /// `Some(bytes)` when the run's plans split every convolution whose weights exceed `bytes`
    /// into output-channel slices (`orrery_compiler::passes::SplitConvWeights`), because the
    /// budget's ring is smaller than a whole weight; its sessions use the same plans.
    pub weight_split: Option<u64>,
}

/// The working memory of `representative` besides weights: its largest activations and
/// transient.
pub(crate) fn working_bytes(representative: &[&Plan]) -> u64 {
    let activation_bytes = representative.iter().map(|p| p.peak_resident_bytes).max().unwrap_or(0);
    activation_bytes + representative.iter().map(|p| largest_transient(p)).max().unwrap_or(0)
}

impl MemoryPlan {
    /// Plans `invocations` (in run order) with `weight_bytes` the plans' weights counted once.
    /// `representative` is the same sequence with each run of repeated invocations cut to two
    /// (the ring only ever overlaps neighbours, so its minimum is the same), which keeps the
    /// minimum cheap to find; `invocations` is built only when the weights are streamed.
    pub(crate) fn new(
        representative: &[&Plan],
        invocations: impl FnOnce() -> Vec<Arc<Plan>>,
        weight_bytes: u64,
        budget: Option<MemoryBudget>,
        weight_split: Option<u64>,
    ) -> Result<MemoryPlan, PipelineError> {
        let activation_bytes = representative.iter().map(|p| p.peak_resident_bytes).max().unwrap_or(0);
        let transient_bytes = representative.iter().map(|p| largest_transient(p)).max().unwrap_or(0);
        let working = activation_bytes + transient_bytes;
        let min_budget = working + min_weight_capacity(representative);
        let timeline = match budget {
            Some(b) if b.bytes < weight_bytes + working => {
                if b.bytes < min_budget {
                    let widened = match transient_bytes {
                        0 => String::new(),
                        t => format!(", {t} of a weight one kernel widens to f32,"),
                    };
                    return Err(PipelineError::BudgetTooSmall(format!(
                        "a memory budget of {} bytes is below the {min_budget} bytes this run needs at least \
                         ({activation_bytes} of activations{widened} plus the weights its largest kernels read at \
                         once); \
                         raise --memory-budget or lower the size, frames or batch",
                        b.bytes
                    )));
                }
                let all = invocations();
                let all: Vec<&Plan> = all.iter().map(|p| &**p).collect();
                let capacity = b.bytes - working;
                Some(match b.prefetch {
                    // The planned schedule keeps what the budget allows of the repeated
                    // invocations' weights resident, and issues each load by the model.
                    Prefetch::Planned => {
                        let mut t = plan_weight_timeline_pinned(&all, capacity)?;
                        t.schedule_issue_points(&all, &b.issue_model.unwrap_or(cpu_issue_model(b.io_bandwidth)));
                        t
                    }
                    Prefetch::Eager => plan_weight_timeline_pinned(&all, capacity)?,
                    // A fixed lookahead models the peers, which stream every block every time.
                    Prefetch::Fixed(_) => plan_weight_timeline(&all, capacity)?,
                })
            }
            _ => None,
        };
        Ok(MemoryPlan { weight_bytes, activation_bytes, transient_bytes, min_budget, timeline, weight_split })
    }
}

/// The most bytes one kernel of `plan` allocates on the CPU besides its output.
fn largest_transient(plan: &Plan) -> u64 {
    let graph = &plan.graph;
    plan.kernels
        .iter()
        .filter_map(|k| {
            let op = graph.node(k.node).op()?;
            let inputs: Vec<&orrery_ir::TensorType> = k.inputs.iter().map(|i| &graph.node(*i).ty).collect();
            Some(orrery_cpu::transient_bytes(op, &inputs, &k.output))
        })
        .max()
        .unwrap_or(0)
}

/// Runs sessions in the run's order, through the weight stream when there is one, and times
/// each invocation.
pub(crate) struct Invoker {
    stream: Option<WeightStream>,
    /// The plans' weight split (`MemoryPlan::weight_split`): sessions of the run use it.
    weight_split: Option<u64>,
    next: Cell<usize>,
    started: Instant,
    spans: RefCell<Vec<InvocationSpan>>,
}

impl Invoker {
    /// Starts streaming `plan`'s timeline (if any); `sources[i]` holds invocation `i`'s weights.
    pub(crate) fn new(
        plan: &MemoryPlan,
        sources: Vec<Arc<FormatWeights>>,
        budget: Option<MemoryBudget>,
    ) -> Result<Invoker, PipelineError> {
        let options = budget.map_or_else(StreamOptions::default, |b| StreamOptions {
            io_bandwidth: b.io_bandwidth,
            prefetch: b.prefetch,
            retime: b.retime,
        });
        let stream = match &plan.timeline {
            Some(t) => Some(WeightStream::start(t.clone(), sources, options)?),
            None => None,
        };
        let started = stream.as_ref().map_or_else(Instant::now, |s| s.started());
        let weight_split = plan.weight_split;
        Ok(Invoker { stream, weight_split, next: Cell::new(0), started, spans: RefCell::default() })
    }

    /// Runs sessions with their weights resident (no stream).
    pub(crate) fn resident() -> Invoker {
        Invoker {
            stream: None,
            weight_split: None,
            next: Cell::new(0),
            started: Instant::now(),
            spans: RefCell::default(),
        }
    }

    /// Runs the next invocation of the run on `session`.
    pub(crate) fn run(
        &self,
        session: &Session,
        inputs: HashMap<String, CpuTensor>,
        label: &str,
    ) -> Result<HashMap<String, CpuTensor>, PipelineError> {
        self.timed(label, |i| match &self.stream {
            Some(stream) => Ok(session.run_streamed(inputs, &stream.begin(i)?)?),
            None => Ok(session.run_owned(inputs)?),
        })
    }

    /// Runs the next invocation of the run through `evaluate` (a parallel evaluation, which
    /// brings its own session and collective), timing it like [`Invoker::run`]. Refused when
    /// the run streams its weights.
    pub(crate) fn run_with(
        &self,
        label: &str,
        evaluate: impl FnOnce() -> Result<(HashMap<String, CpuTensor>, RunStats), PipelineError>,
    ) -> Result<HashMap<String, CpuTensor>, PipelineError> {
        if self.stream.is_some() {
            return Err(PipelineError::Invalid(format!(
                "`{label}` runs on several ranks, which needs resident weights"
            )));
        }
        self.timed(label, |_| evaluate())
    }

    /// Runs invocation `i` (the next) through `run` and records its span.
    fn timed(
        &self,
        label: &str,
        run: impl FnOnce(usize) -> Result<(HashMap<String, CpuTensor>, RunStats), PipelineError>,
    ) -> Result<HashMap<String, CpuTensor>, PipelineError> {
        let i = self.next.get();
        self.next.set(i + 1);
        let start = self.started.elapsed();
        let (out, stats) = run(i)?;
        self.spans.borrow_mut().push(InvocationSpan {
            label: label.into(),
            start,
            end: self.started.elapsed(),
            peak_live_bytes: stats.peak_live_bytes,
            rank: 0,
        });
        Ok(out)
    }

    /// The weight split of the run's plans (see [`MemoryPlan::weight_split`]).
    pub(crate) fn weight_split(&self) -> Option<u64> {
        self.weight_split
    }

    /// When the run started (spans are timed from it).
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Adds spans timed elsewhere (another rank's invocations), after this rank's, so that
    /// span `i` stays this rank's invocation `i` (the stream's numbering).
    pub(crate) fn add_spans(&self, spans: Vec<InvocationSpan>) {
        self.spans.borrow_mut().extend(spans);
    }

    pub(crate) fn stats(&self) -> Option<StreamStats> {
        self.stream.as_ref().map(|s| s.stats())
    }

    pub(crate) fn events(&self) -> Vec<StreamEvent> {
        self.stream.as_ref().map(|s| s.events()).unwrap_or_default()
    }

    pub(crate) fn spans(&self) -> Vec<InvocationSpan> {
        self.spans.borrow().clone()
    }
}
