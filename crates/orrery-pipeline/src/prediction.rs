//! Predicting a run on a target, from its plans alone: peak memory, the weight bytes moved
//! per denoising step and the time per step (`orrery plan`).
//!
//! The cost model: each kernel takes a fixed overhead plus `max(flops / flop_rate, bytes /
//! memory_bandwidth)` (a roofline); each weight load takes `bytes / link_bandwidth`. The run is then simulated: one
//! loader issues the weight timeline's loads in order, each no earlier than the kernel its
//! bytes are reused after (and, planned, than its issue point: the steady state of the
//! runtime's re-timing, i.e. issue points from the simulated times themselves); each kernel
//! starts when the previous one has ended and its weights have arrived. Resident weights are loaded once before the run (not counted in the steps).
//! Targets other than this machine are labelled as modelled: nothing of them was measured.
//! For this machine the model can be calibrated: each component's plan runs once (twice, the
//! second timed) and its kernel times are scaled by measured / modelled, when the model says
//! that takes under the caller's limit.

use crate::memory_budget::MemoryPlan;
use crate::PipelineError;
use orrery_compiler::{IssueModel, Plan, RunPoint};
use orrery_cpu::CpuTensor;
use orrery_runtime::{FormatWeights, Prefetch, Session};
use std::collections::HashMap;
use std::sync::Arc;

/// What a run is predicted on.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub name: String,
    /// Device memory the run may plan with.
    pub memory_bytes: u64,
    /// Bytes per second between the device's memory and its compute units.
    pub memory_bandwidth: f64,
    /// Bytes per second weights arrive at (host link, or disk for this CPU).
    pub link_bandwidth: f64,
    /// Sustained FLOP/s on these models' kernels.
    pub flop_rate: f64,
    /// Seconds every kernel costs besides its work (dispatch, threads joining).
    pub kernel_overhead: f64,
    /// True when the figures were measured on this machine; false: taken from data sheets.
    pub measured: bool,
}

impl Target {
    /// An 80 GB H100 SXM: 3.35 TB/s HBM3, PCIe 5 × 16 (about 55 GB/s in practice), bf16 dense
    /// 989 TFLOP/s of which 60% sustained on these shapes.
    pub fn h100_80gb() -> Target {
        Target {
            name: "H100 80GB (modelled)".into(),
            memory_bytes: 80_000_000_000,
            memory_bandwidth: 3.35e12,
            link_bandwidth: 55e9,
            flop_rate: 0.6 * 989e12,
            kernel_overhead: 5e-6,
            measured: false,
        }
    }

    /// A 24 GB card like an RTX 4090: 1.0 TB/s, PCIe 4 × 16 (about 25 GB/s), bf16 dense
    /// 165 TFLOP/s, 60% sustained.
    pub fn gpu_24gb() -> Target {
        Target {
            name: "24 GB card (modelled)".into(),
            memory_bytes: 24_000_000_000,
            memory_bandwidth: 1.0e12,
            link_bandwidth: 25e9,
            flop_rate: 0.6 * 165e12,
            kernel_overhead: 5e-6,
            measured: false,
        }
    }

    /// A 16 GB card like an RTX 4080: 0.72 TB/s, PCIe 4 × 16 (about 25 GB/s), bf16 dense
    /// 97 TFLOP/s, 60% sustained.
    pub fn gpu_16gb() -> Target {
        Target {
            name: "16 GB card (modelled)".into(),
            memory_bytes: 16_000_000_000,
            memory_bandwidth: 0.72e12,
            link_bandwidth: 25e9,
            flop_rate: 0.6 * 97e12,
            kernel_overhead: 5e-6,
            measured: false,
        }
    }

    /// The target's speeds as the compiler's issue-point model.
    pub fn issue_model(&self) -> IssueModel {
        IssueModel {
            flop_rate: self.flop_rate,
            memory_bandwidth: self.memory_bandwidth,
            kernel_overhead: self.kernel_overhead,
            load_bandwidth: self.link_bandwidth,
        }
    }

    fn kernel_seconds(&self, plan: &Plan, k: usize) -> f64 {
        self.issue_model().kernel_seconds(plan, k)
    }
}

/// What a run is predicted to need and take.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Weights resident at once: all of them, or the ring (pinned and streamed).
    pub resident_weight_bytes: u64,
    /// The largest activation footprint of one invocation.
    pub activation_bytes: u64,
    /// The largest transient one kernel allocates besides its output (widened weights).
    pub transient_bytes: u64,
    /// Weight bytes read during one denoising step (a middle one): 0 when resident.
    pub bytes_per_step: u64,
    /// Seconds of one denoising step, loads included.
    pub seconds_per_step: f64,
    /// Per component (text encoder, transformer, video decoder/encoder): measured seconds of
    /// one run here over the model's, when calibrated (else empty).
    pub calibration: Vec<(String, f64)>,
    /// Of which kernels wait for weights.
    pub stall_seconds_per_step: f64,
    /// The whole run: text, steps, decoding (resident weights' first load excluded).
    pub seconds: f64,
}

impl Prediction {
    pub fn peak_bytes(&self) -> u64 {
        self.resident_weight_bytes + self.activation_bytes + self.transient_bytes
    }
}

/// How long one run of `plan` takes on `target` by the model (no loads).
pub(crate) fn modelled_seconds(plan: &Plan, target: &Target) -> f64 {
    (0..plan.kernels.len()).map(|k| target.kernel_seconds(plan, k)).sum()
}

