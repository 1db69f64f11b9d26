//! The encoder graph.
//!
//! ```text
//! h = shared[input_ids]                                   (the tied embedding table)
//! bias = rel_bias[buckets(key - query)] → [1, H, L, L]    (block 0's table, shared by all)
//!      + (1 - mask) · f32::MIN → [B, 1, 1, L]            (padding keys)
//! per block: h += o(attention(q, k, v of rms(h), scale 1, additive bias))
//!            h += wo(act(wi(rms(h))))  or  wo(act(wi_0(rms(h))) · wi_1(rms(h)))
//! last_hidden_state = rms(h)
//! ```
//! `rms(x) = x · rsqrt(mean(x²) + eps) · w` (T5LayerNorm: no mean subtraction, no bias). T5
//! does not scale the scores by 1/√d_kv (the initialisation absorbs it).

use super::buckets::bucket_table;
use crate::{ComponentConfig, ModelError, WeightTypes};
use orrery_ir::{AttentionMask, BinaryOp, DType, Graph, GraphBuilder, NodeId, Op, RefTensor, UnaryOp};

/// The activation of the feed-forward block and whether it is gated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedForward {
    pub act: UnaryOp,
    pub gated: bool,
}

/// The encoder's hyperparameters (transformers `T5Config` names and defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct T5EncoderConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward: FeedForward,
}

impl T5EncoderConfig {
    /// Reads a transformers T5 config; absent keys take `T5Config`'s defaults.
    pub fn from_config(config: &ComponentConfig) -> Result<T5EncoderConfig, ModelError> {
        let err = |reason: String| ModelError::Config { path: config.path.display().to_string(), reason };
        let get = |key: &str, default: usize| config.opt_usize(key).map(|v| v.unwrap_or(default));
        let proj = config.opt_str("feed_forward_proj")?.unwrap_or("relu");
        let feed_forward = feed_forward(proj).ok_or_else(|| {
            err(format!(
                "`feed_forward_proj` {proj:?} is not supported: use relu, gelu, gelu_new, silu, or gated-<one of these>"
            ))
        })?;
        let c = T5EncoderConfig {
            vocab_size: get("vocab_size", 32128)?,
            d_model: get("d_model", 512)?,
            d_kv: get("d_kv", 64)?,
            d_ff: get("d_ff", 2048)?,
            num_layers: get("num_layers", 6)?,
            num_heads: get("num_heads", 8)?,
            relative_attention_num_buckets: get("relative_attention_num_buckets", 32)?,
            relative_attention_max_distance: get("relative_attention_max_distance", 128)?,
            layer_norm_epsilon: config.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-6),
            feed_forward,
        };
        let sizes = [
            ("vocab_size", c.vocab_size),
            ("d_model", c.d_model),
            ("d_kv", c.d_kv),
            ("d_ff", c.d_ff),
            ("num_heads", c.num_heads),
            ("relative_attention_num_buckets", c.relative_attention_num_buckets),
        ];
        if let Some((key, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(err(format!("`{key}` must be positive")));
        }
        if c.relative_attention_num_buckets < 4
            || c.relative_attention_max_distance < c.relative_attention_num_buckets / 4
        {
            return Err(err(format!(
                "relative attention needs at least 4 buckets and a max distance of at least a quarter of them, got {} and {}",
                c.relative_attention_num_buckets, c.relative_attention_max_distance
            )));
        }
        if c.layer_norm_epsilon < 0.0 {
            return Err(err(format!("`layer_norm_epsilon` must be ≥ 0, got {}", c.layer_norm_epsilon)));
        }
        Ok(c)
    }

