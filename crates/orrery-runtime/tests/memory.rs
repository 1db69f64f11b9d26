//! What a run holds in memory: the measured `peak_live_bytes`, inputs freed at their last use
//! when handed over, and narrow outputs that do not pin the buffer they were cut from.

use orrery_compiler::{compile_with, CompileOptions, Passes};
use orrery_cpu::CpuTensor;
use orrery_ir::{DType, GraphBuilder, UnaryOp};
use orrery_runtime::{MemoryWeights, Session};
use std::collections::HashMap;
use std::sync::Arc;

/// x [256] → a = relu(x) → b = neg(a) → state = b[0..16], out = exp(b); unfused, so every op
/// is a kernel and each output a buffer of its own.
fn session() -> Session {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [256]).unwrap();
    let a = b.unary("a", UnaryOp::Relu, x).unwrap();
    let n = b.unary("b", UnaryOp::Neg, a).unwrap();
    let state = b.narrow("state", n, 0, 0, 16).unwrap();
    let out = b.unary("out", UnaryOp::Exp, n).unwrap();
    b.output("state", state).unwrap();
    b.output("out", out).unwrap();
    let options = CompileOptions { passes: Passes::Simplify, ..CompileOptions::default() };
    let plan = compile_with(b.finish().unwrap(), &options).unwrap();
    Session::new(plan, Arc::new(MemoryWeights::new()), 1).unwrap()
}

#[test]
fn peak_live_bytes_counts_what_the_run_holds() {
    let s = session();
    let x = CpuTensor::from_vec(vec![256], (0..256).map(|i| i as f32 - 128.0).collect());
    let (out, stats) = s.run_owned(HashMap::from([("x".to_string(), x)])).unwrap();
    // After `a`: x + a (1024 B each), the most. `b` then runs in place over `a` (which dies
    // there), `state` is a 64-byte copy of part of `b`, and `out` runs in place over `b`: at
    // most 1024 + 64 B after those. (Without in-place kernels `out` would make it 2112 B.)
    assert_eq!(stats.peak_live_bytes, 1024 + 1024);
    // The state is a copy of its own: the 1 KiB buffer of `b` is not kept alive by it.
    let state = &out["state"];
    assert_eq!(state.buffer().len(), 16);
    assert_eq!(state.to_f32_vec(), (0..16).map(|i| -((i as f32 - 128.0).max(0.0))).collect::<Vec<_>>());
}

#[test]
fn inputs_the_caller_keeps_are_not_freed_under_it() {
    let s = session();
    let x = CpuTensor::from_vec(vec![256], vec![1f32; 256]);
    let inputs = HashMap::from([("x".to_string(), x.clone())]);
    let (first, _) = s.run(&inputs).unwrap();
    let (second, _) = s.run(&inputs).unwrap();
    assert_eq!(first["out"].to_f32_vec(), second["out"].to_f32_vec());
    assert_eq!(inputs["x"].to_f32_vec(), vec![1f32; 256]);
}
