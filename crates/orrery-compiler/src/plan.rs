//! The plan: kernels in execution order with their costs and the values they release.

use crate::CompileError;
use orrery_ir::{Cost, Graph, NodeId, NodeKind, TensorType};

/// One kernel launch: an op node of the graph.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub node: NodeId,
    /// The node's name (`<source>.<suffix>` for rewritten nodes, later).
    pub name: String,
    /// The op with its parameters, as the dump prints it.
    pub op: String,
    pub inputs: Vec<NodeId>,
    pub output: TensorType,
    pub cost: Cost,
    /// True when the output is a view of an input (no memory of its own).
    pub is_view: bool,
    /// Values whose last use is this kernel: the runtime releases them right after it.
    pub frees: Vec<NodeId>,
}

/// An executable schedule for one graph at fixed input shapes.
#[derive(Clone, Debug)]
pub struct Plan {
    pub graph: Graph,
    pub kernels: Vec<Kernel>,
    /// Bytes of every weight the graph reads, in its stored dtype.
    pub weight_bytes: u64,
    /// Activation memory the plan needs. Until the static memory planner lands this is the sum
    /// of every op output that owns memory (views excluded): an upper bound.
    pub arena_bytes: u64,
    pub flops: u64,
}

/// Verifies `graph` and schedules it.
pub fn compile(graph: Graph) -> Result<Plan, CompileError> {
    graph.verify()?;
    let last_use = last_uses(&graph);
    let mut kernels = Vec::new();
    let mut frees_at: Vec<Vec<NodeId>> = vec![Vec::new(); graph.len()];
    for (value, user) in last_use.iter().enumerate() {
        if let Some(user) = user {
            frees_at[user.0].push(NodeId(value));
        }
    }
    for (id, node) in graph.ids().zip(graph.nodes()) {
        let NodeKind::Op(op) = &node.kind else { continue };
        let in_types: Vec<TensorType> = node.inputs.iter().map(|i| graph.node(*i).ty.clone()).collect();
        kernels.push(Kernel {
            node: id,
            name: node.name.clone(),
            op: op.to_string(),
            inputs: node.inputs.clone(),
            output: node.ty.clone(),
            cost: op.cost(&in_types, &node.ty),
            is_view: op.is_view(),
            frees: std::mem::take(&mut frees_at[id.0]),
        });
    }
    let weight_bytes = graph.weights().map(|(_, n)| n.ty.size_bytes()).sum();
    let arena_bytes = kernels.iter().filter(|k| !k.is_view).map(|k| k.output.size_bytes()).sum();
    let flops = kernels.iter().map(|k| k.cost.flops).sum();
    Ok(Plan { graph, kernels, weight_bytes, arena_bytes, flops })
}

/// For each value, the op node that uses it last, or `None` when it must outlive the run
/// (graph outputs, weights, which the runtime caches across runs, and unused values).
fn last_uses(graph: &Graph) -> Vec<Option<NodeId>> {
    let mut last: Vec<Option<NodeId>> = vec![None; graph.len()];
    for (id, node) in graph.ids().zip(graph.nodes()) {
        for input in &node.inputs {
            last[input.0] = Some(id);
        }
    }
    for (_, out) in graph.outputs() {
        last[out.0] = None;
    }
    for (id, _) in graph.weights() {
        last[id.0] = None;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_ir::{DType, GraphBuilder, UnaryOp};

    #[test]
    fn plan_counts_costs_and_frees_after_last_use() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [4, 8]).unwrap();
        let w = b.weight("w", DType::BF16, [16, 8]).unwrap();
        let h = b.linear("fc", x, w, None).unwrap();
        let a = b.unary("act", UnaryOp::Relu, h).unwrap();
        let r = b.reshape("flat", a, &[64]).unwrap();
        b.output("y", r).unwrap();
        let plan = compile(b.finish().unwrap()).unwrap();
        assert_eq!(plan.kernels.len(), 3);
        assert_eq!(plan.weight_bytes, 16 * 8 * 2);
        // fc and act own 4·16 f32 each; the reshape is a view.
        assert_eq!(plan.arena_bytes, 2 * 4 * 16 * 4);
        assert_eq!(plan.flops, 4 * 16 * 2 * 8 + 4 * 16);
        assert_eq!(plan.kernels[0].frees, vec![x]);
        assert_eq!(plan.kernels[1].frees, vec![h]);
        assert_eq!(plan.kernels[2].frees, vec![a]);
    }
}
