//! The Cosmos video tokenizer (CV8x8x8) against diffusers 0.42 `AutoencoderKLCosmos` on a tiny
//! random model written by `tools/reference/make_cosmos_vae_fixtures.py`: encode and decode of
//! 9 frames at 16 × 24 (batch 2, non-square), 17 frames at 8 × 8 and a single frame at
//! 16 × 16. Bound: 1e-4 relative (max|out − ref| / max|ref|).

mod common;

use common::rel_err;

use orrery_compiler::compile;
use orrery_formats::open_weights;
use orrery_models::{load_component, WeightTypes};
use orrery_runtime::{run_chunks, tensor_from_source, ChunkOutput, FormatWeights, Session};
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
    let err = rel_err(&got, &reference);
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

/// Decodes `z` [B, C, T, h, w] in temporal chunks of `frames` latent frames through
/// `run_chunks` (states threaded from chunk to chunk); returns the video's shape and values.
fn decode_in_chunks(z: &orrery_cpu::CpuTensor, frames: usize) -> (Vec<usize>, Vec<f32>) {
    use orrery_models::cosmos::{decoder_chunk_graph, CosmosVaeConfig, DecodeChunk};
    let dir = fixture();
    let config = CosmosVaeConfig::from_config(&orrery_models::ComponentConfig::read(&dir).unwrap()).unwrap();
    let source = open_weights(&dir).unwrap();
    let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
    let zd = z.shape().to_vec();
    let total = zd[2];
    let (mut plans, mut slices) = (Vec::new(), Vec::new());
    for start in (0..total).step_by(frames) {
        let end = (start + frames).min(total);
        let shape = [zd[0], zd[1], end - start, zd[3], zd[4]];
        let chunk = DecodeChunk { start, total };
        plans.push(
            compile(decoder_chunk_graph(&config, &WeightTypes::Checkpoint(&lookup), shape, chunk).unwrap()).unwrap(),
        );
        slices.push(z.slice(2, start, end, 1).contiguous());
    }
    let weights = Arc::new(FormatWeights::new(source));
    let frames_out = 1 + config.temporal_compression_ratio * (total - 1);
    let output = ChunkOutput { name: "sample", axis: 2, len: frames_out };
    let video = run_chunks(&plans, weights, "z", slices, output, 2).unwrap();
    (video.shape().to_vec(), video.to_f32_vec())
}

#[test]
fn chunked_decode_equals_the_one_shot_decode() {
    // Whole-video chunks (bit-identical to one shot); 1-frame chunks: 2 chunks for 9 frames,
    // 3 for 17; 2-frame chunks for 17 (2 + 1). Against orrery's one-shot decode within 1e-6
    // relative (kernel shapes change with the chunk, so not bit for bit), and against diffusers
    // within the parity bound.
    for (case, frames) in
        [("f9_16x24", 2), ("f1_16x16", 1), ("f17_8x8", 3), ("f9_16x24", 1), ("f17_8x8", 1), ("f17_8x8", 2)]
    {
        let io = open_weights(fixture().join(format!("decode_{case}.safetensors"))).unwrap();
        let z = tensor_from_source(io.as_ref(), "z").unwrap();
        let reference = tensor_from_source(io.as_ref(), "sample").unwrap();
        let (shape, chunked) = decode_in_chunks(&z, frames);
        assert_eq!(shape, reference.shape(), "{case}");
        // One shot, through the same graph builder without chunks.
        let dir = fixture();
        let component = load_component(&dir).unwrap();
        let source = open_weights(&dir).unwrap();
        let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
        let shapes = BTreeMap::from([("z".to_string(), z.shape().to_vec())]);
        let graph = component.build("decode", &shapes, &WeightTypes::Checkpoint(&lookup)).unwrap();
        let session = Session::new(compile(graph).unwrap(), Arc::new(FormatWeights::new(source)), 2).unwrap();
        let (out, _) = session.run(&HashMap::from([("z".to_string(), z.clone())])).unwrap();
        let one_shot = out["sample"].to_f32_vec();
        let vs_one_shot = rel_err(&chunked, &one_shot);
        let vs_diffusers = rel_err(&chunked, &reference.to_f32_vec());
        println!("{case} in chunks of {frames}: {vs_one_shot:.2e} from one shot, {vs_diffusers:.2e} from diffusers");

        assert!(vs_one_shot <= 1e-6, "{case}/{frames}: {vs_one_shot:e}");
        if frames >= z.shape()[2] {
            // One chunk is the one-shot graph plus state outputs: the same bits.
            assert_eq!(vs_one_shot, 0.0, "{case}");
        }
        assert!(vs_diffusers <= 1e-4, "{case}/{frames}: {vs_diffusers:e}");
    }
}
