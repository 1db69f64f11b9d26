//! Outputs must be bit-identical across thread counts: a small attention + conv graph run with
//! 1, 2 and 3 worker threads.

mod common;

use common::values;
use orrery_cpu::CpuTensor;
use orrery_ir::{AttentionMask, ConvPadMode, ConvParams, DType, GraphBuilder, Op};
use orrery_runtime::{MemoryWeights, Session};
use std::collections::HashMap;
use std::sync::Arc;

#[test]
fn attention_and_conv_graph_is_bit_identical_across_thread_counts() {
    let (heads, len, dim) = (4, 97, 32);
    let mut b = GraphBuilder::new();
    let q = b.input("q", DType::F32, [1, heads, len, dim]).unwrap();
    let k = b.input("k", DType::F32, [1, heads, len, dim]).unwrap();
    let v = b.input("v", DType::F32, [1, heads, len, dim]).unwrap();
    let att = b.op("attn", Op::attention(1.0 / (dim as f64).sqrt(), AttentionMask::None), &[q, k, v]).unwrap();
    // Treat heads as channels and (len, dim) as a picture for a 3×3 convolution.
    let w = b.weight("conv.weight", DType::BF16, [8, heads, 3, 3]).unwrap();
    let bias = b.weight("conv.bias", DType::F32, [8]).unwrap();
    let conv = Op::Conv(ConvParams {
        stride: vec![1, 1],
        dilation: vec![1, 1],
        padding: vec![(1, 1), (1, 1)],
        pad_mode: ConvPadMode::Zeros,
        groups: 1,
        has_bias: true,
    });
    let y = b.op("conv", conv, &[att, w, bias]).unwrap();
    b.output("y", y).unwrap();
    let plan = orrery_compiler::compile(b.finish().unwrap()).unwrap();

    let mut weights = MemoryWeights::new();
    let wv: Vec<f64> = values(4, 8 * heads * 9, 1.0).into_iter().map(f64::from).collect();
    weights.insert("conv.weight", CpuTensor::from_f64(DType::BF16, vec![8, heads, 3, 3], &wv));
    weights.insert("conv.bias", CpuTensor::from_vec(vec![8], values(5, 8, 1.0)));
    let weights = Arc::new(weights);
    let mut inputs = HashMap::new();
    for (i, name) in ["q", "k", "v"].into_iter().enumerate() {
        let data = values(i as u64 + 1, heads * len * dim, 1.0);
        inputs.insert(name.to_string(), CpuTensor::from_vec(vec![1, heads, len, dim], data));
    }

    let bits = |threads: usize| -> Vec<u32> {
        let session = Session::new(plan.clone(), weights.clone(), threads).unwrap();
        let (out, _) = session.run(&inputs).unwrap();
        out["y"].to_f32_vec().iter().map(|x| x.to_bits()).collect()
    };
    let one = bits(1);
    assert_eq!(one.len(), 8 * len * dim);
    assert!(one.iter().any(|&b| b != 0));
    assert_eq!(one, bits(2), "1 vs 2 threads");
    assert_eq!(one, bits(3), "1 vs 3 threads");
}

#[test]
fn inputs_are_checked_by_name_and_type() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    let y = b.unary("y", orrery_ir::UnaryOp::Relu, x).unwrap();
    b.output("y", y).unwrap();
    let plan = orrery_compiler::compile(b.finish().unwrap()).unwrap();
    let session = Session::new(plan, Arc::new(MemoryWeights::new()), 1).unwrap();
    let err = session.run(&HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("missing input `x`") && err.contains("f32[2]"), "{err}");
    let mut wrong = HashMap::new();
    wrong.insert("x".to_string(), CpuTensor::from_vec(vec![3], vec![1f32, 2., 3.]));
    let err = session.run(&wrong).unwrap_err().to_string();
    assert!(err.contains("`x`") && err.contains("f32[3]") && err.contains("f32[2]"), "{err}");
    let mut extra = HashMap::new();
    extra.insert("z".to_string(), CpuTensor::from_vec(vec![2], vec![1f32, 2.]));
    assert!(session.run(&extra).unwrap_err().to_string().contains("unknown input `z`"));
}
