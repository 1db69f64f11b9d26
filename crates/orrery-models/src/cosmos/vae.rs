//! The Cosmos video tokenizer CV8x8x8 (diffusers `AutoencoderKLCosmos`): encoder and decoder
//! graphs, one shot over the whole video.
//!
//! ```text
//! encode: haar patcher (frame 0 ×p, log2 p DWT levels) → conv_in → down blocks (resnets,
//!         hybrid down-samplers) → mid (resnet, spatial attn, causal temporal attn, resnet)
//!         → GN, SiLU, conv_out → quant_conv                     = latent (the mode)
//! decode: post_quant_conv → conv_in → mid → up blocks (resnets, hybrid up-samplers)
//!         → GN, SiLU, conv_out → haar unpatcher (inverse DWT, drop p − 1 frames)
//! ```
//! Every convolution is causal in time (frame 0 replicated in front) and factorised
//! ((1,3,3) then (3,1,1)); GroupNorm (1 group) runs per frame. See
//! `shared/cosmos-reference.md` §5; weight names are the diffusers keys.

use crate::{ComponentConfig, ModelError, WeightTypes};
use orrery_ir::{
    AttentionMask, BinaryOp, ConvPadMode, ConvParams, DType, GraphBuilder, NodeId, Op, PadMode, PoolKind, PoolParams,
    RefTensor, UnaryOp,
};
use serde_json::Value;

/// The diffusers `vae/config.json` keys orrery reads.
#[derive(Clone, Debug, PartialEq)]
pub struct CosmosVaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decode_block_out_channels: Vec<usize>,
    pub attention_resolutions: Vec<usize>,
    pub resolution: usize,
    pub num_layers: usize,
    pub patch_size: usize,
    pub spatial_compression_ratio: usize,
    pub temporal_compression_ratio: usize,
    /// Per channel × per latent frame (index c·16 + t), for the pipeline's latent scaling.
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
}

fn log2_exact(n: usize) -> Option<usize> {
    n.is_power_of_two().then(|| n.trailing_zeros() as usize)
}

impl CosmosVaeConfig {
    pub fn from_config(config: &ComponentConfig) -> Result<CosmosVaeConfig, ModelError> {
        let err = |reason: String| ModelError::Config { path: config.path.display().to_string(), reason };
        let json = &config.json;
        let list = |key: &str, default: &[usize]| -> Result<Vec<usize>, ModelError> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default.to_vec()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| err(format!("`{key}` must be a list of non-negative integers"))),
                Some(v) => Err(err(format!("`{key}` must be a list, got {v}"))),
            }
        };
        let floats = |key: &str| -> Result<Option<Vec<f64>>, ModelError> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(Value::as_f64)
                    .collect::<Option<Vec<_>>>()
                    .map(Some)
                    .ok_or_else(|| err(format!("`{key}` must be a list of numbers"))),
                Some(v) => Err(err(format!("`{key}` must be a list, got {v}"))),
            }
        };
        match config.opt_str("patch_type")?.unwrap_or("haar") {
            "haar" => {}
            other => return Err(err(format!("`patch_type` {other:?} is not supported (only \"haar\", CV8x8x8's)"))),
        }
        let get = |key: &str, default: usize| config.opt_usize(key).map(|v| v.unwrap_or(default));
        let c = CosmosVaeConfig {
            in_channels: get("in_channels", 3)?,
            out_channels: get("out_channels", 3)?,
            latent_channels: get("latent_channels", 16)?,
            encoder_block_out_channels: list("encoder_block_out_channels", &[128, 256, 512, 512])?,
            decode_block_out_channels: list("decode_block_out_channels", &[256, 512, 512, 512])?,
            attention_resolutions: list("attention_resolutions", &[32])?,
            resolution: get("resolution", 1024)?,
            num_layers: get("num_layers", 2)?,
            patch_size: get("patch_size", 4)?,
            spatial_compression_ratio: get("spatial_compression_ratio", 8)?,
            temporal_compression_ratio: get("temporal_compression_ratio", 8)?,
            latents_mean: floats("latents_mean")?,
            latents_std: floats("latents_std")?,
        };
        let p = log2_exact(c.patch_size).filter(|&l| l >= 1);
        let s = log2_exact(c.spatial_compression_ratio);
        let t = log2_exact(c.temporal_compression_ratio);
        match (p, s, t) {
            (Some(p), Some(s), Some(t)) if s >= p && t >= p => {}
            _ => {
                return Err(err(format!(
                    "`patch_size` {} and the compression ratios {} / {} must be powers of two, the ratios at least the patch",
                    c.patch_size, c.spatial_compression_ratio, c.temporal_compression_ratio
                )))
            }
        }
        for (key, v) in [
            ("encoder_block_out_channels", &c.encoder_block_out_channels),
            ("decode_block_out_channels", &c.decode_block_out_channels),
        ] {
            if v.len() < 2 || v.contains(&0) {
                return Err(err(format!("`{key}` needs at least two positive entries, got {v:?}")));
            }
        }
        Ok(c)
    }

    fn levels(&self) -> usize {
        self.patch_size.trailing_zeros() as usize
    }

    fn spatial_layers(&self) -> usize {
        self.spatial_compression_ratio.trailing_zeros() as usize - self.levels()
    }

    fn temporal_layers(&self) -> usize {
        self.temporal_compression_ratio.trailing_zeros() as usize - self.levels()
    }
}

