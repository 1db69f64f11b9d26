//! Conv, ConvTranspose, Pool and Resize kernels.
//!
//! Every kernel treats 1-d and 2-d inputs as 3-d with leading unit spatial dims (kernel 1,
//! stride 1, no padding there), so each is written once for `[z, y, x]`.

mod fields;
mod forward;
mod pool;
mod resize;
mod taps;
mod transpose;
mod winograd;

use crate::{CpuError, CpuTensor};
use orrery_ir::{Op, TensorType};
use std::cell::RefCell;
use std::sync::{Mutex, TryLockError};

pub(super) fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let wrong_inputs = || CpuError::kernel(op, format!("unexpected number of inputs: {}", inputs.len()));
    match op {
        Op::Conv(p) => {
            let (x, w, bias) = split_bias(inputs, p.has_bias).ok_or_else(wrong_inputs)?;
            Ok(forward::conv(x, w, bias, p, out))
        }
        Op::ConvTranspose(p) => {
            let (x, w, bias) = split_bias(inputs, p.has_bias).ok_or_else(wrong_inputs)?;
            Ok(transpose::conv_transpose(x, w, bias, p, out))
        }
        Op::Pool(p) => {
            let [x] = inputs else { return Err(wrong_inputs()) };
            Ok(pool::pool(x, p, out))
        }
        Op::Resize { mode, align_corners, .. } => {
            let [x] = inputs else { return Err(wrong_inputs()) };
            Ok(resize::resize(x, *mode, *align_corners, out))
        }
        _ => Err(CpuError::kernel(op, "not a convolution-family op")),
    }
}

/// (x, w, bias) from the inputs of a convolution, checking the count.
fn split_bias<'a>(
    inputs: &[&'a CpuTensor],
    has_bias: bool,
) -> Option<(&'a CpuTensor, &'a CpuTensor, Option<&'a CpuTensor>)> {
    match (inputs, has_bias) {
        ([x, w], false) => Some((x, w, None)),
        ([x, w, b], true) => Some((x, w, Some(b))),
        _ => None,
    }
}

thread_local! {
    /// Per-thread scratch for gathered columns, reused across tasks and calls so that large
    /// tiles are not allocated (and page-faulted in) again for every task.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` floats (contents unspecified: `f` overwrites it).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        // Re-entered on this thread (a task nested in another): use a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// One scratch buffer for the whole process, for the Winograd convolutions' transformed
/// weights and blocks (tens of MiB at 512 channels) and the temporal convolutions' weights
/// split by tap (a copy of the weights): a per-thread buffer would be kept by every
/// worker that ever ran one, and a fresh one costs more in page faults than some of those
/// convolutions take. The buffer keeps the largest size asked for.
static SHARED_SCRATCH: Mutex<Vec<f32>> = Mutex::new(Vec::new());

/// Runs `f` on `len` floats of the process-wide scratch (contents unspecified), or of a fresh
/// buffer while another call holds it.
fn shared_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut held = match SHARED_SCRATCH.try_lock() {
        Ok(v) => v,
        // A panic while it was held leaves values of no use, which are overwritten anyway.
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return f(&mut vec![0.0; len]),
    };
    if held.len() < len {
        held.resize(len, 0.0);
    }
    f(&mut held[..len])
}

/// `v` (one entry per spatial dim) widened to 3 entries with leading `fill`s.
pub(crate) fn as_3d<T: Copy>(v: &[T], fill: T) -> [T; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

/// The spatial geometry of a windowed kernel (convolution, transposed convolution, pooling),
/// every entry widened to 3 dims by [`as_3d`].
struct Spatial {
    in_dims: [usize; 3],
    kernel: [usize; 3],
    out_dims: [usize; 3],
    stride: [usize; 3],
    dilation: [usize; 3],
    /// Padding before the first element (padding after only shapes `out_dims`).
    pad: [usize; 3],
}

impl Spatial {
    /// From the spatial dims of the input, kernel and output and the per-dim stride, dilation
    /// (empty: 1 everywhere) and leading padding.
    fn new(
        input: &[usize],
        kernel: &[usize],
        output: &[usize],
        stride: &[usize],
        dilation: &[usize],
        pad: &[usize],
    ) -> Spatial {
        Spatial {
            in_dims: as_3d(input, 1),
            kernel: as_3d(kernel, 1),
            out_dims: as_3d(output, 1),
            stride: as_3d(stride, 1),
            dilation: as_3d(dilation, 1),
            pad: as_3d(pad, 0),
        }
    }

    fn kernel_volume(&self) -> usize {
        self.kernel.iter().product()
    }

    fn in_volume(&self) -> usize {
        self.in_dims.iter().product()
    }

    fn out_volume(&self) -> usize {
        self.out_dims.iter().product()
    }

    /// `o·stride + k·dil - pad` along `axis`: the padded input position that tap `k` of output
    /// `o` reads (convolution, pooling), or the output position that input `o` reaches through
    /// tap `k` (transposed convolution).
    fn position(&self, axis: usize, o: usize, k: usize) -> isize {
        (o * self.stride[axis] + k * self.dilation[axis]) as isize - self.pad[axis] as isize
    }
}

/// (z, y, x) of flat position `p` in a `[_, h, w]` volume.
pub(crate) fn unravel3(p: usize, dims: [usize; 3]) -> [usize; 3] {
    [p / (dims[1] * dims[2]), (p / dims[2]) % dims[1], p % dims[2]]
}

/// The range of positions `o` in `0..count` whose source `o·step + offset` lies in `0..len`.
/// Positions before it fall off the low edge, positions after it off the high edge.
pub(crate) fn valid_range(count: usize, step: usize, offset: isize, len: usize) -> std::ops::Range<usize> {
    let (step_i, len_i) = (step as isize, len as isize);
    // First o with o·step + offset ≥ 0.
    let lo = if offset >= 0 { 0 } else { ((-offset) + step_i - 1) / step_i };
    // First o with o·step + offset ≥ len.
    let hi = if offset >= len_i { 0 } else { (len_i - offset + step_i - 1) / step_i };
    let (lo, hi) = (lo.clamp(0, count as isize) as usize, hi.clamp(0, count as isize) as usize);
    lo..hi.max(lo)
}

/// Deterministic values in [-1, 1), for the convolution unit tests.
#[cfg(test)]
pub(super) fn test_values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_matches_brute_force() {
        for count in 0..7 {
            for step in 1..4 {
                for offset in -7..9isize {
                    for len in 0..6 {
                        let want: Vec<usize> = (0..count)
                            .filter(|&o| (0..len as isize).contains(&((o * step) as isize + offset)))
                            .collect();
                        let got: Vec<usize> = valid_range(count, step, offset, len).collect();
                        assert_eq!(got, want, "count {count} step {step} offset {offset} len {len}");
                    }
                }
            }
        }
    }
}
