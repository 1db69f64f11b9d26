//! Elementwise fusion: which groups fuse, what stays out, and that outputs are unchanged
//! (f64 reference before vs after, ≤ 1e-12 relative: the fused reference uses the same scalar
//! functions in the same order).

mod common;

use common::{assert_same_outputs, fused, ops};
use orrery_compiler::passes::{FuseElementwise, Optimizer};
use orrery_ir::{BinaryOp, DType, GraphBuilder, Op, UnaryOp};

#[test]
fn a_chain_with_broadcasts_becomes_one_kernel() {
    // y = gelu(x·2 + b)·x + 1 with b broadcast along rows.
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, [4, 8]).unwrap();
    let b = g.input("b", DType::F32, [8]).unwrap();
    let two = g.scalar("two", 2.0);
    let one = g.scalar("one", 1.0);
    let t = g.mul("scaled", x, two).unwrap();
    let t = g.add("biased", t, b).unwrap();
    let t = g.unary("act", UnaryOp::GeluErf, t).unwrap();
    let t = g.mul("gated", t, x).unwrap();
    let y = g.add("y", t, one).unwrap();
    g.output("y", y).unwrap();
    let before = g.finish().unwrap();
    let after = fused(before.clone());
    assert_eq!(ops(&after), vec!["y.fused:fused"]);
    let node = after.node(after.find("y.fused").unwrap());
    assert_eq!(node.inputs.len(), 2, "x and b; the scalars become program constants");
    assert_same_outputs(&before, &after);
}

#[test]
fn shared_intermediates_and_small_broadcast_operands_stay_out() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, [2, 5, 6]).unwrap();
    let emb = g.input("emb", DType::F32, [2, 1, 6]).unwrap();
    // silu(emb) is [2, 1, 6]: computed once, read broadcast by the fused kernel.
    let act = g.unary("emb_silu", UnaryOp::Silu, emb).unwrap();
    let h = g.add("h", x, act).unwrap();
    // `shared` feeds two consumers, one of which is not elementwise: it must be materialised.
    let shared = g.unary("shared", UnaryOp::Tanh, h).unwrap();
    let sm = g.softmax("sm", shared, 2).unwrap();
    let z = g.binary("z", BinaryOp::Mul, shared, x).unwrap();
    let z = g.unary("z_relu", UnaryOp::Relu, z).unwrap();
    g.output("sm", sm).unwrap();
    g.output("z", z).unwrap();
    let before = g.finish().unwrap();
    let after = fused(before.clone());
    let names = ops(&after);
    assert!(names.contains(&"emb_silu:silu".to_string()), "{names:?}");
    assert!(names.contains(&"shared.fused:fused".to_string()), "h + tanh fuse: {names:?}");
    assert!(names.contains(&"z_relu.fused:fused".to_string()), "mul + relu fuse: {names:?}");
    assert!(names.contains(&"sm:softmax".to_string()));
    assert_eq!(names.len(), 4, "{names:?}");
    assert_same_outputs(&before, &after);
}

#[test]
fn fusion_reaches_a_fixpoint_and_absorbs_earlier_programs() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, [3, 7]).unwrap();
    let mut t = x;
    for i in 0..6 {
        t = g.unary(&format!("u{i}"), if i % 2 == 0 { UnaryOp::Tanh } else { UnaryOp::Neg }, t).unwrap();
    }
    let c = g.op("c", Op::Clamp { min: -0.3, max: 0.3 }, &[t]).unwrap();
    g.output("y", c).unwrap();
    let before = g.finish().unwrap();
    let (after, log) = Optimizer::new(vec![Box::new(FuseElementwise)]).verify_each(true).run(before.clone()).unwrap();
    assert_eq!(ops(&after), vec!["c.fused:fused"]);
    assert_eq!(log.len(), 1, "the whole chain is one group");
    // Fusing again changes nothing.
    let (_, again) = Optimizer::new(vec![Box::new(FuseElementwise)]).run(after.clone()).unwrap();
    assert!(again.is_empty());
    assert_same_outputs(&before, &after);
}
