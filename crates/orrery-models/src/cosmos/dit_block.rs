//! One Cosmos diffusion-transformer block (diffusers `CosmosTransformerBlock`), as a graph:
//!
//! ```text
//! x += extra_pos_emb                                   (when the model has one)
//! for norm_i, sub in [(norm1, self-attn), (norm2, cross-attn), (norm3, MLP)]:
//!     shift, scale, gate = chunk3(linear_2(linear_1(silu(emb))) + temb)   (AdaLN-LoRA)
//!     h = layer_norm(x, no affine, eps 1e-6) · (1 + scale) + shift
//!     x = x + gate · sub(h)
//! self-attn:  q,k = rope(rms_norm_head(W h)), v = W h, softmax(q kᵀ/√d) v, to_out
//! cross-attn: q from h, k/v from the text embedding, q/k RMS-normed, no RoPE, to_out
//! MLP:        ff.net.2(gelu(ff.net.0.proj(h)))
//! ```
//! No linear has a bias. Weight names are the diffusers keys under `prefix`
//! (`transformer_blocks.{i}`); see `shared/cosmos-reference.md` §3.2 and §3.5.
//!
//! Tensor-parallel (`DitBlockConfig::shard` splitting heads, rank r of N): each rank keeps
//! heads `r·H/N..(r+1)·H/N` — rows of `to_q/to_k/to_v`, the matching columns of `to_out.0` —
//! and rows `r·F/N..` of `ff.net.0.proj` with those columns of `ff.net.2`; each `to_out.0`
//! and `ff.net.2` output is then a partial sum, completed by an all-reduce. The AdaLN
//! modulations and norms are replicated.
//!
//! Sequence-parallel (splitting tokens, Ulysses): `x` holds this rank's L/N tokens and every
//! op is per token except the self-attention, whose q, k, v `[B, H, L/N, d]` are exchanged
//! into `[B, H/N, L, d]` (an all-to-all each), attended over all L tokens, and exchanged back.
//! The cross-attention needs nothing: its keys are the text, whole on every rank.

use crate::{ModelError, Shard, WeightTypes};
use orrery_ir::{AttentionMask, DType, GraphBuilder, NodeId, Op, RopeStyle, UnaryOp};

/// Sizes of one block.
#[derive(Clone, Debug)]
pub struct DitBlockConfig {
    /// Model width D = heads · head_dim.
    pub dim: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// MLP hidden width (4·D in Cosmos).
    pub mlp_hidden: usize,
    /// Width of the text embedding (1024 for T5-11B).
    pub text_dim: usize,
    /// AdaLN-LoRA bottleneck (256).
    pub adaln_lora_dim: usize,
    /// q/k RMSNorm epsilon: 1e-5 for diffusers checkpoints, 1e-6 for Predict1 `model.pt`.
    pub qk_norm_eps: f64,
    /// The tensor-parallel part this graph computes ([`Shard::WHOLE`]: all of it); `heads`
    /// and `mlp_hidden` divide by its rank count.
    pub shard: Shard,
}

/// Completes a row-parallel linear's partial output over the ranks (nothing unless heads split).
fn reduce(b: &mut GraphBuilder, shard: Shard, name: &str, y: NodeId) -> Result<NodeId, ModelError> {
    if !shard.splits_heads() {
        return Ok(y);
    }
    Ok(b.op(name, Op::AllReduce, &[y])?)
}

/// The block's operands. Shapes: `x` [B, L, D]; `emb` [B, D] (the normalised timestep
/// embedding) or [B, L, D] (one per token, Predict2's per-frame timesteps); `temb` [B, 3D] or
/// [B, L, 3D] (the AdaLN-LoRA term); `text` [B, Lt, text_dim]; `text_mask` bool [B, 1, 1, Lt]
/// (true = attend) for the cross-attention; `rope_cos` and `rope_sin` [L, head_dim]
/// (rotate-half layout); `pos_emb` [B, L, D] or [L, D].
#[derive(Clone, Copy, Debug)]
pub struct DitBlockInputs {
    pub x: NodeId,
    pub emb: NodeId,
    pub temb: NodeId,
    pub text: NodeId,
    pub text_mask: Option<NodeId>,
    pub rope_cos: NodeId,
    pub rope_sin: NodeId,
    pub pos_emb: Option<NodeId>,
}

