//! Shape and dtype inference for every op. Errors are plain sentences; the graph builder adds
//! the node name, the op and the input types.

use super::*;
use crate::shape::broadcast_shapes;
use crate::{Shape, TensorType};

type Infer = Result<TensorType, String>;

fn tt(dtype: DType, dims: Vec<usize>) -> TensorType {
    TensorType { dtype, shape: Shape(dims) }
}

fn want_inputs(inputs: &[TensorType], n: std::ops::RangeInclusive<usize>) -> Result<(), String> {
    if n.contains(&inputs.len()) {
        Ok(())
    } else if n.start() == n.end() {
        Err(format!("expects {} input(s), got {}", n.start(), inputs.len()))
    } else {
        Err(format!("expects {} to {} inputs, got {}", n.start(), n.end(), inputs.len()))
    }
}

fn want_f32(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype == DType::F32 {
        Ok(())
    } else {
        Err(format!("{what} must be f32, got {} (insert a cast)", t.dtype))
    }
}

fn want_float(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(format!("{what} must be f32, f16 or bf16, got {}", t.dtype))
    }
}

fn want_index(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype.is_int() {
        Ok(())
    } else {
        Err(format!("{what} must be an integer tensor (i64, i32 or u8), got {}", t.dtype))
    }
}

fn want_dims(t: &TensorType, dims: &[usize], what: &str) -> Result<(), String> {
    if t.shape.dims() == dims {
        Ok(())
    } else {
        Err(format!("{what} must have shape {}, got {}", Shape(dims.to_vec()), t.shape))
    }
}

fn broadcast(a: &TensorType, b: &TensorType) -> Result<Vec<usize>, String> {
    broadcast_shapes(a.shape.dims(), b.shape.dims())
        .ok_or_else(|| format!("shapes {} and {} do not broadcast", a.shape, b.shape))
}

fn spatial_len(n_spatial: usize, v: usize, what: &str) -> Result<(), String> {
    if v == n_spatial {
        Ok(())
    } else {
        Err(format!("{what} has {v} entries for {n_spatial} spatial dims"))
    }
}