/// A graph builder with the weights at hand, building either the whole video or one temporal
/// chunk of it.
struct Net<'a, 'w> {
    b: &'a mut GraphBuilder,
    w: &'a WeightTypes<'w>,
    chunk: Option<TemporalChunk>,
    /// Frames per latent frame at the current point of the network (the encoder starts at
    /// 2^(temporal layers) after the patcher and halves at each temporal down-sampler; the
    /// decoder starts at 1 and doubles at each temporal up-sampler).
    rate: usize,
}

/// Where a temporal chunk sits in the video, in latent frames. A chunk of T latent frames
/// covers video frames `0 .. 1 + r(T − 1)` when it is the first (r the temporal compression)
/// and `1 + r(start − 1) .. 1 + r(start + T − 1)` otherwise; see [`TemporalChunk::frames`].
///
/// In a chunk graph every causal convolution reads the last input frames of the previous
/// chunk from a `state.<conv>` input (instead of replicating frame 0) and writes its own as
/// `next_state.<conv>`; the causal temporal attention reads all earlier keys and values from
/// `state.<attn>.k` / `.v` and writes the extended ones. Frames are prepended (the patcher,
/// the temporal down-sampler) or dropped (the temporal up-sampler, the unpatcher) only in the
/// first chunk. With these, the chunks in order give exactly the one-shot result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemporalChunk {
    /// Latent frames before this chunk.
    pub start: usize,
    /// Latent frames of the whole video (the up-sampler doubles frames only when > 1).
    pub total: usize,
}

impl TemporalChunk {
    /// Chunks of `frames` latent frames (the last may be shorter) covering `total`.
    pub fn split(total: usize, frames: usize) -> Vec<(TemporalChunk, usize)> {
        (0..total)
            .step_by(frames.max(1))
            .map(|start| (TemporalChunk { start, total }, frames.min(total - start)))
            .collect()
    }

    fn first(&self) -> bool {
        self.start == 0
    }

    /// Frames before this chunk at a point of the network with `rate` frames per latent frame.
    fn frames_before(&self, rate: usize) -> usize {
        if self.first() {
            0
        } else {
            1 + rate * (self.start - 1)
        }
    }

    /// The video frames of a chunk of `len` latent frames, for temporal compression `ratio`.
    pub fn frames(&self, len: usize, ratio: usize) -> std::ops::Range<usize> {
        let start = self.frames_before(ratio);
        start..self.frames_before_end(len, ratio)
    }

    fn frames_before_end(&self, len: usize, ratio: usize) -> usize {
        TemporalChunk { start: self.start + len, total: self.total }.frames_before(ratio)
    }
}

impl Net<'_, '_> {
    fn dims(&self, x: NodeId) -> Vec<usize> {
        self.b.dims(x).to_vec()
    }

    fn f32_weight(&mut self, name: &str, shape: &[usize]) -> Result<NodeId, ModelError> {
        let t = self.w.declare(self.b, name, shape)?;
        Ok(self.b.cast(&format!("{name}.f32"), t, DType::F32)?)
    }

