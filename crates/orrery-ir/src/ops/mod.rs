//! The operator library.
//!
//! Every op is a variant of [`Op`] with its parameters. For each op this module family declares
//! - its formula, shapes and dtype rules (doc comments below),
//! - its shape and dtype inference ([`Op::infer`], in `infer.rs`),
//! - its cost in FLOPs and minimum bytes moved ([`Op::cost`], in `cost.rs`),
//! - and its float64 reference evaluation (`crate::reference`).
//!
//! Dtype policy: computation is f32. f16, bf16, i64, i32, u8 and bool are storage dtypes:
//! [`Op::Cast`] converts, and the weight operands of [`Op::MatMul`], [`Op::Linear`],
//! [`Op::Conv`], [`Op::ConvTranspose`] and the table of [`Op::Embedding`] may be f16/bf16 (they
//! are widened to f32 inside the kernel). Shape ops accept every dtype.

mod cost;
mod fused;
mod infer;

pub use cost::Cost;
pub use fused::{FusedProgram, FusedStep};

use crate::DType;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Elementwise unary functions on f32 (`y = f(x)`, same shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `|x|`
    Abs,
    /// `e^x`
    Exp,
    /// natural log; `log(0) = -inf`, negative gives NaN
    Log,
    /// `√x`
    Sqrt,
    /// `1/√x`
    Rsqrt,
    /// `1/x`
    Reciprocal,
    Sin,
    Cos,
    Tanh,
    /// `1/(1+e^-x)`
    Sigmoid,
    /// `max(x, 0)`
    Relu,
    /// `x·Φ(x) = x/2·(1+erf(x/√2))` (torch `gelu`, approximate="none")
    GeluErf,
    /// `x/2·(1+tanh(√(2/π)·(x+0.044715x³)))` (torch `gelu`, approximate="tanh")
    GeluTanh,
    /// `x·sigmoid(x)`
    Silu,
}

/// Elementwise binary functions on f32 with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `a^b` (torch `pow`)
    Pow,
    /// elementwise maximum (NaN propagates)
    Max,
    /// elementwise minimum (NaN propagates)
    Min,
}

/// Comparisons with numpy broadcasting; output bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
}

/// How [`Op::Pad`] fills the border.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PadMode {
    /// A constant value (cast to the tensor's dtype).
    Constant(#[serde(with = "crate::serde_bits::f64")] f64),
    /// Repeat the edge element (torch `replicate`).
    Replicate,
    /// Mirror without repeating the edge (torch `reflect`); padding must be < the dim.
    Reflect,
}

/// How [`Op::Conv`] fills the padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConvPadMode {
    Zeros,
    /// Edge replication: the causal convolutions of the Cosmos tokenizer pad time this way.
    Replicate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResizeMode {
    /// torch `nearest`: `src = floor(dst · in / out)`.
    Nearest,
    /// torch `bilinear` (2 spatial dims).
    Bilinear,
    /// torch `bicubic` (2 spatial dims, a = -0.75, border-clamped taps).
    Bicubic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PoolKind {
    /// Average; with `count_include_pad` the divisor is the full window, else only in-bounds taps.
    Avg { count_include_pad: bool },
    /// Maximum; padding never wins.
    Max,
}

/// How [`Op::Rope`] pairs the channels it rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RopeStyle {
    /// `rotate(x) = concat(-x[D/2..], x[..D/2])` (GPT-NeoX, diffusers `use_real_unbind_dim=-2`).
    RotateHalf,
    /// `rotate(x)[2i] = -x[2i+1]`, `rotate(x)[2i+1] = x[2i]` (GPT-J, diffusers default).
    Interleaved,
}

/// Where [`Op::Attention`] puts the heads axis of its output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttentionLayout {
    /// `[..., H, Lq, Dv]`: the same leading dims as q (the SDPA convention).
    #[default]
    HeadsMajor,
    /// `[..., Lq, H, Dv]`: the last two leading axes swapped, i.e. what `permute(0, 2, 1, 3)`
    /// of the heads-major output gives, written directly, so that merging the heads back into
    /// the model width is a view rather than a copy. Needs q of rank ≥ 3.
    TokensMajor,
}

/// The optional mask of [`Op::Attention`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttentionMask {
    None,
    /// f32, added to the scaled scores. A row whose entries are all -inf gives zeros (torch
    /// gives NaN there; zeros keep padded rows harmless downstream).
    Additive,
    /// bool, `true` = attend (torch SDPA convention). A row with nothing to attend gives zeros.
    Boolean,
}

