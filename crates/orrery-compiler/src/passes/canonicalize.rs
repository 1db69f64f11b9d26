//! Canonicalisation: layout ops folded away or merged, algebraic identities removed.

use super::{Patch, Rule, Value};
use orrery_ir::{AttentionLayout, BinaryOp, Graph, Node, NodeId, NodeKind, Op};

/// Local simplifications, tried on each node in graph order:
///
/// - `PERMUTE(X, identity)` → `X`; `PERMUTE(PERMUTE(X, p), q)` → `PERMUTE(X, p∘q)` (or `X`);
/// - `RESHAPE(X, X.shape)` → `X`; `RESHAPE(RESHAPE(X, s), t)` → `RESHAPE(X, t)` (or `X`);
/// - `MATMUL{ta}(PERMUTE(A, [.., 1, 0]), B)` → `MATMUL{!ta}(A, B)` and likewise for `B`, when
///   the permute keeps the leading (batch) axes and swaps the last two;
/// - `LINEAR(X, PERMUTE(W, [1, 0]))` (no bias, rank(X) ≥ 2) → `MATMUL(X, W)`;
/// - `PERMUTE(ATTENTION(Q, K, V), […, L, H, D])` → `ATTENTION{tokens_major}(Q, K, V)` when the
///   attention has no other use: the kernel writes the merged-heads layout directly, so the
///   usual reshape back to `[B, L, H·D]` becomes a view instead of a copy;
/// - `X * 1`, `1 * X`, `X / 1`, `X + 0`, `0 + X`, `X - 0` → `X` for constants of ones or zeros,
///   only when the result has X's type (broadcasting against a larger constant changes the
///   shape). `X + 0` differs from `X` only for `X = -0.0`, which becomes `+0.0`.
///
/// New nodes are named after the node they replace: `.perm`, `.reshape`, `.ta`, `.tb`,
/// `.matmul`, `.attention`.
pub struct Canonicalize;

impl Rule for Canonicalize {
    fn name(&self) -> &str {
        "canonicalize"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        graph.ids().find_map(|id| rewrite(graph, id))
    }
}

fn op_of(graph: &Graph, id: NodeId) -> Option<&Op> {
    graph.node(id).op()
}

fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i == p)
}

/// True for `[0, 1, …, r-3, r-1, r-2]`: batch axes kept, the last two swapped.
fn swaps_last_two(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2 && perm[r - 1] == r - 2 && perm[r - 2] == r - 1 && is_identity(&perm[..r - 2])
}

/// True for `[0, 1, …, r-4, r-2, r-3, r-1]`: the heads and tokens axes of `[…, H, L, D]` swapped.
fn swaps_heads_and_tokens(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 3 && perm[r - 1] == r - 1 && perm[r - 2] == r - 3 && perm[r - 3] == r - 2 && is_identity(&perm[..r - 3])
}

/// A constant whose every element equals `v`.
fn is_constant_all(graph: &Graph, id: NodeId, v: f64) -> bool {
    matches!(&graph.node(id).kind, NodeKind::Constant(c) if c.data.iter().all(|&x| x == v))
}

/// Replaces `id` by the existing value `x`.
fn forward(graph: &Graph, id: NodeId, x: NodeId, why: &str) -> Patch {
    let mut patch = Patch::new(format!("{why}: `{}` is `{}`", graph.node(id).name, graph.node(x).name));
    patch.replace(id, x);
    patch
}

/// Replaces `id` by `op(inputs)` named `<id's name>.<suffix>`.
fn rebuild(graph: &Graph, id: NodeId, suffix: &str, op: Op, inputs: &[NodeId], why: &str) -> Option<Patch> {
    let mut patch = Patch::new(format!("{why}: `{}` becomes {op}", graph.node(id).name));
    let inputs: Vec<Value> = inputs.iter().map(|&x| Value::Existing(x)).collect();
    let new = patch.op(graph, id, suffix, op, &inputs).ok()?;
    if *patch.ty(graph, new) != graph.node(id).ty {
        return None;
    }
    patch.replace(id, new);
    Some(patch)
}

