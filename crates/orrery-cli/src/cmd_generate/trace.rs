//! `--trace FILE.json`: a run as a Chrome / Perfetto trace (open it in ui.perfetto.dev or
//! chrome://tracing): one track of model invocations (compute), one of weight loads, one of the
//! kernels' waits for their weights (and with `--cfg-parallel` one of the second rank's
//! invocations); each re-timing of the issue points is an instant on the
//! loads' track.

use anyhow::{Context, Result};
use orrery_pipeline::GenerateOutput;
use orrery_runtime::EventKind;
use std::path::Path;
use std::time::Duration;

const COMPUTE: u32 = 1;
const LOAD: u32 = 2;
const WAIT: u32 = 3;
const COMPUTE_RANK_1: u32 = 4;

fn span(
    name: &str,
    category: &str,
    track: u32,
    start: Duration,
    end: Duration,
    args: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "name": name, "cat": category, "ph": "X", "pid": 1, "tid": track,
        "ts": start.as_secs_f64() * 1e6, "dur": (end.saturating_sub(start)).as_secs_f64() * 1e6, "args": args,
    })
}

fn track_name(track: u32, name: &str) -> serde_json::Value {
    serde_json::json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": track, "args": {"name": name}})
}

/// The trace of one run as JSON.
pub fn trace_json(out: &GenerateOutput) -> serde_json::Value {
    let mut events = vec![track_name(COMPUTE, "compute"), track_name(LOAD, "weight loads"), track_name(WAIT, "waits")];
    if out.invocations.iter().any(|s| s.rank == 1) {
        events.push(track_name(COMPUTE_RANK_1, "compute (rank 1, --cfg-parallel)"));
    }
    for (i, s) in out.invocations.iter().enumerate() {
        let track = if s.rank == 1 { COMPUTE_RANK_1 } else { COMPUTE };
        events.push(span(&s.label, "compute", track, s.start, s.end, serde_json::json!({"invocation": i})));
    }
    for e in &out.stream_events {
        let label = out.invocations.get(e.invocation).map_or("", |s| s.label.as_str());
        let (category, track) = match e.kind {
            EventKind::Load => ("load", LOAD),
            EventKind::Stall => ("wait", WAIT),
            EventKind::Retime => {
                events.push(serde_json::json!({
                    "name": e.name, "cat": "retime", "ph": "i", "s": "t", "pid": 1, "tid": LOAD,
                    "ts": e.start.as_secs_f64() * 1e6,
                    "args": {"invocation": e.invocation, "subsystem": label, "moved": e.bytes},
                }));
                continue;
            }
        };
        events.push(span(
            &e.name,
            category,
            track,
            e.start,
            e.end,
            serde_json::json!({"invocation": e.invocation, "subsystem": label}),
        ));
    }
    serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

pub fn write_trace(path: &Path, out: &GenerateOutput) -> Result<()> {
    let text = serde_json::to_string(&trace_json(out))?;
    super::write_atomically(path, text.as_bytes()).with_context(|| format!("writing the trace {}", path.display()))
}
