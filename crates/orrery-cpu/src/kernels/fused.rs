//! Fused programs: each chunk of the output gathers its inputs (broadcast, strided) into
//! scratch vectors, runs the program step by step over the chunk, and writes the last value.
//! Intermediates stay in cache; memory traffic is the inputs once and the output once. Chunks
//! of a program with row steps hold whole segments (see [`chunk_len`]). Values that are
//! uniform over segments (a segment mean and what is computed from it alone) or over the chunk
//! (a constant) are held and computed once per segment or once per chunk (see [`Repr`]).

use super::elementwise::math::{nan_max, nan_min};
use super::elementwise::{binary_slice, clamp_value, unary_slice};
use crate::output::{fill_output_chunks, Output};
use crate::{CpuError, CpuTensor, Element};
use orrery_ir::{BinaryOp, FusedProgram, FusedStep, Op, RopeStyle, TensorType};
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
    let chunk_len = chunk_len(program, CHUNK);
    let y = fill_output_chunks(
        out.shape.numel(),
        chunk_len,
        || Scratch::new(program, chunk_len),
        |scratch, i, chunk| {
            let n = chunk.len();
            for (src, dst) in sources.iter().zip(scratch.values(n)) {
                gather(src, dims, i * chunk_len, &mut dst[..n]);
            }
            scratch.run(program, chunk);
        },
    );
    Ok(y.into_tensor(dims.to_vec()))
}

/// [`execute`] with the output written over the memory of input `at`, whose values `y` holds
/// (dense, the output's shape); `inputs` are the others, in order. Each chunk copies its own
/// values of that input into scratch before the program writes the chunk, and chunks are
/// those of [`execute`], so the bits are the same.
pub(super) fn execute_in_place(
    op: &Op,
    inputs: &[&CpuTensor],
    at: usize,
    mut y: Output,
    out: &TensorType,
) -> Result<CpuTensor, CpuError> {
    let Op::Fused(program) = op else { return Err(CpuError::kernel(op, "not a fused program")) };
    if inputs.len() + 1 != program.n_inputs || at >= program.n_inputs {
        return Err(CpuError::kernel(op, format!("unexpected number of inputs: {}", inputs.len() + 1)));
    }
    let dims = out.shape.dims();
    let sources = sources(op, inputs, dims)?;
    let chunk_len = chunk_len(program, CHUNK);
    y.par_chunks_mut(chunk_len).enumerate().for_each_init(
        || Scratch::new(program, chunk_len),
        |scratch, (i, chunk)| {
            let n = chunk.len();
            let mut others = sources.iter();
            for (j, dst) in scratch.values(n)[..program.n_inputs].iter_mut().enumerate() {
                match j == at {
                    true => dst[..n].copy_from_slice(chunk),
                    false => {
                        gather(others.next().expect("one source per other input"), dims, i * chunk_len, &mut dst[..n])
                    }
                }
            }
            scratch.run(program, chunk);
        },
    );
    Ok(y.into_tensor(dims.to_vec()))
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

/// How a value's scratch vector holds it over a chunk of `n` elements. A segment mean is one
/// value per segment, and the steps that follow it (`+ eps`, `rsqrt`) keep it so: they run once
/// per segment instead of once per element, on the same f32 operands with the same scalar
/// functions, so the bits are those of the per-element evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repr {
    /// One value per aligned run of this many elements, in the first `n / runs` entries;
    /// `Runs(1)` is a full vector (inputs, rotations, anything elementwise over them).
    Runs(usize),
    /// One value for the whole chunk (a constant), in entry 0.
    Scalar,
}

/// A full vector: one value per element.
const FULL: Repr = Repr::Runs(1);

impl Repr {
    /// How many entries hold the value over `n` elements.
    fn count(self, n: usize) -> usize {
        match self {
            Repr::Runs(r) => n / r,
            Repr::Scalar => 1,
        }
    }

    /// The narrowest representation both `self` and `other` can be read as without loss: runs
    /// of the gcd of the run lengths (aligned runs of `a` and of `b` elements both split into
    /// aligned runs of `gcd(a, b)`).
    fn join(self, other: Repr) -> Repr {
        match (self, other) {
            (Repr::Runs(a), Repr::Runs(b)) => Repr::Runs(gcd(a, b)),
            (Repr::Runs(a), Repr::Scalar) | (Repr::Scalar, Repr::Runs(a)) => Repr::Runs(a),
            (Repr::Scalar, Repr::Scalar) => Repr::Scalar,
        }
    }

