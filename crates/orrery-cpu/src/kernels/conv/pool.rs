//! Average and max pooling: each output element is computed directly from its window (a pool
//! has no weights to share, so there is no GEMM to form). Work is split into fixed chunks of
//! output elements; every window is summed in the same (z, y, x) order.

use super::{as_3d, unravel3, Spatial};
use crate::kernels::linalg::operand::{index_offsets, F32Operand};
use crate::output::output;
use crate::CpuTensor;
use orrery_ir::{PoolKind, PoolParams, TensorType};
use rayon::prelude::*;

/// Output elements per task.
const CHUNK: usize = 4096;

struct Window {
    kind: PoolKind,
    /// Input strides of the spatial dims.
    in_strides: [usize; 3],
    /// Window geometry (dilation 1).
    sp: Spatial,
}

impl Window {
    /// Kernel taps `k` along `axis` whose input position `o·stride - pad + k` is inside.
    fn taps(&self, axis: usize, o: usize) -> (std::ops::Range<usize>, isize) {
        let start = self.sp.position(axis, o, 0);
        let lo = (-start).max(0) as usize;
        let hi = (self.sp.in_dims[axis] as isize - start).clamp(0, self.sp.kernel[axis] as isize) as usize;
        (lo.min(hi)..hi, start)
    }

    /// The pooled value of output position `o` (flat, within a plane) of the plane at `base`.
    fn value(&self, data: &[f32], base: usize, o: usize) -> f32 {
        let out = unravel3(o, self.sp.out_dims);
        let (rz, sz) = self.taps(0, out[0]);
        let (ry, sy) = self.taps(1, out[1]);
        let (rx, sx) = self.taps(2, out[2]);
        let at = |start: isize, k: usize, axis: usize| (start + k as isize) as usize * self.in_strides[axis];
        match self.kind {
            PoolKind::Max => {
                let mut m = f32::NEG_INFINITY;
                for kz in rz {
                    for ky in ry.clone() {
                        let line = base + at(sz, kz, 0) + at(sy, ky, 1);
                        for kx in rx.clone() {
                            let v = data[line + at(sx, kx, 2)];
                            // NaN propagates: once taken, `v > NaN` never replaces it.
                            if v > m || v.is_nan() {
                                m = v;
                            }
                        }
                    }
                }
                m
            }
            PoolKind::Avg { count_include_pad } => {
                let mut sum = 0f32;
                let count = rz.len() * ry.len() * rx.len();
                for kz in rz {
                    for ky in ry.clone() {
                        let line = base + at(sz, kz, 0) + at(sy, ky, 1);
                        for kx in rx.clone() {
                            sum += data[line + at(sx, kx, 2)];
                        }
                    }
                }
                let divisor = if count_include_pad { self.sp.kernel_volume() } else { count };
                sum / divisor as f32
            }
        }
    }
}

pub(super) fn pool(x: &CpuTensor, p: &PoolParams, out: &TensorType) -> CpuTensor {
    let od = out.shape.dims().to_vec();
    let x = F32Operand::strided(x);
    let window = Window {
        kind: p.kind,
        in_strides: as_3d(&x.strides[2..], 0),
        sp: Spatial::new(&x.shape[2..], &p.kernel, &od[2..], &p.stride, &[], &p.padding),
    };
    let planes = index_offsets(&x.shape[..2], &x.strides[..2], x.offset);
    let out_vol = window.sp.out_volume();
    let data = x.data();
    // Every element is written below.
    let mut y = output::<f32>(out.shape.numel());
    y.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, dst)| {
        for (i, v) in dst.iter_mut().enumerate() {
            let e = chunk * CHUNK + i;
            *v = window.value(data, planes[e / out_vol], e % out_vol);
        }
    });
    y.into_tensor(od)
}
