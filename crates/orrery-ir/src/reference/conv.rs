//! Reference Conv, ConvTranspose, Pool and Resize: direct loops over dense row-major f64 data.
//!
//! 1-d and 2-d inputs are treated as 3-d with leading unit spatial dims (kernel 1, stride 1,
//! no padding there), so each op is written once. Every output element is computed by its
//! defining sum; nothing is clever.

use crate::{
    ConvPadMode, ConvParams, ConvTransposeParams, Op, PoolKind, PoolParams, RefTensor, ResizeMode, TensorType,
};

pub(super) fn eval(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    let y = match op {
        Op::Conv(p) => conv(inputs[0], inputs[1], inputs.get(2).copied(), p, out),
        Op::ConvTranspose(p) => conv_transpose(inputs[0], inputs[1], inputs.get(2).copied(), p, out),
        Op::Pool(p) => pool(inputs[0], p, out),
        Op::Resize { mode, align_corners, .. } => resize(inputs[0], *mode, *align_corners, out),
        _ => return Err(format!("{op}: not a convolution-family op")),
    };
    Ok(y)
}

/// `v` (one entry per spatial dim) widened to 3 entries with leading `fill`s.
fn as_3d<T: Copy>(v: &[T], fill: T) -> [T; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

/// Flat row-major index of `(z, y, x)` in a `[d, h, w]` volume.
fn at3(dims: [usize; 3], z: usize, y: usize, x: usize) -> usize {
    (z * dims[1] + y) * dims[2] + x
}

/// The spatial geometry of a windowed op, widened to 3-d (see [`as_3d`]): input, kernel and
/// output dims, stride and dilation, and the element counts of one input plane, one kernel and
/// one output plane.
struct Spatial {
    xs: [usize; 3],
    ks: [usize; 3],
    os: [usize; 3],
    stride: [usize; 3],
    dil: [usize; 3],
    x_vol: usize,
    k_vol: usize,
    o_vol: usize,
}

impl Spatial {
    /// From the full input and output shapes (`[N, C, spatial…]`), the kernel's spatial dims,
    /// and the per-dim stride and dilation (an empty dilation means 1).
    fn new(x: &[usize], kernel: &[usize], out: &[usize], stride: &[usize], dilation: &[usize]) -> Spatial {
        let (xs, ks, os) = (as_3d(&x[2..], 1), as_3d(kernel, 1), as_3d(&out[2..], 1));
        Spatial {
            xs,
            ks,
            os,
            stride: as_3d(stride, 1),
            dil: as_3d(dilation, 1),
            x_vol: xs.iter().product(),
            k_vol: ks.iter().product(),
            o_vol: os.iter().product(),
        }
    }
}

/// Where padded position `pos` reads from an axis of length `len`: itself when inside,
/// nothing for zero padding, the nearest edge element for replicate padding.
fn source(pos: isize, len: usize, mode: ConvPadMode) -> Option<usize> {
    if (0..len as isize).contains(&pos) {
        Some(pos as usize)
    } else {
        match mode {
            ConvPadMode::Zeros => None,
            ConvPadMode::Replicate => Some(pos.clamp(0, len as isize - 1) as usize),
        }
    }
}

/// `y[b, co, o] = bias[co] + Σ_{ci in co's group} Σ_k x_padded[b, ci, o·stride + k·dil] · w[co, ci, k]`.
fn conv(x: &RefTensor, w: &RefTensor, bias: Option<&RefTensor>, p: &ConvParams, out: &TensorType) -> RefTensor {
    let (batch, cin, cout) = (x.shape[0], x.shape[1], w.shape[0]);
    let (cin_g, cout_g) = (cin / p.groups, cout / p.groups);
    let Spatial { xs, ks, os, stride, dil, x_vol, k_vol, o_vol } =
        Spatial::new(&x.shape, &w.shape[2..], out.shape.dims(), &p.stride, &p.dilation);
    let pad = as_3d(&p.padding, (0, 0));
    let mut y = vec![0.0; batch * cout * o_vol];
    for b in 0..batch {
        for co in 0..cout {
            let g = co / cout_g;
            for oz in 0..os[0] {
                for oy in 0..os[1] {
                    for ox in 0..os[2] {
                        let mut acc = bias.map_or(0.0, |t| t.data[co]);
                        for ci_local in 0..cin_g {
                            let ci = g * cin_g + ci_local;
                            for kz in 0..ks[0] {
                                for ky in 0..ks[1] {
                                    for kx in 0..ks[2] {
                                        let pos = |axis: usize, o: usize, k: usize| {
                                            (o * stride[axis] + k * dil[axis]) as isize - pad[axis].0 as isize
                                        };
                                        let (Some(iz), Some(iy), Some(ix)) = (
                                            source(pos(0, oz, kz), xs[0], p.pad_mode),
                                            source(pos(1, oy, ky), xs[1], p.pad_mode),
                                            source(pos(2, ox, kx), xs[2], p.pad_mode),
                                        ) else {
                                            continue;
                                        };
                                        let xv = x.data[(b * cin + ci) * x_vol + at3(xs, iz, iy, ix)];
                                        let wv = w.data[(co * cin_g + ci_local) * k_vol + at3(ks, kz, ky, kx)];
                                        acc += xv * wv;
                                    }
                                }
                            }
                        }
                        y[(b * cout + co) * o_vol + at3(os, oz, oy, ox)] = acc;
                    }
                }
            }
        }
    }
    RefTensor::new(out.dtype, out.shape.dims().to_vec(), y)
}

/// The transposed convolution as its defining scatter: every input element `x[b, ci, i]` adds
/// `x · w[ci, co_local, k]` to `y[b, co, i·stride + k·dil - pad]` for each output channel of its
/// group, when that position lies inside the output. Then the bias is added.
fn conv_transpose(
    x: &RefTensor,
    w: &RefTensor,
    bias: Option<&RefTensor>,
    p: &ConvTransposeParams,
    out: &TensorType,
) -> RefTensor {
    let (batch, cin) = (x.shape[0], x.shape[1]);
    let cout = out.shape.dims()[1];
    let (cin_g, cout_g) = (cin / p.groups, cout / p.groups);
    let Spatial { xs, ks, os, stride, dil, x_vol, k_vol, o_vol } =
        Spatial::new(&x.shape, &w.shape[2..], out.shape.dims(), &p.stride, &p.dilation);
    let pad = as_3d(&p.padding, 0);
    let mut y = vec![0.0; batch * cout * o_vol];
    for b in 0..batch {
        for ci in 0..cin {
            let g = ci / cin_g;
            for co_local in 0..cout_g {
                let co = g * cout_g + co_local;
                for iz in 0..xs[0] {
                    for iy in 0..xs[1] {
                        for ix in 0..xs[2] {
                            let xv = x.data[(b * cin + ci) * x_vol + at3(xs, iz, iy, ix)];
                            for kz in 0..ks[0] {
                                for ky in 0..ks[1] {
                                    for kx in 0..ks[2] {
                                        let pos = |axis: usize, i: usize, k: usize| {
                                            (i * stride[axis] + k * dil[axis]) as isize - pad[axis] as isize
                                        };
                                        let (oz, oy, ox) = (pos(0, iz, kz), pos(1, iy, ky), pos(2, ix, kx));
                                        let inside = |o: isize, axis: usize| (0..os[axis] as isize).contains(&o);
                                        if !(inside(oz, 0) && inside(oy, 1) && inside(ox, 2)) {
                                            continue;
                                        }
                                        let wv = w.data[(ci * cout_g + co_local) * k_vol + at3(ks, kz, ky, kx)];
                                        let o = at3(os, oz as usize, oy as usize, ox as usize);
                                        y[(b * cout + co) * o_vol + o] += xv * wv;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(bias) = bias {
            for co in 0..cout {
                for v in &mut y[(b * cout + co) * o_vol..(b * cout + co + 1) * o_vol] {
                    *v += bias.data[co];
                }
            }
        }
    }
    RefTensor::new(out.dtype, out.shape.dims().to_vec(), y)
}

/// Average or max over each window `o·stride - pad + k`. Padding positions hold no value: max
/// ignores them; average counts them in the divisor only with `count_include_pad`.
fn pool(x: &RefTensor, p: &PoolParams, out: &TensorType) -> RefTensor {
    let planes = x.shape[0] * x.shape[1];
    let Spatial { xs, ks, os, stride, x_vol, k_vol, o_vol, .. } =
        Spatial::new(&x.shape, &p.kernel, out.shape.dims(), &p.stride, &[]);
    let pad = as_3d(&p.padding, 0);
    let mut y = vec![0.0; planes * o_vol];
    for plane in 0..planes {
        for oz in 0..os[0] {
            for oy in 0..os[1] {
                for ox in 0..os[2] {
                    let mut taps = Vec::new();
                    for kz in 0..ks[0] {
                        for ky in 0..ks[1] {
                            for kx in 0..ks[2] {
                                let pos = |axis: usize, o: usize, k: usize| {
                                    (o * stride[axis] + k) as isize - pad[axis] as isize
                                };
                                let (Some(iz), Some(iy), Some(ix)) = (
                                    source(pos(0, oz, kz), xs[0], ConvPadMode::Zeros),
                                    source(pos(1, oy, ky), xs[1], ConvPadMode::Zeros),
                                    source(pos(2, ox, kx), xs[2], ConvPadMode::Zeros),
                                ) else {
                                    continue;
                                };
                                taps.push(x.data[plane * x_vol + at3(xs, iz, iy, ix)]);
                            }
                        }
                    }
                    let v = match p.kind {
                        // NaN propagates: once taken it is never replaced (`t > NaN` is false).
                        PoolKind::Max => {
                            taps.iter().fold(f64::NEG_INFINITY, |m, &t| if t > m || t.is_nan() { t } else { m })
                        }
                        PoolKind::Avg { count_include_pad } => {
                            let divisor = if count_include_pad { k_vol } else { taps.len() };
                            taps.iter().sum::<f64>() / divisor as f64
                        }
                    };
                    y[plane * o_vol + at3(os, oz, oy, ox)] = v;
                }
            }
        }
    }
    RefTensor::new(out.dtype, out.shape.dims().to_vec(), y)
}

/// One output coordinate's source taps along an axis: (input index, weight) pairs.
type Taps = Vec<(usize, f64)>;

/// torch's `area_pixel_compute_scale` for a given output size.
fn resize_scale(len_in: usize, len_out: usize, align_corners: bool) -> f64 {
    if align_corners {
        if len_out > 1 {
            (len_in as f64 - 1.0) / (len_out as f64 - 1.0)
        } else {
            0.0
        }
    } else {
        len_in as f64 / len_out as f64
    }
}

/// torch's `area_pixel_compute_source_index`: the (unclamped for cubic) source coordinate.
fn resize_source(scale: f64, dst: usize, align_corners: bool, cubic: bool) -> f64 {
    if align_corners {
        scale * dst as f64
    } else {
        let src = scale * (dst as f64 + 0.5) - 0.5;
        if !cubic && src < 0.0 {
            0.0
        } else {
            src
        }
    }
}

/// The taps of output coordinate `dst` along an axis of `len_in` → `len_out`.
fn resize_taps(mode: ResizeMode, len_in: usize, len_out: usize, dst: usize, align_corners: bool) -> Taps {
    match mode {
        ResizeMode::Nearest => vec![(dst * len_in / len_out, 1.0)],
        ResizeMode::Bilinear => {
            let src = resize_source(resize_scale(len_in, len_out, align_corners), dst, align_corners, false);
            let i0 = (src.floor() as usize).min(len_in - 1);
            let lambda = (src - i0 as f64).clamp(0.0, 1.0);
            let i1 = (i0 + 1).min(len_in - 1);
            vec![(i0, 1.0 - lambda), (i1, lambda)]
        }
        ResizeMode::Bicubic => {
            const A: f64 = -0.75;
            let near = |t: f64| ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0; // |t| ≤ 1
            let far = |t: f64| ((A * t - 5.0 * A) * t + 8.0 * A) * t - 4.0 * A; // 1 < |t| < 2
            let src = resize_source(resize_scale(len_in, len_out, align_corners), dst, align_corners, true);
            let base = src.floor();
            let t = src - base;
            let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
            (0..4)
                .map(|j| {
                    let idx = (base as isize - 1 + j as isize).clamp(0, len_in as isize - 1) as usize;
                    (idx, weights[j])
                })
                .collect()
        }
    }
}

/// Resizes the trailing spatial dims: every output element is the weighted sum of the product
/// of its per-axis taps (separable interpolation).
fn resize(x: &RefTensor, mode: ResizeMode, align_corners: bool, out: &TensorType) -> RefTensor {
    let planes = x.shape[0] * x.shape[1];
    let xs = as_3d(&x.shape[2..], 1);
    let os = as_3d(&out.shape.dims()[2..], 1);
    let (x_vol, o_vol) = (xs.iter().product::<usize>(), os.iter().product::<usize>());
    // Unit leading axes (added by `as_3d`) map 1 → 1 and take their only element.
    let taps = |axis: usize, dst: usize| -> Taps {
        if axis < 3 - (x.shape.len() - 2) {
            vec![(0, 1.0)]
        } else {
            resize_taps(mode, xs[axis], os[axis], dst, align_corners)
        }
    };
    let mut y = vec![0.0; planes * o_vol];
    for plane in 0..planes {
        for oz in 0..os[0] {
            for oy in 0..os[1] {
                for ox in 0..os[2] {
                    let mut acc = 0.0;
                    for &(iz, wz) in &taps(0, oz) {
                        for &(iy, wy) in &taps(1, oy) {
                            for &(ix, wx) in &taps(2, ox) {
                                acc += wz * wy * wx * x.data[plane * x_vol + at3(xs, iz, iy, ix)];
                            }
                        }
                    }
                    y[plane * o_vol + at3(os, oz, oy, ox)] = acc;
                }
            }
        }
    }
    RefTensor::new(out.dtype, out.shape.dims().to_vec(), y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::test_util::{run, t};

    fn conv1d(padding: (usize, usize), pad_mode: ConvPadMode) -> Op {
        Op::Conv(ConvParams {
            stride: vec![1],
            dilation: vec![1],
            padding: vec![padding],
            pad_mode,
            groups: 1,
            has_bias: false,
        })
    }

    #[test]
    fn conv1d_with_causal_replicate_padding_by_hand() {
        // Padded input [1, 1, 1, 2, 3]; kernel [1, 10, 100] → [111, 211, 321].
        let x = t(&[1, 1, 3], &[1., 2., 3.]);
        let w = t(&[1, 1, 3], &[1., 10., 100.]);
        let y = run(conv1d((2, 0), ConvPadMode::Replicate), &[&x, &w]);
        assert_eq!(y.data, vec![111., 211., 321.]);
        // Zero padding instead: [0, 0, 1, 2, 3] → [100, 210, 321].
        let y = run(conv1d((2, 0), ConvPadMode::Zeros), &[&x, &w]);
        assert_eq!(y.data, vec![100., 210., 321.]);
    }

    #[test]
    fn conv_transpose1d_stride2_by_hand() {
        // x = [1, 2], w = [1, 10], stride 2: y = [1, 10, 2, 20].
        let x = t(&[1, 1, 2], &[1., 2.]);
        let w = t(&[1, 1, 2], &[1., 10.]);
        let p = ConvTransposeParams {
            stride: vec![2],
            dilation: vec![1],
            padding: vec![0],
            output_padding: vec![0],
            groups: 1,
            has_bias: false,
        };
        let y = run(Op::ConvTranspose(p), &[&x, &w]);
        assert_eq!(y.data, vec![1., 10., 2., 20.]);
    }

    #[test]
    fn pools_by_hand() {
        let x = t(&[1, 1, 3], &[1., 2., 6.]);
        let pool = |kind| Op::Pool(PoolParams { kind, kernel: vec![2], stride: vec![2], padding: vec![1] });
        // Windows: [pad, 1], [2, 6].
        assert_eq!(run(pool(PoolKind::Max), &[&x]).data, vec![1., 6.]);
        assert_eq!(run(pool(PoolKind::Avg { count_include_pad: true }), &[&x]).data, vec![0.5, 4.]);
        assert_eq!(run(pool(PoolKind::Avg { count_include_pad: false }), &[&x]).data, vec![1., 4.]);
    }

    #[test]
    fn nearest_resize_by_hand() {
        let x = t(&[1, 1, 2], &[1., 2.]);
        let op = Op::Resize { mode: ResizeMode::Nearest, size: vec![4], align_corners: false };
        assert_eq!(run(op, &[&x]).data, vec![1., 1., 2., 2.]);
        let x = t(&[1, 1, 3], &[1., 2., 3.]);
        let op = Op::Resize { mode: ResizeMode::Nearest, size: vec![2], align_corners: false };
        assert_eq!(run(op, &[&x]).data, vec![1., 2.]);
    }

    #[test]
    fn bilinear_resize_by_hand() {
        // [1, 3] → 4 columns without align_corners: sources -0.25→0, 0.25, 0.75, 1.25→(1, clamp).
        let x = t(&[1, 1, 1, 2], &[1., 3.]);
        let op = |align_corners| Op::Resize { mode: ResizeMode::Bilinear, size: vec![1, 4], align_corners };
        assert_eq!(run(op(false), &[&x]).data, vec![1., 1.5, 2.5, 3.]);
        // With align_corners the ends map onto the ends: 1, 5/3, 7/3, 3.
        let y = run(op(true), &[&x]).data;
        for (got, want) in y.iter().zip([1., 5. / 3., 7. / 3., 3.]) {
            assert!((got - want).abs() < 1e-12);
        }
    }

    #[test]
    fn bicubic_of_a_constant_is_the_constant() {
        let x = t(&[1, 1, 2, 3], &[2.; 6]);
        let op = Op::Resize { mode: ResizeMode::Bicubic, size: vec![5, 4], align_corners: false };
        for v in run(op, &[&x]).data {
            assert!((v - 2.0).abs() < 1e-12);
        }
    }
}
