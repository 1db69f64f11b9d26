//! `--memory-budget`: its default from the machine, and how a run's memory plan and weight
//! streaming are reported.

use super::estimate::{human_bytes, human_time};
use orrery_pipeline::{MemoryBudget, MemoryPlan};
use orrery_runtime::StreamStats;

/// The smaller of the cgroup's `memory.max` and `MemAvailable` at start, less 1 GiB; `None`
/// when neither is known.
pub fn default_budget() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|t| t.trim().parse::<u64>().ok());
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
    });
    let limit = match (cgroup, available) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(limit.saturating_sub(1 << 30))
}

/// One line on how the run holds its weights.
pub fn describe(plan: &MemoryPlan, budget: Option<MemoryBudget>) -> String {
    let within = budget.map_or(String::new(), |b| format!(" within a budget of {}", human_bytes(b.bytes)));
    match &plan.timeline {
        None => format!(
            "weights {} resident, activations up to {}{}{within}",
            human_bytes(plan.weight_bytes),
            human_bytes(plan.activation_bytes),
            transient(plan)
        ),
        Some(t) => format!(
            "weights {} streamed through {}{} (reading {} per run), activations up to {}{}{within}; the smallest budget is {}",
            human_bytes(plan.weight_bytes),
            human_bytes(t.capacity),
            plan.weight_split.map_or(String::new(), |b| format!(
                ", convolutions over {} split into output-channel slices",
                human_bytes(b)
            )),
            human_bytes(t.bytes_loaded()),
            human_bytes(plan.activation_bytes),
            transient(plan),
            human_bytes(plan.min_budget)
        ),
    }
}

/// The clause naming the weight a kernel widens to f32, when one does.
fn transient(plan: &MemoryPlan) -> String {
    match plan.transient_bytes {
        0 => String::new(),
        b => format!(" plus {} of a weight widened to f32 inside one product", human_bytes(b)),
    }
}

pub fn describe_stream(s: &StreamStats) -> String {
    format!(
        "weights streamed: {} in {} loads, {} reading, {} stalled, issue points re-timed {} times ({} moved)",
        human_bytes(s.bytes_loaded),
        s.loads,
        human_time(s.load_seconds),
        human_time(s.stall_seconds),
        s.retimes,
        s.issue_points_moved
    )
}

pub fn stream_json(s: &StreamStats) -> serde_json::Value {
    serde_json::json!({
        "bytes": s.bytes_loaded, "loads": s.loads, "load_seconds": s.load_seconds, "stall_seconds": s.stall_seconds,
        "peak_resident_bytes": s.peak_resident_bytes, "retimes": s.retimes, "issue_points_moved": s.issue_points_moved,
    })
}

/// What the run measured per invocation: its activations' peak and the weight bytes read for
/// it, with its label and seconds (to set beside `orrery plan`'s predictions).
pub fn measured_json(out: &orrery_pipeline::GenerateOutput) -> serde_json::Value {
    let mut loaded = vec![0u64; out.invocations.len()];
    for e in out.stream_events.iter().filter(|e| e.kind == orrery_runtime::EventKind::Load) {
        if let Some(b) = loaded.get_mut(e.invocation) {
            *b += e.bytes;
        }
    }
    let invocations: Vec<serde_json::Value> = out
        .invocations
        .iter()
        .zip(&loaded)
        .map(|(s, bytes)| {
            serde_json::json!({
                "label": s.label, "seconds": (s.end - s.start).as_secs_f64(), "peak_live_bytes": s.peak_live_bytes,
                "weight_bytes_read": bytes,
            })
        })
        .collect();
    serde_json::json!({
        "peak_live_bytes": out.invocations.iter().map(|s| s.peak_live_bytes).max().unwrap_or(0),
        "invocations": invocations,
    })
}

pub fn plan_json(plan: &MemoryPlan, budget: Option<MemoryBudget>) -> serde_json::Value {
    serde_json::json!({
        "budget_bytes": budget.map(|b| b.bytes), "weight_bytes": plan.weight_bytes,
        "activation_bytes": plan.activation_bytes, "transient_bytes": plan.transient_bytes,
        "min_budget_bytes": plan.min_budget, "weight_split_bytes": plan.weight_split,
        "streamed": plan.timeline.is_some(), "ring_bytes": plan.timeline.as_ref().map(|t| t.capacity),
    })
}