    /// Width of q, k, v: heads × d_kv (16384 for t5-11b, not d_model).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

/// transformers' rule: `gated-<act>` is gated, `gated-gelu` means the tanh GELU (`gelu_new`).
fn feed_forward(proj: &str) -> Option<FeedForward> {
    let (gated, name) = match proj.split_once('-') {
        Some(("gated", act)) => (true, act),
        Some(_) => return None,
        None => (false, proj),
    };
    let act = match name {
        "relu" => UnaryOp::Relu,
        "gelu" if gated => UnaryOp::GeluTanh,
        "gelu" => UnaryOp::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" => UnaryOp::GeluTanh,
        "silu" | "swish" => UnaryOp::Silu,
        _ => return None,
    };
    Some(FeedForward { act, gated })
}

/// The encoder graph for `input_ids` `[batch, seq]` (and `attention_mask` of the same shape
/// when `with_mask`), output `last_hidden_state`.
pub fn encoder_graph(
    c: &T5EncoderConfig,
    w: &WeightTypes,
    batch: usize,
    seq: usize,
    with_mask: bool,
) -> Result<Graph, ModelError> {
    let (d, heads, dk, inner) = (c.d_model, c.num_heads, c.d_kv, c.inner_dim());
    let mut b = GraphBuilder::new();
    let ids = b.input("input_ids", DType::I64, [batch, seq])?;
    let mask = if with_mask { Some(b.input("attention_mask", DType::I64, [batch, seq])?) } else { None };
    // The table is tied: checkpoints keep `shared.weight`, some only the encoder's alias.
    let table_name = if !w.contains("shared.weight") && w.contains("encoder.embed_tokens.weight") {
        "encoder.embed_tokens.weight"
    } else {
        "shared.weight"
    };
    let table = w.declare(&mut b, table_name, &[c.vocab_size, d])?;
    let mut h = b.op("encoder.embed_tokens", Op::Embedding, &[table, ids])?;
    let bias = position_bias(&mut b, c, w, batch, seq, mask)?;
    for i in 0..c.num_layers {
        let p = format!("encoder.block.{i}");
        let n = rms_norm(&mut b, w, c, &format!("{p}.layer.0.layer_norm"), h)?;
        let a = format!("{p}.layer.0.SelfAttention");
        let heads_of = |b: &mut GraphBuilder, name: &str| -> Result<NodeId, ModelError> {
            let wt = w.declare(b, &format!("{a}.{name}.weight"), &[inner, d])?;
            let y = b.linear(&format!("{a}.{name}"), n, wt, None)?;
            let y = b.reshape(&format!("{a}.{name}.heads"), y, &[batch, seq, heads, dk])?;
            Ok(b.permute(&format!("{a}.{name}.bhld"), y, &[0, 2, 1, 3])?)
        };
        let (q, k, v) = (heads_of(&mut b, "q")?, heads_of(&mut b, "k")?, heads_of(&mut b, "v")?);
        let o = b.op(&format!("{a}.sdpa"), Op::attention(1.0, AttentionMask::Additive), &[q, k, v, bias])?;
        let o = b.permute(&format!("{a}.o.blhd"), o, &[0, 2, 1, 3])?;
        let o = b.reshape(&format!("{a}.o.merged"), o, &[batch, seq, inner])?;
        let wo = w.declare(&mut b, &format!("{a}.o.weight"), &[d, inner])?;
        let o = b.linear(&format!("{a}.o"), o, wo, None)?;
        h = b.add(&format!("{p}.layer.0.residual"), h, o)?;
        let n = rms_norm(&mut b, w, c, &format!("{p}.layer.1.layer_norm"), h)?;
        let f = format!("{p}.layer.1.DenseReluDense");
        let ff = feed_forward_block(&mut b, w, c, &f, n)?;
        h = b.add(&format!("{p}.layer.1.residual"), h, ff)?;
    }
    let y = rms_norm(&mut b, w, c, "encoder.final_layer_norm", h)?;
    b.output("last_hidden_state", y)?;
    Ok(b.finish()?)
}

/// `rms(x) · w` with the weight widened to f32.
fn rms_norm(
    b: &mut GraphBuilder,
    w: &WeightTypes,
    c: &T5EncoderConfig,
    name: &str,
    x: NodeId,
) -> Result<NodeId, ModelError> {
    let wt = w.declare(b, &format!("{name}.weight"), &[c.d_model])?;
    let wt = b.cast(&format!("{name}.weight.f32"), wt, DType::F32)?;
    Ok(b.op(name, Op::RmsNorm { eps: c.layer_norm_epsilon, has_weight: true }, &[x, wt])?)
}

/// `wo(act(wi(x)))` or, gated, `wo(act(wi_0(x)) · wi_1(x))`.
fn feed_forward_block(
    b: &mut GraphBuilder,
    w: &WeightTypes,
    c: &T5EncoderConfig,
    p: &str,
    x: NodeId,
) -> Result<NodeId, ModelError> {
    let (d, ff) = (c.d_model, c.d_ff);
    let hidden = if c.feed_forward.gated {
        let w0 = w.declare(b, &format!("{p}.wi_0.weight"), &[ff, d])?;
        let w1 = w.declare(b, &format!("{p}.wi_1.weight"), &[ff, d])?;
        let g = b.linear(&format!("{p}.wi_0"), x, w0, None)?;
        let g = b.unary(&format!("{p}.act"), c.feed_forward.act, g)?;
        let l = b.linear(&format!("{p}.wi_1"), x, w1, None)?;
        b.mul(&format!("{p}.gate"), g, l)?
    } else {
        let wi = w.declare(b, &format!("{p}.wi.weight"), &[ff, d])?;
        let h = b.linear(&format!("{p}.wi"), x, wi, None)?;
        b.unary(&format!("{p}.act"), c.feed_forward.act, h)?
    };
    let wo = w.declare(b, &format!("{p}.wo.weight"), &[d, ff])?;
    Ok(b.linear(&format!("{p}.wo"), hidden, wo, None)?)
}

/// The additive attention bias shared by every layer: the relative position bias
/// `[1, H, L, L]` plus `f32::MIN` at padded keys (`[B, 1, 1, L]`), as transformers adds them.
fn position_bias(
    b: &mut GraphBuilder,
    c: &T5EncoderConfig,
    w: &WeightTypes,
    batch: usize,
    seq: usize,
    mask: Option<NodeId>,
) -> Result<NodeId, ModelError> {
    let heads = c.num_heads;
    let buckets = bucket_table(seq, c.relative_attention_num_buckets, c.relative_attention_max_distance);
    let buckets = RefTensor::new(DType::I64, vec![seq, seq], buckets.into_iter().map(|v| v as f64).collect());
    let buckets = b.constant("encoder.relative_position_buckets", buckets);
    let name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias";
    let table = w.declare(b, &format!("{name}.weight"), &[c.relative_attention_num_buckets, heads])?;
    let bias = b.op(name, Op::Embedding, &[table, buckets])?;
    let bias = b.permute(&format!("{name}.hqk"), bias, &[2, 0, 1])?;
    let bias = b.reshape(&format!("{name}.batched"), bias, &[1, heads, seq, seq])?;
    let Some(mask) = mask else { return Ok(bias) };
    let m = b.cast("encoder.attention_mask.f32", mask, DType::F32)?;
    let one = b.scalar("encoder.one", 1.0);
    let padding = b.binary("encoder.padding", BinaryOp::Sub, one, m)?;
    let min = b.scalar("encoder.f32_min", f32::MIN as f64);
    let padding = b.mul("encoder.padding_bias", padding, min)?;
    let padding = b.reshape("encoder.padding_bias.keys", padding, &[batch, 1, 1, seq])?;
    Ok(b.add("encoder.attention_bias", bias, padding)?)
}
