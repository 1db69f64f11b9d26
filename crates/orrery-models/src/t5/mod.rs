//! The T5 text encoder (transformers `T5EncoderModel`; Cosmos uses t5-11b's encoder).
//!
//! config.json: a transformers T5 config. Classes `T5EncoderModel`, `T5ForConditionalGeneration`,
//! `T5WithLMHeadModel` and `T5Model` (or `model_type: "t5"` without `architectures`) all run
//! the encoder; the decoder's weights in a full checkpoint are never read. Absent keys take
//! transformers' `T5Config` defaults; `feed_forward_proj` absent means `relu` (t5-11b),
//! `gated-gelu` is T5 v1.1 (tanh-approximated GELU gate).
//!
//! Method `forward`: inputs `input_ids` `[batch, seq]` (int) and optional `attention_mask`
//! `[batch, seq]` (1 = token, 0 = padding; all ones when absent); output `last_hidden_state`
//! `[batch, seq, d_model]` f32, padded rows included, as transformers returns them.

mod buckets;
mod encoder;

pub use buckets::{bidirectional_bucket, bucket_table};
pub use encoder::{encoder_graph, FeedForward, T5EncoderConfig};

use crate::component::check_method;
use crate::{Component, ComponentConfig, InputKind, InputSpec, ModelError, WeightTypes};
use orrery_ir::{DType, Graph};
use std::collections::BTreeMap;

/// Class names whose encoder orrery runs.
pub const T5_CLASSES: &[&str] = &["T5EncoderModel", "T5ForConditionalGeneration", "T5WithLMHeadModel", "T5Model"];

/// True when `config` describes a T5 model (by any `architectures` entry, or by `model_type`
/// when `architectures` is absent).
pub fn is_t5(config: &ComponentConfig) -> bool {
    match config.json.get("architectures").and_then(|a| a.as_array()) {
        Some(list) => list.iter().filter_map(|c| c.as_str()).any(|c| T5_CLASSES.contains(&c)),
        None => config.json.get("model_type").and_then(|m| m.as_str()) == Some("t5"),
    }
}

/// The T5 encoder component.
#[derive(Clone, Debug)]
pub struct T5Encoder {
    pub config: T5EncoderConfig,
    pub dtype: Option<DType>,
}

impl T5Encoder {
    pub fn from_config(config: &ComponentConfig) -> Result<T5Encoder, ModelError> {
        Ok(T5Encoder { config: T5EncoderConfig::from_config(config)?, dtype: config.torch_dtype()? })
    }
}

impl Component for T5Encoder {
    fn class_name(&self) -> &str {
        "T5EncoderModel"
    }

    fn methods(&self) -> &[&'static str] {
        &["forward"]
    }

    fn inputs(&self, method: &str) -> Result<Vec<InputSpec>, ModelError> {
        check_method(self, method)?;
        Ok(vec![
            InputSpec {
                name: "input_ids".into(),
                aliases: vec!["ids".into()],
                kind: InputKind::Int,
                shape_hint: "[batch, seq]".into(),
                optional: false,
            },
            InputSpec {
                name: "attention_mask".into(),
                aliases: vec!["mask".into()],
                kind: InputKind::Mask,
                shape_hint: "[batch, seq] (same as input_ids)".into(),
                optional: true,
            },
        ])
    }

    fn build(
        &self,
        method: &str,
        shapes: &BTreeMap<String, Vec<usize>>,
        weights: &WeightTypes,
    ) -> Result<Graph, ModelError> {
        check_method(self, method)?;
        let ids = shapes.get("input_ids").ok_or_else(|| ModelError::InputShape {
            name: "input_ids".into(),
            got: vec![],
            expected: "[batch, seq]".into(),
        })?;
        let [batch, seq] = ids[..] else {
            return Err(ModelError::InputShape {
                name: "input_ids".into(),
                got: ids.clone(),
                expected: "[batch, seq]".into(),
            });
        };
        if batch == 0 || seq == 0 {
            return Err(ModelError::InputShape {
                name: "input_ids".into(),
                got: ids.clone(),
                expected: "[batch, seq] with batch and seq ≥ 1".into(),
            });
        }
        let with_mask = match shapes.get("attention_mask") {
            None => false,
            Some(m) if m == ids => true,
            Some(m) => {
                return Err(ModelError::InputShape {
                    name: "attention_mask".into(),
                    got: m.clone(),
                    expected: format!("{ids:?} (the shape of input_ids)"),
                })
            }
        };
        encoder_graph(&self.config, weights, batch, seq, with_mask)
    }

    fn config_dtype(&self) -> Option<DType> {
        self.dtype
    }
}
