//! The static memory planner: reuse (in place and through the free list), lifetimes through
//! views and of outputs, the validator, device limits, the plan cache, and arena quality on
//! a DiT-like block and a T5-like layer. Every test validates its plans explicitly too
//! (`compile` already does).

use orrery_compiler::{
    compile, compile_with, plan_memory, validate, CompileError, CompileOptions, MemoryOptions, Passes, Plan, PlanCache,
    PlanKey, Storage, ARENA_ALIGN,
};
use orrery_ir::{AttentionMask, DType, Graph, GraphBuilder, NodeId, Op, UnaryOp};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

fn checked(graph: Graph, in_place: bool) -> Plan {
    let options = CompileOptions {
        memory: MemoryOptions { allow_in_place: in_place, ..MemoryOptions::default() },
        passes: Passes::None,
        ..CompileOptions::default()
    };
    let plan = compile_with(graph, &options).unwrap();
    validate(&plan.memory, &plan.graph).unwrap();
    assert!(plan.arena_bytes >= plan.peak_live_bytes);
    plan
}

fn align(bytes: u64) -> u64 {
    bytes.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

/// The byte range a value occupies (aligned), or `None` outside the arena.
fn range(plan: &Plan, id: NodeId) -> Option<(u64, u64)> {
    plan.memory.slot(id).map(|s| (s.offset, s.offset + align(s.size)))
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn chain(n: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let mut h = b.input("x", DType::F32, [32, 48]).unwrap();
    let fs = [UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Relu, UnaryOp::Silu];
    for i in 0..n {
        h = b.unary("f", fs[i % fs.len()], h).unwrap();
    }
    b.output("y", h).unwrap();
    b.finish().unwrap()
}

#[test]
fn an_elementwise_chain_runs_in_one_buffer_in_place() {
    for n in [1, 2, 7, 20] {
        let plan = checked(chain(n), true);
        assert_eq!(plan.memory.distinct_ranges(), 1, "n = {n}");
        assert_eq!(plan.arena_bytes, 32 * 48 * 4);
        for k in &plan.kernels[1..] {
            assert!(matches!(k.buffer.unwrap().storage, Storage::InPlace { .. }), "{}", k.name);
        }
        // The first op cannot overwrite the caller's input.
        assert_eq!(plan.kernels[0].buffer.unwrap().storage, Storage::Owned);
    }
}

#[test]
fn an_elementwise_chain_ping_pongs_between_two_buffers_without_in_place() {
    for n in [2, 3, 8, 21] {
        let plan = checked(chain(n), false);
        assert_eq!(plan.memory.distinct_ranges(), 2, "n = {n}");
        assert_eq!(plan.arena_bytes, 2 * 32 * 48 * 4);
        assert_eq!(plan.peak_live_bytes, 2 * 32 * 48 * 4);
    }
}

#[test]
fn a_diamond_reuses_the_branch_point_only_when_it_dies() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [16, 16]).unwrap();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let l = b.unary("l", UnaryOp::Relu, a).unwrap();
    let r = b.unary("r", UnaryOp::Tanh, a).unwrap();
    let d = b.add("d", l, r).unwrap();
    b.output("y", d).unwrap();
    let plan = checked(b.finish().unwrap(), true);
    let storage = |id: NodeId| plan.memory.slot(id).unwrap().storage;
    assert_eq!(storage(l), Storage::Owned, "a is still needed by r");
    assert_eq!(storage(r), Storage::InPlace { over: a }, "a dies at r");
    assert!(matches!(storage(d), Storage::InPlace { .. }));
    assert_eq!(plan.arena_bytes, 2 * 16 * 16 * 4);
    assert_eq!(plan.peak_live_bytes, 2 * 16 * 16 * 4);
}

