//! [`Op::Epilogue`]: a base op and an elementwise program over its output, in one kernel.
//!
//! Linear and MatMul apply the program tile by tile right after each tile's GEMM, while the
//! tile is in cache (`linalg::matmul`); the tiles are fixed by the problem's shape, never by
//! the thread count, and each tile's GEMM accumulates every element in the same order as the
//! whole matrix's, so the result equals the unfused pair (base kernel, then `Op::Fused`) bit
//! for bit. Conv, LayerNorm, RmsNorm and Rope run their own kernel and then the program in
//! place over its output, chunk by chunk in parallel: one kernel and no extra buffer, but a
//! second pass over memory (fusing the program into those kernels' inner loops is later work).

use super::fused::{apply_in_place, sources, Scratch, Source};
use super::linalg::matmul::{apply_epilogue_pass, linear_epilogue, matmul_epilogue, Epilogue};
use super::{conv, norm};
use crate::{CpuError, CpuTensor};
use orrery_ir::{FusedProgram, Op, TensorType};

/// The program with its extra operands as seen from the output.
struct Program<'a> {
    program: &'a FusedProgram,
    extras: Vec<Source<'a>>,
    dims: &'a [usize],
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
    }
}

pub(super) fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let Op::Epilogue { base, program, .. } = op else { return Err(CpuError::kernel(op, "not an epilogue")) };
    let n_base = base.epilogue_base_inputs().ok_or_else(|| CpuError::kernel(op, "the base cannot take an epilogue"))?;
    if inputs.len() != n_base + program.n_inputs.saturating_sub(1) {
        return Err(CpuError::kernel(op, format!("unexpected number of inputs: {}", inputs.len())));
    }
    let (base_inputs, extras) = inputs.split_at(n_base);
    // The base computes its own shape; the program reads that memory as `out` (a reshape).
    let base_types: Vec<TensorType> = base_inputs.iter().map(|t| t.ty()).collect();
    let base_out = base.infer(&base_types).map_err(|e| CpuError::kernel(op, e))?;
    let out_of_base = &base_out;
    let dims = out.shape.dims();
    let epilogue = Program { program, extras: sources(op, extras, dims)?, dims };
    let wrong_inputs = || CpuError::kernel(op, format!("unexpected number of inputs: {}", inputs.len()));
    match &**base {
        Op::Linear { has_bias } => {
            let (x, w, bias) = match (base_inputs, has_bias) {
                ([x, w], false) => (x, w, None),
                ([x, w, b], true) => (x, w, Some(*b)),
                _ => return Err(wrong_inputs()),
            };
            Ok(linear_epilogue(x, w, bias, out_of_base, &epilogue).reshape(dims))
        }
        Op::MatMul { transpose_a, transpose_b } => {
            let [a, b] = base_inputs else { return Err(wrong_inputs()) };
            Ok(matmul_epilogue(a, b, *transpose_a, *transpose_b, out_of_base, &epilogue).reshape(dims))
        }
        Op::Conv(_) | Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::Rope { .. } => {
            let y = if base.family() == orrery_ir::OpFamily::Conv {
                conv::execute(base, base_inputs, out_of_base)?
            } else {
                norm::execute(base, base_inputs, out_of_base)?
            };
            let mut y = y.into_f32_vec();
            apply_epilogue_pass(&mut y, &epilogue);
            Ok(CpuTensor::from_vec(dims.to_vec(), y))
        }
        _ => Err(CpuError::kernel(op, "the base cannot take an epilogue")),
    }
}
