//! Reference MatMul, Linear and Attention: direct loops over dense row-major f64 data.
//!
//! These define the ops, so they are written as plainly as possible: every output element is
//! one explicit sum, and attention computes the whole score row before its softmax.

use crate::shape::broadcast_strides;
use crate::{AttentionLayout, AttentionMask, Op, RefTensor, TensorType};

pub(super) fn eval(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    match op {
        Op::MatMul { transpose_a, transpose_b } => Ok(matmul(inputs[0], inputs[1], *transpose_a, *transpose_b, out)),
        Op::Linear { .. } => Ok(linear(inputs[0], inputs[1], inputs.get(2).copied(), out)),
        Op::Attention { scale, mask, layout } => {
            let mask = match mask {
                AttentionMask::None => None,
                _ => inputs.get(3).copied(),
            };
            let y = attention(inputs[0], inputs[1], inputs[2], mask, *scale);
            Ok(match layout {
                AttentionLayout::HeadsMajor => y,
                AttentionLayout::TokensMajor => swap_heads_and_tokens(&y),
            })
        }
        _ => Err(format!("{op}: not a linear-algebra op")),
    }
}

/// The row-major multi-index of flat position `flat` in `dims`.
fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for (i, &d) in dims.iter().enumerate().rev() {
        idx[i] = flat % d;
        flat /= d;
    }
    idx
}

fn dot(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter().zip(strides).map(|(i, s)| i * s).sum()
}

/// `y[..., i, j] = Σ_p A[i, p] · B[p, j]` where `A` is `a` (or its transpose) and `B` is `b`
/// (or its transpose); batch dims broadcast.
fn matmul(a: &RefTensor, b: &RefTensor, ta: bool, tb: bool, out: &TensorType) -> RefTensor {
    let od = out.shape.dims();
    let r = od.len();
    let (m, n) = (od[r - 2], od[r - 1]);
    let batch = &od[..r - 2];
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let k = if ta { a.shape[ra - 2] } else { a.shape[ra - 1] };
    // Batch strides in units of whole matrices; broadcast dims get 0.
    let a_batch = broadcast_strides(&a.shape[..ra - 2], batch);
    let b_batch = broadcast_strides(&b.shape[..rb - 2], batch);
    let n_batch: usize = batch.iter().product();
    let mut y = Vec::with_capacity(out.shape.numel());
    for bi in 0..n_batch {
        let idx = unravel(bi, batch);
        let a0 = dot(&idx, &a_batch) * m * k;
        let b0 = dot(&idx, &b_batch) * k * n;
        let a_at = |i: usize, p: usize| {
            if ta {
                a.data[a0 + p * m + i]
            } else {
                a.data[a0 + i * k + p]
            }
        };
        let b_at = |p: usize, j: usize| {
            if tb {
                b.data[b0 + j * k + p]
            } else {
                b.data[b0 + p * n + j]
            }
        };
        for i in 0..m {
            for j in 0..n {
                y.push((0..k).map(|p| a_at(i, p) * b_at(p, j)).sum());
            }
        }
    }
    RefTensor::new(out.dtype, od.to_vec(), y)
}

/// `y[r, j] = Σ_p x[r, p] · w[j, p] (+ bias[j])` over every leading row `r` of x.
fn linear(x: &RefTensor, w: &RefTensor, bias: Option<&RefTensor>, out: &TensorType) -> RefTensor {
    let (n, k) = (w.shape[0], w.shape[1]);
    let rows = out.shape.numel() / n.max(1);
    let mut y = Vec::with_capacity(out.shape.numel());
    for r in 0..rows {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| x.data[r * k + p] * w.data[j * k + p]).sum();
            y.push(s + bias.map_or(0.0, |b| b.data[j]));
        }
    }
    RefTensor::new(out.dtype, out.shape.dims().to_vec(), y)
}

/// `softmax(q·kᵀ·scale + mask)·v`, one full score row at a time. A boolean mask entry `false`
/// (0) makes the score -inf. A row whose scores are all -inf (nothing to attend, or an empty
/// key set) outputs zeros.
fn attention(q: &RefTensor, k: &RefTensor, v: &RefTensor, mask: Option<&RefTensor>, scale: f64) -> RefTensor {
    let r = q.shape.len();
    let batch = &q.shape[..r - 2];
    let (lq, d) = (q.shape[r - 2], q.shape[r - 1]);
    let (lk, dv) = (k.shape[r - 2], v.shape[r - 1]);
    let mut scores_shape = batch.to_vec();
    scores_shape.extend([lq, lk]);
    let mask_strides = mask.map(|m| broadcast_strides(&m.shape, &scores_shape));
    let n_batch: usize = batch.iter().product();
    let mut y = Vec::with_capacity(n_batch * lq * dv);
    for bi in 0..n_batch {
        let (q0, k0, v0) = (bi * lq * d, bi * lk * d, bi * lk * dv);
        let batch_idx = unravel(bi, batch);
        for i in 0..lq {
            let mut scores = Vec::with_capacity(lk);
            for j in 0..lk {
                let qk: f64 = (0..d).map(|p| q.data[q0 + i * d + p] * k.data[k0 + j * d + p]).sum();
                let mut s = qk * scale;
                if let (Some(m), Some(ms)) = (mask, &mask_strides) {
                    let mut idx = batch_idx.clone();
                    idx.extend([i, j]);
                    let mv = m.data[dot(&idx, ms)];
                    match m.dtype {
                        crate::DType::Bool if mv == 0.0 => s = f64::NEG_INFINITY,
                        crate::DType::Bool => {}
                        _ => s += mv,
                    }
                }
                scores.push(s);
            }
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                y.extend(std::iter::repeat_n(0.0, dv));
                continue;
            }
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for e in 0..dv {
                let s: f64 = (0..lk).map(|j| weights[j] * v.data[v0 + j * dv + e]).sum();
                y.push(s / total);
            }
        }
    }
    let mut shape = batch.to_vec();
    shape.extend([lq, dv]);
    RefTensor::new(crate::DType::F32, shape, y)
}

