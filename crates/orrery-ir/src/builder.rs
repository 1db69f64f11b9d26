//! Building graphs: every added op is type-checked on the spot.

use crate::graph::{Graph, Node, NodeId, NodeKind};
use crate::ops::*;
use crate::{DType, IrError, RefTensor, Shape, TensorType};
use std::collections::HashMap;

/// Builds a [`Graph`], inferring each node's type as it is added.
///
/// Node names are unique: asking for a name twice gives the second node `name.1`, and so on,
/// so model code can name nodes after checkpoint prefixes without bookkeeping.
#[derive(Default)]
pub struct GraphBuilder {
    graph: Graph,
    used_names: HashMap<String, usize>,
    weights: HashMap<String, NodeId>,
}

type Built = Result<NodeId, IrError>;

impl GraphBuilder {
    pub fn new() -> GraphBuilder {
        GraphBuilder::default()
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.graph.nodes[id.0].ty
    }

    pub fn dims(&self, id: NodeId) -> &[usize] {
        self.graph.nodes[id.0].ty.shape.dims()
    }

    fn unique_name(&mut self, name: &str) -> String {
        match self.used_names.get_mut(name) {
            None => {
                self.used_names.insert(name.to_string(), 0);
                name.to_string()
            }
            Some(n) => loop {
                *n += 1;
                let candidate = format!("{name}.{n}");
                if !self.graph.nodes.iter().any(|x| x.name == candidate) {
                    let n = *n;
                    self.used_names.insert(candidate.clone(), 0);
                    let _ = n;
                    return candidate;
                }
            },
        }
    }

    fn push(&mut self, name: String, kind: NodeKind, inputs: Vec<NodeId>, ty: TensorType) -> NodeId {
        self.graph.nodes.push(Node { name, kind, inputs, ty });
        NodeId(self.graph.nodes.len() - 1)
    }

    /// A graph input supplied at run time under `name`.
    pub fn input(&mut self, name: &str, dtype: DType, shape: impl Into<Shape>) -> Built {
        if self.used_names.contains_key(name) {
            return Err(IrError::DuplicateInput(name.to_string()));
        }
        let name = self.unique_name(name);
        Ok(self.push(name, NodeKind::Input, vec![], TensorType::new(dtype, shape)))
    }

    /// A weight read from the weight source under `name` (the checkpoint key). Declaring the
    /// same weight twice returns the same node when the types agree.
    pub fn weight(&mut self, name: &str, dtype: DType, shape: impl Into<Shape>) -> Built {
        let ty = TensorType::new(dtype, shape);
        if let Some(&id) = self.weights.get(name) {
            let first = &self.graph.nodes[id.0].ty;
            if *first != ty {
                return Err(IrError::WeightMismatch {
                    name: name.to_string(),
                    first: first.to_string(),
                    second: ty.to_string(),
                });
            }
            return Ok(id);
        }
        if self.used_names.contains_key(name) {
            return Err(IrError::WeightMismatch {
                name: name.to_string(),
                first: "another node's name".into(),
                second: ty.to_string(),
            });
        }
        let unique = self.unique_name(name);
        let id = self.push(unique, NodeKind::Weight, vec![], ty);
        self.weights.insert(name.to_string(), id);
        Ok(id)
    }

    /// A constant embedded in the graph.
    pub fn constant(&mut self, name: &str, value: RefTensor) -> NodeId {
        let ty = TensorType::new(value.dtype, value.shape.clone());
        let name = self.unique_name(name);
        self.push(name, NodeKind::Constant(value), vec![], ty)
    }

    /// A scalar f32 constant (shape `[]`).
    pub fn scalar(&mut self, name: &str, v: f64) -> NodeId {
        self.constant(name, RefTensor::new(DType::F32, vec![], vec![v]))
    }

    /// Adds `op` applied to `inputs`, checking and inferring its output type.
    pub fn op(&mut self, name: &str, op: Op, inputs: &[NodeId]) -> Built {
        if let Some(bad) = inputs.iter().find(|i| i.0 >= self.graph.nodes.len()) {
            return Err(IrError::UnknownNode(bad.0));
        }
        let tys: Vec<TensorType> = inputs.iter().map(|i| self.ty(*i).clone()).collect();
        let ty = op.infer(&tys).map_err(|reason| IrError::InvalidOp {
            node: name.to_string(),
            op: op.to_string(),
            inputs: describe_inputs(&self.graph, inputs),
            reason,
        })?;
        let name = self.unique_name(name);
        Ok(self.push(name, NodeKind::Op(op), inputs.to_vec(), ty))
    }

    /// Marks `id` as a graph output called `name`.
    pub fn output(&mut self, name: &str, id: NodeId) -> Result<(), IrError> {
        if self.graph.outputs.iter().any(|(n, _)| n == name) {
            return Err(IrError::DuplicateOutput(name.to_string()));
        }
        if id.0 >= self.graph.nodes.len() {
            return Err(IrError::UnknownNode(id.0));
        }
        self.graph.outputs.push((name.to_string(), id));
        Ok(())
    }

    pub fn finish(self) -> Result<Graph, IrError> {
        if self.graph.outputs.is_empty() {
            return Err(IrError::NoOutputs);
        }
        Ok(self.graph)
    }