    fn scalar(&mut self, name: &str, v: f64) -> NodeId {
        self.b.scalar(name, v)
    }

    /// `CosmosCausalConv3d`: frame 0 replicated `(kt − 1) + (1 − st)` times in front, H and W
    /// zero-padded by `pad`, then the convolution with bias.
    fn causal_conv(
        &mut self,
        name: &str,
        x: NodeId,
        cout: usize,
        k: [usize; 3],
        stride: [usize; 3],
        pad: usize,
    ) -> Result<NodeId, ModelError> {
        let cin = self.dims(x)[1];
        let tpad = (k[0] - 1 + 1).saturating_sub(stride[0]);
        let mut x = x;
        // Without padding in space and without chunk state, the replicas in front are the
        // convolution's own replicate padding in time: no padded copy of the input (a
        // (k, 1, 1) kernel with stride 1 reads its edge frame in place; a strided one gathers it).
        let time_pad = if tpad > 0 && pad == 0 && self.chunk.is_none() { tpad } else { 0 };
        if tpad > 0 && time_pad == 0 {
            let d = self.dims(x);
            match self.chunk {
                Some(chunk) if !chunk.first() => {
                    let history = self.b.input(&format!("state.{name}"), DType::F32, [d[0], d[1], tpad, d[3], d[4]])?;
                    x = self.b.concat(&format!("{name}.with_history"), &[history, x], 2)?;
                }
                _ => {
                    let pads = vec![(0, 0), (0, 0), (tpad, 0), (0, 0), (0, 0)];
                    x = self.b.op(&format!("{name}.causal_pad"), Op::Pad { pads, mode: PadMode::Replicate }, &[x])?;
                }
            }
            if self.chunk.is_some() {
                let len = self.dims(x)[2];
                let last = self.b.narrow(&format!("{name}.history"), x, 2, len - tpad, len)?;
                // A copy of its own, so the whole padded input is not kept alive by a view
                // until the chunk ends (graph outputs live to the end).
                let last = self.b.cast(&format!("{name}.history.copy"), last, DType::F32)?;
                self.b.output(&format!("next_state.{name}"), last)?;
            }
        }
        let w = self.w.declare(self.b, &format!("{name}.weight"), &[cout, cin, k[0], k[1], k[2]])?;
        let bias = self.f32_weight(&format!("{name}.bias"), &[cout])?;
        let params = ConvParams {
            stride: stride.to_vec(),
            dilation: vec![1, 1, 1],
            padding: vec![(time_pad, 0), (pad, pad), (pad, pad)],
            pad_mode: if time_pad > 0 { ConvPadMode::Replicate } else { ConvPadMode::Zeros },
            groups: 1,
            has_bias: true,
        };
        Ok(self.b.op(name, Op::Conv(params), &[x, w, bias])?)
    }

    fn conv1(&mut self, name: &str, x: NodeId, cout: usize) -> Result<NodeId, ModelError> {
        self.causal_conv(name, x, cout, [1, 1, 1], [1, 1, 1], 0)
    }

    /// `CosmosConvProjection3d`: (1,3,3) pad 1, then (3,1,1).
    fn projection(&mut self, name: &str, x: NodeId, cout: usize) -> Result<NodeId, ModelError> {
        let s = self.causal_conv(&format!("{name}.conv_s"), x, cout, [1, 3, 3], [1, 1, 1], 1)?;
        self.causal_conv(&format!("{name}.conv_t"), s, cout, [3, 1, 1], [1, 1, 1], 0)
    }

    /// GroupNorm(1 group, eps 1e-6, affine) per frame: over C, H, W of each (batch, frame).
    fn norm(&mut self, name: &str, x: NodeId) -> Result<NodeId, ModelError> {
        let [b, c, t, h, w]: [usize; 5] = self.dims(x).try_into().expect("5-D activations");
        let gw = self.f32_weight(&format!("{name}.norm.weight"), &[c])?;
        let gb = self.f32_weight(&format!("{name}.norm.bias"), &[c])?;
        let y = self.b.permute(&format!("{name}.frames"), x, &[0, 2, 1, 3, 4])?;
        let y = self.b.reshape(&format!("{name}.per_frame"), y, &[b * t, c, h, w])?;
        let y = self.b.op(name, Op::GroupNorm { groups: 1, eps: 1e-6, affine: true }, &[y, gw, gb])?;
        let y = self.b.reshape(&format!("{name}.unframe"), y, &[b, t, c, h, w])?;
        Ok(self.b.permute(&format!("{name}.channels"), y, &[0, 2, 1, 3, 4])?)
    }

