//! Running one computation as a sequence of chunk plans that carry state (the Cosmos
//! tokenizer's temporal chunks): each chunk's `next_state.<x>` outputs become the next
//! chunk's `state.<x>` inputs, and each chunk's main output goes to a sink as soon as the
//! chunk finishes (copied into a preallocated tensor by [`Concat`], or written straight to a
//! file), so only one chunk's activations and the carried state are ever held.

use crate::{RuntimeError, Session, WeightResolver};
use orrery_compiler::Plan;
use orrery_cpu::CpuTensor;
use std::collections::HashMap;
use std::sync::Arc;

/// What running the chunks measured.
#[derive(Clone, Debug, Default)]
pub struct ChunkStats {
    pub seconds: f64,
    /// The largest [`crate::RunStats::peak_live_bytes`] of any chunk (the carried state
    /// included, since it is a chunk's input).
    pub peak_live_bytes: u64,
}

/// Runs `plans` in order. Chunk `i` gets `input_of(i)` (read when the chunk starts, so only one
/// chunk's input is held at a time) under the name `input`, and every
/// `state.<x>` input it declares from the previous chunk's `next_state.<x>` output (a state
/// the previous chunk did not produce is reported by the session as a missing input). Each
/// chunk's output `output` is handed to `sink` with the chunk's index; the rest of its outputs
/// are dropped once the next chunk has taken its state. The sink's error type is the caller's
/// (a file writer's, say), so runtime errors convert into it.
pub fn run_chunks<E: From<RuntimeError>>(
    plans: &[Plan],
    weights: Arc<dyn WeightResolver>,
    input: &str,
    mut input_of: impl FnMut(usize) -> Result<CpuTensor, E>,
    output: &str,
    threads: usize,
    mut sink: impl FnMut(usize, CpuTensor) -> Result<(), E>,
) -> Result<ChunkStats, E> {
    let started = std::time::Instant::now();
    let mut stats = ChunkStats::default();
    let mut state: HashMap<String, CpuTensor> = HashMap::new();
    for (i, plan) in plans.iter().enumerate() {
        let mut feed = HashMap::from([(input.to_string(), input_of(i)?)]);
        for (_, node) in plan.graph.inputs() {
            if let Some(t) = node.name.strip_prefix("state.").and_then(|k| state.remove(&format!("next_state.{k}"))) {
                feed.insert(node.name.clone(), t.contiguous());
            }
        }
        // Whatever state this chunk does not take is dead now, not after the chunk.
        state.clear();
        let (mut out, run) = Session::new(plan.clone(), weights.clone(), threads)?.run_owned(feed)?;
        stats.peak_live_bytes = stats.peak_live_bytes.max(run.peak_live_bytes);
        let piece = out
            .remove(output)
            .ok_or_else(|| RuntimeError::Chunks { reason: format!("chunk {i} has no output `{output}`") })?;
        sink(i, piece)?;
        state = out;
    }
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Where chunk pieces land in the whole result: concatenated along `axis` into `len`
/// elements there. Pieces arrive in order; [`Placement::place`] says where each one's
/// contiguous runs go.
#[derive(Clone, Debug)]
pub struct Placement {
    axis: usize,
    len: usize,
    /// The whole result's shape, fixed by the first piece.
    dims: Vec<usize>,
    /// Elements along `axis` placed so far.
    done: usize,
}

/// One contiguous run of a piece: `len` elements from `src` in the piece to `dst` in the
/// whole result (element offsets, row-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub src: usize,
    pub dst: usize,
    pub len: usize,
}

impl Placement {
    pub fn new(axis: usize, len: usize) -> Placement {
        Placement { axis, len, dims: Vec::new(), done: 0 }
    }

