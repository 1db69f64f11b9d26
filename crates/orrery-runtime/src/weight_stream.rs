//! Streaming weights through a bounded ring, following a compiled [`WeightTimeline`].
//!
//! One loader thread walks the timeline's loads in order. Each load waits until the kernel its
//! bytes are reused after has finished (and nothing still holds the weights it overwrites),
//! then reads the tensor from its checkpoint with `pread` (no file pages stay mapped) into its
//! planned offset of one anonymous memory region. Sessions run their invocations in the
//! timeline's order through a [`StreamCursor`]: before each kernel they wait for its weights
//! (the wait is the stall), after it they drop the weights whose last use it was and count it
//! finished, which is what lets the loader go on.
//!
//! When a load starts ([`Prefetch`]): with `Planned`, at its issue point (the latest start
//! the cost model says still meets its first use) but never before the ring has freed its
//! bytes; the points are re-timed before every invocation from the kernel and load times
//! measured so far, the order and the offsets never change. With `Eager`, as soon as the ring
//! allows; with `Fixed(K)`, also no more than K kernels ahead (the peers' lookahead). Either
//! way the next subsystem's first weights load while the current one computes.
//!
//! Memory: the ring's `capacity` bytes (the weights resident and in flight), never more.

use crate::{FormatWeights, RuntimeError};
use orrery_compiler::{RunPoint, WeightTimeline};
use orrery_cpu::CpuTensor;
use orrery_ir::NodeId;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The ring: one anonymous mapping, written by the loader and read through [`RingSlice`]s,
/// both through `ptr` (taken once from the owned mapping).
struct Ring {
    ptr: *mut u8,
    len: usize,
    _map: memmap2::MmapMut,
}

// SAFETY: the mapping is plain memory owned by the ring; who may touch which bytes when is
// governed by the timeline and the slice reference counts (see `load_all`).
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

/// The bytes of one loaded weight, owning a share of the ring.
struct RingSlice {
    ring: Arc<Ring>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for RingSlice {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: in bounds (checked when the slice was made); the loader writes these bytes
        // only before this slice exists and again only once no clone of it is alive.
        unsafe { std::slice::from_raw_parts(self.ring.ptr.add(self.start), self.len) }
    }
}

/// When the loader may start a load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// At the timeline's issue points (re-timed while running when [`StreamOptions::retime`]),
    /// never before the ring has freed the load's bytes.
    Planned,
    /// As soon as the ring has freed its bytes.
    Eager,
    /// Also no more than `K` kernels before the load's first use (the fixed lookahead of
    /// other runtimes, for comparison).
    Fixed(usize),
}

/// What the stream measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamStats {
    /// Bytes read from the checkpoints.
    pub bytes_loaded: u64,
    /// Time the loader spent reading (including any `io_bandwidth` throttle).
    pub load_seconds: f64,
    /// Time kernels waited for their weights.
    pub stall_seconds: f64,
    pub loads: usize,
    /// The most weight bytes held in the ring at once (loaded and not yet overwritten).
    pub peak_resident_bytes: u64,
    /// Times the issue points were re-timed from measurements (once per invocation after the
    /// first, with `Prefetch::Planned`).
    pub retimes: usize,
    /// Issue points those re-timings moved, in all.
    pub issue_points_moved: usize,
}

/// How a [`WeightStream`] loads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamOptions {
    /// Bytes per second the loader may read (simulates a slow disk or link); `None`: as fast
    /// as it can.
    pub io_bandwidth: Option<f64>,
    pub prefetch: Prefetch,
    /// Re-time the issue points between invocations from measured times (`Prefetch::Planned`).
    pub retime: bool,
}

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions { io_bandwidth: None, prefetch: Prefetch::Planned, retime: true }
    }
}

/// One timed event, for traces: a load, or a kernel's wait for its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    pub name: String,
    pub invocation: usize,
    /// Bytes read (loads; 0 for stalls).
    pub bytes: u64,
    pub start: Duration,
    pub end: Duration,
    pub kind: EventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Load,
    Stall,
    /// The issue points were re-timed before `invocation` (an instant; `bytes` holds how many
    /// moved).
    Retime,
}

