//! Split states of a parallel plan's values, inferred and checked before compiling it.
//!
//! A rank of a parallel plan holds each value in one of three states:
//! - [`Placement::Replicate`]: the whole value, the same on every rank;
//! - [`Placement::Shard`]`(axis)`: this rank's equal part along `axis` (a weight slice
//!   `name@rows[…]` is `Shard(0)`, `name@cols[…]` `Shard(1)`; `Op::RankSlice` starts one);
//! - [`Placement::Partial`]: this rank's addend of the value (a row-parallel linear's output),
//!   whole only once `Op::AllReduce` has summed every rank's.
//!
//! [`infer_placements`] derives every value's state from the inputs (replicated), the weights
//! and the ops, and refuses a graph that uses a value in a state its op cannot take: a partial
//! sum reaching anything but an all-reduce, a norm, softmax or reduction over a split axis, an
//! exchange of a value not split the way it expects, a product of two split operands that do
//! not contract into a partial sum. This is what keeps a sharded model builder honest: a
//! forgotten all-reduce is a compile error naming the node, not a wrong video. Only graphs with
//! collectives are checked ([`is_parallel`]); in them a weight slice is this rank's shard.

use orrery_ir::{AttentionLayout, Graph, NodeKind, Op, OpFamily};

/// The split state of one value on one rank (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Replicate,
    Shard(usize),
    Partial,
}

/// True when `graph` is one rank of a parallel plan: it has collectives. (Weight slices alone
/// are not: a one-rank graph may read a weight in parts, e.g. to stream it in pieces.)
pub fn is_parallel(graph: &Graph) -> bool {
    graph.nodes().iter().any(|n| n.op().is_some_and(|op| op.family() == OpFamily::Collective))
}

/// Every value's placement, by node index; the error names the node whose operands are in a
/// state its op cannot take.
pub fn infer_placements(graph: &Graph) -> Result<Vec<Placement>, (String, String)> {
    use Placement::*;
    let mut placed: Vec<Placement> = Vec::with_capacity(graph.len());
    for node in graph.nodes() {
        let p = match &node.kind {
            NodeKind::Input | NodeKind::Constant(_) => Replicate,
            NodeKind::Weight if node.name.contains("@rows[") => Shard(0),
            NodeKind::Weight if node.name.contains("@cols[") => Shard(1),
            NodeKind::Weight => Replicate,
            NodeKind::Op(op) => {
                let ins: Vec<Placement> = node.inputs.iter().map(|i| placed[i.0]).collect();
                let ranks: Vec<usize> = node.inputs.iter().map(|i| graph.node(*i).ty.shape.rank()).collect();
                let dims_in = node.inputs.first().map(|i| graph.node(*i).ty.shape.dims().to_vec()).unwrap_or_default();
                rule(op, &ins, &ranks, &dims_in, node.ty.shape.dims()).map_err(|why| (node.name.clone(), why))?
            }
        };
        placed.push(p);
    }
    Ok(placed)
}

