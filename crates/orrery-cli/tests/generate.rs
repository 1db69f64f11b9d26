//! Integration tests of `orrery generate` on the tiny random Cosmos pipelines of
//! crates/orrery-pipeline/tests/fixtures (their reference runs come from diffusers and from the
//! float64 Predict1 re-implementation under tools/reference/).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn generate_runs_text2world_from_a_pipeline_folder() {
    // The tiny random pipeline of crates/orrery-pipeline/tests/fixtures, with the noise diffusers
    // used: the dumped latents match its run, the PNG frames are written with a sidecar, and bad
    // requests fail before any work without leaving output.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("crates/orrery-pipeline/tests/fixtures/cosmos_t2w_tiny");
    let reference = model.join("run.safetensors");
    let dir = tmp_dir("generate");
    let noise_file = dir.join("noise.safetensors");
    copy_tensors(&reference, |n| n == "noise", &noise_file);
    let (frames_dir, dump) = (dir.join("frames"), dir.join("dump.safetensors"));
    let m = model.to_str().unwrap();
    let base = [
        "generate",
        "--model",
        m,
        "--prompt",
        "A robot arm stacks red cubes on a wooden table.",
        "--negative-prompt",
        "blurry, distorted",
        "--width",
        "48",
        "--frames",
        "9",
        "--steps",
        "3",
    ];
    let mut args = base.to_vec();
    args.extend(["--height", "32", "--init-noise", noise_file.to_str().unwrap()]);
    args.extend(["--frames-dir", frames_dir.to_str().unwrap(), "--dump-tensors", dump.to_str().unwrap(), "--json"]);
    let r = orrery(&args);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("guardrails"), "the missing guardrails are announced");
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["steps"], 3);
    for name in ["step0.latents", "step2.latents", "decoded_raw", "prompt_embeds", "negative_prompt_embeds"] {
        let (got_shape, got) = read_f32(&dump, name);
        let (want_shape, want) = read_f32(&reference, name);
        assert_eq!(got_shape, want_shape, "{name}");
        assert!(rel_err(&got, &want) <= 1e-4, "{name}: {}", rel_err(&got, &want));
    }
    let pngs = std::fs::read_dir(&frames_dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png"));
    assert_eq!(pngs.count(), 9);
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(frames_dir.join("generation.json")).unwrap()).unwrap();
    assert_eq!(sidecar["steps"], 3);

    // A height that is not a multiple of 16, and no output asked for: refused up front.
    let empty = dir.join("empty");
    let mut bad = base.to_vec();
    bad.extend(["--height", "30", "--frames-dir", empty.to_str().unwrap()]);
    let r = orrery(&bad);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("multiples of 16"), "{}", stderr(&r));
    assert!(!empty.exists(), "nothing written for a refused request");
    let mut none = base.to_vec();
    none.extend(["--height", "32"]);
    let r = orrery(&none);
    assert!(!r.status.success() && stderr(&r).contains("nothing to write"), "{}", stderr(&r));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_defaults_to_the_built_in_pipeline_and_resolves_repo_ids_in_the_hf_cache() {
    let dir = tmp_dir("generate-default");
    let run = |args: &[&str], env: &[(&str, &Path)]| {
        let mut c = orrery_command();
        c.args(args).env_remove("HF_HUB_CACHE").env_remove("HF_HOME");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // No --model: the embedded pipeline, written once under XDG_CACHE_HOME, with its own size;
    // an MP4 with its settings beside it.
    let frames = dir.join("frames");
    let cache = dir.join("xdg");
    let mp4 = dir.join("video.mp4");
    let args = [
        "generate",
        "--prompt",
        "a red cube",
        "--frames-dir",
        frames.to_str().unwrap(),
        "--out",
        mp4.to_str().unwrap(),
        "--json",
    ];
    let r = run(&args, &[("XDG_CACHE_HOME", &cache)]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("built-in pipeline"), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        (v["height"].as_u64(), v["width"].as_u64(), v["frames"].as_u64(), v["steps"].as_u64()),
        (Some(32), Some(48), Some(9), Some(5))
    );
    let first = std::fs::read(frames.join("frame_0000.png")).unwrap();
    assert_eq!(&first[..8], b"\x89PNG\r\n\x1a\n");
    let video = std::fs::read(&mp4).unwrap();
    assert_eq!(&video[4..8], b"ftyp");
    assert!(video.windows(4).any(|w| w == b"avc1") && video.windows(4).any(|w| w == b"mdat"));
    // Decoded by ffprobe (installed by .ci/run): the 9 frames at 48 × 32.
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries", "stream=width,height,nb_read_frames", "-of", "csv=p=0"])
        .arg(&mp4)
        .output();
    match probe {
        Ok(o) if o.status.success() => assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "48,32,9"),
        _ => assert!(std::env::var_os("ORRERY_REQUIRE_FFMPEG").is_none(), "ffprobe is required here"),
    }
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("video.mp4.json")).unwrap()).unwrap();
    assert_eq!(settings["prompt"], "a red cube");
    let v: serde_json::Value = v;
    assert!(v["flops"].as_u64().unwrap() > 0 && v["estimated_memory_bytes"].as_u64().unwrap() > 0);
    // A run estimated at over 30 minutes needs --yes (10⁸ steps of the tiny transformer).
    let long = dir.join("long.mp4");
    let r = run(
        &["generate", "--prompt", "x", "--steps", "100000000", "--out", long.to_str().unwrap()],
        &[("XDG_CACHE_HOME", &cache)],
    );
    assert!(!r.status.success() && stderr(&r).contains("--yes"), "{}", stderr(&r));
    assert!(!long.exists());
    // An output folder that does not exist is refused before any work.
    let r = run(&["generate", "--prompt", "x", "--out", "/nonexistent-dir/v.mp4"], &[("XDG_CACHE_HOME", &cache)]);
    assert!(!r.status.success() && stderr(&r).contains("does not exist"), "{}", stderr(&r));
    assert_eq!(std::fs::read_dir(cache.join("orrery")).unwrap().count(), 1, "one extracted copy");
    // Same seed, same frames; the second run reuses the extracted copy.
    let again = dir.join("again");
    let r = run(
        &["generate", "--prompt", "a red cube", "--frames-dir", again.to_str().unwrap()],
        &[("XDG_CACHE_HOME", &cache)],
    );
    assert!(r.status.success());
    assert_eq!(
        std::fs::read(again.join("frame_0008.png")).unwrap(),
        std::fs::read(frames.join("frame_0008.png")).unwrap()
    );

    // A repo id found in a fake Hugging Face cache (the snapshot links to the fixture folder).
    let hub = dir.join("hub");
    let repo = hub.join("models--nvidia--Cosmos-Tiny");
    let commit = "c".repeat(40);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../orrery-pipeline/tests/fixtures/cosmos_t2w_tiny");
    #[cfg(unix)]
    std::os::unix::fs::symlink(fixture.canonicalize().unwrap(), repo.join("snapshots").join(&commit)).unwrap();
    let out = dir.join("hub-frames");
    let args = [
        "generate",
        "--model",
        "nvidia/Cosmos-Tiny@main",
        "--prompt",
        "a red cube",
        "--height",
        "32",
        "--width",
        "48",
        "--frames",
        "9",
        "--steps",
        "2",
        "--frames-dir",
        out.to_str().unwrap(),
    ];
    let r = run(&args, &[("HF_HUB_CACHE", &hub)]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(out.join("frame_0008.png").is_file());
    let r = run(
        &["generate", "--model", "nvidia/Missing", "--prompt", "x", "--frames-dir", "/tmp/unused"],
        &[("HF_HUB_CACHE", &hub)],
    );
    assert!(!r.status.success());
    assert!(stderr(&r).contains("models--nvidia--Missing"), "the error lists where it looked: {}", stderr(&r));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_continues_a_video_with_a_video2world_pipeline() {
    // diffusers' 9-frame Video2World run, its noise and augment noise injected.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../orrery-pipeline/tests/fixtures/cosmos_v2w_tiny");
    let reference = model.join("run_f9_sigma0.001.safetensors");
    let dir = tmp_dir("generate-v2w");
    let (video_file, noise_file) = (dir.join("video.safetensors"), dir.join("noise.safetensors"));
    copy_tensors(&reference, |n| n == "video", &video_file);
    copy_tensors(&reference, |n| n == "noise" || n.starts_with("augment_noise."), &noise_file);
    let dump = dir.join("dump.safetensors");
    let m = model.to_str().unwrap();
    let args = [
        "generate",
        "--model",
        m,
        "--prompt",
        "The robot arm keeps stacking the cubes.",
        "--negative-prompt",
        "blurry, distorted",
        "--height",
        "32",
        "--width",
        "48",
        "--frames",
        "17",
        "--steps",
        "3",
        "--input",
        video_file.to_str().unwrap(),
        "--init-noise",
        noise_file.to_str().unwrap(),
        "--dump-tensors",
        dump.to_str().unwrap(),
    ];
    let r = orrery(&args);
    assert!(r.status.success(), "{}", stderr(&r));
    for name in ["step2.latents", "decoded_raw"] {
        let (_, got) = read_f32(&dump, name);
        let (_, want) = read_f32(&reference, name);
        assert!(rel_err(&got, &want) <= 1e-4, "{name}: {}", rel_err(&got, &want));
    }
    // A Video2World pipeline without input frames is refused up front.
    let r = orrery(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "x",
        "--height",
        "32",
        "--width",
        "48",
        "--frames",
        "17",
        "--dump-tensors",
        dump.to_str().unwrap(),
    ]);
    assert!(!r.status.success() && stderr(&r).contains("--input"), "{}", stderr(&r));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_generation_exits_130_and_leaves_nothing() {
    let dir = tmp_dir("sigint");
    let (out, frames) = (dir.join("v.mp4"), dir.join("frames"));
    let child = orrery_command()
        .args(["generate", "--prompt", "x", "--steps", "20000", "--out", out.to_str().unwrap(), "--frames-dir"])
        .arg(&frames)
        .env("XDG_CACHE_HOME", dir.join("xdg"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it get into the denoising loop, then press Ctrl-C.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = child.wait_with_output().unwrap();
    assert_eq!(status.status.code(), Some(130), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stderr).contains("interrupted"));
    assert!(!out.exists() && !frames.exists(), "nothing written");
    let leftovers: Vec<_> =
        std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name() != "xdg").collect();
    assert!(leftovers.is_empty(), "no temporary files: {leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_predict1_sampler_matches_its_float64_reference_through_the_cli() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../orrery-pipeline/tests/fixtures");
    let reference = fixtures.join("predict1_tiny/run.safetensors");
    let dir = tmp_dir("generate-predict1");
    let (noise, dump) = (dir.join("noise.safetensors"), dir.join("dump.safetensors"));
    copy_tensors(&reference, |n| n == "noise", &noise);
    let model = fixtures.join("cosmos_t2w_tiny");
    let r = orrery(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--sampler",
        "predict1",
        "--prompt",
        "A robot arm stacks red cubes on a wooden table.",
        "--negative-prompt",
        "",
        "--height",
        "32",
        "--width",
        "48",
        "--frames",
        "9",
        "--steps",
        "3",
        "--init-noise",
        noise.to_str().unwrap(),
        "--dump-tensors",
        dump.to_str().unwrap(),
        "--json",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!((v["sampler"].as_str(), v["fps"].as_f64()), (Some("predict1"), Some(24.0)), "Predict1's defaults");
    for name in ["sigmas", "step0.latents", "step1.latents", "step2.latents", "decoded_raw"] {
        let (_, got) = read_f32(&dump, name);
        let (_, want) = read_f32(&reference, name);
        assert!(rel_err(&got, &want) <= 1e-5, "{name}: {}", rel_err(&got, &want));
    }
    let (_, negative) = read_f32(&dump, "negative_prompt_embeds");
    assert!(negative.iter().all(|&v| v == 0.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A 8-bit RGB gradient of `height × width` with a bright square at `shift`.
fn test_image(height: usize, width: usize, shift: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(height * width * 3);
    for y in 0..height {
        for x in 0..width {
            let inside = (shift..shift + 8).contains(&x) && (4..12).contains(&y);
            let v = if inside { 250 } else { (x * 255 / width) as u8 };
            rgb.extend_from_slice(&[v, (y * 255 / height) as u8, 128]);
        }
    }
    rgb
}

#[test]
fn video2world_continues_images_folders_and_videos_in_one_batch() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../orrery-pipeline/tests/fixtures/cosmos_v2w_tiny");
    let m = model.to_str().unwrap();
    let dir = tmp_dir("generate-media");
    // Inputs at another size and aspect (40 × 60 → cover 32 × 48 exactly; 50 × 50 → 48 × 48,
    // cropped): one image, and a folder of three frames beside a file that is not an image.
    let image = dir.join("still.png");
    orrery_formats::write_png_rgb(&image, 60, 40, &test_image(40, 60, 5)).unwrap();
    let frames = dir.join("clip");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..3 {
        orrery_formats::write_png_rgb(&frames.join(format!("{i:02}.png")), 50, 50, &test_image(50, 50, 10 + 4 * i))
            .unwrap();
    }
    std::fs::write(frames.join("notes.txt"), "not a frame").unwrap();
    let size = ["--height", "32", "--width", "48", "--frames", "17", "--steps", "2"];
    let generate = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", m];
        args.extend(size);
        args.extend(extra);
        orrery(&args)
    };

    // One run from the image: its plan count is what a whole batch of this size compiles.
    let single = dir.join("single.mp4");
    let r =
        generate(&["--prompt", "x", "--input", image.to_str().unwrap(), "--out", single.to_str().unwrap(), "--json"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let one: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let sidecar = |p: &Path| -> serde_json::Value {
        let mut name = p.as_os_str().to_owned();
        name.push(".json");
        serde_json::from_str(&std::fs::read_to_string(name).unwrap()).unwrap()
    };
    assert_eq!(sidecar(&single)["cond_frames"], 1, "an image conditions on one frame");

    let batch = dir.join("prompts.jsonl");
    let mut lines = vec![
        format!("{{\"prompt\": \"the square moves on\", \"input\": \"{}\"}}", image.display()),
        format!("{{\"prompt\": \"the clip goes on\", \"input\": \"{}\", \"seed\": 3}}", frames.display()),
    ];
    // The MP4 orrery wrote, read back through ffmpeg where it is installed.
    let ffmpeg = Command::new("ffmpeg").arg("-version").output().is_ok_and(|o| o.status.success());
    assert!(ffmpeg || std::env::var_os("ORRERY_REQUIRE_FFMPEG").is_none(), "ffmpeg is required here");
    if ffmpeg {
        lines.push(format!("{{\"prompt\": \"and on\", \"input\": \"{}\"}}", single.display()));
    }
    std::fs::write(&batch, lines.join("\n")).unwrap();
    let out = dir.join("batch.mp4");
    let r = generate(&["--batch", batch.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), lines.len());
    assert_eq!(v["compiled_plans"], one["compiled_plans"], "the batch reuses the compiled plans");
    let numbered = |n: usize| dir.join(format!("batch_{n:03}.mp4"));
    assert_eq!(sidecar(&numbered(1))["cond_frames"], 1);
    assert_eq!(sidecar(&numbered(2))["cond_frames"], 3, "all three frames of the folder (fewer than 9)");
    assert_eq!(sidecar(&numbered(2))["seed"], 3);
    if ffmpeg {
        assert_eq!(sidecar(&numbered(3))["cond_frames"], 9, "the last 9 frames of the 17-frame video");
    }

    // A batch with an unreadable image is refused before any run, naming the line; nothing
    // is written.
    let broken = dir.join("broken.png");
    std::fs::write(&broken, "not a png").unwrap();
    std::fs::write(&batch, format!("{}\n{{\"prompt\": \"y\", \"input\": \"{}\"}}\n", lines[0], broken.display()))
        .unwrap();
    let out = dir.join("refused.mp4");
    let r = generate(&["--batch", batch.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("line 2") && stderr(&r).contains("not a PNG or JPEG"), "{}", stderr(&r));
    assert!(!dir.join("refused_001.mp4").exists() && !dir.join("refused_002.mp4").exists());
    // More condition frames than the input has; a Text2World pipeline given an input; an
    // output under a file: each refused with the reason.
    let x = dir.join("x.mp4");
    let x = x.to_str().unwrap();
    let r = generate(&["--prompt", "x", "--input", image.to_str().unwrap(), "--cond-frames", "9", "--out", x]);
    assert!(!r.status.success() && stderr(&r).contains("--cond-frames 9"), "{}", stderr(&r));
    let t2w = model.with_file_name("cosmos_t2w_tiny");
    let r = orrery(&[
        "generate",
        "--model",
        t2w.to_str().unwrap(),
        "--prompt",
        "x",
        "--input",
        image.to_str().unwrap(),
        "--out",
        x,
    ]);
    assert!(!r.status.success() && stderr(&r).contains("Text2World"), "{}", stderr(&r));
    let under_file = image.join("v.mp4");
    let r = generate(&["--prompt", "x", "--input", image.to_str().unwrap(), "--out", under_file.to_str().unwrap()]);
    assert!(!r.status.success() && stderr(&r).contains("is not a folder"), "{}", stderr(&r));
    assert!(!Path::new(x).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_generate_reads_its_plans_from_the_plan_cache() {
    // Two runs with one --plan-cache: the first compiles and stores the text encoder's, the
    // transformer's and the decoder's plans, the second reads all three and writes the same
    // tensors. A cache directory that cannot be created is a warning, not a failure.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../orrery-pipeline/tests/fixtures/cosmos_t2w_tiny");
    let dir = tmp_dir("plan-cache");
    let cache = dir.join("plans");
    let generate = |dump: &Path, cache_args: &[&str]| {
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "a red cube"];
        args.extend(["--height", "32", "--width", "48", "--frames", "9", "--steps", "2", "--seed", "5"]);
        args.extend(["--dump-tensors", dump.to_str().unwrap(), "--json"]);
        args.extend(cache_args);
        let r = orrery(&args);
        assert!(r.status.success(), "{}", stderr(&r));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        (v["plan_cache"].clone(), stderr(&r))
    };
    let (first_dump, second_dump) = (dir.join("first.safetensors"), dir.join("second.safetensors"));
    let (first, _) = generate(&first_dump, &["--plan-cache", cache.to_str().unwrap()]);
    assert_eq!(first["compiled"], 3, "{first}");
    assert_eq!(first["disk_hits"], 0, "{first}");
    assert_eq!(first["disk_stored"], 3, "{first}");
    assert_eq!(first["dir"], cache.to_str().unwrap());
    let (second, _) = generate(&second_dump, &["--plan-cache", cache.to_str().unwrap()]);
    assert_eq!(second["compiled"], 0, "{second}");
    assert_eq!(second["disk_hits"], 3, "{second}");
    for name in ["decoded_raw", "step1.latents", "prompt_embeds"] {
        let bits = |p: &Path| read_f32(p, name).1.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&first_dump), bits(&second_dump), "{name}");
    }

    let blocked = dir.join("a-file");
    std::fs::write(&blocked, b"").unwrap();
    let (unusable, err) = generate(&second_dump, &["--plan-cache", blocked.join("plans").to_str().unwrap()]);
    assert!(err.contains("warning: plan cache"), "{err}");
    assert_eq!(unusable["compiled"], 3, "{unusable}");
    assert!(unusable["dir"].is_null());
    let (off, _) = generate(&second_dump, &["--no-plan-cache"]);
    assert_eq!(off["compiled"], 3, "{off}");
    assert!(off["dir"].is_null());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cfg_parallel_writes_the_single_rank_tensors_and_video() {
    // `--cfg-parallel` runs the guidance branches on two in-process ranks: the same tensors
    // and the same MP4 bytes as one rank; refused (naming the flags) when the weights stream.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../orrery-pipeline/tests/fixtures/cosmos_t2w_tiny");
    let dir = tmp_dir("cfg-parallel");
    let generate = |tag: &str, extra: &[&str]| {
        let (dump, video) = (dir.join(format!("{tag}.safetensors")), dir.join(format!("{tag}.mp4")));
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "a red cube"];
        args.extend(["--height", "32", "--width", "48", "--frames", "9", "--steps", "2", "--seed", "5"]);
        args.extend(["--threads", "2", "--dump-tensors", dump.to_str().unwrap(), "--out", video.to_str().unwrap()]);
        args.extend(["--json"]);
        args.extend(extra);
        let r = orrery(&args);
        (r, dump, video)
    };
    let (one, one_dump, one_video) = generate("one", &[]);
    assert!(one.status.success(), "{}", stderr(&one));
    let trace = dir.join("trace.json");
    let (two, two_dump, two_video) = generate("two", &["--cfg-parallel", "--trace", trace.to_str().unwrap()]);
    assert!(two.status.success(), "{}", stderr(&two));
    // The trace draws rank 1's unconditional evaluations (one per step) on a track of their own.
    let events: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let on_track = |tid: u64, name: &str| {
        events["traceEvents"].as_array().unwrap().iter().filter(|e| e["tid"] == tid && e["name"] == name).count()
    };
    assert_eq!((on_track(1, "transformer.cond"), on_track(4, "transformer.uncond")), (2, 2));
    let v: serde_json::Value = serde_json::from_slice(&two.stdout).unwrap();
    assert_eq!(v["cfg_parallel"], true);
    for name in ["decoded_raw", "step0.latents", "step1.latents"] {
        let bits = |p: &Path| read_f32(p, name).1.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&one_dump), bits(&two_dump), "{name}");
    }
    assert_eq!(std::fs::read(&one_video).unwrap(), std::fs::read(&two_video).unwrap());
    let (streamed, _, _) = generate("streamed", &["--cfg-parallel", "--memory-budget", "5MB"]);
    assert!(!streamed.status.success());
    assert!(stderr(&streamed).contains("--cfg-parallel"), "{}", stderr(&streamed));
    // `--tp 2` / `--sp 2`: two in-process tensor- or sequence-parallel ranks, alone or under
    // each guidance branch (4 ranks), within 1e-5 of one on the video.
    for (tag, extra) in [
        ("tp", &["--tp", "2"][..]),
        ("sp", &["--sp", "2"]),
        ("cfg_tp", &["--tp", "2", "--cfg-parallel"]),
        ("cfg_sp", &["--sp", "2", "--cfg-parallel"]),
    ] {
        let (out, dump, video) = generate(tag, extra);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[&extra[0][2..]], 2);
        let err = rel_err(&read_f32(&dump, "decoded_raw").1, &read_f32(&one_dump, "decoded_raw").1);
        assert!(err <= 1e-5, "{extra:?}: {err:e}");
        assert!(video.exists());
    }
    let (both, _, _) = generate("both", &["--tp", "2", "--sp", "2"]);
    assert!(!both.status.success() && stderr(&both).contains("cannot be combined"), "{}", stderr(&both));
    std::fs::remove_dir_all(&dir).unwrap();
}