#[test]
fn views_keep_their_source_alive_and_are_never_overwritten() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [8, 8]).unwrap();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let v = b.reshape("v", a, &[64]).unwrap();
    let s = b.unary("s", UnaryOp::Sin, x).unwrap();
    let c = b.unary("c", UnaryOp::Cos, s).unwrap();
    let e = b.reshape("e", c, &[64]).unwrap();
    let f = b.add("f", v, e).unwrap();
    b.output("y", f).unwrap();
    let plan = checked(b.finish().unwrap(), true);
    assert_eq!(plan.memory.slot(v).unwrap().storage, Storage::View { of: a });
    assert_eq!(plan.memory.slot(v).unwrap().offset, plan.memory.slot(a).unwrap().offset);
    // a's last direct use is the reshape, but the view is read by f: s and c must not land on a.
    assert!(!overlaps(range(&plan, a).unwrap(), range(&plan, s).unwrap()));
    assert_eq!(plan.memory.slot(c).unwrap().storage, Storage::InPlace { over: s });
    // Operands seen through views are never overwritten.
    assert_eq!(plan.memory.slot(f).unwrap().storage, Storage::Owned);
    assert_eq!(plan.peak_live_bytes, 3 * 64 * 4);

    // An op reading a value both directly and through a view may not overwrite it.
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [8, 8]).unwrap();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let t = b.permute("t", a, &[1, 0]).unwrap();
    let y = b.add("y", a, t).unwrap();
    b.output("y", y).unwrap();
    let plan = checked(b.finish().unwrap(), true);
    assert_eq!(plan.memory.slot(y).unwrap().storage, Storage::Owned);
}

#[test]
fn views_of_inputs_and_weights_live_outside_the_arena() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [4, 8]).unwrap();
    let w = b.weight("w", DType::F32, [8, 4]).unwrap();
    let xv = b.reshape("xv", x, &[32]).unwrap();
    let wt = b.permute("wt", w, &[1, 0]).unwrap();
    let wv = b.reshape("wv", wt, &[32]).unwrap();
    let y = b.add("y", xv, wv).unwrap();
    b.output("y", y).unwrap();
    let plan = checked(b.finish().unwrap(), true);
    assert_eq!(plan.memory.slot(x), None);
    assert_eq!(plan.memory.slot(w), None);
    assert_eq!(plan.memory.slot(xv), None);
    assert_eq!(plan.memory.slot(wt), None);
    // A reshape of a transposed value is a copy: it owns a buffer.
    assert_eq!(plan.memory.slot(wv).unwrap().storage, Storage::Owned);
    assert!(!plan.kernels.iter().find(|k| k.node == wv).unwrap().is_view);
    assert_eq!(plan.memory.slot(y).unwrap().storage, Storage::InPlace { over: wv });
    assert_eq!(plan.arena_bytes, align(32 * 4));
}

#[test]
fn outputs_are_never_freed_nor_overwritten() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [16, 16]).unwrap();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    b.output("early", a).unwrap();
    let av = b.reshape("av", a, &[256]).unwrap();
    let mut h = b.unary("h", UnaryOp::Neg, av).unwrap();
    for _ in 0..6 {
        h = b.unary("h", UnaryOp::Tanh, h).unwrap();
        let g = b.unary("g", UnaryOp::Sigmoid, h).unwrap();
        h = b.mul("m", h, g).unwrap();
    }
    b.output("late", h).unwrap();
    let plan = checked(b.finish().unwrap(), false);
    let ra = range(&plan, a).unwrap();
    for k in &plan.kernels {
        if k.node != a && k.node != av {
            assert!(!overlaps(ra, range(&plan, k.node).unwrap()), "{} overwrites the output `a`", k.name);
        }
    }
    let plan = checked(plan.graph.clone(), true);
    assert_eq!(plan.memory.slot(h).map(|s| s.storage), Some(Storage::InPlace { over: NodeId(h.0 - 2) }));
    assert_eq!(plan.memory.slot(NodeId(av.0 + 1)).unwrap().storage, Storage::Owned, "`a` is an output");
}

