//! The Cosmos video tokenizer (CV8x8x8) against diffusers 0.42 `AutoencoderKLCosmos` on a tiny
//! random model written by `tools/reference/make_cosmos_vae_fixtures.py`: encode and decode of
//! 9 frames at 16 × 24 (batch 2, non-square), 17 frames at 8 × 8 and a single frame at
//! 16 × 16, plus 17 frames on a second model with temporal attention at 2 frames per latent
//! frame. Bound: 1e-4 relative (max|out − ref| / max|ref|). Encode and decode in temporal
//! chunks (1, 2 and 3 chunks) equal the one-shot run within 1e-6 relative, bit for bit when one
//! chunk holds the whole video.

mod common;

use common::rel_err;

use orrery_compiler::compile;
use orrery_formats::open_weights;
use orrery_models::{load_component, WeightTypes};
use orrery_runtime::{run_chunks, tensor_from_source, Concat, FormatWeights, Session};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `tiny`: the real architecture at tiny widths; `tiny_attn`: the same with attention also in
/// the encoder's first down block and the decoder's last up block (2 frames per latent frame
/// there, which chunked temporal attention must count right).
fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cosmos_vae").join(model)
}

const CASES: [(&str, &str); 4] =
    [("tiny", "f9_16x24"), ("tiny", "f17_8x8"), ("tiny", "f1_16x16"), ("tiny_attn", "f17_8x8")];

/// Runs `method` on `<method>_<case>.safetensors` (input `input`, reference `output`).
fn relative_error(model: &str, method: &str, case: &str, input: &str, output: &str) -> f64 {
    let dir = fixture(model);
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
    println!("{model} {method} {case}: relative error {err:.2e}");
    err
}

#[test]
fn encode_matches_diffusers() {
    for (model, case) in CASES {
        let err = relative_error(model, "encode", case, "sample", "latent");
        assert!(err <= 1e-4, "{model} encode {case}: {err:e}");
    }
}

#[test]
fn decode_matches_diffusers() {
    for (model, case) in CASES {
        let err = relative_error(model, "decode", case, "z", "sample");
        assert!(err <= 1e-4, "{model} decode {case}: {err:e}");
    }
}

/// Runs `method` on `x` [B, C, frames, H, W] in temporal chunks of `frames` latent frames
/// through `run_chunks` (states threaded from chunk to chunk, results concatenated by
/// `Concat`); returns the result's shape and values.
fn in_chunks(model: &str, method: &str, x: &orrery_cpu::CpuTensor, frames: usize) -> (Vec<usize>, Vec<f32>) {
    use orrery_models::cosmos::{decoder_chunk_graph, encoder_chunk_graph, CosmosVaeConfig, TemporalChunk};
    let dir = fixture(model);
    let config = CosmosVaeConfig::from_config(&orrery_models::ComponentConfig::read(&dir).unwrap()).unwrap();
    let r = config.temporal_compression_ratio;
    let source = open_weights(&dir).unwrap();
    let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
    let xd = x.shape().to_vec();
    let encode = method == "encode";
    let latent = if encode { 1 + (xd[2] - 1) / r } else { xd[2] };
    let (mut plans, mut ranges) = (Vec::new(), Vec::new());
    for (chunk, len) in TemporalChunk::split(latent, frames) {
        let range = if encode { chunk.frames(len, r) } else { chunk.start..chunk.start + len };
        let shape = [xd[0], xd[1], range.len(), xd[3], xd[4]];
        let weights = WeightTypes::Checkpoint(&lookup);
        let graph = if encode {
            encoder_chunk_graph(&config, &weights, shape, chunk)
        } else {
            decoder_chunk_graph(&config, &weights, shape, chunk)
        };
        plans.push(compile(graph.unwrap()).unwrap());
        ranges.push(range);
    }
    let weights = Arc::new(FormatWeights::new(source));
    let (input, output, len) =
        if encode { ("sample", "latent", latent) } else { ("z", "sample", 1 + r * (latent - 1)) };
    let mut concat = Concat::new(2, len);
    let input_of = |i: usize| Ok(x.slice(2, ranges[i].start, ranges[i].end, 1).contiguous());
    run_chunks::<orrery_runtime::RuntimeError>(&plans, weights, input, input_of, output, 2, |_, piece| {
        concat.push(&piece)
    })
    .unwrap();
    let result = concat.finish().unwrap();
    (result.shape().to_vec(), result.to_f32_vec())
}

