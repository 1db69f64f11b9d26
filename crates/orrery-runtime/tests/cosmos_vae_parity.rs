//! The Cosmos video tokenizer (CV8x8x8) against diffusers 0.42 `AutoencoderKLCosmos` on a tiny
//! random model written by `tools/reference/make_cosmos_vae_fixtures.py`: encode and decode of
//! 9 frames at 16 × 24 (batch 2, non-square), 17 frames at 8 × 8 and a single frame at
//! 16 × 16. Bound: 1e-4 relative (max|out − ref| / max|ref|).

use orrery_compiler::compile;
use orrery_formats::open_weights;
use orrery_models::{load_component, WeightTypes};
use orrery_runtime::{tensor_from_source, FormatWeights, Session};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cosmos_vae/tiny")
}

/// Runs `method` on `<method>_<case>.safetensors` (input `input`, reference `output`).
fn relative_error(method: &str, case: &str, input: &str, output: &str) -> f64 {
    let dir = fixture();
    let component = load_component(&dir).unwrap();
    let source = open_weights(&dir).unwrap();
    let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
    let io = open_weights(dir.join(format!("{method}_{case}.safetensors"))).unwrap();
    let x = tensor_from_source(io.as_ref(), input).unwrap();
    let reference = tensor_from_source(io.as_ref(), output).unwrap();
    let shapes = BTreeMap::from([(input.to_string(), x.shape().to_vec())]);
    let graph = component.build(method, &shapes, &WeightTypes::Checkpoint(&lookup)).unwrap();
    let plan = compile(graph).unwrap();
    let session = Session::new(plan, Arc::new(FormatWeights::new(source)), 2).unwrap();
    let (out, _) = session.run(&HashMap::from([(input.to_string(), x)])).unwrap();
    assert_eq!(out[output].shape(), reference.shape(), "{method} {case}");
    let (got, reference) = (out[output].to_f32_vec(), reference.to_f32_vec());
    let scale = reference.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let err = got.iter().zip(&reference).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs())) / scale;
    println!("{method} {case}: relative error {err:.2e}");
    err
}

#[test]
fn encode_matches_diffusers() {
    for case in ["f9_16x24", "f17_8x8", "f1_16x16"] {
        let err = relative_error("encode", case, "sample", "latent");
        assert!(err <= 1e-4, "encode {case}: {err:e}");
    }
}

#[test]
fn decode_matches_diffusers() {
    for case in ["f9_16x24", "f17_8x8", "f1_16x16"] {
        let err = relative_error("decode", case, "z", "sample");
        assert!(err <= 1e-4, "decode {case}: {err:e}");
    }
}
