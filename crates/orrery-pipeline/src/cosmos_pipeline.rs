//! Text2World and Video2World over a diffusers `CosmosTextToWorldPipeline` /
//! `CosmosVideoToWorldPipeline` folder: the prompt and negative prompt through the T5 encoder,
//! for Video2World the input frames through the video encoder, the denoising loop (the diffusion
//! transformer twice per step, the given frames re-noised to the augment σ and pinned,
//! classifier-free guidance on the denoised estimates, an Euler step), then the latents into the
//! tokenizer's space and through its decoder (cosmos-reference §1, §4; diffusers
//! `pipeline_cosmos_text2world.py`, `pipeline_cosmos_video2world.py`).

use crate::denoise::{branches, Branch, Pinned, Sampling};
use crate::disk_plans::{DiskPlans, PlanCacheStats};
use crate::latent_space::{to_model_latents, to_tokenizer_latents};
use crate::memory_budget::{InvocationSpan, Invoker, MemoryBudget, MemoryPlan};
use crate::model_parallel::{Group, InputLayout, LocalGroup, ModelParallel};
use crate::part::{Part, Variant};
use crate::prediction::{measured_seconds, modelled_seconds, predict, Prediction, Target};
use crate::{EdmSchedulerConfig, PipelineError, SamplerKind, Schedule};
use orrery_compiler::{Plan, PlanStore, StoreWarning};
use orrery_cpu::CpuTensor;
use orrery_models::cosmos::{latent_statistics, CosmosVaeConfig};
use orrery_models::{ComponentConfig, Shard};
use orrery_runtime::{StreamEvent, StreamStats};
use orrery_text::T5Tokenizer;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// diffusers' `DEFAULT_NEGATIVE_PROMPT` for the Cosmos pipelines (used when none is given).
pub const DEFAULT_NEGATIVE_PROMPT: &str = "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. Overall, the video is of poor quality.";

/// What a run will cost, from its plans: FLOPs per stage and the memory it needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Both prompts through the text encoder.
    pub text_flops: u64,
    /// All transformer evaluations (two per step with guidance).
    pub denoise_flops: u64,
    /// Video2World's input encoding plus the final decode.
    pub video_flops: u64,
    /// Every component's weights (stored bytes) plus the largest plan's activations and inputs.
    pub memory_bytes: u64,
}

impl Estimate {
    pub fn flops(&self) -> u64 {
        self.text_flops + self.denoise_flops + self.video_flops
    }
}

/// The size of a run: what its plans and costs depend on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunSize {
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub steps: usize,
    pub guidance: f32,
    pub sampler: SamplerKind,
    pub max_text_len: usize,
}

impl RunSize {
    fn dims(&self) -> (usize, usize, usize) {
        (self.height, self.width, self.frames)
    }
}

/// The plans one run uses, each compiled once.
struct RunPlans {
    text: Arc<Plan>,
    dit: Arc<Plan>,
    /// Video2World's input encoding.
    encode: Option<Arc<Plan>>,
    decode: Arc<Plan>,
}

impl RunPlans {
    /// Each plan once.
    fn distinct(&self) -> Vec<&Plan> {
        [&self.text, &self.dit, &self.decode].into_iter().chain(&self.encode).map(|p| &**p).collect()
    }

    /// Every invocation of a run in order, with its component (0 text encoder, 1 transformer,
    /// 2 video tokenizer): each prompt, the input video, each transformer evaluation, the decode.
    fn invocations(&self, prompts: usize, evaluations: usize) -> Vec<(&Arc<Plan>, usize)> {
        let mut order = vec![(&self.text, 0); prompts];
        order.extend(self.encode.iter().map(|p| (p, 2)));
        order.extend(std::iter::repeat_n((&self.dit, 1), evaluations));
        order.push((&self.decode, 2));
        order
    }
}

/// A loaded Cosmos world-generation pipeline (Text2World or Video2World).
pub struct CosmosPipeline {
    root: PathBuf,
    tokenizer: T5Tokenizer,
    text_encoder: Part,
    transformer: Part,
    vae: Part,
    vae_config: CosmosVaeConfig,
    scheduler: EdmSchedulerConfig,
    /// Components in `model_index.json` that orrery does not run (the safety checker).
    pub skipped: Vec<String>,
    /// A `CosmosVideoToWorldPipeline` (its transformer takes the condition mask).
    pub video_to_world: bool,
}

/// What to generate. `noise` is standard normal noise of the latent shape
/// ([1, C, 1 + (frames − 1)/8, height/8, width/8]); it is scaled as the sampler scales its own.
pub struct GenerateRequest<'a> {
    pub prompt: &'a str,
    /// `None`: diffusers' default negative prompt. With the Predict1 sampler an empty one
    /// guides against a zero embedding, as cosmos-predict1 does.
    pub negative_prompt: Option<&'a str>,
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub steps: usize,
    pub guidance: f32,
    pub fps: f32,
    /// Whose loop and σ grid: diffusers' (the folder's scheduler config) or cosmos-predict1's.
    pub sampler: SamplerKind,
    pub noise: &'a CpuTensor,
    pub max_text_len: usize,
    pub threads: usize,
    /// Told as each stage ends (for progress output).
    pub progress: &'a dyn Fn(Stage),
    /// Video2World: the input frames to continue (needs a `CosmosVideoToWorldPipeline`).
    pub condition: Option<Condition<'a>>,
    /// A bound on the run's planned memory (weights resident and in flight plus activations):
    /// weights that do not fit are streamed. `None`: every weight stays resident.
    pub memory: Option<MemoryBudget>,
    /// Checked before each stage and step: when set, the run stops with
    /// [`PipelineError::Interrupted`] (a Ctrl-C handler sets it).
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
    /// Run the guidance branches at once on two ranks, exchanging the transformer's outputs
    /// through a collective: bit-identical to one rank. Needs the weights resident (no
    /// streaming budget).
    pub cfg_parallel: CfgParallel<'a>,
    /// Run each transformer evaluation on several ranks, each with its shard of the heads and
    /// MLP width (tensor parallelism) or of the tokens (sequence parallelism); within 1e-5 of
    /// one rank. Needs the weights resident; not combined with `cfg_parallel` yet.
    pub model_parallel: ModelParallel<'a>,
}

