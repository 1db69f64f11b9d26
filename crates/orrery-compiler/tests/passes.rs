//! The rewrite passes: each rule on a small graph (structure, names, numerics against the f64
//! reference), the optimizer's controls (stopping_at, verify_each, fixpoint, divergence) and a
//! property test over random DAGs.

use orrery_compiler::passes::{
    optimize, Canonicalize, ConstFold, Cse, Dce, OptimizeOptions, Optimizer, PassError, Patch, RewriteLog, Rule, Value,
};
use orrery_ir::reference::eval_graph;
use orrery_ir::{BinaryOp, DType, Graph, GraphBuilder, NodeId, NodeKind, Op, RefTensor, TensorType, UnaryOp};
use proptest::prelude::*;
use std::collections::HashMap;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Runs `rules` to the fixpoint with the verifier on after every patch.
fn run(rules: Vec<Box<dyn Rule>>, graph: &Graph) -> (Graph, RewriteLog) {
    Optimizer::new(rules).verify_each(true).run(graph.clone()).expect("optimizes")
}

/// Deterministic pseudo-random values in [-2, 2) (xorshift), so tests need no seed plumbing.
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
        })
        .collect()
}

fn tensor(ty: &TensorType, seed: u64) -> RefTensor {
    // Round to f32 so inputs are what a caller could actually supply.
    let data = values(ty.shape.numel(), seed).into_iter().map(|v| v as f32 as f64).collect();
    RefTensor::new(ty.dtype, ty.shape.dims().to_vec(), data)
}

/// Evaluates both graphs on the same random inputs and weights and compares every output.
fn assert_same_outputs(before: &Graph, after: &Graph) {
    let mut inputs = HashMap::new();
    let mut weights = HashMap::new();
    for (i, n) in before.nodes().iter().enumerate() {
        match n.kind {
            NodeKind::Input => {
                inputs.insert(n.name.clone(), tensor(&n.ty, 1 + i as u64));
            }
            NodeKind::Weight => {
                weights.insert(n.name.clone(), tensor(&n.ty, 1000 + i as u64));
            }
            _ => {}
        }
    }
    let weight = |name: &str| weights.get(name).cloned();
    let want = eval_graph(before, &inputs, &weight).expect("original evaluates");
    let got = eval_graph(after, &inputs, &weight).expect("optimized evaluates");
    assert_eq!(want.len(), got.len());
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(w.ty(), g.ty(), "output `{name}` changed type");
        for (i, (a, b)) in w.data.iter().zip(&g.data).enumerate() {
            let same = a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
            assert!(same, "output `{name}`[{i}]: {a} before, {b} after\nbefore:\n{before}after:\n{after}");
        }
    }
}

fn op_names(graph: &Graph) -> Vec<&'static str> {
    graph.nodes().iter().filter_map(|n| n.op().map(|o| o.name())).collect()
}

fn names(graph: &Graph) -> Vec<&str> {
    graph.nodes().iter().map(|n| n.name.as_str()).collect()
}

fn output_names(graph: &Graph) -> Vec<&str> {
    graph.outputs().iter().map(|(n, _)| n.as_str()).collect()
}

fn f32s(shape: &[usize], data: &[f64]) -> RefTensor {
    RefTensor::new(DType::F32, shape.to_vec(), data.to_vec())
}

// ---------------------------------------------------------------------------------------------
// Dead-code elimination

#[test]
fn dce_removes_dead_nodes_and_keeps_every_input() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3]).unwrap();
    let _unused = b.input("unused", DType::F32, [5]).unwrap();
    let w = b.weight("dead.weight", DType::F32, [2, 3]).unwrap();
    let c = b.scalar("dead.c", 2.0);
    let d = b.add("dead.add", x, w).unwrap();
    let _d2 = b.mul("dead.mul", d, c).unwrap();
    let y = b.unary("act", UnaryOp::Relu, x).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();

    let (opt, log) = run(vec![Box::new(Dce)], &g);
    assert_eq!(names(&opt), ["x", "unused", "act"]);
    assert_eq!(opt.weights().count(), 0, "an unused weight is not loaded");
    assert_eq!(log.len(), 1);
    assert!(log[0].label.contains("4 dead node(s)"), "{}", log[0].label);
    assert_eq!(output_names(&opt), ["y"]);
    assert_same_outputs(&g, &opt);
}

// ---------------------------------------------------------------------------------------------
// Common-subexpression elimination

