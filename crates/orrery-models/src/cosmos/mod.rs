//! NVIDIA Cosmos models: the diffusion transformer (`CosmosTransformer3DModel`) and its block.

mod config;
mod dit_block;
mod latent_stats;
mod transformer;
mod vae;

pub use config::CosmosDitConfig;
pub use dit_block::{dit_block, DitBlockConfig, DitBlockInputs};
pub use latent_stats::{latent_statistics, LatentStatistics};
pub use transformer::{transformer_graph, transformer_graph_sharded, CosmosDitShapes};
pub use vae::{decoder_chunk_graph, decoder_graph, encoder_chunk_graph, encoder_graph, CosmosVaeConfig, TemporalChunk};

use crate::component::check_method;
use crate::{Component, ComponentConfig, InputKind, InputSpec, ModelError, Shard, ShardAxis, WeightTypes};
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
        self.build_sharded(method, shapes, weights, Shard::WHOLE)
    }

    fn build_sharded(
        &self,
        method: &str,
        shapes: &BTreeMap<String, Vec<usize>>,
        weights: &WeightTypes,
        shard: Shard,
    ) -> Result<Graph, ModelError> {
        check_method(self, method)?;
        let c = &self.config;
        let n = shard.ranks;
        let parallel = |reason: String| ModelError::Parallel { class: self.class_name().to_string(), reason };
        if n == 0 || shard.rank >= n {
            return Err(parallel(format!("rank {} of {n} ranks does not exist", shard.rank)));
        }
        let divides =
            c.num_attention_heads.is_multiple_of(n) && (shard.splits_tokens() || c.mlp_hidden().is_multiple_of(n));
        if !divides {
            let (what, flag) = match shard.axis {
                ShardAxis::Heads => {
                    (format!("{} heads and MLP width {}", c.num_attention_heads, c.mlp_hidden()), "--tp")
                }
                ShardAxis::Tokens => (format!("{} heads", c.num_attention_heads), "--sp"),
            };
            return Err(parallel(format!(
                "cannot run as rank {} of {n} parallel ranks: its {what} must divide by the rank count (choose {flag} \
                 among the divisors)",
                shard.rank
            )));
        }
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
        let tokens = (frames / pt) * (height / ph) * (width / pw);
        if shard.splits_tokens() && !tokens.is_multiple_of(n) {
            return Err(parallel(format!(
                "cannot split its {tokens} tokens (latent {frames} × {height} × {width} in patches of {:?}) over {n} \
                 sequence-parallel ranks: choose --sp among the divisors of {tokens}",
                c.patch_size
            )));
        }
        let s = CosmosDitShapes {
            latent,
            text_len,
            per_frame_timestep: per_frame,
            attention_mask: shapes.contains_key("attention_mask"),
            fps: shapes.contains_key("fps"),
            condition_mask: cond,
            padding_mask,
        };
        // A Predict1 `model.pt` keeps the original `net.*` names and TE's q/k norm eps.
        if weights.contains(&predict1_key("patch_embed.proj.weight")) {
            let renamed = WeightTypes::Renamed { inner: weights, rename: &predict1_key };
            let c = CosmosDitConfig { qk_norm_eps: 1e-6, ..c.clone() };
            return transformer_graph_sharded(&c, &renamed, &s, shard);
        }
        transformer_graph_sharded(c, weights, &s, shard)
    }

    fn config_dtype(&self) -> Option<DType> {
        self.dtype
    }
}

/// The video tokenizer component (diffusers `vae/`, `AutoencoderKLCosmos`).
#[derive(Clone, Debug)]
pub struct CosmosVae {
    pub config: CosmosVaeConfig,
    pub dtype: Option<DType>,
}

impl CosmosVae {
    pub fn from_config(config: &ComponentConfig) -> Result<CosmosVae, ModelError> {
        Ok(CosmosVae { config: CosmosVaeConfig::from_config(config)?, dtype: config.torch_dtype()? })
    }
}

impl Component for CosmosVae {
    fn class_name(&self) -> &str {
        "AutoencoderKLCosmos"
    }

