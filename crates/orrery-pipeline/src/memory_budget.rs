//! Running a pipeline within a memory budget: every model invocation of the run (T5 per
//! prompt, the video encoder, the transformer per step and branch, the decoder) is known
//! before the first one starts, so the weights are planned as one timeline through a ring
//! (`orrery_compiler::plan_weight_timeline`) and streamed by the runtime's loader while the
//! kernels run (`orrery_runtime::WeightStream`). With a budget that holds every weight, or
//! none given, the weights stay mapped and resident instead.
//!
//! Planned memory = the ring (resident weights and weights in flight) + the largest
//! activation footprint of one invocation (invocations run one after another). With the
//! planned prefetch, part of that memory keeps the weights of repeated invocations (the
//! transformer's, every step) resident, so fewer bytes are read per step.

use crate::PipelineError;
use orrery_compiler::{min_weight_capacity, plan_weight_timeline, plan_weight_timeline_pinned, Plan, WeightTimeline};
use orrery_cpu::CpuTensor;
use orrery_runtime::{FormatWeights, Prefetch, Session, StreamEvent, StreamStats, WeightStream};
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
    /// When streamed weights may load: as the timeline allows, or a fixed lookahead.
    pub prefetch: Prefetch,
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
}

/// How a run uses memory, decided before it starts.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Every component's weights, each counted once.
    pub weight_bytes: u64,
    /// The most bytes one invocation's activations and inputs hold at once.
    pub activation_bytes: u64,
    /// The smallest budget that runs (streaming through the smallest ring).
    pub min_budget: u64,
    /// `Some` when the weights are streamed: the timeline through a ring of
    /// `budget − activation_bytes` bytes.
    pub timeline: Option<WeightTimeline>,
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
    ) -> Result<MemoryPlan, PipelineError> {
        let activation_bytes = representative.iter().map(|p| p.peak_resident_bytes).max().unwrap_or(0);
        let min_budget = activation_bytes + min_weight_capacity(representative);
        let timeline = match budget {
            Some(b) if b.bytes < weight_bytes + activation_bytes => {
                if b.bytes < min_budget {
                    return Err(PipelineError::Invalid(format!(
                        "a memory budget of {} bytes is below the {min_budget} bytes this run needs at least \
                         ({activation_bytes} of activations plus the weights its largest kernels read at once); \
                         raise --memory-budget or lower the size, frames or batch",
                        b.bytes
                    )));
                }
                let all = invocations();
                let all: Vec<&Plan> = all.iter().map(|p| &**p).collect();
                let capacity = b.bytes - activation_bytes;
                Some(match b.prefetch {
                    // The planned schedule keeps what the budget allows of the repeated
                    // invocations' weights resident.
                    Prefetch::Planned => plan_weight_timeline_pinned(&all, capacity)?,
                    // A fixed lookahead models the peers, which stream every block every time.
                    Prefetch::Fixed(_) => plan_weight_timeline(&all, capacity)?,
                })
            }
            _ => None,
        };
        Ok(MemoryPlan { weight_bytes, activation_bytes, min_budget, timeline })
    }
}

/// Runs sessions in the run's order, through the weight stream when there is one, and times
/// each invocation.
pub(crate) struct Invoker {
    stream: Option<WeightStream>,
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
        let (io_bandwidth, prefetch) = budget.map_or((None, Prefetch::Planned), |b| (b.io_bandwidth, b.prefetch));
        let stream = match &plan.timeline {
            Some(t) => Some(WeightStream::start(t.clone(), sources, io_bandwidth, prefetch)?),
            None => None,
        };
        let started = stream.as_ref().map_or_else(Instant::now, |s| s.started());
        Ok(Invoker { stream, next: Cell::new(0), started, spans: RefCell::default() })
    }

    /// Runs sessions with their weights resident (no stream).
    pub(crate) fn resident() -> Invoker {
        Invoker { stream: None, next: Cell::new(0), started: Instant::now(), spans: RefCell::default() }
    }

    /// Runs the next invocation of the run on `session`.
    pub(crate) fn run(
        &self,
        session: &Session,
        inputs: HashMap<String, CpuTensor>,
        label: &str,
    ) -> Result<HashMap<String, CpuTensor>, PipelineError> {
        let i = self.next.get();
        self.next.set(i + 1);
        let start = self.started.elapsed();
        let (out, stats) = match &self.stream {
            Some(stream) => session.run_streamed(inputs, &stream.begin(i)?)?,
            None => session.run_owned(inputs)?,
        };
        self.spans.borrow_mut().push(InvocationSpan {
            label: label.into(),
            start,
            end: self.started.elapsed(),
            peak_live_bytes: stats.peak_live_bytes,
        });
        Ok(out)
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