impl Op {
    /// Infers the output type from the input types, or explains why the inputs are invalid.
    pub fn infer(&self, inputs: &[TensorType]) -> Result<TensorType, String> {
        match self {
            Op::AllToAll { split, concat, ranks } => {
                want_inputs(inputs, 1..=1)?;
                want_f32(&inputs[0], "input")?;
                let mut dims = inputs[0].shape.dims().to_vec();
                let (s, c, n) = (*split, *concat, *ranks);
                if s >= dims.len() || c >= dims.len() || n == 0 || !dims[s].is_multiple_of(n) {
                    return Err(format!(
                        "all_to_all of {:?} over {n} ranks needs axes within its rank and axis {s} divisible by {n}",
                        dims
                    ));
                }
                dims[s] /= n;
                dims[c] *= n;
                Ok(TensorType::new(DType::F32, dims))
            }
            Op::RankSlice { axis, ranks } => {
                want_inputs(inputs, 1..=1)?;
                let mut dims = inputs[0].shape.dims().to_vec();
                if *axis >= dims.len() || *ranks == 0 || !dims[*axis].is_multiple_of(*ranks) {
                    return Err(format!("rank_slice of {dims:?} along axis {axis} into {ranks} equal parts"));
                }
                dims[*axis] /= ranks;
                Ok(TensorType::new(inputs[0].dtype, dims))
            }
            Op::AllGather { axis, ranks } => {
                want_inputs(inputs, 1..=1)?;
                want_f32(&inputs[0], "input")?;
                let mut dims = inputs[0].shape.dims().to_vec();
                if *axis >= dims.len() || *ranks == 0 {
                    return Err(format!("all_gather along axis {axis} of {dims:?} over {ranks} ranks"));
                }
                dims[*axis] *= ranks;
                Ok(TensorType::new(DType::F32, dims))
            }
            Op::Unary(_) | Op::Clamp { .. } | Op::AllReduce => {
                want_inputs(inputs, 1..=1)?;
                want_f32(&inputs[0], "input")?;
                Ok(inputs[0].clone())
            }
            Op::Binary(_) => {
                want_inputs(inputs, 2..=2)?;
                want_f32(&inputs[0], "lhs")?;
                want_f32(&inputs[1], "rhs")?;
                Ok(tt(DType::F32, broadcast(&inputs[0], &inputs[1])?))
            }
            Op::Compare(_) => {
                want_inputs(inputs, 2..=2)?;
                if inputs[0].dtype != inputs[1].dtype {
                    return Err(format!(
                        "operands must share a dtype, got {} and {}",
                        inputs[0].dtype, inputs[1].dtype
                    ));
                }
                Ok(tt(DType::Bool, broadcast(&inputs[0], &inputs[1])?))
            }
            Op::Where => infer_where(inputs),
            Op::Cast { to } => {
                want_inputs(inputs, 1..=1)?;
                Ok(tt(*to, inputs[0].shape.0.clone()))
            }
            Op::Reduce { axes, keepdim, .. } => {
                want_inputs(inputs, 1..=1)?;
                want_f32(&inputs[0], "input")?;
                let rank = inputs[0].shape.rank();
                if axes.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!("axes {axes:?} must be sorted and distinct"));
                }
                if let Some(a) = axes.iter().find(|&&a| a >= rank) {
                    return Err(format!("axis {a} out of range for rank {rank}"));
                }
                Ok(tt(DType::F32, reduced_dims(inputs[0].shape.dims(), axes, *keepdim)))
            }
            Op::ArgMax { axis, keepdim } => {
                want_inputs(inputs, 1..=1)?;
                want_f32(&inputs[0], "input")?;
                let rank = inputs[0].shape.rank();
                if *axis >= rank {
                    return Err(format!("axis {axis} out of range for rank {rank}"));
                }
                if inputs[0].shape.dims()[*axis] == 0 {
                    return Err(format!("argmax over empty axis {axis}"));
                }
                Ok(tt(DType::I64, reduced_dims(inputs[0].shape.dims(), &[*axis], *keepdim)))
            }
            Op::MatMul { transpose_a, transpose_b } => infer_matmul(inputs, *transpose_a, *transpose_b),
            Op::Linear { has_bias } => infer_linear(inputs, *has_bias),
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                want_inputs(inputs, 1..=1)?;
                want_f32(&inputs[0], "input")?;
                if *axis >= inputs[0].shape.rank() {
                    return Err(format!("axis {axis} out of range for {}", inputs[0].shape));
                }
                Ok(inputs[0].clone())
            }
            Op::LayerNorm { affine, .. } => {
                let n = if *affine { 3 } else { 1 };
                infer_last_dim_norm(inputs, n)
            }
            Op::RmsNorm { has_weight, .. } => {
                let n = if *has_weight { 2 } else { 1 };
                infer_last_dim_norm(inputs, n)
            }
            Op::GroupNorm { groups, affine, .. } => {
                want_inputs(inputs, if *affine { 3..=3 } else { 1..=1 })?;
                let x = &inputs[0];
                want_f32(x, "input")?;
                if x.shape.rank() < 2 {
                    return Err(format!("input must be [N, C, ...], got {}", x.shape));
                }
                let c = x.shape.dims()[1];
                if *groups == 0 || !c.is_multiple_of(*groups) {
                    return Err(format!("{c} channels do not split into {groups} groups"));
                }
                for (i, what) in [(1, "weight"), (2, "bias")] {
                    if let Some(p) = inputs.get(i) {
                        want_f32(p, what)?;
                        want_dims(p, &[c], what)?;
                    }
                }
                Ok(x.clone())
            }
            Op::BatchNorm { affine, .. } => {
                want_inputs(inputs, if *affine { 5..=5 } else { 3..=3 })?;
                let x = &inputs[0];
                want_f32(x, "input")?;
                if x.shape.rank() < 2 {
                    return Err(format!("input must be [N, C, ...], got {}", x.shape));
                }
                let c = x.shape.dims()[1];
                for (p, what) in inputs[1..].iter().zip(["mean", "var", "weight", "bias"]) {
                    want_f32(p, what)?;
                    want_dims(p, &[c], what)?;
                }
                Ok(x.clone())
            }
            Op::Attention { mask, layout, .. } => infer_attention(inputs, *mask, *layout),
            Op::Rope { .. } => {
                want_inputs(inputs, 3..=3)?;
                let x = &inputs[0];
                want_f32(x, "input")?;
                let d = x.shape.dims().last().copied().unwrap_or(0);
                if x.shape.rank() == 0 || d % 2 != 0 {
                    return Err(format!("last dim must be even, got shape {}", x.shape));
                }
                for (t, what) in [(&inputs[1], "cos"), (&inputs[2], "sin")] {
                    want_f32(t, what)?;
                    if broadcast(x, t)? != x.shape.0 {
                        return Err(format!("{what} {} must broadcast to {}", t.shape, x.shape));
                    }
                }
                Ok(x.clone())
            }
            Op::Conv(p) => infer_conv(inputs, p),
            Op::ConvTranspose(p) => infer_conv_transpose(inputs, p),
            Op::Pool(p) => infer_pool(inputs, p),
            Op::Resize { mode, size, .. } => {
                want_inputs(inputs, 1..=1)?;
                let x = &inputs[0];
                want_f32(x, "input")?;
                let n = size.len();
                if n == 0 || x.shape.rank() != n + 2 {
                    return Err(format!("input {} must be [B, C] + {n} spatial dims", x.shape));
                }
                if matches!(mode, ResizeMode::Bilinear | ResizeMode::Bicubic) && n != 2 {
                    return Err(format!("{mode:?} resize needs exactly 2 spatial dims, got {n}"));
                }
                if size.contains(&0) {
                    return Err(format!("output size {size:?} has a zero"));
                }
                let mut dims = x.shape.dims()[..2].to_vec();
                dims.extend(size);
                Ok(tt(DType::F32, dims))
            }
            Op::Reshape { shape } => {
                want_inputs(inputs, 1..=1)?;
                let n: usize = shape.iter().product();
                if n != inputs[0].shape.numel() {
                    return Err(format!(
                        "cannot reshape {} ({} elements) to {:?} ({n} elements)",
                        inputs[0].shape,
                        inputs[0].shape.numel(),
                        shape
                    ));
                }
                Ok(tt(inputs[0].dtype, shape.clone()))
            }
            Op::Permute { perm } => {
                want_inputs(inputs, 1..=1)?;
                let dims = inputs[0].shape.dims();
                let mut seen = vec![false; dims.len()];
                if perm.len() != dims.len()
                    || perm.iter().any(|&p| p >= dims.len() || std::mem::replace(&mut seen[p], true))
                {
                    return Err(format!("{perm:?} is not a permutation of rank {}", dims.len()));
                }
                Ok(tt(inputs[0].dtype, perm.iter().map(|&p| dims[p]).collect()))
            }
            Op::Slice { axis, start, end, step } => {
                want_inputs(inputs, 1..=1)?;
                let dims = inputs[0].shape.dims();
                let Some(&d) = dims.get(*axis) else {
                    return Err(format!("axis {axis} out of range for {}", inputs[0].shape));
                };
                if *step == 0 || start > end || *end > d {
                    return Err(format!("slice {start}..{end} step {step} is invalid for axis {axis} of size {d}"));
                }
                let mut out = dims.to_vec();
                out[*axis] = (end - start).div_ceil(*step);
                Ok(tt(inputs[0].dtype, out))
            }
            Op::Concat { axis } => {
                if inputs.is_empty() {
                    return Err("expects at least one input".into());
                }
                let first = &inputs[0];
                if *axis >= first.shape.rank() {
                    return Err(format!("axis {axis} out of range for {}", first.shape));
                }
                let mut out = first.shape.0.clone();
                out[*axis] = 0;
                for (i, t) in inputs.iter().enumerate() {
                    let same_rank = t.shape.rank() == first.shape.rank();
                    let others_match =
                        same_rank && (0..out.len()).all(|a| a == *axis || t.shape.dims()[a] == first.shape.dims()[a]);
                    if t.dtype != first.dtype || !others_match {
                        return Err(format!(
                            "input {i} ({} {}) does not match input 0 ({} {}) outside axis {axis}",
                            t.dtype, t.shape, first.dtype, first.shape
                        ));
                    }
                    out[*axis] += t.shape.dims()[*axis];
                }
                Ok(tt(first.dtype, out))
            }
            Op::Pad { pads, mode } => {
                want_inputs(inputs, 1..=1)?;
                let x = &inputs[0];
                if pads.len() != x.shape.rank() {
                    return Err(format!("{} pad pairs for rank {}", pads.len(), x.shape.rank()));
                }
                if !matches!(mode, PadMode::Constant(_)) {
                    want_f32(x, "input")?;
                }
                let mut out = Vec::with_capacity(pads.len());
                for (a, (&d, &(lo, hi))) in x.shape.dims().iter().zip(pads).enumerate() {
                    let ok = match mode {
                        PadMode::Constant(_) => true,
                        PadMode::Replicate => d > 0 || lo + hi == 0,
                        PadMode::Reflect => lo < d && hi < d || lo + hi == 0,
                    };
                    if !ok {
                        return Err(format!("{mode:?} padding ({lo}, {hi}) is too large for axis {a} of size {d}"));
                    }
                    out.push(d + lo + hi);
                }
                Ok(tt(x.dtype, out))
            }
            Op::Expand { shape } => {
                want_inputs(inputs, 1..=1)?;
                let b = broadcast_shapes(inputs[0].shape.dims(), shape);
                if b.as_deref() != Some(shape.as_slice()) {
                    return Err(format!("cannot expand {} to {:?}", inputs[0].shape, shape));
                }
                Ok(tt(inputs[0].dtype, shape.clone()))
            }
            Op::Repeat { repeats } => {
                want_inputs(inputs, 1..=1)?;
                let dims = inputs[0].shape.dims();
                if repeats.len() < dims.len() {
                    return Err(format!(
                        "{} repeats for rank {}: need at least one per dim",
                        repeats.len(),
                        dims.len()
                    ));
                }
                let lead = repeats.len() - dims.len();
                let out =
                    repeats.iter().enumerate().map(|(i, &r)| r * if i < lead { 1 } else { dims[i - lead] }).collect();
                Ok(tt(inputs[0].dtype, out))
            }
            Op::IndexSelect { axis } => {
                want_inputs(inputs, 2..=2)?;
                let (x, idx) = (&inputs[0], &inputs[1]);
                want_index(idx, "indices")?;
                if idx.shape.rank() != 1 {
                    return Err(format!("indices must be 1-D, got {}", idx.shape));
                }
                if *axis >= x.shape.rank() {
                    return Err(format!("axis {axis} out of range for {}", x.shape));
                }
                let mut out = x.shape.0.clone();
                out[*axis] = idx.shape.dims()[0];
                Ok(tt(x.dtype, out))
            }
            Op::Gather { axis } => {
                want_inputs(inputs, 2..=2)?;
                let (x, idx) = (&inputs[0], &inputs[1]);
                want_index(idx, "index")?;
                if idx.shape.rank() != x.shape.rank() || *axis >= x.shape.rank() {
                    return Err(format!(
                        "index {} must have the rank of input {} and axis {axis} must exist",
                        idx.shape, x.shape
                    ));
                }
                let fits = (0..x.shape.rank()).all(|a| a == *axis || idx.shape.dims()[a] <= x.shape.dims()[a]);
                if !fits {
                    return Err(format!("index {} exceeds input {}", idx.shape, x.shape));
                }
                Ok(tt(x.dtype, idx.shape.0.clone()))
            }
            Op::Embedding => {
                want_inputs(inputs, 2..=2)?;
                let (table, ids) = (&inputs[0], &inputs[1]);
                want_float(table, "table")?;
                want_index(ids, "ids")?;
                if table.shape.rank() != 2 {
                    return Err(format!("table must be [V, D], got {}", table.shape));
                }
                let mut out = ids.shape.0.clone();
                out.push(table.shape.dims()[1]);
                Ok(tt(DType::F32, out))
            }
            Op::Fused(p) => {
                p.validate()?;
                if inputs.len() != p.n_inputs {
                    return Err(format!("the program takes {} inputs, got {}", p.n_inputs, inputs.len()));
                }
                let mut dims: Vec<usize> = vec![];
                for (i, t) in inputs.iter().enumerate() {
                    want_f32(t, &format!("input {i}"))?;
                    dims = broadcast_shapes(&dims, t.shape.dims())
                        .ok_or_else(|| format!("input {i} {} does not broadcast with {dims:?}", t.shape))?;
                }
                p.check_segments(&dims)?;
                Ok(tt(DType::F32, dims))
            }
            Op::Epilogue { base, program, view, perm } => {
                infer_epilogue(inputs, base, program, view.as_deref(), perm.as_deref())
            }
            Op::Arange { len, dtype, .. } => {
                want_inputs(inputs, 0..=0)?;
                if !matches!(dtype, DType::F32 | DType::I64 | DType::I32) {
                    return Err(format!("arange dtype must be f32, i64 or i32, got {dtype}"));
                }
                Ok(tt(*dtype, vec![*len]))
            }
        }
    }
}

