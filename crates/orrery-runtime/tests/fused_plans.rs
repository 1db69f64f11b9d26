//! A Cosmos DiT block run unfused and after the optimizer: what the fused plan may contain
//! (kernel count, attention kernels, no standalone elementwise pass over the token stream, no
//! score-sized buffer) and that it computes the same outputs (1e-6 relative; the row programs
//! sum in another order than the dedicated norm kernels, so the bits differ slightly).

mod common;

use common::values;
use orrery_compiler::passes::Optimizer;
use orrery_compiler::{CompileOptions, Kernel, Passes, Plan};
use orrery_cpu::CpuTensor;
use orrery_ir::{DType, Graph, GraphBuilder, Op, OpFamily};
use orrery_models::cosmos::{dit_block, DitBlockConfig, DitBlockInputs};
use orrery_models::WeightTypes;
use orrery_runtime::{MemoryWeights, Session};
use std::collections::HashMap;
use std::sync::Arc;

/// Sizes of the test block: L·L = 576 and L·Lt = 168 divide no activation's element count, so
/// a score-sized buffer cannot hide behind another shape.
const BATCH: usize = 1;
const LEN: usize = 24;
const TEXT_LEN: usize = 7;
const DIM: usize = 64;
const HEADS: usize = 4;

fn block_graph() -> Graph {
    let cfg = DitBlockConfig {
        dim: DIM,
        heads: HEADS,
        head_dim: 16,
        mlp_hidden: 256,
        text_dim: 32,
        adaln_lora_dim: 16,
        qk_norm_eps: 1e-5,
        shard: orrery_models::Shard::WHOLE,
    };
    let (batch, len, text_len) = (BATCH, LEN, TEXT_LEN);
    let mut b = GraphBuilder::new();
    let inp = DitBlockInputs {
        x: b.input("x", DType::F32, [batch, len, 64]).unwrap(),
        emb: b.input("emb", DType::F32, [batch, 64]).unwrap(),
        temb: b.input("temb", DType::F32, [batch, 192]).unwrap(),
        text: b.input("text", DType::F32, [batch, text_len, 32]).unwrap(),
        text_mask: None,
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
    check_fused_plan(&orrery_compiler::compile_with(optimized.clone(), &CompileOptions::default()).unwrap());
    let (n_unfused, reference) = run(graph, &weights, &inputs);
    let (n_fused, fused) = run(optimized, &weights, &inputs);
    assert!(n_fused < n_unfused, "{n_fused} kernels fused vs {n_unfused} unfused");
    let err = common::rel_err(&fused, &reference);
    assert!(err <= 1e-6, "relative error {err:e}");
    // `compile` runs the same passes by default.
    let default_plan = orrery_compiler::compile(block_graph()).unwrap();
    assert_eq!(default_plan.kernels.iter().filter(|k| !k.is_view).count(), n_fused);
}

/// The acceptance checks on the fused plan of the block, with the kernel list in every message.
fn check_fused_plan(plan: &Plan) {
    let graph = &plan.graph;
    let kernels: Vec<&Kernel> = plan.kernels.iter().filter(|k| !k.is_view).collect();
    let listing: Vec<String> = kernels.iter().map(|k| format!("{} = {}", k.name, k.op)).collect();
    let listing = listing.join("\n  ");
    println!("fused DiT block, {} kernels:\n  {listing}", kernels.len());
    assert!(kernels.len() <= 24, "{} kernels:\n  {listing}", kernels.len());
    let attention = kernels.iter().filter(|k| k.op.starts_with("attention")).count();
    assert_eq!(attention, 2, "{listing}");
    // Standalone elementwise kernels (plain elementwise ops and elementwise-only programs) never
    // touch the [B, L, D] token stream. Row programs are normalisations (the AdaLN layer norm
    // with its modulation, or a q/k RMS norm with RoPE): at most 3 + 2 per block.
    let tokens = BATCH * LEN * DIM;
    let mut row_kernels = 0;
    for k in &kernels {
        let op = graph.node(k.node).op().unwrap();
        let elementwise = match op {
            Op::Fused(p) if p.has_row_steps() => {
                row_kernels += 1;
                false
            }
            _ => op.family() == OpFamily::Elementwise || op.family() == OpFamily::Fused,
        };
        let touches_tokens = std::iter::once(k.output.shape.numel())
            .chain(k.inputs.iter().map(|&i| graph.node(i).ty.shape.numel()))
            .any(|n| n == tokens);
        assert!(!(elementwise && touches_tokens), "`{}` is an elementwise pass over [B, L, D]:\n  {listing}", k.name);
    }
    assert!(row_kernels <= 3 + 2, "{row_kernels} normalisation kernels:\n  {listing}");
    // No value anywhere in the plan has the size of a score matrix (per head or all heads).
    for node in graph.nodes() {
        let n = node.ty.shape.numel();
        for scores in [LEN * LEN, LEN * TEXT_LEN] {
            assert!(n % scores != 0 || n < scores, "`{}` {} may hold scores", node.name, node.ty);
        }
    }
}

#[test]
fn cosmos_transformer_blocks_meet_the_fusion_criteria() {
    // The tiny text-to-world DiT of the parity fixtures (batch 2, 3 × 3 × 5 = 45 tokens, 7 text
    // tokens with a key mask), compiled with the default passes: per block the same criteria
    // as the single block above.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cosmos_dit/t2w");
    let component = orrery_models::load_component(&dir).unwrap();
    let source = orrery_formats::open_weights(&dir).unwrap();
    let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
    let (batch, tokens, text, dim) = (2, 45, 7, 24);
    let shapes = std::collections::BTreeMap::from([
        ("hidden_states".to_string(), vec![batch, 4, 3, 6, 10]),
        ("timestep".to_string(), vec![batch]),
        ("encoder_hidden_states".to_string(), vec![batch, text, 16]),
        ("attention_mask".to_string(), vec![batch, text]),
        ("fps".to_string(), vec![]),
        ("padding_mask".to_string(), vec![1, 1, 48, 80]),
    ]);
    let graph = component.build("forward", &shapes, &WeightTypes::Checkpoint(&lookup)).unwrap();
    let plan = orrery_compiler::compile(graph).unwrap();
    let g = &plan.graph;
    for block in 0..2 {
        let prefix = format!("transformer_blocks.{block}.");
        let kernels: Vec<&Kernel> = plan.kernels.iter().filter(|k| !k.is_view && k.name.starts_with(&prefix)).collect();
        let listing: Vec<String> = kernels.iter().map(|k| format!("{} = {}", k.name, k.op)).collect();
        let listing = listing.join("\n  ");
        assert!(kernels.len() <= 24, "block {block}: {} kernels:\n  {listing}", kernels.len());
        assert_eq!(kernels.iter().filter(|k| k.op.starts_with("attention")).count(), 2, "{listing}");
        for k in &kernels {
            let op = g.node(k.node).op().unwrap();
            let elementwise = match op {
                Op::Fused(p) => !p.has_row_steps(),
                _ => op.family() == OpFamily::Elementwise,
            };
            let touches = std::iter::once(k.output.shape.numel())
                .chain(k.inputs.iter().map(|&i| g.node(i).ty.shape.numel()))
                .any(|n| n == batch * tokens * dim);
            assert!(!(elementwise && touches), "`{}` is an elementwise pass over [B, L, D]:\n  {listing}", k.name);
        }
    }
    for node in g.nodes() {
        let d = node.ty.shape.dims();
        let scores = d.len() >= 2 && d[d.len() - 2] == tokens && (d[d.len() - 1] == tokens || d[d.len() - 1] == text);
        assert!(!scores, "`{}` {} holds scores", node.name, node.ty);
    }
}
