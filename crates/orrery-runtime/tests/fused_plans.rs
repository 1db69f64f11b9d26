//! A Cosmos DiT block run unfused and after the optimizer (simplification + elementwise
//! fusion): same outputs (the fused kernels use the unfused kernels' scalar functions, so they
//! agree bit for bit; the acceptance bound is 1e-6 relative), fewer kernels.

mod common;

use common::values;
use orrery_compiler::passes::Optimizer;
use orrery_compiler::{CompileOptions, Passes};
use orrery_cpu::CpuTensor;
use orrery_ir::{DType, Graph, GraphBuilder};
use orrery_models::cosmos::{dit_block, DitBlockConfig, DitBlockInputs};
use orrery_models::WeightTypes;
use orrery_runtime::{MemoryWeights, Session};
use std::collections::HashMap;
use std::sync::Arc;

fn block_graph() -> Graph {
    let cfg = DitBlockConfig {
        dim: 64,
        heads: 4,
        head_dim: 16,
        mlp_hidden: 256,
        text_dim: 32,
        adaln_lora_dim: 16,
        qk_norm_eps: 1e-5,
    };
    let (batch, len, text_len) = (1, 24, 9);
    let mut b = GraphBuilder::new();
    let inp = DitBlockInputs {
        x: b.input("x", DType::F32, [batch, len, 64]).unwrap(),
        emb: b.input("emb", DType::F32, [batch, 64]).unwrap(),
        temb: b.input("temb", DType::F32, [batch, 192]).unwrap(),
        text: b.input("text", DType::F32, [batch, text_len, 32]).unwrap(),
        rope_cos: b.input("rope_cos", DType::F32, [len, 16]).unwrap(),
        rope_sin: b.input("rope_sin", DType::F32, [len, 16]).unwrap(),
        pos_emb: Some(b.input("pos_emb", DType::F32, [len, 64]).unwrap()),
    };
    let y = dit_block(&mut b, &WeightTypes::Assumed(DType::F32), "blk", &cfg, &inp).unwrap();
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

/// Compiles `graph` as it is (no passes) and runs it: (kernels that compute, output).
fn run(graph: Graph, weights: &Arc<MemoryWeights>, inputs: &HashMap<String, CpuTensor>) -> (usize, Vec<f32>) {
    let options = CompileOptions { passes: Passes::None, ..CompileOptions::default() };
    let plan = orrery_compiler::compile_with(graph, &options).unwrap();
    let n_kernels = plan.kernels.iter().filter(|k| !k.is_view).count();
    let session = Session::new(plan, weights.clone(), 2).unwrap();
    let (out, _) = session.run(inputs).unwrap();
    (n_kernels, out["y"].to_f32_vec())
}

#[test]
fn fused_dit_block_matches_the_unfused_plan() {
    let graph = block_graph();
    let mut weights = MemoryWeights::new();
    for (i, (_, node)) in graph.weights().enumerate() {
        let dims = node.ty.shape.dims().to_vec();
        let fan_in = *dims.last().unwrap() as f32;
        let data = if dims.len() == 1 {
            values(100 + i as u64, dims[0], 0.1).into_iter().map(|v| 1.0 + v).collect()
        } else {
            values(100 + i as u64, dims.iter().product(), 1.0 / fan_in.sqrt())
        };
        weights.insert(&node.name, CpuTensor::from_vec(dims, data));
    }
    let weights = Arc::new(weights);
    let mut inputs = HashMap::new();
    for (i, (_, node)) in graph.inputs().enumerate() {
        let dims = node.ty.shape.dims().to_vec();
        inputs.insert(
            node.name.clone(),
            CpuTensor::from_vec(dims.clone(), values(i as u64 + 1, dims.iter().product(), 1.0)),
        );
    }
    let (optimized, log) = Optimizer::new(Optimizer::fusing_rules()).verify_each(true).run(graph.clone()).unwrap();
    assert!(log.iter().any(|r| r.rule == "fuse_elementwise"), "{log:?}");
    let (n_unfused, reference) = run(graph, &weights, &inputs);
    let (n_fused, fused) = run(optimized, &weights, &inputs);
    assert!(n_fused < n_unfused, "{n_fused} kernels fused vs {n_unfused} unfused");
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = reference.iter().zip(&fused).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
    assert!(err <= 1e-6, "relative error {err:e}");
    // `compile` runs the same passes by default.
    let default_plan = orrery_compiler::compile(block_graph()).unwrap();
    assert_eq!(default_plan.kernels.iter().filter(|k| !k.is_view).count(), n_fused);
}