/// Dims after reducing `axes` (sorted).
pub(crate) fn reduced_dims(dims: &[usize], axes: &[usize], keepdim: bool) -> Vec<usize> {
    dims.iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keepdim) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

fn infer_epilogue(
    inputs: &[TensorType],
    base: &Op,
    program: &FusedProgram,
    view: Option<&[usize]>,
    perm: Option<&[usize]>,
) -> Infer {
    let Some(n_base) = base.epilogue_base_inputs() else {
        return Err(format!(
            "the base {base} cannot take an epilogue (linear, matmul, conv, layer_norm, rms_norm or rope)"
        ));
    };
    program.validate()?;
    if program.n_inputs == 0 {
        return Err("the program must take the base's output as its input 0".into());
    }
    let n_extra = program.n_inputs - 1;
    if inputs.len() != n_base + n_extra {
        return Err(format!(
            "expects {n_base} base input(s) and {n_extra} extra operand(s), got {} inputs",
            inputs.len()
        ));
    }
    let mut out = base.infer(&inputs[..n_base]).map_err(|e| format!("base {base}: {e}"))?;
    want_f32(&out, "the base's output")?;
    if let Some(view) = view {
        if view.iter().product::<usize>() != out.shape.numel() {
            return Err(format!("the view {view:?} does not have the {} elements of the base's output", out.shape));
        }
        out = tt(DType::F32, view.to_vec());
    }
    program.check_segments(out.shape.dims())?;
    for (i, t) in inputs[n_base..].iter().enumerate() {
        want_f32(t, &format!("extra operand {i}"))?;
        let fits = broadcast_shapes(out.shape.dims(), t.shape.dims()).is_some_and(|d| d == out.shape.dims());
        if !fits {
            return Err(format!("extra operand {i} {} does not broadcast to the base's output {}", t.shape, out.shape));
        }
    }
    if let Some(perm) = perm {
        let r = out.shape.rank();
        let mut seen = vec![false; r];
        let valid = perm.len() == r && perm.iter().all(|&p| p < r && !std::mem::replace(&mut seen[p], true));
        if !valid || r == 0 || perm[r - 1] != r - 1 {
            return Err(format!("the storage permutation {perm:?} must permute the {r} axes and keep the last"));
        }
        out = tt(DType::F32, perm.iter().map(|&p| out.shape.dims()[p]).collect());
    }
    Ok(out)
}

