//! Attention recognition: which spellings of `softmax(q·kᵀ·s (+ m))·v` become one attention
//! op, which must not, and that outputs are unchanged (f64 reference before vs after, ≤ 1e-12
//! relative: the reference attention computes the same formula in f64).

use orrery_compiler::passes::{Optimizer, RecognizeAttention, RewriteLog, Rule};
use orrery_ir::reference::eval_graph;
use orrery_ir::{AttentionLayout, AttentionMask, BinaryOp, DType, Graph, GraphBuilder, NodeId, Op, RefTensor};
use std::collections::HashMap;

const B: usize = 2;
const H: usize = 3;
const LQ: usize = 5;
const LK: usize = 7;
const D: usize = 4;
const DV: usize = 6;

/// Pseudo-random values in [-1, 1) (xorshift, fixed per seed).
fn random(shape: &[usize], seed: u64) -> RefTensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    RefTensor::new(DType::F32, shape.to_vec(), data)
}

fn recognize(graph: Graph) -> (Graph, RewriteLog) {
    Optimizer::new(vec![Box::new(RecognizeAttention)]).verify_each(true).run(graph).unwrap()
}

fn ops(graph: &Graph) -> Vec<String> {
    graph.nodes().iter().filter_map(|n| n.op().map(|o| format!("{}:{}", n.name, o.name()))).collect()
}

/// Random values for every input and weight of `graph`, by name.
fn random_values(graph: &Graph) -> HashMap<String, RefTensor> {
    graph
        .nodes()
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op().is_none() && !matches!(n.kind, orrery_ir::NodeKind::Constant(_)))
        .map(|(i, n)| (n.name.clone(), random(n.ty.shape.dims(), i as u64 + 1)))
        .collect()
}

fn assert_same_outputs(before: &Graph, after: &Graph) {
    let values = random_values(before);
    let weight = |name: &str| values.get(name).cloned();
    let a = eval_graph(before, &values, &weight).unwrap();
    let b = eval_graph(after, &values, &weight).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let tb = &b[name];
        assert_eq!(ta.shape, tb.shape, "{name}");
        let scale = ta.data.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        for (x, y) in ta.data.iter().zip(&tb.data) {
            assert!(x.is_finite() && (x - y).abs() / scale <= 1e-12, "{name}: {x} vs {y}");
        }
    }
}

/// The single attention node of `graph`: its op and its operands' names.
fn the_attention(graph: &Graph) -> (Op, Vec<String>) {
    let attn: Vec<_> = graph.nodes().iter().filter(|n| matches!(n.op(), Some(Op::Attention { .. }))).collect();
    assert_eq!(attn.len(), 1, "{:?}", ops(graph));
    let names = attn[0].inputs.iter().map(|i| graph.node(*i).name.clone()).collect();
    (attn[0].op().unwrap().clone(), names)
}

fn qkv(g: &mut GraphBuilder) -> (NodeId, NodeId, NodeId) {
    let q = g.input("q", DType::F32, [B, H, LQ, D]).unwrap();
    let k = g.input("k", DType::F32, [B, H, LK, D]).unwrap();
    let v = g.input("v", DType::F32, [B, H, LK, DV]).unwrap();
    (q, k, v)
}

fn qk_transposed(g: &mut GraphBuilder, q: NodeId, k: NodeId) -> NodeId {
    g.op("scores", Op::MatMul { transpose_a: false, transpose_b: true }, &[q, k]).unwrap()
}

/// `softmax(logits, last)·v` as output `y`, finished.
fn finish(mut g: GraphBuilder, logits: NodeId, v: NodeId) -> Graph {
    let p = g.softmax("probs", logits, 3).unwrap();
    let y = g.matmul("y", p, v).unwrap();
    g.output("y", y).unwrap();
    g.finish().unwrap()
}