#[test]
fn cse_merges_identical_ops_and_constants() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3]).unwrap();
    let r1 = b.unary("r1", UnaryOp::Relu, x).unwrap();
    let r2 = b.unary("r2", UnaryOp::Relu, x).unwrap();
    let c1 = b.constant("c1", f32s(&[3], &[1.0, 2.0, 3.0]));
    let c2 = b.constant("c2", f32s(&[3], &[1.0, 2.0, 3.0]));
    let a1 = b.add("a1", r1, c1).unwrap();
    let a2 = b.add("a2", r2, c2).unwrap();
    b.output("y1", a1).unwrap();
    b.output("y2", a2).unwrap();
    let g = b.finish().unwrap();

    let (opt, log) = run(vec![Box::new(Cse)], &g);
    assert_eq!(names(&opt), ["x", "r1", "c1", "a1"]);
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0].label, "`r2` is `r1`");
    assert_eq!(output_names(&opt), ["y1", "y2"]);
    assert_eq!(opt.outputs()[0].1, opt.outputs()[1].1);
    assert_same_outputs(&g, &opt);
}

#[test]
fn cse_compares_parameters_bitwise() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [4]).unwrap();
    let p = b.op("pos", Op::Clamp { min: 0.0, max: 1.0 }, &[x]).unwrap();
    let n = b.op("neg", Op::Clamp { min: -0.0, max: 1.0 }, &[x]).unwrap();
    let c1 = b.constant("zero", f32s(&[1], &[0.0]));
    let c2 = b.constant("negzero", f32s(&[1], &[-0.0]));
    let s1 = b.add("s1", p, c1).unwrap();
    let s2 = b.add("s2", n, c2).unwrap();
    b.output("a", s1).unwrap();
    b.output("b", s2).unwrap();
    let g = b.finish().unwrap();
    let (opt, log) = run(vec![Box::new(Cse)], &g);
    assert!(log.is_empty(), "{log:?}");
    assert_eq!(opt, g);
}

// ---------------------------------------------------------------------------------------------
// Constant folding

#[test]
fn const_fold_evaluates_constant_subgraphs_and_rounds_to_the_dtype() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [3]).unwrap();
    let c1 = b.constant("c1", f32s(&[3], &[0.1, 1.0, 2.0]));
    let c2 = b.scalar("c2", 0.2);
    let s = b.add("scale", c1, c2).unwrap();
    let e = b.unary("scale.exp", UnaryOp::Exp, s).unwrap();
    let y = b.mul("y", x, e).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();

    let (opt, log) = run(vec![Box::new(ConstFold), Box::new(Dce)], &g);
    assert_eq!(op_names(&opt), ["mul"], "{opt}");
    assert_eq!(log.iter().filter(|r| r.rule == "const_fold").count(), 2, "{log:?}");
    let folded = &opt.node(opt.node(opt.outputs()[0].1).inputs[1]);
    assert_eq!(folded.name, "scale.exp.const");
    let NodeKind::Constant(value) = &folded.kind else { panic!("not a constant: {opt}") };
    let want: Vec<f64> =
        [0.1f64 + 0.2, 1.0 + 0.2, 2.0 + 0.2].iter().map(|v| ((*v as f32 as f64).exp()) as f32 as f64).collect();
    // The first fold rounds 0.1 + 0.2 to f32, the second rounds exp of that to f32.
    assert_eq!(value.data, want);
    assert!(value.data.iter().all(|v| *v == *v as f32 as f64));
}

#[test]
fn const_fold_never_reads_inputs_or_weights_and_skips_large_results() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [3]).unwrap();
    let w = b.weight("w", DType::F32, [3]).unwrap();
    let c = b.scalar("c", 1.5);
    let a = b.add("a", x, c).unwrap();
    let m = b.mul("m", w, c).unwrap();
    let big = b.op("big", Op::Arange { start: 0.0, step: 1.0, len: 70_000, dtype: DType::F32 }, &[]).unwrap();
    let small = b.op("small", Op::Arange { start: 0.0, step: 1.0, len: 3, dtype: DType::F32 }, &[]).unwrap();
    let s = b.add("s", a, small).unwrap();
    b.output("s", s).unwrap();
    b.output("m", m).unwrap();
    b.output("big", big).unwrap();
    let g = b.finish().unwrap();
    let (opt, log) = run(vec![Box::new(ConstFold)], &g);
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].label.contains("`small`"), "{}", log[0].label);
    assert_eq!(op_names(&opt), ["add", "mul", "arange", "add"]);
    assert!(opt.find("small.const").is_some());
    assert_same_outputs(&g, &opt);
}