    fn silu(&mut self, name: &str, x: NodeId) -> Result<NodeId, ModelError> {
        Ok(self.b.unary(name, UnaryOp::Silu, x)?)
    }

    fn resnet(&mut self, name: &str, x: NodeId, cout: usize) -> Result<NodeId, ModelError> {
        let cin = self.dims(x)[1];
        let residual = if cin != cout { self.conv1(&format!("{name}.conv_shortcut"), x, cout)? } else { x };
        let h = self.norm(&format!("{name}.norm1"), x)?;
        let h = self.silu(&format!("{name}.act1"), h)?;
        let h = self.projection(&format!("{name}.conv1"), h, cout)?;
        let h = self.norm(&format!("{name}.norm2"), h)?;
        let h = self.silu(&format!("{name}.act2"), h)?;
        let h = self.projection(&format!("{name}.conv2"), h, cout)?;
        Ok(self.b.add(&format!("{name}.residual"), h, residual)?)
    }

    /// Single-head attention over H·W per frame (`temporal` false) or over T per pixel with a
    /// causal mask (`temporal` true), 1×1×1 projections, scale C^-½, residual.
    fn attention(&mut self, name: &str, x: NodeId, temporal: bool) -> Result<NodeId, ModelError> {
        let [b, c, t, h, w]: [usize; 5] = self.dims(x).try_into().expect("5-D activations");
        let n = self.norm(&format!("{name}.norm"), x)?;
        // Token layouts: spatial [B·T, H·W, C], temporal [B·H·W, T, C].
        let (perm, rows, len, back, back_perm) = if temporal {
            ([0, 3, 4, 2, 1], b * h * w, t, [b, h, w, t, c], [0, 4, 3, 1, 2])
        } else {
            ([0, 2, 3, 4, 1], b * t, h * w, [b, t, h, w, c], [0, 4, 1, 2, 3])
        };
        let mut qkv = Vec::new();
        for p in ["to_q", "to_k", "to_v"] {
            let y = self.conv1(&format!("{name}.{p}"), n, c)?;
            let y = self.b.permute(&format!("{name}.{p}.tokens_order"), y, &perm)?;
            qkv.push(self.b.reshape(&format!("{name}.{p}.tokens"), y, &[rows, len, c])?);
        }
        let scale = 1.0 / (c as f64).sqrt();
        let o = if temporal {
            // In a later decoder chunk the keys and values of all earlier frames come first.
            let prev = self.chunk.map_or(0, |c| c.frames_before(self.rate));
            if let Some(chunk) = self.chunk {
                for (slot, tag) in [(1, "k"), (2, "v")] {
                    if !chunk.first() {
                        let past = self.b.input(&format!("state.{name}.{tag}"), DType::F32, [rows, prev, c])?;
                        qkv[slot] = self.b.concat(&format!("{name}.{tag}.all"), &[past, qkv[slot]], 1)?;
                    }
                    self.b.output(&format!("next_state.{name}.{tag}"), qkv[slot])?;
                }
            }
            let keys = prev + len;
            let causal: Vec<f64> =
                (0..len).flat_map(|i| (0..keys).map(move |j| f64::from(u8::from(j <= prev + i)))).collect();
            let mask =
                self.b.constant(&format!("{name}.causal_mask"), RefTensor::new(DType::Bool, vec![len, keys], causal));
            qkv.push(mask);
            self.b.op(&format!("{name}.sdpa"), Op::attention(scale, AttentionMask::Boolean), &qkv)?
        } else {
            self.b.op(&format!("{name}.sdpa"), Op::attention(scale, AttentionMask::None), &qkv)?
        };
        let o = self.b.reshape(&format!("{name}.untokens"), o, &back)?;
        let o = self.b.permute(&format!("{name}.channels"), o, &back_perm)?;
        let o = self.conv1(&format!("{name}.to_out.0"), o, c)?;
        Ok(self.b.add(&format!("{name}.residual"), o, x)?)
    }

