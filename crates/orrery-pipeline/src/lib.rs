//! orrery-pipeline: what the Cosmos Text2World and Video2World pipelines compute between the
//! models: the noise schedule, the EDM preconditioning, the Euler update and classifier-free
//! guidance (cosmos-reference §4). Tensors here are plain f32 slices: the models run through
//! the runtime, this crate only combines their outputs.
//!
//! Two samplers exist and results depend on which one a checkpoint was made for:
//! - [`SamplerKind::DiffusersEdm`]: diffusers' `EDMEulerScheduler` as its Cosmos pipelines use
//!   it (a Karras grid computed in float64 and rounded to f32, a final σ of `sigma_min` or 0
//!   from `scheduler_config.json`, initial noise × σ_max);
//! - [`SamplerKind::Predict1`]: NVIDIA's cosmos-predict1 loop (35 steps from 80 to 0.0002 on
//!   an f32 ramp, then 0; initial noise × √(80² + 1)).

mod error;
mod sampler;
mod scheduler_config;

pub use error::PipelineError;
pub use sampler::{classifier_free_guidance, euler_step, Preconditioning, SamplerKind, Schedule};
pub use scheduler_config::{EdmSchedulerConfig, FinalSigmas, SigmaSchedule};