struct State {
    /// Kernels finished, counted over the whole run.
    finished: usize,
    /// Loads complete (a prefix of the timeline).
    loaded: usize,
    /// Bytes of the loaded weights not yet overwritten.
    resident_bytes: u64,
    slices: Vec<Option<Arc<RingSlice>>>,
    error: Option<String>,
    cancelled: bool,
    /// The invocation the next `StreamCursor` must be for.
    next_invocation: usize,
    stats: StreamStats,
    events: Vec<StreamEvent>,
    /// Per load: how many kernels of the run must have finished before it starts.
    gates: Vec<usize>,
    /// Per distinct plan: each kernel's measured seconds in its latest finished invocation.
    latest: Vec<Option<Vec<f64>>>,
    /// Seconds measured over the finished invocations, and what the model gave them.
    measured_seconds: f64,
    modelled_seconds: f64,
    /// The running invocation's kernel seconds so far.
    current: Vec<f64>,
    /// When the last kernel finished (or the invocation began), and the stalls since.
    mark: Duration,
    stalled_since_mark: f64,
}

struct Shared {
    ring: Arc<Ring>,
    timeline: WeightTimeline,
    /// The weights of each invocation.
    sources: Vec<Arc<FormatWeights>>,
    options: StreamOptions,
    state: Mutex<State>,
    changed: Condvar,
    started: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What re-timing needs of the measurements so far.
struct Measured {
    /// Per plan, the latest invocation's kernel seconds.
    latest: Vec<Option<Vec<f64>>>,
    /// Measured / modelled seconds of the finished invocations.
    scale: f64,
    /// Bytes per second the loads took.
    load_rate: f64,
}

/// A running weight stream for one pipeline run.
pub struct WeightStream {
    shared: Arc<Shared>,
    /// (invocation, weight node) → load index.
    index: HashMap<(usize, NodeId), usize>,
    /// Per invocation: kernel → weights whose last use it is.
    releases: Vec<HashMap<usize, Vec<NodeId>>>,
    loader: Option<JoinHandle<()>>,
}

impl WeightStream {
    /// Starts loading. `sources[i]` holds the weights of invocation `i`.
    pub fn start(
        timeline: WeightTimeline,
        sources: Vec<Arc<FormatWeights>>,
        options: StreamOptions,
    ) -> Result<WeightStream, RuntimeError> {
        if sources.len() != timeline.kernels_per_invocation.len() {
            return Err(RuntimeError::Stream(format!(
                "{} weight sources for {} invocations",
                sources.len(),
                timeline.kernels_per_invocation.len()
            )));
        }
        let mut map = memmap2::MmapMut::map_anon(timeline.capacity.max(1) as usize)
            .map_err(|e| RuntimeError::Stream(format!("reserving {} bytes for weights: {e}", timeline.capacity)))?;
        let mut index = HashMap::new();
        let mut releases: Vec<HashMap<usize, Vec<NodeId>>> = vec![HashMap::new(); sources.len()];
        for (j, l) in timeline.loads.iter().enumerate() {
            let spans = std::iter::once((l.first_use, l.last_use)).chain(l.reused_by.iter().copied());
            for (first, last) in spans {
                index.insert((first.invocation, l.node), j);
                releases[first.invocation].entry(last.kernel).or_default().push(l.node);
            }
        }
        let state = State {
            finished: 0,
            loaded: 0,
            resident_bytes: 0,
            slices: vec![None; timeline.loads.len()],
            error: None,
            cancelled: false,
            next_invocation: 0,
            stats: StreamStats::default(),
            events: Vec::new(),
            gates: timeline.loads.iter().map(|l| l.issue_at.map_or(0, |p| timeline.sequence(p) + 1)).collect(),
            latest: vec![None; timeline.modelled_kernel_seconds.len()],
            measured_seconds: 0.0,
            modelled_seconds: 0.0,
            current: Vec::new(),
            mark: Duration::ZERO,
            stalled_since_mark: 0.0,
        };
        let shared = Arc::new(Shared {
            ring: Arc::new(Ring { ptr: map.as_mut_ptr(), len: map.len(), _map: map }),
            timeline,
            sources,
            options,
            state: Mutex::new(state),
            changed: Condvar::new(),
            started: Instant::now(),
        });
        let worker = shared.clone();
        let loader = std::thread::Builder::new()
            .name("orrery-weight-loader".into())
            .spawn(move || load_all(&worker))
            .map_err(|e| RuntimeError::Stream(format!("starting the weight loader: {e}")))?;
        Ok(WeightStream { shared, index, releases, loader: Some(loader) })
    }

