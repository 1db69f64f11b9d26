//! Attention recognition: an explicit `softmax(q·kᵀ·s (+ m))·v` becomes one attention op.

use super::{Patch, Rule, Value};
use orrery_ir::{AttentionMask, BinaryOp, DType, Graph, NodeId, NodeKind, Op};

/// `MATMUL(SOFTMAX(MATMUL{tb}(Q·c, K)·s (+ M), last), V)` → `ATTENTION{scale=c·s, mask}(Q, K,
/// V[, M])` named `<final matmul>.attention`.
///
/// - `q·kᵀ` is `MATMUL{transpose_b}(Q, K)` or `MATMUL(Q, PERMUTE(X, p))` whose permute ends by
///   swapping the last two axes relative to K (the canonicalizer composes permute chains, so
///   any `p` is accepted: K becomes `X`, or `PERMUTE(X, p with its last two entries swapped)`
///   named `<final matmul>.attention.k`);
/// - the scale is any chain of `x · c`, `c · x` and `x / c` with `c` a scalar f32 constant
///   (rank 0 or all dims 1) that keeps x's type, on the scores and/or on the matmul's operands
///   (`(Q·c)·kᵀ`); none gives scale 1;
/// - the optional mask is `scaled + M` or `M + scaled` with M f32 broadcasting to the scores
///   (the add must keep the scores' type); it becomes an additive mask;
/// - the softmax runs over the last axis, and the final matmul has no transposes.
///
/// Fires only when every intermediate (scores, scaled, masked, probabilities, and a scaled
/// operand that is absorbed) has no other use (graph outputs count), and when the attention op
/// accepts the operands with the final matmul's type (equal leading dims: matmuls that
/// broadcast batch dims are left alone). Rows whose additive mask is all `-inf` give zeros
/// instead of NaN, as `Op::Attention` documents.
pub struct RecognizeAttention;

impl Rule for RecognizeAttention {
    fn name(&self) -> &str {
        "recognize_attention"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let uses = graph.use_counts();
        graph.ids().find_map(|id| recognize(graph, &uses, id))
    }
}

/// The value of a scalar f32 constant (rank 0 or every dim 1).
fn scalar_constant(graph: &Graph, id: NodeId) -> Option<f64> {
    match &graph.node(id).kind {
        NodeKind::Constant(c) if c.dtype == DType::F32 && c.shape.iter().all(|&d| d == 1) && c.data.len() == 1 => {
            Some(c.data[0]).filter(|v| v.is_finite())
        }
        _ => None,
    }
}

/// `x · c`, `c · x` or `x / c` with a scalar constant `c` and the result of x's type: `(x, factor)`.
fn scalar_scaling(graph: &Graph, id: NodeId) -> Option<(NodeId, f64)> {
    let node = graph.node(id);
    let Some(Op::Binary(f)) = node.op() else { return None };
    let (a, b) = (node.inputs[0], node.inputs[1]);
    let (x, factor) = match f {
        BinaryOp::Mul => match (scalar_constant(graph, a), scalar_constant(graph, b)) {
            (_, Some(c)) => (a, c),
            (Some(c), None) => (b, c),
            (None, None) => return None,
        },
        BinaryOp::Div => {
            let c = scalar_constant(graph, b)?;
            if c == 0.0 {
                return None;
            }
            (a, 1.0 / c)
        }
        _ => return None,
    };
    (graph.node(x).ty == node.ty).then_some((x, factor))
}

/// Peels scalar scalings off `id` while each has no other use: the unscaled value and the
/// product of the factors.
fn peel_scalings(graph: &Graph, uses: &[usize], mut id: NodeId) -> (NodeId, f64) {
    let mut scale = 1.0;
    while uses[id.0] == 1 {
        let Some((x, factor)) = scalar_scaling(graph, id) else { break };
        scale *= factor;
        id = x;
    }
    (id, scale)
}

