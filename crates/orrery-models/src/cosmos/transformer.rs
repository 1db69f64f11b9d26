//! `CosmosTransformer3DModel` (diffusers): the Cosmos diffusion transformer as a graph.
//!
//! ```text
//! x = cat(hidden_states, condition_mask?, nearest(padding_mask) over frames)   [B, C', T, H, W]
//! tokens = patch_embed(patchify(x))              (c, pt, ph, pw) features, t-major tokens
//! s = [cos(t·f), sin(t·f)]; temb = W2 silu(W1 s); emb = rms_norm(s)            (time embedding)
//! e = normalise(pos_t + pos_h + pos_w)           (learnable, when configured; every block)
//! cos/sin = 3-D RoPE table [t·24/fps | h | w] × 2 (fps absent: unscaled)
//! text = gelu(crossattn_proj(text))              (when configured)
//! 28/36 × dit_block(tokens, emb, temb, text, mask, rope, e)
//! sample = unpatchify(proj_out(LN(x)·(1+scale)+shift)), (shift, scale) from emb and temb[:2D]
//! ```
//! See `shared/cosmos-reference.md` §3; weight names are the diffusers keys.

use super::config::CosmosDitConfig;
use super::dit_block::{dit_block, DitBlockConfig, DitBlockInputs};
use crate::{ModelError, Shard, WeightTypes};
use orrery_ir::{CompareOp, DType, GraphBuilder, NodeId, Op, ReduceOp, RefTensor, ResizeMode, UnaryOp};

/// The shapes one forward is built for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosmosDitShapes {
    /// hidden_states [B, C, T, H, W].
    pub latent: [usize; 5],
    /// Text tokens S of encoder_hidden_states [B, S, text_in].
    pub text_len: usize,
    /// timestep [B] (false) or [B, 1, T, 1, 1] (true: one per latent frame, Predict2).
    pub per_frame_timestep: bool,
    pub attention_mask: bool,
    pub fps: bool,
    pub condition_mask: bool,
    /// padding_mask [1, 1, Hp, Wp] when given (else zeros).
    pub padding_mask: Option<[usize; 2]>,
}

fn f32_const(b: &mut GraphBuilder, name: &str, dims: Vec<usize>, values: Vec<f32>) -> NodeId {
    b.constant(name, RefTensor::new(DType::F32, dims, values.into_iter().map(f64::from).collect()))
}

/// The graph of one forward; output `sample` [B, out_channels, T, H, W].
pub fn transformer_graph(
    c: &CosmosDitConfig,
    w: &WeightTypes,
    s: &CosmosDitShapes,
) -> Result<orrery_ir::Graph, ModelError> {
    transformer_graph_sharded(c, w, s, Shard::WHOLE)
}