    pub fn timeline(&self) -> &WeightTimeline {
        &self.shared.timeline
    }

    pub fn stats(&self) -> StreamStats {
        self.shared.lock().stats.clone()
    }

    /// Loads and stalls so far, timed from the stream's start.
    pub fn events(&self) -> Vec<StreamEvent> {
        self.shared.lock().events.clone()
    }

    /// The moment the stream started (events are relative to it).
    pub fn started(&self) -> Instant {
        self.shared.started
    }

    /// The cursor for the next invocation; invocations must run in the timeline's order.
    /// With `Prefetch::Planned` and re-timing on, the issue points of the loads not yet
    /// started are re-timed first, from what the earlier invocations measured.
    pub fn begin(&self, invocation: usize) -> Result<StreamCursor<'_>, RuntimeError> {
        let measured = {
            let state = self.shared.lock();
            if state.next_invocation != invocation {
                return Err(RuntimeError::Stream(format!(
                    "invocation {invocation} started out of order (the timeline expects {})",
                    state.next_invocation
                )));
            }
            let options = &self.shared.options;
            let retime = options.prefetch == Prefetch::Planned && options.retime && invocation > 0;
            retime.then(|| Measured {
                latest: state.latest.clone(),
                scale: match (state.measured_seconds, state.modelled_seconds) {
                    (seen, model) if seen > 0.0 && model > 0.0 => seen / model,
                    _ => 1.0,
                },
                load_rate: match (state.stats.bytes_loaded, state.stats.load_seconds) {
                    (bytes, seconds) if seconds > 0.0 => bytes as f64 / seconds,
                    _ => self.shared.timeline.modelled_load_bandwidth,
                },
            })
        };
        if let Some(measured) = measured {
            self.retime(invocation, measured);
        }
        let mut state = self.shared.lock();
        state.current.clear();
        state.mark = self.shared.started.elapsed();
        state.stalled_since_mark = 0.0;
        Ok(StreamCursor { stream: self, invocation })
    }

    /// Re-runs the timeline's issue-point pass with measured kernel times (per plan, its
    /// latest invocation; plans not run yet: their modelled times scaled by measured /
    /// modelled so far) and the measured load speed, and moves the issue points of the loads
    /// not started yet. Earlier invocations take their plan's latest times too: only the loads
    /// still to come are moved, and their gates depend on the times ahead of them.
    fn retime(&self, invocation: usize, measured: Measured) {
        let t = &self.shared.timeline;
        if t.modelled_kernel_seconds.is_empty() {
            return;
        }
        let per_plan: Vec<Vec<f64>> = measured
            .latest
            .into_iter()
            .zip(&t.modelled_kernel_seconds)
            .map(|(latest, modelled)| latest.unwrap_or_else(|| modelled.iter().map(|s| s * measured.scale).collect()))
            .collect();
        let kernel_seconds: Vec<&[f64]> = t.plan_of_invocation.iter().map(|&p| per_plan[p].as_slice()).collect();
        let gates = t.issue_gates(&kernel_seconds, &|l| l.bytes as f64 / measured.load_rate);
        let mut state = self.shared.lock();
        let first = state.loaded;
        let mut moved = 0;
        for (j, gate) in gates.into_iter().enumerate().skip(first) {
            if state.gates[j] != gate {
                state.gates[j] = gate;
                moved += 1;
            }
        }
        state.stats.retimes += 1;
        state.stats.issue_points_moved += moved;
        let now = self.shared.started.elapsed();
        state.events.push(StreamEvent {
            name: format!("re-timed {moved} issue points"),
            invocation,
            bytes: moved as u64,
            start: now,
            end: now,
            kind: EventKind::Retime,
        });
        drop(state);
        self.shared.changed.notify_all();
    }

