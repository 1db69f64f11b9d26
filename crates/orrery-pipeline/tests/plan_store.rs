//! Compiled plans kept on disk (`CosmosPipeline::set_plan_store`), on the tiny random
//! Text2World pipeline: a second load compiles nothing and gives the same bits; damaged,
//! stale or misplaced files are misses that are recompiled and rewritten; a changed weight
//! dtype or run size is a different key.

mod common;

use common::{fixture, Run};
use orrery_compiler::{PlanStore, StoreKey};
use orrery_formats::TensorToWrite;
use orrery_ir::DType;
use orrery_pipeline::{CosmosPipeline, PlanCacheStats, RunSize, SamplerKind};
use std::path::{Path, PathBuf};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("orrery-plan-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn load(dir: &Path, store: &Path) -> CosmosPipeline {
    let mut pipeline = CosmosPipeline::load(dir).unwrap();
    pipeline.set_plan_store(PlanStore::open(store).unwrap()).unwrap();
    pipeline
}

fn size(height: usize) -> RunSize {
    RunSize {
        height,
        width: 48,
        frames: 9,
        steps: 2,
        guidance: 7.0,
        sampler: SamplerKind::DiffusersEdm,
        max_text_len: 32,
    }
}

fn stats(compiled: usize, disk_hits: usize, disk_misses: usize, disk_stored: usize) -> PlanCacheStats {
    PlanCacheStats { compiled, disk_hits, disk_misses, disk_stored }
}

fn plan_files(store: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(store).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn a_second_load_reads_every_plan_from_disk_and_gives_the_same_bits() {
    let dir = fixture("cosmos_t2w_tiny");
    let store = tmp("second-load");
    let run = Run::open(&dir, "run");
    let noise = run.get("noise");
    let first = load(&dir, &store);
    let a = first.generate(&run.request(&noise, &|_| {})).unwrap();
    // Text encoder, transformer, decoder: each compiled, missed on disk and stored.
    assert_eq!(first.plan_cache_stats(), stats(3, 0, 3, 3));
    assert!(first.take_plan_cache_warnings().is_empty());
    assert_eq!(plan_files(&store).len(), 3);

    let second = load(&dir, &store);
    let b = second.generate(&run.request(&noise, &|_| {})).unwrap();
    assert_eq!(second.plan_cache_stats(), stats(0, 3, 0, 0));
    assert_eq!(second.compiled_plans(), 3, "the plans read are held");
    let bits = |t: &orrery_cpu::CpuTensor| t.to_f32_vec().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&a.decoded_raw), bits(&b.decoded_raw));
    assert_eq!(bits(&a.prompt_embeds), bits(&b.prompt_embeds));
    for (x, y) in a.step_latents.iter().zip(&b.step_latents) {
        assert_eq!(bits(x), bits(y));
    }

    // Without a store nothing is read or written.
    let plain = CosmosPipeline::load(&dir).unwrap();
    plain.estimate(&size(32)).unwrap();
    assert_eq!(plain.plan_cache_stats(), stats(3, 0, 0, 0));
    assert!(plain.plan_store().is_none());
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn damaged_stale_or_misplaced_plan_files_are_recompiled_and_rewritten() {
    let dir = fixture("cosmos_t2w_tiny");
    let store = tmp("damaged");
    load(&dir, &store).estimate(&size(32)).unwrap();
    let files = plan_files(&store);
    assert_eq!(files.len(), 3);
    let good: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    // Truncated, garbage, and a valid file of another key under this key's name.
    std::fs::write(&files[0], &good[0][..good[0].len() / 3]).unwrap();
    std::fs::write(&files[1], b"{\"format\": 1, \"key\": [1, 2, 3]}\n{}").unwrap();
    std::fs::write(&files[2], &good[0]).unwrap();

    let pipeline = load(&dir, &store);
    pipeline.estimate(&size(32)).unwrap();
    assert_eq!(pipeline.plan_cache_stats(), stats(3, 0, 3, 3));
    let warnings: Vec<String> = pipeline.take_plan_cache_warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    let said = |what: &str| warnings.iter().filter(|w| w.contains(what)).count();
    assert_eq!(said("another key"), 1, "{warnings:?}");
    assert_eq!(said("not a plan file"), 1, "{warnings:?}");
    assert_eq!(said("do not match their hash"), 1, "{warnings:?}");
    // Rewritten with the fresh plans: byte for byte what the first run stored.
    let rewritten: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert_eq!(rewritten, good);
    let again = load(&dir, &store);
    again.estimate(&size(32)).unwrap();
    assert_eq!(again.plan_cache_stats(), stats(0, 3, 0, 0));
    std::fs::remove_dir_all(&store).unwrap();
}

