//! The component contract every model implements, and the registry choosing one from a config.

use crate::{t5, ComponentConfig, ModelError, OrreryTestMlp, Shard, WeightTypes};
use orrery_ir::Graph;
use std::collections::BTreeMap;
use std::path::Path;

/// What kind of tensor an input accepts; the caller converts to the graph's dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// f32, f16 or bf16; the graph receives f32.
    Float,
    /// i64 or i32; the graph receives i64.
    Int,
    /// i64, i32, bool or u8, nonzero = attend; the graph receives i64 0/1. Floats are refused.
    Mask,
    /// A 0-d or 1-element tensor of any numeric dtype carrying one number; the graph receives
    /// an f32 `[]`.
    Scalar,
}

/// One named input of a component method.
#[derive(Clone, Debug)]
pub struct InputSpec {
    pub name: String,
    /// Other accepted names (e.g. `x` for `sample`).
    pub aliases: Vec<String>,
    pub kind: InputKind,
    /// The expected shape for messages, e.g. `[batch..., 8]`.
    pub shape_hint: String,
    /// Optional inputs may be omitted; the builder then uses what the reference pipeline passes.
    pub optional: bool,
}

/// A model component (a diffusers or transformers folder) that builds graphs per input shapes.
pub trait Component: Send + Sync {
    fn class_name(&self) -> &str;
    /// Methods the component supports (`forward`, `encode`, `decode`).
    fn methods(&self) -> &[&'static str];
    fn inputs(&self, method: &str) -> Result<Vec<InputSpec>, ModelError>;
    /// Builds the method's graph for the given input shapes (names are the specs' canonical
    /// names; optional inputs may be absent). Graph inputs use the converted dtypes of
    /// [`InputKind`]; outputs are f32.
    fn build(
        &self,
        method: &str,
        shapes: &BTreeMap<String, Vec<usize>>,
        weights: &WeightTypes,
    ) -> Result<Graph, ModelError>;

    /// [`Component::build`] for one rank of a tensor-parallel group: the graph reads only
    /// that rank's part of the sharded weights and sums partial results with
    /// `Op::AllReduce`. Components that cannot be sharded refuse any `shard` but the whole.
    fn build_sharded(
        &self,
        method: &str,
        shapes: &BTreeMap<String, Vec<usize>>,
        weights: &WeightTypes,
        shard: Shard,
    ) -> Result<Graph, ModelError> {
        if !shard.is_whole() {
            return Err(ModelError::Parallel {
                class: self.class_name().to_string(),
                reason: "this component has no tensor-parallel form".into(),
            });
        }
        self.build(method, shapes, weights)
    }

    /// The dtype weights are stored in according to the config (`torch_dtype`), if it says.
    fn config_dtype(&self) -> Option<orrery_ir::DType>;
}

/// Every class name orrery can build, for error messages.
pub const SUPPORTED_CLASSES: &[&str] = &[
    "OrreryTestMlp",
    "CosmosTransformer3DModel",
    "T5EncoderModel",
    "T5ForConditionalGeneration",
    "T5WithLMHeadModel",
    "T5Model",
];

/// Reads `path` (a component folder or a config.json) and returns its model.
pub fn load_component(path: &Path) -> Result<Box<dyn Component>, ModelError> {
    let config = ComponentConfig::read(path)?;
    if t5::is_t5(&config) {
        return Ok(Box::new(t5::T5Encoder::from_config(&config)?));
    }
    match config.class.as_str() {
        "OrreryTestMlp" => Ok(Box::new(OrreryTestMlp::from_config(&config)?)),
        "CosmosTransformer3DModel" => Ok(Box::new(crate::cosmos::CosmosTransformer3D::from_config(&config)?)),
        "AutoencoderKLCosmos" => Ok(Box::new(crate::cosmos::CosmosVae::from_config(&config)?)),
        other => Err(ModelError::UnknownClass {
            path: config.path.display().to_string(),
            class: other.to_string(),
            supported: SUPPORTED_CLASSES.join(", "),
        }),
    }
}

/// Checks `method` against `component.methods()`.
pub(crate) fn check_method(component: &dyn Component, method: &str) -> Result<(), ModelError> {
    if component.methods().contains(&method) {
        Ok(())
    } else {
        Err(ModelError::UnknownMethod {
            class: component.class_name().to_string(),
            method: method.to_string(),
            methods: component.methods().join(", "),
        })
    }
}