    /// The weight `node` of `invocation`, waiting for its load.
    fn weight(&self, invocation: usize, node: NodeId, label: &str) -> Result<Arc<RingSlice>, RuntimeError> {
        let j = *self.index.get(&(invocation, node)).ok_or_else(|| {
            RuntimeError::Stream(format!("weight `{label}` of invocation {invocation} is not in the timeline"))
        })?;
        let mut state = self.shared.lock();
        let waited = Instant::now();
        let stalled = state.loaded <= j;
        while state.loaded <= j && state.error.is_none() {
            state = self.shared.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(e) = &state.error {
            return Err(RuntimeError::Stream(e.clone()));
        }
        if stalled {
            let (start, end) = (waited - self.shared.started, self.shared.started.elapsed());
            state.stats.stall_seconds += (end - start).as_secs_f64();
            state.stalled_since_mark += (end - start).as_secs_f64();
            state.events.push(StreamEvent {
                name: label.into(),
                invocation,
                bytes: 0,
                start,
                end,
                kind: EventKind::Stall,
            });
        }
        state.slices[j].clone().ok_or_else(|| RuntimeError::Stream(format!("weight `{label}` was released early")))
    }
}

impl Drop for WeightStream {
    fn drop(&mut self) {
        self.shared.lock().cancelled = true;
        self.shared.changed.notify_all();
        if let Some(loader) = self.loader.take() {
            let _ = loader.join();
        }
    }
}

/// One invocation's access to the stream (see [`crate::Session::run_streamed`]).
pub struct StreamCursor<'a> {
    stream: &'a WeightStream,
    invocation: usize,
}

impl StreamCursor<'_> {
    /// The tensor of weight `node` (its dtype and shape), once loaded.
    pub(crate) fn weight(
        &self,
        node: NodeId,
        ty: &orrery_ir::TensorType,
        name: &str,
    ) -> Result<CpuTensor, RuntimeError> {
        let slice = self.stream.weight(self.invocation, node, name)?;
        let len = slice.len;
        CpuTensor::from_mapped(ty.dtype, ty.shape.dims().to_vec(), slice, 0, len).ok_or_else(|| RuntimeError::Weight {
            name: name.into(),
            reason: format!("{len} streamed bytes do not hold {ty}"),
        })
    }

    /// The weights whose last use is `kernel`.
    pub(crate) fn releases(&self, kernel: usize) -> &[NodeId] {
        self.stream.releases[self.invocation].get(&kernel).map_or(&[], |v| v.as_slice())
    }

    /// Kernel `kernel` finished and its released weights were dropped.
    pub(crate) fn finished(&self, kernel: usize) {
        let shared = &self.stream.shared;
        let mut state = shared.lock();
        state.finished = shared.timeline.sequence(RunPoint { invocation: self.invocation, kernel }) + 1;
        // The kernel's own time: since the previous one finished, less its wait for weights.
        let now = shared.started.elapsed();
        let seconds = (now.saturating_sub(state.mark)).as_secs_f64() - state.stalled_since_mark;
        state.current.push(seconds.max(0.0));
        state.mark = now;
        state.stalled_since_mark = 0.0;
        drop(state);
        shared.changed.notify_all();
    }

    /// The whole invocation ran (the next cursor may begin).
    pub(crate) fn done(&self, kernels: usize) -> Result<(), RuntimeError> {
        let expected = self.stream.shared.timeline.kernels_per_invocation[self.invocation];
        if kernels != expected {
            return Err(RuntimeError::Stream(format!(
                "invocation {} ran {kernels} kernels, its timeline has {expected}",
                self.invocation
            )));
        }
        let mut state = self.stream.shared.lock();
        state.next_invocation = self.invocation + 1;
        let times = std::mem::take(&mut state.current);
        let timeline = &self.stream.shared.timeline;
        if let Some(&plan) = timeline.plan_of_invocation.get(self.invocation) {
            if let Some(modelled) = timeline.modelled_kernel_seconds.get(plan) {
                state.measured_seconds += times.iter().sum::<f64>();
                state.modelled_seconds += modelled.iter().sum::<f64>();
                state.latest[plan] = Some(times);
            }
        }
        Ok(())
    }
}

