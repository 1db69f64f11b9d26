//! Reference of fused elementwise programs: the program interpreted per output element with
//! the same scalar functions as the unfused reference ops.

use super::elementwise::{binary, broadcast_map, clamp, unary};
use crate::{FusedStep, Op, RefTensor, TensorType};

pub(super) fn eval(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    let Op::Fused(program) = op else { return Err(format!("{op} is not a fused program")) };
    let data = broadcast_map(out, inputs, |values| {
        let mut v = values.to_vec();
        for step in &program.steps {
            let r = match *step {
                FusedStep::Unary(u, x) => unary(u, v[x]),
                FusedStep::Clamp { min, max, x } => clamp(v[x], min, max),
                FusedStep::Binary(b, x, y) => binary(b, v[x], v[y]),
                FusedStep::Const(c) => c,
            };
            v.push(r);
        }
        *v.last().expect("validated: at least one step")
    });
    Ok(RefTensor::new(out.dtype, out.shape.0.clone(), data))
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
}