/// Recognises, checks the single rewrite, the node name, the op and its operands, and outputs.
fn check_recognised(before: Graph, scale: f64, mask: AttentionMask, operands: &[&str]) -> Graph {
    let (after, log) = recognize(before.clone());
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].rule, RecognizeAttention.name());
    assert!(after.find("y.attention").is_some(), "{:?}", ops(&after));
    let (op, names) = the_attention(&after);
    match op {
        Op::Attention { scale: s, mask: m, .. } => {
            assert!((s - scale).abs() <= 1e-15 * scale.abs(), "scale {s} vs {scale}");
            assert_eq!(m, mask);
        }
        _ => unreachable!(),
    }
    assert_eq!(names, operands);
    assert!(!ops(&after).iter().any(|o| o.ends_with(":softmax") || o.ends_with(":matmul")), "{:?}", ops(&after));
    assert_same_outputs(&before, &after);
    after
}

fn assert_untouched(graph: Graph) {
    let (after, log) = recognize(graph.clone());
    assert!(log.is_empty(), "{log:?}");
    assert_eq!(after, graph);
}

#[test]
fn transpose_b_with_the_scale_multiplied_after() {
    let mut g = GraphBuilder::new();
    let (q, k, v) = qkv(&mut g);
    let s = qk_transposed(&mut g, q, k);
    let c = g.scalar("c", 0.5);
    let t = g.mul("scaled", s, c).unwrap();
    let before = finish(g, t, v);
    let after = check_recognised(before, 0.5, AttentionMask::None, &["q", "k", "v"]);
    assert_eq!(ops(&after), vec!["y.attention:attention"]);
}

#[test]
fn scalar_on_the_left_and_an_all_ones_shape_constant() {
    let mut g = GraphBuilder::new();
    let (q, k, v) = qkv(&mut g);
    let s = qk_transposed(&mut g, q, k);
    let c = g.constant("c", RefTensor::new(DType::F32, vec![1, 1, 1, 1], vec![0.25]));
    let t = g.mul("scaled", c, s).unwrap();
    let before = finish(g, t, v);
    check_recognised(before, 0.25, AttentionMask::None, &["q", "k", "v"]);
}

#[test]
fn permuted_k_with_the_scale_divided() {
    let mut g = GraphBuilder::new();
    let (q, k, v) = qkv(&mut g);
    let kt = g.permute("kt", k, &[0, 1, 3, 2]).unwrap();
    let s = g.matmul("scores", q, kt).unwrap();
    let c = g.scalar("sqrt_d", 2.0);
    let t = g.binary("scaled", BinaryOp::Div, s, c).unwrap();
    let before = finish(g, t, v);
    let after = check_recognised(before, 0.5, AttentionMask::None, &["q", "k", "v"]);
    assert_eq!(ops(&after), vec!["y.attention:attention"], "the transpose is gone");
}

#[test]
fn a_composed_permute_of_k_becomes_a_permute_to_bhld() {
    // k stored [B, Lk, H, D]; kᵀ written as one permute to [B, H, D, Lk] (what the
    // canonicalizer makes of permute-to-heads then transpose).
    let mut g = GraphBuilder::new();
    let q = g.input("q", DType::F32, [B, H, LQ, D]).unwrap();
    let k = g.input("k", DType::F32, [B, LK, H, D]).unwrap();
    let v = g.input("v", DType::F32, [B, H, LK, DV]).unwrap();
    let kt = g.permute("kt", k, &[0, 2, 3, 1]).unwrap();
    let s = g.matmul("scores", q, kt).unwrap();
    let c = g.scalar("c", 0.3);
    let t = g.mul("scaled", s, c).unwrap();
    let before = finish(g, t, v);
    let after = check_recognised(before, 0.3, AttentionMask::None, &["q", "y.attention.k", "v"]);
    let kn = after.node(after.find("y.attention.k").unwrap());
    assert_eq!(kn.op(), Some(&Op::Permute { perm: vec![0, 2, 1, 3] }));
}

#[test]
fn scale_multiplied_into_q_before_the_matmul() {
    let mut g = GraphBuilder::new();
    let (q, k, v) = qkv(&mut g);
    let c = g.scalar("c", 0.5);
    let qs = g.mul("q_scaled", q, c).unwrap();
    let s = qk_transposed(&mut g, qs, k);
    let before = finish(g, s, v);
    let after = check_recognised(before, 0.5, AttentionMask::None, &["q", "k", "v"]);
    assert_eq!(ops(&after), vec!["y.attention:attention"], "the scaled q is absorbed");
}