// ---------------------------------------------------------------------------------------------
// Canonicalisation

#[test]
fn transposes_fold_into_matmul_operands() {
    let mut b = GraphBuilder::new();
    let q = b.input("q", DType::F32, [2, 4, 8]).unwrap();
    let k = b.input("k", DType::F32, [2, 6, 8]).unwrap();
    let a = b.input("a", DType::F32, [2, 8, 4]).unwrap();
    let kt = b.permute("kt", k, &[0, 2, 1]).unwrap();
    let s = b.matmul("scores", q, kt).unwrap();
    let at = b.permute("at", a, &[0, 2, 1]).unwrap();
    let both = b.matmul("both", at, kt).unwrap();
    // Swapping batch axes is not a transpose: left alone.
    let kb = b.permute("kb", k, &[1, 0, 2]).unwrap();
    let kb = b.permute("kb.t", kb, &[0, 2, 1]).unwrap();
    let q6 = b.input("q6", DType::F32, [6, 4, 8]).unwrap();
    let other = b.matmul("other", q6, kb).unwrap();
    b.output("scores", s).unwrap();
    b.output("both", both).unwrap();
    b.output("other", other).unwrap();
    let g = b.finish().unwrap();

    let (opt, log) = run(vec![Box::new(Canonicalize)], &g);
    assert!(opt.find("scores.tb").is_some() && opt.find("both.ta.tb").is_some(), "{opt}\n{log:?}");
    let node = opt.node(opt.find("both.ta.tb").unwrap());
    assert_eq!(node.op(), Some(&Op::MatMul { transpose_a: true, transpose_b: true }));
    assert_eq!(node.inputs, [opt.find("a").unwrap(), opt.find("k").unwrap()]);
    assert!(opt.find("kt").is_none() && opt.find("at").is_none(), "dead permutes are dropped\n{opt}");
    // kb∘kb.t composes into one permute [1, 2, 0], which the matmul cannot absorb.
    let other = opt.node(opt.outputs()[2].1);
    assert_eq!(other.op(), Some(&Op::MatMul { transpose_a: false, transpose_b: false }));
    assert_eq!(opt.node(other.inputs[1]).op(), Some(&Op::Permute { perm: vec![1, 2, 0] }));
    assert_eq!(opt.node(other.inputs[1]).name, "kb.t.perm");
    assert_eq!(output_names(&opt), ["scores", "both", "other"]);
    assert_same_outputs(&g, &opt);
}

#[test]
fn permutes_and_reshapes_merge_or_vanish() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3, 4]).unwrap();
    let p1 = b.permute("p1", x, &[2, 0, 1]).unwrap();
    let p2 = b.permute("p2", p1, &[1, 2, 0]).unwrap(); // p1∘p2 = identity
    let same = b.reshape("same", p2, &[2, 3, 4]).unwrap();
    let r1 = b.reshape("r1", same, &[6, 4]).unwrap();
    let r2 = b.reshape("r2", r1, &[24]).unwrap();
    let ident = b.permute("ident", r2, &[0]).unwrap();
    let back1 = b.reshape("back1", x, &[4, 6]).unwrap();
    let back2 = b.reshape("back2", back1, &[2, 3, 4]).unwrap();
    let y = b.add("y", back2, x).unwrap();
    b.output("flat", ident).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();

    let (opt, log) = run(vec![Box::new(Canonicalize)], &g);
    assert_eq!(names(&opt), ["x", "r2.reshape", "y"], "{opt}\n{log:?}");
    assert_eq!(opt.node(opt.find("r2.reshape").unwrap()).op(), Some(&Op::Reshape { shape: vec![24] }));
    assert_eq!(opt.node(opt.find("y").unwrap()).inputs, [NodeId(0), NodeId(0)]);
    assert_same_outputs(&g, &opt);
}

#[test]
fn multiplying_by_one_and_adding_zero_vanish_unless_they_broadcast() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3]).unwrap();
    let one = b.scalar("one", 1.0);
    let zero = b.constant("zeros", f32s(&[3], &[0.0; 3]));
    let wide = b.constant("wide.zeros", f32s(&[4, 2, 3], &[0.0; 24]));
    let m = b.mul("m", one, x).unwrap();
    let a = b.add("a", m, zero).unwrap();
    let d = b.binary("d", BinaryOp::Div, a, one).unwrap();
    let s = b.binary("s", BinaryOp::Sub, d, zero).unwrap();
    let w = b.add("w", s, wide).unwrap();
    b.output("y", s).unwrap();
    b.output("w", w).unwrap();
    let g = b.finish().unwrap();

    let (opt, log) = run(vec![Box::new(Canonicalize)], &g);
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(opt.outputs()[0].1, opt.find("x").unwrap());
    assert_eq!(op_names(&opt), ["add"], "broadcasting x + 0 to [4, 2, 3] stays\n{opt}");
    assert_same_outputs(&g, &opt);
}

