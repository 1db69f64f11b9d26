//! Reference reductions: sum/mean/max/min over axes, argmax, softmax and log-softmax.

use super::elementwise::unravel;
use crate::{Op, ReduceOp, RefTensor, TensorType};

pub(super) fn eval(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    let x = inputs[0];
    let data = match op {
        Op::Reduce { op: f, axes, .. } => reduce(x, *f, axes)?,
        Op::ArgMax { axis, .. } => lines(&x.shape, *axis).iter().map(|line| argmax(x, line)).collect(),
        Op::Softmax { axis } => along_lines(x, *axis, softmax),
        Op::LogSoftmax { axis } => along_lines(x, *axis, log_softmax),
        _ => return Err(format!("{op} is not a reduction")),
    };
    Ok(RefTensor::new(out.dtype, out.shape.0.clone(), data))
}

/// The flat positions of every line of `dims` along `axis`, lines in row-major order of the
/// other axes.
pub(super) fn lines(dims: &[usize], axis: usize) -> Vec<Vec<usize>> {
    let outer: usize = dims[..axis].iter().product();
    let len = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let mut result = Vec::new();
    for o in 0..outer {
        for k in 0..inner {
            result.push((0..len).map(|i| (o * len + i) * inner + k).collect());
        }
    }
    result
}

/// Applies `f` to the values of every line along `axis`, writing its results back in place.
fn along_lines(x: &RefTensor, axis: usize, f: fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    let mut data = x.data.clone();
    for line in lines(&x.shape, axis) {
        let values: Vec<f64> = line.iter().map(|&p| x.data[p]).collect();
        for (&p, y) in line.iter().zip(f(&values)) {
            data[p] = y;
        }
    }
    data
}

/// Reduces `axes`. Every input element is folded into the output element whose index is its
/// own with the reduced axes set to 0, which is the same flat order with or without keepdim.
fn reduce(x: &RefTensor, f: ReduceOp, axes: &[usize]) -> Result<Vec<f64>, String> {
    let kept: Vec<usize> = x.shape.iter().enumerate().map(|(a, &d)| if axes.contains(&a) { 1 } else { d }).collect();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let n_out: usize = kept.iter().product();
    if count == 0 && n_out > 0 && matches!(f, ReduceOp::Max | ReduceOp::Min) {
        let name = if f == ReduceOp::Max { "max" } else { "min" };
        return Err(format!("{name} over axes {axes:?} of shape {:?}, which hold no elements", x.shape));
    }
    let mut groups: Vec<Vec<f64>> = vec![Vec::new(); n_out];
    for (flat, &v) in x.data.iter().enumerate() {
        let mut index = unravel(flat, &x.shape);
        for &a in axes {
            index[a] = 0;
        }
        groups[super::elementwise::ravel(&index, &kept)].push(v);
    }
    Ok(groups.iter().map(|g| fold(f, g)).collect())
}

fn fold(f: ReduceOp, values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let has_nan = values.iter().any(|v| v.is_nan());
    match f {
        ReduceOp::Sum => sum,
        ReduceOp::Mean => sum / values.len() as f64,
        // torch max/min propagate NaN.
        ReduceOp::Max | ReduceOp::Min if has_nan => f64::NAN,
        ReduceOp::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ReduceOp::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
    }
}

/// Index of the first maximum of a line; a NaN counts as the maximum (torch `argmax`).
fn argmax(x: &RefTensor, line: &[usize]) -> f64 {
    let mut best = 0;
    for (i, &p) in line.iter().enumerate() {
        let (v, b) = (x.data[p], x.data[line[best]]);
        if !b.is_nan() && (v.is_nan() || v > b) {
            best = i;
        }
    }
    best as f64
}

pub(super) fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = x.iter().map(|&v| (v - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| e / sum).collect()
}

fn log_softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = x.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v - max - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn t(shape: &[usize], data: &[f64]) -> RefTensor {
        RefTensor::new(DType::F32, shape.to_vec(), data.to_vec())
    }

    fn run(op: Op, x: &RefTensor) -> RefTensor {
        let out = op.infer(&[x.ty()]).unwrap();
        eval(&op, &[x], &out).unwrap()
    }

    #[test]
    fn softmax_of_one_two_three() {
        // e^k / (e + e² + e³) for k = 1, 2, 3.
        let y = softmax(&[1.0, 2.0, 3.0]);
        for (got, want) in y.iter().zip([0.090_030_573_170_380_46, 0.244_728_471_054_797_64, 0.665_240_955_774_821_9]) {
            assert!((got - want).abs() < 1e-15);
        }
        let l = log_softmax(&[1.0, 2.0, 3.0]);
        assert!((l[2] - (-0.407_605_964_444_380_3)).abs() < 1e-15);
    }

    #[test]
    fn reductions_over_non_adjacent_axes() {
        // x[i, j, k] = 100i + 10j + k over [2, 3, 2]; summing axes 0 and 2 leaves j.
        let data: Vec<f64> = (0..12).map(|f| (100 * (f / 6) + 10 * (f / 2 % 3) + f % 2) as f64).collect();
        let x = t(&[2, 3, 2], &data);
        let y = run(Op::Reduce { op: ReduceOp::Sum, axes: vec![0, 2], keepdim: true }, &x);
        assert_eq!(y.shape, vec![1, 3, 1]);
        assert_eq!(y.data, vec![202.0, 242.0, 282.0]);
        let m = run(Op::Reduce { op: ReduceOp::Max, axes: vec![1], keepdim: false }, &x);
        assert_eq!(m.data, vec![20.0, 21.0, 120.0, 121.0]);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        let x = t(&[2, 3], &[1.0, 5.0, 5.0, 2.0, f64::NAN, 9.0]);
        let y = run(Op::ArgMax { axis: 1, keepdim: false }, &x);
        assert_eq!(y.data, vec![1.0, 1.0]);
    }
}