#[test]
fn scales_on_q_k_and_scores_multiply() {
    // q·d^-1/4, k·d^-1/4 (some models split the scale), then a temperature on the scores.
    let mut g = GraphBuilder::new();
    let (q, k, v) = qkv(&mut g);
    let c = g.scalar("c", 0.5f64.sqrt());
    let qs = g.mul("q_scaled", q, c).unwrap();
    let ks = g.mul("k_scaled", c, k).unwrap();
    let s = qk_transposed(&mut g, qs, ks);
    let t = g.scalar("t", 3.0);
    let st = g.binary("tempered", BinaryOp::Div, s, t).unwrap();
    let before = finish(g, st, v);
    check_recognised(before, 0.5 / 3.0, AttentionMask::None, &["q", "k", "v"]);
}

#[test]
fn no_scale_gives_scale_one() {
    let mut g = GraphBuilder::new();
    let (q, k, v) = qkv(&mut g);
    let s = qk_transposed(&mut g, q, k);
    let before = finish(g, s, v);
    check_recognised(before, 1.0, AttentionMask::None, &["q", "k", "v"]);
}

#[test]
fn additive_mask_broadcast_over_batch_and_heads() {
    let mut g = GraphBuilder::new();
    let (q, k, v) = qkv(&mut g);
    let m = g.input("mask", DType::F32, [LQ, LK]).unwrap();
    let s = qk_transposed(&mut g, q, k);
    let c = g.scalar("c", 0.5);
    let t = g.mul("scaled", s, c).unwrap();
    let t = g.add("masked", m, t).unwrap();
    let before = finish(g, t, v);
    let after = check_recognised(before, 0.5, AttentionMask::Additive, &["q", "k", "v", "mask"]);
    assert_eq!(ops(&after), vec!["y.attention:attention"]);
}

#[test]
fn additive_per_batch_mask_without_scale() {
    let mut g = GraphBuilder::new();
    let (q, k, v) = qkv(&mut g);
    let m = g.input("mask", DType::F32, [B, 1, 1, LK]).unwrap();
    let kt = g.permute("kt", k, &[0, 1, 3, 2]).unwrap();
    let s = g.matmul("scores", q, kt).unwrap();
    let t = g.add("masked", s, m).unwrap();
    let before = finish(g, t, v);
    check_recognised(before, 1.0, AttentionMask::Additive, &["q", "k", "v", "mask"]);
}

#[test]
fn softmax_over_a_non_last_axis_is_left_alone() {
    let mut g = GraphBuilder::new();
    let q = g.input("q", DType::F32, [B, H, LK, D]).unwrap();
    let k = g.input("k", DType::F32, [B, H, LK, D]).unwrap();
    let v = g.input("v", DType::F32, [B, H, LK, DV]).unwrap();
    let s = qk_transposed(&mut g, q, k);
    let p = g.softmax("probs", s, 2).unwrap();
    let y = g.matmul("y", p, v).unwrap();
    g.output("y", y).unwrap();
    assert_untouched(g.finish().unwrap());
}

#[test]
fn intermediates_with_other_uses_are_left_alone() {
    for shared in ["scores", "scaled", "masked", "probs"] {
        let mut g = GraphBuilder::new();
        let (q, k, v) = qkv(&mut g);
        let m = g.input("mask", DType::F32, [LQ, LK]).unwrap();
        let s = qk_transposed(&mut g, q, k);
        let c = g.scalar("c", 0.5);
        let t = g.mul("scaled", s, c).unwrap();
        let t2 = g.add("masked", t, m).unwrap();
        let p = g.softmax("probs", t2, 3).unwrap();
        let y = g.matmul("y", p, v).unwrap();
        g.output("y", y).unwrap();
        let extra = match shared {
            "scores" => s,
            "scaled" => t,
            "masked" => t2,
            _ => p,
        };
        g.output("extra", extra).unwrap();
        assert_untouched(g.finish().unwrap());
    }
}