/// The placement of an op's output from its operands' (`ranks`: the operands' ranks; `dims_in`
/// and `dims_out`: the first operand's and the output's dims).
fn rule(
    op: &Op,
    ins: &[Placement],
    ranks: &[usize],
    dims_in: &[usize],
    dims_out: &[usize],
) -> Result<Placement, String> {
    use Placement::*;
    let out_rank = dims_out.len();
    let first = ins.first().copied().unwrap_or(Replicate);
    let all_replicated = ins.iter().all(|p| *p == Replicate);
    let needs_whole = |what: &str| -> Result<Placement, String> {
        match all_replicated {
            true => Ok(Replicate),
            false => Err(format!("{what} `{op}` needs whole operands, got {ins:?}")),
        }
    };
    match op {
        Op::AllReduce => match first {
            Partial => Ok(Replicate),
            p => Err(format!("all-reduces a value that is not a partial sum ({p:?})")),
        },
        Op::AllToAll { split, concat, .. } => match first {
            Shard(a) if a == *concat => Ok(Shard(*split)),
            p => Err(format!("all-to-all gathering axis {concat} needs a value split along it, got {p:?}")),
        },
        Op::AllGather { axis, .. } => match first {
            Shard(a) if a == *axis => Ok(Replicate),
            p => Err(format!("all-gather along axis {axis} needs a value split along it, got {p:?}")),
        },
        Op::RankSlice { axis, .. } => match first {
            Replicate => Ok(Shard(*axis)),
            p => Err(format!("rank_slice splits a whole value, got {p:?}")),
        },
        Op::Linear { .. } => {
            let last_in = ranks[0] - 1;
            let bias = ins.get(2).copied();
            match (ins[0], ins[1], bias) {
                (Replicate, Replicate, None | Some(Replicate)) => Ok(Replicate),
                // Column-parallel: this rank's output features.
                (Replicate, Shard(0), None | Some(Shard(0))) => Ok(Shard(out_rank - 1)),
                // Row-parallel: this rank's inputs contract into an addend (a bias would be
                // added once per rank).
                (Shard(a), Shard(1), None) if a == last_in => Ok(Partial),
                // Split rows (tokens) through a whole weight.
                (Shard(a), Replicate, None | Some(Replicate)) if a != last_in => Ok(Shard(a)),
                (x, w, b) => Err(format!(
                    "linear of an input {x:?} by a weight {w:?} (bias {b:?}) is not a product it can split"
                )),
            }
        }
        Op::Attention { layout, .. } => {
            let heads_axis = ranks[0] - 3;
            let (q, kv) = (ins[0], &ins[1..3]);
            if ins.get(3).is_some_and(|m| *m != Replicate) {
                return Err("the attention mask must be whole".into());
            }
            let tokens_major = *layout == AttentionLayout::TokensMajor;
            match (q, kv) {
                (Replicate, [Replicate, Replicate]) => Ok(Replicate),
                // Heads split (tensor parallelism, or Ulysses inside the all-to-alls).
                (Shard(h), [Shard(k), Shard(v)]) if h == heads_axis && *k == h && *v == h => {
                    Ok(Shard(if tokens_major { out_rank - 2 } else { heads_axis }))
                }
                // Queries split by token over whole keys (sequence-parallel cross-attention).
                (Shard(t), [Replicate, Replicate]) if t == heads_axis + 1 => {
                    Ok(Shard(if tokens_major { out_rank - 3 } else { heads_axis + 1 }))
                }
                _ => Err(format!("attention over q {q:?}, k and v {kv:?} mixes split states")),
            }
        }
        _ => match op.family() {
            OpFamily::Elementwise | OpFamily::Fused => broadcast(op, ins, ranks, out_rank),
            OpFamily::Norm => {
                let p = broadcast(op, ins, ranks, out_rank)?;
                // Every norm here reads whole rows (the last axis); group norm reads channels too.
                let reads = |a: usize| a == out_rank - 1 || (matches!(op, Op::GroupNorm { .. }) && a == 1);
                match p {
                    Shard(a) if reads(a) => Err(format!("`{op}` normalises over the split axis {a}")),
                    p => Ok(p),
                }
            }
            OpFamily::Reduce => {
                let axes: Vec<usize> = match op {
                    Op::Reduce { axes, .. } => axes.clone(),
                    Op::ArgMax { axis, .. } | Op::Softmax { axis } | Op::LogSoftmax { axis } => vec![*axis],
                    _ => unreachable!("the reduce family"),
                };
                let keep = !matches!(op, Op::Reduce { keepdim: false, .. } | Op::ArgMax { keepdim: false, .. })
                    || matches!(op, Op::Softmax { .. } | Op::LogSoftmax { .. });
                match first {
                    Partial => Err(format!("a partial sum reaches `{op}` before its all-reduce")),
                    Shard(a) if axes.contains(&a) => Err(format!("`{op}` reduces over the split axis {a}")),
                    Shard(a) if !keep => Ok(Shard(a - axes.iter().filter(|&&x| x < a).count())),
                    p => Ok(p),
                }
            }
            OpFamily::Layout => layout_rule(op, ins, dims_in, dims_out),
            _ => needs_whole("op"),
        },
    }
}

