//! Kernel outputs written into memory used before: at their planned places in the session's
//! activation arena (`Session::set_arena`, on by default), or into buffers freed earlier in
//! the run (`Session::set_recycling`, for runs without an arena). Two Cosmos DiT blocks, big
//! enough for their activations to be reused, give the same bits either way as with fresh
//! memory. Reused memory holds the stale values of another activation (of a NaN-filled
//! earlier run, for the arena), so a kernel that left any element unwritten would show here.

mod common;

use common::values;
use orrery_compiler::{Plan, Storage};
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

type Inputs = HashMap<String, CpuTensor>;

/// Two DiT blocks, their weights, and two different sets of inputs.
fn two_blocks() -> (Plan, Arc<MemoryWeights>, Inputs, Inputs) {
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
    let inputs = |seed: u64| -> Inputs {
        graph
            .inputs()
            .enumerate()
            .map(|(i, (_, node))| {
                let dims = node.ty.shape.dims().to_vec();
                let t = CpuTensor::from_vec(dims.clone(), values(seed + i as u64, dims.iter().product(), 1.0));
                (node.name.clone(), t)
            })
            .collect()
    };
    let (a, b) = (inputs(1), inputs(11));
    (orrery_compiler::compile(graph).unwrap(), Arc::new(weights), a, b)
}

fn bits(out: &HashMap<String, CpuTensor>) -> Vec<u32> {
    out["y"].to_f32_vec().iter().map(|v| v.to_bits()).collect()
}

/// Inputs of the same shapes, every value NaN.
fn nan_inputs(like: &Inputs) -> Inputs {
    like.iter().map(|(k, t)| (k.clone(), CpuTensor::from_vec(t.shape().to_vec(), vec![f32::NAN; t.numel()]))).collect()
}

/// A session writing every output into fresh memory.
fn fresh(plan: &Plan, weights: &Arc<MemoryWeights>) -> Session {
    let mut s = Session::new(plan.clone(), weights.clone(), 2).unwrap();
    s.set_arena(false);
    s.set_recycling(false);
    s
}

#[test]
fn recycled_outputs_give_the_bits_of_fresh_ones() {
    let (plan, weights, inputs, _) = two_blocks();
    let (out, stats) = fresh(&plan, &weights).run(&inputs).unwrap();
    let want = bits(&out);
    assert_eq!((stats.recycled_bytes, stats.arena_output_bytes), (0, 0));

    let peak = plan.peak_resident_bytes;
    let mut recycling = Session::new(plan, weights, 2).unwrap();
    recycling.set_arena(false);
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
        assert_eq!(stats.arena_output_bytes, 0);
    }
}

#[test]
fn outputs_in_the_arena_give_the_bits_of_fresh_ones() {
    let (plan, weights, a, b) = two_blocks();
    let fresh = fresh(&plan, &weights);
    let (want_a, want_b) = (bits(&fresh.run(&a).unwrap().0), bits(&fresh.run(&b).unwrap().0));
    // Every op output that owns memory, in bytes: the arena takes nearly all of it.
    let owned: u64 = plan
        .kernels
        .iter()
        .filter(|k| k.buffer.is_some_and(|s| s.storage == orrery_compiler::Storage::Owned) && !k.is_view)
        .map(|k| k.output.size_bytes())
        .sum();

    let session = Session::new(plan.clone(), weights, 2).unwrap();
    // The first run leaves NaN everywhere in the arena; then runs on other inputs must not
    // see any of it.
    let (poisoned, _) = session.run(&nan_inputs(&a)).unwrap();
    assert!(poisoned["y"].to_f32_vec().iter().all(|v| v.is_nan()));
    drop(poisoned);
    for (run, (inputs, want)) in [(&a, &want_a), (&b, &want_b), (&a, &want_a)].into_iter().enumerate() {
        let (out, stats) = session.run(inputs).unwrap();
        assert_eq!(&bits(&out), want, "run {run}");
        assert!(
            stats.arena_output_bytes * 10 >= owned * 9,
            "run {run}: {} of {owned} bytes in the arena",
            stats.arena_output_bytes
        );
        assert_eq!(stats.recycled_bytes, 0, "no shelf beside the arena");
        assert!(stats.peak_held_bytes <= plan.peak_resident_bytes);
    }
}

/// An output the caller keeps holds its place in the arena: the next run allocates around
/// it and leaves it as it was, and it outlives the session.
#[test]
fn kept_outputs_are_not_overwritten() {
    let (plan, weights, a, b) = two_blocks();
    let fresh = fresh(&plan, &weights);
    let (want_a, want_b) = (bits(&fresh.run(&a).unwrap().0), bits(&fresh.run(&b).unwrap().0));
    let session = Session::new(plan, weights, 2).unwrap();
    let (out_a, first) = session.run(&a).unwrap();
    assert!(matches!(**out_a["y"].buffer(), orrery_cpu::Buffer::Arena(_)), "the output is in the arena");
    let (out_b, second) = session.run(&b).unwrap();
    assert_eq!(bits(&out_b), want_b);
    assert_eq!(bits(&out_a), want_a, "run 1's output is untouched by run 2");
    assert!(second.arena_output_bytes < first.arena_output_bytes, "the kept output's place was taken");
    drop(session);
    assert_eq!(bits(&out_a), want_a, "outputs outlive the session");
    assert_eq!(bits(&out_b), want_b);
}

/// Elementwise kernels planned in place over an operand that dies there write over its place
/// in the arena: the plan's sharing is real, and the bits are those of fresh memory.
#[test]
fn elementwise_kernels_run_in_place_in_the_arena() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [300, 64]).unwrap();
    let w = b.input("w", DType::F32, [64, 96]).unwrap();
    let bias = b.input("bias", DType::F32, [96]).unwrap();
    let h = b.matmul("mm", x, w).unwrap();
    let e = b.unary("exp", orrery_ir::UnaryOp::Exp, h).unwrap();
    let y = b.binary("add", orrery_ir::BinaryOp::Add, e, bias).unwrap();
    b.output("y", y).unwrap();
    // Unfused, so the two elementwise kernels stay separate and in place.
    let options = orrery_compiler::CompileOptions { passes: orrery_compiler::Passes::Simplify, ..Default::default() };
    let plan = orrery_compiler::compile_with(b.finish().unwrap(), &options).unwrap();
    let in_place = |k: &orrery_compiler::Kernel| matches!(k.buffer.map(|s| s.storage), Some(Storage::InPlace { .. }));
    assert_eq!(plan.kernels.iter().filter(|k| in_place(k)).count(), 2, "exp and add are planned in place");
    let inputs: Inputs = [("x", vec![300, 64]), ("w", vec![64, 96]), ("bias", vec![96])]
        .into_iter()
        .enumerate()
        .map(|(i, (name, dims))| {
            let n = dims.iter().product();
            (name.to_string(), CpuTensor::from_vec(dims, values(i as u64 + 3, n, 0.5)))
        })
        .collect();
    let weights = Arc::new(MemoryWeights::new());
    let want = bits(&fresh(&plan, &weights).run(&inputs).unwrap().0);
    let session = Session::new(plan.clone(), weights, 2).unwrap();
    let every_output: u64 = plan.kernels.iter().map(|k| k.output.size_bytes()).sum();
    for run in 0..2 {
        let (out, stats) = session.run(&inputs).unwrap();
        assert_eq!(bits(&out), want, "run {run}");
        assert_eq!(stats.arena_output_bytes, every_output, "run {run}: the product's place holds all three");
    }
}
