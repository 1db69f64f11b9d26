//! Reference layout ops: reshape, permute, slice, concat, pad, expand, repeat, index_select,
//! gather, embedding and arange. Each output element is looked up from its source position.

use super::elementwise::{broadcast_get, cast_value, ravel, unravel};
use crate::{Op, PadMode, RefTensor, TensorType};

pub(super) fn eval(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    let dims = out.shape.dims();
    let data = match op {
        Op::Reshape { .. } => inputs[0].data.clone(),
        Op::Arange { start, step, len, dtype } => {
            (0..*len).map(|i| cast_value(start + i as f64 * step, *dtype)).collect()
        }
        Op::Concat { axis } => concat(inputs, *axis, dims),
        Op::Embedding => embedding(inputs[0], inputs[1])?,
        _ => {
            let x = inputs[0];
            // Ops that read one source element (or a fill value) per output element.
            let mut data = Vec::with_capacity(out.shape.numel());
            for flat in 0..out.shape.numel() {
                let index = unravel(flat, dims);
                let value = match op {
                    Op::Permute { perm } => {
                        let mut src = vec![0; perm.len()];
                        for (i, &p) in perm.iter().enumerate() {
                            src[p] = index[i];
                        }
                        x.data[ravel(&src, &x.shape)]
                    }
                    Op::Slice { axis, start, step, .. } => {
                        let mut src = index.clone();
                        src[*axis] = start + index[*axis] * step;
                        x.data[ravel(&src, &x.shape)]
                    }
                    Op::Expand { .. } => broadcast_get(x, &index),
                    Op::Repeat { .. } => {
                        let lead = index.len() - x.shape.len();
                        let src: Vec<usize> = x.shape.iter().enumerate().map(|(a, &d)| index[lead + a] % d).collect();
                        x.data[ravel(&src, &x.shape)]
                    }
                    Op::Pad { pads, mode } => pad_value(x, &index, pads, *mode),
                    Op::IndexSelect { axis } => {
                        let mut src = index.clone();
                        src[*axis] = resolve_index(inputs[1].data[index[*axis]], x.shape[*axis], *axis, true)?;
                        x.data[ravel(&src, &x.shape)]
                    }
                    Op::Gather { axis } => {
                        let mut src = index.clone();
                        src[*axis] = resolve_index(inputs[1].data[flat], x.shape[*axis], *axis, false)?;
                        x.data[ravel(&src, &x.shape)]
                    }
                    _ => return Err(format!("{op} is not a layout op")),
                };
                data.push(value);
            }
            data
        }
    };
    Ok(RefTensor::new(out.dtype, out.shape.0.clone(), data))
}

/// The position an index value selects along a dim of size `size`; negative values count from
/// the end only where the op allows it (index_select does, gather follows torch and does not).
pub(super) fn resolve_index(value: f64, size: usize, axis: usize, negative_from_end: bool) -> Result<usize, String> {
    let v = value as i64;
    let resolved = if v < 0 && negative_from_end { v + size as i64 } else { v };
    if resolved < 0 || resolved >= size as i64 {
        return Err(format!("index {v} is out of range for dim {axis} of size {size}"));
    }
    Ok(resolved as usize)
}

fn concat(inputs: &[&RefTensor], axis: usize, dims: &[usize]) -> Vec<f64> {
    (0..dims.iter().product())
        .map(|flat| {
            let mut index = unravel(flat, dims);
            for t in inputs {
                if index[axis] < t.shape[axis] {
                    return t.data[ravel(&index, &t.shape)];
                }
                index[axis] -= t.shape[axis];
            }
            unreachable!("the output covers exactly the inputs along the concat axis")
        })
        .collect()
}

/// The padded tensor's value at `index`: the source element it maps to, or the fill value.
fn pad_value(x: &RefTensor, index: &[usize], pads: &[(usize, usize)], mode: PadMode) -> f64 {
    let mut src = Vec::with_capacity(index.len());
    for (a, &i) in index.iter().enumerate() {
        let d = x.shape[a] as i64;
        let pos = i as i64 - pads[a].0 as i64;
        let inside = (0..d).contains(&pos);
        let mapped = match mode {
            _ if inside => pos,
            PadMode::Constant(v) => return cast_value(v, x.dtype),
            PadMode::Replicate => pos.clamp(0, d - 1),
            // Mirror about the first or last element without repeating it.
            PadMode::Reflect if pos < 0 => -pos,
            PadMode::Reflect => 2 * (d - 1) - pos,
        };
        src.push(mapped as usize);
    }
    x.data[ravel(&src, &x.shape)]
}

fn embedding(table: &RefTensor, ids: &RefTensor) -> Result<Vec<f64>, String> {
    let (vocab, width) = (table.shape[0], table.shape[1]);
    let mut data = Vec::with_capacity(ids.numel() * width);
    for &id in &ids.data {
        let row = id as i64;
        if row < 0 || row >= vocab as i64 {
            return Err(format!("id {row} is out of range for a table of {vocab} rows"));
        }
        let row = row as usize;
        data.extend_from_slice(&table.data[row * width..(row + 1) * width]);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn run(op: Op, inputs: &[&RefTensor]) -> Result<RefTensor, String> {
        let tys: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
        let out = op.infer(&tys).unwrap();
        eval(&op, inputs, &out)
    }

    fn t(dtype: DType, shape: &[usize], data: &[f64]) -> RefTensor {
        RefTensor::new(dtype, shape.to_vec(), data.to_vec())
    }

    #[test]
    fn pads_reflect_replicate_and_fill() {
        let x = t(DType::F32, &[3], &[1.0, 2.0, 3.0]);
        let reflect = run(Op::Pad { pads: vec![(2, 2)], mode: PadMode::Reflect }, &[&x]).unwrap();
        assert_eq!(reflect.data, vec![3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]);
        let replicate = run(Op::Pad { pads: vec![(2, 1)], mode: PadMode::Replicate }, &[&x]).unwrap();
        assert_eq!(replicate.data, vec![1.0, 1.0, 1.0, 2.0, 3.0, 3.0]);
        let ints = t(DType::I32, &[2], &[5.0, 6.0]);
        let fill = run(Op::Pad { pads: vec![(1, 0)], mode: PadMode::Constant(-1.5) }, &[&ints]).unwrap();
        assert_eq!(fill.data, vec![-1.0, 5.0, 6.0]);
    }

    #[test]
    fn index_select_counts_negative_indices_from_the_end() {
        let x = t(DType::F32, &[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let idx = t(DType::I64, &[2], &[-1.0, 0.0]);
        let y = run(Op::IndexSelect { axis: 1 }, &[&x, &idx]).unwrap();
        assert_eq!(y.data, vec![2.0, 0.0, 5.0, 3.0]);
        let bad = t(DType::I64, &[1], &[3.0]);
        let err = run(Op::IndexSelect { axis: 1 }, &[&x, &bad]).unwrap_err();
        assert!(err.contains("index 3") && err.contains("dim 1"), "{err}");
        let gather_idx = t(DType::I64, &[2, 1], &[-1.0, 0.0]);
        assert!(run(Op::Gather { axis: 1 }, &[&x, &gather_idx]).is_err());
    }

    #[test]
    fn repeat_tiles_and_grows_rank() {
        let x = t(DType::F32, &[2], &[1.0, 2.0]);
        let y = run(Op::Repeat { repeats: vec![2, 2] }, &[&x]).unwrap();
        assert_eq!(y.shape, vec![2, 4]);
        assert_eq!(y.data, vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
    }
}