/// Appends one block under weight prefix `prefix` and returns the new `x` [B, L, D].
pub fn dit_block(
    b: &mut GraphBuilder,
    w: &WeightTypes,
    prefix: &str,
    cfg: &DitBlockConfig,
    inp: &DitBlockInputs,
) -> Result<NodeId, ModelError> {
    let mut x = inp.x;
    if let Some(e) = inp.pos_emb {
        x = b.add(&format!("{prefix}.pos_add"), x, e)?;
    }
    // silu(emb) is shared by the three modulations (the compiler's CSE would find it too).
    let act = b.unary(&format!("{prefix}.emb_silu"), UnaryOp::Silu, inp.emb)?;
    for (norm, sub) in [("norm1", Sub::SelfAttn), ("norm2", Sub::CrossAttn), ("norm3", Sub::Mlp)] {
        let p = format!("{prefix}.{norm}");
        let (h, gate) = adaln_zero(b, w, &p, cfg, x, act, inp.temb)?;
        let y = match sub {
            Sub::SelfAttn => {
                attention(b, w, &format!("{prefix}.attn1"), cfg, h, h, Some((inp.rope_cos, inp.rope_sin)), None)?
            }
            Sub::CrossAttn => attention(b, w, &format!("{prefix}.attn2"), cfg, h, inp.text, None, inp.text_mask)?,
            Sub::Mlp => mlp(b, w, &format!("{prefix}.ff"), cfg, h)?,
        };
        let gated = b.mul(&format!("{p}.gate_mul"), gate, y)?;
        x = b.add(&format!("{p}.residual"), x, gated)?;
    }
    Ok(x)
}

#[derive(Clone, Copy)]
enum Sub {
    SelfAttn,
    CrossAttn,
    Mlp,
}

/// `CosmosAdaLayerNormZero`: returns (modulated h [B, L, D], gate [B, 1, D] or [B, L, D]).
fn adaln_zero(
    b: &mut GraphBuilder,
    w: &WeightTypes,
    p: &str,
    cfg: &DitBlockConfig,
    x: NodeId,
    act: NodeId,
    temb: NodeId,
) -> Result<(NodeId, NodeId), ModelError> {
    let d = cfg.dim;
    let batch = b.dims(x)[0];
    let w1 = w.declare(b, &format!("{p}.linear_1.weight"), &[cfg.adaln_lora_dim, d])?;
    let w2 = w.declare(b, &format!("{p}.linear_2.weight"), &[3 * d, cfg.adaln_lora_dim])?;
    let lora = b.linear(&format!("{p}.linear_1"), act, w1, None)?;
    let m = b.linear(&format!("{p}.linear_2"), lora, w2, None)?;
    let m = b.add(&format!("{p}.temb_add"), m, temb)?;
    // Per batch row [B, 3D] broadcasts over the tokens; per token [B, L, 3D] is used as is.
    let m = if b.dims(m).len() == 2 { b.reshape(&format!("{p}.chunk_view"), m, &[batch, 1, 3 * d])? } else { m };
    let parts = b.split(&format!("{p}.chunk"), m, 2, &[d, d, d])?;
    let (shift, scale, gate) = (parts[0], parts[1], parts[2]);
    let normed = b.op(&format!("{p}.norm"), Op::LayerNorm { eps: 1e-6, affine: false }, &[x])?;
    let one = b.scalar(&format!("{p}.one"), 1.0);
    let scale1 = b.add(&format!("{p}.scale_plus_one"), scale, one)?;
    let h = b.mul(&format!("{p}.scale_mul"), normed, scale1)?;
    let h = b.add(&format!("{p}.shift_add"), h, shift)?;
    Ok((h, gate))
}