    // Convenience wrappers: each is `op` with the variant spelled out.

    pub fn unary(&mut self, name: &str, f: UnaryOp, x: NodeId) -> Built {
        self.op(name, Op::Unary(f), &[x])
    }

    pub fn binary(&mut self, name: &str, f: BinaryOp, a: NodeId, b: NodeId) -> Built {
        self.op(name, Op::Binary(f), &[a, b])
    }

    pub fn add(&mut self, name: &str, a: NodeId, b: NodeId) -> Built {
        self.binary(name, BinaryOp::Add, a, b)
    }

    pub fn mul(&mut self, name: &str, a: NodeId, b: NodeId) -> Built {
        self.binary(name, BinaryOp::Mul, a, b)
    }

    pub fn cast(&mut self, name: &str, x: NodeId, to: DType) -> Built {
        if self.ty(x).dtype == to {
            return Ok(x);
        }
        self.op(name, Op::Cast { to }, &[x])
    }

    pub fn reshape(&mut self, name: &str, x: NodeId, shape: &[usize]) -> Built {
        self.op(name, Op::Reshape { shape: shape.to_vec() }, &[x])
    }

    pub fn permute(&mut self, name: &str, x: NodeId, perm: &[usize]) -> Built {
        self.op(name, Op::Permute { perm: perm.to_vec() }, &[x])
    }

    /// `x[start..end]` along `axis` (step 1).
    pub fn narrow(&mut self, name: &str, x: NodeId, axis: usize, start: usize, end: usize) -> Built {
        self.op(name, Op::Slice { axis, start, end, step: 1 }, &[x])
    }

    /// Splits `x` along `axis` into pieces of the given sizes (torch `split`), as slices.
    pub fn split(&mut self, name: &str, x: NodeId, axis: usize, sizes: &[usize]) -> Result<Vec<NodeId>, IrError> {
        let mut start = 0;
        let mut out = Vec::with_capacity(sizes.len());
        for (i, &s) in sizes.iter().enumerate() {
            out.push(self.narrow(&format!("{name}.{i}"), x, axis, start, start + s)?);
            start += s;
        }
        let dim = self.dims(x).get(axis).copied();
        if dim != Some(start) {
            return Err(IrError::InvalidOp {
                node: name.to_string(),
                op: "split".into(),
                inputs: describe_inputs(&self.graph, &[x]),
                reason: format!("sizes {sizes:?} do not add up to dim {axis} ({dim:?})"),
            });
        }
        Ok(out)
    }

    pub fn concat(&mut self, name: &str, xs: &[NodeId], axis: usize) -> Built {
        self.op(name, Op::Concat { axis }, xs)
    }

    pub fn matmul(&mut self, name: &str, a: NodeId, b: NodeId) -> Built {
        self.op(name, Op::MatMul { transpose_a: false, transpose_b: false }, &[a, b])
    }

    /// torch `linear` with weight `[N, K]` and optional bias.
    pub fn linear(&mut self, name: &str, x: NodeId, w: NodeId, bias: Option<NodeId>) -> Built {
        match bias {
            Some(b) => self.op(name, Op::Linear { has_bias: true }, &[x, w, b]),
            None => self.op(name, Op::Linear { has_bias: false }, &[x, w]),
        }
    }

    pub fn softmax(&mut self, name: &str, x: NodeId, axis: usize) -> Built {
        self.op(name, Op::Softmax { axis }, &[x])
    }
}

/// `%3 "fc1" f32[2, 8], %4 "w" bf16[8, 8]` for error messages.
pub(crate) fn describe_inputs(graph: &Graph, inputs: &[NodeId]) -> String {
    if inputs.is_empty() {
        return "none".into();
    }
    inputs
        .iter()
        .map(|id| {
            let n = &graph.nodes[id.0];
            format!("{id} `{}` {}", n.name, n.ty)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_node_op_and_shapes() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [2, 3]).unwrap();
        let w = b.weight("fc.weight", DType::BF16, [4, 5]).unwrap();
        let err = b.linear("fc", x, w, None).unwrap_err().to_string();
        assert!(err.contains("`fc`"), "{err}");
        assert!(err.contains("linear"), "{err}");
        assert!(err.contains("f32[2, 3]") && err.contains("bf16[4, 5]"), "{err}");
    }

    #[test]
    fn names_are_made_unique_and_weights_deduplicated() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [2]).unwrap();
        let a = b.unary("act", UnaryOp::Relu, x).unwrap();
        let c = b.unary("act", UnaryOp::Relu, a).unwrap();
        assert_eq!(b.graph.nodes[c.0].name, "act.1");
        let w1 = b.weight("w", DType::F32, [2]).unwrap();
        let w2 = b.weight("w", DType::F32, [2]).unwrap();
        assert_eq!(w1, w2);
        assert!(b.weight("w", DType::F16, [2]).is_err());
        assert!(b.input("x", DType::F32, [2]).is_err());
    }

    #[test]
    fn split_checks_sizes() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [2, 6]).unwrap();
        let parts = b.split("qkv", x, 1, &[2, 4]).unwrap();
        assert_eq!(b.dims(parts[1]), &[2, 4]);
        assert!(b.split("bad", x, 1, &[2, 2]).is_err());
    }
}
