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

/// Decodes `z` [B, C, T, h, w] in temporal chunks of `frames` latent frames, threading each
/// chunk's `next_state.*` outputs into the next chunk's `state.*` inputs; returns the samples
/// concatenated along time, as [B, C', F, H, W] values.
fn decode_in_chunks(z: &orrery_cpu::CpuTensor, frames: usize) -> (Vec<usize>, Vec<f32>) {
    use orrery_models::cosmos::{decoder_chunk_graph, CosmosVaeConfig, DecodeChunk};
    let dir = fixture();
    let config = CosmosVaeConfig::from_config(&orrery_models::ComponentConfig::read(&dir).unwrap()).unwrap();
    let source = open_weights(&dir).unwrap();
    let infos: HashMap<String, (orrery_ir::DType, Vec<usize>)> =
        source.names().into_iter().map(|n| (n.clone(), source.info(&n).map(|i| (i.dtype, i.shape)).unwrap())).collect();
    let lookup = |n: &str| infos.get(n).cloned();
    let weights = Arc::new(FormatWeights::new(source));
    let zd = z.shape().to_vec();
    let total = zd[2];
    let mut state: HashMap<String, orrery_cpu::CpuTensor> = HashMap::new();
    let mut pieces: Vec<orrery_cpu::CpuTensor> = Vec::new();
    for start in (0..total).step_by(frames) {
        let end = (start + frames).min(total);
        let chunk = z.slice(2, start, end, 1).contiguous();
        let shape = [zd[0], zd[1], end - start, zd[3], zd[4]];
        let graph =
            decoder_chunk_graph(&config, &WeightTypes::Checkpoint(&lookup), shape, DecodeChunk { start, total })
                .unwrap();
        let mut inputs = HashMap::from([("z".to_string(), chunk)]);
        for (_, node) in graph.inputs() {
            if let Some(key) = node.name.strip_prefix("state.") {
                inputs.insert(node.name.clone(), state[&format!("next_state.{key}")].contiguous());
            }
        }
        let session = Session::new(compile(graph).unwrap(), weights.clone(), 2).unwrap();
        let (mut out, _) = session.run(&inputs).unwrap();
        pieces.push(out.remove("sample").unwrap());
        state = out;
    }
    // Concatenate along time.
    let (b, c, h, w) = (pieces[0].shape()[0], pieces[0].shape()[1], pieces[0].shape()[3], pieces[0].shape()[4]);
    let f: usize = pieces.iter().map(|p| p.shape()[2]).sum();
    let values: Vec<Vec<f32>> = pieces.iter().map(|p| p.to_f32_vec()).collect();
    let mut out = Vec::with_capacity(b * c * f * h * w);
    for bc in 0..b * c {
        for (p, v) in pieces.iter().zip(&values) {
            let n = p.shape()[2] * h * w;
            out.extend_from_slice(&v[bc * n..(bc + 1) * n]);
        }
    }
    (vec![b, c, f, h, w], out)
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
        let rel = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
            a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs())) / scale
        };
        let vs_one_shot = rel(&chunked, &one_shot);
        let vs_diffusers = rel(&chunked, &reference.to_f32_vec());
        println!("{case} in chunks of {frames}: {vs_one_shot:.2e} from one shot, {vs_diffusers:.2e} from diffusers");

        assert!(vs_one_shot <= 1e-6, "{case}/{frames}: {vs_one_shot:e}");
        if frames >= z.shape()[2] {
            // One chunk is the one-shot graph plus state outputs: the same bits.
            assert_eq!(vs_one_shot, 0.0, "{case}");
        }
        assert!(vs_diffusers <= 1e-4, "{case}/{frames}: {vs_diffusers:e}");
    }
}