/// Parameters of an N-d convolution (N = 1, 2 or 3).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvParams {
    pub stride: Vec<usize>,
    pub dilation: Vec<usize>,
    /// (before, after) per spatial dim; asymmetric padding expresses causal convolutions.
    pub padding: Vec<(usize, usize)>,
    pub pad_mode: ConvPadMode,
    pub groups: usize,
    pub has_bias: bool,
}

/// Parameters of an N-d transposed convolution (N = 2 or 3; 1 is accepted too).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvTransposeParams {
    pub stride: Vec<usize>,
    pub dilation: Vec<usize>,
    /// Symmetric padding per spatial dim (torch `padding`).
    pub padding: Vec<usize>,
    pub output_padding: Vec<usize>,
    pub groups: usize,
    pub has_bias: bool,
}

/// Parameters of N-d pooling (N = 1, 2 or 3).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PoolParams {
    pub kind: PoolKind,
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    /// Symmetric padding per spatial dim; at most half the kernel (torch's rule).
    pub padding: Vec<usize>,
}

/// Groups of ops that share a reference module and a kernel module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpFamily {
    /// Unary, clamp, binary, compare, where, cast.
    Elementwise,
    /// Reductions, argmax, softmax, log-softmax.
    Reduce,
    /// Layer, RMS, group and batch norm; rotary embedding.
    Norm,
    /// Data movement without arithmetic: views, concat, pad, repeat, indexing, arange.
    Layout,
    /// Matmul, linear, attention.
    Linalg,
    /// Convolutions, pooling, resize.
    Conv,
    /// Programs made of several elementwise functions.
    Fused,
    /// A matmul, linear, convolution, normalisation or rotary op followed by an elementwise
    /// program over its output ([`Op::Epilogue`]).
    Epilogue,
    /// Communication among the ranks running one parallel plan ([`Op::AllReduce`]): no
    /// backend kernel computes it; the runtime hands it to the run's collective.
    Collective,
}

