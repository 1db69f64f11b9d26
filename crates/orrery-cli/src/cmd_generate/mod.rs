//! `orrery generate`: Text2World or Video2World from a diffusers Cosmos pipeline folder (or a
//! repo id in the Hugging Face cache, or the built-in tiny pipeline), one prompt from the flags
//! or one per line of a `--batch` file, written as MP4, PNG frames and/or the run's tensors.
//!
//! The order of work: every job's paths checked, the pipeline loaded once, the run's cost
//! estimated (long runs need `--yes`), then each job: its inputs read, the pipeline run (plans
//! and weights shared by all jobs), its outputs written atomically; a closing summary per job
//! and for the batch.

pub(crate) mod estimate;
mod input;
mod jobs;
pub(crate) mod memory;
mod progress;
mod ranks;
mod trace;

use crate::tensor_file::{read_tensors, write_f32_safetensors};
use anyhow::{bail, Context, Result};
use estimate::{human_bytes, human_flops, human_time, measured_gflops, LONG_RUN_SECONDS};
use jobs::{Job, Outputs};
use orrery_cpu::CpuTensor;
use orrery_models::ShardAxis;
use orrery_pipeline::{
    resolve_model, standard_normal, video_frames_u8, CfgParallel, Condition, CosmosPipeline, GenerateRequest,
    MemoryBudget, ModelParallel, PipelineError, RunSize, SamplerKind,
};
use orrery_runtime::{peak_rss_bytes, resolve_threads, Prefetch};
use progress::{Progress, StageTimes};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerArg {
    /// diffusers' EDMEulerScheduler with the folder's scheduler config (36 steps, fps 30).
    DiffusersEdm,
    /// NVIDIA cosmos-predict1's loop: σ 80 → 0.0002 then 0, noise × √(80²+1) (35 steps, fps 24).
    Predict1,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A diffusers CosmosTextToWorldPipeline or CosmosVideoToWorldPipeline folder
    /// (model_index.json and its components), or a Hugging Face repo id `org/name[@revision]`
    /// already in the local cache. Default: the tiny random pipeline built into orrery (its
    /// output is noise).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    prompt: Option<String>,
    /// Default: diffusers' default Cosmos negative prompt. With `--sampler predict1` an empty
    /// one guides against a zero embedding, as cosmos-predict1 does.
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
    /// Denoising steps, two transformer runs each with guidance (default: 36 for diffusers-edm,
    /// 35 for predict1; 5 for the built-in pipeline).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale `g` in `cond + g·(cond − uncond)`.
    #[arg(long, default_value_t = 7.0)]
    guidance: f32,
    /// Frames per second the transformer conditions on and the MP4 plays at (default: 30 for
    /// diffusers-edm, 24 for predict1).
    #[arg(long)]
    fps: Option<f32>,
    /// Whose sampling loop and σ grid to follow.
    #[arg(long, value_enum, default_value_t = SamplerArg::DiffusersEdm)]
    sampler: SamplerArg,
    /// Seed of orrery's noise generator (SplitMix64 + Box–Muller; not torch's).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A safetensors file with `noise`: standard normal noise of the latent shape, used instead
    /// of the seed's (to reproduce a reference run); for Video2World it may also hold
    /// `augment_noise.step{i}.cond` / `.uncond`, which replace the drawn augment noise.
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// Video2World: the frames to continue: an image (PNG/JPEG), a folder of images (file-name
    /// order), a video file (read through ffmpeg), or a safetensors file with `video`
    /// [1, 3, F, H, W] in [-1, 1] at the output size. Resized to cover the output, centre-cropped.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Video2World: condition on the last N input frames (default: 1 of an image, 9 of a video
    /// or folder; the models were trained with 1 or 9).
    #[arg(long)]
    cond_frames: Option<usize>,
    /// Video2World: the noise level the given frames are re-noised to each step.
    #[arg(long, default_value_t = 0.001)]
    augment_sigma: f32,
    /// Write the video here as an MP4 (H.264 Main, yuv420p, lossless I_PCM frames: about 1.5
    /// bytes per pixel), with `<out>.json` beside it holding every setting. With --batch, each
    /// line without its own outputs writes `<stem>_NNN.mp4`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the frames as frame_0000.png … into this folder, with generation.json beside them
    /// (with --batch: one numbered subfolder per line).
    #[arg(long)]
    frames_dir: Option<PathBuf>,
    /// Write prompt_embeds, negative_prompt_embeds, sigmas, step{i}.latents, final_latents and
    /// decoded_raw (f32) to this safetensors file.
    #[arg(long)]
    dump_tensors: Option<PathBuf>,
    /// One run per line of this JSONL file, weights and compiled plans shared: each line a JSON
    /// object with `prompt` and optionally `negative_prompt`, `seed`, `input`, `cond_frames`,
    /// `init_noise`, `out`, `frames_dir`, `dump_tensors` (the flags give the defaults).
    #[arg(long)]
    batch: Option<PathBuf>,
    /// Bound on the run's planned memory (weights resident and in flight plus activations),
    /// e.g. 6GiB: weights that do not fit are streamed from their files just before use.
    /// Default: the smaller of the cgroup limit and the memory available at start, less 1 GiB.
    #[arg(long, value_parser = orrery_runtime::parse_byte_size)]
    memory_budget: Option<u64>,
    /// Read weights at most this fast (bytes per second, e.g. 200MB), to simulate a slow disk.
    #[arg(long, value_parser = orrery_runtime::parse_byte_size)]
    io_bandwidth: Option<u64>,
    /// When streamed weights load: `planned` (at issue points from a cost model, re-timed from
    /// measured speeds between model runs), `eager` (as soon as the ring frees their bytes) or
    /// `fixed:K` (at most K kernels ahead of their use, as other runtimes prefetch).
    #[arg(long, value_parser = parse_prefetch, default_value = "planned")]
    prefetch: Prefetch,
    /// Keep the planned issue points as compiled (no re-timing from measured speeds).
    #[arg(long)]
    no_retime: bool,
    /// Run the two guidance branches of every step at once on two in-process ranks, each with
    /// half of --threads (bit-identical output; needs the weights resident).
    #[arg(long)]
    cfg_parallel: bool,
    /// Run every transformer evaluation on N tensor-parallel ranks (Megatron-style: each has
    /// 1/N of the attention heads and MLP width and reads only that part of the weights), N
    /// in-process ranks each with --threads / N threads, or the N processes of
    /// `mpirun -np N`. Within 1e-5 of one rank; needs the weights resident.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    tp: u64,
    /// Run every transformer evaluation on N sequence-parallel ranks (Ulysses: each has 1/N
    /// of the tokens and all the weights; all-to-alls regroup each self-attention by heads),
    /// in process or as the N processes of `mpirun -np N`. Within 1e-5 of one rank; needs the
    /// weights resident; N divides the heads and the latent's patches.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    sp: u64,
    /// Write a Chrome/Perfetto trace of the run (compute, weight loads, waits) to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Worker threads (default: RAYON_NUM_THREADS, else the available CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON summary on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
    /// Start runs estimated at over 30 minutes without asking.
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    plan_cache: crate::plan_cache::PlanCacheArgs,
}

