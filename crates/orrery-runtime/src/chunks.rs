//! Running one computation as a sequence of chunk plans that carry state (the Cosmos
//! tokenizer's temporal chunks): each chunk's `next_state.<x>` outputs become the next
//! chunk's `state.<x>` inputs, and the chunks' main outputs are concatenated along one axis,
//! copied into place as each chunk finishes.

use crate::{RuntimeError, Session, WeightResolver};
use orrery_compiler::Plan;
use orrery_cpu::CpuTensor;
use std::collections::HashMap;
use std::sync::Arc;

/// Where the chunks' results go: output `name` of every chunk, concatenated along `axis` into
/// `len` elements there.
#[derive(Clone, Copy, Debug)]
pub struct ChunkOutput<'a> {
    pub name: &'a str,
    pub axis: usize,
    pub len: usize,
}

/// Runs `plans` in order. Chunk `i` gets `inputs[i]` under the name `input`, and every
/// `state.<x>` input it declares from the previous chunk's `next_state.<x>` output (a state
/// the previous chunk did not produce is reported by the session as a missing input). Returns
/// the chunks' `output` tensors concatenated as it says.
pub fn run_chunks(
    plans: &[Plan],
    weights: Arc<dyn WeightResolver>,
    input: &str,
    inputs: Vec<CpuTensor>,
    output: ChunkOutput,
    threads: usize,
) -> Result<CpuTensor, RuntimeError> {
    let ChunkOutput { name: output, axis, len } = output;
    let mut state: HashMap<String, CpuTensor> = HashMap::new();
    let (mut result, mut dims): (Vec<f32>, Vec<usize>) = (Vec::new(), Vec::new());
    let mut done = 0;
    for (plan, x) in plans.iter().zip(inputs) {
        let mut feed = HashMap::from([(input.to_string(), x)]);
        for (_, node) in plan.graph.inputs() {
            if let Some(t) = node.name.strip_prefix("state.").and_then(|k| state.remove(&format!("next_state.{k}"))) {
                feed.insert(node.name.clone(), t.contiguous());
            }
        }
        let (mut out, _) = Session::new(plan.clone(), weights.clone(), threads)?.run(&feed)?;
        let piece = out
            .remove(output)
            .ok_or_else(|| RuntimeError::Chunks { reason: format!("a chunk plan has no output `{output}`") })?;
        let d = piece.shape().to_vec();
        if dims.is_empty() {
            dims = d.clone();
            dims[axis] = len;
            result = vec![0f32; dims.iter().product()];
        }
        let (outer, inner): (usize, usize) = (d[..axis].iter().product(), d[axis + 1..].iter().product());
        let (n, values) = (d[axis], piece.to_f32_vec());
        if done + n > len {
            return Err(RuntimeError::Chunks { reason: format!("the chunks give more than {len} along axis {axis}") });
        }
        for o in 0..outer {
            result[(o * len + done) * inner..][..n * inner].copy_from_slice(&values[o * n * inner..][..n * inner]);
        }
        done += n;
        state = out;
    }
    if done != len {
        return Err(RuntimeError::Chunks {
            reason: format!("the chunks give {done} along axis {axis}, expected {len}"),
        });
    }
    Ok(CpuTensor::from_vec(dims, result))
}