/// [`transformer_graph`] for rank `shard.rank` of a parallel group (see `dit_block.rs`).
/// Splitting heads (tensor parallelism): the blocks' heads and MLP width are split and
/// everything else is computed on every rank. Splitting tokens (sequence parallelism): the
/// tokens are cut after the patch embedding (with their position tables and per-token
/// timesteps) and gathered again before the unpatchify. Either way every rank's `sample` is
/// the whole output. The caller checked that the heads, MLP width and tokens divide by the
/// rank count.
pub fn transformer_graph_sharded(
    c: &CosmosDitConfig,
    w: &WeightTypes,
    s: &CosmosDitShapes,
    shard: Shard,
) -> Result<orrery_ir::Graph, ModelError> {
    let [batch, _, frames, height, width] = s.latent;
    let [pt, ph, pw] = c.patch_size;
    let (tp, hp, wp) = (frames / pt, height / ph, width / pw);
    let tokens = tp * hp * wp;
    let d = c.hidden();
    let mut b = GraphBuilder::new();
    let x = b.input("hidden_states", DType::F32, s.latent.to_vec())?;
    let timestep_shape = if s.per_frame_timestep { vec![batch, 1, frames, 1, 1] } else { vec![batch] };
    let timestep = b.input("timestep", DType::F32, timestep_shape)?;
    let text = b.input("encoder_hidden_states", DType::F32, [batch, s.text_len, c.text_in()])?;
    let mask = if s.attention_mask { Some(b.input("attention_mask", DType::I64, [batch, s.text_len])?) } else { None };
    let fps = if s.fps { Some(b.input("fps", DType::F32, Vec::<usize>::new())?) } else { None };
    let condition = if s.condition_mask {
        Some(b.input("condition_mask", DType::F32, [batch, 1, frames, height, width])?)
    } else {
        None
    };
    let padding = match s.padding_mask {
        Some([ph_px, pw_px]) => Some(b.input("padding_mask", DType::F32, [1, 1, ph_px, pw_px])?),
        None => None,
    };

    // 1. Channels: latents, condition mask, padding mask (resized, repeated over frames).
    let mut parts = vec![x];
    parts.extend(condition);
    if c.concat_padding_mask {
        let pm = match padding {
            Some(p) => {
                let op = Op::Resize { mode: ResizeMode::Nearest, size: vec![height, width], align_corners: false };
                let r = b.op("padding_mask.resized", op, &[p])?;
                b.reshape("padding_mask.frame", r, &[1, 1, 1, height, width])?
            }
            None => {
                let zero = b.scalar("padding_mask.zero", 0.0);
                b.reshape("padding_mask.zeros", zero, &[1, 1, 1, 1, 1])?
            }
        };
        let pm = b.op("padding_mask.frames", Op::Expand { shape: vec![batch, 1, frames, height, width] }, &[pm])?;
        parts.push(pm);
    }
    let x = if parts.len() == 1 { x } else { b.concat("patch_embed.input", &parts, 1)? };
    let cin = b.dims(x)[1];

    // 2. Patchify: b c (t r) (h m) (w n) -> b (t h w) (c r m n).
    let x = b.reshape("patch_embed.split", x, &[batch, cin, tp, pt, hp, ph, wp, pw])?;
    let x = b.permute("patch_embed.order", x, &[0, 2, 4, 6, 1, 3, 5, 7])?;
    let x = b.reshape("patch_embed.tokens", x, &[batch, tokens, cin * pt * ph * pw])?;
    let wpe = w.declare(&mut b, "patch_embed.proj.weight", &[d, c.patch_features()])?;
    let mut x = b.linear("patch_embed.proj", x, wpe, None)?;
    // Sequence parallelism: this rank's tokens from here on (and of every per-token table).
    let mine = |b: &mut GraphBuilder, name: &str, v: NodeId, axis: usize| -> Result<NodeId, ModelError> {
        match shard.splits_tokens() {
            true => Ok(b.op(&format!("{name}.tokens_of_rank"), Op::RankSlice { axis, ranks: shard.ranks }, &[v])?),
            false => Ok(v),
        }
    };
    x = mine(&mut b, "patch_embed", x, 1)?;

    // 3. Time embedding, per batch row or per (row, frame).
    let (temb, emb) = time_embedding(&mut b, c, w, timestep, batch, frames)?;
    let (temb, emb) = if s.per_frame_timestep {
        let spread = |b: &mut GraphBuilder, name: &str, v: NodeId, width: usize| -> Result<NodeId, ModelError> {
            let v = b.reshape(&format!("{name}.frames"), v, &[batch, tp, 1, 1, width])?;
            let v = b.op(&format!("{name}.tokens"), Op::Expand { shape: vec![batch, tp, hp, wp, width] }, &[v])?;
            Ok(b.reshape(&format!("{name}.flat"), v, &[batch, tokens, width])?)
        };
        let (temb, emb) = (spread(&mut b, "time_embed.temb", temb, 3 * d)?, spread(&mut b, "time_embed.emb", emb, d)?);
        (mine(&mut b, "time_embed.temb", temb, 1)?, mine(&mut b, "time_embed.emb", emb, 1)?)
    } else {
        (temb, emb)
    };

    // 4. Position: learnable absolute embedding and the 3-D RoPE table.
    let pos_emb = match c.learnable_pos_embed {
        true => Some(learnable_pos_embed(&mut b, c, w, tp, hp, wp)?),
        false => None,
    };
    let pos_emb = match pos_emb {
        Some(e) => Some(mine(&mut b, "learnable_pos_embed", e, 0)?),
        None => None,
    };
    let (rope_cos, rope_sin) = rope_table(&mut b, c, fps, tp, hp, wp)?;
    let (rope_cos, rope_sin) = (mine(&mut b, "rope.cos", rope_cos, 0)?, mine(&mut b, "rope.sin", rope_sin, 0)?);

    // 5. Text (projected when configured) and its key mask.
    let text = if c.use_crossattn_projection {
        let pw_ = w.declare(&mut b, "crossattn_proj.0.weight", &[c.encoder_hidden_states_channels, c.text_in()])?;
        let pb = w.declare(&mut b, "crossattn_proj.0.bias", &[c.encoder_hidden_states_channels])?;
        let pb = b.cast("crossattn_proj.0.bias.f32", pb, DType::F32)?;
        let t = b.linear("crossattn_proj.0", text, pw_, Some(pb))?;
        b.unary("crossattn_proj.1", UnaryOp::GeluErf, t)?
    } else {
        text
    };
    let text_mask = match mask {
        Some(m) => {
            let zero = b.constant("attention_mask.zero", RefTensor::new(DType::I64, vec![], vec![0.0]));
            let keep = b.op("attention_mask.keep", Op::Compare(CompareOp::Ne), &[m, zero])?;
            Some(b.reshape("attention_mask.keys", keep, &[batch, 1, 1, s.text_len])?)
        }
        None => None,
    };

    // 6. Blocks.
    let block = DitBlockConfig {
        dim: d,
        heads: c.num_attention_heads,
        head_dim: c.attention_head_dim,
        mlp_hidden: c.mlp_hidden(),
        text_dim: c.text_embed_dim,
        adaln_lora_dim: c.adaln_lora_dim,
        qk_norm_eps: c.qk_norm_eps,
        shard,
    };
    for i in 0..c.num_layers {
        let inputs = DitBlockInputs { x, emb, temb, text, text_mask, rope_cos, rope_sin, pos_emb };
        x = dit_block(&mut b, w, &format!("transformer_blocks.{i}"), &block, &inputs)?;
    }

    // 7. Output norm (AdaLN with temb[..., :2D]), projection, unpatchify.
    let act = b.unary("norm_out.silu", UnaryOp::Silu, emb)?;
    let w1 = w.declare(&mut b, "norm_out.linear_1.weight", &[c.adaln_lora_dim, d])?;
    let w2 = w.declare(&mut b, "norm_out.linear_2.weight", &[2 * d, c.adaln_lora_dim])?;
    let m = b.linear("norm_out.linear_1", act, w1, None)?;
    let m = b.linear("norm_out.linear_2", m, w2, None)?;
    let last = b.dims(temb).len() - 1;
    let temb2 = b.narrow("norm_out.temb", temb, last, 0, 2 * d)?;
    let m = b.add("norm_out.temb_add", m, temb2)?;
    let m = if b.dims(m).len() == 2 { b.reshape("norm_out.chunk_view", m, &[batch, 1, 2 * d])? } else { m };
    let parts = b.split("norm_out.chunk", m, 2, &[d, d])?;
    let (shift, scale) = (parts[0], parts[1]);
    let n = b.op("norm_out.norm", Op::LayerNorm { eps: 1e-6, affine: false }, &[x])?;
    let one = b.scalar("norm_out.one", 1.0);
    let scale1 = b.add("norm_out.scale_plus_one", scale, one)?;
    let h = b.mul("norm_out.scale_mul", n, scale1)?;
    let h = b.add("norm_out.shift_add", h, shift)?;
    let patch = pt * ph * pw;
    let wo = w.declare(&mut b, "proj_out.weight", &[patch * c.out_channels, d])?;
    let mut y = b.linear("proj_out", h, wo, None)?;
    if shard.splits_tokens() {
        y = b.op("proj_out.all_gather", Op::AllGather { axis: 1, ranks: shard.ranks }, &[y])?;
    }
    // (B, T'H'W', (ph pw pt C)) -> B C (T' pt) (H' ph) (W' pw): not the inverse of patchify.
    let y = b.reshape("unpatchify.split", y, &[batch, tp, hp, wp, ph, pw, pt, c.out_channels])?;
    let y = b.permute("unpatchify.order", y, &[0, 7, 1, 6, 2, 4, 3, 5])?;
    let y = b.reshape("unpatchify", y, &[batch, c.out_channels, frames, height, width])?;
    b.output("sample", y)?;
    Ok(b.finish()?)
}