/// Multi-head attention of `h` [B, L, D] over `ctx` [B, Lc, C] (`ctx == h` for self-attention),
/// q/k RMS-normed per head, RoPE on q and k when `rope` is given, keys masked by `mask` (bool
/// [B, 1, 1, Lc]) when given.
#[allow(clippy::too_many_arguments)]
fn attention(
    b: &mut GraphBuilder,
    w: &WeightTypes,
    p: &str,
    cfg: &DitBlockConfig,
    h: NodeId,
    ctx: NodeId,
    rope: Option<(NodeId, NodeId)>,
    mask: Option<NodeId>,
) -> Result<NodeId, ModelError> {
    let (d, hd, shard) = (cfg.dim, cfg.head_dim, cfg.shard);
    // This rank's heads (all of them unless tensor-parallel) and their width.
    let heads = if shard.splits_heads() { cfg.heads / shard.ranks } else { cfg.heads };
    let dl = heads * hd;
    let (batch, len) = (b.dims(h)[0], b.dims(h)[1]);
    let (ctx_len, ctx_dim) = (b.dims(ctx)[1], b.dims(ctx)[2]);
    let project = |b: &mut GraphBuilder, name: &str, src: NodeId, src_len: usize, src_dim: usize, norm: bool| {
        let wt = w.declare_part(b, &format!("{p}.to_{name}.weight"), &[d, src_dim], shard.rows(d))?;
        let y = b.linear(&format!("{p}.to_{name}"), src, wt, None)?;
        let y = b.reshape(&format!("{p}.{name}_heads"), y, &[batch, src_len, heads, hd])?;
        let mut y = b.permute(&format!("{p}.{name}_bhld"), y, &[0, 2, 1, 3])?;
        if norm {
            let nw = w.declare(b, &format!("{p}.norm_{name}.weight"), &[hd])?;
            let nw = b.cast(&format!("{p}.norm_{name}.f32"), nw, DType::F32)?;
            y = b.op(&format!("{p}.norm_{name}"), Op::RmsNorm { eps: cfg.qk_norm_eps, has_weight: true }, &[y, nw])?;
            if let Some((cos, sin)) = rope {
                y = b.op(&format!("{p}.{name}_rope"), Op::Rope { style: RopeStyle::RotateHalf }, &[y, cos, sin])?;
            }
        }
        Ok::<NodeId, ModelError>(y)
    };
    let mut q = project(b, "q", h, len, d, true)?;
    let mut k = project(b, "k", ctx, ctx_len, ctx_dim, true)?;
    let mut v = project(b, "v", ctx, ctx_len, ctx_dim, false)?;
    // Ulysses: a self-attention over tokens split across ranks regroups by heads around it.
    let ulysses = shard.splits_tokens() && ctx == h;
    let n = shard.ranks;
    if ulysses {
        let to_heads = Op::AllToAll { split: 1, concat: 2, ranks: n };
        q = b.op(&format!("{p}.q_all_to_all"), to_heads.clone(), &[q])?;
        k = b.op(&format!("{p}.k_all_to_all"), to_heads.clone(), &[k])?;
        v = b.op(&format!("{p}.v_all_to_all"), to_heads, &[v])?;
    }
    let scale = 1.0 / (hd as f64).sqrt();
    let mut o = match mask {
        None => b.op(&format!("{p}.sdpa"), Op::attention(scale, AttentionMask::None), &[q, k, v])?,
        Some(m) => b.op(&format!("{p}.sdpa"), Op::attention(scale, AttentionMask::Boolean), &[q, k, v, m])?,
    };
    if ulysses {
        o = b.op(&format!("{p}.o_all_to_all"), Op::AllToAll { split: 2, concat: 1, ranks: n }, &[o])?;
    }
    let o = b.permute(&format!("{p}.o_blhd"), o, &[0, 2, 1, 3])?;
    let o = b.reshape(&format!("{p}.o_merge"), o, &[batch, len, dl])?;
    let wo = w.declare_part(b, &format!("{p}.to_out.0.weight"), &[d, d], shard.cols(d))?;
    let y = b.linear(&format!("{p}.to_out.0"), o, wo, None)?;
    reduce(b, shard, &format!("{p}.to_out.0.all_reduce"), y)
}