    fn mid_block(&mut self, name: &str, x: NodeId) -> Result<NodeId, ModelError> {
        let c = self.dims(x)[1];
        let x = self.resnet(&format!("{name}.resnets.0"), x, c)?;
        let x = self.attention(&format!("{name}.attentions.0"), x, false)?;
        let x = self.attention(&format!("{name}.temp_attentions.0"), x, true)?;
        self.resnet(&format!("{name}.resnets.1"), x, c)
    }

    fn avg_pool(&mut self, name: &str, x: NodeId, k: [usize; 3]) -> Result<NodeId, ModelError> {
        let params = PoolParams {
            kind: PoolKind::Avg { count_include_pad: true },
            kernel: k.to_vec(),
            stride: k.to_vec(),
            padding: vec![0; 3],
        };
        Ok(self.b.op(name, Op::Pool(params), &[x])?)
    }

    /// `CosmosDownsample3d`: spatial (zero-pad right/bottom, stride-2 conv + 2×2 average),
    /// temporal (frame 0 in front, stride-2 causal conv + 2-frame average), then 1×1×1.
    fn downsample(&mut self, name: &str, x: NodeId, spatial: bool, temporal: bool) -> Result<NodeId, ModelError> {
        let c = self.dims(x)[1];
        let mut x = x;
        if spatial {
            let pads = vec![(0, 0), (0, 0), (0, 0), (0, 1), (0, 1)];
            let xp = self.b.op(&format!("{name}.spatial_pad"), Op::Pad { pads, mode: PadMode::Constant(0.0) }, &[x])?;
            let conv = self.causal_conv(&format!("{name}.conv1"), xp, c, [1, 3, 3], [1, 2, 2], 0)?;
            let pool = self.avg_pool(&format!("{name}.spatial_pool"), xp, [1, 2, 2])?;
            x = self.b.add(&format!("{name}.spatial"), conv, pool)?;
        }
        if temporal {
            // Frame 0 in front, in the first chunk only: a later chunk starts on an odd frame,
            // so its pairs are its own and the convolution's one frame of history is the last
            // frame of the previous chunk.
            let xp = if self.chunk.is_none_or(|c| c.first()) {
                let pads = vec![(0, 0), (0, 0), (1, 0), (0, 0), (0, 0)];
                self.b.op(&format!("{name}.temporal_pad"), Op::Pad { pads, mode: PadMode::Replicate }, &[x])?
            } else {
                x
            };
            let conv = self.causal_conv(&format!("{name}.conv2"), xp, c, [3, 1, 1], [2, 1, 1], 0)?;
            let pool = self.avg_pool(&format!("{name}.temporal_pool"), xp, [2, 1, 1])?;
            x = self.b.add(&format!("{name}.temporal"), conv, pool)?;
            self.rate /= 2;
        }
        self.conv1(&format!("{name}.conv3"), x, c)
    }

    /// Each element of `x` repeated twice along `axis` (torch `repeat_interleave(2, axis)`).
    fn repeat2(&mut self, name: &str, x: NodeId, axis: usize) -> Result<NodeId, ModelError> {
        let d = self.dims(x);
        let mut split = d.clone();
        split.insert(axis + 1, 1);
        let mut wide = split.clone();
        wide[axis + 1] = 2;
        let mut merged = d.clone();
        merged[axis] *= 2;
        let y = self.b.reshape(&format!("{name}.split"), x, &split)?;
        let y = self.b.op(&format!("{name}.expand"), Op::Expand { shape: wide }, &[y])?;
        Ok(self.b.reshape(name, y, &merged)?)
    }

