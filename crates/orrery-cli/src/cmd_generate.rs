//! `orrery generate [--model <pipeline-dir>|org/name[@rev]] --prompt "..." [--negative-prompt
//! "..."] [--height H --width W --frames F --steps N --guidance G --fps R --seed S]
//! [--init-noise noise.safetensors] [--input video.safetensors --cond-frames N --augment-sigma X]
//! [--out FILE.mp4] [--frames-dir DIR] [--dump-tensors FILE] [--threads N] [--json]`:
//! Text2World or Video2World from a diffusers Cosmos pipeline folder, written as an MP4, PNG
//! frames and/or the run's tensors.

use crate::tensor_file::{read_tensors, write_f32_safetensors};
use anyhow::{bail, Context, Result};
use orrery_cpu::CpuTensor;
use orrery_pipeline::{
    resolve_model, standard_normal, video_frames_u8, Condition, CosmosPipeline, GenerateRequest, Stage,
};
use orrery_runtime::{peak_rss_bytes, resolve_threads};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A diffusers CosmosTextToWorldPipeline folder (model_index.json and its components), or
    /// a Hugging Face repo id `org/name[@revision]` already in the local cache. Default: the
    /// tiny random pipeline built into orrery (its output is noise).
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    prompt: String,
    /// Default: diffusers' default Cosmos negative prompt.
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Pixels; a multiple of 16 (default 704; 32 for the built-in pipeline).
    #[arg(long)]
    height: Option<usize>,
    /// Pixels; a multiple of 16 (default 1280; 48 for the built-in pipeline).
    #[arg(long)]
    width: Option<usize>,
    /// Video frames: 1 + 8k (default 121; 9 for the built-in pipeline).
    #[arg(long)]
    frames: Option<usize>,
    /// Denoising steps, two transformer runs each with guidance (default 36, diffusers'; 5 for
    /// the built-in pipeline).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less runs the transformer once per step.
    #[arg(long, default_value_t = 7.0)]
    guidance: f32,
    /// Frames per second the transformer conditions on.
    #[arg(long, default_value_t = 30.0)]
    fps: f32,
    /// Seed of orrery's noise generator (SplitMix64 + Box–Muller; not torch's).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A safetensors file with `noise`: standard normal noise of the latent shape, used instead
    /// of the seed's (to reproduce a reference run); for Video2World it may also hold
    /// `augment_noise.step{i}.cond` / `.uncond`, which replace the drawn augment noise.
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// Video2World: a safetensors file with `video`, the frames to continue: [1, 3, F, H, W] in
    /// [-1, 1] at the output size (needs a CosmosVideoToWorldPipeline).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Video2World: condition on the last N input frames (default: all given, at most the
    /// output's frame count).
    #[arg(long)]
    cond_frames: Option<usize>,
    /// Video2World: the noise level the given frames are re-noised to each step.
    #[arg(long, default_value_t = 0.001)]
    augment_sigma: f32,
    /// Write the video here as an MP4 (H.264 Main, yuv420p, lossless I_PCM frames: about 1.5
    /// bytes per pixel), with `<out>.json` beside it holding every setting.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the frames as frame_0000.png … into this folder, with generation.json beside them.
    #[arg(long)]
    frames_dir: Option<PathBuf>,
    /// Write prompt_embeds, negative_prompt_embeds, sigmas, step{i}.latents, final_latents and
    /// decoded_raw (f32) to this safetensors file.
    #[arg(long)]
    dump_tensors: Option<PathBuf>,
    /// Worker threads (default: RAYON_NUM_THREADS, else the available CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON summary on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
    /// Start runs estimated at over 30 minutes without asking.
    #[arg(long)]
    yes: bool,
}

/// Runs estimated longer than this need `--yes`.
const LONG_RUN_SECONDS: f64 = 30.0 * 60.0;

/// This machine's speed on what dominates these models: a 1024³ f32 matrix product through the
/// runtime (best of 3), times 0.7, since whole models run at about 70% of their GEMM speed
/// here (BENCHMARKS.md).
fn measured_gflops(threads: usize) -> Result<f64> {
    let n = 1024;
    let mut b = orrery_ir::GraphBuilder::new();
    let x = b.input("a", orrery_ir::DType::F32, [n, n])?;
    let w = b.input("b", orrery_ir::DType::F32, [n, n])?;
    let y = b.matmul("mm", x, w)?;
    b.output("y", y)?;
    let plan = orrery_compiler::compile(b.finish()?)?;
    let session =
        orrery_runtime::Session::new(plan, std::sync::Arc::new(orrery_runtime::MemoryWeights::new()), threads)?;
    let ones = CpuTensor::from_vec(vec![n, n], vec![1f32; n * n]);
    let inputs = HashMap::from([("a".to_string(), ones.clone()), ("b".to_string(), ones)]);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        best = best.min(session.run(&inputs)?.1.seconds);
    }
    Ok(0.7 * 2.0 * (n * n * n) as f64 / best / 1e9)
}