/// `ff.net.2(gelu(ff.net.0.proj(h)))`, exact GELU, no biases.
fn mlp(b: &mut GraphBuilder, w: &WeightTypes, p: &str, cfg: &DitBlockConfig, h: NodeId) -> Result<NodeId, ModelError> {
    let (f, shard) = (cfg.mlp_hidden, cfg.shard);
    let w1 = w.declare_part(b, &format!("{p}.net.0.proj.weight"), &[f, cfg.dim], shard.rows(f))?;
    let w2 = w.declare_part(b, &format!("{p}.net.2.weight"), &[cfg.dim, f], shard.cols(f))?;
    let up = b.linear(&format!("{p}.net.0.proj"), h, w1, None)?;
    let act = b.unary(&format!("{p}.net.0.gelu"), UnaryOp::GeluErf, up)?;
    let y = b.linear(&format!("{p}.net.2"), act, w2, None)?;
    reduce(b, shard, &format!("{p}.net.2.all_reduce"), y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_builds_with_diffusers_weight_names() {
        let cfg = DitBlockConfig {
            dim: 64,
            heads: 4,
            head_dim: 16,
            mlp_hidden: 256,
            text_dim: 48,
            adaln_lora_dim: 8,
            qk_norm_eps: 1e-5,
            shard: Shard::WHOLE,
        };
        let mut b = GraphBuilder::new();
        let (batch, len, text_len) = (2, 10, 7);
        let inp = DitBlockInputs {
            x: b.input("x", DType::F32, [batch, len, 64]).unwrap(),
            emb: b.input("emb", DType::F32, [batch, 64]).unwrap(),
            temb: b.input("temb", DType::F32, [batch, 192]).unwrap(),
            text: b.input("text", DType::F32, [batch, text_len, 48]).unwrap(),
            text_mask: None,
            rope_cos: b.input("rope_cos", DType::F32, [len, 16]).unwrap(),
            rope_sin: b.input("rope_sin", DType::F32, [len, 16]).unwrap(),
            pos_emb: Some(b.input("pos_emb", DType::F32, [len, 64]).unwrap()),
        };
        let y = dit_block(&mut b, &WeightTypes::Assumed(DType::BF16), "transformer_blocks.0", &cfg, &inp).unwrap();
        assert_eq!(b.dims(y), &[batch, len, 64]);
        b.output("y", y).unwrap();
        let g = b.finish().unwrap();
        g.verify().unwrap();
        let names: Vec<&str> = g.weights().map(|(_, n)| n.name.as_str()).collect();
        for expected in [
            "transformer_blocks.0.norm1.linear_1.weight",
            "transformer_blocks.0.norm3.linear_2.weight",
            "transformer_blocks.0.attn1.to_q.weight",
            "transformer_blocks.0.attn1.norm_k.weight",
            "transformer_blocks.0.attn2.to_k.weight",
            "transformer_blocks.0.attn2.to_out.0.weight",
            "transformer_blocks.0.ff.net.0.proj.weight",
            "transformer_blocks.0.ff.net.2.weight",
        ] {
            assert!(names.contains(&expected), "{expected} missing from {names:?}");
        }
        // The cross-attention keys project from the text width.
        let k2 = g.find("transformer_blocks.0.attn2.to_k.weight").unwrap();
        assert_eq!(g.node(k2).ty.shape.dims(), &[64, 48]);
        assert_eq!(names.len(), 2 * 3 + 2 * 6 + 2);
    }
}
