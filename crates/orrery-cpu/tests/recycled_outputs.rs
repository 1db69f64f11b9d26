//! Kernels that take their output from the recycler's shelf get a buffer holding the stale
//! values of a dead activation, so they must write every element. Each case here runs once
//! on a fresh buffer and once on a recycled one filled with NaN, and the two must agree bit
//! for bit (a single element left unwritten would be NaN).

mod common;

use common::{as_permuted_view, bits, rand_f32, run_cpu};
use orrery_cpu::{CpuTensor, Recycler};
use orrery_ir::{ConvPadMode, ConvParams, Op};

/// Output elements of every case: above the recycler's smallest kept buffer (256 KiB).
const OUT: usize = 64 * 4 * 16 * 16;

fn conv(time_pad: (usize, usize), space_pad: usize, mode: ConvPadMode) -> Op {
    Op::Conv(ConvParams {
        stride: vec![1; 3],
        dilation: vec![1; 3],
        padding: vec![time_pad, (space_pad, space_pad), (space_pad, space_pad)],
        pad_mode: mode,
        groups: 1,
        has_bias: true,
    })
}

/// `op` on `inputs` with a NaN-filled buffer of the output's size on the shelf, and whether
/// the kernel took it.
fn on_stale_buffer(op: &Op, inputs: &[&CpuTensor]) -> (CpuTensor, bool) {
    let recycler = Recycler::default();
    recycler.give(CpuTensor::from_vec(vec![OUT], vec![f32::NAN; OUT]), usize::MAX);
    let out = recycler.install(|| run_cpu(op, inputs));
    (out, recycler.bytes() == 0)
}

#[test]
fn recycled_outputs_are_written_whole() {
    let x = rand_f32(1, &[1, 64, 4, 16, 16]);
    let bias = rand_f32(2, &[64]);
    // (what the case exercises, op, inputs)
    let cases: Vec<(&str, Op, Vec<CpuTensor>)> = vec![
        (
            "pointwise conv",
            conv((0, 0), 0, ConvPadMode::Zeros),
            vec![x.clone(), rand_f32(3, &[64, 64, 1, 1, 1]), bias.clone()],
        ),
        (
            "temporal taps, replicate padding (weights split by tap)",
            conv((2, 0), 0, ConvPadMode::Replicate),
            vec![x.clone(), rand_f32(4, &[64, 64, 3, 1, 1]), bias.clone()],
        ),
        (
            "temporal taps, zero padding",
            conv((1, 1), 0, ConvPadMode::Zeros),
            vec![x.clone(), rand_f32(5, &[64, 64, 3, 1, 1]), bias.clone()],
        ),
        (
            "3 × 3 by Winograd",
            conv((0, 0), 1, ConvPadMode::Zeros),
            vec![rand_f32(6, &[1, 64, 1, 32, 32]), rand_f32(7, &[64, 64, 1, 3, 3]), bias.clone()],
        ),
        (
            "3 × 3 × 3, gathered columns",
            conv((1, 1), 1, ConvPadMode::Zeros),
            vec![rand_f32(8, &[1, 16, 4, 16, 16]), rand_f32(9, &[64, 16, 3, 3, 3]), bias.clone()],
        ),
        ("concat", Op::Concat { axis: 1 }, vec![rand_f32(10, &[1, 24, 4, 16, 16]), rand_f32(11, &[1, 40, 4, 16, 16])]),
        (
            "reshape of a permuted view (a dense copy)",
            Op::Reshape { shape: vec![256, 16, 16] },
            vec![as_permuted_view(&rand_f32(12, &[1, 4, 64, 16, 16]), &[0, 2, 1, 3, 4])],
        ),
    ];
    for (what, op, inputs) in &cases {
        let args: Vec<&CpuTensor> = inputs.iter().collect();
        let fresh = run_cpu(op, &args);
        assert_eq!(fresh.numel(), OUT, "{what}");
        let (recycled, took) = on_stale_buffer(op, &args);
        assert!(took, "{what}: the kernel did not take the recycled buffer");
        let (got, want) = (bits(&recycled), bits(&fresh));
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{what}: {differ} of {OUT} elements differ from a fresh buffer's");
    }
}