/// An operator with its parameters. Inputs are positional; each variant documents them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `y = f(x)`; x f32; y has x's shape.
    Unary(UnaryOp),
    /// `y = min(max(x, min), max)`; x f32.
    Clamp {
        #[serde(with = "crate::serde_bits::f64")]
        min: f64,
        #[serde(with = "crate::serde_bits::f64")]
        max: f64,
    },
    /// `y = a ∘ b` with numpy broadcasting; a, b f32; y f32 of the broadcast shape.
    Binary(BinaryOp),
    /// `y = a ⋚ b` with broadcasting; a, b of one dtype (any); y bool.
    Compare(CompareOp),
    /// `y = cond ? a : b` with broadcasting over all three; cond bool; a, b of one dtype.
    Where,
    /// Converts to `to`. Float → int truncates toward zero (torch; NaN gives 0, values out of
    /// the target's range wrap like torch's u8 casts); → bool is `x != 0`; → f16/bf16 rounds to
    /// nearest even (integers go through f32 first, as torch does).
    Cast { to: DType },
    /// Reduces `axes` (sorted, distinct); x f32. Mean divides by the reduced count. Keeps the
    /// reduced axes as size 1 when `keepdim`.
    Reduce { op: ReduceOp, axes: Vec<usize>, keepdim: bool },
    /// Index of the first maximum along `axis`; x f32; y i64.
    ArgMax { axis: usize, keepdim: bool },
    /// Batched matmul `y[..., m, n] = Σ_k a[..., m, k] · b[..., k, n]`; a `[..., M, K]` (or
    /// `[..., K, M]` when `transpose_a`), b `[..., K, N]` (or `[..., N, K]` when `transpose_b`);
    /// rank ≥ 2, batch dims broadcast. a f32; b f32, f16 or bf16 (widened); y f32.
    MatMul { transpose_a: bool, transpose_b: bool },
    /// torch `linear`: `y = x · wᵀ (+ bias)`; x `[..., K]` f32, w `[N, K]` and bias `[N]`
    /// f32/f16/bf16 (widened); y `[..., N]` f32. Inputs: x, w[, bias].
    Linear { has_bias: bool },
    /// `y = exp(x - max) / Σ exp(x - max)` along `axis`; x f32.
    Softmax { axis: usize },
    /// `y = x - max - log Σ exp(x - max)` along `axis`; x f32.
    LogSoftmax { axis: usize },
    /// Normalises the last dim: `(x - mean) / √(var + eps)` (biased variance), then `· w + b`
    /// when affine. Inputs: x f32 `[..., D]`[, w `[D]`, b `[D]` f32].
    LayerNorm {
        #[serde(with = "crate::serde_bits::f64")]
        eps: f64,
        affine: bool,
    },
    /// `x / √(mean(x²) + eps) (· w)` over the last dim. Inputs: x f32 `[..., D]`[, w `[D]`].
    RmsNorm {
        #[serde(with = "crate::serde_bits::f64")]
        eps: f64,
        has_weight: bool,
    },
    /// x `[N, C, *]` split into `groups` groups of C/groups channels; each (n, group) is
    /// normalised over its channels and all trailing dims; then `· w[c] + b[c]` when affine.
    GroupNorm {
        groups: usize,
        #[serde(with = "crate::serde_bits::f64")]
        eps: f64,
        affine: bool,
    },
    /// Inference batch norm over channel dim 1: `(x - mean[c]) / √(var[c] + eps) (· w[c] + b[c])`.
    /// Inputs: x `[N, C, *]`, mean `[C]`, var `[C]`[, w `[C]`, b `[C]`], all f32.
    BatchNorm {
        #[serde(with = "crate::serde_bits::f64")]
        eps: f64,
        affine: bool,
    },
    /// Scaled dot-product attention `softmax(q·kᵀ·scale (+ mask)) · v`, never materialising the
    /// `Lq × Lk` matrix in the kernel. q `[..., Lq, D]`, k `[..., Lk, D]`, v `[..., Lk, Dv]` with
    /// equal leading dims; mask (when present) broadcasts to `[..., Lq, Lk]`. y `[..., Lq, Dv]`
    /// ([`AttentionLayout::HeadsMajor`]) or `[..., Lq, H, Dv]` with H q's dim `r - 3`
    /// ([`AttentionLayout::TokensMajor`]).
    Attention {
        #[serde(with = "crate::serde_bits::f64")]
        scale: f64,
        mask: AttentionMask,
        layout: AttentionLayout,
    },
    /// Rotary embedding `y = x · cos + rotate(x) · sin`; x f32 `[..., D]` (D even), cos and sin
    /// f32 broadcastable to x (the caller expands the frequency table to width D).
    Rope { style: RopeStyle },
    /// N-d convolution (cross-correlation, as torch). x `[B, Cin, *S]` f32, w
    /// `[Cout, Cin/groups, *K]` f32/f16/bf16, bias `[Cout]`; y `[B, Cout, *S']` with
    /// `S' = (S + pad_before + pad_after - dil·(K-1) - 1) / stride + 1`.
    Conv(ConvParams),
    /// N-d transposed convolution (torch `conv_transposeNd`). x `[B, Cin, *S]`, w
    /// `[Cin, Cout/groups, *K]`, bias `[Cout]`; `S' = (S-1)·stride - 2·pad + dil·(K-1) + out_pad + 1`.
    ConvTranspose(ConvTransposeParams),
    /// N-d average or max pooling over the trailing N dims of x `[B, C, *S]` f32.
    Pool(PoolParams),
    /// Resizes the trailing `size.len()` dims of x `[B, C, *S]` f32 to `size`.
    /// `align_corners` applies to bilinear and bicubic (torch semantics, sizes given).
    Resize { mode: ResizeMode, size: Vec<usize>, align_corners: bool },
    /// Same elements in row-major order, new shape (same numel). Any dtype.
    Reshape { shape: Vec<usize> },
    /// `y.dims[i] = x.dims[perm[i]]`. Any dtype.
    Permute { perm: Vec<usize> },
    /// Elements `start, start+step, …` below `end` along `axis` (0 ≤ start ≤ end ≤ dim, step ≥ 1).
    Slice { axis: usize, start: usize, end: usize, step: usize },
    /// Concatenates all inputs (same dtype, equal other dims) along `axis`.
    Concat { axis: usize },
    /// Pads every axis by (before, after); any dtype for `Constant`, f32 for the others.
    Pad { pads: Vec<(usize, usize)>, mode: PadMode },
    /// Broadcasts x to `shape` (numpy rules; new leading dims allowed). Any dtype.
    Expand { shape: Vec<usize> },
    /// Tiles x `repeats[i]` times along each axis (torch `Tensor.repeat`; rank may grow). Any dtype.
    Repeat { repeats: Vec<usize> },
    /// torch `index_select`: `y = x` with `axis` indexed by the 1-D integer tensor `indices`.
    /// Indices may be negative (counted from the end); out-of-range is an error at run time.
    IndexSelect { axis: usize },
    /// torch `gather`: `y[i..] = x[i.. with axis replaced by index[i..]]`; index has x's rank and
    /// dims ≤ x's except along `axis`; y has index's shape and x's dtype. Negative or
    /// out-of-range indices are errors at run time (as in torch).
    Gather { axis: usize },
    /// Embedding lookup: table `[V, D]` (f32/f16/bf16, widened), ids integer `[...]`; y `[..., D]` f32.
    /// An id outside `0..V` is an error at run time.
    Embedding,
    /// `start + i·step` for `i < len`, as `dtype` (f32, i64 or i32). No inputs.
    Arange {
        #[serde(with = "crate::serde_bits::f64")]
        start: f64,
        #[serde(with = "crate::serde_bits::f64")]
        step: f64,
        len: usize,
        dtype: DType,
    },
    /// A fused elementwise program (made by the fusion pass, or by hand): all inputs f32, y f32
    /// of the broadcast shape of all inputs. Each step rounds to f32 like the unfused ops, so
    /// results equal the unfused graph's bit for bit when the kernels' scalar functions agree.
    Fused(FusedProgram),
    /// Epilogue fusion: `y = program(base(inputs[..n]), inputs[n..])`, one kernel. The base is
    /// [`Op::Linear`], [`Op::MatMul`], [`Op::Conv`], [`Op::LayerNorm`], [`Op::RmsNorm`] or
    /// [`Op::Rope`] (never another epilogue); `n` is the base's own input count, derived from
    /// its parameters ([`Op::epilogue_base_inputs`]), so it is not stored. The program runs
    /// over the base's output read as `view` (a row-major reshape, same element count; `None`:
    /// the base's own shape), which is y's shape: its input 0 is that output, its inputs `1..`
    /// are `inputs[n..]` (f32, broadcast up to that shape, never growing it). With `perm`, the
    /// result is stored permuted (`y = permute(program(…), perm)`, dense): the kernel writes
    /// each row to its permuted place while it is in cache, which is how a projection writes
    /// q or k heads-major `[B, H, L, Dh]` for attention; `perm` keeps the last axis. y f32.
    /// Each step rounds to f32 as in [`Op::Fused`], so the result equals running the base op,
    /// the reshape, the program and the permute, bit for bit, when the kernels agree.
    Epilogue { base: Box<Op>, program: FusedProgram, view: Option<Vec<usize>>, perm: Option<Vec<usize>> },
    /// Tensor parallelism's reduction: x f32 (this rank's partial sum, e.g. a row-parallel
    /// linear's output) summed element-wise over every rank of the plan's group, in rank
    /// order; y f32, x's shape, the same bits on every rank. Executed by the runtime through
    /// the run's collective (one rank alone: y = x).
    AllReduce,
    /// Sequence parallelism's exchange (Ulysses): x f32 is cut into `ranks` equal chunks along
    /// `split`; chunk j goes to rank j, and the chunks this rank receives are concatenated
    /// along `concat` in rank order. y: x's shape with `split` divided and `concat` multiplied
    /// by `ranks` (e.g. q `[B, H, L/N, d]` → `[B, H/N, L, d]`). Executed by the runtime.
    AllToAll { split: usize, concat: usize, ranks: usize },
    /// Every rank's x f32 concatenated along `axis` in rank order (`axis` multiplied by
    /// `ranks`). Executed by the runtime.
    AllGather { axis: usize, ranks: usize },
    /// This rank's part of x (any dtype, the same on every rank): the r-th of `ranks` equal
    /// chunks along `axis`, r being the rank running it (a view). How a plan starts splitting a
    /// replicated value (sequence parallelism's tokens); the runtime supplies the rank, so the
    /// plan is the same on every rank.
    RankSlice { axis: usize, ranks: usize },
}