/// The loader thread: every load of the timeline in order.
fn load_all(shared: &Shared) {
    let ring_len = shared.ring.len;
    for (j, load) in shared.timeline.loads.iter().enumerate() {
        let (start, len) = (load.offset as usize, load.bytes as usize);
        // Wait until the bytes are free: the kernel they are reused after has finished and no
        // value still holds an earlier weight there.
        {
            let mut state = shared.lock();
            loop {
                if state.cancelled {
                    return;
                }
                let mut ready = load.issue_after.is_none_or(|p| state.finished > shared.timeline.sequence(p));
                match shared.options.prefetch {
                    Prefetch::Planned => ready &= state.finished >= state.gates[j],
                    Prefetch::Eager => {}
                    Prefetch::Fixed(k) => ready &= state.finished + k >= shared.timeline.sequence(load.first_use),
                }
                let overlapping_free =
                    load.overwrites.iter().all(|&o| state.slices[o].as_ref().is_none_or(|s| Arc::strong_count(s) == 1));
                if ready && overlapping_free {
                    // Those earlier weights are gone for good.
                    let mut freed = 0u64;
                    for &o in &load.overwrites {
                        freed += state.slices[o].take().map_or(0, |s| s.len as u64);
                    }
                    state.resident_bytes -= freed;
                    break;
                }
                // A value may drop its share without a notification: poll now and then.
                state =
                    shared.changed.wait_timeout(state, Duration::from_millis(5)).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
        let began = shared.started.elapsed();
        let result = if start + len > ring_len {
            Err(format!("weight `{}` lies outside the ring", load.name))
        } else {
            // SAFETY: [start, start + len) is inside the mapping, and no `RingSlice` covering
            // any of it is alive (checked above under the lock; new ones are made only below,
            // by this thread).
            let dst = unsafe { std::slice::from_raw_parts_mut(shared.ring.ptr.add(start), len) };
            let weights = &shared.sources[load.invocation];
            match weights.info(&load.name) {
                Some(info) if info.byte_len == len => weights.read_into(&load.name, dst).map_err(|e| e.to_string()),
                Some(info) => Err(format!("`{}` holds {} bytes, the plan expects {len}", load.name, info.byte_len)),
                None => Err(format!("`{}` is not in {}", load.name, weights.source().path().display())),
            }
        };
        if let (Ok(()), Some(rate)) = (&result, shared.options.io_bandwidth) {
            let due = began + Duration::from_secs_f64(len as f64 / rate);
            if let Some(rest) = due.checked_sub(shared.started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        let end = shared.started.elapsed();
        let mut state = shared.lock();
        match result {
            Ok(()) => {
                state.slices[j] = Some(Arc::new(RingSlice { ring: shared.ring.clone(), start, len }));
                state.loaded = j + 1;
                state.stats.bytes_loaded += load.bytes;
                state.stats.loads += 1;
                state.stats.load_seconds += (end - began).as_secs_f64();
                state.resident_bytes += load.bytes;
                state.stats.peak_resident_bytes = state.stats.peak_resident_bytes.max(state.resident_bytes);
                state.events.push(StreamEvent {
                    name: load.name.clone(),
                    invocation: load.invocation,
                    bytes: load.bytes,
                    start: began,
                    end,
                    kind: EventKind::Load,
                });
            }
            Err(e) => {
                state.error = Some(format!("loading weight `{}`: {e}", load.name));
                drop(state);
                shared.changed.notify_all();
                return;
            }
        }
        drop(state);
        shared.changed.notify_all();
    }
}