/// Copies the tiny pipeline, storing `weight` of the transformer as `dtype`.
fn copy_with_weight_as(to: &Path, weight: &str, dtype: DType) {
    let from = fixture("cosmos_t2w_tiny");
    for entry in walk(&from) {
        let rel = entry.strip_prefix(&from).unwrap();
        std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&entry, to.join(rel)).unwrap();
    }
    let file = to.join("transformer/diffusion_pytorch_model.safetensors");
    let source = orrery_formats::open_weights(&file).unwrap();
    let tensors: Vec<(String, DType, Vec<usize>, Vec<u8>)> = source
        .names()
        .into_iter()
        .map(|name| {
            let info = source.info(&name).unwrap();
            let bytes = source.load(&name).unwrap().as_bytes().to_vec();
            if name != weight {
                return (name, info.dtype, info.shape, bytes);
            }
            assert_eq!((info.dtype, dtype), (DType::F32, DType::BF16));
            let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()));
            let bf16: Vec<u8> = values.flat_map(|v| half::bf16::from_f32(v).to_le_bytes()).collect();
            (name, dtype, info.shape, bf16)
        })
        .collect();
    drop(source);
    let list: Vec<TensorToWrite> =
        tensors.iter().map(|(name, dtype, shape, data)| TensorToWrite { name, dtype: *dtype, shape, data }).collect();
    orrery_formats::write_safetensors(&file, &list).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_weight_dtype_or_a_run_size_is_a_different_key() {
    let store = tmp("keys");
    let dir = fixture("cosmos_t2w_tiny");
    load(&dir, &store).estimate(&size(32)).unwrap();
    assert_eq!(plan_files(&store).len(), 3);

    // Another height: the transformer and the decoder see other shapes, the text encoder not.
    let other = load(&dir, &store);
    other.estimate(&size(48)).unwrap();
    assert_eq!(other.plan_cache_stats(), stats(2, 1, 2, 2));

    // One transformer weight stored as bf16 (a copy of the folder): only the transformer's
    // plan changes.
    let copy = tmp("keys-bf16");
    copy_with_weight_as(&copy, "transformer_blocks.0.attn1.to_q.weight", DType::BF16);
    let bf16 = load(&copy, &store);
    bf16.estimate(&size(32)).unwrap();
    assert_eq!(bf16.plan_cache_stats(), stats(1, 2, 1, 1));
    assert_eq!(plan_files(&store).len(), 6);
    // Keyed by content, not by path: the copy's unchanged components hit the original's plans.
    std::fs::remove_dir_all(&copy).unwrap();
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn a_store_key_names_everything_that_changes_a_plan() {
    // The key's file name changes with each field (the pipeline's keys are built from these).
    let store = PlanStore::open(&tmp("key-fields")).unwrap();
    let base = StoreKey {
        binary: "b".into(),
        component: "c".into(),
        method: "forward".into(),
        shapes: [("x".to_string(), vec![1, 2])].into(),
        options: Default::default(),
    };
    let mut keys = vec![base.clone()];
    keys.push(StoreKey { binary: "b2".into(), ..base.clone() });
    keys.push(StoreKey { component: "c2".into(), ..base.clone() });
    keys.push(StoreKey { method: "decode".into(), ..base.clone() });
    keys.push(StoreKey { shapes: [("x".to_string(), vec![2, 1])].into(), ..base.clone() });
    let mut options = base.options;
    options.memory.allow_in_place = false;
    keys.push(StoreKey { options, ..base.clone() });
    let mut paths: Vec<PathBuf> = keys.iter().map(|k| store.path(k)).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), keys.len());
    std::fs::remove_dir_all(store.dir()).unwrap();
}

