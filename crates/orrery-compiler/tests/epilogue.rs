//! Epilogue fusion: elementwise consumers of linear / matmul outputs become one `epilogue`
//! node; outputs are unchanged (f64 reference before vs after, ≤ 1e-12 relative). Norms fuse
//! as row programs instead (`rows.rs`).

mod common;

use common::{assert_same_outputs, fused, ops};
use orrery_compiler::passes::{FuseEpilogue, Optimizer};
use orrery_ir::{DType, Graph, GraphBuilder, Op, UnaryOp};

/// The program and base of the epilogue node named `name`.
fn epilogue<'a>(graph: &'a Graph, name: &str) -> (&'a Op, String) {
    let node = graph.node(graph.find(name).unwrap_or_else(|| panic!("{name} in {:?}", ops(graph))));
    let Some(Op::Epilogue { base, program, .. }) = node.op() else { panic!("{name} is {:?}", node.op()) };
    (base, program.to_string())
}

#[test]
fn linear_bias_and_gelu_fuse_into_the_linear() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, [2, 5, 8]).unwrap();
    let w = g.input("w", DType::F32, [6, 8]).unwrap();
    let b = g.input("b", DType::F32, [6]).unwrap();
    let h = g.linear("proj", x, w, None).unwrap();
    let h = g.add("biased", h, b).unwrap();
    let y = g.unary("act", UnaryOp::GeluErf, h).unwrap();
    g.output("y", y).unwrap();
    let before = g.finish().unwrap();
    let after = fused(before.clone());
    assert_eq!(ops(&after), vec!["act.fused.epilogue:epilogue"]);
    let (base, program) = epilogue(&after, "act.fused.epilogue");
    assert_eq!(*base, Op::Linear { has_bias: false });
    assert_eq!(program, "v2=add(v0, v1); v3=gelu(v2)");
    assert_same_outputs(&before, &after);
}

#[test]
fn gated_residual_renumbers_the_base_to_input_zero() {
    // x + gate·linear(h): the linear is the program's third operand before the rewrite.
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, [2, 5, 8]).unwrap();
    let gate = g.input("gate", DType::F32, [2, 1, 8]).unwrap();
    let h = g.input("h", DType::F32, [2, 5, 12]).unwrap();
    let w = g.input("w", DType::F32, [8, 12]).unwrap();
    let bias = g.input("bias", DType::F32, [8]).unwrap();
    let out = g.linear("out_proj", h, w, Some(bias)).unwrap();
    let gated = g.mul("gated", gate, out).unwrap();
    let y = g.add("y", x, gated).unwrap();
    g.output("y", y).unwrap();
    let before = g.finish().unwrap();
    let after = fused(before.clone());
    assert_eq!(ops(&after), vec!["y.fused.epilogue:epilogue"]);
    let (base, program) = epilogue(&after, "y.fused.epilogue");
    assert_eq!(*base, Op::Linear { has_bias: true });
    assert_eq!(program, "v3=mul(v1, v0); v4=add(v2, v3)");
    let node = after.node(after.find("y.fused.epilogue").unwrap());
    let names: Vec<&str> = node.inputs.iter().map(|&i| after.node(i).name.as_str()).collect();
    assert_eq!(names, ["h", "w", "bias", "gate", "x"]);
    assert_same_outputs(&before, &after);
}

#[test]
fn shared_bases_and_growing_broadcasts_do_not_fuse() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, [5, 8]).unwrap();
    let w = g.input("w", DType::F32, [6, 8]).unwrap();
    let big = g.input("big", DType::F32, [3, 5, 6]).unwrap();
    // `shared` has two consumers: it must stay materialised.
    let shared = g.linear("shared", x, w, None).unwrap();
    let a = g.unary("a", UnaryOp::Relu, shared).unwrap();
    let b = g.unary("b", UnaryOp::Tanh, shared).unwrap();
    // `grown`'s consumer broadcasts it up to [3, 5, 6].
    let grown = g.linear("grown", x, w, None).unwrap();
    let c = g.add("c", grown, big).unwrap();
    // A base that is itself a graph output.
    let out = g.linear("out", x, w, None).unwrap();
    let d = g.unary("d", UnaryOp::Silu, out).unwrap();
    for (name, v) in [("a", a), ("b", b), ("c", c), ("out", out), ("d", d)] {
        g.output(name, v).unwrap();
    }
    let before = g.finish().unwrap();
    let (after, log) = Optimizer::new(vec![Box::new(FuseEpilogue)]).verify_each(true).run(before.clone()).unwrap();
    assert!(log.is_empty(), "{log:?}");
    assert_eq!(ops(&after).len(), 7);
}

#[test]
fn a_base_read_twice_by_its_consumer_fuses() {
    // linear(x)² + r: both reads of the base become input 0.
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, [3, 4]).unwrap();
    let w = g.input("w", DType::F32, [4, 4]).unwrap();
    let r = g.input("r", DType::F32, [4]).unwrap();
    let h = g.matmul("h", x, w).unwrap();
    let sq = g.mul("sq", h, h).unwrap();
    let y = g.add("y", r, sq).unwrap();
    g.output("y", y).unwrap();
    let before = g.finish().unwrap();
    let after = fused(before.clone());
    assert_eq!(ops(&after), vec!["y.fused.epilogue:epilogue"]);
    let (_, program) = epilogue(&after, "y.fused.epilogue");
    assert_eq!(program, "v2=mul(v0, v0); v3=add(v1, v2)");
    assert_same_outputs(&before, &after);
}
