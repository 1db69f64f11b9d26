//! Tensor and sequence parallelism of the Cosmos transformer on the diffusers fixtures of
//! `cosmos_dit_parity.rs`: ranks (threads over the in-process collective), each built for its
//! shard (`Component::build_sharded`) and reading its weights through a weight store of its
//! own, give the same bits as each other, within 1e-5 relative of one rank and within 1e-4 of
//! diffusers. Tensor-parallel: each rank's store read exactly its half of the sharded weights
//! plus the replicated ones; a rank that fails mid-run makes the other fail naming it.
//! Sequence-parallel (Ulysses): two ranks, each with half of the tokens, match one rank
//! within 1e-5; layouts the tokens or heads do not divide into are refused.

mod common;

use common::rel_err;

use orrery_compiler::compile;
use orrery_cpu::CpuTensor;
use orrery_formats::{open_weights, TensorSlice};
use orrery_models::{load_component, Component, Shard, WeightTypes};
use orrery_parallel::{Collective, CollectiveError, InProcessGroup};
use orrery_runtime::{tensor_from_source, FormatWeights, RuntimeError, Session};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cosmos_dit").join(name)
}

/// The case's inputs by name (without the reference `sample`) and the reference.
fn case(model: &str, case: &str) -> (HashMap<String, CpuTensor>, Vec<f32>) {
    let io = open_weights(fixture(model).join(format!("case_{case}.safetensors"))).unwrap();
    let mut inputs = HashMap::new();
    for name in io.names().into_iter().filter(|n| n != "sample") {
        let t = tensor_from_source(io.as_ref(), &name).unwrap();
        let t = if name == "attention_mask" {
            CpuTensor::from_vec(t.shape().to_vec(), t.to_f64_vec().iter().map(|&v| v as i64).collect::<Vec<i64>>())
        } else {
            t
        };
        inputs.insert(name, t);
    }
    (inputs, tensor_from_source(io.as_ref(), "sample").unwrap().to_f32_vec())
}

/// A session of `shard` of folder `model`'s transformer, over a weight store of its own.
fn session(
    model: &str,
    component: &dyn Component,
    inputs: &HashMap<String, CpuTensor>,
    shard: Shard,
) -> (Session, Arc<FormatWeights>) {
    let source = open_weights(fixture(model)).unwrap();
    let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
    let shapes: BTreeMap<String, Vec<usize>> = inputs.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect();
    let graph = component.build_sharded("forward", &shapes, &WeightTypes::Checkpoint(&lookup), shard).unwrap();
    let store = Arc::new(FormatWeights::new(source));
    (Session::new(compile(graph).unwrap(), store.clone(), 1).unwrap(), store)
}