#[test]
fn a_scaled_q_with_another_use_stays_and_is_read() {
    let mut g = GraphBuilder::new();
    let (q, k, v) = qkv(&mut g);
    let c = g.scalar("c", 0.5);
    let qs = g.mul("q_scaled", q, c).unwrap();
    let s = qk_transposed(&mut g, qs, k);
    let p = g.softmax("probs", s, 3).unwrap();
    let y = g.matmul("y", p, v).unwrap();
    g.output("y", y).unwrap();
    g.output("qs", qs).unwrap();
    let before = g.finish().unwrap();
    let (after, _) = recognize(before.clone());
    let (op, names) = the_attention(&after);
    assert_eq!(op, Op::attention(1.0, AttentionMask::None));
    assert_eq!(names, ["q_scaled", "k", "v"]);
    assert_same_outputs(&before, &after);
}

#[test]
fn broadcast_batch_dims_are_left_alone() {
    for (kshape, vshape) in [([1, H, LK, D], [B, H, LK, DV]), ([B, H, LK, D], [1, H, LK, DV])] {
        let mut g = GraphBuilder::new();
        let q = g.input("q", DType::F32, [B, H, LQ, D]).unwrap();
        let k = g.input("k", DType::F32, kshape).unwrap();
        let v = g.input("v", DType::F32, vshape).unwrap();
        let s = qk_transposed(&mut g, q, k);
        assert_untouched(finish(g, s, v));
    }
    // Rank differs: a shared k/v against per-batch q.
    let mut g = GraphBuilder::new();
    let q = g.input("q", DType::F32, [B, LQ, D]).unwrap();
    let k = g.input("k", DType::F32, [LK, D]).unwrap();
    let v = g.input("v", DType::F32, [LK, DV]).unwrap();
    let s = qk_transposed(&mut g, q, k);
    let p = g.softmax("probs", s, 2).unwrap();
    let y = g.matmul("y", p, v).unwrap();
    g.output("y", y).unwrap();
    assert_untouched(g.finish().unwrap());
}

#[test]
fn non_scalar_or_non_constant_multipliers_are_left_alone() {
    for which in ["vector", "input", "mask_then_scale", "transposed_v"] {
        let mut g = GraphBuilder::new();
        let (q, k, v) = qkv(&mut g);
        let s = qk_transposed(&mut g, q, k);
        let (t, v) = match which {
            "vector" => {
                let c = g.constant("c", RefTensor::new(DType::F32, vec![LK], vec![0.5; LK]));
                (g.mul("scaled", s, c).unwrap(), v)
            }
            "input" => {
                let c = g.input("c", DType::F32, [1]).unwrap();
                (g.mul("scaled", s, c).unwrap(), v)
            }
            "mask_then_scale" => {
                // (s + m)·c is not s·c + m.
                let m = g.input("mask", DType::F32, [LQ, LK]).unwrap();
                let c = g.scalar("c", 0.5);
                let t = g.add("masked", s, m).unwrap();
                (g.mul("scaled", t, c).unwrap(), v)
            }
            _ => {
                let vt = g.input("vt", DType::F32, [B, H, DV, LK]).unwrap();
                let p = g.softmax("probs", s, 3).unwrap();
                let y = g.op("y", Op::MatMul { transpose_a: false, transpose_b: true }, &[p, vt]).unwrap();
                g.output("y", y).unwrap();
                assert_untouched(g.finish().unwrap());
                continue;
            }
        };
        assert_untouched(finish(g, t, v));
    }
}