#[test]
fn the_validator_rejects_overlapping_live_buffers() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [8, 8]).unwrap();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let l = b.unary("l", UnaryOp::Relu, a).unwrap();
    let r = b.unary("r", UnaryOp::Tanh, a).unwrap();
    let d = b.add("d", l, r).unwrap();
    b.output("y", d).unwrap();
    let plan = checked(b.finish().unwrap(), false);
    validate(&plan.memory, &plan.graph).unwrap();

    // l is live from its step to d; put it on top of a (live until r).
    let mut bad = plan.memory.clone();
    bad.buffers[l.0].as_mut().unwrap().offset = plan.memory.slot(a).unwrap().offset;
    let err = validate(&bad, &plan.graph).unwrap_err();
    assert!(matches!(err, CompileError::InvalidPlan(_)), "{err}");
    assert!(err.to_string().contains("overlaps"), "{err}");

    // Half a buffer of overlap is caught as well.
    let mut bad = plan.memory.clone();
    let half = plan.memory.slot(a).unwrap().offset + ARENA_ALIGN * 2;
    bad.buffers[r.0].as_mut().unwrap().offset = half;
    bad.arena_bytes = bad.arena_bytes.max(half + 256);
    assert!(validate(&bad, &plan.graph).is_err());

    // Claiming in place over a value that is still needed.
    let mut bad = plan.memory.clone();
    let sa = *plan.memory.slot(a).unwrap();
    bad.buffers[l.0] = Some(orrery_compiler::BufferSlot { storage: Storage::InPlace { over: a }, ..sa });
    let err = validate(&bad, &plan.graph).unwrap_err();
    assert!(err.to_string().contains("in place"), "{err}");

    // Outside the arena, misaligned, or a slot for an input.
    let mut bad = plan.memory.clone();
    bad.arena_bytes -= 1;
    assert!(validate(&bad, &plan.graph).is_err());
    let mut bad = plan.memory.clone();
    bad.buffers[d.0].as_mut().unwrap().offset += 4;
    assert!(validate(&bad, &plan.graph).is_err());
    let mut bad = plan.memory.clone();
    bad.buffers[x.0] = Some(sa);
    assert!(validate(&bad, &plan.graph).is_err());
}

#[test]
fn schedules_must_respect_dependencies() {
    let graph = chain(3);
    let mut steps: Vec<NodeId> = graph.ids().filter(|i| graph.node(*i).op().is_some()).collect();
    assert!(plan_memory(&graph, &steps, &MemoryOptions::default()).is_ok());
    steps.swap(0, 1);
    assert!(matches!(plan_memory(&graph, &steps, &MemoryOptions::default()), Err(CompileError::InvalidPlan(_))));
    steps.truncate(1);
    assert!(plan_memory(&graph, &steps, &MemoryOptions::default()).is_err());
}

