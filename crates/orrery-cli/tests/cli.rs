//! Integration tests of the `orrery` binary on the built-in `OrreryTestMlp` component, one per
//! point of the `run` and `compile` contracts. Fixtures come from
//! tools/reference/make_test_mlp.py (torch reference outputs included).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

/// `orrery run <component> --inputs <input> --output <output> <extra…>`.
fn run_cli(component: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        component.to_str().unwrap(),
        "--inputs",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    orrery(&args)
}

/// Runs the component on an input file and returns (output shape, values).
fn run_ok(component: &str, input: &str, tag: &str) -> (Vec<usize>, Vec<f32>) {
    let out = tmp_dir(tag).join("out.safetensors");
    let o = run_cli(&fixtures().join(component), &fixtures().join("inputs").join(input), &out, &[]);
    assert!(o.status.success(), "run failed: {}", stderr(&o));
    read_f32(&out, "y")
}

fn run_err(input: &Path) -> String {
    let out = tmp_dir("err").join("never.safetensors");
    let o = run_cli(&fixtures().join("test_mlp_f32"), input, &out, &[]);
    assert!(!o.status.success(), "expected failure");
    assert!(!out.exists(), "no output may be written on failure");
    stderr(&o)
}

/// Runs the f32 component on the f32 input with `--json` plus `extra`; returns stdout.
fn run_json(tag: &str, extra: &[&str]) -> String {
    let out = tmp_dir(tag).join("out.safetensors");
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let o = run_cli(&fixtures().join("test_mlp_f32"), &fixtures().join("inputs/x_f32.safetensors"), &out, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

// Tolerance: f32 kernels against torch f32 on the same data: 1e-5 relative.
const TOL: f64 = 1e-5;

#[test]
fn f32_weights_match_torch() {
    let (shape, y) = run_ok("test_mlp_f32", "x_f32.safetensors", "f32");
    let (eshape, expected) = read_f32(&fixtures().join("expected.safetensors"), "y_f32");
    assert_eq!(shape, eshape);
    assert!(rel_err(&y, &expected) < TOL, "{}", rel_err(&y, &expected));
}

#[test]
fn bf16_weights_are_widened() {
    let (_, y) = run_ok("test_mlp_bf16", "x_f32.safetensors", "bf16w");
    let (_, expected) = read_f32(&fixtures().join("expected.safetensors"), "y_bf16_weights");
    assert!(rel_err(&y, &expected) < TOL);
}

#[test]
fn f16_and_bf16_inputs_are_accepted() {
    for (input, key) in [("x_f16.safetensors", "y_f16_input"), ("x_bf16.safetensors", "y_bf16_input")] {
        let (_, y) = run_ok("test_mlp_f32", input, key);
        let (_, expected) = read_f32(&fixtures().join("expected.safetensors"), key);
        assert!(rel_err(&y, &expected) < TOL, "{input}");
    }
}

#[test]
fn leading_batch_dims_are_kept() {
    let (shape, y) = run_ok("test_mlp_f32", "x_batched.safetensors", "batched");
    let (eshape, expected) = read_f32(&fixtures().join("expected.safetensors"), "y_batched");
    assert_eq!(shape, vec![2, 5, 4]);
    assert_eq!(shape, eshape);
    assert!(rel_err(&y, &expected) < TOL);
}

#[test]
fn missing_input_names_it_and_its_shape() {
    // A valid safetensors file with no tensors at all.
    let path = tmp_dir("missing").join("empty.safetensors");
    let mut bytes = 8u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    std::fs::write(&path, bytes).unwrap();
    let err = run_err(&path);
    assert!(err.contains("missing input `x`") && err.contains("[batch..., 8]"), "{err}");
}

#[test]
fn misnamed_input_names_it_and_the_expected_one() {
    let err = run_err(&fixtures().join("inputs/x_misnamed.safetensors"));
    assert!(err.contains("unknown input `input`") && err.contains("`x` [batch..., 8]"), "{err}");
}

#[test]
fn wrong_shape_names_the_input_and_expected_shape() {
    let err = run_err(&fixtures().join("inputs/x_wrong_shape.safetensors"));
    assert!(err.contains("`x`") && err.contains("[3, 9]") && err.contains("[batch..., 8]"), "{err}");
}

#[test]
fn integer_input_where_float_expected_is_refused() {
    let err = run_err(&fixtures().join("inputs/x_i64.safetensors"));
    assert!(err.contains("`x`") && err.contains("i64") && err.contains("float"), "{err}");
}

#[test]
fn repeat_json_reports_exactly_the_repeated_runs() {
    let stdout = run_json("json", &["--repeat", "3", "--threads", "2"]);
    // Nothing but one JSON object on stdout.
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("stdout is one JSON object");
    assert_eq!(stdout.trim().lines().count(), 1);
    assert_eq!(v["runs_s"].as_array().unwrap().len(), 3);
    assert_eq!(v["threads"], 2);
    for key in ["median_s", "compile_s", "load_s", "peak_rss_bytes"] {
        assert!(v[key].is_number(), "{key} missing in {v}");
    }
    let mut runs: Vec<f64> = v["runs_s"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    runs.sort_by(f64::total_cmp);
    assert_eq!(v["median_s"].as_f64().unwrap(), runs[1]);
}

#[test]
fn repeat_zero_reports_the_single_run() {
    let stdout = run_json("json0", &[]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["runs_s"].as_array().unwrap().len(), 1);
}

fn compile_json(component: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["compile", component.to_str().unwrap(), "--shape", "x=3x8", "--json"];
    args.extend_from_slice(extra);
    let o = orrery(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

#[test]
fn compile_json_has_exactly_the_contract_fields() {
    let v = compile_json(&fixtures().join("test_mlp_f32"), &[]);
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["arena_bytes", "flops", "kernels", "weight_bytes"]);
    // fc1 (16·8 + 16) and fc2 (4·16 + 4) parameters in f32.
    assert_eq!(v["weight_bytes"], 212 * 4);
    // The default passes fuse the GELU into fc1's epilogue: two kernels. The planned arena
    // for a batch of 3, f32, 64-byte aligned buffers: fc1+GELU [3, 16] (192 bytes) at 0, fc2
    // [3, 4] (48 bytes) at 192 (its input is still live): 192 + 64.
    assert_eq!(v["arena_bytes"], 256);
    let place = |v: &serde_json::Value| -> Vec<String> {
        let kernels = v["kernels"].as_array().unwrap();
        kernels.iter().map(|k| format!("{} {} {} {}", k["name"], k["offset"], k["size"], k["storage"])).collect()
    };
    assert_eq!(place(&v), [r#""act.epilogue" 0 192 "arena""#, r#""fc2" 192 48 "arena""#]);
    // 2·M·N·K + bias per linear, 14 per GELU element; fusion moves flops, never adds any.
    let flops = 3 * 16 * (2 * 8 + 1) + 3 * 16 * 14 + 3 * 4 * (2 * 16 + 1);
    assert_eq!(v["flops"], flops);
    // Unfused, the GELU runs in place over fc1, which dies there: the same arena.
    let unfused = compile_json(&fixtures().join("test_mlp_f32"), &["--passes", "none"]);
    assert_eq!(
        place(&unfused),
        [r#""fc1" 0 192 "arena""#, r#""act" 0 192 "in-place over fc1""#, r#""fc2" 192 48 "arena""#]
    );
    assert_eq!(unfused["arena_bytes"], 256);
    assert_eq!(unfused["flops"], flops);
}

#[test]
fn compile_dump_shows_each_kernel_with_its_arena_place() {
    let component = fixtures().join("test_mlp_f32");
    let dump = |extra: &[&str]| {
        let mut args = vec!["compile", component.to_str().unwrap(), "--shape", "x=3x8", "--dump"];
        args.extend_from_slice(extra);
        let o = orrery(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = dump(&["--passes", "none"]);
    let line = |text: &str, name: &str| {
        text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {text}")).to_string()
    };
    assert!(line(&text, "fc1 ").contains("@0+192 (arena)"), "{text}");
    assert!(line(&text, "act ").contains("@0+192 (in-place over fc1)"), "{text}");
    assert!(line(&text, "fc2 ").contains("@192+48 (arena)") && line(&text, "fc2 ").contains("flops="), "{text}");
    assert!(text.contains("arena_bytes 256") && text.contains("peak_live_bytes 240"), "{text}");
    // With the default passes the dump lists the rewrites and the fused kernel traces back
    // to its source node by name.
    let fused = dump(&[]);
    assert!(fused.contains("fuse_epilogue: fuse act into the epilogue of fc1"), "{fused}");
    assert!(line(&fused, "act.epilogue ").contains("@0+192 (arena)"), "{fused}");
    // Bisecting: stopping after 0 rewrites gives the unfused kernels.
    assert!(dump(&["--stop-after-rewrites", "0"]).lines().any(|l| l.starts_with("act ")));
}

#[test]
fn compile_reads_stored_dtypes_and_accepts_a_folder_without_weights() {
    let bf16 = compile_json(&fixtures().join("test_mlp_bf16"), &[]);
    assert_eq!(bf16["weight_bytes"], 212 * 2);
    let dir = tmp_dir("noweights");
    std::fs::copy(fixtures().join("test_mlp_bf16/config.json"), dir.join("config.json")).unwrap();
    let from_config = compile_json(&dir, &[]);
    assert_eq!(from_config["weight_bytes"], 212 * 2, "torch_dtype bfloat16 from the config");
    let forced = compile_json(&dir.join("config.json"), &["--weight-dtype", "f32"]);
    assert_eq!(forced["weight_bytes"], 212 * 4);
}

#[test]
fn unknown_class_is_refused_by_name() {
    let dir = tmp_dir("unknown");
    std::fs::write(dir.join("config.json"), r#"{"_class_name": "NoSuchModel"}"#).unwrap();
    let o = orrery(&["compile", dir.to_str().unwrap(), "--shape", "x=1x8"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("NoSuchModel"), "{}", stderr(&o));
}

#[test]
fn inspect_lists_the_component_weights() {
    let o = orrery(&["inspect", fixtures().join("test_mlp_bf16").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("fc1.weight") && text.contains("bf16") && text.contains("[16, 8]"), "{text}");
    assert!(text.contains("OrreryTestMlp"), "{text}");
}

fn formats_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../orrery-formats/tests/fixtures").join(name)
}

#[test]
fn inspect_flags_unknown_pickle_globals_with_a_nonzero_exit() {
    let o = orrery(&["inspect", formats_fixture("malicious.pt").to_str().unwrap()]);
    assert!(!o.status.success(), "unknown globals must fail the inspection");
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(all.contains("posix.system"), "{all}");
}

#[test]
fn inspect_lists_pt_tensors_with_dtypes_and_shapes() {
    let o = orrery(&["inspect", formats_fixture("tensors.pt").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let tensors = v["tensors"].as_array().unwrap();
    assert!(!tensors.is_empty());
    assert!(tensors.iter().any(|t| t["dtype"] == "bf16"), "{v}");
}

#[test]
fn t5_11b_config_compiles_with_the_encoder_parameter_count() {
    // configs/t5-11b: t5-11b's published config (no weights). The encoder alone: the tied
    // table, 24 blocks of q/k/v/o (1024 × 128·128) and wi/wo (1024 × 65536) plus two norms, the
    // final norm and block 0's relative bias table (32 buckets × 128 heads).
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/t5-11b");
    let o = orrery(&[
        "compile",
        config.to_str().unwrap(),
        "--shape",
        "input_ids=1x512",
        "--shape",
        "attention_mask=1x512",
        "--weight-dtype",
        "bf16",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (d, inner, ff, layers) = (1024u64, 128 * 128u64, 65536u64, 24u64);
    let params = 32128 * d + layers * (4 * d * inner + 2 * d * ff + 2 * d) + d + 32 * 128;
    let weight_bytes = v["weight_bytes"].as_u64().unwrap();
    let ratio = weight_bytes as f64 / (2 * params) as f64;
    assert!((ratio - 1.0).abs() <= 0.01, "weight_bytes {weight_bytes} vs {} bf16 parameters", params);
    // The decoder's weights are not part of the plan.
    assert!(v["kernels"].as_array().unwrap().iter().all(|k| !k["name"].as_str().unwrap().contains("decoder")));
}

/// Writes every tensor of safetensors file `from` except `skip` to `to`, bytes and dtypes
/// unchanged (a fixture's inputs without its reference outputs).
fn copy_tensors_except(from: &Path, skip: &[&str], to: &Path) {
    let source = orrery_formats::open_weights(from).unwrap();
    let tensors: Vec<(String, orrery_ir::DType, Vec<usize>, Vec<u8>)> = source
        .names()
        .into_iter()
        .filter(|n| !skip.contains(&n.as_str()))
        .map(|n| {
            let bytes = source.load(&n).unwrap();
            let data = bytes.as_bytes().to_vec();
            (n, bytes.dtype, bytes.shape.clone(), data)
        })
        .collect();
    let to_write: Vec<orrery_formats::TensorToWrite> = tensors
        .iter()
        .map(|(n, d, s, b)| orrery_formats::TensorToWrite { name: n, dtype: *d, shape: s, data: b })
        .collect();
    orrery_formats::write_safetensors(to, &to_write).unwrap();
}

/// `orrery run <model> --inputs <inputs> --output <out>`, which must succeed.
fn run_component(model: &Path, inputs: &Path, out: &Path) {
    let o = orrery(&[
        "run",
        model.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Reads one tensor of any dtype as f64 values.
fn read_f64(path: &Path, name: &str) -> Vec<f64> {
    let source = orrery_formats::open_weights(path).unwrap();
    orrery_runtime::tensor_from_source(source.as_ref(), name).unwrap().to_f64_vec()
}

#[test]
fn encode_text_matches_the_transformers_tokenizer_and_encoder() {
    // tools/reference/make_t5_fixtures.py: a T5 encoder over the tokenizer fixture's vocabulary
    // and transformers' ids, mask and last_hidden_state for two prompts at max_length 32.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("crates/orrery-runtime/tests/fixtures/t5/with_tokenizer");
    let tokenizer = root.join("crates/orrery-text/tests/fixtures/t5_tiny");
    let prompts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(model.join("prompts.json")).unwrap()).unwrap();
    let out = tmp_dir("encode-text").join("emb.safetensors");
    let mut args = vec!["encode-text", "--model", model.to_str().unwrap(), "--tokenizer", tokenizer.to_str().unwrap()];
    for p in &prompts {
        args.extend(["--prompt", p.as_str()]);
    }
    args.extend(["--max-length", "32", "--output", out.to_str().unwrap(), "--json"]);
    let o = orrery(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let expected = model.join("encode_text.safetensors");
    let ids = read_f64(&expected, "input_ids");
    let mask = read_f64(&expected, "attention_mask");
    for (b, row) in v["prompts"].as_array().unwrap().iter().enumerate() {
        let length = mask[b * 32..(b + 1) * 32].iter().filter(|&&m| m == 1.0).count();
        assert_eq!(row["length"].as_u64().unwrap() as usize, length);
        let got: Vec<f64> = row["ids"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(got, ids[b * 32..b * 32 + length], "prompt {b}");
    }
    assert_eq!(v["shape"], serde_json::json!([2, 32, 16]));
    let (_, got) = read_f32(&out, "last_hidden_state");
    let (_, reference) = read_f32(&expected, "last_hidden_state");
    let err = rel_err(&got, &reference);
    assert!(err <= 1e-4, "relative error {err:e}");
}

#[test]
fn encode_text_refuses_a_tokenizer_of_another_vocabulary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("crates/orrery-runtime/tests/fixtures/t5/relu");
    let tokenizer = root.join("crates/orrery-text/tests/fixtures/t5_tiny");
    let o = orrery(&[
        "encode-text",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--prompt",
        "a very long prompt with many different words",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("outside the encoder's vocabulary of 96"), "{}", stderr(&o));
    // No tokenizer with the model: the message says where to point.
    let o = orrery(&["encode-text", "--model", model.to_str().unwrap(), "--prompt", "x"]);
    assert!(stderr(&o).contains("tokenizer.json"), "{}", stderr(&o));
}

#[test]
fn run_executes_the_t5_encoder_component() {
    // `orrery run` on a T5 folder: inputs input_ids and attention_mask (i64), output
    // last_hidden_state, padded rows as transformers returns them.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("crates/orrery-runtime/tests/fixtures/t5/gated_gelu");
    let io = model.join("io_L200.safetensors");
    let dir = tmp_dir("run-t5");
    let inputs = dir.join("inputs.safetensors");
    copy_tensors_except(&io, &["last_hidden_state"], &inputs);
    let out = dir.join("out.safetensors");
    run_component(&model, &inputs, &out);
    let (shape, got) = read_f32(&out, "last_hidden_state");
    assert_eq!(shape, [2, 200, 16]);
    let (_, reference) = read_f32(&io, "last_hidden_state");
    assert!(rel_err(&got, &reference) <= 1e-4);
}

/// `orrery compile` of a Cosmos DiT config at 121 × 704 × 1280 (latent 16 × 88 × 160): the
/// JSON's weight_bytes (bf16).
fn cosmos_weight_bytes(config: &str, video2world: bool) -> u64 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(config);
    let mut args = vec![
        "compile",
        dir.to_str().unwrap(),
        "--shape",
        "hidden_states=1x16x16x88x160",
        "--shape",
        "timestep=1",
        "--shape",
        "encoder_hidden_states=1x512x1024",
        "--shape",
        "padding_mask=1x1x704x1280",
        "--weight-dtype",
        "bf16",
        "--json",
    ];
    if video2world {
        args.extend(["--shape", "condition_mask=1x1x16x88x160"]);
    }
    let o = orrery(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["weight_bytes"].as_u64().unwrap()
}

#[test]
fn cosmos_7b_and_14b_configs_compile_with_their_parameter_counts() {
    // Per block (no biases): self-attention 4·D², cross-attention 2·D² + 2·D·1024, MLP
    // 2·D·4D, three AdaLN-LoRA pairs 3·(D·256 + 256·3D), q/k norm weights 4·128. Outside the
    // blocks: patch embedding (C+1)·4·D, learnable positions (128 + 120 + 120)·D, time
    // embedding D² + 3D² + D, final layer D·256 + 256·2D + 64·D.
    let params = |d: u64, layers: u64, in_channels: u64| {
        let block = 4 * d * d + 2 * d * d + 2 * d * 1024 + 8 * d * d + 3 * (d * 256 + 256 * 3 * d) + 4 * 128;
        let outside = (in_channels + 1) * 4 * d + 368 * d + 4 * d * d + d + d * 256 + 256 * 2 * d + 64 * d;
        (layers * block, layers * block + outside)
    };
    for (config, d, layers, in_channels, reference) in [
        ("cosmos-1.0-diffusion-7b-text2world", 4096, 28, 16, 7.16e9),
        ("cosmos-1.0-diffusion-7b-video2world", 4096, 28, 17, 7.16e9),
        ("cosmos-1.0-diffusion-14b-text2world", 5120, 36, 16, 14.2e9),
        ("cosmos-1.0-diffusion-14b-video2world", 5120, 36, 17, 14.2e9),
    ] {
        let (blocks, total) = params(d, layers, in_channels);
        assert_eq!(cosmos_weight_bytes(config, in_channels == 17), 2 * total, "{config}");
        // The reference's per-model figure counts the blocks (cosmos-reference.md §3.1).
        assert!((blocks as f64 / reference - 1.0).abs() <= 0.01, "{config}: {blocks} block parameters");
    }
}

#[test]
fn run_executes_the_cosmos_transformer_component() {
    // `orrery run` on the tiny text-to-world DiT: every input of the fixture case (a u8
    // attention mask, a 0-d fps, the padding mask) bound through the run contract.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("crates/orrery-runtime/tests/fixtures/cosmos_dit/t2w");
    let case = model.join("case_fps30_masked.safetensors");
    let dir = tmp_dir("run-cosmos");
    let inputs = dir.join("inputs.safetensors");
    copy_tensors_except(&case, &["sample"], &inputs);
    let out = dir.join("out.safetensors");
    run_component(&model, &inputs, &out);
    let (shape, got) = read_f32(&out, "sample");
    assert_eq!(shape, [2, 4, 3, 6, 10]);
    let (_, reference) = read_f32(&case, "sample");
    assert!(rel_err(&got, &reference) <= 1e-4);
}

#[test]
fn cosmos_tokenizer_config_compiles_encode_and_decode_at_full_size() {
    // configs/cosmos-1.0-tokenizer-cv8x8x8 at 121 × 704 × 1280 ↔ latent 16 × 88 × 160: the
    // one-shot plans compile (no weights needed) and report their activation arena.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/cosmos-1.0-tokenizer-cv8x8x8");
    let plan = |method: &str, shape: &str| -> serde_json::Value {
        let o = orrery(&["compile", config.to_str().unwrap(), "--method", method, "--shape", shape, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let encode = plan("encode", "sample=1x3x121x704x1280");
    let decode = plan("decode", "z=1x16x16x88x160");
    // The largest single activation bounds the arena from below: the encoder's first
    // projection output [1, 128, 31, 176, 320] and the decoder's last resnet input
    // [1, 256, 31, 176, 320] in f32.
    let at_least = |channels: u64| channels * 31 * 176 * 320 * 4;
    assert!(encode["arena_bytes"].as_u64().unwrap() >= at_least(128));
    assert!(decode["arena_bytes"].as_u64().unwrap() >= at_least(256));
    assert!(encode["weight_bytes"].as_u64().unwrap() > 0 && decode["weight_bytes"].as_u64().unwrap() > 0);
}

/// Writes `values` as the f32 tensor `name` of a new safetensors file `path`.
fn write_f32(path: &Path, name: &str, shape: &[usize], values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = orrery_formats::TensorToWrite { name, dtype: orrery_ir::DType::F32, shape, data: &bytes };
    orrery_formats::write_safetensors(path, &[t]).unwrap();
}

#[test]
fn run_encodes_and_decodes_with_the_tokenizer_in_chunks() {
    // `orrery run --method decode|encode --chunk-frames 1` on the tiny tokenizer: 3 chunks for
    // 17 frames, written to the file chunk by chunk, the same result as diffusers' one-shot
    // run; `compile --chunk-frames` reports the largest chunk's arena beside the one-shot one.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("crates/orrery-runtime/tests/fixtures/cosmos_vae/tiny");
    let m = model.to_str().unwrap();
    let dir = tmp_dir("run-vae-chunks");
    for (method, input, output, reference_shape) in
        [("decode", "z", "sample", [1, 3, 17, 8, 8]), ("encode", "sample", "latent", [1, 4, 3, 1, 1])]
    {
        let case = model.join(format!("{method}_f17_8x8.safetensors"));
        let (x_shape, x) = read_f32(&case, input);
        let inputs = dir.join(format!("{method}-in.safetensors"));
        write_f32(&inputs, input, &x_shape, &x);
        let out = dir.join(format!("{method}-out.safetensors"));
        let (i, o) = (inputs.to_str().unwrap(), out.to_str().unwrap());
        let r = orrery(&["run", m, "--method", method, "--inputs", i, "--output", o, "--chunk-frames", "1", "--json"]);
        assert!(r.status.success(), "{}", stderr(&r));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(v["chunks"], 3);
        assert!(v["peak_live_bytes"].as_u64().unwrap() > 0);
        let (shape, got) = read_f32(&out, output);
        assert_eq!(shape, reference_shape);
        let (_, reference) = read_f32(&case, output);
        assert!(rel_err(&got, &reference) <= 1e-4, "{method}");
        assert!(!dir.join(format!("{method}-out.safetensors.partial")).exists());

        let shape = format!("{input}={}", x_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x"));
        let r = orrery(&["compile", m, "--method", method, "--shape", &shape, "--chunk-frames", "1", "--json"]);
        assert!(r.status.success(), "{}", stderr(&r));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(v["chunks"], 3);
        assert!(v["arena_bytes"].as_u64().unwrap() < v["one_shot_arena_bytes"].as_u64().unwrap(), "{method}");
        // A memory budget instead: room for everything gives one chunk of all 3 latent frames,
        // and a budget below the smallest chunks is refused with what they need.
        let r = orrery(&["compile", m, "--method", method, "--shape", &shape, "--memory-budget", "1TiB", "--json"]);
        assert!(r.status.success(), "{}", stderr(&r));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!((v["chunks"].as_u64(), v["chunk_frames"].as_u64()), (Some(1), Some(3)), "{method}");
        let r = orrery(&["compile", m, "--method", method, "--shape", &shape, "--memory-budget", "1KiB"]);
        assert!(!r.status.success());
        assert!(stderr(&r).contains("too small"), "{}", stderr(&r));
    }

    // A video that is not 1 + 8k frames cannot be cut into whole latent frames; the earlier
    // output stays as it was.
    let (x_shape, x) = read_f32(&model.join("encode_f17_8x8.safetensors"), "sample");
    let frame = x_shape[3] * x_shape[4];
    let short = dir.join("short.safetensors");
    write_f32(
        &short,
        "sample",
        &[1, 3, 16, 8, 8],
        &(0..3).flat_map(|c| x[c * 17 * frame..][..16 * frame].to_vec()).collect::<Vec<_>>(),
    );
    let out = dir.join("encode-out.safetensors");
    let before = std::fs::read(&out).unwrap();
    let (i, o) = (short.to_str().unwrap(), out.to_str().unwrap());
    let r = orrery(&["run", m, "--method", "encode", "--inputs", i, "--output", o, "--chunk-frames", "1"]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("1 + 8·k video frames"), "{}", stderr(&r));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}