    /// `CosmosUpsample3d`: temporal (frames doubled, the first dropped, `x + conv(3,1,1)(x)`),
    /// spatial (nearest ×2, `x + conv(1,3,3)(x)`), then 1×1×1.
    fn upsample(&mut self, name: &str, x: NodeId, spatial: bool, temporal: bool) -> Result<NodeId, ModelError> {
        let c = self.dims(x)[1];
        let mut x = x;
        if temporal {
            // Frames double when the whole video has more than one; the first doubled frame is
            // dropped (in the first chunk only).
            let t = self.dims(x)[2];
            let (total, first) = self.chunk.map_or((t, true), |c| (c.total, c.first()));
            if total > 1 {
                let r = self.repeat2(&format!("{name}.frames_x2"), x, 2)?;
                x = if first { self.b.narrow(&format!("{name}.frames"), r, 2, 1, 2 * t)? } else { r };
            }
            let conv = self.causal_conv(&format!("{name}.conv1"), x, c, [3, 1, 1], [1, 1, 1], 0)?;
            x = self.b.add(&format!("{name}.temporal"), conv, x)?;
            self.rate *= 2;
        }
        if spatial {
            let r = self.repeat2(&format!("{name}.rows_x2"), x, 3)?;
            let r = self.repeat2(&format!("{name}.cols_x2"), r, 4)?;
            let conv = self.causal_conv(&format!("{name}.conv2"), r, c, [1, 3, 3], [1, 1, 1], 1)?;
            x = self.b.add(&format!("{name}.spatial"), conv, r)?;
        }
        self.conv1(&format!("{name}.conv3"), x, c)
    }

    /// One level of the 3-D Haar DWT (reflect-pad 1 at the end of T, H, W; stride-2 low/high
    /// pairs along T, then H, then W), bands concatenated [lll, llh, …, hhh] along channels,
    /// divided by √8.
    fn dwt(&mut self, name: &str, x: NodeId) -> Result<NodeId, ModelError> {
        let pads = vec![(0, 0), (0, 0), (0, 1), (0, 1), (0, 1)];
        let x = self.b.op(&format!("{name}.pad"), Op::Pad { pads, mode: PadMode::Reflect }, &[x])?;
        let a = self.scalar(&format!("{name}.a"), std::f32::consts::FRAC_1_SQRT_2 as f64);
        let mut bands = vec![x];
        for (axis, tag) in [(2, "t"), (3, "h"), (4, "w")] {
            let mut next = Vec::new();
            for (i, &band) in bands.iter().enumerate() {
                let len = self.dims(band)[axis];
                let n = (len - 2) / 2 + 1;
                let even = self.b.op(
                    &format!("{name}.{tag}{i}.even"),
                    Op::Slice { axis, start: 0, end: 2 * n - 1, step: 2 },
                    &[band],
                )?;
                let odd = self.b.op(
                    &format!("{name}.{tag}{i}.odd"),
                    Op::Slice { axis, start: 1, end: 2 * n, step: 2 },
                    &[band],
                )?;
                let ea = self.b.mul(&format!("{name}.{tag}{i}.even_a"), even, a)?;
                let oa = self.b.mul(&format!("{name}.{tag}{i}.odd_a"), odd, a)?;
                next.push(self.b.add(&format!("{name}.{tag}{i}.low"), ea, oa)?);
                next.push(self.b.binary(&format!("{name}.{tag}{i}.high"), BinaryOp::Sub, ea, oa)?);
            }
            bands = next;
        }
        let y = self.b.concat(&format!("{name}.bands"), &bands, 1)?;
        let root8 = self.scalar(&format!("{name}.sqrt8"), 8f64.sqrt());
        Ok(self.b.binary(name, BinaryOp::Div, y, root8)?)
    }

    /// `e` and `o` interleaved along `axis` (e first).
    fn interleave(&mut self, name: &str, e: NodeId, o: NodeId, axis: usize) -> Result<NodeId, ModelError> {
        let d = self.dims(e);
        let mut split = d.clone();
        split.insert(axis + 1, 1);
        let mut merged = d.clone();
        merged[axis] *= 2;
        let e = self.b.reshape(&format!("{name}.even"), e, &split)?;
        let o = self.b.reshape(&format!("{name}.odd"), o, &split)?;
        let y = self.b.concat(&format!("{name}.pairs"), &[e, o], axis + 1)?;
        Ok(self.b.reshape(name, y, &merged)?)
    }