/// The settings every job of one invocation shares.
struct Settings {
    height: usize,
    width: usize,
    frames: usize,
    steps: usize,
    guidance: f32,
    fps: f32,
    sampler: SamplerKind,
    augment_sigma: f32,
    threads: usize,
    memory: Option<MemoryBudget>,
    cfg_parallel: bool,
    tp: usize,
    sp: usize,
    model_label: String,
    model_dir: PathBuf,
}

impl Settings {
    fn sampler_name(&self) -> &'static str {
        match self.sampler {
            SamplerKind::DiffusersEdm => "diffusers-edm",
            SamplerKind::Predict1 => "predict1",
        }
    }
}

/// What one finished job reports.
struct JobReport {
    times: StageTimes,
    written: Vec<PathBuf>,
    stream: Option<orrery_runtime::StreamStats>,
    /// Per-invocation measurements (activations, weight bytes read).
    measured: serde_json::Value,
}

/// Why a job did not finish.
enum JobFailure {
    Interrupted,
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for JobFailure {
    fn from(e: E) -> JobFailure {
        JobFailure::Failed(e.into())
    }
}

/// `planned`, `eager` or `fixed:K`.
pub(crate) fn parse_prefetch(s: &str) -> Result<Prefetch, String> {
    match s.split_once(':') {
        None if s == "planned" => Ok(Prefetch::Planned),
        None if s == "eager" => Ok(Prefetch::Eager),
        Some(("fixed", k)) => k
            .parse::<usize>()
            .map(Prefetch::Fixed)
            .map_err(|_| format!("`{s}`: K in fixed:K must be a whole number of kernels")),
        _ => Err(format!("`{s}` is not a prefetch policy: use `planned`, `eager` or `fixed:K`")),
    }
}

fn flags_job(args: &GenerateArgs) -> Job {
    Job {
        origin: String::new(),
        prompt: args.prompt.clone().unwrap_or_default(),
        negative_prompt: args.negative_prompt.clone(),
        seed: args.seed,
        init_noise: args.init_noise.clone(),
        input: args.input.clone(),
        cond_frames: args.cond_frames,
        outputs: Outputs {
            mp4: args.out.clone(),
            frames_dir: args.frames_dir.clone(),
            dump_tensors: args.dump_tensors.clone(),
            trace: args.trace.clone(),
        },
    }
}

pub fn generate(args: &GenerateArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let defaults = flags_job(args);
    let jobs = match &args.batch {
        Some(batch) => jobs::from_batch(batch, &defaults)?,
        None => vec![defaults],
    };
    jobs::check(&jobs)?;
    eprintln!("orrery: guardrails (the Cosmos text and video safety checks) are not implemented in this version; see the README");
    let (sampler, sampler_defaults) = match args.sampler {
        SamplerArg::DiffusersEdm => (SamplerKind::DiffusersEdm, (36, 30.0)),
        SamplerArg::Predict1 => (SamplerKind::Predict1, (35, 24.0)),
    };
    let (model_dir, size_defaults) = match &args.model {
        Some(spec) => (resolve_model(spec)?, (704, 1280, 121, sampler_defaults.0)),
        None => {
            eprintln!("orrery: no --model: using the tiny built-in pipeline with random weights (its video is noise)");
            (crate::embedded::pipeline_dir()?, crate::embedded::DEFAULTS)
        }
    };
    let (threads, _) = resolve_threads(args.threads);
    let settings = Settings {
        height: args.height.unwrap_or(size_defaults.0),
        width: args.width.unwrap_or(size_defaults.1),
        frames: args.frames.unwrap_or(size_defaults.2),
        steps: args.steps.unwrap_or(size_defaults.3),
        guidance: args.guidance,
        fps: args.fps.unwrap_or(sampler_defaults.1),
        sampler,
        augment_sigma: args.augment_sigma,
        threads,
        memory: None,
        cfg_parallel: args.cfg_parallel,
        tp: args.tp as usize,
        sp: args.sp as usize,
        model_label: args.model.clone().unwrap_or_else(|| "built-in tiny random pipeline".into()),
        model_dir,
    };
    if !(settings.fps > 0.0 && settings.fps.is_finite()) {
        bail!("--fps must be a positive number, got {}", settings.fps);
    }
    let load_started = Instant::now();
    let mut pipeline = CosmosPipeline::load(&settings.model_dir)
        .with_context(|| format!("loading the pipeline {}", settings.model_dir.display()))?;
    args.plan_cache.attach(&mut pipeline);
    if !pipeline.skipped.is_empty() {
        eprintln!("orrery: not run: {} (orrery does not implement them)", pipeline.skipped.join(", "));
    }
    pipeline.latent_shape(settings.height, settings.width, settings.frames)?;
    for job in &jobs {
        match (&job.input, pipeline.video_to_world) {
            (None, true) => bail!(
                "{}{} is a Video2World pipeline: give the frames to continue with --input",
                at(job),
                settings.model_dir.display()
            ),
            (Some(_), false) => bail!(
                "{}{} is a Text2World pipeline: --input needs a CosmosVideoToWorldPipeline",
                at(job),
                settings.model_dir.display()
            ),
            _ => {}
        }
    }
    let size = RunSize {
        height: settings.height,
        width: settings.width,
        frames: settings.frames,
        steps: settings.steps,
        guidance: settings.guidance,
        sampler: settings.sampler,
        max_text_len: 512,
    };
    // What the runs will cost, before any of them: FLOPs from the plans (kept for the runs),
    // the speed measured here.
    let estimate = pipeline.estimate(&size)?;
    crate::plan_cache::report_warnings(&pipeline);
    let load_seconds = load_started.elapsed().as_secs_f64();
    let gflops = measured_gflops(threads)?;
    let per_run_s = estimate.flops() as f64 / (gflops * 1e9);
    let estimated_s = per_run_s * jobs.len() as f64;
    eprintln!(
        "orrery: {} per run, about {} {}at {gflops:.0} GFLOP/s (measured); about {} of memory",
        human_flops(estimate.flops()),
        human_time(per_run_s),
        if jobs.len() > 1 { format!("each ({} in all) ", human_time(estimated_s)) } else { String::new() },
        human_bytes(estimate.memory_bytes),
    );
    if estimated_s > LONG_RUN_SECONDS && !args.yes {
        bail!(
            "this is estimated at {}; pass --yes to start it (or fewer --steps / --frames, a smaller size)",
            human_time(estimated_s)
        );
    }
    // The memory plan: weights resident, or streamed within the budget (refused below its
    // minimum before any work).
    let budget = args.memory_budget.or_else(memory::default_budget).map(|bytes| MemoryBudget {
        io_bandwidth: args.io_bandwidth.map(|b| b as f64),
        prefetch: args.prefetch,
        retime: !args.no_retime,
        ..MemoryBudget::new(bytes)
    });
    let negative_encoded = !(sampler == SamplerKind::Predict1 && args.negative_prompt.as_deref() == Some(""));
    let memory_plan = pipeline.memory_plan(&size, negative_encoded, budget)?;
    eprintln!("orrery: {}", memory::describe(&memory_plan, budget));
    if let Some(budget) = budget {
        // Packed weights take only what the budget leaves beside the plan: nothing when
        // weights are streamed through the rest of it.
        let planned = memory_plan.weight_bytes + memory_plan.activation_bytes + memory_plan.transient_bytes;
        let room = if memory_plan.timeline.is_some() { 0 } else { budget.bytes.saturating_sub(planned) };
        orrery_runtime::plan_pack_budget(room);
    }
    let settings = Settings { memory: budget, ..settings };
    // Under mpirun: this process's rank and the collective joining it to the others.
    let launch = ranks::detect();
    let cfg = args.cfg_parallel;
    let layout = match (settings.tp, settings.sp) {
        (1, 1) => ranks::Layout { cfg, model: 1, axis: ShardAxis::Heads },
        (tp, 1) => ranks::Layout { cfg, model: tp, axis: ShardAxis::Heads },
        (1, sp) => ranks::Layout { cfg, model: sp, axis: ShardAxis::Tokens },
        _ => bail!("--tp and --sp cannot be combined yet: choose one (either may go with --cfg-parallel)"),
    };
    let ranks = match launch {
        Some(l) => Some(ranks::connect(l, layout, args.batch.is_some())?),
        None => None,
    };
    let cfg = match (&ranks, layout.cfg) {
        (Some(r), true) => match &r.cfg {
            Some(comm) => CfgParallel::Ranks(comm),
            None => CfgParallel::Off,
        },
        (None, true) => CfgParallel::InProcess,
        (_, false) => CfgParallel::Off,
    };
    let model = match (&ranks, layout.model) {
        (_, 1) => ModelParallel::Off,
        (Some(r), _) => match &r.model {
            Some(comm) => ModelParallel::Ranks { comm, axis: layout.axis },
            None => ModelParallel::Off,
        },
        (None, ranks) => ModelParallel::InProcess { ranks, axis: layout.axis },
    };
    let role = ranks.as_ref().map_or(ranks::Role::Lead, |r| r.role);
    let serving = role != ranks::Role::Lead;
    let stop = crate::interrupt::install();
    let mut totals = StageTimes::default();
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let label = if jobs.len() > 1 { format!("[{}/{}] ", i + 1, jobs.len()) } else { String::new() };
        let label = match launch {
            Some(l) if serving => format!("rank {}: {label}", l.rank),
            _ => label,
        };
        let progress = Progress::new(label);
        match run_job(&pipeline, &settings, job, &progress, stop, (cfg, model), role) {
            Ok(report) => {
                if jobs.len() > 1 {
                    progress.line(&format!(
                        "done in {}: {}",
                        human_time(report.times.total()),
                        report.times.describe()
                    ));
                }
                totals.add(&report.times);
                reports.push((job, report));
            }
            Err(JobFailure::Interrupted) => {
                progress.line("interrupted; this run wrote nothing");
                if !reports.is_empty() {
                    eprintln!("orrery: {} earlier run(s) finished and were kept", reports.len());
                }
                return Ok(ExitCode::from(130));
            }
            Err(JobFailure::Failed(e)) if jobs.len() > 1 => {
                progress.line(&format!("failed: {e:#}"));
                failures.push((job, format!("{e:#}")));
            }
            Err(JobFailure::Failed(e)) => return Err(e),
        }
    }

    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_bytes().unwrap_or(0);
    if serving {
        // Rank 0 reports the run and writes its outputs.
        let rank = launch.map_or(0, |l| l.rank);
        let what = match (role, layout.axis) {
            (ranks::Role::ServeUncond, _) => "the unconditional branch",
            (_, ShardAxis::Heads) => "its tensor-parallel shard of every evaluation",
            (_, ShardAxis::Tokens) => "its sequence-parallel shard of every evaluation",
        };
        progress::whole_line(&format!("orrery: rank {rank} ran {what} in {}\n", human_time(seconds)));
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        let runs: Vec<serde_json::Value> = reports
            .iter()
            .map(|(job, r)| {
                serde_json::json!({
                    "prompt": job.prompt, "seconds": r.times.total(), "stages": r.times.to_json(),
                    "weights_streamed": r.stream.as_ref().map(memory::stream_json),
                    "measured": r.measured,
                    "written": r.written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let failed: Vec<serde_json::Value> =
            failures.iter().map(|(job, e)| serde_json::json!({"origin": job.origin, "error": e})).collect();
        println!(
            "{}",
            serde_json::json!({
                "seconds": seconds, "load_seconds": load_seconds, "estimated_seconds": estimated_s,
                "flops": estimate.flops(), "estimated_memory_bytes": estimate.memory_bytes, "peak_rss_bytes": peak,
                "steps": settings.steps, "frames": settings.frames, "height": settings.height, "width": settings.width,
                "fps": settings.fps, "sampler": settings.sampler_name(), "threads": threads,
                "cfg_parallel": settings.cfg_parallel, "tp": settings.tp, "sp": settings.sp, "ranks": launch.map_or(1, |l| l.size),
                "compiled_plans": pipeline.compiled_plans(),
                "plan_cache": crate::plan_cache::stats_json(&pipeline),
                "memory": memory::plan_json(&memory_plan, budget),
                "stages": totals.to_json(), "runs": runs, "failed": failed,
            })
        );
    }
    let runs = if jobs.len() > 1 { format!("{} of {} runs ", reports.len(), jobs.len()) } else { String::new() };
    eprintln!(
        "orrery: {runs}done in {} (loading {}; {}), peak RSS {}",
        human_time(seconds),
        human_time(load_seconds),
        totals.describe(),
        human_bytes(peak)
    );
    if !failures.is_empty() {
        for (job, e) in &failures {
            eprintln!("orrery: failed: {}: {e}", job.origin);
        }
        bail!("{} of {} runs failed", failures.len(), jobs.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// "line 3 of prompts.jsonl: " for a batch job, nothing otherwise.
fn at(job: &Job) -> String {
    if job.origin.is_empty() {
        String::new()
    } else {
        format!("{}: ", job.origin)
    }
}

/// The job's initial noise (and injected augment noise), from `--init-noise` or its seed.
struct JobNoise {
    noise: CpuTensor,
    injected: HashMap<String, CpuTensor>,
}

fn job_noise(job: &Job, latent: &[usize]) -> Result<JobNoise> {
    let injected: HashMap<String, CpuTensor> = match &job.init_noise {
        Some(path) => read_tensors(path)?.into_iter().collect(),
        None => HashMap::new(),
    };
    for (name, t) in injected.iter().filter(|(n, _)| *n == "noise" || n.starts_with("augment_noise.")) {
        if t.shape() != latent {
            bail!("--init-noise: `{name}` is {:?}, the latents are {latent:?}", t.shape());
        }
    }
    let noise = match (&job.init_noise, injected.get("noise")) {
        (_, Some(t)) => t.clone(),
        (Some(path), None) => bail!("{} has no tensor `noise`", path.display()),
        (None, None) => CpuTensor::from_vec(latent.to_vec(), standard_normal(latent.iter().product(), job.seed)),
    };
    Ok(JobNoise { noise, injected })
}

/// Runs one job as `role`: the whole pipeline (rank 0), or in an mpirun launch the
/// unconditional branch (CFG) or a shard of every evaluation (TP/SP) for rank 0, writing
/// nothing.
fn run_job(
    pipeline: &CosmosPipeline,
    s: &Settings,
    job: &Job,
    progress: &Progress,
    stop: &AtomicBool,
    (cfg, model): (CfgParallel<'_>, ModelParallel<'_>),
    role: ranks::Role,
) -> Result<JobReport, JobFailure> {
    let serving = role != ranks::Role::Lead;
    let prepare_started = Instant::now();
    progress.started("reading the inputs");
    let latent = pipeline.latent_shape(s.height, s.width, s.frames)?;
    let count: usize = latent.iter().product();
    let JobNoise { noise, injected } = job_noise(job, &latent)?;
    // Augment noise per step and branch, drawn when a step asks: injected, else its own stream
    // of the seed. cosmos-predict1 draws it once and reuses it for every step and both branches.
    let predict1 = s.sampler == SamplerKind::Predict1;
    let augment_noise = |i: usize, uncond: bool| {
        let name = format!("augment_noise.step{i}.{}", if uncond { "uncond" } else { "cond" });
        match injected.get(&name) {
            Some(t) => t.to_f32_vec(),
            None if predict1 => standard_normal(count, job.seed ^ 0x5EED_0000u64.rotate_left(32)),
            None => standard_normal(count, job.seed ^ (0x5EED_0000 + 2 * i as u64 + u64::from(uncond)).rotate_left(32)),
        }
    };
    let video = match &job.input {
        Some(path) => Some(input::load(path, job.cond_frames, (s.height, s.width))?),
        None => None,
    };
    progress.inputs_ready(prepare_started.elapsed().as_secs_f64());
    // Created here, removed again if the run does not finish.
    let created_frames_dir = match &job.outputs.frames_dir {
        Some(dir) if !dir.exists() && !serving => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(dir.clone())
        }
        _ => None,
    };
    let remove_created = || {
        if let Some(dir) = &created_frames_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    };
    let on_stage = |stage| progress.stage(stage);
    let request = GenerateRequest {
        prompt: &job.prompt,
        negative_prompt: job.negative_prompt.as_deref(),
        height: s.height,
        width: s.width,
        frames: s.frames,
        steps: s.steps,
        guidance: s.guidance,
        fps: s.fps,
        sampler: s.sampler,
        noise: &noise,
        max_text_len: 512,
        threads: s.threads,
        progress: &on_stage,
        condition: video.as_ref().map(|video| Condition {
            video,
            augment_sigma: s.augment_sigma,
            augment_noise: &augment_noise,
        }),
        memory: s.memory,
        stop: Some(stop),
        cfg_parallel: cfg,
        model_parallel: model,
    };
    if serving {
        match role {
            ranks::Role::ServeUncond => pipeline.serve_uncond(&request)?,
            _ => pipeline.follow_model_parallel(&request)?,
        }
        let measured = serde_json::Value::Null;
        return Ok(JobReport { times: progress.times(), written: Vec::new(), stream: None, measured });
    }
    let out = match pipeline.generate(&request) {
        Ok(out) => out,
        Err(PipelineError::Interrupted) => {
            remove_created();
            return Err(JobFailure::Interrupted);
        }
        Err(e) => {
            remove_created();
            return Err(JobFailure::Failed(e.into()));
        }
    };
    let cond_frames = video.as_ref().map(|v| v.shape()[2]);
    if let Some(stream) = &out.stream {
        progress.line(&memory::describe_stream(stream));
    }
    let measured = memory::measured_json(&out);
    match write_outputs(s, job, cond_frames, &out, progress) {
        Ok(written) => Ok(JobReport { times: progress.times(), written, stream: out.stream.clone(), measured }),
        Err(e) => {
            remove_created();
            Err(JobFailure::Failed(e))
        }
    }
}

/// Every setting of the run, beside its outputs.
fn sidecar(s: &Settings, job: &Job, cond_frames: Option<usize>) -> serde_json::Value {
    serde_json::json!({
        "model": s.model_label, "model_dir": s.model_dir.display().to_string(), "prompt": job.prompt,
        "negative_prompt": job.negative_prompt, "height": s.height, "width": s.width, "frames": s.frames,
        "steps": s.steps, "guidance": s.guidance, "fps": s.fps, "sampler": s.sampler_name(),
        "seed": if job.init_noise.is_some() { serde_json::Value::Null } else { job.seed.into() },
        "init_noise": job.init_noise.as_ref().map(|p| p.display().to_string()),
        "noise_generator": "orrery splitmix64 + box-muller",
        "input": job.input.as_ref().map(|p| p.display().to_string()),
        "cond_frames": cond_frames,
        "augment_sigma": job.input.as_ref().map(|_| s.augment_sigma),
        "batch_line": if job.origin.is_empty() { serde_json::Value::Null } else { job.origin.clone().into() },
        "orrery_version": env!("CARGO_PKG_VERSION"),
    })
}

fn write_outputs(
    s: &Settings,
    job: &Job,
    cond_frames: Option<usize>,
    out: &orrery_pipeline::GenerateOutput,
    progress: &Progress,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    if let Some(path) = &job.outputs.dump_tensors {
        let started = Instant::now();
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
        progress.written(&path.display().to_string(), started.elapsed().as_secs_f64());
        written.push(path.clone());
    }
    let images = video_frames_u8(&out.decoded_raw.to_f32_vec(), s.frames, s.height, s.width);
    let sidecar = serde_json::to_string_pretty(&sidecar(s, job, cond_frames))?;
    if let Some(path) = &job.outputs.mp4 {
        let started = Instant::now();
        orrery_video::write_mp4(path, &images, s.width, s.height, f64::from(s.fps))?;
        let mut json_path = path.as_os_str().to_owned();
        json_path.push(".json");
        write_atomically(Path::new(&json_path), sidecar.as_bytes())?;
        progress.written(&path.display().to_string(), started.elapsed().as_secs_f64());
        written.push(path.clone());
    }
    if let Some(path) = &job.outputs.trace {
        trace::write_trace(path, out)?;
        written.push(path.clone());
    }
    if let Some(dir) = &job.outputs.frames_dir {
        let started = Instant::now();
        for (i, rgb) in images.iter().enumerate() {
            orrery_formats::write_png_rgb(&dir.join(format!("frame_{i:04}.png")), s.width, s.height, rgb)?;
        }
        write_atomically(&dir.join("generation.json"), sidecar.as_bytes())?;
        progress.written(&format!("{} PNG frames to {}", images.len(), dir.display()), started.elapsed().as_secs_f64());
        written.push(dir.clone());
    }
    Ok(written)
}

/// Writes `bytes` to `<path>.partial`, then renames it to `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, bytes)
        .and_then(|_| std::fs::rename(&partial, path))
        .with_context(|| format!("writing {}", path.display()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })
}
