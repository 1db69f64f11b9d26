//! Reference of fused elementwise programs: the program interpreted per output element with
//! the same scalar functions as the unfused reference ops.

use super::elementwise::{binary, broadcast_map, clamp, unary};
use super::eval_op;
use crate::{FusedProgram, FusedStep, Op, RefTensor, RopeStyle, TensorType};

pub(super) fn eval(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    let Op::Fused(program) = op else { return Err(format!("{op} is not a fused program")) };
    Ok(run_program(program, inputs, out))
}

/// `program` over `inputs` (broadcast to `out`), interpreted step by step over whole tensors:
/// elementwise steps per element with the unfused reference's scalar functions, row steps per
/// segment of the last axis.
pub(super) fn run_program(program: &FusedProgram, inputs: &[&RefTensor], out: &TensorType) -> RefTensor {
    let n = out.shape.numel();
    let mut values: Vec<Vec<f64>> =
        inputs.iter().map(|t| broadcast_map(out, std::slice::from_ref(t), |v| v[0])).collect();
    for step in &program.steps {
        let v = &values;
        let r: Vec<f64> = match *step {
            FusedStep::Unary(u, x) => v[x].iter().map(|&a| unary(u, a)).collect(),
            FusedStep::Clamp { min, max, x } => v[x].iter().map(|&a| clamp(a, min, max)).collect(),
            FusedStep::Binary(b, x, y) => v[x].iter().zip(&v[y]).map(|(&a, &c)| binary(b, a, c)).collect(),
            FusedStep::Const(c) => vec![c; n],
            FusedStep::SegMean { x, len } => v[x]
                .chunks(len)
                .flat_map(|seg| std::iter::repeat_n(seg.iter().sum::<f64>() / len as f64, len))
                .collect(),
            FusedStep::Rotate { x, len, style } => v[x]
                .chunks(len)
                .flat_map(|seg| {
                    (0..len).map(move |j| match style {
                        RopeStyle::RotateHalf if j < len / 2 => -seg[j + len / 2],
                        RopeStyle::RotateHalf => seg[j - len / 2],
                        RopeStyle::Interleaved if j % 2 == 0 => -seg[j + 1],
                        RopeStyle::Interleaved => seg[j - 1],
                    })
                })
                .collect(),
        };
        values.push(r);
    }
    let data = values.pop().expect("validated: at least one step");
    RefTensor::new(out.dtype, out.shape.0.clone(), data)
}

/// [`Op::Epilogue`]: the base op by its own reference, then the program over
/// `[base output, extra operands...]`.
pub(super) fn eval_epilogue(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    let Op::Epilogue { base, program, view, perm } = op else { return Err(format!("{op} is not an epilogue")) };
    let n_base = base.epilogue_base_inputs().ok_or_else(|| format!("{base} cannot take an epilogue"))?;
    if inputs.len() < n_base {
        return Err(format!("expects at least {n_base} inputs, got {}", inputs.len()));
    }
    let in_types: Vec<TensorType> = inputs[..n_base].iter().map(|t| t.ty()).collect();
    let base_ty = base.infer(&in_types)?;
    // The view is a row-major reshape: the same data under other dims.
    let mut base_out = eval_op(base, &inputs[..n_base], &base_ty)?;
    base_out.shape = view.clone().unwrap_or(base_ty.shape.0.clone());
    let program_ty = TensorType { dtype: out.dtype, shape: crate::Shape(base_out.shape.clone()) };
    let mut args: Vec<&RefTensor> = vec![&base_out];
    args.extend_from_slice(&inputs[n_base..]);
    let y = run_program(program, &args, &program_ty);
    Ok(match perm {
        None => y,
        Some(perm) => permuted(&y, perm),
    })
}