fn infer_where(inputs: &[TensorType]) -> Infer {
    want_inputs(inputs, 3..=3)?;
    let (c, a, b) = (&inputs[0], &inputs[1], &inputs[2]);
    if c.dtype != DType::Bool {
        return Err(format!("condition must be bool, got {}", c.dtype));
    }
    if a.dtype != b.dtype {
        return Err(format!("branches must share a dtype, got {} and {}", a.dtype, b.dtype));
    }
    let ab = broadcast(a, b)?;
    let dims = broadcast_shapes(c.shape.dims(), &ab)
        .ok_or_else(|| format!("condition {} does not broadcast with {:?}", c.shape, ab))?;
    Ok(tt(a.dtype, dims))
}

fn infer_matmul(inputs: &[TensorType], ta: bool, tb: bool) -> Infer {
    want_inputs(inputs, 2..=2)?;
    let (a, b) = (&inputs[0], &inputs[1]);
    want_f32(a, "lhs")?;
    want_float(b, "rhs")?;
    if a.shape.rank() < 2 || b.shape.rank() < 2 {
        return Err(format!("operands must have rank ≥ 2, got {} and {}", a.shape, b.shape));
    }
    let (ad, bd) = (a.shape.dims(), b.shape.dims());
    let (ra, rb) = (ad.len(), bd.len());
    let (m, ka) = if ta { (ad[ra - 1], ad[ra - 2]) } else { (ad[ra - 2], ad[ra - 1]) };
    let (kb, n) = if tb { (bd[rb - 1], bd[rb - 2]) } else { (bd[rb - 2], bd[rb - 1]) };
    if ka != kb {
        return Err(format!("contraction dims differ: lhs {} gives K={ka}, rhs {} gives K={kb}", a.shape, b.shape));
    }
    let batch = broadcast_shapes(&ad[..ra - 2], &bd[..rb - 2])
        .ok_or_else(|| format!("batch dims of {} and {} do not broadcast", a.shape, b.shape))?;
    let mut out = batch;
    out.extend([m, n]);
    Ok(tt(DType::F32, out))
}