#[test]
fn linear_on_a_transposed_weight_becomes_matmul() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [3, 4]).unwrap();
    let w = b.weight("proj.weight", DType::F32, [4, 5]).unwrap();
    let wt = b.permute("proj.wt", w, &[1, 0]).unwrap();
    let y = b.linear("proj", x, wt, None).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let (opt, _) = run(vec![Box::new(Canonicalize)], &g);
    assert_eq!(op_names(&opt), ["matmul"]);
    assert!(opt.find("proj.matmul").is_some(), "{opt}");
    assert_same_outputs(&g, &opt);
}

// ---------------------------------------------------------------------------------------------
// The optimizer

/// `x · 1 · 1 · … ` (`n` multiplications): each canonicalisation removes one.
fn chain_of_ones(n: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 2]).unwrap();
    let one = b.scalar("one", 1.0);
    let mut v = x;
    for i in 0..n {
        v = b.mul(&format!("m{i}"), v, one).unwrap();
    }
    let y = b.unary("y", UnaryOp::Tanh, v).unwrap();
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

#[test]
fn stopping_at_n_applies_exactly_n_rewrites() {
    let g = chain_of_ones(5);
    for n in 0..=5 {
        let (opt, log) =
            Optimizer::new(vec![Box::new(Canonicalize)]).stopping_at(n).verify_each(true).run(g.clone()).unwrap();
        assert_eq!(log.len(), n);
        assert_eq!(op_names(&opt).len(), 6 - n, "{opt}");
        assert_same_outputs(&g, &opt);
    }
    let (_, log) = Optimizer::new(vec![Box::new(Canonicalize)]).stopping_at(100).run(g.clone()).unwrap();
    assert_eq!(log.len(), 5, "the fixpoint comes first");
    let (_, log) = optimize(g, &OptimizeOptions { stop_after: Some(3), verify_each: true, fuse: false }).unwrap();
    assert_eq!(log.len(), 3);
}

#[test]
fn optimize_reaches_a_fixpoint() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3, 4]).unwrap();
    let _spare = b.input("spare", DType::I64, [1]).unwrap();
    let kt1 = b.permute("kt1", x, &[0, 2, 1]).unwrap();
    let kt2 = b.permute("kt2", x, &[0, 2, 1]).unwrap();
    let s1 = b.matmul("s1", x, kt1).unwrap();
    let s2 = b.matmul("s2", x, kt2).unwrap();
    let two = b.scalar("two", 2.0);
    let one = b.scalar("one", 1.0);
    let half = b.binary("half", BinaryOp::Div, one, two).unwrap();
    let scaled = b.mul("scaled", s1, half).unwrap();
    let sum = b.add("sum", scaled, s2).unwrap();
    b.output("out", sum).unwrap();
    let g = b.finish().unwrap();

    let options = OptimizeOptions { stop_after: None, verify_each: true, fuse: false };
    let (opt, log) = optimize(g.clone(), &options).unwrap();
    assert!(!log.is_empty());
    assert_eq!(op_names(&opt), ["matmul", "mul", "add"], "{opt}\n{log:?}");
    assert!(opt.find("s1.tb").is_some(), "{opt}");
    assert!(opt.find("half.const").is_some(), "{opt}");
    let inputs: Vec<&str> = opt.inputs().map(|(_, n)| n.name.as_str()).collect();
    assert_eq!(inputs, ["x", "spare"], "unused inputs are the caller's contract");
    assert_eq!(output_names(&opt), ["out"]);
    assert_same_outputs(&g, &opt);
    let (again, log) = optimize(opt.clone(), &options).unwrap();
    assert!(log.is_empty(), "{log:?}");
    assert_eq!(again, opt);
}

/// Replaces the first relu by a `neg` of another value, declaring the wrong type for it.
struct Broken;

