//! The graph: nodes in topological order, each producing one typed value.

use crate::{Op, RefTensor, TensorType};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Index of a node (and of the value it produces) in its [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub usize);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// Where a node's value comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeKind {
    /// Supplied by the caller at run time, by the node's name.
    Input,
    /// Read from the weight source by the node's name (the checkpoint key), when first needed.
    Weight,
    /// A small constant embedded in the graph.
    Constant(RefTensor),
    /// The result of an op on `Node::inputs`.
    Op(Op),
}

/// One SSA value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique within the graph. For inputs and weights it is the external name.
    pub name: String,
    pub kind: NodeKind,
    /// Operands, all earlier in the graph (empty unless `kind` is `Op`).
    pub inputs: Vec<NodeId>,
    pub ty: TensorType,
}

impl Node {
    pub fn op(&self) -> Option<&Op> {
        match &self.kind {
            NodeKind::Op(op) => Some(op),
            _ => None,
        }
    }
}

/// A typed SSA graph. Invariant: every node's inputs precede it, so index order is a valid
/// execution order, and every node's `ty` is what its op infers from its inputs' types.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) outputs: Vec<(String, NodeId)>,
}

impl Graph {
    /// A graph from its parts, as rewrite passes rebuild one. Nothing is checked here: call
    /// [`Graph::verify`] before trusting the result.
    pub fn from_parts(nodes: Vec<Node>, outputs: Vec<(String, NodeId)>) -> Graph {
        Graph { nodes, outputs }
    }

    /// The nodes and named outputs, for rebuilding (see [`Graph::from_parts`]).
    pub fn into_parts(self) -> (Vec<Node>, Vec<(String, NodeId)>) {
        (self.nodes, self.outputs)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Named outputs in declaration order.
    pub fn outputs(&self) -> &[(String, NodeId)] {
        &self.outputs
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len()).map(NodeId)
    }

    /// The graph inputs, in declaration order.
    pub fn inputs(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes_of(|k| matches!(k, NodeKind::Input))
    }

    /// The weights the graph reads, in declaration order.
    pub fn weights(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes_of(|k| matches!(k, NodeKind::Weight))
    }

    fn nodes_of(&self, pred: impl Fn(&NodeKind) -> bool) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes.iter().enumerate().filter(move |(_, n)| pred(&n.kind)).map(|(i, n)| (NodeId(i), n))
    }

    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name).map(NodeId)
    }

    /// How many times each node is used: as an operand (once per use) or as a graph output.
    pub fn use_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.nodes.len()];
        for n in &self.nodes {
            for i in &n.inputs {
                counts[i.0] += 1;
            }
        }
        for (_, id) in &self.outputs {
            counts[id.0] += 1;
        }
        counts
    }

    /// Checks the graph invariants (topological order, types match inference, unique names).
    /// Passes run this after each rewrite in tests.
    pub fn verify(&self) -> Result<(), crate::IrError> {
        let mut names = std::collections::HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let invalid = |reason: String| crate::IrError::InvalidOp {
                node: n.name.clone(),
                op: n.op().map_or("-".into(), |o| o.to_string()),
                inputs: String::new(),
                reason,
            };
            if !names.insert(n.name.as_str()) {
                return Err(invalid("name is not unique".into()));
            }
            if let Some(bad) = n.inputs.iter().find(|x| x.0 >= i) {
                return Err(invalid(format!("operand {bad} does not precede it")));
            }
            if let NodeKind::Op(op) = &n.kind {
                let tys: Vec<_> = n.inputs.iter().map(|x| self.nodes[x.0].ty.clone()).collect();
                let ty = op.infer(&tys).map_err(invalid)?;
                if ty != n.ty {
                    return Err(invalid(format!("recorded type {} but op infers {ty}", n.ty)));
                }
            } else if !n.inputs.is_empty() {
                return Err(invalid("a leaf node has operands".into()));
            }
        }
        if let Some((name, _)) = self.outputs.iter().find(|(_, id)| id.0 >= self.nodes.len()) {
            return Err(crate::IrError::InvalidOp {
                node: name.clone(),
                op: "output".into(),
                inputs: String::new(),
                reason: "refers to a missing node".into(),
            });
        }
        Ok(())
    }
}
