//! orrery-pipeline: the Cosmos world-generation pipelines. [`CosmosPipeline`] loads a diffusers
//! pipeline folder and runs prompt → T5 embeddings → denoising loop → video decoder; the loop's
//! own arithmetic (the noise schedule, the EDM preconditioning, the Euler update and
//! classifier-free guidance, cosmos-reference §4) works on plain f32 slices, while the models
//! run through the runtime's sessions.
//!
//! Two samplers exist and results depend on which one a checkpoint was made for:
//! - [`SamplerKind::DiffusersEdm`]: diffusers' `EDMEulerScheduler` as its Cosmos pipelines use
//!   it (a Karras grid computed in float64 and rounded to f32, a final σ of `sigma_min` or 0
//!   from `scheduler_config.json`, initial noise × σ_max);
//! - [`SamplerKind::Predict1`]: NVIDIA's cosmos-predict1 loop (35 steps from 80 to 0.0002 on
//!   an f32 ramp, then 0; initial noise × √(80² + 1)).

mod cfg_parallel;
mod cosmos_pipeline;
mod denoise;
mod disk_plans;
mod error;
mod hub;
mod latent_space;
mod memory_budget;
mod model_parallel;
mod noise;
mod parallel_layout;
mod part;
mod prediction;
mod sampler;
mod scheduler_config;
mod synthetic;

pub use cosmos_pipeline::{
    CfgParallel, Condition, CosmosPipeline, Estimate, GenerateOutput, GenerateRequest, RunSize, Stage,
    DEFAULT_NEGATIVE_PROMPT,
};
pub use denoise::Precision;
pub use disk_plans::PlanCacheStats;
pub use error::PipelineError;
pub use hub::{resolve_model, resolve_model_with};
pub use latent_space::{to_model_latents, to_tokenizer_latents};
pub use memory_budget::{cpu_issue_model, InvocationSpan, MemoryBudget, MemoryPlan};
pub use model_parallel::ModelParallel;
pub use noise::{standard_normal, video_frames_u8};
pub use parallel_layout::{step_communication, ParallelLayout, StepCommunication};
pub use prediction::{Prediction, Target};
pub use sampler::{classifier_free_guidance, euler_step, Preconditioning, SamplerKind, Schedule};
pub use scheduler_config::{EdmSchedulerConfig, FinalSigmas, SigmaSchedule};
pub use synthetic::{write_synthetic_pipeline, SyntheticSize};