/// diffusers `Timesteps(D, flip_sin_to_cos=True)` then `CosmosTimestepEmbedding` and the RMS
/// norm: (temb [N, 3D], emb [N, D]) for the N = B (or B·T) timesteps.
fn time_embedding(
    b: &mut GraphBuilder,
    c: &CosmosDitConfig,
    w: &WeightTypes,
    timestep: NodeId,
    batch: usize,
    frames: usize,
) -> Result<(NodeId, NodeId), ModelError> {
    let d = c.hidden();
    let half = d / 2;
    let n: usize = b.dims(timestep).iter().product();
    debug_assert!(n == batch || n == batch * frames);
    let t = b.reshape("time_embed.timesteps", timestep, &[n, 1])?;
    // exp(-ln(10⁴)·k/half) in f32 as torch computes it.
    let freqs: Vec<f32> = (0..half).map(|k| ((-(10000f64.ln() as f32) * k as f32) / half as f32).exp()).collect();
    let freqs = f32_const(b, "time_embed.time_proj.freqs", vec![1, half], freqs);
    let args = b.mul("time_embed.time_proj.args", t, freqs)?;
    let cos = b.unary("time_embed.time_proj.cos", UnaryOp::Cos, args)?;
    let sin = b.unary("time_embed.time_proj.sin", UnaryOp::Sin, args)?;
    let proj = b.concat("time_embed.time_proj", &[cos, sin], 1)?;
    let w1 = w.declare(b, "time_embed.t_embedder.linear_1.weight", &[d, d])?;
    let w2 = w.declare(b, "time_embed.t_embedder.linear_2.weight", &[3 * d, d])?;
    let h = b.linear("time_embed.t_embedder.linear_1", proj, w1, None)?;
    let h = b.unary("time_embed.t_embedder.silu", UnaryOp::Silu, h)?;
    let temb = b.linear("time_embed.t_embedder.linear_2", h, w2, None)?;
    let nw = w.declare(b, "time_embed.norm.weight", &[d])?;
    let nw = b.cast("time_embed.norm.weight.f32", nw, DType::F32)?;
    let emb = b.op("time_embed.norm", Op::RmsNorm { eps: 1e-6, has_weight: true }, &[proj, nw])?;
    Ok((temb, emb))
}