/// `y` permuted (`out.dims[i] = y.dims[perm[i]]`), dense.
fn permuted(y: &RefTensor, perm: &[usize]) -> RefTensor {
    let dims: Vec<usize> = perm.iter().map(|&p| y.shape[p]).collect();
    let mut strides = vec![1usize; y.shape.len()];
    for a in (0..y.shape.len().saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * y.shape[a + 1];
    }
    let mut data = Vec::with_capacity(y.data.len());
    let mut index = vec![0usize; dims.len()];
    for _ in 0..y.data.len() {
        data.push(y.data[index.iter().zip(perm).map(|(&i, &p)| i * strides[p]).sum::<usize>()]);
        for a in (0..dims.len()).rev() {
            index[a] += 1;
            if index[a] < dims[a] {
                break;
            }
            index[a] = 0;
        }
    }
    RefTensor::new(y.dtype, dims, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BinaryOp, DType, FusedProgram, UnaryOp};

    #[test]
    fn modulation_program_broadcasts_its_inputs() {
        // x·(1+scale)+shift with x [2, 3], scale and shift [3].
        let program = FusedProgram {
            n_inputs: 3,
            steps: vec![
                FusedStep::Const(1.0),
                FusedStep::Binary(BinaryOp::Add, 3, 1),
                FusedStep::Binary(BinaryOp::Mul, 0, 4),
                FusedStep::Binary(BinaryOp::Add, 5, 2),
                FusedStep::Unary(UnaryOp::Relu, 6),
            ],
        };
        let x = RefTensor::new(DType::F32, vec![2, 3], vec![1., -2., 3., 4., 5., -6.]);
        let scale = RefTensor::new(DType::F32, vec![3], vec![0., 1., -1.]);
        let shift = RefTensor::new(DType::F32, vec![3], vec![0.5, 0.5, 0.5]);
        let op = Op::Fused(program);
        let ty = op.infer(&[x.ty(), scale.ty(), shift.ty()]).unwrap();
        let y = eval(&op, &[&x, &scale, &shift], &ty).unwrap();
        assert_eq!(y.data, vec![1.5, 0.0, 0.5, 4.5, 10.5, 0.5]);
        assert_eq!(op.to_string(), "fused{v3=1; v4=add(v3, v1); v5=mul(v0, v4); v6=add(v5, v2); v7=relu(v6)}");
    }

    #[test]
    fn epilogue_runs_the_base_then_the_program() {
        // relu(x·wᵀ + r) with x [2, 2], w [2, 2] (identity and a swap), r [2].
        let program = FusedProgram {
            n_inputs: 2,
            steps: vec![FusedStep::Binary(BinaryOp::Add, 0, 1), FusedStep::Unary(UnaryOp::Relu, 2)],
        };
        let op = Op::Epilogue { base: Box::new(Op::Linear { has_bias: false }), program, view: None, perm: None };
        let x = RefTensor::new(DType::F32, vec![2, 2], vec![1., -2., 3., 4.]);
        let w = RefTensor::new(DType::F32, vec![2, 2], vec![0., 1., 1., 0.]);
        let r = RefTensor::new(DType::F32, vec![2], vec![0.5, 0.5]);
        let ty = op.infer(&[x.ty(), w.ty(), r.ty()]).unwrap();
        let y = eval_epilogue(&op, &[&x, &w, &r], &ty).unwrap();
        assert_eq!(y.data, vec![0.0, 1.5, 4.5, 3.5]);
        assert_eq!(op.to_string(), "epilogue{linear{bias=false}; v2=add(v0, v1); v3=relu(v2)}");
        // Extra operands may not grow the base's shape, and only the listed bases are allowed.
        let big = RefTensor::new(DType::F32, vec![3, 2, 2], vec![0.; 12]);
        assert!(op.infer(&[x.ty(), w.ty(), big.ty()]).unwrap_err().contains("does not broadcast"));
        let bad = Op::Epilogue {
            base: Box::new(Op::Unary(UnaryOp::Exp)),
            program: FusedProgram { n_inputs: 1, steps: vec![FusedStep::Unary(UnaryOp::Relu, 0)] },
            view: None,
            perm: None,
        };
        assert!(bad.infer(&[x.ty()]).unwrap_err().contains("cannot take an epilogue"));
    }
}
