//! Text2World over a diffusers `CosmosTextToWorldPipeline` folder: the prompt and negative
//! prompt through the T5 encoder, the denoising loop (the diffusion transformer twice per step,
//! classifier-free guidance on the denoised estimates, an Euler step), then the latents into the
//! tokenizer's space and through its decoder (cosmos-reference §1, §4; diffusers
//! `pipeline_cosmos_text2world.py`).

use crate::{classifier_free_guidance, euler_step, EdmSchedulerConfig, PipelineError, Schedule};
use orrery_compiler::{compile, Plan};
use orrery_cpu::CpuTensor;
use orrery_formats::WeightSource;
use orrery_models::cosmos::{latent_statistics, CosmosVaeConfig, LatentStatistics};
use orrery_models::{load_component, Component, ComponentConfig, WeightTypes};
use orrery_runtime::{FormatWeights, Session};
use orrery_text::T5Tokenizer;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// diffusers' `DEFAULT_NEGATIVE_PROMPT` for the Cosmos pipelines (used when none is given).
pub const DEFAULT_NEGATIVE_PROMPT: &str = "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. Overall, the video is of poor quality.";

/// One component folder: its builder and its weights.
struct Part {
    dir: PathBuf,
    component: Box<dyn Component>,
    weights: Arc<FormatWeights>,
}

impl Part {
    fn load(root: &Path, name: &str) -> Result<Part, PipelineError> {
        let dir = root.join(name);
        if !dir.join("config.json").is_file() {
            return Err(PipelineError::Invalid(format!(
                "{}: the pipeline has no `{name}` component (expected {}/config.json)",
                root.display(),
                dir.display()
            )));
        }
        let component = load_component(&dir)?;
        let weights = Arc::new(FormatWeights::new(orrery_formats::open_weights(&dir)?));
        Ok(Part { dir, component, weights })
    }

    /// The plan of `method` at `shapes`, weights typed as stored.
    fn plan(&self, method: &str, shapes: &BTreeMap<String, Vec<usize>>) -> Result<Plan, PipelineError> {
        let source: &dyn WeightSource = self.weights.source();
        let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape.clone()));
        let graph = self.component.build(method, shapes, &WeightTypes::Checkpoint(&lookup))?;
        Ok(compile(graph)?)
    }

    fn session(&self, method: &str, shapes: &[(&str, &[usize])], threads: usize) -> Result<Session, PipelineError> {
        let shapes = shapes.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
        Ok(Session::new(self.plan(method, &shapes)?, self.weights.clone(), threads)?)
    }
}

/// A loaded Text2World pipeline.
pub struct Text2World {
    root: PathBuf,
    tokenizer: T5Tokenizer,
    text_encoder: Part,
    transformer: Part,
    vae: Part,
    vae_config: CosmosVaeConfig,
    scheduler: EdmSchedulerConfig,
    /// Components in `model_index.json` that orrery does not run (the safety checker).
    pub skipped: Vec<String>,
}

/// What to generate. `noise` is standard normal noise of the latent shape
/// ([1, C, 1 + (frames − 1)/8, height/8, width/8]); it is scaled as the sampler scales its own.
pub struct Text2WorldRequest<'a> {
    pub prompt: &'a str,
    /// `None`: diffusers' default negative prompt.
    pub negative_prompt: Option<&'a str>,
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub steps: usize,
    pub guidance: f32,
    pub fps: f32,
    pub noise: &'a CpuTensor,
    pub max_text_len: usize,
    pub threads: usize,
    /// Told as each stage ends (for progress output).
    pub progress: &'a dyn Fn(Stage),
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
pub struct Text2WorldOutput {
    pub prompt_embeds: CpuTensor,
    pub negative_prompt_embeds: CpuTensor,
    pub sigmas: Vec<f32>,
    /// The latents after each step (in the sampler's σ-scaled space).
    pub step_latents: Vec<CpuTensor>,
    /// The decoder's output before clamping: [1, 3, frames, height, width], about [-1, 1].
    pub decoded_raw: CpuTensor,
}