/// Runs every rank's session on its own thread; each rank's `sample` or error.
fn run_ranks(sessions: &[Session], inputs: &HashMap<String, CpuTensor>) -> Vec<Result<Vec<f32>, RuntimeError>> {
    let comms = InProcessGroup::ranks(sessions.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = sessions
            .iter()
            .zip(comms)
            .map(|(session, mut comm)| {
                s.spawn(move || {
                    let (out, _) = session.run_parallel(inputs.clone(), &mut comm)?;
                    Ok(out["sample"].to_f32_vec())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Bytes of the whole tensors a graph slices, and of those it reads whole.
fn sharded_and_replicated(session: &Session, model: &str) -> (u64, u64) {
    let source = open_weights(fixture(model)).unwrap();
    let (mut sharded, mut replicated) = (std::collections::BTreeSet::new(), 0u64);
    for (_, node) in session.plan().graph.weights() {
        match TensorSlice::parse(&node.name) {
            Some(slice) => _ = sharded.insert(slice.base),
            None => replicated += node.ty.size_bytes(),
        }
    }
    (sharded.iter().map(|n| source.info(n).unwrap().byte_len as u64).sum(), replicated)
}

#[test]
fn two_ranks_match_one_rank_and_diffusers_and_read_only_their_shards() {
    let component = load_component(&fixture("t2w")).unwrap();
    for name in ["fps30_masked", "fps24"] {
        let (inputs, reference) = case("t2w", name);
        let (whole, whole_store) = session("t2w", component.as_ref(), &inputs, Shard::WHOLE);
        let (out, _) = whole.run(&inputs).unwrap();
        let one = out["sample"].to_f32_vec();
        let (ranks, stores): (Vec<Session>, Vec<_>) =
            (0..2).map(|rank| session("t2w", component.as_ref(), &inputs, Shard::heads(rank, 2))).unzip();
        let outs: Vec<Vec<f32>> = run_ranks(&ranks, &inputs).into_iter().map(Result::unwrap).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&outs[0]), bits(&outs[1]), "{name}: every rank ends with the same output");
        let (vs_one, vs_diffusers) = (rel_err(&outs[0], &one), rel_err(&outs[0], &reference));
        println!("{name}: 2 ranks vs 1: {vs_one:.2e}, vs diffusers {vs_diffusers:.2e}");
        assert!(vs_one <= 1e-5, "{name}: {vs_one:e}");
        assert!(vs_diffusers <= 1e-4, "{name}: {vs_diffusers:e}");
        assert!(vs_one > 0.0, "the partial sums are added in another order, so some bits differ");

        // What each rank's store handed out: its half of every sharded weight, all the rest.
        let (sharded, replicated) = sharded_and_replicated(&ranks[0], "t2w");
        assert!(sharded > replicated, "the blocks' attention and MLP weights are most of the model");
        for (rank, store) in stores.iter().enumerate() {
            let read = store.bytes_read();
            println!("rank {rank}: read {read} B of {sharded} B sharded + {replicated} B replicated");
            assert_eq!(read, sharded / 2 + replicated, "rank {rank}");
        }
        assert_eq!(whole_store.bytes_read(), sharded + replicated);
    }
}

#[test]
fn a_rank_whose_run_fails_makes_the_other_fail_naming_it() {
    let component = load_component(&fixture("t2w")).unwrap();
    let (inputs, _) = case("t2w", "fps24");
    let ranks: Vec<Session> =
        (0..2).map(|rank| session("t2w", component.as_ref(), &inputs, Shard::heads(rank, 2)).0).collect();
    let mut comms = InProcessGroup::ranks(2);
    let mut second = comms.pop().unwrap();
    let mut first = comms.pop().unwrap();
    let results = std::thread::scope(|s| {
        let a = s.spawn(|| ranks[0].run_parallel(inputs.clone(), &mut first).map(|_| ()));
        // Rank 1 is given a wrong input: it fails before its first all-reduce and leaves.
        let b = s.spawn(|| {
            let mut bad = inputs.clone();
            bad.remove("timestep");
            let r = ranks[1].run_parallel(bad, &mut second).map(|_| ());
            second.abort("its input was missing");
            r
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(matches!(results.1, Err(RuntimeError::MissingInput { .. })), "{:?}", results.1);
    match results.0 {
        Err(RuntimeError::Collective { source: CollectiveError::RankLost { rank: 1, .. }, node }) => {
            assert!(node.ends_with("all_reduce"), "{node}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sharded_plan_run_alone_is_refused_naming_its_all_reduce() {
    let component = load_component(&fixture("t2w")).unwrap();
    let (inputs, _) = case("t2w", "fps24");
    let (s, _) = session("t2w", component.as_ref(), &inputs, Shard::heads(0, 2));
    match s.run(&inputs) {
        Err(RuntimeError::NoCollective { node }) => assert!(node.contains("all_reduce"), "{node}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // And a layout the heads do not divide into is refused when building, naming the flag.
    let source = open_weights(fixture("t2w")).unwrap();
    let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
    let shapes = inputs.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect();
    let err = component
        .build_sharded("forward", &shapes, &WeightTypes::Checkpoint(&lookup), Shard::heads(0, 3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--tp") && err.contains("2 heads"), "{err}");
}

#[test]
fn sequence_parallel_ranks_match_one_rank() {
    let component = load_component(&fixture("t2w")).unwrap();
    // The fixture's latents [2, 4, 3, 6, 10] have 3 × 3 × 5 = 45 tokens; two frames of them
    // have 30, which 2 ranks split.
    let (mut inputs, _) = case("t2w", "fps30_masked");
    let x = &inputs["hidden_states"];
    let frames: Vec<f32> = x.to_f32_vec().chunks(3 * 60).flat_map(|c| c[..2 * 60].to_vec()).collect();
    inputs.insert("hidden_states".into(), CpuTensor::from_vec(vec![2, 4, 2, 6, 10], frames));
    let build = |inputs: &HashMap<String, CpuTensor>, shard: Shard| {
        let source = open_weights(fixture("t2w")).unwrap();
        let lookup = |k: &str| source.info(k).map(|i| (i.dtype, i.shape));
        let shapes = inputs.iter().map(|(k, t)| (k.clone(), t.shape().to_vec())).collect();
        let graph = component.build_sharded("forward", &shapes, &WeightTypes::Checkpoint(&lookup), shard);
        let graph = graph.map_err(|e| e.to_string())?;
        Ok::<_, String>(Session::new(compile(graph).unwrap(), Arc::new(FormatWeights::new(source)), 1).unwrap())
    };
    let one = build(&inputs, Shard::WHOLE).unwrap().run(&inputs).unwrap().0["sample"].to_f32_vec();
    let ranks: Vec<Session> = (0..2).map(|rank| build(&inputs, Shard::tokens(rank, 2)).unwrap()).collect();
    // Each rank's plan exchanges q, k, v and the output around both self-attentions and
    // gathers the tokens once.
    let exchanges = |s: &Session, op: &str| s.plan().kernels.iter().filter(|k| k.op.starts_with(op)).count();
    assert_eq!((exchanges(&ranks[0], "all_to_all"), exchanges(&ranks[0], "all_gather")), (2 * 4, 1));
    let outs: Vec<Vec<f32>> = run_ranks(&ranks, &inputs).into_iter().map(Result::unwrap).collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&outs[0]), bits(&outs[1]), "every rank ends with the same output");
    let err = rel_err(&outs[0], &one);
    println!("2 sequence-parallel ranks vs 1: {err:.2e}");
    assert!(err <= 1e-5, "{err:e}");

    // 45 tokens do not split over 2 ranks, nor 2 heads over 4: refused naming the flag.
    let (odd, _) = case("t2w", "fps30_masked");
    for (inputs, n, words) in [(&odd, 2, "45 tokens"), (&inputs, 4, "2 heads")] {
        let err = build(inputs, Shard::tokens(0, n)).err().expect("refused");
        assert!(err.contains("--sp") && err.contains(words), "{err}");
    }
}

#[test]
fn every_sharded_graph_has_a_consistent_split_state_ending_whole() {
    // The compiler's placement check (`orrery_compiler::infer_placements`) over the DiT's
    // tensor- and sequence-parallel graphs: every row-parallel output is a partial sum that an
    // all-reduce completes, and the sample is whole on every rank.
    use orrery_compiler::{infer_placements, Placement};
    let component = load_component(&fixture("t2w")).unwrap();
    let (mut inputs, _) = case("t2w", "fps24");
    inputs.insert("hidden_states".into(), CpuTensor::from_vec(vec![2, 4, 2, 6, 10], vec![0f32; 960]));
    let source = open_weights(fixture("t2w")).unwrap();
    let lookup = |k: &str| source.info(k).map(|i| (i.dtype, i.shape));
    let shapes = inputs.iter().map(|(k, t)| (k.clone(), t.shape().to_vec())).collect();
    for shard in [Shard::heads(1, 2), Shard::tokens(1, 2)] {
        let graph = component.build_sharded("forward", &shapes, &WeightTypes::Checkpoint(&lookup), shard).unwrap();
        let placed = infer_placements(&graph).unwrap();
        let sample = graph.outputs().iter().find(|(n, _)| n == "sample").unwrap().1;
        assert_eq!(placed[sample.0], Placement::Replicate, "{shard:?}");
        let partial = placed.iter().filter(|p| **p == Placement::Partial).count();
        let reduces = graph.nodes().iter().filter(|n| n.op() == Some(&orrery_ir::Op::AllReduce)).count();
        assert_eq!(partial, reduces, "{shard:?}: one partial sum per all-reduce");
        assert_eq!(reduces, if shard.splits_heads() { 2 * 3 } else { 0 });
    }
}
