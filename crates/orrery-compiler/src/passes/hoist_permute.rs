//! Row programs moved above the permute that splits heads out, so they can join the epilogue
//! of the projection that produced the heads; then that permute folded into the epilogue's
//! storage, so attention reads dense heads.

use super::{Patch, Rule, Value};
use orrery_ir::{Graph, NodeId, Op};

/// `FUSED(PERMUTE(V, p), E…)` → `PERMUTE(FUSED(V, E'…), p)` when `p` keeps the last axis (so
/// row segments are unchanged), the permute has no other use, and every user of the program
/// is an attention op, which reads its operands through any strides: the program then runs
/// in `V`'s dense layout and the permute stays a free view. Each other operand `E` is brought
/// to `V`'s axis order by views: a reshape adding leading size-1 axes up to the rank, then the
/// inverse permute (`E'`). Named `<program>.hoisted` (the program), `<program>.perm` (the
/// permute) and `<program>.in{i}`, `<program>.in{i}.perm` (the operand views).
///
/// The point is the typical q/k path `permute(reshape(linear(h)))` → RMS norm → RoPE →
/// attention: after this rule the norm and rotation see `reshape(linear(h))`, and epilogue
/// fusion folds them into the projection.
pub struct HoistThroughPermute;

impl Rule for HoistThroughPermute {
    fn name(&self) -> &str {
        "hoist_through_permute"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let uses = graph.use_counts();
        let users = users(graph);
        graph.ids().find_map(|id| hoist(graph, &uses, &users, id))
    }
}

/// `PERMUTE(EPILOGUE(…), p)` → `EPILOGUE{…, stored permuted p}` (named `<permute>.stored`)
/// when `p` keeps the last axis, the epilogue has no other use and every user of the permute
/// is an attention op: the kernel writes each output row to its permuted place while it is
/// in cache, at the cost of the write it did anyway, and attention reads dense heads instead
/// of rows 4 KiB apart (conflict misses; measured ~15% of a DiT block's self-attention).
pub struct PermuteIntoEpilogue;

impl Rule for PermuteIntoEpilogue {
    fn name(&self) -> &str {
        "permute_into_epilogue"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let uses = graph.use_counts();
        let users = users(graph);
        graph.ids().find_map(|id| store_permuted(graph, &uses, &users, id))
    }
}

fn store_permuted(graph: &Graph, uses: &[usize], users: &[Vec<NodeId>], id: NodeId) -> Option<Patch> {
    let node = graph.node(id);
    let Some(Op::Permute { perm }) = node.op() else { return None };
    let source = node.inputs[0];
    let Some(Op::Epilogue { base, program, view, perm: None }) = graph.node(source).op() else { return None };
    let r = perm.len();
    let only_attention = feeds_only_attention(graph, uses, users, id);
    if r == 0 || perm[r - 1] != r - 1 || uses[source.0] != 1 || !only_attention {
        return None;
    }
    let op =
        Op::Epilogue { base: base.clone(), program: program.clone(), view: view.clone(), perm: Some(perm.clone()) };
    let inputs: Vec<Value> = graph.node(source).inputs.iter().map(|&i| Value::Existing(i)).collect();
    let mut patch = Patch::new(format!("store `{}` permuted for `{}`", graph.node(source).name, node.name));
    let stored = patch.op(graph, id, "stored", op, &inputs).ok()?;
    if *patch.ty(graph, stored) != node.ty {
        return None;
    }
    patch.replace(id, stored);
    Some(patch)
}

/// True when every use of `id` is an attention operand (no other op reads it and it is not a
/// graph output): attention reads any strides, so the value's layout is free to choose.
fn feeds_only_attention(graph: &Graph, uses: &[usize], users: &[Vec<NodeId>], id: NodeId) -> bool {
    let readers = &users[id.0];
    !readers.is_empty()
        && readers.len() == uses[id.0]
        && readers.iter().all(|u| matches!(graph.node(*u).op(), Some(Op::Attention { .. })))
}

/// For each value, the op nodes reading it.
fn users(graph: &Graph) -> Vec<Vec<NodeId>> {
    let mut users = vec![Vec::new(); graph.len()];
    for (id, node) in graph.ids().zip(graph.nodes()) {
        for &i in &node.inputs {
            users[i.0].push(id);
        }
    }
    users
}

fn hoist(graph: &Graph, uses: &[usize], users: &[Vec<NodeId>], id: NodeId) -> Option<Patch> {
    let node = graph.node(id);
    let Some(Op::Fused(program)) = node.op() else { return None };
    let out_dims = node.ty.shape.dims();
    let r = out_dims.len();
    let only_attention = feeds_only_attention(graph, uses, users, id);
    if r < 2 || !only_attention {
        return None;
    }
    // The permuted operand: full-shape, used only here, keeping the last axis.
    let (slot, perm) = node.inputs.iter().enumerate().find_map(|(slot, &u)| {
        let un = graph.node(u);
        match un.op() {
            Some(Op::Permute { perm })
                if perm[r - 1] == r - 1 && uses[u.0] == 1 && un.ty.shape.dims() == out_dims && perm.len() == r =>
            {
                Some((slot, perm.clone()))
            }
            _ => None,
        }
    })?;
    let source = graph.node(node.inputs[slot]).inputs[0];
    let mut inverse = vec![0; r];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    let mut patch = Patch::new(format!("move `{}` above the permute of its operand {slot}", node.name));
    let mut inputs: Vec<Value> = Vec::new();
    for (i, &e) in node.inputs.iter().enumerate() {
        if i == slot {
            inputs.push(Value::Existing(source));
            continue;
        }
        let dims = graph.node(e).ty.shape.dims();
        let mut v = Value::Existing(e);
        let suffix = format!("in{i}");
        if dims.len() < r {
            let mut full = vec![1; r - dims.len()];
            full.extend_from_slice(dims);
            v = patch.op(graph, id, &suffix, Op::Reshape { shape: full }, &[v]).ok()?;
        }
        if !(0..r).all(|a| inverse[a] == a) {
            v = patch.op(graph, id, &format!("{suffix}.perm"), Op::Permute { perm: inverse.clone() }, &[v]).ok()?;
        }
        inputs.push(v);
    }
    let hoisted = patch.op(graph, id, "hoisted", Op::Fused(program.clone()), &inputs).ok()?;
    let permuted = patch.op(graph, id, "perm", Op::Permute { perm }, &[hoisted]).ok()?;
    if *patch.ty(graph, permuted) != node.ty {
        return None;
    }
    patch.replace(id, permuted);
    Some(patch)
}