    /// How many runs of `g` elements each stored entry spans over `n` elements (`g` divides
    /// the run length).
    fn span(self, g: usize, n: usize) -> usize {
        match self {
            Repr::Runs(r) => r / g,
            Repr::Scalar => n / g,
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One vector per program value (inputs, then steps) and how each holds its value, plus two
/// vectors to expand narrow values into, reused chunk after chunk by one task.
pub(super) struct Scratch {
    values: Vec<Vec<f32>>,
    reprs: Vec<Repr>,
    tmp: [Vec<f32>; 2],
}

impl Scratch {
    /// Room for chunks of up to `len` elements.
    pub(super) fn new(program: &FusedProgram, len: usize) -> Scratch {
        let n_values = program.n_inputs + program.steps.len();
        Scratch {
            values: (0..n_values).map(|_| vec![0f32; len.max(1)]).collect(),
            reprs: Vec::with_capacity(n_values),
            tmp: [Vec::new(), Vec::new()],
        }
    }

    /// The value vectors, each with room for at least `len` elements (and one: a constant
    /// needs an entry even in an empty chunk). Inputs go into the first `len` entries of the
    /// first `n_inputs` vectors.
    fn values(&mut self, len: usize) -> &mut [Vec<f32>] {
        for v in &mut self.values {
            if v.len() < len.max(1) {
                v.resize(len.max(1), 0.0);
            }
        }
        &mut self.values
    }

    /// Runs the program over one chunk of `out.len()` elements whose inputs are already in
    /// the first `out.len()` entries of the input vectors, and writes its result to `out`.
    /// The chunk starts on a segment boundary and holds whole segments.
    fn run(&mut self, program: &FusedProgram, out: &mut [f32]) {
        let n = out.len();
        if n == 0 {
            return;
        }
        self.reprs.clear();
        self.reprs.resize(program.n_inputs, FULL);
        for (i, step) in program.steps.iter().enumerate() {
            let (done, rest) = self.values.split_at_mut(program.n_inputs + i);
            let repr = run_step(step, done, &self.reprs, n, &mut rest[0], &mut self.tmp);
            self.reprs.push(repr);
        }
        let last = self.values.len() - 1;
        expand(&self.values[last], self.reprs[last], 1, n, out);
    }
}

/// Runs one step over a chunk of `n` elements, reading the values `done` (held as `reprs`),
/// writing `dst`; returns how `dst` holds the result.
fn run_step(
    step: &FusedStep,
    done: &[Vec<f32>],
    reprs: &[Repr],
    n: usize,
    dst: &mut [f32],
    tmp: &mut [Vec<f32>; 2],
) -> Repr {
    match *step {
        FusedStep::Unary(u, x) => {
            let m = reprs[x].count(n);
            unary_slice(u, &done[x][..m], &mut dst[..m]);
            reprs[x]
        }
        FusedStep::Clamp { min, max, x } => {
            let (lo, hi) = (min as f32, max as f32);
            let m = reprs[x].count(n);
            for (d, &s) in dst[..m].iter_mut().zip(&done[x][..m]) {
                *d = clamp_value(s, lo, hi);
            }
            reprs[x]
        }
        FusedStep::Binary(b, x, y) => binary(b, (&done[x], reprs[x]), (&done[y], reprs[y]), n, dst, tmp),
        FusedStep::Const(c) => {
            dst[0] = c as f32;
            Repr::Scalar
        }
        FusedStep::SegMean { x, len } => {
            // Always from the full vector, even when `x` is constant over the segments: the
            // f64 mean of equal values is not always that value (-0.0 gives +0.0).
            debug_assert_eq!(n % len, 0, "chunks hold whole segments");
            let [t, _] = tmp;
            let src = full(&done[x], reprs[x], n, t);
            for (d, s) in dst[..n / len].iter_mut().zip(src.chunks_exact(len)) {
                *d = (sum_f64(s) / len as f64) as f32;
            }
            Repr::Runs(len)
        }
        FusedStep::Rotate { x, len, style } => {
            let [t, _] = tmp;
            let src = full(&done[x], reprs[x], n, t);
            for (d, s) in dst[..n].chunks_exact_mut(len).zip(src.chunks_exact(len)) {
                rotate(s, d, style);
            }
            FULL
        }
    }
}

/// Expands `$body` once per binary function with `$g` bound to its scalar function: the same
/// functions as [`binary_slice`] (and so as the unfused binary kernels), which is what keeps
/// broadcast evaluations bit-identical to per-element ones.
macro_rules! with_binary_fn {
    ($f:expr, $g:ident => $body:expr) => {
        match $f {
            BinaryOp::Add => {
                let $g = |x: f32, y: f32| x + y;
                $body
            }
            BinaryOp::Sub => {
                let $g = |x: f32, y: f32| x - y;
                $body
            }
            BinaryOp::Mul => {
                let $g = |x: f32, y: f32| x * y;
                $body
            }
            BinaryOp::Div => {
                let $g = |x: f32, y: f32| x / y;
                $body
            }
            BinaryOp::Pow => {
                let $g = f32::powf;
                $body
            }
            BinaryOp::Max => {
                let $g = nan_max;
                $body
            }
            BinaryOp::Min => {
                let $g = nan_min;
                $body
            }
        }
    };
}

/// `a ∘ b` over `n` elements, held as the narrower (finer) of the operands' representations:
/// equal ones zip entry by entry, a coarser operand broadcasts each of its entries over the
/// runs it spans, and runs of unrelated lengths (neither divides the other) are both expanded
/// to runs of their gcd first.
fn binary(
    f: BinaryOp,
    (a, ra): (&[f32], Repr),
    (b, rb): (&[f32], Repr),
    n: usize,
    dst: &mut [f32],
    tmp: &mut [Vec<f32>; 2],
) -> Repr {
    let out = ra.join(rb);
    let Repr::Runs(g) = out else {
        binary_slice(f, &a[..1], &b[..1], &mut dst[..1]);
        return out;
    };
    let m = n / g;
    match (ra == out, rb == out) {
        (true, true) => binary_slice(f, &a[..m], &b[..m], &mut dst[..m]),
        (true, false) => {
            let k = rb.span(g, n);
            with_binary_fn!(f, h => broadcast_runs::<true>(&mut dst[..m], &a[..m], &b[..m / k], k, &h));
        }
        (false, true) => {
            let k = ra.span(g, n);
            with_binary_fn!(f, h => broadcast_runs::<false>(&mut dst[..m], &b[..m], &a[..m / k], k, &h));
        }
        (false, false) => {
            let [ta, tb] = tmp;
            for t in [&mut *ta, &mut *tb] {
                if t.len() < m {
                    t.resize(m, 0.0);
                }
            }
            expand(a, ra, g, n, &mut ta[..m]);
            expand(b, rb, g, n, &mut tb[..m]);
            binary_slice(f, &ta[..m], &tb[..m], &mut dst[..m]);
        }
    }
    out
}

/// `dst[j·k + i] = f(wide[j·k + i], narrow[j])` (or `f(narrow[j], wide[j·k + i])` when the
/// narrow operand is the left one, `WIDE_LEFT = false`), in an AVX2 copy of the loop where the
/// CPU has it (same bits: IEEE operations without contraction).
#[inline(always)]
fn broadcast_runs<const WIDE_LEFT: bool>(
    dst: &mut [f32],
    wide: &[f32],
    narrow: &[f32],
    k: usize,
    f: &impl Fn(f32, f32) -> f32,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { broadcast_runs_avx2::<WIDE_LEFT>(dst, wide, narrow, k, f) };
        return;
    }
    broadcast_runs_portable::<WIDE_LEFT>(dst, wide, narrow, k, f);
}

#[inline(always)]
fn broadcast_runs_portable<const WIDE_LEFT: bool>(
    dst: &mut [f32],
    wide: &[f32],
    narrow: &[f32],
    k: usize,
    f: &impl Fn(f32, f32) -> f32,
) {
    for ((d, w), &s) in dst.chunks_exact_mut(k).zip(wide.chunks_exact(k)).zip(narrow) {
        for (d, &x) in d.iter_mut().zip(w) {
            *d = if WIDE_LEFT { f(x, s) } else { f(s, x) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn broadcast_runs_avx2<const WIDE_LEFT: bool>(
    dst: &mut [f32],
    wide: &[f32],
    narrow: &[f32],
    k: usize,
    f: &impl Fn(f32, f32) -> f32,
) {
    broadcast_runs_portable::<WIDE_LEFT>(dst, wide, narrow, k, f);
}

/// `src` (held as `from` over `n` elements) as runs of `to` elements, into `dst[..n / to]`;
/// `to` divides `from`'s run length.
fn expand(src: &[f32], from: Repr, to: usize, n: usize, dst: &mut [f32]) {
    let m = n / to;
    match from {
        Repr::Runs(r) if r == to => dst[..m].copy_from_slice(&src[..m]),
        Repr::Runs(r) => {
            for (d, &s) in dst[..m].chunks_exact_mut(r / to).zip(&src[..n / r]) {
                d.fill(s);
            }
        }
        Repr::Scalar => dst[..m].fill(src[0]),
    }
}

/// The value `v` (held as `r`) as a full vector of `n` elements: `v` itself when it is one,
/// else expanded into `tmp`.
fn full<'a>(v: &'a [f32], r: Repr, n: usize, tmp: &'a mut Vec<f32>) -> &'a [f32] {
    if r == FULL {
        return &v[..n];
    }
    if tmp.len() < n {
        tmp.resize(n, 0.0);
    }
    expand(v, r, 1, n, tmp);
    &tmp[..n]
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
    let n = data.len();
    let values = scratch.values(n);
    values[0][..n].copy_from_slice(data);
    for (src, dst) in extras.iter().zip(values[1..].iter_mut()) {
        gather(src, dims, start, &mut dst[..n]);
    }
    scratch.run(program, data);
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