/// Two pre-norm-free multi-head attention layers written out with explicit matmul/softmax.
fn two_layer_mha(batch: usize, len: usize, heads: usize, head_dim: usize) -> Graph {
    let e = heads * head_dim;
    let mut g = GraphBuilder::new();
    let mut x = g.input("x", DType::F32, [batch, len, e]).unwrap();
    let causal = g.input("mask", DType::F32, [len, len]).unwrap();
    for layer in 0..2 {
        let p = format!("l{layer}");
        let proj = |g: &mut GraphBuilder, name: &str| {
            let w = g.weight(&format!("{p}.{name}.weight"), DType::F32, [e, e]).unwrap();
            let b = g.weight(&format!("{p}.{name}.bias"), DType::F32, [e]).unwrap();
            let y = g.linear(&format!("{p}.{name}"), x, w, Some(b)).unwrap();
            let y = g.reshape(&format!("{p}.{name}.heads"), y, &[batch, len, heads, head_dim]).unwrap();
            g.permute(&format!("{p}.{name}.bhld"), y, &[0, 2, 1, 3]).unwrap()
        };
        let q = proj(&mut g, "q");
        let k = proj(&mut g, "k");
        let v = proj(&mut g, "v");
        let kt = g.permute(&format!("{p}.kt"), k, &[0, 1, 3, 2]).unwrap();
        let s = g.matmul(&format!("{p}.scores"), q, kt).unwrap();
        let s = if layer == 0 {
            let c = g.scalar(&format!("{p}.scale"), 1.0 / (head_dim as f64).sqrt());
            g.mul(&format!("{p}.scaled"), s, c).unwrap()
        } else {
            let c = g.scalar(&format!("{p}.sqrt_d"), (head_dim as f64).sqrt());
            let s = g.binary(&format!("{p}.scaled"), BinaryOp::Div, s, c).unwrap();
            g.add(&format!("{p}.masked"), s, causal).unwrap()
        };
        let probs = g.softmax(&format!("{p}.probs"), s, 3).unwrap();
        let o = g.matmul(&format!("{p}.attn"), probs, v).unwrap();
        let o = g.permute(&format!("{p}.attn.blhd"), o, &[0, 2, 1, 3]).unwrap();
        let o = g.reshape(&format!("{p}.attn.merged"), o, &[batch, len, e]).unwrap();
        let w = g.weight(&format!("{p}.out.weight"), DType::F32, [e, e]).unwrap();
        let b = g.weight(&format!("{p}.out.bias"), DType::F32, [e]).unwrap();
        let o = g.linear(&format!("{p}.out"), o, w, Some(b)).unwrap();
        x = g.add(&format!("{p}.residual"), x, o).unwrap();
    }
    g.output("y", x).unwrap();
    g.finish().unwrap()
}

#[test]
fn two_layer_multi_head_attention_reaches_a_fixpoint_with_two_attention_ops() {
    let (batch, len, heads, head_dim) = (2, 6, 2, 4);
    let before = two_layer_mha(batch, len, heads, head_dim);
    let mut rules = Optimizer::default_rules();
    rules.push(Box::new(RecognizeAttention));
    let (after, log) = Optimizer::new(rules).verify_each(true).run(before.clone()).unwrap();
    let recognised: Vec<_> = log.iter().filter(|r| r.rule == "recognize_attention").collect();
    assert_eq!(recognised.len(), 2, "{log:?}");
    let names = ops(&after);
    let attention: Vec<_> = names.iter().filter(|o| o.ends_with(":attention")).collect();
    // Recognised, then the head-merging permute folded in (tokens-major output).
    assert_eq!(attention, ["l0.attn.blhd.attention:attention", "l1.attn.blhd.attention:attention"], "{names:?}");
    assert!(!names.iter().any(|o| o.ends_with(":softmax")), "{names:?}");
    let scores = [batch, heads, len, len];
    for n in after.nodes() {
        assert_ne!(n.ty.shape.dims(), scores, "`{}` materialises the scores", n.name);
    }
    match after.node(after.find("l1.attn.blhd.attention").unwrap()).op() {
        Some(Op::Attention { scale, mask, layout }) => {
            assert!((scale - 0.5).abs() < 1e-15);
            assert_eq!(*mask, AttentionMask::Additive);
            assert_eq!(*layout, AttentionLayout::TokensMajor);
        }
        other => panic!("{other:?}"),
    }
    // A second run changes nothing.
    let mut rules = Optimizer::default_rules();
    rules.push(Box::new(RecognizeAttention));
    let (_, again) = Optimizer::new(rules).run(after.clone()).unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_same_outputs(&before, &after);
}