/// Compile versus load times (run by hand: `cargo test --release -p orrery-pipeline --test
/// plan_store -- --ignored --nocapture`): the medium pipeline's three plans at 64 × 96, 17
/// frames, and the transformer of Cosmos-1.0-Diffusion-7B (config of `SyntheticSize::DIT_7B`,
/// weights assumed bf16, so no 14 GB file is needed) at 704 × 1280, 121 frames.
#[test]
#[ignore]
fn compile_versus_load_times() {
    use orrery_compiler::{binary_fingerprint, compile_with, component_identity, CompileOptions};
    use orrery_models::{load_component, WeightTypes};
    use std::collections::BTreeMap;
    use std::time::Instant;

    let medium = std::env::temp_dir().join("orrery-plan-store-medium");
    if !medium.join("model_index.json").is_file() {
        let tokenizer = fixture("cosmos_t2w_tiny").join("tokenizer");
        orrery_pipeline::write_synthetic_pipeline(&medium, &orrery_pipeline::SyntheticSize::MEDIUM, &tokenizer, 0)
            .unwrap();
    }
    let store = tmp("times");
    let run = RunSize { height: 64, width: 96, frames: 17, steps: 3, max_text_len: 512, ..size(64) };
    for label in ["compile + store", "load"] {
        let pipeline = load(&medium, &store);
        let started = Instant::now();
        pipeline.estimate(&run).unwrap();
        let s = started.elapsed().as_secs_f64();
        println!("medium, 3 plans, {label}: {s:.3} s ({:?})", pipeline.plan_cache_stats());
    }

    // The 7B transformer: config as `make-pipeline --preset dit7b` writes it.
    let dir = tmp("dit7b");
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "_class_name": "CosmosTransformer3DModel", "adaln_lora_dim": 256, "attention_head_dim": 128,
        "concat_padding_mask": true, "extra_pos_embed_type": "learnable", "in_channels": 16, "out_channels": 16,
        "max_size": [128, 240, 240], "mlp_ratio": 4.0, "num_attention_heads": 32, "num_layers": 28,
        "patch_size": [1, 2, 2], "rope_scale": [2.0, 1.0, 1.0], "text_embed_dim": 1024,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let component = load_component(&dir).unwrap();
    let shapes: BTreeMap<String, Vec<usize>> = [
        ("hidden_states", vec![1, 16, 16, 88, 160]),
        ("timestep", vec![1]),
        ("encoder_hidden_states", vec![1, 512, 1024]),
        ("fps", vec![]),
        ("padding_mask", vec![1, 1, 704, 1280]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    let started = Instant::now();
    let graph = component.build("forward", &shapes, &WeightTypes::Assumed(DType::BF16)).unwrap();
    let build_s = started.elapsed().as_secs_f64();
    let nodes = graph.len();
    let started = Instant::now();
    let plan = compile_with(graph, &CompileOptions::default()).unwrap();
    let compile_s = started.elapsed().as_secs_f64();
    let key = StoreKey {
        binary: binary_fingerprint().unwrap(),
        component: component_identity(config.to_string().as_bytes(), []),
        method: "forward".into(),
        shapes,
        options: CompileOptions::default(),
    };
    let plans = PlanStore::open(&store).unwrap();
    let started = Instant::now();
    plans.store(&key, &plan).unwrap();
    let store_s = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(plans.path(&key)).unwrap().len();
    let started = Instant::now();
    let loaded = plans.load(&key).unwrap().unwrap();
    let load_s = started.elapsed().as_secs_f64();
    assert_eq!(loaded, plan);
    println!(
        "7B transformer at 704x1280x121: {nodes} nodes built in {build_s:.3} s, {} kernels compiled in \
         {compile_s:.3} s; stored ({:.1} MB) in {store_s:.3} s, loaded and verified in {load_s:.3} s",
        plan.kernels.len(),
        bytes as f64 / 1e6
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn real_component_plans_round_trip_through_json_unchanged() {
    // The tiny pipeline's transformer (RoPE tables and masks as constants, fused epilogues)
    // and video decoder, compiled, serialized and read back: equal, and still verifying.
    use orrery_models::{load_component, WeightTypes};
    let root = fixture("cosmos_t2w_tiny");
    type Shapes = Vec<(&'static str, Vec<usize>)>;
    let cases: [(&str, &str, Shapes); 2] = [
        (
            "transformer",
            "forward",
            vec![
                ("hidden_states", vec![1, 4, 2, 4, 6]),
                ("timestep", vec![1]),
                ("encoder_hidden_states", vec![1, 32, 16]),
                ("fps", vec![]),
                ("padding_mask", vec![1, 1, 32, 48]),
            ],
        ),
        ("vae", "decode", vec![("z", vec![1, 4, 2, 4, 6])]),
    ];
    for (part, method, shapes) in cases {
        let dir = root.join(part);
        let component = load_component(&dir).unwrap();
        let source = orrery_formats::open_weights(&dir).unwrap();
        let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape.clone()));
        let shapes = shapes.into_iter().map(|(n, s)| (n.to_string(), s)).collect();
        let graph = component.build(method, &shapes, &WeightTypes::Checkpoint(&lookup)).unwrap();
        let plan = orrery_compiler::compile(graph).unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        let back: orrery_compiler::Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan, "{part}");
        assert_eq!(serde_json::to_string(&back).unwrap(), json, "{part}");
        back.verify().unwrap();
        assert!(plan.kernels.len() > 10, "{part}: {} kernels", plan.kernels.len());
    }
}
