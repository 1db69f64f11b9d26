//! The Cosmos diffusion transformer against diffusers 0.42 `CosmosTransformer3DModel` on tiny
//! random checkpoints written by `tools/reference/make_cosmos_dit_fixtures.py` (batch 2,
//! non-square latents; fps set and unset; padding and attention masks; Cosmos-1.0
//! text-to-world and video-to-world, the Predict2.5 network, bf16 weights on disk).
//! Bound: 1e-4 relative (max|out − ref| / max|ref|).

use orrery_compiler::compile;
use orrery_cpu::CpuTensor;
use orrery_formats::open_weights;
use orrery_models::{load_component, WeightTypes};
use orrery_runtime::{tensor_from_source, FormatWeights, Session};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cosmos_dit").join(name)
}

/// Runs folder `model` on `case_<case>.safetensors`; returns the relative error.
fn run(model: &str, case: &str) -> f64 {
    let dir = fixture(model);
    let component = load_component(&dir).unwrap();
    let source = open_weights(&dir).unwrap();
    let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
    let io = open_weights(dir.join(format!("case_{case}.safetensors"))).unwrap();
    let mut inputs = HashMap::new();
    let mut shapes = BTreeMap::new();
    for name in io.names() {
        if name == "sample" {
            continue;
        }
        let t = tensor_from_source(io.as_ref(), &name).unwrap();
        let t = if name == "attention_mask" {
            CpuTensor::from_vec(t.shape().to_vec(), t.to_f64_vec().iter().map(|&v| v as i64).collect::<Vec<i64>>())
        } else {
            t
        };
        shapes.insert(name.clone(), t.shape().to_vec());
        inputs.insert(name, t);
    }
    let graph = component.build("forward", &shapes, &WeightTypes::Checkpoint(&lookup)).unwrap();
    let plan = compile(graph).unwrap();
    let session = Session::new(plan, Arc::new(FormatWeights::new(source)), 2).unwrap();
    let (out, _) = session.run(&inputs).unwrap();
    let got = out["sample"].to_f32_vec();
    let reference = tensor_from_source(io.as_ref(), "sample").unwrap();
    assert_eq!(out["sample"].shape(), reference.shape());
    let reference = reference.to_f32_vec();
    let scale = reference.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let err = got.iter().zip(&reference).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs())) / scale;
    println!("{model} {case}: relative error {err:.2e}");
    err
}

#[test]
fn text_to_world_matches_diffusers() {
    for case in ["fps30_masked", "fps24", "no_fps_no_padding"] {
        let err = run("t2w", case);
        assert!(err <= 1e-4, "t2w {case}: relative error {err:e}");
    }
}

#[test]
fn bf16_weights_match_diffusers_loading_them_as_f32() {
    let err = run("t2w_bf16", "fps24");
    assert!(err <= 1e-4, "relative error {err:e}");
}

#[test]
fn video_to_world_condition_mask_matches_diffusers() {
    let err = run("v2w", "cond_fps24");
    assert!(err <= 1e-4, "relative error {err:e}");
}

#[test]
fn predict2_network_matches_diffusers() {
    let err = run("predict2", "per_frame_timestep");
    assert!(err <= 1e-4, "relative error {err:e}");
}