/// Elementwise over broadcast operands: the split operands agree on one output axis (their own
/// axes right-aligned to the output's rank); a partial sum goes nowhere but an all-reduce.
fn broadcast(op: &Op, ins: &[Placement], ranks: &[usize], out_rank: usize) -> Result<Placement, String> {
    let mut out = Placement::Replicate;
    for (p, &rank) in ins.iter().zip(ranks) {
        let aligned = match *p {
            Placement::Replicate => continue,
            Placement::Partial => return Err(format!("a partial sum reaches `{op}` before its all-reduce")),
            Placement::Shard(a) => Placement::Shard(a + out_rank - rank),
        };
        if out != Placement::Replicate && out != aligned {
            return Err(format!("`{op}` combines values split along different axes ({out:?}, {aligned:?})"));
        }
        out = aligned;
    }
    Ok(out)
}

/// Views and copies move the split axis with the data.
fn layout_rule(op: &Op, ins: &[Placement], dims_in: &[usize], dims_out: &[usize]) -> Result<Placement, String> {
    use Placement::*;
    let first = ins[0];
    let Shard(a) = first else {
        return match first {
            Partial => Err(format!("a partial sum reaches `{op}` before its all-reduce")),
            _ if ins.iter().all(|p| *p == Replicate) => Ok(Replicate),
            _ => Err(format!("`{op}` combines a whole value with split ones ({ins:?})")),
        };
    };
    match op {
        Op::Reshape { .. } => {
            // The split axis stays the outer part of wherever its elements go: an output axis
            // with as many elements before it. Axes of size 1 make that ambiguous (a batch of 1,
            // or the heads of a split width when each rank has one): the same position wins,
            // then an axis of more than one element.
            let before: usize = dims_in[..a].iter().product();
            let candidates: Vec<usize> =
                (0..dims_out.len()).filter(|&b| dims_out[..b].iter().product::<usize>() == before).collect();
            let pick = candidates
                .iter()
                .find(|&&b| b == a)
                .or_else(|| candidates.iter().find(|&&b| dims_out[b] != 1))
                .or(candidates.first());
            pick.map(|&b| Shard(b))
                .ok_or_else(|| format!("`{op}` moves the split axis {a} of {dims_in:?} inside another axis"))
        }
        Op::Permute { perm } => Ok(Shard(perm.iter().position(|&p| p == a).expect("a permutation"))),
        Op::Slice { axis, .. } if *axis == a => Err(format!("`{op}` cuts the split axis {a}")),
        Op::Pad { pads, .. } if pads.get(a).is_some_and(|p| *p != (0, 0)) => {
            Err(format!("`{op}` pads the split axis {a}"))
        }
        Op::Slice { .. } | Op::Pad { .. } => Ok(first),
        Op::Expand { .. } => Ok(Shard(a + dims_out.len() - dims_in.len())),
        Op::Concat { axis } if *axis != a && ins.iter().all(|p| *p == first) => Ok(first),
        _ => Err(format!("`{op}` cannot take a value split along axis {a}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_ir::{DType, GraphBuilder, NodeId, UnaryOp};

    /// x [2, 5, 8] through a Megatron MLP split over 2 ranks: up rows 0..8 of [16, 8], down
    /// columns 0..8 of [8, 16]; `reduce` adds the all-reduce, `then` is applied to the result.
    fn mlp(reduce: bool, then: impl Fn(&mut GraphBuilder, NodeId, NodeId) -> NodeId) -> Graph {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [2, 5, 8]).unwrap();
        let up = b.weight("up@rows[0:8]", DType::F32, [8, 8]).unwrap();
        let down = b.weight("down@cols[0:8]", DType::F32, [8, 8]).unwrap();
        let h = b.linear("up", x, up, None).unwrap();
        let h = b.unary("gelu", UnaryOp::GeluErf, h).unwrap();
        let mut y = b.linear("down", h, down, None).unwrap();
        if reduce {
            y = b.op("down.all_reduce", Op::AllReduce, &[y]).unwrap();
        }
        let y = then(&mut b, x, y);
        b.output("y", y).unwrap();
        b.finish().unwrap()
    }

    fn placement_of(g: &Graph, name: &str) -> Placement {
        infer_placements(g).unwrap()[g.find(name).unwrap().0]
    }

    #[test]
    fn a_megatron_mlp_goes_replicated_split_partial_and_back() {
        let g = mlp(true, |b, x, y| b.add("residual", x, y).unwrap());
        assert!(is_parallel(&g));
        assert_eq!(placement_of(&g, "up"), Placement::Shard(2));
        assert_eq!(placement_of(&g, "gelu"), Placement::Shard(2));
        assert_eq!(placement_of(&g, "down"), Placement::Partial);
        assert_eq!(placement_of(&g, "residual"), Placement::Replicate);
    }

    #[test]
    fn a_forgotten_all_reduce_is_named() {
        let g = mlp(false, |b, x, y| b.add("residual", x, y).unwrap());
        // Without any collective the graph is not taken for a parallel one (slices alone may
        // be a one-rank graph reading a weight in parts), but its states still show the slip.
        assert!(!is_parallel(&g));
        let (node, why) = infer_placements(&g).unwrap_err();
        assert_eq!(node, "residual");
        assert!(why.contains("partial sum") && why.contains("all-reduce"), "{why}");
    }

    #[test]
    fn exchanges_and_norms_are_checked_against_the_split() {
        // An all-reduce of a whole value.
        let g = mlp(true, |b, _, y| b.op("again", Op::AllReduce, &[y]).unwrap());
        let (node, why) = infer_placements(&g).unwrap_err();
        assert!(node == "again" && why.contains("not a partial sum"), "{node}: {why}");
        // A layer norm over the split features of the column-parallel projection.
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [2, 5, 8]).unwrap();
        let up = b.weight("up@rows[0:8]", DType::F32, [8, 8]).unwrap();
        let h = b.linear("up", x, up, None).unwrap();
        let n = b.op("norm", Op::LayerNorm { eps: 1e-6, affine: false }, &[h]).unwrap();
        b.output("y", n).unwrap();
        let (node, why) = infer_placements(&b.finish().unwrap()).unwrap_err();
        assert!(node == "norm" && why.contains("split axis 2"), "{node}: {why}");
        // Tokens split by rank, exchanged to heads and back, gathered: whole again.
        let mut b = GraphBuilder::new();
        let q = b.input("q", DType::F32, [1, 4, 6, 8]).unwrap();
        let mine = b.op("mine", Op::RankSlice { axis: 2, ranks: 2 }, &[q]).unwrap();
        let heads = b.op("to_heads", Op::AllToAll { split: 1, concat: 2, ranks: 2 }, &[mine]).unwrap();
        let o = b.op("sdpa", Op::attention(0.5, orrery_ir::AttentionMask::None), &[heads, heads, heads]).unwrap();
        let back = b.op("to_tokens", Op::AllToAll { split: 2, concat: 1, ranks: 2 }, &[o]).unwrap();
        let all = b.op("gather", Op::AllGather { axis: 2, ranks: 2 }, &[back]).unwrap();
        b.output("y", all).unwrap();
        let g = b.finish().unwrap();
        let p = infer_placements(&g).unwrap();
        let at = |n: &str| p[g.find(n).unwrap().0];
        assert_eq!(
            (at("mine"), at("to_heads"), at("sdpa")),
            (Placement::Shard(2), Placement::Shard(1), Placement::Shard(1))
        );
        assert_eq!((at("to_tokens"), at("gather")), (Placement::Shard(2), Placement::Replicate));
        // Gathering along the wrong axis is refused.
        let mut b = GraphBuilder::new();
        let q = b.input("q", DType::F32, [1, 4, 6, 8]).unwrap();
        let mine = b.op("mine", Op::RankSlice { axis: 2, ranks: 2 }, &[q]).unwrap();
        let all = b.op("gather", Op::AllGather { axis: 1, ranks: 2 }, &[mine]).unwrap();
        b.output("y", all).unwrap();
        assert_eq!(infer_placements(&b.finish().unwrap()).unwrap_err().0, "gather");
    }
}
