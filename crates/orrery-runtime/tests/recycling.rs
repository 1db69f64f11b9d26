//! Kernel outputs written into buffers freed earlier in the run (`Session::set_recycling`):
//! two Cosmos DiT blocks, big enough for their activations to be recycled, give the same bits
//! with recycling on (every run) and off. A recycled buffer holds the stale values of a dead
//! activation, so a kernel that left any element unwritten would show here.

mod common;

use common::values;
use orrery_cpu::CpuTensor;
use orrery_ir::{DType, GraphBuilder};
use orrery_models::cosmos::{dit_block, DitBlockConfig, DitBlockInputs};
use orrery_models::WeightTypes;
use orrery_runtime::{MemoryWeights, Session};
use std::collections::HashMap;
use std::sync::Arc;

const LEN: usize = 512;
const DIM: usize = 256;
const TEXT_LEN: usize = 40;

#[test]
fn recycled_outputs_give_the_bits_of_fresh_ones() {
    let cfg = DitBlockConfig {
        dim: DIM,
        heads: 4,
        head_dim: 64,
        mlp_hidden: 4 * DIM,
        text_dim: 64,
        adaln_lora_dim: 32,
        qk_norm_eps: 1e-5,
        shard: orrery_models::Shard::WHOLE,
    };
    let mut b = GraphBuilder::new();
    let mut x = b.input("x", DType::F32, [1, LEN, DIM]).unwrap();
    let emb = b.input("emb", DType::F32, [1, DIM]).unwrap();
    let temb = b.input("temb", DType::F32, [1, 3 * DIM]).unwrap();
    let text = b.input("text", DType::F32, [1, TEXT_LEN, 64]).unwrap();
    let rope_cos = b.input("rope_cos", DType::F32, [LEN, 64]).unwrap();
    let rope_sin = b.input("rope_sin", DType::F32, [LEN, 64]).unwrap();
    for layer in 0..2 {
        let inp = DitBlockInputs { x, emb, temb, text, text_mask: None, rope_cos, rope_sin, pos_emb: None };
        x = dit_block(&mut b, &WeightTypes::Assumed(DType::F32), &format!("blk{layer}"), &cfg, &inp).unwrap();
    }
    b.output("y", x).unwrap();
    let graph = b.finish().unwrap();

    let mut weights = MemoryWeights::new();
    for (i, (_, node)) in graph.weights().enumerate() {
        let dims = node.ty.shape.dims().to_vec();
        let scale = 1.0 / (*dims.last().unwrap() as f32).sqrt();
        weights.insert(
            &node.name,
            CpuTensor::from_vec(dims.clone(), values(100 + i as u64, dims.iter().product(), scale)),
        );
    }
    let weights = Arc::new(weights);
    let mut inputs = HashMap::new();
    for (i, (_, node)) in graph.inputs().enumerate() {
        let dims = node.ty.shape.dims().to_vec();
        let t = CpuTensor::from_vec(dims.clone(), values(i as u64 + 1, dims.iter().product(), 1.0));
        inputs.insert(node.name.clone(), t);
    }
    let plan = orrery_compiler::compile(graph).unwrap();
    let bits = |out: &HashMap<String, CpuTensor>| out["y"].to_f32_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();

    let mut fresh = Session::new(plan.clone(), weights.clone(), 2).unwrap();
    fresh.set_recycling(false);
    let (out, stats) = fresh.run(&inputs).unwrap();
    let want = bits(&out);
    assert_eq!(stats.recycled_bytes, 0);

    let peak = plan.peak_resident_bytes;
    let recycling = Session::new(plan, weights, 2).unwrap();
    for run in 0..2 {
        let (out, stats) = recycling.run(&inputs).unwrap();
        assert_eq!(bits(&out), want, "run {run}");
        // The shelf only takes the room the plan's peak leaves beside the live values and
        // the output being made.
        assert!(
            stats.peak_held_bytes <= peak,
            "run {run}: {} bytes held at once, the plan's peak is {peak}",
            stats.peak_held_bytes
        );
        // Each block's token-sized outputs (512 × 256 floats) reuse the buffers of dead ones.
        assert!(
            stats.recycled_bytes >= 4 * (LEN * DIM * 4) as u64,
            "run {run}: {} bytes recycled",
            stats.recycled_bytes
        );
    }
}
