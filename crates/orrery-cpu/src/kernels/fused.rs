//! Fused elementwise programs: each chunk of the output gathers its inputs (broadcast, strided)
//! into scratch vectors, runs the program step by step over the chunk, and writes the last
//! value. Intermediates stay in cache; memory traffic is the inputs once and the output once.

use super::elementwise::{binary_slice, clamp_value, unary_slice};
use crate::{CpuError, CpuTensor, Element};
use orrery_ir::{FusedProgram, FusedStep, Op, TensorType};
use rayon::prelude::*;

/// Output elements per task: fixed (never derived from the thread count), small enough that
/// the scratch vectors of a long program stay in L2.
const CHUNK: usize = 2048;

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
    y.par_chunks_mut(CHUNK).enumerate().for_each_init(
        || Scratch::new(program, CHUNK),
        |scratch, (i, chunk)| {
            let values = scratch.values(chunk.len());
            for (src, dst) in sources.iter().zip(values.iter_mut()) {
                gather(src, dims, i * CHUNK, dst);
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
/// is the last vector.
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