    /// One level of the inverse DWT (transposed stride-2 low/high filters along W, then H,
    /// then T), times √8.
    fn idwt(&mut self, name: &str, x: NodeId) -> Result<NodeId, ModelError> {
        let g = self.dims(x)[1] / 8;
        let a = self.scalar(&format!("{name}.a"), std::f32::consts::FRAC_1_SQRT_2 as f64);
        let mut bands = self.b.split(&format!("{name}.bands"), x, 1, &[g; 8])?;
        for (axis, tag) in [(4, "w"), (3, "h"), (2, "t")] {
            let mut next = Vec::new();
            for (i, pair) in bands.chunks(2).enumerate() {
                let la = self.b.mul(&format!("{name}.{tag}{i}.low_a"), pair[0], a)?;
                let ha = self.b.mul(&format!("{name}.{tag}{i}.high_a"), pair[1], a)?;
                let even = self.b.add(&format!("{name}.{tag}{i}.even"), la, ha)?;
                let odd = self.b.binary(&format!("{name}.{tag}{i}.odd"), BinaryOp::Sub, la, ha)?;
                next.push(self.interleave(&format!("{name}.{tag}{i}"), even, odd, axis)?);
            }
            bands = next;
        }
        let root8 = self.scalar(&format!("{name}.sqrt8"), 8f64.sqrt());
        Ok(self.b.mul(name, bands[0], root8)?)
    }
}

/// The encoder graph: `sample` [B, in, F, H, W] → `latent` [B, latent, 1 + (F − 1)/8, H/8, W/8].
pub fn encoder_graph(c: &CosmosVaeConfig, w: &WeightTypes, shape: [usize; 5]) -> Result<orrery_ir::Graph, ModelError> {
    build_encoder(c, w, shape, None)
}

/// The encoder graph of one temporal chunk: `sample` holds the chunk's video frames
/// ([`TemporalChunk::frames`]: 1 + r(T − 1) for the first chunk of T latent frames, r·T after
/// it); `latent` holds its T latent frames. `state.*` inputs take the previous chunk's
/// `next_state.*` outputs of the same name. The chunks in order, their latents concatenated
/// along time, give the one-shot encode.
pub fn encoder_chunk_graph(
    c: &CosmosVaeConfig,
    w: &WeightTypes,
    shape: [usize; 5],
    chunk: TemporalChunk,
) -> Result<orrery_ir::Graph, ModelError> {
    build_encoder(c, w, shape, Some(chunk))
}

fn build_encoder(
    c: &CosmosVaeConfig,
    w: &WeightTypes,
    shape: [usize; 5],
    chunk: Option<TemporalChunk>,
) -> Result<orrery_ir::Graph, ModelError> {
    let mut b = GraphBuilder::new();
    let x = b.input("sample", DType::F32, shape.to_vec())?;
    let p = c.patch_size;
    let mut n = Net { b: &mut b, w, chunk, rate: c.temporal_compression_ratio / p };
    if let Some(chunk) = chunk {
        // Whole latent frames keep each chunk's DWT pairs and down-sampler pairs its own.
        let (f, r) = (shape[2], c.temporal_compression_ratio);
        let whole = if chunk.first() { f >= 1 && (f - 1).is_multiple_of(r) } else { f >= r && f.is_multiple_of(r) };
        if !whole {
            let expected = if chunk.first() { format!("1 + {r}·k") } else { format!("{r}·k (k ≥ 1)") };
            return Err(ModelError::InputShape {
                name: "sample".into(),
                got: shape.to_vec(),
                expected: format!("{expected} frames in the encoder chunk at latent frame {}", chunk.start),
            });
        }
    }
    // Frame 0 repeated p times (in the first chunk), then the DWT levels.
    let mut x = x;
    if chunk.is_none_or(|c| c.first()) {
        let pads = vec![(0, 0), (0, 0), (p - 1, 0), (0, 0), (0, 0)];
        x = n.b.op("encoder.patch_embed.first_frame", Op::Pad { pads, mode: PadMode::Replicate }, &[x])?;
    }
    for level in 0..c.levels() {
        x = n.dwt(&format!("encoder.patch_embed.dwt{level}"), x)?;
    }
    let ch = &c.encoder_block_out_channels;
    x = n.projection("encoder.conv_in", x, ch[0])?;
    let mut resolution = c.resolution / p;
    for i in 0..ch.len() - 1 {
        let name = format!("encoder.down_blocks.{i}");
        let attend = c.attention_resolutions.contains(&resolution);
        for j in 0..c.num_layers {
            x = n.resnet(&format!("{name}.resnets.{j}"), x, ch[i + 1])?;
            if attend {
                x = n.attention(&format!("{name}.attentions.{j}"), x, false)?;
                x = n.attention(&format!("{name}.temp_attentions.{j}"), x, true)?;
            }
        }
        if i < ch.len() - 2 {
            let (spatial, temporal) = (i < c.spatial_layers(), i < c.temporal_layers());
            if spatial || temporal {
                x = n.downsample(&format!("{name}.downsamplers.0"), x, spatial, temporal)?;
            }
            resolution /= 2;
        }
    }
    x = n.mid_block("encoder.mid_block", x)?;
    x = n.norm("encoder.norm_out", x)?;
    x = n.silu("encoder.act_out", x)?;
    x = n.projection("encoder.conv_out", x, c.latent_channels)?;
    let latent = n.conv1("quant_conv", x, c.latent_channels)?;
    b.output("latent", latent)?;
    Ok(b.finish()?)
}