#[test]
fn a_plan_over_the_device_limit_is_refused_with_both_numbers() {
    let limit = 1000;
    let options = CompileOptions {
        memory: MemoryOptions { max_arena_bytes: Some(limit), allow_in_place: true },
        passes: Passes::None,
        ..CompileOptions::default()
    };
    let err = compile_with(chain(3), &options).unwrap_err();
    assert!(matches!(err, CompileError::ArenaTooLarge { needed: 6144, limit: 1000 }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("6144") && msg.contains("1000"), "{msg}");
    let options = CompileOptions {
        memory: MemoryOptions { max_arena_bytes: Some(6144), allow_in_place: true },
        passes: Passes::None,
        ..CompileOptions::default()
    };
    assert!(compile_with(chain(3), &options).is_ok());
}

#[test]
fn the_plan_cache_shares_plans_per_input_shapes() {
    let cache = PlanCache::new(CompileOptions::default());
    let key = |rows: usize| PlanKey {
        component: "test-chain".into(),
        method: "forward".into(),
        shapes: BTreeMap::from([("x".to_string(), vec![rows, 8])]),
    };
    let build = |rows: usize| {
        move || -> Result<Graph, CompileError> {
            let mut b = GraphBuilder::new();
            let x = b.input("x", DType::F32, [rows, 8])?;
            let y = b.unary("y", UnaryOp::Exp, x)?;
            b.output("y", y)?;
            Ok(b.finish()?)
        }
    };
    let first = cache.get_or_compile(key(2), build(2)).unwrap();
    let again = cache
        .get_or_compile(key(2), || -> Result<Graph, CompileError> { panic!("a cached plan is not rebuilt") })
        .unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let other = cache.get_or_compile(key(5), build(5)).unwrap();
    assert!(!Arc::ptr_eq(&first, &other));
    assert_eq!(other.arena_bytes, align(5 * 8 * 4));
    assert_eq!(cache.len(), 2);
    validate(&other.memory, &other.graph).unwrap();
}

/// `x [L, D] → ln → · (1 + scale) + shift` with the adaLN chunks of `mods`.
fn modulate(b: &mut GraphBuilder, name: &str, x: NodeId, shift: NodeId, scale: NodeId) -> NodeId {
    let ln = b.op(&format!("{name}.norm"), Op::LayerNorm { eps: 1e-6, affine: false }, &[x]).unwrap();
    let one = b.scalar(&format!("{name}.one"), 1.0);
    let s1 = b.add(&format!("{name}.scale1"), scale, one).unwrap();
    let m = b.mul(&format!("{name}.scaled"), ln, s1).unwrap();
    b.add(&format!("{name}.shifted"), m, shift).unwrap()
}

/// `[L, D] → [H, L, D/H]` and back.
fn heads(b: &mut GraphBuilder, name: &str, x: NodeId, l: usize, h: usize, dh: usize) -> NodeId {
    let r = b.reshape(&format!("{name}.split"), x, &[l, h, dh]).unwrap();
    b.permute(&format!("{name}.heads"), r, &[1, 0, 2]).unwrap()
}

fn merge_heads(b: &mut GraphBuilder, name: &str, x: NodeId, l: usize, d: usize) -> NodeId {
    let p = b.permute(&format!("{name}.tokens"), x, &[1, 0, 2]).unwrap();
    b.reshape(&format!("{name}.merge"), p, &[l, d]).unwrap()
}

fn linear(b: &mut GraphBuilder, name: &str, x: NodeId, n_in: usize, n_out: usize, bias: bool) -> NodeId {
    let w = b.weight(&format!("{name}.weight"), DType::BF16, [n_out, n_in]).unwrap();
    let bias = bias.then(|| b.weight(&format!("{name}.bias"), DType::BF16, [n_out]).unwrap());
    let bias = bias.map(|bi| b.cast(&format!("{name}.bias_f32"), bi, DType::F32).unwrap());
    b.linear(name, x, w, bias).unwrap()
}

/// A Cosmos-like DiT block: adaLN-modulated self-attention with QK RMSNorm and a GELU MLP,
/// gated residuals.
fn dit_block(l: usize, d: usize, h: usize) -> Graph {
    let dh = d / h;
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [l, d]).unwrap();
    let t = b.input("t_emb", DType::F32, [1, d]).unwrap();
    let st = b.unary("ada.silu", UnaryOp::Silu, t).unwrap();
    let mods = linear(&mut b, "ada.linear", st, d, 6 * d, true);
    let chunks = b.split("ada.chunk", mods, 1, &[d; 6]).unwrap();
    let (shift1, scale1, gate1, shift2, scale2, gate2) =
        (chunks[0], chunks[1], chunks[2], chunks[3], chunks[4], chunks[5]);

    let hx = modulate(&mut b, "attn", x, shift1, scale1);
    let mut qkv = Vec::new();
    for name in ["q", "k", "v"] {
        let p = linear(&mut b, &format!("attn.{name}"), hx, d, d, false);
        let p = heads(&mut b, &format!("attn.{name}"), p, l, h, dh);
        let p = if name == "v" {
            p
        } else {
            let w = b.weight(&format!("attn.{name}_norm.weight"), DType::F32, [dh]).unwrap();
            b.op(&format!("attn.{name}_norm"), Op::RmsNorm { eps: 1e-6, has_weight: true }, &[p, w]).unwrap()
        };
        qkv.push(p);
    }
    let scale = 1.0 / (dh as f64).sqrt();
    let att = b.op("attn.sdpa", Op::attention(scale, AttentionMask::None), &qkv).unwrap();
    let att = merge_heads(&mut b, "attn", att, l, d);
    let o = linear(&mut b, "attn.out", att, d, d, true);
    let o = b.mul("attn.gate", o, gate1).unwrap();
    let x = b.add("attn.residual", x, o).unwrap();

    let hx = modulate(&mut b, "mlp", x, shift2, scale2);
    let up = linear(&mut b, "mlp.fc1", hx, d, 4 * d, true);
    let act = b.unary("mlp.gelu", UnaryOp::GeluTanh, up).unwrap();
    let down = linear(&mut b, "mlp.fc2", act, 4 * d, d, true);
    let down = b.mul("mlp.gate", down, gate2).unwrap();
    let y = b.add("mlp.residual", x, down).unwrap();
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

/// A T5 encoder layer: RMSNorm → q, k, v → heads → attention with an additive mask (the
/// position bias plus padding) → o → residual; RMSNorm → ReLU MLP → residual.
fn t5_layer(l: usize, d: usize, h: usize, ff: usize) -> Graph {
    let dh = d / h;
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [l, d]).unwrap();
    let mask = b.input("bias", DType::F32, [h, l, l]).unwrap();
    let w = b.weight("layer.0.layer_norm.weight", DType::F32, [d]).unwrap();
    let n = b.op("layer.0.layer_norm", Op::RmsNorm { eps: 1e-6, has_weight: true }, &[x, w]).unwrap();
    let mut qkv = Vec::new();
    for name in ["q", "k", "v"] {
        let p = linear(&mut b, &format!("layer.0.SelfAttention.{name}"), n, d, d, false);
        qkv.push(heads(&mut b, &format!("layer.0.SelfAttention.{name}"), p, l, h, dh));
    }
    qkv.push(mask);
    let att = b.op("layer.0.sdpa", Op::attention(1.0, AttentionMask::Additive), &qkv).unwrap();
    let att = merge_heads(&mut b, "layer.0", att, l, d);
    let o = linear(&mut b, "layer.0.SelfAttention.o", att, d, d, false);
    let x = b.add("layer.0.residual", x, o).unwrap();
    let w = b.weight("layer.1.layer_norm.weight", DType::F32, [d]).unwrap();
    let n = b.op("layer.1.layer_norm", Op::RmsNorm { eps: 1e-6, has_weight: true }, &[x, w]).unwrap();
    let wi = linear(&mut b, "layer.1.DenseReluDense.wi", n, d, ff, false);
    let r = b.unary("layer.1.relu", UnaryOp::Relu, wi).unwrap();
    let wo = linear(&mut b, "layer.1.DenseReluDense.wo", r, ff, d, false);
    let y = b.add("layer.1.residual", x, wo).unwrap();
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

fn report(name: &str, plan: &Plan) {
    let owned: u64 =
        plan.kernels.iter().filter_map(|k| k.buffer).filter(|s| s.storage == Storage::Owned).map(|s| s.size).sum();
    eprintln!(
        "{name}: arena {} B, peak live {} B ({:.3}×), no reuse {} B, {} kernels",
        plan.arena_bytes,
        plan.peak_live_bytes,
        plan.arena_bytes as f64 / plan.peak_live_bytes as f64,
        owned,
        plan.kernels.len()
    );
}

#[test]
fn a_dit_block_arena_is_within_a_quarter_of_peak_live_bytes() {
    for (l, d, h) in [(64, 128, 4), (256, 512, 8), (60, 96, 3)] {
        for in_place in [true, false] {
            let plan = checked(dit_block(l, d, h), in_place);
            report(&format!("dit L={l} D={d} H={h} in_place={in_place}"), &plan);
            assert!(
                plan.arena_bytes * 4 <= plan.peak_live_bytes * 5,
                "{} > 1.25 × {}",
                plan.arena_bytes,
                plan.peak_live_bytes
            );
        }
    }
}

#[test]
fn a_t5_layer_arena_is_within_a_quarter_of_peak_live_bytes() {
    for (l, d, h, ff) in [(64, 128, 4, 256), (512, 512, 8, 1024), (30, 72, 6, 200)] {
        for in_place in [true, false] {
            let plan = checked(t5_layer(l, d, h, ff), in_place);
            report(&format!("t5 L={l} D={d} H={h} FF={ff} in_place={in_place}"), &plan);
            assert!(
                plan.arena_bytes * 4 <= plan.peak_live_bytes * 5,
                "{} > 1.25 × {}",
                plan.arena_bytes,
                plan.peak_live_bytes
            );
        }
    }
}

#[test]
fn in_place_never_grows_the_arena_on_the_model_graphs() {
    let with = compile(dit_block(64, 128, 4)).unwrap();
    let without = checked(dit_block(64, 128, 4), false);
    assert!(with.arena_bytes <= without.arena_bytes);
    let with = compile(t5_layer(64, 128, 4, 256)).unwrap();
    let without = checked(t5_layer(64, 128, 4, 256), false);
    assert!(with.arena_bytes <= without.arena_bytes);
}

/// One random node: `kind` picks the op, `a` and `b` pick earlier values.
#[derive(Clone, Debug)]
struct Step {
    kind: u8,
    a: usize,
    b: usize,
    output: bool,
}

fn random_graph(steps: &[Step], two_inputs: bool) -> Graph {
    let mut g = GraphBuilder::new();
    let mut values = vec![g.input("x", DType::F32, [4, 16]).unwrap()];
    if two_inputs {
        values.push(g.input("x2", DType::F32, [4, 16]).unwrap());
    }
    let mut outputs = 0;
    for (i, s) in steps.iter().enumerate() {
        let a = values[s.a % values.len()];
        let b = values[s.b % values.len()];
        let v = match s.kind % 8 {
            0 => g.unary("u", UnaryOp::Exp, a).unwrap(),
            1 => g.add("add", a, b).unwrap(),
            2 => g.mul("mul", a, a).unwrap(),
            3 => {
                let r = g.reshape("flat", a, &[64]).unwrap();
                g.reshape("unflat", r, &[4, 16]).unwrap()
            }
            4 => {
                let t = g.permute("t", a, &[1, 0]).unwrap();
                g.permute("tt", t, &[1, 0]).unwrap()
            }
            5 => {
                let t = g.permute("t", a, &[1, 0]).unwrap();
                g.reshape("copy", t, &[4, 16]).unwrap()
            }
            6 => g.softmax("softmax", a, 1).unwrap(),
            _ => {
                let l = g.narrow("lo", a, 1, 0, 8).unwrap();
                let r = g.narrow("hi", b, 1, 8, 16).unwrap();
                g.concat("cat", &[r, l], 1).unwrap()
            }
        };
        if s.output || i + 1 == steps.len() {
            g.output(&format!("y{outputs}"), v).unwrap();
            outputs += 1;
        }
        values.push(v);
    }
    g.finish().unwrap()
}

fn step() -> impl Strategy<Value = Step> {
    (any::<u8>(), any::<usize>(), any::<usize>(), prop::bool::weighted(0.1)).prop_map(|(kind, a, b, output)| Step {
        kind,
        a,
        b,
        output,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_dags_get_valid_plans(steps in prop::collection::vec(step(), 1..40), two in any::<bool>(), in_place in any::<bool>()) {
        let plan = checked(random_graph(&steps, two), in_place);
        // Never worse than giving every owned value its own buffer.
        let no_reuse: u64 = plan.kernels.iter().filter_map(|k| k.buffer).filter(|s| s.storage == Storage::Owned).map(|s| align(s.size)).sum();
        prop_assert!(plan.arena_bytes <= no_reuse);
    }
}