fn rewrite(graph: &Graph, id: NodeId) -> Option<Patch> {
    let node: &Node = graph.node(id);
    let op = node.op()?;
    match op {
        Op::Permute { perm } => {
            let x = node.inputs[0];
            if is_identity(perm) {
                return Some(forward(graph, id, x, "identity permute"));
            }
            if let Some(&Op::Attention { scale, mask, layout: AttentionLayout::HeadsMajor }) = op_of(graph, x) {
                if swaps_heads_and_tokens(perm) && graph.use_counts()[x.0] == 1 {
                    let op = Op::Attention { scale, mask, layout: AttentionLayout::TokensMajor };
                    let inputs = graph.node(x).inputs.clone();
                    return rebuild(graph, id, "attention", op, &inputs, "permute written by the attention kernel");
                }
            }
            let Some(Op::Permute { perm: inner }) = op_of(graph, x) else { return None };
            let x0 = graph.node(x).inputs[0];
            let composed: Vec<usize> = perm.iter().map(|&p| inner[p]).collect();
            if is_identity(&composed) {
                return Some(forward(graph, id, x0, "permute∘permute = identity"));
            }
            rebuild(graph, id, "perm", Op::Permute { perm: composed }, &[x0], "permute∘permute")
        }
        Op::Reshape { shape } => {
            let x = node.inputs[0];
            if graph.node(x).ty.shape.dims() == shape.as_slice() {
                return Some(forward(graph, id, x, "reshape to the same shape"));
            }
            let Some(Op::Reshape { .. }) = op_of(graph, x) else { return None };
            let x0 = graph.node(x).inputs[0];
            if graph.node(x0).ty.shape.dims() == shape.as_slice() {
                return Some(forward(graph, id, x0, "reshape∘reshape = identity"));
            }
            rebuild(graph, id, "reshape", Op::Reshape { shape: shape.clone() }, &[x0], "reshape∘reshape")
        }
        &Op::MatMul { transpose_a, transpose_b } => {
            let (a, b) = (node.inputs[0], node.inputs[1]);
            if let Some(Op::Permute { perm }) = op_of(graph, a) {
                if swaps_last_two(perm) {
                    let a0 = graph.node(a).inputs[0];
                    let op = Op::MatMul { transpose_a: !transpose_a, transpose_b };
                    return rebuild(graph, id, "ta", op, &[a0, b], "transpose folded into matmul lhs");
                }
            }
            if let Some(Op::Permute { perm }) = op_of(graph, b) {
                if swaps_last_two(perm) {
                    let b0 = graph.node(b).inputs[0];
                    let op = Op::MatMul { transpose_a, transpose_b: !transpose_b };
                    return rebuild(graph, id, "tb", op, &[a, b0], "transpose folded into matmul rhs");
                }
            }
            None
        }
        Op::Linear { has_bias: false } => {
            let (x, w) = (node.inputs[0], node.inputs[1]);
            let Some(Op::Permute { perm }) = op_of(graph, w) else { return None };
            if perm.as_slice() != [1, 0] || graph.node(x).ty.shape.rank() < 2 {
                return None;
            }
            let w0 = graph.node(w).inputs[0];
            let op = Op::MatMul { transpose_a: false, transpose_b: false };
            rebuild(graph, id, "matmul", op, &[x, w0], "linear on a transposed weight")
        }
        Op::Binary(f) => {
            let (a, b) = (node.inputs[0], node.inputs[1]);
            let keeps = |x: NodeId| graph.node(x).ty == node.ty;
            let (x, why) = match f {
                BinaryOp::Mul if is_constant_all(graph, b, 1.0) => (a, "x * 1"),
                BinaryOp::Mul if is_constant_all(graph, a, 1.0) => (b, "1 * x"),
                BinaryOp::Div if is_constant_all(graph, b, 1.0) => (a, "x / 1"),
                BinaryOp::Add if is_constant_all(graph, b, 0.0) => (a, "x + 0"),
                BinaryOp::Add if is_constant_all(graph, a, 0.0) => (b, "0 + x"),
                BinaryOp::Sub if is_constant_all(graph, b, 0.0) => (a, "x - 0"),
                _ => return None,
            };
            keeps(x).then(|| forward(graph, id, x, why))
        }
        _ => None,
    }
}