fn infer_linear(inputs: &[TensorType], has_bias: bool) -> Infer {
    want_inputs(inputs, if has_bias { 3..=3 } else { 2..=2 })?;
    let (x, w) = (&inputs[0], &inputs[1]);
    want_f32(x, "input")?;
    want_float(w, "weight")?;
    if w.shape.rank() != 2 || x.shape.rank() == 0 {
        return Err(format!("weight must be [N, K] and input [..., K], got {} and {}", w.shape, x.shape));
    }
    let (n, k) = (w.shape.dims()[0], w.shape.dims()[1]);
    if x.shape.dims()[x.shape.rank() - 1] != k {
        return Err(format!("input {} has last dim ≠ K={k} of weight {}", x.shape, w.shape));
    }
    if let Some(b) = inputs.get(2) {
        want_float(b, "bias")?;
        want_dims(b, &[n], "bias")?;
    }
    let mut out = x.shape.0.clone();
    *out.last_mut().unwrap() = n;
    Ok(tt(DType::F32, out))
}

fn infer_last_dim_norm(inputs: &[TensorType], n_inputs: usize) -> Infer {
    want_inputs(inputs, n_inputs..=n_inputs)?;
    let x = &inputs[0];
    want_f32(x, "input")?;
    let Some(&d) = x.shape.dims().last() else {
        return Err("input must have rank ≥ 1".into());
    };
    for (p, what) in inputs[1..].iter().zip(["weight", "bias"]) {
        want_f32(p, what)?;
        want_dims(p, &[d], what)?;
    }
    Ok(x.clone())
}