/// What this process does in a run: all of it, or CFG rank 1's share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Lead,
    Serve,
}

/// Where the two guidance branches of a step run.
#[derive(Clone, Copy, Default)]
pub enum CfgParallel<'a> {
    /// One after the other, here.
    #[default]
    Off,
    /// At once on two ranks of this process, `threads` split between them.
    InProcess,
    /// On the two ranks of a collective (e.g. MPI processes): rank 0 calls
    /// [`CosmosPipeline::generate`] and gets the video, rank 1 calls
    /// [`CosmosPipeline::serve_uncond`] with the same request.
    Ranks(&'a std::cell::RefCell<dyn orrery_parallel::Collective + 'static>),
}

impl CfgParallel<'_> {
    fn is_on(&self) -> bool {
        !matches!(self, CfgParallel::Off)
    }
}

/// Video2World's input: the video continues from these frames (cosmos-reference §4.3).
pub struct Condition<'a> {
    /// The input frames [1, 3, Fc, H, W] at the output size, in [-1, 1]. Fewer frames than the
    /// output are padded with zeros; more are cut to the last `frames`.
    pub video: &'a CpuTensor,
    /// The noise level the conditioning latents are noised to each step (diffusers: 0.001).
    pub augment_sigma: f32,
    /// Standard normal augment noise (latent shape) for step `i`, conditional branch (`false`)
    /// or unconditional (`true`): diffusers draws fresh noise per step and branch.
    pub augment_noise: &'a dyn Fn(usize, bool) -> Vec<f32>,
}

/// The conditioning latents and which latent frames they cover.
struct Conditioning {
    latents: Vec<f32>,
    /// Latent frames given by the input (the rest are generated).
    frames: usize,
    /// [1, 1, T, h, w]: 1 on the given frames (the transformer's `condition_mask`).
    mask: CpuTensor,
}

/// A finished stage of a run, with its wall time in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stage {
    /// Prompt and negative prompt encoded.
    TextEncoded { seconds: f64 },
    /// Denoising step `step` (0-based) of `steps` done, at noise level `sigma`.
    Step { step: usize, steps: usize, sigma: f32, seconds: f64 },
    /// The video decoded.
    Decoded { seconds: f64 },
}

/// Everything a run produced, for output and for parity checks.
pub struct GenerateOutput {
    pub prompt_embeds: CpuTensor,
    pub negative_prompt_embeds: CpuTensor,
    pub sigmas: Vec<f32>,
    /// The latents after each step (in the sampler's σ-scaled space).
    pub step_latents: Vec<CpuTensor>,
    /// The decoder's output before clamping: [1, 3, frames, height, width], about [-1, 1].
    pub decoded_raw: CpuTensor,
    /// How the run used memory.
    pub memory: MemoryPlan,
    /// What streaming the weights measured (`None`: they were resident).
    pub stream: Option<StreamStats>,
    /// The weight loads and the kernels' waits for them, timed from the run's start.
    pub stream_events: Vec<StreamEvent>,
    /// Every model invocation, timed from the run's start: rank 0's in run order (the
    /// stream's numbering), then, with `cfg_parallel`, rank 1's.
    pub invocations: Vec<InvocationSpan>,
}