impl Rule for Broken {
    fn name(&self) -> &str {
        "broken"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let id = graph.ids().find(|&id| graph.node(id).op() == Some(&Op::Unary(UnaryOp::Relu)))?;
        let other = graph.find("other")?;
        let mut patch = Patch::new("relu becomes neg(other)");
        let ty = graph.node(id).ty.clone();
        let new = patch.op_with_type(graph, id, "neg", Op::Unary(UnaryOp::Neg), &[Value::Existing(other)], ty);
        patch.replace(id, new);
        Some(patch)
    }
}

/// Proposes a relu of a different shape in place of a relu: apply refuses it.
struct WrongType;

impl Rule for WrongType {
    fn name(&self) -> &str {
        "wrong_type"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let id = graph.ids().find(|&id| graph.node(id).op() == Some(&Op::Unary(UnaryOp::Relu)))?;
        let other = graph.find("other")?;
        let mut patch = Patch::new("relu of other");
        let new = patch.op(graph, id, "relu", Op::Unary(UnaryOp::Relu), &[Value::Existing(other)]).unwrap();
        patch.replace(id, new);
        Some(patch)
    }
}

/// Replaces every relu by a fresh, equal relu, forever.
struct Restless;

impl Rule for Restless {
    fn name(&self) -> &str {
        "restless"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let id = graph.ids().find(|&id| graph.node(id).op() == Some(&Op::Unary(UnaryOp::Relu)))?;
        let mut patch = Patch::new(format!("again `{}`", graph.node(id).name));
        let x = Value::Existing(graph.node(id).inputs[0]);
        let new = patch.op(graph, id, "again", Op::Unary(UnaryOp::Relu), &[x]).unwrap();
        patch.replace(id, new);
        Some(patch)
    }
}

fn relu_graph() -> Graph {
    let mut b = GraphBuilder::new();
    let other = b.input("other", DType::F32, [3, 2]).unwrap();
    let x = b.input("x", DType::F32, [2, 3]).unwrap();
    let r = b.unary("r", UnaryOp::Relu, x).unwrap();
    let _ = other;
    b.output("y", r).unwrap();
    b.finish().unwrap()
}

