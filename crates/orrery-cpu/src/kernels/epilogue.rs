//! [`Op::Epilogue`]: a base op and an elementwise program over its output, in one kernel.
//!
//! Linear and MatMul apply the program tile by tile right after each tile's GEMM, while the
//! tile is in cache (`linalg::matmul`); the tiles are fixed by the problem's shape, never by
//! the thread count, and each tile's GEMM accumulates every element in the same order as the
//! whole matrix's, so the result equals the unfused pair (base kernel, then `Op::Fused`) bit
//! for bit. Conv, LayerNorm, RmsNorm and Rope run their own kernel and then the program in
//! place over its output, chunk by chunk in parallel: one kernel and no extra buffer, but a
//! second pass over memory (fusing the program into those kernels' inner loops is later work).
//!
//! With a storage permutation the program's results are also scattered, run by run along the
//! last axis, to their permuted places in a second buffer while they are in cache: the same
//! memory traffic as the in-place write, and the consumer (attention) gets dense heads.

use super::fused::{apply_in_place, sources, Scratch, Source};
use super::linalg::matmul::{apply_epilogue_pass, linear_epilogue, matmul_epilogue, Epilogue};
use super::linalg::operand::SharedMut;
use super::{conv, norm};
use crate::output::output;
use crate::{CpuError, CpuTensor};
use orrery_ir::{FusedProgram, Op, TensorType};

/// The program with its extra operands as seen from the output.
struct Program<'a> {
    program: &'a FusedProgram,
    extras: Vec<Source<'a>>,
    dims: &'a [usize],
    scatter: Option<Scatter>,
}

/// Where each run of the program's output goes in the permuted buffer.
struct Scatter {
    out: SharedMut,
    /// For each axis of the program's dims, the stride of the permuted buffer along it (the
    /// last is 1: the permutation keeps the last axis).
    strides: Vec<usize>,
}

impl Scatter {
    fn new(out: &mut [f32], dims: &[usize], perm: &[usize]) -> Scatter {
        let permuted: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let mut dense = vec![1usize; dims.len()];
        for a in (0..dims.len().saturating_sub(1)).rev() {
            dense[a] = dense[a + 1] * permuted[a + 1];
        }
        let mut strides = vec![0usize; dims.len()];
        for (i, &p) in perm.iter().enumerate() {
            strides[p] = dense[i];
        }
        Scatter { out: SharedMut(out.as_mut_ptr()), strides }
    }

    /// Writes `data`, the values at flat positions `start..` of `dims`, to the permuted buffer.
    fn write(&self, dims: &[usize], start: usize, data: &[f32]) {
        let last = dims[dims.len() - 1];
        let mut done = 0;
        while done < data.len() {
            let (mut flat, mut offset) = (start + done, 0);
            for (d, s) in dims.iter().zip(&self.strides).rev() {
                offset += (flat % d) * s;
                flat /= d;
            }
            let run = (last - (start + done) % last).min(data.len() - done);
            // SAFETY: the permutation maps positions one to one, every position is written
            // by exactly one `apply` call, and the buffer outlives the kernel's parallel loop.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.out.add(offset), run) };
            dst.copy_from_slice(&data[done..done + run]);
            done += run;
        }
    }
}

impl Epilogue for Program<'_> {
    type Scratch = Scratch;

    fn scratch(&self, len: usize) -> Scratch {
        Scratch::new(self.program, len)
    }

    fn alignment(&self) -> usize {
        self.program.alignment()
    }

    fn apply(&self, start: usize, data: &mut [f32], scratch: &mut Scratch) {
        apply_in_place(self.program, &self.extras, self.dims, start, data, scratch);
        if let Some(scatter) = &self.scatter {
            scatter.write(self.dims, start, data);
        }
    }
}

pub(super) fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let Op::Epilogue { base, program, view, perm } = op else {
        return Err(CpuError::kernel(op, "not an epilogue"));
    };
    let n_base = base.epilogue_base_inputs().ok_or_else(|| CpuError::kernel(op, "the base cannot take an epilogue"))?;
    if inputs.len() != n_base + program.n_inputs.saturating_sub(1) {
        return Err(CpuError::kernel(op, format!("unexpected number of inputs: {}", inputs.len())));
    }
    let (base_inputs, extras) = inputs.split_at(n_base);
    // The base computes its own shape; the program reads that memory in the `view` dims.
    let base_types: Vec<TensorType> = base_inputs.iter().map(|t| t.ty()).collect();
    let base_out = base.infer(&base_types).map_err(|e| CpuError::kernel(op, e))?;
    let dims: &[usize] = view.as_deref().unwrap_or(base_out.shape.dims());
    // With a storage permutation the program's results also go to `permuted`, which is the
    // kernel's output; the base's buffer is then only scratch.
    let mut permuted = perm.is_some().then(|| output::<f32>(out.shape.numel()));
    let scatter = perm.as_deref().zip(permuted.as_deref_mut()).map(|(p, out)| Scatter::new(out, dims, p));
    let epilogue = Program { program, extras: sources(op, extras, dims)?, dims, scatter };
    let wrong_inputs = || CpuError::kernel(op, format!("unexpected number of inputs: {}", inputs.len()));
    let y = match &**base {
        Op::Linear { has_bias } => {
            let (x, w, bias) = match (base_inputs, has_bias) {
                ([x, w], false) => (x, w, None),
                ([x, w, b], true) => (x, w, Some(*b)),
                _ => return Err(wrong_inputs()),
            };
            linear_epilogue(x, w, bias, &base_out, &epilogue)
        }
        Op::MatMul { transpose_a, transpose_b } => {
            let [a, b] = base_inputs else { return Err(wrong_inputs()) };
            matmul_epilogue(a, b, *transpose_a, *transpose_b, &base_out, &epilogue)
        }
        Op::Conv(_) | Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::Rope { .. } => {
            let y = if base.family() == orrery_ir::OpFamily::Conv {
                conv::execute(base, base_inputs, &base_out)?
            } else {
                norm::execute(base, base_inputs, &base_out)?
            };
            let mut y = y.into_output();
            apply_epilogue_pass(&mut y, &epilogue);
            y.into_tensor(dims.to_vec())
        }
        _ => return Err(CpuError::kernel(op, "the base cannot take an epilogue")),
    };
    drop(epilogue);
    let out_dims = out.shape.dims().to_vec();
    Ok(match permuted {
        Some(permuted) => permuted.into_tensor(out_dims),
        None => y.reshape(&out_dims),
    })
}
