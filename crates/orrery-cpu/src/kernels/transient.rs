//! What a kernel allocates besides its output while it runs, from types alone, so a memory
//! budget can hold it (the compiler's arena counts outputs only).
//!
//! The products and convolutions read f32 operands in place but widen others (bf16/f16
//! weights) into a dense f32 copy for the length of the call; `linear` reads a bf16 weight as
//! stored instead with at most `max_rows` rows, and with any number of rows on CPUs where the
//! GEMM packs bf16 (`reads_bf16_weights`). Scratch kept for the next call is not counted: a
//! Winograd convolution's transformed weights and block of transformed patches and products,
//! or a temporal convolution's weights split by tap, in one process-wide buffer of the largest
//! size asked for, and on AMX the transformed weights split for the products in another
//! (`conv/winograd.rs`: 52 MiB and 54 MiB at the tokenizer's 512 channels with F(4, 3), 0
//! for convolutions too small for Winograd; split taps: 3 MiB at 512 channels; a
//! budget's output-channel slices of a convolution need less or none, so counting it would
//! make the smallest budget depend on the slicing it picks); and per-thread scratch:
//! attention's score block and packed key block (0.75 MiB at head dim 128), the own GEMM's
//! packing buffers (at most 2 MiB, kept by each thread; on AMX up to 13 MiB, A's block
//! growing with products of up to 4096 rows), the f32 staging block of B packed ahead (512
//! KiB), a temporal convolution's row of zeros, a convolution's gathered columns on the `gemm` crate (a tile of at most 1024 positions, kept
//! by each thread that gathers them), and, on the own GEMM, the upper half's sums of a product
//! of fewer than 512 positions split by depth (`Cout/g · positions` floats: 0.4 MiB for the
//! 512-channel (1, 3, 3) at 3 × 8 × 8, kept by the calling thread).

use super::linalg::{max_rows, reads_bf16_weights};
use orrery_ir::{DType, Op, TensorType};

fn widened(t: &TensorType) -> u64 {
    if t.dtype == DType::F32 {
        0
    } else {
        t.shape.numel() as u64 * 4
    }
}

/// Bytes `op` allocates on top of its output for inputs of types `inputs` and output `out`.
pub fn transient_bytes(op: &Op, inputs: &[&TensorType], out: &TensorType) -> u64 {
    match op {
        Op::Epilogue { base, .. } => {
            let n = base.epilogue_base_inputs().unwrap_or(inputs.len()).min(inputs.len());
            // The base runs into an f32 buffer of its own shape, which the program then reads.
            transient_bytes(base, &inputs[..n], out)
        }
        Op::Linear { .. } => {
            let (x, w) = (inputs[0], inputs[1]);
            let n = w.shape.dims().first().copied().unwrap_or(1).max(1);
            let rows = out.shape.numel() / n;
            let as_stored = w.dtype == DType::BF16 && (rows <= max_rows(w.dtype) || reads_bf16_weights());
            let weight = if as_stored { 0 } else { widened(w) };
            widened(x) + weight + inputs.get(2).map_or(0, |b| widened(b))
        }
        Op::MatMul { .. } | Op::Conv { .. } => inputs.iter().map(|t| widened(t)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_ir::Shape;

    fn ty(dtype: DType, dims: &[usize]) -> TensorType {
        TensorType { dtype, shape: Shape::new(dims.to_vec()) }
    }

    #[test]
    fn widened_weights_count_unless_the_few_rows_path_reads_them_as_stored() {
        let linear = Op::Linear { has_bias: false };
        let w16 = ty(DType::BF16, &[64, 32]);
        let w32 = ty(DType::F32, &[64, 32]);
        let x = |rows| ty(DType::F32, &[rows, 32]);
        let y = |rows| ty(DType::F32, &[rows, 64]);
        let widened_bf16 = if reads_bf16_weights() { 0 } else { 64 * 32 * 4 };
        assert_eq!(transient_bytes(&linear, &[&x(33), &w16], &y(33)), widened_bf16);
        assert_eq!(transient_bytes(&linear, &[&x(32), &w16], &y(32)), 0, "≤ 32 rows read bf16 in place");
        assert_eq!(transient_bytes(&linear, &[&x(8), &w16], &y(8)), 0);
        assert_eq!(transient_bytes(&linear, &[&x(16), &w32], &y(16)), 0);
        let matmul = Op::MatMul { transpose_a: false, transpose_b: true };
        assert_eq!(transient_bytes(&matmul, &[&x(3), &w16], &y(3)), 64 * 32 * 4);
    }
}
