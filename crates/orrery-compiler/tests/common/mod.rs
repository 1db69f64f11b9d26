//! Helpers shared by the rewrite tests: run the fusing optimizer, list kernels, and compare a
//! graph's outputs before and after with the f64 reference (≤ 1e-12 relative: rewrites keep
//! the same scalar functions in the same order).
#![allow(dead_code)]

use orrery_compiler::passes::Optimizer;
use orrery_ir::reference::eval_graph;
use orrery_ir::{DType, Graph, RefTensor};
use std::collections::HashMap;

/// Deterministic values in [-1, 1) of `shape`.
pub fn fill(shape: &[usize], seed: u64) -> RefTensor {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| (((i as u64 + 1) * (seed * 2 + 7919)) % 1000) as f64 / 500.0 - 1.0).collect();
    RefTensor::new(DType::F32, shape.to_vec(), data)
}

/// `graph` after the default fusing rules, verified after every rewrite.
pub fn fused(graph: Graph) -> Graph {
    Optimizer::new(Optimizer::fusing_rules()).verify_each(true).run(graph).unwrap().0
}

/// `name:op` of every op node, in order.
pub fn ops(graph: &Graph) -> Vec<String> {
    graph.nodes().iter().filter_map(|n| n.op().map(|o| format!("{}:{}", n.name, o.name()))).collect()
}

/// Deterministic values for every graph input.
pub fn inputs_of(graph: &Graph) -> HashMap<String, RefTensor> {
    graph.inputs().enumerate().map(|(i, (_, n))| (n.name.clone(), fill(n.ty.shape.dims(), i as u64 + 1))).collect()
}

/// Both graphs give the same outputs on the same inputs (≤ 1e-12 relative).
pub fn assert_same_outputs(before: &Graph, after: &Graph) {
    let inputs = inputs_of(before);
    let no_weights = |_: &str| None;
    let a = eval_graph(before, &inputs, &no_weights).unwrap();
    let b = eval_graph(after, &inputs, &no_weights).unwrap();
    for (name, ta) in &a {
        let tb = &b[name];
        assert_eq!(ta.shape, tb.shape, "{name}");
        let scale = ta.data.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        for (x, y) in ta.data.iter().zip(&tb.data) {
            assert!((x - y).abs() / scale <= 1e-12, "{name}: {x} vs {y}");
        }
    }
}