    fn methods(&self) -> &[&'static str] {
        &["encode", "decode"]
    }

    fn inputs(&self, method: &str) -> Result<Vec<InputSpec>, ModelError> {
        check_method(self, method)?;
        let c = &self.config;
        Ok(match method {
            "encode" => vec![InputSpec {
                name: "sample".into(),
                aliases: vec!["x".into()],
                kind: InputKind::Float,
                shape_hint: format!(
                    "[batch, {}, 1 + 8k frames, H, W] (H, W multiples of 8, values in [-1, 1])",
                    c.in_channels
                ),
                optional: false,
            }],
            _ => vec![InputSpec {
                name: "z".into(),
                aliases: vec!["latent".into()],
                kind: InputKind::Float,
                shape_hint: format!("[batch, {}, T, h, w]", c.latent_channels),
                optional: false,
            }],
        })
    }

    fn build(
        &self,
        method: &str,
        shapes: &BTreeMap<String, Vec<usize>>,
        weights: &WeightTypes,
    ) -> Result<Graph, ModelError> {
        let specs = self.inputs(method)?;
        let spec = &specs[0];
        let shape = shapes.get(&spec.name).map(Vec::as_slice).unwrap_or(&[]);
        let bad = || ModelError::InputShape {
            name: spec.name.clone(),
            got: shape.to_vec(),
            expected: spec.shape_hint.clone(),
        };
        let s: [usize; 5] = shape.try_into().map_err(|_| bad())?;
        let c = &self.config;
        let spatial = c.spatial_compression_ratio;
        if method == "encode" {
            if s[0] == 0
                || s[1] != c.in_channels
                || s[2] == 0
                || s[3] == 0
                || s[4] == 0
                || !s[3].is_multiple_of(spatial)
                || !s[4].is_multiple_of(spatial)
            {
                return Err(bad());
            }
            encoder_graph(c, weights, s)
        } else {
            if s[0] == 0 || s[1] != c.latent_channels || s[2] == 0 || s[3] == 0 || s[4] == 0 {
                return Err(bad());
            }
            decoder_graph(c, weights, s)
        }
    }

    fn config_dtype(&self) -> Option<DType> {
        self.dtype
    }
}

/// The key of diffusers weight `name` in an original Predict1 / Cosmos-1.0 `model.pt`
/// (`net.*`; the inverse of diffusers' `TRANSFORMER_KEYS_RENAME_DICT_COSMOS_1_0`, see
/// `shared/cosmos-reference.md` §3.5). Names it does not know keep their diffusers spelling
/// under `net.`, so a missing weight is reported by that name.
pub fn predict1_key(name: &str) -> String {
    let fixed = match name {
        "patch_embed.proj.weight" => Some("x_embedder.proj.1.weight".to_string()),
        "time_embed.t_embedder.linear_1.weight" => Some("t_embedder.1.linear_1.weight".into()),
        "time_embed.t_embedder.linear_2.weight" => Some("t_embedder.1.linear_2.weight".into()),
        "time_embed.norm.weight" => Some("affline_norm.weight".into()),
        "norm_out.linear_1.weight" => Some("final_layer.adaLN_modulation.1.weight".into()),
        "norm_out.linear_2.weight" => Some("final_layer.adaLN_modulation.2.weight".into()),
        "proj_out.weight" => Some("final_layer.linear.weight".into()),
        _ => name.strip_prefix("learnable_pos_embed.").map(|rest| format!("extra_pos_embedder.{rest}")),
    };
    if let Some(key) = fixed {
        return format!("net.{key}");
    }
    let block = name.strip_prefix("transformer_blocks.").and_then(|rest| rest.split_once('.'));
    let Some((i, rest)) = block else { return format!("net.{name}") };
    let sub = match rest {
        "norm1.linear_1.weight" => "blocks.0.adaLN_modulation.1.weight".to_string(),
        "norm1.linear_2.weight" => "blocks.0.adaLN_modulation.2.weight".into(),
        "norm2.linear_1.weight" => "blocks.1.adaLN_modulation.1.weight".into(),
        "norm2.linear_2.weight" => "blocks.1.adaLN_modulation.2.weight".into(),
        "norm3.linear_1.weight" => "blocks.2.adaLN_modulation.1.weight".into(),
        "norm3.linear_2.weight" => "blocks.2.adaLN_modulation.2.weight".into(),
        "ff.net.0.proj.weight" => "blocks.2.block.layer1.weight".into(),
        "ff.net.2.weight" => "blocks.2.block.layer2.weight".into(),
        _ => {
            let attn =
                rest.strip_prefix("attn1.").map(|a| ("0", a)).or_else(|| rest.strip_prefix("attn2.").map(|a| ("1", a)));
            let Some((slot, param)) = attn else { return format!("net.{name}") };
            let param = match param {
                "to_q.weight" => "to_q.0.weight",
                "norm_q.weight" => "to_q.1.weight",
                "to_k.weight" => "to_k.0.weight",
                "norm_k.weight" => "to_k.1.weight",
                "to_v.weight" => "to_v.0.weight",
                "to_out.0.weight" => "to_out.0.weight",
                _ => return format!("net.{name}"),
            };
            format!("blocks.{slot}.block.attn.{param}")
        }
    };
    format!("net.blocks.block{i}.{sub}")
}