/// Runs `plan` on this machine with zero inputs and its weights resident, twice, and returns
/// the second run's seconds (steady state: weights already paged in).
pub(crate) fn measured_seconds(plan: &Plan, weights: Arc<FormatWeights>, threads: usize) -> Result<f64, PipelineError> {
    let session = Session::new(plan.clone(), weights, threads)?;
    let inputs: HashMap<String, CpuTensor> = plan
        .graph
        .inputs()
        .map(|(_, n)| {
            let dims = n.ty.shape.dims().to_vec();
            let count: usize = dims.iter().product();
            (n.name.clone(), CpuTensor::from_f64(n.ty.dtype, dims, &vec![0.0; count]))
        })
        .collect();
    session.run(&inputs)?;
    Ok(session.run(&inputs)?.1.seconds)
}

/// Simulates `invocations` (the run in order) on `target` with `memory`'s weight timeline,
/// loads issued as `prefetch` allows; `scales[i]` multiplies invocation `i`'s kernel times
/// (1 unless calibrated); `step_invocations` are the indices of one denoising step's
/// transformer runs.
pub(crate) fn predict(
    invocations: &[&Plan],
    scales: &[f64],
    memory: &MemoryPlan,
    target: &Target,
    prefetch: Prefetch,
    step_invocations: std::ops::Range<usize>,
) -> Prediction {
    // Kernel end times, per invocation.
    let mut ends: Vec<Vec<f64>> = invocations.iter().map(|p| vec![0.0; p.kernels.len()]).collect();
    // When each (invocation, kernel)'s weights have all arrived.
    let mut ready: Vec<Vec<f64>> = ends.clone();
    let mut clock = 0.0f64;
    let mut stall = vec![0.0f64; invocations.len()];
    let mut loaded_in = vec![0u64; invocations.len()];
    match &memory.timeline {
        None => {
            for ((plan, plan_ends), scale) in invocations.iter().zip(ends.iter_mut()).zip(scales) {
                for (k, end) in plan_ends.iter_mut().enumerate() {
                    clock += scale * target.kernel_seconds(plan, k);
                    *end = clock;
                }
            }
        }
        Some(timeline) => {
            // Loads in order: each needs the loader free and its issue point passed. Kernels
            // and loads depend on each other only forwards in the run, so simulating both in
            // run order, loads first up to the kernel that needs them, is exact.
            let mut loader = 0.0f64;
            let mut next = 0usize;
            // Planned: the issue points the runtime converges to once it has measured the
            // kernels and the link (here: the model's own times).
            let gates = (prefetch == Prefetch::Planned).then(|| {
                let kernel_seconds: Vec<Vec<f64>> = invocations
                    .iter()
                    .zip(scales)
                    .map(|(plan, scale)| {
                        (0..plan.kernels.len()).map(|k| scale * target.kernel_seconds(plan, k)).collect()
                    })
                    .collect();
                let kernel_seconds: Vec<&[f64]> = kernel_seconds.iter().map(|k| k.as_slice()).collect();
                timeline.issue_gates(&kernel_seconds, &|l| l.bytes as f64 / target.link_bandwidth)
            });
            // Kernel end times in run order (for a fixed lookahead's gate).
            let mut finished: Vec<f64> = Vec::new();
            let loads = &timeline.loads;
            let end_of = |ends: &Vec<Vec<f64>>, p: RunPoint| ends[p.invocation][p.kernel];
            for (i, plan) in invocations.iter().enumerate() {
                for k in 0..plan.kernels.len() {
                    let here = RunPoint { invocation: i, kernel: k };
                    // Issue every load needed by this kernel (and those before it in order).
                    while next < loads.len() && loads[next].first_use <= here {
                        let l = &loads[next];
                        let mut start = loader.max(l.issue_after.map_or(0.0, |p| end_of(&ends, p)));
                        if let Some(gate) = gates.as_ref().and_then(|g| g[next].checked_sub(1)) {
                            start = start.max(finished[gate]);
                        }
                        if let Prefetch::Fixed(k) = prefetch {
                            // The runtime lets a load go once kernel first_use − K − 1 is done.
                            let seq = timeline.sequence(l.first_use);
                            if let Some(gate) = seq.checked_sub(k + 1).and_then(|g| finished.get(g)) {
                                start = start.max(*gate);
                            }
                        }
                        loader = start + l.bytes as f64 / target.link_bandwidth;
                        let f = l.first_use;
                        ready[f.invocation][f.kernel] = ready[f.invocation][f.kernel].max(loader);
                        loaded_in[f.invocation] += l.bytes;
                        next += 1;
                    }
                    let start = clock.max(ready[i][k]);
                    stall[i] += start - clock;
                    clock = start + scales[i] * target.kernel_seconds(plan, k);
                    ends[i][k] = clock;
                    finished.push(clock);
                }
            }
        }
    }
    let start_of = |i: usize| if i == 0 { 0.0 } else { ends[i - 1].last().copied().unwrap_or(0.0) };
    let step_start = start_of(step_invocations.start);
    let step_end = ends[step_invocations.end - 1].last().copied().unwrap_or(step_start);
    Prediction {
        resident_weight_bytes: memory.timeline.as_ref().map_or(memory.weight_bytes, |t| t.capacity),
        activation_bytes: memory.activation_bytes,
        transient_bytes: memory.transient_bytes,
        bytes_per_step: step_invocations.clone().map(|i| loaded_in[i]).sum(),
        calibration: Vec::new(),
        seconds_per_step: step_end - step_start,
        stall_seconds_per_step: step_invocations.map(|i| stall[i]).sum(),
        seconds: clock,
    }
}
