//! The T5 encoder against transformers' `T5EncoderModel` on tiny random checkpoints written by
//! `tools/reference/make_t5_fixtures.py`: ReLU (model.safetensors), gated-GELU (sharded
//! safetensors) and a full encoder-decoder `pytorch_model.bin` with t5-11b's config keys; batch
//! 2 with a padded row, L = 512 and L = 200 (distances beyond relative_attention_max_distance).
//! Bound: 1e-4 relative (max|out − ref| / max|ref|); a correct f32 port lands near 1e-6.

mod common;

use common::rel_err;

use orrery_compiler::compile;
use orrery_formats::{open_weights, FormatError, SourceReport, TensorBytes, TensorInfo, WeightSource};
use orrery_models::{load_component, WeightTypes};
use orrery_runtime::{tensor_from_source, FormatWeights, Session};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5").join(name)
}

/// A weight source that records which tensors were loaded.
struct Recording {
    inner: Box<dyn WeightSource>,
    loaded: Arc<Mutex<Vec<String>>>,
}

impl WeightSource for Recording {
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.inner.info(name)
    }
    fn load(&self, name: &str) -> Result<TensorBytes, FormatError> {
        self.loaded.lock().unwrap().push(name.to_string());
        self.inner.load(name)
    }
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn report(&self) -> SourceReport {
        self.inner.report()
    }
}

/// Runs the encoder of folder `name` on `io_L{len}.safetensors` (rows `rows` of it, with or
/// without the mask) and returns (output, reference rows, names of the loaded weights).
fn run(name: &str, len: usize, rows: Option<usize>, with_mask: bool) -> (Vec<f32>, Vec<f32>, Vec<String>) {
    let dir = fixture(name);
    let component = load_component(&dir).unwrap();
    let source = open_weights(&dir).unwrap();
    let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
    let io = open_weights(dir.join(format!("io_L{len}.safetensors"))).unwrap();
    let tensor = |n: &str| tensor_from_source(io.as_ref(), n).unwrap();
    let (ids, mask, expected) = (tensor("input_ids"), tensor("attention_mask"), tensor("last_hidden_state"));
    let (ids, mask, expected) = match rows {
        Some(r) => (ids.slice(0, 0, r, 1), mask.slice(0, 0, r, 1), expected.slice(0, 0, r, 1)),
        None => (ids, mask, expected),
    };
    let mut shapes = BTreeMap::from([("input_ids".to_string(), ids.shape().to_vec())]);
    let mut inputs = HashMap::from([("input_ids".to_string(), ids.contiguous())]);
    if with_mask {
        shapes.insert("attention_mask".into(), mask.shape().to_vec());
        inputs.insert("attention_mask".into(), mask.contiguous());
    }
    let graph = component.build("forward", &shapes, &WeightTypes::Checkpoint(&lookup)).unwrap();
    let plan = compile(graph).unwrap();
    let loaded = Arc::new(Mutex::new(Vec::new()));
    let weights = FormatWeights::new(Box::new(Recording { inner: source, loaded: loaded.clone() }));
    let session = Session::new(plan, Arc::new(weights), 2).unwrap();
    let (out, _) = session.run(&inputs).unwrap();
    let got = out["last_hidden_state"].to_f32_vec();
    let names = loaded.lock().unwrap().clone();
    (got, expected.to_f32_vec(), names)
}

fn check(name: &str) {
    for len in [512, 200] {
        let (got, reference, loaded) = run(name, len, None, true);
        let err = rel_err(&got, &reference);
        println!("{name} L={len}: relative error {err:.2e}");
        assert!(err <= 1e-4, "{name} L={len}: relative error {err:e}");
        assert!(loaded.iter().all(|n| n.starts_with("encoder.") || n == "shared.weight"), "{loaded:?}");
    }
}

#[test]
fn relu_encoder_matches_transformers() {
    check("relu");
}

#[test]
fn gated_gelu_encoder_from_sharded_safetensors_matches_transformers() {
    check("gated_gelu");
}

#[test]
fn t5_11b_shaped_full_checkpoint_runs_the_encoder_without_reading_the_decoder() {
    check("t5_11b_tiny");
    let component = load_component(&fixture("t5_11b_tiny")).unwrap();
    assert_eq!(component.class_name(), "T5EncoderModel");
}

#[test]
fn without_a_mask_every_token_attends() {
    // Row 0 of the fixtures has no padding: with the mask omitted it must come out the same.
    let (got, reference, _) = run("relu", 200, Some(1), false);
    assert!(rel_err(&got, &reference) <= 1e-4);
}
