//! Normalisation + modulation fusion: layer norms, RMS norms and rotary embeddings lowered to
//! row programs and fused with the elementwise work around them, through the head permutes of
//! attention and into the projections' epilogues. Outputs are unchanged (f64 reference before
//! vs after, ≤ 1e-12 relative).

mod common;

use common::{assert_same_outputs, fused, ops};
use orrery_ir::{AttentionLayout, AttentionMask, DType, Graph, GraphBuilder, NodeId, Op, RopeStyle};

/// The op of the node named `name`.
fn op<'a>(graph: &'a Graph, name: &str) -> &'a Op {
    let id = graph.find(name).unwrap_or_else(|| panic!("{name} not in {:?}", ops(graph)));
    graph.node(id).op().unwrap()
}

fn is_row_program(op: &Op) -> bool {
    match op {
        Op::Fused(p) | Op::Epilogue { program: p, .. } => p.has_row_steps(),
        _ => false,
    }
}

#[test]
fn adaln_modulation_and_its_layer_norm_become_one_kernel() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, [2, 7, 16]).unwrap();
    let scale = g.input("scale", DType::F32, [2, 1, 16]).unwrap();
    let shift = g.input("shift", DType::F32, [2, 1, 16]).unwrap();
    let one = g.scalar("one", 1.0);
    let n = g.op("norm", Op::LayerNorm { eps: 1e-6, affine: false }, &[x]).unwrap();
    let s = g.add("one_plus_scale", scale, one).unwrap();
    let m = g.mul("modulated", n, s).unwrap();
    let y = g.add("y", m, shift).unwrap();
    g.output("y", y).unwrap();
    let before = g.finish().unwrap();
    let after = fused(before.clone());
    // `1 + scale` is [2, 1, 16] and cheap: recomputed inside rather than a kernel of its own.
    assert_eq!(ops(&after), ["y.fused:fused"]);
    let program = op(&after, "y.fused").to_string();
    assert_eq!(program.matches("seg_mean(").count(), 2, "{program}");
    assert_same_outputs(&before, &after);
}

#[test]
fn a_positional_add_is_recomputed_by_both_its_consumers() {
    // x' = x + pos feeds a layer norm and a residual add; neither keeps x' in memory.
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, [2, 6, 8]).unwrap();
    let pos = g.input("pos", DType::F32, [6, 8]).unwrap();
    let r = g.input("r", DType::F32, [2, 6, 8]).unwrap();
    let xp = g.add("pos_add", x, pos).unwrap();
    let n = g.op("norm", Op::LayerNorm { eps: 1e-6, affine: false }, &[xp]).unwrap();
    let res = g.add("residual", xp, r).unwrap();
    g.output("n", n).unwrap();
    g.output("res", res).unwrap();
    let before = g.finish().unwrap();
    let after = fused(before.clone());
    assert_eq!(ops(&after), ["norm.rows.fused:fused", "residual.fused:fused"]);
    assert_same_outputs(&before, &after);
}

#[test]
fn residual_streams_are_not_recomputed() {
    // x1 = x + a has two full-size operands: its consumers read it, they do not redo it.
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, [4, 8]).unwrap();
    let a = g.input("a", DType::F32, [4, 8]).unwrap();
    let b = g.input("b", DType::F32, [4, 8]).unwrap();
    let x1 = g.add("x1", x, a).unwrap();
    let n = g.op("norm", Op::RmsNorm { eps: 1e-6, has_weight: false }, &[x1]).unwrap();
    let x2 = g.add("x2", x1, b).unwrap();
    g.output("n", n).unwrap();
    g.output("x2", x2).unwrap();
    let before = g.finish().unwrap();
    let after = fused(before.clone());
    assert_eq!(ops(&after), ["x1:add", "norm.rows:fused", "x2:add"]);
    assert_same_outputs(&before, &after);
}