impl Text2World {
    /// Loads a diffusers pipeline folder (`model_index.json` and its component folders).
    pub fn load(root: &Path) -> Result<Text2World, PipelineError> {
        let index_path = root.join("model_index.json");
        let index: serde_json::Value = std::fs::read_to_string(&index_path)
            .map_err(|e| PipelineError::Config { path: index_path.display().to_string(), reason: e.to_string() })
            .and_then(|t| {
                serde_json::from_str(&t).map_err(|e| PipelineError::Config {
                    path: index_path.display().to_string(),
                    reason: e.to_string(),
                })
            })?;
        match index.get("_class_name").and_then(|v| v.as_str()) {
            Some("CosmosTextToWorldPipeline") => {}
            other => {
                return Err(PipelineError::Config {
                    path: index_path.display().to_string(),
                    reason: format!("`_class_name` is {other:?}, expected \"CosmosTextToWorldPipeline\""),
                })
            }
        }
        let run = ["text_encoder", "tokenizer", "transformer", "vae", "scheduler"];
        let skipped = index
            .as_object()
            .map(|o| o.keys().filter(|k| !k.starts_with('_') && !run.contains(&k.as_str())).cloned().collect())
            .unwrap_or_default();
        let vae = Part::load(root, "vae")?;
        let vae_config = CosmosVaeConfig::from_config(&ComponentConfig::read(&vae.dir)?)?;
        Ok(Text2World {
            root: root.to_path_buf(),
            tokenizer: T5Tokenizer::from_dir(&root.join("tokenizer"))?,
            text_encoder: Part::load(root, "text_encoder")?,
            transformer: Part::load(root, "transformer")?,
            vae,
            vae_config,
            scheduler: EdmSchedulerConfig::read(&root.join("scheduler"))?,
            skipped,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The T5 embeddings of `prompt` padded to `len` tokens, with the rows past the prompt's
    /// tokens set to zero (as diffusers does after encoding).
    pub fn encode_prompt(&self, prompt: &str, len: usize, threads: usize) -> Result<CpuTensor, PipelineError> {
        let e = self.tokenizer.encode(prompt, len)?;
        let shape = [1, len];
        let session =
            self.text_encoder.session("forward", &[("input_ids", &shape), ("attention_mask", &shape)], threads)?;
        let inputs = HashMap::from([
            ("input_ids".to_string(), CpuTensor::from_vec(shape.to_vec(), e.ids.clone())),
            ("attention_mask".to_string(), CpuTensor::from_vec(shape.to_vec(), e.attention_mask.clone())),
        ]);
        let (out, _) = session.run_owned(inputs)?;
        let hidden = out
            .get("last_hidden_state")
            .ok_or_else(|| PipelineError::Invalid("the text encoder gave no `last_hidden_state`".into()))?;
        let d = hidden.shape()[2];
        let mut values = hidden.to_f32_vec();
        values[e.length * d..].fill(0.0);
        Ok(CpuTensor::from_vec(vec![1, len, d], values))
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
    pub fn generate(&self, r: &Text2WorldRequest) -> Result<Text2WorldOutput, PipelineError> {
        let latent_shape = self.latent_shape(r.height, r.width, r.frames)?;
        if r.noise.shape() != latent_shape {
            return Err(PipelineError::Invalid(format!(
                "the initial noise has shape {:?}, the latents are {latent_shape:?}",
                r.noise.shape()
            )));
        }
        let started = Instant::now();
        let prompt_embeds = self.encode_prompt(r.prompt, r.max_text_len, r.threads)?;
        let negative = r.negative_prompt.unwrap_or(DEFAULT_NEGATIVE_PROMPT);
        let negative_prompt_embeds = self.encode_prompt(negative, r.max_text_len, r.threads)?;
        (r.progress)(Stage::TextEncoded { seconds: started.elapsed().as_secs_f64() });

        let schedule = Schedule::diffusers(&self.scheduler, r.steps)?;
        let text_shape = prompt_embeds.shape().to_vec();
        let padding = [1, 1, r.height, r.width];
        let dit = self.transformer.session(
            "forward",
            &[
                ("hidden_states", &latent_shape),
                ("timestep", &[1]),
                ("encoder_hidden_states", &text_shape),
                ("fps", &[]),
                ("padding_mask", &padding),
            ],
            r.threads,
        )?;
        let mut latents: Vec<f32> = r.noise.to_f32_vec().iter().map(|v| v * schedule.init_noise_scale).collect();
        let n = latents.len();
        let mut step_latents = Vec::with_capacity(r.steps);
        let (mut scaled, mut x0_cond, mut x0_uncond, mut guided) =
            (vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        for i in 0..schedule.steps() {
            let step_started = Instant::now();
            let p = schedule.preconditioning(i);
            p.scale_input(&latents, &mut scaled);
            let run = |text: &CpuTensor| -> Result<Vec<f32>, PipelineError> {
                let inputs = HashMap::from([
                    ("hidden_states".to_string(), CpuTensor::from_vec(latent_shape.to_vec(), scaled.clone())),
                    ("timestep".to_string(), CpuTensor::from_vec(vec![1], vec![p.c_noise])),
                    ("encoder_hidden_states".to_string(), text.clone()),
                    ("fps".to_string(), CpuTensor::from_vec(vec![], vec![r.fps])),
                    (
                        "padding_mask".to_string(),
                        CpuTensor::from_vec(padding.to_vec(), vec![0f32; padding.iter().product()]),
                    ),
                ]);
                let (out, _) = dit.run_owned(inputs)?;
                let sample = out
                    .get("sample")
                    .ok_or_else(|| PipelineError::Invalid("the transformer gave no `sample`".into()))?;
                Ok(sample.to_f32_vec())
            };
            let f_cond = run(&prompt_embeds)?;
            p.denoised(&latents, &f_cond, &mut x0_cond);
            if r.guidance > 1.0 {
                let f_uncond = run(&negative_prompt_embeds)?;
                p.denoised(&latents, &f_uncond, &mut x0_uncond);
                classifier_free_guidance(&x0_cond, &x0_uncond, r.guidance, &mut guided);
            } else {
                guided.copy_from_slice(&x0_cond);
            }
            euler_step(&mut latents, &guided, schedule.sigmas[i], schedule.sigmas[i + 1]);
            step_latents.push(CpuTensor::from_vec(latent_shape.to_vec(), latents.clone()));
            let seconds = step_started.elapsed().as_secs_f64();
            (r.progress)(Stage::Step { step: i, steps: schedule.steps(), sigma: p.sigma, seconds });
        }
        let decode_started = Instant::now();

        let z = self.to_tokenizer_latents(&latents, &latent_shape, schedule.sigma_data)?;
        let decoder = self.vae.session("decode", &[("z", &latent_shape)], r.threads)?;
        let (out, _) = decoder.run_owned(HashMap::from([("z".to_string(), z)]))?;
        let decoded_raw = out
            .get("sample")
            .cloned()
            .ok_or_else(|| PipelineError::Invalid("the video decoder gave no `sample`".into()))?;
        (r.progress)(Stage::Decoded { seconds: decode_started.elapsed().as_secs_f64() });
        Ok(Text2WorldOutput {
            prompt_embeds,
            negative_prompt_embeds,
            sigmas: schedule.sigmas,
            step_latents,
            decoded_raw,
        })
    }

    /// Model latents → tokenizer latents: `latents · s / σ_data + μ` per channel and latent frame
    /// (diffusers' order of operations), or `latents / σ_data` without statistics.
    fn to_tokenizer_latents(
        &self,
        latents: &[f32],
        shape: &[usize; 5],
        sigma_data: f32,
    ) -> Result<CpuTensor, PipelineError> {
        let [_, c, t, h, w] = *shape;
        let values = match latent_statistics(&self.vae_config, 0, t)? {
            Some(LatentStatistics { mean, std }) => latents
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let (ch, frame) = ((i / (t * h * w)) % c, (i / (h * w)) % t);
                    let k = ch * t + frame;
                    v * std[k] as f32 / sigma_data + mean[k] as f32
                })
                .collect(),
            None => latents.iter().map(|v| v / sigma_data).collect(),
        };
        Ok(CpuTensor::from_vec(shape.to_vec(), values))
    }
}