#[test]
fn verify_each_catches_a_broken_patch() {
    let err = Optimizer::new(vec![Box::new(Broken)]).verify_each(true).run(relu_graph()).unwrap_err();
    match &err {
        PassError::Verify { rule, label, .. } => {
            assert_eq!(rule, "broken");
            assert_eq!(label, "relu becomes neg(other)");
        }
        other => panic!("unexpected error {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("r.neg") && msg.contains("recorded type f32[2, 3] but op infers f32[3, 2]"), "{msg}");
}

#[test]
fn a_replacement_of_another_type_is_refused() {
    let err = Optimizer::new(vec![Box::new(WrongType)]).run(relu_graph()).unwrap_err();
    assert!(matches!(err, PassError::BadPatch { ref rule, .. } if rule == "wrong_type"), "{err}");
    assert!(err.to_string().contains("replaced by a value of type f32[3, 2]"), "{err}");
}

#[test]
fn a_rule_that_never_converges_is_named() {
    let err = Optimizer::new(vec![Box::new(Restless)]).run(relu_graph()).unwrap_err();
    assert!(matches!(err, PassError::Diverged { ref rule, .. } if rule == "restless"), "{err}");
    assert!(err.to_string().contains("stopping_at"), "{err}");
    // Bisecting: the first rewrites are fine and named after their source.
    let (opt, log) =
        Optimizer::new(vec![Box::new(Restless)]).stopping_at(2).verify_each(true).run(relu_graph()).unwrap();
    assert_eq!(log.len(), 2);
    assert!(opt.find("r.again.again").is_some(), "{opt}");
}

// ---------------------------------------------------------------------------------------------
// Random DAGs

/// One step of a random graph: an op kind and operand/parameter choices.
#[derive(Clone, Debug)]
struct Step {
    kind: u8,
    a: usize,
    b: usize,
    param: usize,
}

fn step() -> impl Strategy<Value = Step> {
    (0u8..8, 0usize..64, 0usize..64, 0usize..64).prop_map(|(kind, a, b, param)| Step { kind, a, b, param })
}

/// Builds a graph from `steps`, skipping steps whose op rejects its operands. Constants are
/// small integers and only exact ops apply to them, so folding them is exact in f32 too.
fn random_graph(steps: &[Step], n_outputs: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let mut vals: Vec<(NodeId, bool)> = vec![
        (b.input("x0", DType::F32, [2, 3, 4]).unwrap(), false),
        (b.input("x1", DType::F32, [2, 4, 3]).unwrap(), false),
        (b.input("x2", DType::F32, [3, 4]).unwrap(), false),
        (b.weight("w", DType::F32, [4, 3]).unwrap(), false),
        (b.scalar("one", 1.0), true),
        (b.scalar("zero", 0.0), true),
        (b.scalar("two", 2.0), true),
        (b.constant("ints", f32s(&[3, 4], &[1.0, -2.0, 0.0, 2.0, 1.0, 1.0, -1.0, 0.0, 2.0, 2.0, -2.0, 1.0])), true),
        (b.constant("ones", f32s(&[4], &[1.0; 4])), true),
    ];
    let mut ops: Vec<(Op, Vec<NodeId>)> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let (a, a_const) = vals[s.a % vals.len()];
        let (c, c_const) = vals[s.b % vals.len()];
        let rank = b.dims(a).len();
        let name = format!("n{i}");
        let (op, inputs, is_const) = match s.kind {
            0 => {
                let exact = [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu];
                let any = [UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Sigmoid];
                let f = if a_const { exact[s.param % 3] } else { [exact, any].concat()[s.param % 6] };
                (Op::Unary(f), vec![a], a_const)
            }
            1 | 2 => {
                let f = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Max][s.param % 4];
                (Op::Binary(f), vec![a, c], a_const && c_const)
            }
            3 => {
                let perms: Vec<Vec<usize>> = match rank {
                    2 => vec![vec![1, 0], vec![0, 1]],
                    3 => vec![vec![0, 2, 1], vec![2, 0, 1], vec![1, 0, 2], vec![0, 1, 2], vec![1, 2, 0]],
                    _ => vec![(0..rank).collect()],
                };
                (Op::Permute { perm: perms[s.param % perms.len()].clone() }, vec![a], a_const)
            }
            4 => {
                let dims = b.dims(a).to_vec();
                let n: usize = dims.iter().product();
                let mut rev = dims.clone();
                rev.reverse();
                let shapes = [vec![n], rev, dims.clone(), vec![2, n / 2], vec![n / 4, 4]];
                (Op::Reshape { shape: shapes[s.param % shapes.len()].clone() }, vec![a], a_const)
            }
            5 => {
                let op = Op::MatMul { transpose_a: s.param & 1 == 1, transpose_b: s.param & 2 == 2 };
                (op, vec![a, c], a_const && c_const)
            }
            6 => {
                // Repeat an earlier op on the same operands (common subexpressions).
                if ops.is_empty() {
                    continue;
                }
                let (op, inputs) = ops[s.param % ops.len()].clone();
                let is_const = inputs.iter().all(|x| vals.iter().any(|(v, k)| v == x && *k));
                (op, inputs, is_const)
            }
            _ => {
                // An identity with a constant: x * 1, x + 0, x / 1.
                let (f, k) =
                    [(BinaryOp::Mul, 4), (BinaryOp::Add, 5), (BinaryOp::Div, 4), (BinaryOp::Mul, 8)][s.param % 4];
                (Op::Binary(f), vec![a, vals[k].0], a_const)
            }
        };
        if let Ok(id) = b.op(&name, op.clone(), &inputs) {
            vals.push((id, is_const));
            ops.push((op, inputs));
        }
    }
    let first_op = 9;
    let n_ops = vals.len() - first_op;
    if n_ops == 0 {
        b.output("out0", vals[0].0).unwrap();
    }
    for k in 0..n_outputs.min(n_ops) {
        b.output(&format!("out{k}"), vals[vals.len() - 1 - k * 2 % n_ops].0).ok();
    }
    b.finish().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn optimize_keeps_random_dags_valid_and_equal(steps in prop::collection::vec(step(), 1..16), n_outputs in 1usize..4) {
        let g = random_graph(&steps, n_outputs);
        let (opt, log) = optimize(g.clone(), &OptimizeOptions { stop_after: None, verify_each: true, fuse: false })
            .map_err(|e| TestCaseError::fail(format!("{e}\n{g}")))?;
        opt.verify().unwrap();
        prop_assert_eq!(output_names(&opt), output_names(&g));
        let inputs = |g: &Graph| g.inputs().map(|(_, n)| n.name.clone()).collect::<Vec<_>>();
        prop_assert_eq!(inputs(&opt), inputs(&g));
        prop_assert!(opt.len() <= g.len() + log.len(), "{}", opt);
        assert_same_outputs(&g, &opt);
        let (_, again) = optimize(opt, &OptimizeOptions::default()).unwrap();
        prop_assert!(again.is_empty(), "not a fixpoint: {:?}", again);
    }
}
