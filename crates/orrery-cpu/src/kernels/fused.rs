//! Fused programs: each chunk of the output gathers its inputs (broadcast, strided) into
//! scratch vectors, runs the program step by step over the chunk, and writes the last value.
//! Intermediates stay in cache; memory traffic is the inputs once and the output once. Chunks
//! of a program with row steps hold whole segments (see [`chunk_len`]).

use super::elementwise::{binary_slice, clamp_value, unary_slice};
use crate::{CpuError, CpuTensor, Element};
use orrery_ir::{FusedProgram, FusedStep, Op, RopeStyle, TensorType};
use rayon::prelude::*;

/// Output elements per task: fixed (never derived from the thread count), small enough that
/// the scratch vectors of a long program stay in L2.
const CHUNK: usize = 2048;

/// `base` rounded up to whole multiples of the program's segment alignment, so that no chunk
/// splits a segment (chunks start at multiples of their length).
pub(super) fn chunk_len(program: &FusedProgram, base: usize) -> usize {
    let align = program.alignment();
    base.div_ceil(align) * align
}

/// One input as seen from the output: its buffer, offset and per-output-axis strides (0 where
/// broadcast).
pub(super) struct Source<'a> {
    data: &'a [f32],
    offset: usize,
    strides: Vec<usize>,
}

pub(super) fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let Op::Fused(program) = op else { return Err(CpuError::kernel(op, "not a fused program")) };
    let dims = out.shape.dims();
    let sources = sources(op, inputs, dims)?;
    let mut y = vec![0f32; out.shape.numel()];
    let chunk_len = chunk_len(program, CHUNK);
    y.par_chunks_mut(chunk_len).enumerate().for_each_init(
        || Scratch::new(program, chunk_len),
        |scratch, (i, chunk)| {
            let values = scratch.values(chunk.len());
            for (src, dst) in sources.iter().zip(values.iter_mut()) {
                gather(src, dims, i * chunk_len, dst);
            }
            run_steps(program, values);
            chunk.copy_from_slice(&values[values.len() - 1]);
        },
    );
    Ok(CpuTensor::from_vec(dims.to_vec(), y))
}

/// `inputs` (f32) as read from an output of shape `dims`.
pub(super) fn sources<'a>(op: &Op, inputs: &[&'a CpuTensor], dims: &[usize]) -> Result<Vec<Source<'a>>, CpuError> {
    inputs
        .iter()
        .map(|t| {
            let data = f32::slice(t.buffer()).ok_or_else(|| CpuError::kernel(op, "inputs must be f32"))?;
            Ok(Source { data, offset: t.offset(), strides: broadcast_strides(t, dims) })
        })
        .collect()
}

/// The strides of `t` read as a tensor of the output's `dims`.
fn broadcast_strides(t: &CpuTensor, dims: &[usize]) -> Vec<usize> {
    let lead = dims.len() - t.shape().len();
    (0..dims.len())
        .map(|a| if a < lead || t.shape()[a - lead] != dims[a] { 0 } else { t.strides()[a - lead] })
        .collect()
}

/// One vector per program value (inputs, then steps), reused chunk after chunk by one task.
pub(super) struct Scratch {
    values: Vec<Vec<f32>>,
}

impl Scratch {
    /// Room for chunks of up to `len` elements.
    pub(super) fn new(program: &FusedProgram, len: usize) -> Scratch {
        Scratch { values: (0..program.n_inputs + program.steps.len()).map(|_| vec![0f32; len]).collect() }
    }

    /// The value vectors, each cut (or grown) to `len` elements.
    pub(super) fn values(&mut self, len: usize) -> &mut [Vec<f32>] {
        for v in &mut self.values {
            v.resize(len, 0.0);
        }
        &mut self.values
    }
}

