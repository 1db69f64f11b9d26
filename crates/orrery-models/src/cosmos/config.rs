//! The diffusers `transformer/config.json` of `CosmosTransformer3DModel`.

use crate::{ComponentConfig, ModelError};
use serde_json::Value;

/// The supported keys (diffusers names). Keys of later diffusers versions that are inert at
/// their defaults are accepted only with those defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct CosmosDitConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub num_layers: usize,
    pub mlp_ratio: f64,
    pub text_embed_dim: usize,
    pub adaln_lora_dim: usize,
    pub max_size: [usize; 3],
    pub patch_size: [usize; 3],
    pub rope_scale: [f64; 3],
    pub concat_padding_mask: bool,
    /// `extra_pos_embed_type: "learnable"` (Cosmos 1.0) or null (Predict2 / 2.5).
    pub learnable_pos_embed: bool,
    pub use_crossattn_projection: bool,
    pub crossattn_proj_in_channels: usize,
    pub encoder_hidden_states_channels: usize,
    /// q/k RMSNorm epsilon: 1e-5 in diffusers' `Attention`, 1e-6 for a Predict1 `model.pt`.
    pub qk_norm_eps: f64,
}

/// Keys of newer diffusers versions and the only values orrery accepts for them (they switch
/// on networks this crate does not build: ControlNet, image context).
const INERT: &[(&str, &str)] = &[
    ("controlnet_block_every_n", "null"),
    ("img_context_dim_in", "null"),
    ("img_context_dim_out", "2048"),
    ("img_context_num_tokens", "256"),
];

const KNOWN: &[&str] = &[
    "in_channels",
    "out_channels",
    "num_attention_heads",
    "attention_head_dim",
    "num_layers",
    "mlp_ratio",
    "text_embed_dim",
    "adaln_lora_dim",
    "max_size",
    "patch_size",
    "rope_scale",
    "concat_padding_mask",
    "extra_pos_embed_type",
    "use_crossattn_projection",
    "crossattn_proj_in_channels",
    "encoder_hidden_states_channels",
];

impl CosmosDitConfig {
    pub fn from_config(config: &ComponentConfig) -> Result<CosmosDitConfig, ModelError> {
        let err = |reason: String| ModelError::Config { path: config.path.display().to_string(), reason };
        let obj = config.json.as_object().ok_or_else(|| err("must be a JSON object".into()))?;
        for (key, value) in obj {
            if key.starts_with('_') || KNOWN.contains(&key.as_str()) {
                continue;
            }
            match INERT.iter().find(|(k, _)| k == key) {
                Some((_, default)) if value.to_string().as_str() == *default => {}
                Some((_, default)) => {
                    return Err(err(format!("`{key}` = {value} is not supported (only {default}, its default)")))
                }
                None => return Err(err(format!("unknown key `{key}` = {value}: orrery does not build this variant"))),
            }
        }
        let get = |key: &str, default: usize| config.opt_usize(key).map(|v| v.unwrap_or(default));
        let triple_usize = |key: &str, default: [usize; 3]| -> Result<[usize; 3], ModelError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => {
                    let a: Vec<usize> = v
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect())
                        .unwrap_or_default();
                    a.try_into().map_err(|_| err(format!("`{key}` must be three non-negative integers, got {v}")))
                }
            }
        };
        let triple_f64 = |key: &str, default: [f64; 3]| -> Result<[f64; 3], ModelError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => {
                    let a: Vec<f64> =
                        v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
                    a.try_into().map_err(|_| err(format!("`{key}` must be three numbers, got {v}")))
                }
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool, ModelError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(err(format!("`{key}` must be true or false, got {v}"))),
            }
        };
        let learnable_pos_embed = match obj.get("extra_pos_embed_type") {
            None => true,
            Some(Value::Null) => false,
            Some(Value::String(s)) if s == "learnable" => true,
            Some(v) => return Err(err(format!("`extra_pos_embed_type` must be \"learnable\" or null, got {v}"))),
        };
        let c = CosmosDitConfig {
            in_channels: get("in_channels", 16)?,
            out_channels: get("out_channels", 16)?,
            num_attention_heads: get("num_attention_heads", 32)?,
            attention_head_dim: get("attention_head_dim", 128)?,
            num_layers: get("num_layers", 28)?,
            mlp_ratio: config.opt_f64("mlp_ratio")?.unwrap_or(4.0),
            text_embed_dim: get("text_embed_dim", 1024)?,
            adaln_lora_dim: get("adaln_lora_dim", 256)?,
            max_size: triple_usize("max_size", [128, 240, 240])?,
            patch_size: triple_usize("patch_size", [1, 2, 2])?,
            rope_scale: triple_f64("rope_scale", [2.0, 1.0, 1.0])?,
            concat_padding_mask: flag("concat_padding_mask", true)?,
            learnable_pos_embed,
            use_crossattn_projection: flag("use_crossattn_projection", false)?,
            crossattn_proj_in_channels: get("crossattn_proj_in_channels", 1024)?,
            encoder_hidden_states_channels: get("encoder_hidden_states_channels", 1024)?,
            qk_norm_eps: 1e-5,
        };
        let positive = [
            ("in_channels", c.in_channels),
            ("out_channels", c.out_channels),
            ("num_attention_heads", c.num_attention_heads),
            ("attention_head_dim", c.attention_head_dim),
            ("text_embed_dim", c.text_embed_dim),
            ("adaln_lora_dim", c.adaln_lora_dim),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(err(format!("`{key}` must be positive")));
        }
        if c.patch_size.contains(&0) || c.max_size.iter().zip(&c.patch_size).any(|(m, p)| !m.is_multiple_of(*p)) {
            return Err(err(format!("`patch_size` {:?} must divide `max_size` {:?}", c.patch_size, c.max_size)));
        }
        if c.attention_head_dim < 6 || !c.attention_head_dim.is_multiple_of(2) {
            return Err(err(format!(
                "`attention_head_dim` {} must be even and at least 6 (3-D RoPE)",
                c.attention_head_dim
            )));
        }
        if !c.hidden().is_multiple_of(2) {
            return Err(err("the model width (heads × head dim) must be even (sinusoidal time embedding)".into()));
        }
        let mlp = c.mlp_ratio * c.hidden() as f64;
        if c.mlp_ratio <= 0.0 || mlp.fract() != 0.0 {
            return Err(err(format!("`mlp_ratio` {} must give a whole MLP width", c.mlp_ratio)));
        }
        if c.use_crossattn_projection && c.encoder_hidden_states_channels != c.text_embed_dim {
            return Err(err(format!(
                "`encoder_hidden_states_channels` {} must equal `text_embed_dim` {} (the cross-attention reads the projection)",
                c.encoder_hidden_states_channels, c.text_embed_dim
            )));
        }
        Ok(c)
    }

    /// Model width D = heads × head dim.
    pub fn hidden(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.mlp_ratio * self.hidden() as f64) as usize
    }

    /// Features per patch after the mask channels: (in_channels + padding) · pt · ph · pw.
    pub fn patch_features(&self) -> usize {
        (self.in_channels + usize::from(self.concat_padding_mask)) * self.patch_size.iter().product::<usize>()
    }

    /// Width of the text fed to the model (before the optional projection).
    pub fn text_in(&self) -> usize {
        if self.use_crossattn_projection {
            self.crossattn_proj_in_channels
        } else {
            self.text_embed_dim
        }
    }
}