impl Op {
    /// [`Op::Attention`] with the usual heads-major output.
    pub fn attention(scale: f64, mask: AttentionMask) -> Op {
        Op::Attention { scale, mask, layout: AttentionLayout::HeadsMajor }
    }

    /// Short name used in dumps and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Unary(u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Abs => "abs",
                UnaryOp::Exp => "exp",
                UnaryOp::Log => "log",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Rsqrt => "rsqrt",
                UnaryOp::Reciprocal => "reciprocal",
                UnaryOp::Sin => "sin",
                UnaryOp::Cos => "cos",
                UnaryOp::Tanh => "tanh",
                UnaryOp::Sigmoid => "sigmoid",
                UnaryOp::Relu => "relu",
                UnaryOp::GeluErf => "gelu",
                UnaryOp::GeluTanh => "gelu_tanh",
                UnaryOp::Silu => "silu",
            },
            Op::Clamp { .. } => "clamp",
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Pow => "pow",
                BinaryOp::Max => "maximum",
                BinaryOp::Min => "minimum",
            },
            Op::Compare(c) => match c {
                CompareOp::Eq => "eq",
                CompareOp::Ne => "ne",
                CompareOp::Lt => "lt",
                CompareOp::Le => "le",
                CompareOp::Gt => "gt",
                CompareOp::Ge => "ge",
            },
            Op::Where => "where",
            Op::Cast { .. } => "cast",
            Op::Reduce { op, .. } => match op {
                ReduceOp::Sum => "sum",
                ReduceOp::Mean => "mean",
                ReduceOp::Max => "max",
                ReduceOp::Min => "min",
            },
            Op::ArgMax { .. } => "argmax",
            Op::MatMul { .. } => "matmul",
            Op::Linear { .. } => "linear",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::GroupNorm { .. } => "group_norm",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Attention { .. } => "attention",
            Op::Rope { .. } => "rope",
            Op::Conv(_) => "conv",
            Op::ConvTranspose(_) => "conv_transpose",
            Op::Pool(p) => match p.kind {
                PoolKind::Avg { .. } => "avg_pool",
                PoolKind::Max => "max_pool",
            },
            Op::Resize { .. } => "resize",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Pad { .. } => "pad",
            Op::Expand { .. } => "expand",
            Op::Repeat { .. } => "repeat",
            Op::IndexSelect { .. } => "index_select",
            Op::Gather { .. } => "gather",
            Op::Embedding => "embedding",
            Op::Arange { .. } => "arange",
            Op::Fused(_) => "fused",
            Op::Epilogue { .. } => "epilogue",
            Op::AllReduce => "all_reduce",
            Op::AllToAll { .. } => "all_to_all",
            Op::AllGather { .. } => "all_gather",
            Op::RankSlice { .. } => "rank_slice",
        }
    }

    /// The family the op belongs to: each family has one reference module and one kernel
    /// module per backend, so dispatch is by family.
    pub fn family(&self) -> OpFamily {
        match self {
            Op::Unary(_) | Op::Clamp { .. } | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Cast { .. } => {
                OpFamily::Elementwise
            }
            Op::Reduce { .. } | Op::ArgMax { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } => OpFamily::Reduce,
            Op::LayerNorm { .. }
            | Op::RmsNorm { .. }
            | Op::GroupNorm { .. }
            | Op::BatchNorm { .. }
            | Op::Rope { .. } => OpFamily::Norm,
            Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Pad { .. }
            | Op::Expand { .. }
            | Op::Repeat { .. }
            | Op::IndexSelect { .. }
            | Op::Gather { .. }
            | Op::Embedding
            | Op::Arange { .. } => OpFamily::Layout,
            Op::MatMul { .. } | Op::Linear { .. } | Op::Attention { .. } => OpFamily::Linalg,
            Op::Conv(_) | Op::ConvTranspose(_) | Op::Pool(_) | Op::Resize { .. } => OpFamily::Conv,
            Op::Fused(_) => OpFamily::Fused,
            Op::Epilogue { .. } => OpFamily::Epilogue,
            Op::AllReduce | Op::AllToAll { .. } | Op::AllGather { .. } | Op::RankSlice { .. } => OpFamily::Collective,
        }
    }

    /// The number of inputs `self` takes when it is the base of an [`Op::Epilogue`], or `None`
    /// when it cannot be one (only linear, matmul, conv, layer norm, RMS norm and rope can).
    pub fn epilogue_base_inputs(&self) -> Option<usize> {
        match self {
            Op::Linear { has_bias } => Some(2 + usize::from(*has_bias)),
            Op::MatMul { .. } => Some(2),
            Op::Conv(p) => Some(2 + usize::from(p.has_bias)),
            Op::LayerNorm { affine, .. } => Some(1 + 2 * usize::from(*affine)),
            Op::RmsNorm { has_weight, .. } => Some(1 + usize::from(*has_weight)),
            Op::Rope { .. } => Some(3),
            _ => None,
        }
    }

    /// True for ops whose output can be a strided view of their first input (no copy).
    pub fn is_view(&self) -> bool {
        matches!(
            self,
            Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. } | Op::Expand { .. } | Op::RankSlice { .. }
        )
    }
}

