//! Elementwise fusion.

use super::{Patch, Rule, Value};
use orrery_ir::{BinaryOp, DType, FusedProgram, FusedStep, Graph, Node, NodeId, NodeKind, Op};
use std::collections::HashMap;

/// `F(G(A, B), C)` → `FUSED{g; f}(A, B, C)` named `<root>.fused`: a connected group of f32
/// elementwise ops (unary, clamp, binary, and earlier fused programs) whose intermediates
/// have no use outside the group becomes one kernel; rank-0 f32 constants become program
/// constants.
///
/// An operand joins the group when every use of it is inside the group and it has the root's
/// element count, so a small operand that is broadcast up (e.g. `silu(emb[B, D])` added to
/// `x[B, L, D]`) is computed once and read as an input rather than recomputed for every output
/// element. Row programs (normalisations) join on the same terms.
///
/// A *cheap* operand (one add, subtract or multiply, at most one of whose operands has its own
/// shape) joins even when it is smaller or used elsewhere too: the group recomputes it, which
/// costs a flop per element and saves a kernel and a round trip through memory (`1 + scale`
/// of an AdaLN modulation; `x + pos_emb` feeding both a layer norm and a residual add, each of
/// which then reads `x` and `pos_emb` directly). The "at most one full-size operand" condition
/// keeps recomputation from chaining back through residual streams, where every consumer
/// would reread every earlier addend.
pub struct FuseElementwise;

fn is_fusible(node: &Node) -> bool {
    node.ty.dtype == DType::F32
        && matches!(node.op(), Some(Op::Unary(_) | Op::Clamp { .. } | Op::Binary(_) | Op::Fused(_)))
}

impl Rule for FuseElementwise {
    fn name(&self) -> &str {
        "fuse_elementwise"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let uses = graph.use_counts();
        // Latest roots first: the last op of a chain gathers the whole chain in one patch.
        for (i, node) in graph.nodes().iter().enumerate().rev() {
            let root = NodeId(i);
            if !is_fusible(node) {
                continue;
            }
            let members = grow_group(graph, &uses, root);
            if members.len() < 2 {
                continue;
            }
            if let Some(patch) = fuse(graph, root, &members) {
                return Some(patch);
            }
        }
        None
    }
}

/// The group rooted at `root`, in graph (topological) order.
fn grow_group(graph: &Graph, uses: &[usize], root: NodeId) -> Vec<NodeId> {
    let numel = graph.node(root).ty.shape.numel();
    let mut members = vec![root];
    loop {
        let mut added = false;
        let candidates: Vec<NodeId> = members.iter().flat_map(|m| graph.node(*m).inputs.clone()).collect();
        for o in candidates {
            let node = graph.node(o);
            if members.contains(&o) || !is_fusible(node) {
                continue;
            }
            // Every use of `o` from the group (a graph output counts as a use), same size; or
            // cheap enough to recompute.
            let inside: usize = members.iter().map(|m| graph.node(*m).inputs.iter().filter(|&&i| i == o).count()).sum();
            let owned = inside == uses[o.0] && node.ty.shape.numel() == numel;
            if owned || is_cheap(graph, node) {
                members.push(o);
                added = true;
            }
        }
        if !added {
            break;
        }
    }
    members.sort();
    members
}

/// One add, subtract or multiply with at most one operand of its own shape (the others are
/// broadcast up or constants).
fn is_cheap(graph: &Graph, node: &Node) -> bool {
    let full = node.inputs.iter().filter(|&&i| graph.node(i).ty.shape == node.ty.shape).count();
    matches!(node.op(), Some(Op::Binary(BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul))) && full <= 1
}

/// One fused node computing `root` from the group's external operands, if its type matches.
fn fuse(graph: &Graph, root: NodeId, members: &[NodeId]) -> Option<Patch> {
    let mut externals: Vec<NodeId> = Vec::new();
    let mut value_of: HashMap<NodeId, usize> = HashMap::new();
    let mut steps: Vec<FusedStep> = Vec::new();
    // External operands first, in order of first use, so program inputs are numbered 0..n.
    for m in members {
        for &o in &graph.node(*m).inputs {
            if !members.contains(&o) && !externals.contains(&o) && scalar_constant(graph.node(o)).is_none() {
                externals.push(o);
            }
        }
    }
    for (i, &e) in externals.iter().enumerate() {
        value_of.insert(e, i);
    }
    let n_inputs = externals.len();
    // Maps an operand to its program value; rank-0 constants become `Const` steps on first use.
    fn operand(
        graph: &Graph,
        o: NodeId,
        n_inputs: usize,
        value_of: &mut HashMap<NodeId, usize>,
        steps: &mut Vec<FusedStep>,
    ) -> usize {
        if let Some(&v) = value_of.get(&o) {
            return v;
        }
        let c = scalar_constant(graph.node(o)).expect("non-member operands are inputs or scalars");
        steps.push(FusedStep::Const(c));
        let v = n_inputs + steps.len() - 1;
        value_of.insert(o, v);
        v
    }
    for &m in members {
        let node = graph.node(m);
        let args: Vec<usize> =
            node.inputs.iter().map(|&o| operand(graph, o, n_inputs, &mut value_of, &mut steps)).collect();
        match node.op()? {
            Op::Unary(u) => steps.push(FusedStep::Unary(*u, args[0])),
            Op::Clamp { min, max } => steps.push(FusedStep::Clamp { min: *min, max: *max, x: args[0] }),
            Op::Binary(b) => steps.push(FusedStep::Binary(*b, args[0], args[1])),
            Op::Fused(p) => inline(p, &args, n_inputs, &mut steps),
            _ => return None,
        }
        value_of.insert(m, n_inputs + steps.len() - 1);
    }
    let root_node = graph.node(root);
    let program = FusedProgram { n_inputs, steps };
    let names: Vec<&str> = members.iter().map(|m| graph.node(*m).name.as_str()).collect();
    let mut patch = Patch::new(format!("fuse {}", names.join(", ")));
    let inputs: Vec<Value> = externals.iter().map(|&e| Value::Existing(e)).collect();
    let fused = patch.op(graph, root, "fused", Op::Fused(program), &inputs).ok()?;
    if *patch.ty(graph, fused) != root_node.ty {
        return None;
    }
    patch.replace(root, fused);
    Some(patch)
}

/// Appends program `p`'s steps, its inputs bound to the values `args`.
fn inline(p: &FusedProgram, args: &[usize], n_inputs: usize, steps: &mut Vec<FusedStep>) {
    let base = n_inputs + steps.len();
    let map = |v: usize| if v < p.n_inputs { args[v] } else { base + (v - p.n_inputs) };
    steps.extend(p.steps.iter().map(|s| s.map_operands(map)));
}

/// The value of a rank-0 f32 constant.
fn scalar_constant(node: &Node) -> Option<f64> {
    match &node.kind {
        NodeKind::Constant(c) if c.dtype == DType::F32 && c.shape.is_empty() => c.data.first().copied(),
        _ => None,
    }
}