impl CosmosPipeline {
    /// Loads a diffusers pipeline folder (`model_index.json` and its component folders).
    pub fn load(root: &Path) -> Result<CosmosPipeline, PipelineError> {
        let index_path = root.join("model_index.json");
        let index: serde_json::Value = std::fs::read_to_string(&index_path)
            .map_err(|e| PipelineError::Config { path: index_path.display().to_string(), reason: e.to_string() })
            .and_then(|t| {
                serde_json::from_str(&t).map_err(|e| PipelineError::Config {
                    path: index_path.display().to_string(),
                    reason: e.to_string(),
                })
            })?;
        let video_to_world = match index.get("_class_name").and_then(|v| v.as_str()) {
            Some("CosmosTextToWorldPipeline") => false,
            Some("CosmosVideoToWorldPipeline") => true,
            other => {
                return Err(PipelineError::Config {
                    path: index_path.display().to_string(),
                    reason: format!(
                        "`_class_name` is {other:?}, expected \"CosmosTextToWorldPipeline\" or \"CosmosVideoToWorldPipeline\""
                    ),
                })
            }
        };
        let run = ["text_encoder", "tokenizer", "transformer", "vae", "scheduler"];
        let skipped = index
            .as_object()
            .map(|o| o.keys().filter(|k| !k.starts_with('_') && !run.contains(&k.as_str())).cloned().collect())
            .unwrap_or_default();
        let vae = Part::load(root, "vae")?;
        let vae_config = CosmosVaeConfig::from_config(&ComponentConfig::read(&vae.dir)?)?;
        Ok(CosmosPipeline {
            root: root.to_path_buf(),
            tokenizer: T5Tokenizer::from_dir(&root.join("tokenizer"))?,
            text_encoder: Part::load(root, "text_encoder")?,
            transformer: Part::load(root, "transformer")?,
            vae,
            vae_config,
            scheduler: EdmSchedulerConfig::read(&root.join("scheduler"))?,
            skipped,
            video_to_world,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many plans the pipeline holds so far, compiled or read from the plan store (each is
    /// kept and reused: a batch of runs of one size needs as many as a single run).
    pub fn compiled_plans(&self) -> usize {
        self.parts().iter().map(|p| p.plan_count()).sum()
    }

    fn parts(&self) -> [&Part; 3] {
        [&self.text_encoder, &self.transformer, &self.vae]
    }

    /// Keeps compiled plans in `store` across runs: a plan not yet held is looked up there
    /// before it is compiled (keyed by the running binary, the component's config and weight
    /// index, the method, the input shapes and the compile options; a stored plan is verified
    /// before use), and a compiled one is written there. Refused, leaving the pipeline without
    /// a store, when the running executable cannot be identified (no stored plan could then be
    /// trusted).
    pub fn set_plan_store(&mut self, store: PlanStore) -> Result<(), StoreWarning> {
        let disk = Arc::new(DiskPlans::new(store)?);
        for part in [&mut self.text_encoder, &mut self.transformer, &mut self.vae] {
            part.disk = Some(disk.clone());
        }
        Ok(())
    }

    /// The plan store in use, if any.
    pub fn plan_store(&self) -> Option<&PlanStore> {
        self.transformer.disk.as_ref().map(|d| d.store())
    }

    /// What the plan caches did so far: plans compiled, read from and written to the store.
    pub fn plan_cache_stats(&self) -> PlanCacheStats {
        let compiled = self.parts().iter().map(|p| p.compiled.load(Ordering::Relaxed)).sum();
        DiskPlans::stats(self.transformer.disk.as_deref(), compiled)
    }

    /// The plan store's warnings since the last call (unusable files, failed writes), for the
    /// caller to log; each was a miss or a plan left unstored, never an error of the run.
    pub fn take_plan_cache_warnings(&self) -> Vec<StoreWarning> {
        self.transformer.disk.as_ref().map(|d| d.take_warnings()).unwrap_or_default()
    }

    /// The plans a run of this size uses (compiled once and kept).
    fn run_plans(
        &self,
        (height, width, frames): (usize, usize, usize),
        max_text_len: usize,
        split: Option<u64>,
    ) -> Result<RunPlans, PipelineError> {
        let latent = self.latent_shape(height, width, frames)?;
        let (text, text_shape) = self.text_plan(max_text_len, split)?;
        let padding = [1, 1, height, width];
        let mask = [1, 1, latent[2], latent[3], latent[4]];
        let dit_shapes = self.dit_shapes(&latent, &text_shape, &padding, &mask);
        let dit = self.transformer.plan("forward", &dit_shapes, Variant::split(split))?;
        let decode = self.vae.plan("decode", &[("z", &latent)], Variant::split(split))?;
        let encode = match self.video_to_world {
            true => {
                Some(self.vae.plan("encode", &[("sample", &[1, 3, frames, height, width])], Variant::split(split))?)
            }
            false => None,
        };
        Ok(RunPlans { text, dit, encode, decode })
    }

    /// The text encoder's plan for `max_text_len` tokens and the shape of its embeddings.
    fn text_plan(&self, max_text_len: usize, split: Option<u64>) -> Result<(Arc<Plan>, [usize; 3]), PipelineError> {
        let text_in = [1, max_text_len];
        let inputs = [("input_ids", &text_in[..]), ("attention_mask", &text_in[..])];
        let text = self.text_encoder.plan("forward", &inputs, Variant::split(split))?;
        let hidden = text.graph.outputs().iter().find(|(n, _)| n == "last_hidden_state").map(|(_, id)| *id);
        let d = hidden
            .map(|id| text.graph.node(id).ty.shape.dims()[2])
            .ok_or_else(|| PipelineError::Invalid("the text encoder has no `last_hidden_state` output".into()))?;
        Ok((text, [1, max_text_len, d]))
    }

    /// What `layout` communicates per denoising step in a run of this size (see
    /// [`crate::parallel_layout`]).
    pub fn step_communication(
        &self,
        run: &RunSize,
        layout: crate::ParallelLayout,
    ) -> Result<crate::StepCommunication, PipelineError> {
        let plans = self.run_plans(run.dims(), run.max_text_len, None)?;
        crate::step_communication(&plans.dit, branches(run.sampler, run.guidance), layout)
    }

    /// The cost of a run of this size, from the plans it will use (compiled here and kept for
    /// the run).
    pub fn estimate(&self, run: &RunSize) -> Result<Estimate, PipelineError> {
        let plans = self.run_plans(run.dims(), run.max_text_len, None)?;
        let evaluations = (run.steps * branches(run.sampler, run.guidance)) as u64;
        let video_flops = plans.decode.flops + plans.encode.as_ref().map_or(0, |p| p.flops);
        let all = plans.distinct();
        let weights = all.iter().map(|p| p.weight_bytes).sum::<u64>();
        let activations = all.iter().map(|p| p.peak_resident_bytes).max().unwrap_or(0);
        Ok(Estimate {
            text_flops: 2 * plans.text.flops,
            denoise_flops: evaluations * plans.dit.flops,
            video_flops,
            memory_bytes: weights + activations,
        })
    }

    /// How a run of this size uses memory within `budget`: resident weights when they fit (or
    /// no budget is given), else the weight timeline it streams through; refused below the
    /// smallest budget that runs. `negative_encoded`: false when the negative prompt is a zero
    /// embedding (Predict1's empty one), which skips one text-encoder run.
    pub fn memory_plan(
        &self,
        run: &RunSize,
        negative_encoded: bool,
        budget: Option<MemoryBudget>,
    ) -> Result<MemoryPlan, PipelineError> {
        let prompts = 1 + usize::from(negative_encoded);
        let evaluations = run.steps * branches(run.sampler, run.guidance);
        let plan_with = |split: Option<u64>| -> Result<MemoryPlan, PipelineError> {
            let plans = self.run_plans(run.dims(), run.max_text_len, split)?;
            let short = plans.invocations(prompts, evaluations.min(2));
            let short: Vec<&Plan> = short.iter().map(|(p, _)| &***p).collect();
            let all = || plans.invocations(prompts, evaluations).into_iter().map(|(p, _)| p.clone()).collect();
            let weights = plans.distinct().iter().map(|p| p.weight_bytes).sum();
            MemoryPlan::new(&short, all, weights, budget, split)
        };
        let b = match (plan_with(None), budget) {
            (Err(PipelineError::BudgetTooSmall(_)), Some(b)) => b,
            (plain, _) => return plain,
        };
        // The ring the budget leaves is smaller than the weights some kernel reads at once:
        // split the convolutions' weights to fit that ring, or failing that as far as they go
        // (whose minimum a refusal then states). The plain plans are compiled and kept already.
        let plans = self.run_plans(run.dims(), run.max_text_len, None)?;
        let short = plans.invocations(prompts, evaluations.min(2));
        let short: Vec<&Plan> = short.iter().map(|(p, _)| &***p).collect();
        let ring = b.bytes.saturating_sub(crate::memory_budget::working_bytes(&short)).max(1);
        match plan_with(Some(ring)) {
            Err(PipelineError::BudgetTooSmall(_)) => plan_with(Some(1)),
            fitted => fitted,
        }
    }

    /// Predicts a run of this size on `target` (see [`crate::prediction`]): its memory plan
    /// within `budget` (the target's memory when none is given) and the simulated times and
    /// bytes of a middle denoising step.
    /// With `calibrate = Some((threads, limit))` (this machine only), every component whose
    /// modelled run takes under `limit` seconds is run twice here and its kernel times scaled
    /// to the measured one.
    pub fn predict(
        &self,
        run: &RunSize,
        negative_encoded: bool,
        target: &Target,
        budget: Option<MemoryBudget>,
        calibrate: Option<(usize, f64)>,
    ) -> Result<(MemoryPlan, Prediction), PipelineError> {
        // Issue points planned with the target's own speeds.
        let budget = MemoryBudget {
            issue_model: Some(target.issue_model()),
            ..budget.unwrap_or(MemoryBudget::new(target.memory_bytes))
        };
        let memory = self.memory_plan(run, negative_encoded, Some(budget))?;
        let plans = self.run_plans(run.dims(), run.max_text_len, memory.weight_split)?;
        let prompts = 1 + usize::from(negative_encoded);
        let branches = branches(run.sampler, run.guidance);
        let order = plans.invocations(prompts, run.steps * branches);
        let invocations: Vec<&Plan> = order.iter().map(|(p, _)| &***p).collect();
        let first = prompts + usize::from(plans.encode.is_some()) + run.steps / 2 * branches;
        let parts = [("text_encoder", &self.text_encoder), ("transformer", &self.transformer), ("vae", &self.vae)];
        let mut scale_of: HashMap<*const Plan, f64> = HashMap::new();
        let mut calibration = Vec::new();
        if let Some((threads, limit)) = calibrate {
            for (plan, part) in &order {
                let key = Arc::as_ptr(plan);
                if scale_of.contains_key(&key) {
                    continue;
                }
                let modelled = modelled_seconds(plan, target);
                if modelled > 0.0 && 2.0 * modelled < limit {
                    let measured = measured_seconds(plan, parts[*part].1.weights.clone(), threads)?;
                    scale_of.insert(key, measured / modelled);
                    calibration.push((parts[*part].0.to_string(), measured / modelled));
                }
            }
        }
        let scales: Vec<f64> =
            order.iter().map(|(p, _)| scale_of.get(&Arc::as_ptr(p)).copied().unwrap_or(1.0)).collect();
        let mut prediction = predict(&invocations, &scales, &memory, target, budget.prefetch, first..first + branches);
        prediction.calibration = calibration;
        Ok((memory, prediction))
    }

    /// The transformer's inputs for latents of `latent` shape (with the condition mask for
    /// Video2World).
    fn dit_shapes<'s>(
        &self,
        latent: &'s [usize],
        text: &'s [usize],
        padding: &'s [usize],
        mask: &'s [usize],
    ) -> Vec<(&'static str, &'s [usize])> {
        let mut shapes: Vec<(&'static str, &'s [usize])> = vec![
            ("hidden_states", latent),
            ("timestep", &[1]),
            ("encoder_hidden_states", text),
            ("fps", &[]),
            ("padding_mask", padding),
        ];
        if self.video_to_world {
            shapes.push(("condition_mask", mask));
        }
        shapes
    }

    /// The T5 embeddings of `prompt` padded to `len` tokens, with the rows past the prompt's
    /// tokens set to zero (as diffusers does after encoding).
    pub fn encode_prompt(&self, prompt: &str, len: usize, threads: usize) -> Result<CpuTensor, PipelineError> {
        Ok(self.encode_prompts(&[prompt], len, threads)?.remove(0))
    }

    /// [`CosmosPipeline::encode_prompt`] for several prompts through one session.
    fn encode_prompts(&self, prompts: &[&str], len: usize, threads: usize) -> Result<Vec<CpuTensor>, PipelineError> {
        self.encode_prompts_with(&Invoker::resident(), prompts, len, threads)
    }

    /// [`CosmosPipeline::encode_prompts`] as the next invocations of a run.
    fn encode_prompts_with(
        &self,
        invoker: &Invoker,
        prompts: &[&str],
        len: usize,
        threads: usize,
    ) -> Result<Vec<CpuTensor>, PipelineError> {
        let shape = [1, len];
        let inputs = [("input_ids", &shape[..]), ("attention_mask", &shape[..])];
        let session = self.text_encoder.session("forward", &inputs, Variant::split(invoker.weight_split()), threads)?;
        prompts
            .iter()
            .map(|prompt| {
                let e = self.tokenizer.encode(prompt, len)?;
                let inputs = HashMap::from([
                    ("input_ids".to_string(), CpuTensor::from_vec(shape.to_vec(), e.ids)),
                    ("attention_mask".to_string(), CpuTensor::from_vec(shape.to_vec(), e.attention_mask)),
                ]);
                let out = invoker.run(&session, inputs, "text_encoder")?;
                let hidden = out
                    .get("last_hidden_state")
                    .ok_or_else(|| PipelineError::Invalid("the text encoder gave no `last_hidden_state`".into()))?;
                let d = hidden.shape()[2];
                let mut values = hidden.to_f32_vec();
                values[e.length * d..].fill(0.0);
                Ok(CpuTensor::from_vec(vec![1, len, d], values))
            })
            .collect()
    }

    /// The latent shape [1, C, 1 + (frames − 1)/8, height/8, width/8] of a video, or why the
    /// size cannot be generated.
    pub fn latent_shape(&self, height: usize, width: usize, frames: usize) -> Result<[usize; 5], PipelineError> {
        let (s, t) = (self.vae_config.spatial_compression_ratio, self.vae_config.temporal_compression_ratio);
        if !height.is_multiple_of(16) || !width.is_multiple_of(16) || height == 0 || width == 0 {
            return Err(PipelineError::Invalid(format!(
                "height and width must be positive multiples of 16, got {height}x{width}"
            )));
        }
        if frames == 0 || !(frames - 1).is_multiple_of(t) {
            return Err(PipelineError::Invalid(format!("frames must be 1 + {t}·k, got {frames}")));
        }
        Ok([1, self.vae_config.latent_channels, 1 + (frames - 1) / t, height / s, width / s])
    }

    /// Runs the whole pipeline.
    pub fn generate(&self, r: &GenerateRequest) -> Result<GenerateOutput, PipelineError> {
        self.run(r, Role::Lead)?
            .ok_or_else(|| PipelineError::Invalid("the run ended without a video (a serving rank)".into()))
    }

    /// Rank 1 of a [`CfgParallel::Ranks`] run: encodes the prompts like rank 0, then evaluates
    /// the unconditional branch of every step rank 0 sends, until rank 0 is done. Rank 0 writes
    /// the video.
    pub fn serve_uncond(&self, r: &GenerateRequest) -> Result<(), PipelineError> {
        match r.cfg_parallel {
            CfgParallel::Ranks(_) => self.run(r, Role::Serve).map(|_| ()),
            _ => Err(PipelineError::Invalid("serve_uncond needs a request with CfgParallel::Ranks".into())),
        }
    }

    /// Rank r > 0 of a [`ModelParallel::Ranks`] run: evaluates its shard of the transformer
    /// for every evaluation rank 0 sends, until rank 0 is done (rank 0 calls
    /// [`CosmosPipeline::generate`] with the same request and writes the video).
    pub fn follow_model_parallel(&self, r: &GenerateRequest) -> Result<(), PipelineError> {
        let ModelParallel::Ranks { comm, axis } = r.model_parallel else {
            return Err(PipelineError::Invalid(
                "follow_model_parallel needs a request with ModelParallel::Ranks".into(),
            ));
        };
        let mut comm = comm.borrow_mut();
        let (rank, ranks) = (comm.rank(), comm.size());
        if rank == 0 {
            return Err(PipelineError::Invalid("rank 0 leads a model-parallel run: it calls generate".into()));
        }
        let latent = self.latent_shape(r.height, r.width, r.frames)?;
        let (_, text_shape) = self.text_plan(r.max_text_len, None)?;
        let padding = [1, 1, r.height, r.width];
        let mask = [1, 1, latent[2], latent[3], latent[4]];
        let shapes = self.dit_shapes(&latent, &text_shape, &padding, &mask);
        let variant = Variant { weight_split: None, shard: Shard { rank, ranks, axis } };
        let session = match self.transformer.session("forward", &shapes, variant, r.threads) {
            Ok(s) => s,
            Err(e) => {
                comm.abort(&e.to_string());
                return Err(e);
            }
        };
        crate::model_parallel::follow(&session, &mut *comm)
    }

    /// The run, as the leader (the whole pipeline) or as CFG rank 1 (`None` at the end).
    fn run(&self, r: &GenerateRequest, role: Role) -> Result<Option<GenerateOutput>, PipelineError> {
        let latent_shape = self.latent_shape(r.height, r.width, r.frames)?;
        if r.noise.shape() != latent_shape {
            return Err(PipelineError::Invalid(format!(
                "the initial noise has shape {:?}, the latents are {latent_shape:?}",
                r.noise.shape()
            )));
        }
        let started = Instant::now();
        let negative = r.negative_prompt.unwrap_or(DEFAULT_NEGATIVE_PROMPT);
        // cosmos-predict1 guides an empty negative prompt against a zero embedding.
        let zero_negative = r.sampler == SamplerKind::Predict1 && negative.is_empty();
        let prompts: &[&str] = if zero_negative { &[r.prompt] } else { &[r.prompt, negative] };
        // Every invocation of the run, in order, before the first: the weight timeline.
        let size = RunSize {
            height: r.height,
            width: r.width,
            frames: r.frames,
            steps: r.steps,
            guidance: r.guidance,
            sampler: r.sampler,
            max_text_len: r.max_text_len,
        };
        let memory = self.memory_plan(&size, !zero_negative, r.memory)?;
        let cfg_parallel = r.cfg_parallel.is_on() && branches(r.sampler, r.guidance) == 2;
        if role == Role::Serve && !cfg_parallel {
            return Err(PipelineError::Invalid(
                "this run has no unconditional branch to serve (guidance is off for its sampler)".into(),
            ));
        }
        if cfg_parallel && memory.timeline.is_some() {
            return Err(PipelineError::Invalid(
                "--cfg-parallel runs both guidance branches at once, which needs the weights resident, but this run \
                 streams them within its memory budget: raise --memory-budget or drop --cfg-parallel"
                    .into(),
            ));
        }
        let model_ranks = r.model_parallel.ranks();
        if model_ranks > 1 {
            let why = match (r.cfg_parallel, r.model_parallel) {
                _ if memory.timeline.is_some() => {
                    Some("its weights stream within the memory budget (raise --memory-budget)")
                }
                (CfgParallel::InProcess, ModelParallel::Ranks { .. })
                | (CfgParallel::Ranks(_), ModelParallel::InProcess { .. }) => {
                    Some("CFG and model parallelism must both run in this process or both across processes")
                }
                _ => None,
            };
            if let Some(why) = why {
                let flag = r.model_parallel.flag();
                return Err(PipelineError::Invalid(format!("{flag} cannot run this request: {why}")));
            }
        }
        let plans = self.run_plans(size.dims(), r.max_text_len, memory.weight_split)?;
        let sources = plans
            .invocations(prompts.len(), r.steps * branches(r.sampler, r.guidance))
            .into_iter()
            .map(|(_, part)| [&self.text_encoder, &self.transformer, &self.vae][part].weights.clone())
            .collect();
        let invoker = Invoker::new(&memory, sources, r.memory)?;
        let mut embeds = self.encode_prompts_with(&invoker, prompts, r.max_text_len, r.threads)?;
        let negative_prompt_embeds = if zero_negative {
            CpuTensor::from_vec(embeds[0].shape().to_vec(), vec![0f32; embeds[0].shape().iter().product()])
        } else {
            embeds.pop().expect("two prompts")
        };
        let prompt_embeds = embeds.pop().expect("one prompt");
        (r.progress)(Stage::TextEncoded { seconds: started.elapsed().as_secs_f64() });

        let schedule = match r.sampler {
            SamplerKind::DiffusersEdm => Schedule::diffusers(&self.scheduler, r.steps)?,
            SamplerKind::Predict1 => Schedule::predict1(r.steps)?,
        };
        let conditioning = match (&r.condition, self.video_to_world) {
            (Some(c), true) => Some(self.conditioning(&invoker, c, r, &latent_shape, schedule.sigma_data)?),
            (None, false) => None,
            (Some(_), false) => {
                return Err(PipelineError::Invalid(format!(
                    "{} is a Text2World pipeline: it cannot continue an input video",
                    self.root.display()
                )))
            }
            (None, true) => {
                return Err(PipelineError::Invalid(format!(
                    "{} is a Video2World pipeline: give the input frames to continue",
                    self.root.display()
                )))
            }
        };
        let text_shape = prompt_embeds.shape().to_vec();
        let padding = [1, 1, r.height, r.width];
        let mask_shape = [1, 1, latent_shape[2], latent_shape[3], latent_shape[4]];
        let shapes = self.dit_shapes(&latent_shape, &text_shape, &padding, &mask_shape);
        // With CFG parallelism each rank gets half the threads.
        // In-process ranks share --threads: 2 CFG ranks, each leading a group of model ranks.
        let in_process_ranks = match (r.cfg_parallel, r.model_parallel) {
            (CfgParallel::InProcess, _) if cfg_parallel => 2,
            _ => 1,
        } * match r.model_parallel {
            ModelParallel::InProcess { ranks, .. } => ranks.max(1),
            _ => 1,
        };
        let rank_threads = (r.threads / in_process_ranks).max(1);
        let shard = Shard { rank: 0, ranks: model_ranks, axis: r.model_parallel.axis() };
        let variant = Variant { weight_split: invoker.weight_split(), shard };
        let dit = self.transformer.session("forward", &shapes, variant, rank_threads)?;
        // Model parallelism: the other ranks of this evaluation's group (threads here, or other
        // processes). An in-process CFG rank 1 leads a group of its own (`new_group` again).
        let new_group = || -> Result<LocalGroup, PipelineError> {
            match r.model_parallel {
                ModelParallel::InProcess { ranks: n, axis } if n > 1 => LocalGroup::spawn(
                    (1..n)
                        .map(|rank| {
                            let variant = Variant { shard: Shard { rank, ranks: n, axis }, ..variant };
                            self.transformer.session("forward", &shapes, variant, rank_threads)
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                _ => Ok(LocalGroup::ALONE),
            }
        };
        let group = RefCell::new(match r.model_parallel {
            ModelParallel::Ranks { comm, .. } if model_ranks > 1 => Group::Ranks(comm.borrow_mut()),
            _ => Group::Local(new_group()?),
        });
        // What one evaluation sends to the other ranks (only when there are any).
        let layout = if model_ranks > 1 { InputLayout::of(&dit)? } else { InputLayout::default() };
        let fps = r.fps;
        let dit_inputs = |input: Vec<f32>, c_noise: f32, uncond: bool| {
            let text = if uncond { &negative_prompt_embeds } else { &prompt_embeds };
            let mut inputs = HashMap::from([
                ("hidden_states".to_string(), CpuTensor::from_vec(latent_shape.to_vec(), input)),
                ("timestep".to_string(), CpuTensor::from_vec(vec![1], vec![c_noise])),
                ("encoder_hidden_states".to_string(), text.clone()),
                ("fps".to_string(), CpuTensor::from_vec(vec![], vec![fps])),
                (
                    "padding_mask".to_string(),
                    CpuTensor::from_vec(padding.to_vec(), vec![0f32; padding.iter().product()]),
                ),
            ]);
            if let Some(cond) = &conditioning {
                inputs.insert("condition_mask".to_string(), cond.mask.clone());
            }
            inputs
        };
        let sample_of = |out: HashMap<String, CpuTensor>| -> Result<Vec<f32>, PipelineError> {
            let sample =
                out.get("sample").ok_or_else(|| PipelineError::Invalid("the transformer gave no `sample`".into()))?;
            Ok(sample.to_f32_vec())
        };
        // One evaluation on this rank's group, as the run's next invocation.
        let evaluate = |inputs: HashMap<String, CpuTensor>, label: &str| match model_ranks {
            1 => invoker.run(&dit, inputs, label),
            _ => invoker.run_with(label, || group.borrow_mut().evaluate(&dit, &layout, inputs)),
        };
        let one_rank = |branches: Vec<Branch>, c_noise: f32| -> Result<Vec<Vec<f32>>, PipelineError> {
            branches
                .into_iter()
                .map(|b| {
                    let label = if b.uncond { "transformer.uncond" } else { "transformer.cond" };
                    sample_of(evaluate(dit_inputs(b.input, c_noise, b.uncond), label)?)
                })
                .collect()
        };
        let sampling = Sampling {
            schedule: &schedule,
            guidance: r.guidance,
            shape: latent_shape,
            precision: self.transformer.precision(),
            pinned: conditioning.as_ref().zip(r.condition.as_ref()).map(|(cond, c)| Pinned {
                latents: &cond.latents,
                frames: cond.frames,
                augment_sigma: c.augment_sigma,
                augment_noise: c.augment_noise,
            }),
        };
        let interrupted = || r.stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed));
        if interrupted() {
            return Err(PipelineError::Interrupted);
        }
        let mut step_latents = Vec::with_capacity(r.steps);
        let mut step_started = Instant::now();
        let initial = r.noise.to_f32_vec().iter().map(|v| v * schedule.init_noise_scale).collect();
        let mut after_step = |i, sigma, x: &[f32]| {
            step_latents.push(CpuTensor::from_vec(latent_shape.to_vec(), x.to_vec()));
            let seconds = step_started.elapsed().as_secs_f64();
            (r.progress)(Stage::Step { step: i, steps: schedule.steps(), sigma, seconds });
            step_started = Instant::now();
            if interrupted() {
                return Err(PipelineError::Interrupted);
            }
            Ok(())
        };
        let cond_rank =
            |input: Vec<f32>, c_noise: f32| sample_of(evaluate(dit_inputs(input, c_noise, false), "transformer.cond")?);
        let result = match (r.cfg_parallel, role) {
            _ if !cfg_parallel => sampling.run(initial, &one_rank, &mut after_step),
            (CfgParallel::Ranks(comm), Role::Lead) => {
                let mut comm = comm.borrow_mut();
                crate::cfg_parallel::lead(&sampling, initial, &cond_rank, &mut *comm, &mut after_step)
            }
            (CfgParallel::Ranks(comm), Role::Serve) => {
                let uncond = |input: Vec<f32>, c_noise: f32| {
                    sample_of(evaluate(dit_inputs(input, c_noise, true), "transformer.uncond")?)
                };
                let served = crate::cfg_parallel::serve(&mut *comm.borrow_mut(), &uncond);
                return group.into_inner().finish(served).map(|()| None);
            }
            _ => {
                // Rank 1 runs the unconditional branch on a session of its own, leading a
                // model-parallel group of its own when there is one.
                let dit1 = self.transformer.session("forward", &shapes, variant, rank_threads)?;
                let group1 = Mutex::new(new_group()?);
                let (started, rank1_spans) = (invoker.started(), Mutex::new(Vec::new()));
                let uncond_rank = |input: Vec<f32>, c_noise: f32| {
                    let start = started.elapsed();
                    let inputs = dit_inputs(input, c_noise, true);
                    let (out, stats) =
                        group1.lock().unwrap_or_else(|e| e.into_inner()).evaluate(&dit1, &layout, inputs)?;
                    rank1_spans.lock().unwrap_or_else(|e| e.into_inner()).push(InvocationSpan {
                        label: "transformer.uncond".into(),
                        start,
                        end: started.elapsed(),
                        peak_live_bytes: stats.peak_live_bytes,
                        rank: 1,
                    });
                    sample_of(out)
                };
                let latents =
                    crate::cfg_parallel::run_in_process(&sampling, initial, &cond_rank, &uncond_rank, &mut after_step);
                invoker.add_spans(rank1_spans.into_inner().unwrap_or_else(|e| e.into_inner()));
                group1.into_inner().unwrap_or_else(|e| e.into_inner()).finish(latents)
            }
        };
        let latents = group.into_inner().finish(result)?;
        let decode_started = Instant::now();

        let stats = latent_statistics(&self.vae_config, 0, latent_shape[2])?;
        let z = to_tokenizer_latents(&latents, &latent_shape, stats.as_ref(), schedule.sigma_data);
        let z = CpuTensor::from_vec(latent_shape.to_vec(), z);
        let decoder =
            self.vae.session("decode", &[("z", &latent_shape)], Variant::split(invoker.weight_split()), r.threads)?;
        let out = invoker.run(&decoder, HashMap::from([("z".to_string(), z)]), "vae.decode")?;
        let decoded_raw = out
            .get("sample")
            .cloned()
            .ok_or_else(|| PipelineError::Invalid("the video decoder gave no `sample`".into()))?;
        (r.progress)(Stage::Decoded { seconds: decode_started.elapsed().as_secs_f64() });
        Ok(Some(GenerateOutput {
            prompt_embeds,
            negative_prompt_embeds,
            sigmas: schedule.sigmas,
            step_latents,
            decoded_raw,
            stream: invoker.stats(),
            stream_events: invoker.events(),
            invocations: invoker.spans(),
            memory,
        }))
    }

    /// Video2World's conditioning: the input frames cut or zero-padded to the output's frame
    /// count, encoded, and mapped into the model's latent space (`(z − μ)·σ_data / s`, diffusers'
    /// order).
    fn conditioning(
        &self,
        invoker: &Invoker,
        c: &Condition,
        r: &GenerateRequest,
        latent_shape: &[usize; 5],
        sigma_data: f32,
    ) -> Result<Conditioning, PipelineError> {
        let dims = c.video.shape();
        if dims.len() != 5 || dims[0] != 1 || dims[1] != 3 || dims[3] != r.height || dims[4] != r.width {
            return Err(PipelineError::Invalid(format!(
                "the input video is {dims:?}; expected [1, 3, frames, {}, {}] (resized to the output first)",
                r.height, r.width
            )));
        }
        let (given, frames) = (dims[2], r.frames);
        let t = self.vae_config.temporal_compression_ratio;
        let plane = r.height * r.width;
        let values = c.video.contiguous().to_f32_vec();
        let mut video = vec![0f32; 3 * frames * plane];
        let (skip, take) = if given >= frames { (given - frames, frames) } else { (0, given) };
        for ch in 0..3 {
            let src = &values[(ch * given + skip) * plane..][..take * plane];
            video[ch * frames * plane..][..take * plane].copy_from_slice(src);
        }
        let cond_frames = (take.min(frames) - 1) / t + 1;
        let sample = [1, 3, frames, r.height, r.width];
        let encoder =
            self.vae.session("encode", &[("sample", &sample)], Variant::split(invoker.weight_split()), r.threads)?;
        let input = CpuTensor::from_vec(vec![1, 3, frames, r.height, r.width], video);
        let out = invoker.run(&encoder, HashMap::from([("sample".to_string(), input)]), "vae.encode")?;
        let z = out.get("latent").ok_or_else(|| PipelineError::Invalid("the video encoder gave no `latent`".into()))?;
        if z.shape() != latent_shape {
            return Err(PipelineError::Invalid(format!("the encoder gave {:?}, expected {latent_shape:?}", z.shape())));
        }
        let [_, _, lt, h, w] = *latent_shape;
        let stats = latent_statistics(&self.vae_config, 0, lt)?;
        let latents = to_model_latents(&z.to_f32_vec(), latent_shape, stats.as_ref(), sigma_data);
        let mask: Vec<f32> =
            (0..lt).flat_map(|f| std::iter::repeat_n(f32::from(u8::from(f < cond_frames)), h * w)).collect();
        Ok(Conditioning { latents, frames: cond_frames, mask: CpuTensor::from_vec(vec![1, 1, lt, h, w], mask) })
    }
}
