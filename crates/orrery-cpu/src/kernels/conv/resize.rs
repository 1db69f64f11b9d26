//! Nearest, bilinear and bicubic resize (torch semantics for a given output size).
//!
//! Interpolation is separable: each output coordinate along each axis has a fixed list of
//! (input index, weight) taps, computed once per call in f64 and stored as f32. An output
//! element is `Σ_z w_z Σ_y w_y Σ_x w_x · x[z, y, x]`, summed in that fixed order.

use super::{as_3d, unravel3};
use crate::kernels::linalg::operand::{index_offsets, F32Operand};
use crate::CpuTensor;
use orrery_ir::{ResizeMode, TensorType};
use rayon::prelude::*;

/// Output elements per task.
const CHUNK: usize = 4096;

/// The taps of every output coordinate along one axis: `per` taps each, flattened.
struct AxisTaps {
    per: usize,
    index: Vec<usize>,
    weight: Vec<f32>,
}

impl AxisTaps {
    fn identity() -> AxisTaps {
        AxisTaps { per: 1, index: vec![0], weight: vec![1.0] }
    }

    fn new(mode: ResizeMode, len_in: usize, len_out: usize, align_corners: bool) -> AxisTaps {
        let per = match mode {
            ResizeMode::Nearest => 1,
            ResizeMode::Bilinear => 2,
            ResizeMode::Bicubic => 4,
        };
        let mut taps =
            AxisTaps { per, index: Vec::with_capacity(per * len_out), weight: Vec::with_capacity(per * len_out) };
        for dst in 0..len_out {
            for (i, w) in source_taps(mode, len_in, len_out, dst, align_corners).into_iter().take(per) {
                taps.index.push(i);
                taps.weight.push(w as f32);
            }
        }
        taps
    }

    fn of(&self, o: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = o * self.per..(o + 1) * self.per;
        self.index[r.clone()].iter().copied().zip(self.weight[r].iter().copied())
    }
}

/// torch's `area_pixel_compute_scale` for a given output size.
fn scale(len_in: usize, len_out: usize, align_corners: bool) -> f64 {
    match (align_corners, len_out > 1) {
        (true, true) => (len_in as f64 - 1.0) / (len_out as f64 - 1.0),
        (true, false) => 0.0,
        (false, _) => len_in as f64 / len_out as f64,
    }
}

/// torch's `area_pixel_compute_source_index`: clamped at 0 except for cubic.
fn source_coordinate(scale: f64, dst: usize, align_corners: bool, cubic: bool) -> f64 {
    if align_corners {
        return scale * dst as f64;
    }
    let src = scale * (dst as f64 + 0.5) - 0.5;
    if !cubic && src < 0.0 {
        0.0
    } else {
        src
    }
}

/// (input index, weight) taps of output coordinate `dst`.
fn source_taps(mode: ResizeMode, len_in: usize, len_out: usize, dst: usize, align_corners: bool) -> Vec<(usize, f64)> {
    let last = len_in.saturating_sub(1);
    match mode {
        // Exact integer floor(dst · in / out).
        ResizeMode::Nearest => vec![((dst * len_in / len_out).min(last), 1.0)],
        ResizeMode::Bilinear => {
            let src = source_coordinate(scale(len_in, len_out, align_corners), dst, align_corners, false);
            let i0 = (src.floor() as usize).min(last);
            let lambda = (src - i0 as f64).clamp(0.0, 1.0);
            vec![(i0, 1.0 - lambda), ((i0 + 1).min(last), lambda)]
        }
        ResizeMode::Bicubic => {
            const A: f64 = -0.75;
            let near = |t: f64| ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
            let far = |t: f64| ((A * t - 5.0 * A) * t + 8.0 * A) * t - 4.0 * A;
            let src = source_coordinate(scale(len_in, len_out, align_corners), dst, align_corners, true);
            let base = src.floor();
            let t = src - base;
            let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
            (0..4).map(|j| ((base as isize - 1 + j as isize).clamp(0, last as isize) as usize, weights[j])).collect()
        }
    }
}

pub(super) fn resize(x: &CpuTensor, mode: ResizeMode, align_corners: bool, out: &TensorType) -> CpuTensor {
    let od = out.shape.dims().to_vec();
    let x = F32Operand::strided(x);
    let spatial = x.shape.len() - 2;
    let (in_dims, out_dims) = (as_3d(&x.shape[2..], 1), as_3d(&od[2..], 1));
    let strides = as_3d(&x.strides[2..], 0);
    // Leading unit axes (added by `as_3d`) take their only element.
    let taps: Vec<AxisTaps> = (0..3)
        .map(|a| {
            if a < 3 - spatial {
                AxisTaps::identity()
            } else {
                AxisTaps::new(mode, in_dims[a], out_dims[a], align_corners)
            }
        })
        .collect();
    let planes = index_offsets(&x.shape[..2], &x.strides[..2], x.offset);
    let out_vol: usize = out_dims.iter().product();
    let data = x.data();
    let mut y = vec![0f32; out.shape.numel()];
    y.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, dst)| {
        for (i, v) in dst.iter_mut().enumerate() {
            let e = chunk * CHUNK + i;
            let base = planes[e / out_vol];
            let [oz, oy, ox] = unravel3(e % out_vol, out_dims);
            let mut acc = 0f32;
            for (iz, wz) in taps[0].of(oz) {
                let mut plane_acc = 0f32;
                for (iy, wy) in taps[1].of(oy) {
                    let line = base + iz * strides[0] + iy * strides[1];
                    let row: f32 = taps[2].of(ox).map(|(ix, wx)| wx * data[line + ix * strides[2]]).sum();
                    plane_acc += wy * row;
                }
                acc += wz * plane_acc;
            }
            *v = acc;
        }
    });
    CpuTensor::from_vec(od, y)
}