/// `e / (1e-6 + ‖e‖·√(1/D))` with `e[t,h,w] = pos_t[t] + pos_h[h] + pos_w[w]`, as [T'H'W', D].
fn learnable_pos_embed(
    b: &mut GraphBuilder,
    c: &CosmosDitConfig,
    w: &WeightTypes,
    tp: usize,
    hp: usize,
    wp: usize,
) -> Result<NodeId, ModelError> {
    let d = c.hidden();
    let max: Vec<usize> = c.max_size.iter().zip(&c.patch_size).map(|(m, p)| m / p).collect();
    let mut sum: Option<NodeId> = None;
    for (axis, (name, len)) in [("t", tp), ("h", hp), ("w", wp)].into_iter().enumerate() {
        if len > max[axis] {
            return Err(ModelError::InputShape {
                name: "hidden_states".into(),
                got: vec![tp, hp, wp],
                expected: format!("at most {max:?} patches per axis (max_size / patch_size)"),
            });
        }
        let table = w.declare(b, &format!("learnable_pos_embed.pos_emb_{name}"), &[max[axis], d])?;
        let table = b.cast(&format!("learnable_pos_embed.pos_emb_{name}.f32"), table, DType::F32)?;
        let rows = b.narrow(&format!("learnable_pos_embed.{name}"), table, 0, 0, len)?;
        let mut shape = vec![1, 1, 1, d];
        shape[axis] = len;
        let rows = b.reshape(&format!("learnable_pos_embed.{name}.axis"), rows, &shape)?;
        sum = Some(match sum {
            None => rows,
            Some(s) => b.add(&format!("learnable_pos_embed.sum_{name}"), s, rows)?,
        });
    }
    let e = b.reshape("learnable_pos_embed.tokens", sum.expect("three axes"), &[tp * hp * wp, d])?;
    let sq = b.mul("learnable_pos_embed.sq", e, e)?;
    let ms =
        b.op("learnable_pos_embed.mean_sq", Op::Reduce { op: ReduceOp::Mean, axes: vec![1], keepdim: true }, &[sq])?;
    let rms = b.unary("learnable_pos_embed.rms", UnaryOp::Sqrt, ms)?;
    let eps = b.scalar("learnable_pos_embed.eps", 1e-6);
    let denom = b.add("learnable_pos_embed.denom", rms, eps)?;
    Ok(b.binary("learnable_pos_embed", orrery_ir::BinaryOp::Div, e, denom)?)
}