fn infer_attention(inputs: &[TensorType], mask: AttentionMask, layout: AttentionLayout) -> Infer {
    let n = if mask == AttentionMask::None { 3 } else { 4 };
    want_inputs(inputs, n..=n)?;
    let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
    for (t, what) in [(q, "q"), (k, "k"), (v, "v")] {
        want_f32(t, what)?;
        if t.shape.rank() < 2 {
            return Err(format!("{what} must be [..., L, D], got {}", t.shape));
        }
    }
    let r = q.shape.rank();
    let (qd, kd, vd) = (q.shape.dims(), k.shape.dims(), v.shape.dims());
    if kd.len() != r || vd.len() != r || qd[..r - 2] != kd[..r - 2] || qd[..r - 2] != vd[..r - 2] {
        return Err(format!("q {}, k {} and v {} must share their leading dims", q.shape, k.shape, v.shape));
    }
    if qd[r - 1] != kd[r - 1] || kd[r - 2] != vd[r - 2] {
        return Err(format!(
            "q {} and k {} need the same head dim, k and v {} the same length",
            q.shape, k.shape, v.shape
        ));
    }
    let mut out = qd.to_vec();
    out[r - 1] = vd[r - 1];
    if layout == AttentionLayout::TokensMajor {
        if r < 3 {
            return Err(format!("a tokens-major output needs q [..., H, L, D], got {}", q.shape));
        }
        out.swap(r - 3, r - 2);
    }
    if let Some(m) = inputs.get(3) {
        let want = match mask {
            AttentionMask::Boolean => DType::Bool,
            _ => DType::F32,
        };
        if m.dtype != want {
            return Err(format!("{mask:?} mask must be {want}, got {}", m.dtype));
        }
        let mut scores = qd[..r - 1].to_vec();
        scores.push(kd[r - 2]);
        if broadcast_shapes(m.shape.dims(), &scores).as_deref() != Some(scores.as_slice()) {
            return Err(format!("mask {} must broadcast to scores {:?}", m.shape, scores));
        }
    }
    Ok(tt(DType::F32, out))
}