/// The scores chain ending at `id`: `(q·kᵀ matmul, scale)`, walking down through single-use
/// scalar scalings. Every node of the chain, `id` included, must have exactly one use.
fn scaled_scores(graph: &Graph, uses: &[usize], id: NodeId) -> Option<(NodeId, f64)> {
    let mut id = id;
    let mut scale = 1.0;
    loop {
        if uses[id.0] != 1 {
            return None;
        }
        if let Some(Op::MatMul { transpose_a: false, .. }) = graph.node(id).op() {
            return Some((id, scale));
        }
        let (x, factor) = scalar_scaling(graph, id)?;
        scale *= factor;
        id = x;
    }
}

fn recognize(graph: &Graph, uses: &[usize], id: NodeId) -> Option<Patch> {
    let last = graph.node(id);
    let Some(Op::MatMul { transpose_a: false, transpose_b: false }) = last.op() else { return None };
    let (probs, v) = (last.inputs[0], last.inputs[1]);
    let probs_node = graph.node(probs);
    let Some(&Op::Softmax { axis }) = probs_node.op() else { return None };
    if uses[probs.0] != 1 || axis + 1 != probs_node.ty.shape.rank() {
        return None;
    }
    let logits = probs_node.inputs[0];
    if uses[logits.0] != 1 {
        return None;
    }
    let logits_ty = &graph.node(logits).ty;

    // Scores, scaled, optionally masked.
    let mut chain = scaled_scores(graph, uses, logits).map(|(qk, s)| (qk, s, None));
    if chain.is_none() {
        let node = graph.node(logits);
        if let Some(Op::Binary(BinaryOp::Add)) = node.op() {
            if node.ty == *logits_ty {
                let (a, b) = (node.inputs[0], node.inputs[1]);
                for (scores, mask) in [(a, b), (b, a)] {
                    if graph.node(mask).ty.dtype != DType::F32 || mask == scores {
                        continue;
                    }
                    if graph.node(scores).ty != *logits_ty {
                        continue;
                    }
                    if let Some((qk, s)) = scaled_scores(graph, uses, scores) {
                        chain = Some((qk, s, Some(mask)));
                        break;
                    }
                }
            }
        }
    }
    let (qk, score_scale, mask) = chain?;

    let qk_node = graph.node(qk);
    let Some(&Op::MatMul { transpose_a: false, transpose_b }) = qk_node.op() else { return None };
    let (a, b) = (qk_node.inputs[0], qk_node.inputs[1]);
    let (q, q_scale) = peel_scalings(graph, uses, a);

    let mut patch = Patch::new(format!("attention recognised at `{}` (scores `{}`)", last.name, qk_node.name));
    let (k, k_scale) = if transpose_b {
        let (k, s) = peel_scalings(graph, uses, b);
        (Value::Existing(k), s)
    } else {
        // kᵀ = PERMUTE(X, p), so k = PERMUTE(X, p with the last two entries swapped).
        let Some(Op::Permute { perm }) = graph.node(b).op() else { return None };
        let r = perm.len();
        if r < 2 {
            return None;
        }
        let mut perm = perm.clone();
        perm.swap(r - 2, r - 1);
        let x = graph.node(b).inputs[0];
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            (Value::Existing(x), 1.0)
        } else {
            let k = patch.op(graph, id, "attention.k", Op::Permute { perm }, &[Value::Existing(x)]).ok()?;
            (k, 1.0)
        }
    };

    let scale = score_scale * q_scale * k_scale;
    if !scale.is_finite() {
        return None;
    }
    let mut inputs = vec![Value::Existing(q), k, Value::Existing(v)];
    let mask_kind = match mask {
        Some(m) => {
            inputs.push(Value::Existing(m));
            AttentionMask::Additive
        }
        None => AttentionMask::None,
    };
    let attention = patch.op(graph, id, "attention", Op::attention(scale, mask_kind), &inputs).ok()?;
    if *patch.ty(graph, attention) != last.ty {
        return None;
    }
    patch.replace(id, attention);
    Some(patch)
}