#[cfg(test)]
mod tests {
    use super::predict1_key;

    #[test]
    fn predict1_keys_follow_the_reference_table() {
        for (diffusers, original) in [
            ("patch_embed.proj.weight", "net.x_embedder.proj.1.weight"),
            ("learnable_pos_embed.pos_emb_h", "net.extra_pos_embedder.pos_emb_h"),
            ("time_embed.norm.weight", "net.affline_norm.weight"),
            ("transformer_blocks.3.norm2.linear_2.weight", "net.blocks.block3.blocks.1.adaLN_modulation.2.weight"),
            ("transformer_blocks.0.attn1.norm_k.weight", "net.blocks.block0.blocks.0.block.attn.to_k.1.weight"),
            ("transformer_blocks.27.attn2.to_out.0.weight", "net.blocks.block27.blocks.1.block.attn.to_out.0.weight"),
            ("transformer_blocks.1.ff.net.2.weight", "net.blocks.block1.blocks.2.block.layer2.weight"),
            ("norm_out.linear_1.weight", "net.final_layer.adaLN_modulation.1.weight"),
            ("proj_out.weight", "net.final_layer.linear.weight"),
        ] {
            assert_eq!(predict1_key(diffusers), original);
        }
    }
}

#[cfg(test)]
mod config_tests {
    use crate::{load_component, ModelError};

    fn load(json: &str) -> Result<Box<dyn crate::Component>, ModelError> {
        let dir = std::env::temp_dir().join(format!("orrery-cosmos-config-{}-{}", std::process::id(), json.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), json).unwrap();
        load_component(&dir)
    }

    #[test]
    fn unknown_or_non_default_keys_are_refused_by_name() {
        let base = r#""_class_name": "CosmosTransformer3DModel", "num_layers": 2"#;
        assert!(load(&format!("{{{base}}}")).is_ok());
        // Newer diffusers keys at their inert defaults are fine; anything else names the key.
        assert!(load(&format!(r#"{{{base}, "img_context_dim_in": null, "img_context_num_tokens": 256}}"#)).is_ok());
        let err = load(&format!(r#"{{{base}, "controlnet_block_every_n": 4}}"#)).err().unwrap().to_string();
        assert!(err.contains("`controlnet_block_every_n`"), "{err}");
        let err = load(&format!(r#"{{{base}, "use_flash_magic": true}}"#)).err().unwrap().to_string();
        assert!(err.contains("unknown key `use_flash_magic`"), "{err}");
        let err = load(&format!(r#"{{{base}, "extra_pos_embed_type": "sincos"}}"#)).err().unwrap().to_string();
        assert!(err.contains("extra_pos_embed_type"), "{err}");
    }
}