/// Output length of one convolved dim, or None when the window does not fit.
pub(crate) fn conv_out_len(len: usize, k: usize, stride: usize, dil: usize, pad: usize) -> Option<usize> {
    let span = dil * (k - 1) + 1;
    (len + pad >= span && stride > 0).then(|| (len + pad - span) / stride + 1)
}

fn infer_conv(inputs: &[TensorType], p: &ConvParams) -> Infer {
    want_inputs(inputs, if p.has_bias { 3..=3 } else { 2..=2 })?;
    let (x, w) = (&inputs[0], &inputs[1]);
    want_f32(x, "input")?;
    want_float(w, "weight")?;
    let n = x.shape.rank().saturating_sub(2);
    if !(1..=3).contains(&n) || w.shape.rank() != n + 2 {
        return Err(format!(
            "input must be [B, C, *S] with 1 to 3 spatial dims and weight [Cout, Cin/g, *K], got {} and {}",
            x.shape, w.shape
        ));
    }
    spatial_len(n, p.stride.len(), "stride")?;
    spatial_len(n, p.dilation.len(), "dilation")?;
    spatial_len(n, p.padding.len(), "padding")?;
    let (xd, wd) = (x.shape.dims(), w.shape.dims());
    let (cin, cout) = (xd[1], wd[0]);
    if p.groups == 0 || cin % p.groups != 0 || cout % p.groups != 0 || wd[1] * p.groups != cin {
        return Err(format!("weight {} does not fit {cin} input channels in {} groups", w.shape, p.groups));
    }
    if let Some(b) = inputs.get(2) {
        want_float(b, "bias")?;
        want_dims(b, &[cout], "bias")?;
    }
    let mut out = vec![xd[0], cout];
    for i in 0..n {
        let (lo, hi) = p.padding[i];
        if p.pad_mode == ConvPadMode::Replicate && xd[2 + i] == 0 {
            return Err("replicate padding of an empty dim".into());
        }
        let len = conv_out_len(xd[2 + i], wd[2 + i], p.stride[i], p.dilation[i], lo + hi)
            .filter(|_| wd[2 + i] > 0 && p.dilation[i] > 0)
            .ok_or_else(|| {
                format!(
                    "kernel {} (dilation {}) does not fit spatial dim {i} of size {} padded by ({lo}, {hi})",
                    wd[2 + i],
                    p.dilation[i],
                    xd[2 + i]
                )
            })?;
        out.push(len);
    }
    Ok(tt(DType::F32, out))
}

