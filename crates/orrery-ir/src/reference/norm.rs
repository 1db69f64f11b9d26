//! Reference normalisations (layer, RMS, group and batch norm) and rotary embeddings.

use super::elementwise::{broadcast_get, unravel};
use super::reduce::lines;
use crate::{Op, RefTensor, RopeStyle, TensorType};

pub(super) fn eval(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    let x = inputs[0];
    let data = match op {
        Op::LayerNorm { eps, .. } => layer_norm(x, *eps, inputs.get(1).copied(), inputs.get(2).copied()),
        Op::RmsNorm { eps, .. } => rms_norm(x, *eps, inputs.get(1).copied()),
        Op::GroupNorm { groups, eps, .. } => {
            group_norm(x, *groups, *eps, inputs.get(1).copied(), inputs.get(2).copied())
        }
        Op::BatchNorm { eps, .. } => {
            batch_norm(x, *eps, inputs[1], inputs[2], inputs.get(3).copied(), inputs.get(4).copied())
        }
        Op::Rope { style } => rope(x, inputs[1], inputs[2], *style),
        _ => return Err(format!("{op} is not a normalisation")),
    };
    Ok(RefTensor::new(out.dtype, out.shape.0.clone(), data))
}

/// Mean and biased variance of `values`.
fn mean_var(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var)
}

/// `p[c]` of an optional per-channel parameter, or `default` when there is none.
fn param(p: Option<&RefTensor>, c: usize, default: f64) -> f64 {
    p.map_or(default, |p| p.data[c])
}

fn layer_norm(x: &RefTensor, eps: f64, w: Option<&RefTensor>, b: Option<&RefTensor>) -> Vec<f64> {
    let mut y = vec![0.0; x.numel()];
    for line in lines(&x.shape, x.shape.len() - 1) {
        let values: Vec<f64> = line.iter().map(|&p| x.data[p]).collect();
        let (mean, var) = mean_var(&values);
        for (i, &p) in line.iter().enumerate() {
            y[p] = (x.data[p] - mean) / (var + eps).sqrt() * param(w, i, 1.0) + param(b, i, 0.0);
        }
    }
    y
}

fn rms_norm(x: &RefTensor, eps: f64, w: Option<&RefTensor>) -> Vec<f64> {
    let mut y = vec![0.0; x.numel()];
    for line in lines(&x.shape, x.shape.len() - 1) {
        let mean_square = line.iter().map(|&p| x.data[p] * x.data[p]).sum::<f64>() / line.len() as f64;
        for (i, &p) in line.iter().enumerate() {
            y[p] = x.data[p] / (mean_square + eps).sqrt() * param(w, i, 1.0);
        }
    }
    y
}

/// x `[N, C, *]`: the elements of sample n whose channel lies in group g are normalised
/// together.
fn group_norm(x: &RefTensor, groups: usize, eps: f64, w: Option<&RefTensor>, b: Option<&RefTensor>) -> Vec<f64> {
    let (n, c) = (x.shape[0], x.shape[1]);
    let spatial: usize = x.shape[2..].iter().product();
    let per_group = c / groups;
    let mut y = vec![0.0; x.numel()];
    for sample in 0..n {
        for g in 0..groups {
            let positions: Vec<usize> = (g * per_group..(g + 1) * per_group)
                .flat_map(|ch| (0..spatial).map(move |s| (sample * c + ch) * spatial + s))
                .collect();
            let values: Vec<f64> = positions.iter().map(|&p| x.data[p]).collect();
            let (mean, var) = mean_var(&values);
            for &p in &positions {
                let ch = p / spatial % c;
                y[p] = (x.data[p] - mean) / (var + eps).sqrt() * param(w, ch, 1.0) + param(b, ch, 0.0);
            }
        }
    }
    y
}

fn batch_norm(
    x: &RefTensor,
    eps: f64,
    mean: &RefTensor,
    var: &RefTensor,
    w: Option<&RefTensor>,
    b: Option<&RefTensor>,
) -> Vec<f64> {
    let c = x.shape[1];
    let spatial: usize = x.shape[2..].iter().product();
    (0..x.numel())
        .map(|p| {
            let ch = p / spatial % c;
            (x.data[p] - mean.data[ch]) / (var.data[ch] + eps).sqrt() * param(w, ch, 1.0) + param(b, ch, 0.0)
        })
        .collect()
}