/// `[..., H, L, D]` → `[..., L, H, D]` (a tokens-major attention output).
fn swap_heads_and_tokens(y: &RefTensor) -> RefTensor {
    let r = y.shape.len();
    let (h, l, d) = (y.shape[r - 3], y.shape[r - 2], y.shape[r - 1]);
    let mut data = Vec::with_capacity(y.data.len());
    for block in y.data.chunks(h * l * d) {
        for i in 0..l {
            for head in 0..h {
                data.extend_from_slice(&block[(head * l + i) * d..][..d]);
            }
        }
    }
    let mut shape = y.shape.clone();
    shape.swap(r - 3, r - 2);
    RefTensor::new(y.dtype, shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::test_util::{run, t};
    use crate::DType;

    #[test]
    fn matmul_2x2_by_hand() {
        let a = t(&[2, 2], &[1., 2., 3., 4.]);
        let b = t(&[2, 2], &[5., 6., 7., 8.]);
        let plain = run(Op::MatMul { transpose_a: false, transpose_b: false }, &[&a, &b]);
        assert_eq!(plain.data, vec![19., 22., 43., 50.]);
        // aᵀ = [[1, 3], [2, 4]]: aᵀ·b = [[26, 30], [38, 44]].
        let ta = run(Op::MatMul { transpose_a: true, transpose_b: false }, &[&a, &b]);
        assert_eq!(ta.data, vec![26., 30., 38., 44.]);
        // bᵀ = [[5, 7], [6, 8]]: a·bᵀ = [[17, 23], [39, 53]].
        let tb = run(Op::MatMul { transpose_a: false, transpose_b: true }, &[&a, &b]);
        assert_eq!(tb.data, vec![17., 23., 39., 53.]);
    }

    #[test]
    fn matmul_broadcasts_batch_dims() {
        let a = t(&[2, 1, 1, 1], &[2., 3.]);
        let b = t(&[3, 1, 1], &[1., 10., 100.]);
        let y = run(Op::MatMul { transpose_a: false, transpose_b: false }, &[&a, &b]);
        assert_eq!(y.shape, vec![2, 3, 1, 1]);
        assert_eq!(y.data, vec![2., 20., 200., 3., 30., 300.]);
    }

    #[test]
    fn linear_with_bias_by_hand() {
        let x = t(&[1, 2], &[1., 2.]);
        let w = t(&[3, 2], &[1., 0., 0., 1., 1., 1.]);
        let b = t(&[3], &[0.5, 0., -1.]);
        let y = run(Op::Linear { has_bias: true }, &[&x, &w, &b]);
        assert_eq!(y.data, vec![1.5, 2., 2.]);
    }

    #[test]
    fn attention_with_one_key_returns_its_value() {
        let q = t(&[1, 2, 2], &[0.3, -1., 2., 5.]);
        let k = t(&[1, 1, 2], &[0.7, 0.1]);
        let v = t(&[1, 1, 3], &[1., 2., 3.]);
        let y = run(
            Op::Attention { scale: 0.5, mask: AttentionMask::None, layout: AttentionLayout::HeadsMajor },
            &[&q, &k, &v],
        );
        assert_eq!(y.data, vec![1., 2., 3., 1., 2., 3.]);
    }

    #[test]
    fn attention_averages_equal_scores_and_zeroes_fully_masked_rows() {
        let q = t(&[2, 1], &[0., 0.]);
        let k = t(&[2, 1], &[1., -1.]);
        let v = t(&[2, 1], &[2., 4.]);
        let mask = RefTensor::new(DType::Bool, vec![2, 2], vec![1., 1., 0., 0.]);
        let y = run(
            Op::Attention { scale: 1.0, mask: AttentionMask::Boolean, layout: AttentionLayout::HeadsMajor },
            &[&q, &k, &v, &mask],
        );
        assert_eq!(y.data, vec![3., 0.]);
    }
}