#[test]
fn rms_norm_then_rope_is_one_row_program() {
    let mut g = GraphBuilder::new();
    let q = g.input("q", DType::F32, [2, 4, 8]).unwrap();
    let w = g.input("w", DType::F32, [8]).unwrap();
    let cos = g.input("cos", DType::F32, [4, 8]).unwrap();
    let sin = g.input("sin", DType::F32, [4, 8]).unwrap();
    let n = g.op("q_norm", Op::RmsNorm { eps: 1e-6, has_weight: true }, &[q, w]).unwrap();
    let y = g.op("q_rope", Op::Rope { style: RopeStyle::Interleaved }, &[n, cos, sin]).unwrap();
    g.output("y", y).unwrap();
    let before = g.finish().unwrap();
    let after = fused(before.clone());
    assert_eq!(ops(&after), ["q_rope.rows.fused:fused"]);
    assert!(op(&after, "q_rope.rows.fused").to_string().contains("rotate("));
    assert_same_outputs(&before, &after);
}

/// `[B, L, E]` → q, k (RMS-normed per head, rotated) and v `[B, H, L, Dh]` → attention →
/// `[B, L, E]` → output projection.
fn qk_norm_rope_attention(batch: usize, len: usize, heads: usize, dh: usize) -> Graph {
    let e = heads * dh;
    let mut g = GraphBuilder::new();
    let h = g.input("h", DType::F32, [batch, len, e]).unwrap();
    let cos = g.input("cos", DType::F32, [len, dh]).unwrap();
    let sin = g.input("sin", DType::F32, [len, dh]).unwrap();
    let project = |g: &mut GraphBuilder, name: &str, norm: bool| -> NodeId {
        let w = g.input(&format!("{name}.weight"), DType::F32, [e, e]).unwrap();
        let y = g.linear(name, h, w, None).unwrap();
        let y = g.reshape(&format!("{name}.heads"), y, &[batch, len, heads, dh]).unwrap();
        let mut y = g.permute(&format!("{name}.bhld"), y, &[0, 2, 1, 3]).unwrap();
        if norm {
            let nw = g.input(&format!("{name}.norm.weight"), DType::F32, [dh]).unwrap();
            y = g.op(&format!("{name}.norm"), Op::RmsNorm { eps: 1e-6, has_weight: true }, &[y, nw]).unwrap();
            y = g.op(&format!("{name}.rope"), Op::Rope { style: RopeStyle::RotateHalf }, &[y, cos, sin]).unwrap();
        }
        y
    };
    let q = project(&mut g, "q", true);
    let k = project(&mut g, "k", true);
    let v = project(&mut g, "v", false);
    let o = g.op("sdpa", Op::attention(1.0 / (dh as f64).sqrt(), AttentionMask::None), &[q, k, v]).unwrap();
    let o = g.permute("o.blhd", o, &[0, 2, 1, 3]).unwrap();
    let o = g.reshape("o.merged", o, &[batch, len, e]).unwrap();
    let wo = g.input("out.weight", DType::F32, [e, e]).unwrap();
    let y = g.linear("out", o, wo, None).unwrap();
    g.output("y", y).unwrap();
    g.finish().unwrap()
}

#[test]
fn qk_norm_and_rope_join_the_projection_and_attention_writes_merged_heads() {
    let (batch, len, heads, dh) = (2, 5, 3, 4);
    let before = qk_norm_rope_attention(batch, len, heads, dh);
    let after = fused(before.clone());
    let names = ops(&after);
    // q and k: the projection with the norm and rotation as its epilogue over [B, L, H, Dh],
    // stored heads-major for the attention.
    for name in ["q.rope.rows.fused.perm.stored", "k.rope.rows.fused.perm.stored"] {
        let Op::Epilogue { base, program, view, perm } = op(&after, name) else { panic!("{name}: {names:?}") };
        assert_eq!(**base, Op::Linear { has_bias: false });
        assert_eq!(view.as_deref(), Some(&[batch, len, heads, dh][..]));
        assert_eq!(perm.as_deref(), Some(&[0, 2, 1, 3][..]));
        assert!(program.has_row_steps(), "{program}");
    }
    let Op::Attention { layout, .. } = op(&after, "o.blhd.attention") else { panic!("{names:?}") };
    assert_eq!(*layout, AttentionLayout::TokensMajor);
    // Nothing but views besides the four projections and the attention.
    let computing: Vec<&String> =
        names.iter().filter(|n| !n.ends_with(":reshape") && !n.ends_with(":permute")).collect();
    assert_eq!(computing.len(), 5, "{names:?}");
    assert!(!names.iter().any(|n| is_row_program(op(&after, n.split(':').next().unwrap())) && n.ends_with(":fused")));
    assert_same_outputs(&before, &after);
}