fn infer_conv_transpose(inputs: &[TensorType], p: &ConvTransposeParams) -> Infer {
    want_inputs(inputs, if p.has_bias { 3..=3 } else { 2..=2 })?;
    let (x, w) = (&inputs[0], &inputs[1]);
    want_f32(x, "input")?;
    want_float(w, "weight")?;
    let n = x.shape.rank().saturating_sub(2);
    if !(1..=3).contains(&n) || w.shape.rank() != n + 2 {
        return Err(format!(
            "input must be [B, Cin, *S] with 1 to 3 spatial dims and weight [Cin, Cout/g, *K], got {} and {}",
            x.shape, w.shape
        ));
    }
    spatial_len(n, p.stride.len(), "stride")?;
    spatial_len(n, p.dilation.len(), "dilation")?;
    spatial_len(n, p.padding.len(), "padding")?;
    spatial_len(n, p.output_padding.len(), "output_padding")?;
    let (xd, wd) = (x.shape.dims(), w.shape.dims());
    if p.groups == 0 || xd[1] != wd[0] || wd[0] % p.groups != 0 {
        return Err(format!("weight {} does not fit {} input channels in {} groups", w.shape, xd[1], p.groups));
    }
    let cout = wd[1] * p.groups;
    if let Some(b) = inputs.get(2) {
        want_float(b, "bias")?;
        want_dims(b, &[cout], "bias")?;
    }
    let mut out = vec![xd[0], cout];
    for i in 0..n {
        let (s, d, k) = (p.stride[i], p.dilation[i], wd[2 + i]);
        if s == 0 || d == 0 || k == 0 || p.output_padding[i] >= s.max(d) {
            return Err(format!(
                "spatial dim {i}: stride {s}, dilation {d}, kernel {k}, output_padding {} are invalid",
                p.output_padding[i]
            ));
        }
        let full = (xd[2 + i].max(1) - 1) * s + d * (k - 1) + p.output_padding[i] + 1;
        if xd[2 + i] == 0 || full <= 2 * p.padding[i] {
            return Err(format!("padding {} leaves spatial dim {i} empty", p.padding[i]));
        }
        out.push(full - 2 * p.padding[i]);
    }
    Ok(tt(DType::F32, out))
}

fn infer_pool(inputs: &[TensorType], p: &PoolParams) -> Infer {
    want_inputs(inputs, 1..=1)?;
    let x = &inputs[0];
    want_f32(x, "input")?;
    let n = x.shape.rank().saturating_sub(2);
    if !(1..=3).contains(&n) {
        return Err(format!("input must be [B, C, *S] with 1 to 3 spatial dims, got {}", x.shape));
    }
    spatial_len(n, p.kernel.len(), "kernel")?;
    spatial_len(n, p.stride.len(), "stride")?;
    spatial_len(n, p.padding.len(), "padding")?;
    let mut out = x.shape.dims()[..2].to_vec();
    for i in 0..n {
        let (k, s, pad) = (p.kernel[i], p.stride[i], p.padding[i]);
        if k == 0 || 2 * pad > k {
            return Err(format!("padding {pad} must be at most half of kernel {k} (dim {i})"));
        }
        let len = conv_out_len(x.shape.dims()[2 + i], k, s, 1, 2 * pad)
            .ok_or_else(|| format!("kernel {k} does not fit spatial dim {i} of {}", x.shape))?;
        out.push(len);
    }
    Ok(tt(DType::F32, out))
}