/// diffusers `CosmosRotaryPosEmbed`: cos and sin [T'H'W', head_dim] of the angles
/// `[t'·f_t | h·f_h | w·f_w]` repeated twice, `t' = t / fps · 24` when fps is given.
fn rope_table(
    b: &mut GraphBuilder,
    c: &CosmosDitConfig,
    fps: Option<NodeId>,
    tp: usize,
    hp: usize,
    wp: usize,
) -> Result<(NodeId, NodeId), ModelError> {
    let hd = c.attention_head_dim;
    let (dim_h, dim_w) = (hd / 6 * 2, hd / 6 * 2);
    let dim_t = hd - dim_h - dim_w;
    // f32 as torch: θ·(ntk factor) in f64, the exponent range in f32, then pow and 1/x in f32.
    let freqs = |dim: usize, scale: f64| -> Vec<f32> {
        let theta = (10000.0 * scale.powf(dim as f64 / (dim as f64 - 2.0))) as f32;
        (0..dim / 2).map(|k| 1.0 / theta.powf((2 * k) as f32 / dim as f32)).collect()
    };
    let (ft, fh, fw) = (freqs(dim_t, c.rope_scale[0]), freqs(dim_h, c.rope_scale[1]), freqs(dim_w, c.rope_scale[2]));
    let table = |b: &mut GraphBuilder, name: &str, len: usize, f: &[f32], axis: usize| -> Result<NodeId, ModelError> {
        let values: Vec<f32> = (0..len).flat_map(|p| f.iter().map(move |&x| p as f32 * x)).collect();
        let t = f32_const(b, name, vec![len, f.len()], values);
        let mut shape = vec![1, 1, 1, f.len()];
        shape[axis] = len;
        let t = b.reshape(&format!("{name}.axis"), t, &shape)?;
        Ok(b.op(&format!("{name}.grid"), Op::Expand { shape: vec![tp, hp, wp, f.len()] }, &[t])?)
    };
    let t_part = match fps {
        None => table(b, "rope.t", tp, &ft, 0)?,
        Some(fps) => {
            // (t / fps · 24) · f_t, in the order torch evaluates it.
            let seq = f32_const(b, "rope.t.seq", vec![tp, 1], (0..tp).map(|p| p as f32).collect());
            let scaled = b.binary("rope.t.per_fps", orrery_ir::BinaryOp::Div, seq, fps)?;
            let base = b.scalar("rope.t.base_fps", 24.0);
            let scaled = b.mul("rope.t.positions", scaled, base)?;
            let f = f32_const(b, "rope.t.freqs", vec![1, ft.len()], ft.clone());
            let angles = b.mul("rope.t", scaled, f)?;
            let angles = b.reshape("rope.t.axis", angles, &[tp, 1, 1, ft.len()])?;
            b.op("rope.t.grid", Op::Expand { shape: vec![tp, hp, wp, ft.len()] }, &[angles])?
        }
    };
    let h_part = table(b, "rope.h", hp, &fh, 1)?;
    let w_part = table(b, "rope.w", wp, &fw, 2)?;
    let angles = b.concat("rope.angles", &[t_part, h_part, w_part, t_part, h_part, w_part], 3)?;
    let angles = b.reshape("rope.tokens", angles, &[tp * hp * wp, hd])?;
    let cos = b.unary("rope.cos", UnaryOp::Cos, angles)?;
    let sin = b.unary("rope.sin", UnaryOp::Sin, angles)?;
    Ok((cos, sin))
}