/// Whole-video chunks (bit-identical to one shot); 1-frame chunks: 2 chunks for 9 frames,
/// 3 for 17; 2-frame chunks for 17 (2 + 1). Against orrery's one-shot result within 1e-6
/// relative (kernel shapes change with the chunk, so not bit for bit), and against diffusers
/// within the parity bound.
fn chunked_equals_one_shot(method: &str, input: &str, output: &str) {
    let runs = [
        ("tiny", "f9_16x24", 2),
        ("tiny", "f1_16x16", 1),
        ("tiny", "f17_8x8", 3),
        ("tiny", "f9_16x24", 1),
        ("tiny", "f17_8x8", 1),
        ("tiny", "f17_8x8", 2),
        ("tiny_attn", "f17_8x8", 1),
        ("tiny_attn", "f17_8x8", 2),
    ];
    for (model, case, frames) in runs {
        let io = open_weights(fixture(model).join(format!("{method}_{case}.safetensors"))).unwrap();
        let x = tensor_from_source(io.as_ref(), input).unwrap();
        let reference = tensor_from_source(io.as_ref(), output).unwrap();
        let (shape, chunked) = in_chunks(model, method, &x, frames);
        assert_eq!(shape, reference.shape(), "{case}");
        // One shot, through the same graph builder without chunks.
        let dir = fixture(model);
        let component = load_component(&dir).unwrap();
        let source = open_weights(&dir).unwrap();
        let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
        let shapes = BTreeMap::from([(input.to_string(), x.shape().to_vec())]);
        let graph = component.build(method, &shapes, &WeightTypes::Checkpoint(&lookup)).unwrap();
        let session = Session::new(compile(graph).unwrap(), Arc::new(FormatWeights::new(source)), 2).unwrap();
        let (out, _) = session.run(&HashMap::from([(input.to_string(), x.clone())])).unwrap();
        let one_shot = out[output].to_f32_vec();
        let vs_one_shot = rel_err(&chunked, &one_shot);
        let vs_diffusers = rel_err(&chunked, &reference.to_f32_vec());
        println!(
            "{model} {method} {case} in chunks of {frames}: {vs_one_shot:.2e} from one shot, {vs_diffusers:.2e} from diffusers"
        );

        assert!(vs_one_shot <= 1e-6, "{model} {method} {case}/{frames}: {vs_one_shot:e}");
        let latent_frames = if method == "decode" { x.shape()[2] } else { shape[2] };
        if frames >= latent_frames {
            // One chunk is the one-shot graph plus state outputs: the same bits.
            assert_eq!(vs_one_shot, 0.0, "{model} {method} {case}");
        }
        assert!(vs_diffusers <= 1e-4, "{model} {method} {case}/{frames}: {vs_diffusers:e}");
    }
}

#[test]
fn chunked_decode_equals_the_one_shot_decode() {
    chunked_equals_one_shot("decode", "z", "sample");
}

#[test]
fn chunked_encode_equals_the_one_shot_encode() {
    chunked_equals_one_shot("encode", "sample", "latent");
}

#[test]
fn encoder_chunks_must_hold_whole_latent_frames() {
    use orrery_models::cosmos::{encoder_chunk_graph, CosmosVaeConfig, TemporalChunk};
    let dir = fixture("tiny");
    let config = CosmosVaeConfig::from_config(&orrery_models::ComponentConfig::read(&dir).unwrap()).unwrap();
    let source = open_weights(&dir).unwrap();
    let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape));
    let w = WeightTypes::Checkpoint(&lookup);
    let first = TemporalChunk { start: 0, total: 3 };
    let later = TemporalChunk { start: 1, total: 3 };
    assert!(encoder_chunk_graph(&config, &w, [1, 3, 9, 8, 8], first).is_ok());
    assert!(encoder_chunk_graph(&config, &w, [1, 3, 8, 8, 8], later).is_ok());
    let err = encoder_chunk_graph(&config, &w, [1, 3, 8, 8, 8], first).unwrap_err().to_string();
    assert!(err.contains("1 + 8·k frames"), "{err}");
    assert!(encoder_chunk_graph(&config, &w, [1, 3, 9, 8, 8], later).is_err());
}
