//! The float64 reference evaluator: every op computed naively and slowly in f64 on contiguous
//! row-major data. It defines what an op means; backends are tested against it.
//!
//! Values of every dtype are held as f64 (exact for integers below 2^53 and for f16/bf16); the
//! dtype is kept so that casts round like the real storage type.

mod conv;
mod elementwise;
mod eval;
mod fused;
mod layout;
mod linalg;
mod norm;
mod reduce;

pub use eval::eval_op;

use crate::graph::{Graph, NodeKind};
use crate::{DType, IrError, TensorType};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A dense row-major tensor of f64 values tagged with its logical dtype.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Stored as the values' bit patterns, so non-finite values and every bit survive.
    #[serde(with = "crate::serde_bits::vec_f64")]
    pub data: Vec<f64>,
}

impl RefTensor {
    /// Panics if `data.len()` differs from the shape's element count (a programming error).
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<f64>) -> RefTensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "RefTensor data does not match shape {shape:?}");
        RefTensor { dtype, shape, data }
    }

    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype, self.shape.clone())
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Evaluates a whole graph with the reference ops. `weight` resolves weight names.
pub fn eval_graph(
    graph: &Graph,
    inputs: &HashMap<String, RefTensor>,
    weight: &dyn Fn(&str) -> Option<RefTensor>,
) -> Result<HashMap<String, RefTensor>, IrError> {
    let mut values: Vec<Option<RefTensor>> = vec![None; graph.len()];
    for (i, node) in graph.nodes().iter().enumerate() {
        let value = match &node.kind {
            NodeKind::Input | NodeKind::Weight => {
                let (kind, v) = match node.kind {
                    NodeKind::Input => ("input", inputs.get(&node.name).cloned()),
                    _ => ("weight", weight(&node.name)),
                };
                match v {
                    Some(v) if v.ty() == node.ty => v,
                    _ => {
                        return Err(IrError::MissingValue {
                            kind,
                            name: node.name.clone(),
                            expected: node.ty.to_string(),
                        })
                    }
                }
            }
            NodeKind::Constant(c) => c.clone(),
            NodeKind::Op(op) => {
                let args: Vec<&RefTensor> =
                    node.inputs.iter().map(|x| values[x.0].as_ref().expect("topological order")).collect();
                eval_op(op, &args, &node.ty).map_err(|reason| IrError::Eval {
                    node: node.name.clone(),
                    op: op.to_string(),
                    reason,
                })?
            }
        };
        values[i] = Some(value);
    }
    Ok(graph.outputs().iter().map(|(name, id)| (name.clone(), values[id.0].clone().expect("evaluated"))).collect())
}

/// Helpers shared by the unit tests of the op modules.
#[cfg(test)]
mod test_util {
    use super::{eval_op, RefTensor};
    use crate::{DType, Op, TensorType};

    /// An f32 tensor of the given values.
    pub(super) fn t(shape: &[usize], data: &[f64]) -> RefTensor {
        RefTensor::new(DType::F32, shape.to_vec(), data.to_vec())
    }

    /// Infers `op`'s output type from `inputs` and evaluates it (panics on either error).
    pub(super) fn run(op: Op, inputs: &[&RefTensor]) -> RefTensor {
        let tys: Vec<TensorType> = inputs.iter().map(|x| x.ty()).collect();
        let out = op.infer(&tys).expect("valid inputs");
        eval_op(&op, inputs, &out).expect("reference evaluates")
    }
}