fn human_time(seconds: f64) -> String {
    match seconds {
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 5400.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

pub fn generate(args: &GenerateArgs) -> Result<ExitCode> {
    if args.out.is_none() && args.frames_dir.is_none() && args.dump_tensors.is_none() {
        bail!("nothing to write: give --out FILE.mp4, --frames-dir DIR (PNG frames) and/or --dump-tensors FILE");
    }
    // Refuse an output that cannot be written before any work.
    for path in args.out.iter().chain(&args.dump_tensors) {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            bail!("cannot write {}: the folder {} does not exist", path.display(), parent.display());
        }
        if path.is_dir() {
            bail!("cannot write {}: it is a folder", path.display());
        }
    }
    let started = Instant::now();
    eprintln!("orrery: guardrails (the Cosmos text and video safety checks) are not implemented in this version; see the README");
    let (model, defaults) = match &args.model {
        Some(spec) => (resolve_model(spec)?, (704, 1280, 121, 36)),
        None => {
            eprintln!("orrery: no --model: using the tiny built-in pipeline with random weights (its video is noise)");
            (crate::embedded::pipeline_dir()?, crate::embedded::DEFAULTS)
        }
    };
    let height = args.height.unwrap_or(defaults.0);
    let width = args.width.unwrap_or(defaults.1);
    let frames = args.frames.unwrap_or(defaults.2);
    let steps = args.steps.unwrap_or(defaults.3);
    let pipeline = CosmosPipeline::load(&model).with_context(|| format!("loading the pipeline {}", model.display()))?;
    if !pipeline.skipped.is_empty() {
        eprintln!("orrery: not run: {} (orrery does not implement them)", pipeline.skipped.join(", "));
    }
    let latent = pipeline.latent_shape(height, width, frames)?;
    let count: usize = latent.iter().product();
    let injected: HashMap<String, CpuTensor> = match &args.init_noise {
        Some(path) => read_tensors(path)?.into_iter().collect(),
        None => HashMap::new(),
    };
    let injected_values = |name: &str| -> Result<Option<Vec<f32>>> {
        match injected.get(name) {
            None => Ok(None),
            Some(t) if t.shape() == latent => Ok(Some(t.to_f32_vec())),
            Some(t) => bail!("--init-noise: `{name}` is {:?}, the latents are {latent:?}", t.shape()),
        }
    };
    let noise = match (&args.init_noise, injected_values("noise")?) {
        (_, Some(values)) => CpuTensor::from_vec(latent.to_vec(), values),
        (Some(path), None) => bail!("{} has no tensor `noise`", path.display()),
        (None, None) => CpuTensor::from_vec(latent.to_vec(), standard_normal(count, args.seed)),
    };
    // Augment noise per step and branch (drawn when the step asks): injected, else its own
    // stream of the seed. Injected tensors are checked now.
    for name in injected.keys().filter(|n| n.starts_with("augment_noise.")) {
        injected_values(name)?;
    }
    let augment_noise = |i: usize, uncond: bool| match injected
        .get(&format!("augment_noise.step{i}.{}", if uncond { "uncond" } else { "cond" }))
    {
        Some(t) => t.to_f32_vec(),
        None => standard_normal(count, args.seed ^ (0x5EED_0000 + 2 * i as u64 + u64::from(uncond)).rotate_left(32)),
    };
    let video = match &args.input {
        Some(path) => {
            let tensors: HashMap<String, CpuTensor> = read_tensors(path)?.into_iter().collect();
            let video = tensors.get("video").with_context(|| format!("{} has no tensor `video`", path.display()))?;
            let given = video.shape().get(2).copied().unwrap_or(0);
            let keep = args.cond_frames.unwrap_or(given).min(given);
            if keep == 0 {
                bail!("--input {} holds no frames to condition on", path.display());
            }
            Some(video.slice(2, given - keep, given, 1).contiguous())
        }
        None if pipeline.video_to_world => {
            bail!("{} is a Video2World pipeline: give the frames to continue with --input", model.display())
        }
        None => None,
    };
    // Created here, removed again if the run is interrupted.
    let created_frames_dir = match &args.frames_dir {
        Some(dir) if !dir.exists() => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(dir.clone())
        }
        _ => None,
    };
    let stop = crate::interrupt::install();
    let (threads, _) = resolve_threads(args.threads);
    // What the run will cost, before any of it: FLOPs from the plans (kept for the run), the
    // speed measured here.
    let estimate = pipeline.estimate((height, width, frames), steps, args.guidance, 512)?;
    let gflops = measured_gflops(threads)?;
    let estimated_s = estimate.flops() as f64 / (gflops * 1e9);
    let memory = match estimate.memory_bytes as f64 / (1u64 << 20) as f64 {
        mib if mib < 1024.0 => format!("{mib:.0} MiB"),
        mib => format!("{:.1} GiB", mib / 1024.0),
    };
    eprintln!(
        "orrery: {:.3} TFLOP, about {} at {gflops:.0} GFLOP/s (measured); about {memory} of memory",
        estimate.flops() as f64 / 1e12,
        human_time(estimated_s),
    );
    if estimated_s > LONG_RUN_SECONDS && !args.yes {
        if let Some(dir) = created_frames_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        bail!(
            "this run is estimated at {}; pass --yes to start it (or fewer --steps / --frames, a smaller size)",
            human_time(estimated_s)
        );
    }
    let steps_started = std::cell::Cell::new(None::<Instant>);
    let progress = |stage: Stage| match stage {
        Stage::TextEncoded { seconds } => {
            eprintln!("orrery: text encoded in {seconds:.2} s");
            steps_started.set(Some(Instant::now()));
        }
        Stage::Step { step, steps, sigma, seconds } => {
            let elapsed = steps_started.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
            let eta = elapsed / (step + 1) as f64 * (steps - step - 1) as f64;
            eprintln!("orrery: step {}/{steps} (σ {sigma:.4}) {seconds:.2} s, about {eta:.0} s left", step + 1);
        }
        Stage::Decoded { seconds } => eprintln!("orrery: video decoded in {seconds:.2} s"),
    };
    let request = GenerateRequest {
        prompt: &args.prompt,
        negative_prompt: args.negative_prompt.as_deref(),
        height,
        width,
        frames,
        steps,
        guidance: args.guidance,
        fps: args.fps,
        noise: &noise,
        max_text_len: 512,
        threads,
        progress: &progress,
        condition: video.as_ref().map(|video| Condition {
            video,
            augment_sigma: args.augment_sigma,
            augment_noise: &augment_noise,
        }),
        stop: Some(stop),
    };
    let out = match pipeline.generate(&request) {
        Ok(out) => out,
        Err(orrery_pipeline::PipelineError::Interrupted) => {
            if let Some(dir) = created_frames_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            eprintln!("orrery: interrupted; nothing was written");
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e.into()),
    };

    if let Some(path) = &args.dump_tensors {
        let mut tensors = HashMap::from([
            ("prompt_embeds".to_string(), out.prompt_embeds.clone()),
            ("negative_prompt_embeds".to_string(), out.negative_prompt_embeds.clone()),
            ("sigmas".to_string(), CpuTensor::from_vec(vec![out.sigmas.len()], out.sigmas.clone())),
            ("decoded_raw".to_string(), out.decoded_raw.clone()),
        ]);
        for (i, latents) in out.step_latents.iter().enumerate() {
            tensors.insert(format!("step{i}.latents"), latents.clone());
        }
        if let Some(last) = out.step_latents.last() {
            tensors.insert("final_latents".into(), last.clone());
        }
        write_f32_safetensors(path, &tensors)?;
    }
    let images = video_frames_u8(&out.decoded_raw.to_f32_vec(), frames, height, width);
    let sidecar = {
        serde_json::json!({
            "model": args.model.clone().unwrap_or_else(|| "built-in tiny random pipeline".into()),
            "model_dir": model.display().to_string(), "prompt": args.prompt,
            "negative_prompt": args.negative_prompt, "height": height, "width": width,
            "frames": frames, "steps": steps, "guidance": args.guidance, "fps": args.fps,
            "seed": if args.init_noise.is_some() { serde_json::Value::Null } else { args.seed.into() },
            "init_noise": args.init_noise.as_ref().map(|p| p.display().to_string()),
            "sampler": "diffusers-edm", "noise_generator": "orrery splitmix64 + box-muller",
            "input": args.input.as_ref().map(|p| p.display().to_string()),
            "augment_sigma": args.input.as_ref().map(|_| args.augment_sigma),
        })
    };
    let sidecar = serde_json::to_string_pretty(&sidecar)?;
    if let Some(path) = &args.out {
        let started = Instant::now();
        orrery_video::write_mp4(path, &images, width, height, f64::from(args.fps))?;
        let mut json_path = path.as_os_str().to_owned();
        json_path.push(".json");
        std::fs::write(&json_path, &sidecar).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("orrery: wrote {} in {:.2} s", path.display(), started.elapsed().as_secs_f64());
    }
    if let Some(dir) = &args.frames_dir {
        for (i, rgb) in images.iter().enumerate() {
            orrery_formats::write_png_rgb(&dir.join(format!("frame_{i:04}.png")), width, height, rgb)?;
        }
        std::fs::write(dir.join("generation.json"), &sidecar).with_context(|| format!("writing {}", dir.display()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_bytes().unwrap_or(0);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "seconds": seconds, "estimated_seconds": estimated_s, "flops": estimate.flops(),
                "estimated_memory_bytes": estimate.memory_bytes, "peak_rss_bytes": peak, "steps": out.step_latents.len(),
                "frames": frames, "height": height, "width": width, "threads": threads,
            })
        );
    } else {
        eprintln!("orrery: done in {seconds:.1} s, peak RSS {:.0} MiB", peak as f64 / (1 << 20) as f64);
    }
    Ok(ExitCode::SUCCESS)
}