    /// The whole result's shape, once the first piece has been placed.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The runs of the next piece (of shape `piece`), which follows the pieces placed so far.
    pub fn place(&mut self, piece: &[usize]) -> Result<Vec<Span>, RuntimeError> {
        let axis = self.axis;
        if axis >= piece.len() {
            return Err(RuntimeError::Chunks { reason: format!("a piece of shape {piece:?} has no axis {axis}") });
        }
        if self.dims.is_empty() {
            self.dims = piece.to_vec();
            self.dims[axis] = self.len;
        }
        let same_elsewhere = piece.len() == self.dims.len()
            && piece.iter().zip(&self.dims).enumerate().all(|(d, (a, b))| d == axis || a == b);
        if !same_elsewhere {
            return Err(RuntimeError::Chunks {
                reason: format!("a piece of shape {piece:?} does not fit a result of shape {:?}", self.dims),
            });
        }
        let n = piece[axis];
        if self.done + n > self.len {
            return Err(RuntimeError::Chunks {
                reason: format!("the chunks give more than {} along axis {axis}", self.len),
            });
        }
        let (outer, inner): (usize, usize) = (piece[..axis].iter().product(), piece[axis + 1..].iter().product());
        let runs = (0..outer)
            .map(|o| Span { src: o * n * inner, dst: (o * self.len + self.done) * inner, len: n * inner })
            .collect();
        self.done += n;
        Ok(runs)
    }

    /// An error unless the pieces filled the whole axis.
    pub fn finish(&self) -> Result<(), RuntimeError> {
        if self.done != self.len {
            return Err(RuntimeError::Chunks {
                reason: format!("the chunks give {} along axis {}, expected {}", self.done, self.axis, self.len),
            });
        }
        Ok(())
    }
}

/// A [`run_chunks`] sink that copies the pieces into one f32 tensor in memory.
#[derive(Clone, Debug)]
pub struct Concat {
    placement: Placement,
    data: Vec<f32>,
}

impl Concat {
    pub fn new(axis: usize, len: usize) -> Concat {
        Concat { placement: Placement::new(axis, len), data: Vec::new() }
    }

    pub fn push(&mut self, piece: &CpuTensor) -> Result<(), RuntimeError> {
        let runs = self.placement.place(piece.shape())?;
        if self.data.is_empty() {
            self.data = vec![0f32; self.placement.dims().iter().product()];
        }
        let values = piece.to_f32_vec();
        for r in runs {
            self.data[r.dst..r.dst + r.len].copy_from_slice(&values[r.src..r.src + r.len]);
        }
        Ok(())
    }

    pub fn finish(self) -> Result<CpuTensor, RuntimeError> {
        self.placement.finish()?;
        Ok(CpuTensor::from_vec(self.placement.dims, self.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_interleaves_pieces_along_a_middle_axis() {
        // [2, 5, 3] from pieces of 2 and 3 along axis 1.
        let mut p = Placement::new(1, 5);
        let a = p.place(&[2, 2, 3]).unwrap();
        assert_eq!(a, vec![Span { src: 0, dst: 0, len: 6 }, Span { src: 6, dst: 15, len: 6 }]);
        let b = p.place(&[2, 3, 3]).unwrap();
        assert_eq!(b, vec![Span { src: 0, dst: 6, len: 9 }, Span { src: 9, dst: 21, len: 9 }]);
        p.finish().unwrap();
        assert!(p.place(&[2, 1, 3]).is_err(), "past the end");
    }

    #[test]
    fn placement_rejects_mismatched_and_short_pieces() {
        let mut p = Placement::new(0, 4);
        p.place(&[1, 3]).unwrap();
        assert!(p.place(&[1, 2]).is_err(), "other dims differ");
        assert!(p.finish().is_err(), "only 1 of 4 placed");
    }

    #[test]
    fn concat_equals_the_whole_tensor() {
        let whole: Vec<f32> = (0..2 * 5 * 3).map(|v| v as f32).collect();
        let t = CpuTensor::from_vec(vec![2, 5, 3], whole.clone());
        let mut c = Concat::new(1, 5);
        for (s, e) in [(0, 1), (1, 4), (4, 5)] {
            c.push(&t.slice(1, s, e, 1).contiguous()).unwrap();
        }
        assert_eq!(c.finish().unwrap().to_f32_vec(), whole);
    }
}