/// The decoder graph: `z` [B, latent, T, h, w] → `sample` [B, out, 1 + 8(T − 1), 8h, 8w].
pub fn decoder_graph(c: &CosmosVaeConfig, w: &WeightTypes, shape: [usize; 5]) -> Result<orrery_ir::Graph, ModelError> {
    build_decoder(c, w, shape, None)
}

/// The decoder graph of one temporal chunk: `z` holds latent frames `chunk.start ..
/// chunk.start + T`; `sample` holds that chunk's output frames (8·T, or 1 + 8(T − 1) for the
/// first chunk). Each `state.*` input takes the previous chunk's `next_state.*` output of the
/// same name (the first chunk has none). Running the chunks in order and concatenating their
/// samples along time gives the one-shot decode.
pub fn decoder_chunk_graph(
    c: &CosmosVaeConfig,
    w: &WeightTypes,
    shape: [usize; 5],
    chunk: TemporalChunk,
) -> Result<orrery_ir::Graph, ModelError> {
    build_decoder(c, w, shape, Some(chunk))
}

fn build_decoder(
    c: &CosmosVaeConfig,
    w: &WeightTypes,
    shape: [usize; 5],
    chunk: Option<TemporalChunk>,
) -> Result<orrery_ir::Graph, ModelError> {
    let mut b = GraphBuilder::new();
    let z = b.input("z", DType::F32, shape.to_vec())?;
    let mut n = Net { b: &mut b, w, chunk, rate: 1 };
    let ch: Vec<usize> = c.decode_block_out_channels.iter().rev().copied().collect();
    let p = c.patch_size;
    let mut x = n.conv1("post_quant_conv", z, c.latent_channels)?;
    x = n.projection("decoder.conv_in", x, ch[0])?;
    x = n.mid_block("decoder.mid_block", x)?;
    let mut resolution = (c.resolution / p) >> (ch.len() - 2);
    let (ns, nt) = (c.spatial_layers(), c.temporal_layers());
    for i in 0..ch.len() - 1 {
        let name = format!("decoder.up_blocks.{i}");
        let attend = c.attention_resolutions.contains(&resolution);
        for j in 0..c.num_layers + 1 {
            x = n.resnet(&format!("{name}.resnets.{j}"), x, ch[i + 1])?;
            if attend {
                x = n.attention(&format!("{name}.attentions.{j}"), x, false)?;
                x = n.attention(&format!("{name}.temp_attentions.{j}"), x, true)?;
            }
        }
        if i < ch.len() - 2 {
            let temporal = 0 < i && i < nt + 1;
            let spatial = temporal || (i < ns && ns > nt);
            if spatial || temporal {
                x = n.upsample(&format!("{name}.upsamplers.0"), x, spatial, temporal)?;
            }
            resolution *= 2;
        }
    }
    x = n.norm("decoder.norm_out", x)?;
    x = n.silu("decoder.act_out", x)?;
    x = n.projection("decoder.conv_out", x, c.out_channels * p * p * p)?;
    for level in 0..c.levels() {
        x = n.idwt(&format!("decoder.unpatch_embed.idwt{level}"), x)?;
    }
    let frames = n.dims(x)[2];
    let first = chunk.is_none_or(|c| c.first());
    let y = if first { n.b.narrow("decoder.unpatch_embed", x, 2, p - 1, frames)? } else { x };
    b.output("sample", y)?;
    Ok(b.finish()?)
}