impl fmt::Display for Op {
    /// `name` plus its parameters, e.g. `conv{stride=[1, 1], pad=[(1, 1), (1, 1)], groups=1}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Op::Clamp { min, max } => write!(f, "{{min={min}, max={max}}}"),
            Op::Cast { to } => write!(f, "{{to={to}}}"),
            Op::Reduce { axes, keepdim, .. } => write!(f, "{{axes={axes:?}, keepdim={keepdim}}}"),
            Op::ArgMax { axis, keepdim } => write!(f, "{{axis={axis}, keepdim={keepdim}}}"),
            Op::MatMul { transpose_a, transpose_b } => {
                write!(f, "{{ta={transpose_a}, tb={transpose_b}}}")
            }
            Op::Linear { has_bias } => write!(f, "{{bias={has_bias}}}"),
            Op::Softmax { axis } | Op::LogSoftmax { axis } => write!(f, "{{axis={axis}}}"),
            Op::LayerNorm { eps, affine } => write!(f, "{{eps={eps:e}, affine={affine}}}"),
            Op::RmsNorm { eps, has_weight } => write!(f, "{{eps={eps:e}, weight={has_weight}}}"),
            Op::GroupNorm { groups, eps, affine } => {
                write!(f, "{{groups={groups}, eps={eps:e}, affine={affine}}}")
            }
            Op::BatchNorm { eps, affine } => write!(f, "{{eps={eps:e}, affine={affine}}}"),
            Op::Attention { scale, mask, layout: AttentionLayout::HeadsMajor } => {
                write!(f, "{{scale={scale}, mask={mask:?}}}")
            }
            Op::Attention { scale, mask, layout: AttentionLayout::TokensMajor } => {
                write!(f, "{{scale={scale}, mask={mask:?}, out=tokens_major}}")
            }
            Op::Rope { style } => write!(f, "{{{style:?}}}"),
            Op::Conv(p) => write!(
                f,
                "{{stride={:?}, dil={:?}, pad={:?}, mode={:?}, groups={}, bias={}}}",
                p.stride, p.dilation, p.padding, p.pad_mode, p.groups, p.has_bias
            ),
            Op::ConvTranspose(p) => write!(
                f,
                "{{stride={:?}, dil={:?}, pad={:?}, out_pad={:?}, groups={}, bias={}}}",
                p.stride, p.dilation, p.padding, p.output_padding, p.groups, p.has_bias
            ),
            Op::Pool(p) => write!(f, "{{kernel={:?}, stride={:?}, pad={:?}}}", p.kernel, p.stride, p.padding),
            Op::Resize { mode, size, align_corners } => {
                write!(f, "{{{mode:?}, size={size:?}, align_corners={align_corners}}}")
            }
            Op::Reshape { shape } | Op::Expand { shape } => write!(f, "{{shape={shape:?}}}"),
            Op::Permute { perm } => write!(f, "{{perm={perm:?}}}"),
            Op::Slice { axis, start, end, step } => {
                write!(f, "{{axis={axis}, {start}..{end}, step={step}}}")
            }
            Op::Concat { axis } | Op::IndexSelect { axis } | Op::Gather { axis } => {
                write!(f, "{{axis={axis}}}")
            }
            Op::Pad { pads, mode } => write!(f, "{{pads={pads:?}, mode={mode:?}}}"),
            Op::Repeat { repeats } => write!(f, "{{repeats={repeats:?}}}"),
            Op::Arange { start, step, len, dtype } => {
                write!(f, "{{start={start}, step={step}, len={len}, {dtype}}}")
            }
            Op::Fused(p) => write!(f, "{{{p}}}"),
            Op::Epilogue { base, program, view, perm } => {
                write!(f, "{{{base}")?;
                if let Some(v) = view {
                    write!(f, " as {v:?}")?;
                }
                write!(f, "; {program}")?;
                if let Some(p) = perm {
                    write!(f, "; stored permuted {p:?}")?;
                }
                f.write_str("}")
            }
            Op::AllToAll { split, concat, ranks } => write!(f, "{{split={split}, concat={concat}, ranks={ranks}}}"),
            Op::AllGather { axis, ranks } | Op::RankSlice { axis, ranks } => {
                write!(f, "{{axis={axis}, ranks={ranks}}}")
            }
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Embedding | Op::AllReduce => Ok(()),
        }
    }
}
