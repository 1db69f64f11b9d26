//! NVIDIA Cosmos models: the diffusion transformer (`CosmosTransformer3DModel`) and its block.

mod config;
mod dit_block;
mod transformer;

pub use config::CosmosDitConfig;
pub use dit_block::{dit_block, DitBlockConfig, DitBlockInputs};
pub use transformer::{transformer_graph, CosmosDitShapes};

use crate::component::check_method;
use crate::{Component, ComponentConfig, InputKind, InputSpec, ModelError, WeightTypes};
use orrery_ir::{DType, Graph};
use std::collections::BTreeMap;

/// The diffusion transformer component (diffusers `transformer/`).
#[derive(Clone, Debug)]
pub struct CosmosTransformer3D {
    pub config: CosmosDitConfig,
    pub dtype: Option<DType>,
}

impl CosmosTransformer3D {
    pub fn from_config(config: &ComponentConfig) -> Result<CosmosTransformer3D, ModelError> {
        Ok(CosmosTransformer3D { config: CosmosDitConfig::from_config(config)?, dtype: config.torch_dtype()? })
    }
}

fn spec(name: &str, kind: InputKind, hint: String, optional: bool) -> InputSpec {
    InputSpec { name: name.into(), aliases: vec![], kind, shape_hint: hint, optional }
}

impl Component for CosmosTransformer3D {
    fn class_name(&self) -> &str {
        "CosmosTransformer3DModel"
    }

    fn methods(&self) -> &[&'static str] {
        &["forward"]
    }

    fn inputs(&self, method: &str) -> Result<Vec<InputSpec>, ModelError> {
        check_method(self, method)?;
        let c = &self.config;
        Ok(vec![
            spec("hidden_states", InputKind::Float, "[batch, channels, frames, height, width]".into(), false),
            spec("timestep", InputKind::Float, "[batch] or [batch, 1, frames, 1, 1]".into(), false),
            spec("encoder_hidden_states", InputKind::Float, format!("[batch, text_len, {}]", c.text_in()), false),
            spec("attention_mask", InputKind::Mask, "[batch, text_len]".into(), true),
            spec("fps", InputKind::Scalar, "[] (frames per second; absent: positions unscaled)".into(), true),
            spec("condition_mask", InputKind::Float, "[batch, 1, frames, height, width]".into(), true),
            spec("padding_mask", InputKind::Float, "[1, 1, H_px, W_px] (absent: zeros)".into(), true),
        ])
    }

    fn build(
        &self,
        method: &str,
        shapes: &BTreeMap<String, Vec<usize>>,
        weights: &WeightTypes,
    ) -> Result<Graph, ModelError> {
        check_method(self, method)?;
        let c = &self.config;
        let bad = |name: &str, got: &[usize], expected: String| ModelError::InputShape {
            name: name.into(),
            got: got.to_vec(),
            expected,
        };
        let x = shapes.get("hidden_states").map(Vec::as_slice).unwrap_or(&[]);
        let latent: [usize; 5] =
            x.try_into().map_err(|_| bad("hidden_states", x, "[batch, channels, frames, height, width]".into()))?;
        let [batch, channels, frames, height, width] = latent;
        let cond = shapes.contains_key("condition_mask");
        if channels + usize::from(cond) != c.in_channels {
            return Err(bad(
                "hidden_states",
                x,
                format!(
                    "{} channels{} (in_channels {})",
                    c.in_channels - usize::from(cond),
                    if cond { " plus the condition mask" } else { "" },
                    c.in_channels
                ),
            ));
        }
        let [pt, ph, pw] = c.patch_size;
        if batch == 0
            || !frames.is_multiple_of(pt)
            || !height.is_multiple_of(ph)
            || !width.is_multiple_of(pw)
            || frames * height * width == 0
        {
            return Err(bad(
                "hidden_states",
                x,
                format!("non-empty frames, height, width divisible by {:?}", c.patch_size),
            ));
        }
        let t = shapes.get("timestep").map(Vec::as_slice).unwrap_or(&[]);
        let per_frame = match t {
            [n] if *n == batch => false,
            [n, 1, f, 1, 1] if *n == batch && *f == frames && pt == 1 => true,
            _ => return Err(bad("timestep", t, format!("[{batch}] or [{batch}, 1, {frames}, 1, 1] (patch t = 1)"))),
        };
        let text = shapes.get("encoder_hidden_states").map(Vec::as_slice).unwrap_or(&[]);
        let text_len = match text {
            [n, s, k] if *n == batch && *k == c.text_in() && *s > 0 => *s,
            _ => return Err(bad("encoder_hidden_states", text, format!("[{batch}, text_len, {}]", c.text_in()))),
        };
        if let Some(m) = shapes.get("attention_mask") {
            if m.as_slice() != [batch, text_len] {
                return Err(bad("attention_mask", m, format!("[{batch}, {text_len}]")));
            }
        }
        if let Some(m) = shapes.get("condition_mask") {
            if m.as_slice() != [batch, 1, frames, height, width] {
                return Err(bad("condition_mask", m, format!("[{batch}, 1, {frames}, {height}, {width}]")));
            }
        }
        let padding_mask = match shapes.get("padding_mask").map(Vec::as_slice) {
            None => None,
            Some([1, 1, h, w]) if *h > 0 && *w > 0 => Some([*h, *w]),
            Some(m) => return Err(bad("padding_mask", m, "[1, 1, H_px, W_px]".into())),
        };
        let s = CosmosDitShapes {
            latent,
            text_len,
            per_frame_timestep: per_frame,
            attention_mask: shapes.contains_key("attention_mask"),
            fps: shapes.contains_key("fps"),
            condition_mask: cond,
            padding_mask,
        };
        transformer_graph(c, weights, &s)
    }

    fn config_dtype(&self) -> Option<DType> {
        self.dtype
    }
}
