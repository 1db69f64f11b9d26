//! orrery-models: model builders. Each turns a checkpoint folder's `config.json` into graphs at
//! given input shapes, with weight names equal to the checkpoint keys.
//!
//! [`load_component`] picks the model from the config (`_class_name` for diffusers; for
//! transformers `architectures`, or `model_type` when `architectures` is absent).
//!
//! Architecture invariant: builders only build graphs. They read configs and ask a
//! [`WeightTypes`] for stored dtypes and shapes; they never read tensor data, and never run
//! anything.

mod component;
mod config;
pub mod cosmos;
mod error;
pub mod t5;
mod test_mlp;
mod weight_types;

pub use component::{load_component, Component, InputKind, InputSpec};
pub use config::ComponentConfig;
pub use error::ModelError;
pub use test_mlp::OrreryTestMlp;
pub use weight_types::{Shard, ShardAxis, WeightLookup, WeightPart, WeightTypes};