/// `y = x · cos + rotate(x) · sin`, with cos and sin broadcast to x.
fn rope(x: &RefTensor, cos: &RefTensor, sin: &RefTensor, style: RopeStyle) -> Vec<f64> {
    let d = x.shape[x.shape.len() - 1];
    (0..x.numel())
        .map(|p| {
            let index = unravel(p, &x.shape);
            let i = index[index.len() - 1];
            let row_start = p - i;
            let rotated = match style {
                RopeStyle::RotateHalf if i < d / 2 => -x.data[row_start + i + d / 2],
                RopeStyle::RotateHalf => x.data[row_start + i - d / 2],
                RopeStyle::Interleaved if i.is_multiple_of(2) => -x.data[row_start + i + 1],
                RopeStyle::Interleaved => x.data[row_start + i - 1],
            };
            x.data[p] * broadcast_get(cos, &index) + rotated * broadcast_get(sin, &index)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn t(shape: &[usize], data: &[f64]) -> RefTensor {
        RefTensor::new(DType::F32, shape.to_vec(), data.to_vec())
    }

    fn run(op: Op, inputs: &[&RefTensor]) -> Vec<f64> {
        let tys: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
        let out = op.infer(&tys).unwrap();
        eval(&op, inputs, &out).unwrap().data
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn layer_norm_of_a_known_vector() {
        // [1, 2, 3, 4]: mean 2.5, variance 1.25, so y = (x - 2.5) / √1.25, then · 2 + 1.
        let x = t(&[1, 4], &[1.0, 2.0, 3.0, 4.0]);
        let w = t(&[4], &[2.0; 4]);
        let b = t(&[4], &[1.0; 4]);
        let s = 1.25f64.sqrt();
        let y = run(Op::LayerNorm { eps: 0.0, affine: true }, &[&x, &w, &b]);
        assert_close(&y, &[1.0 - 3.0 / s, 1.0 - 1.0 / s, 1.0 + 1.0 / s, 1.0 + 3.0 / s]);
        // RMS of [3, 4] is √12.5.
        let r = run(Op::RmsNorm { eps: 0.0, has_weight: false }, &[&t(&[2], &[3.0, 4.0])]);
        assert_close(&r, &[3.0 / 12.5f64.sqrt(), 4.0 / 12.5f64.sqrt()]);
    }

    #[test]
    fn group_norm_normalises_each_group_of_channels() {
        // [1, 4, 1], two groups: {1, 3} and {10, 30}, each with mean ± 1 deviation.
        let x = t(&[1, 4, 1], &[1.0, 3.0, 10.0, 30.0]);
        let y = run(Op::GroupNorm { groups: 2, eps: 0.0, affine: false }, &[&x]);
        assert_close(&y, &[-1.0, 1.0, -1.0, 1.0]);
        let mean = t(&[4], &[1.0, 2.0, 3.0, 4.0]);
        let var = t(&[4], &[4.0; 4]);
        let z = run(Op::BatchNorm { eps: 0.0, affine: false }, &[&x, &mean, &var]);
        assert_close(&z, &[0.0, 0.5, 3.5, 13.0]);
    }

    #[test]
    fn rope_of_a_known_vector_in_both_styles() {
        // x = [1, 2, 3, 4], cos = 0.5, sin = 2 everywhere.
        let x = t(&[4], &[1.0, 2.0, 3.0, 4.0]);
        let cos = t(&[1], &[0.5]);
        let sin = t(&[1], &[2.0]);
        // rotate_half(x) = [-3, -4, 1, 2]; interleaved rotate(x) = [-2, 1, -4, 3].
        let half = run(Op::Rope { style: RopeStyle::RotateHalf }, &[&x, &cos, &sin]);
        assert_close(&half, &[0.5 - 6.0, 1.0 - 8.0, 1.5 + 2.0, 2.0 + 4.0]);
        let inter = run(Op::Rope { style: RopeStyle::Interleaved }, &[&x, &cos, &sin]);
        assert_close(&inter, &[0.5 - 4.0, 1.0 + 2.0, 1.5 - 8.0, 2.0 + 6.0]);
    }
}