/// Runs the steps over one chunk whose inputs are already in `values[..n_inputs]`; the result
/// is the last vector. The chunk starts on a segment boundary and holds whole segments.
pub(super) fn run_steps(program: &FusedProgram, values: &mut [Vec<f32>]) {
    for (i, step) in program.steps.iter().enumerate() {
        let (done, rest) = values.split_at_mut(program.n_inputs + i);
        let dst = &mut rest[0];
        match *step {
            FusedStep::Unary(u, x) => unary_slice(u, &done[x], dst),
            FusedStep::Clamp { min, max, x } => {
                let (lo, hi) = (min as f32, max as f32);
                for (d, &s) in dst.iter_mut().zip(&done[x]) {
                    *d = clamp_value(s, lo, hi);
                }
            }
            FusedStep::Binary(b, x, y) => binary_slice(b, &done[x], &done[y], dst),
            FusedStep::Const(c) => dst.fill(c as f32),
            FusedStep::SegMean { x, len } => {
                for (d, s) in dst.chunks_mut(len).zip(done[x].chunks(len)) {
                    let mean = (sum_f64(s) / len as f64) as f32;
                    d.fill(mean);
                }
            }
            FusedStep::Rotate { x, len, style } => {
                for (d, s) in dst.chunks_mut(len).zip(done[x].chunks(len)) {
                    rotate(s, d, style);
                }
            }
        }
    }
}

/// `Σ s` in f64 with eight independent accumulators (a fixed order, so the same bits on every
/// run; a single running sum would be bound by the add latency).
fn sum_f64(s: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut lanes = s.chunks_exact(8);
    for c in &mut lanes {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64;
        }
    }
    let tail: f64 = lanes.remainder().iter().map(|&v| v as f64).sum();
    acc.iter().sum::<f64>() + tail
}

/// The rotary partners of one segment: `concat(-x[h..], x[..h])` or `(-x[2i+1], x[2i])`.
fn rotate(src: &[f32], dst: &mut [f32], style: RopeStyle) {
    match style {
        RopeStyle::RotateHalf => {
            let h = src.len() / 2;
            for (d, &s) in dst[..h].iter_mut().zip(&src[h..]) {
                *d = -s;
            }
            dst[h..].copy_from_slice(&src[..h]);
        }
        RopeStyle::Interleaved => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src.chunks_exact(2)) {
                d[0] = -s[1];
                d[1] = s[0];
            }
        }
    }
}

/// An epilogue over one run of output positions `start..start + data.len()`: `data` holds the
/// base op's values there (the program's input 0) and receives the program's result; input
/// `1 + i` is gathered from `extras[i]`.
pub(super) fn apply_in_place(
    program: &FusedProgram,
    extras: &[Source],
    dims: &[usize],
    start: usize,
    data: &mut [f32],
    scratch: &mut Scratch,
) {
    let values = scratch.values(data.len());
    values[0].copy_from_slice(data);
    for (src, dst) in extras.iter().zip(values[1..].iter_mut()) {
        gather(src, dims, start, dst);
    }
    run_steps(program, values);
    data.copy_from_slice(&values[values.len() - 1]);
}

/// Copies `dst.len()` output-order elements of `src`, starting at flat output position
/// `start`, walking runs along the last axis (a memcpy when dense, a fill when broadcast).
fn gather(src: &Source, dims: &[usize], start: usize, dst: &mut [f32]) {
    let rank = dims.len();
    if rank == 0 {
        dst.fill(src.data[src.offset]);
        return;
    }
    let mut index = vec![0usize; rank];
    let mut flat = start;
    for a in (0..rank).rev() {
        index[a] = flat % dims[a];
        flat /= dims[a];
    }
    let last = rank - 1;
    let step = src.strides[last];
    let mut done = 0;
    while done < dst.len() {
        let run = (dims[last] - index[last]).min(dst.len() - done);
        let base = src.offset + index.iter().zip(&src.strides).map(|(i, s)| i * s).sum::<usize>();
        let out = &mut dst[done..done + run];
        match step {
            0 => out.fill(src.data[base]),
            1 => out.copy_from_slice(&src.data[base..base + run]),
            s => {
                for (k, d) in out.iter_mut().enumerate() {
                    *d = src.data[base + k * s];
                }
            }
        }
        done += run;
        index[last] += run;
        for a in (1..rank).rev() {
            if index[a] < dims[a] {
                break;
            }
            index[a] = 0;
            index[a - 1] += 1;
        }
    }
}
