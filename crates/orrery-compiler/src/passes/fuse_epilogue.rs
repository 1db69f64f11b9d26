//! Epilogue fusion.

use super::{Patch, Rule, Value};
use orrery_ir::{DType, FusedProgram, FusedStep, Graph, Node, NodeId, Op};

/// `E(BASE(..), extras...)` → `EPILOGUE{BASE; E}(.., extras...)` named `<E>.epilogue`: an f32
/// elementwise consumer `E` (a fused program, or one unary, clamp or binary op) of a linear,
/// matmul, conv, layer norm, RMS norm or rope output `BASE` becomes one kernel, when `BASE` has
/// no use outside `E` (nor is a graph output) and `E`'s output has `BASE`'s shape (the extra
/// operands only broadcast up to it: a residual add, a bias, the AdaLN `·(1+scale)+shift`). The
/// program is renumbered so that `BASE`'s value is its input 0, wherever `E` read it.
///
/// `E(RESHAPE(BASE), …)` fuses the same way when the reshape has no other use either: the
/// epilogue's program runs over the base's output read in the reshaped dims (`view`), which is
/// how a row program over heads `[B, L, H, Dh]` joins a projection computing `[B, L, H·Dh]`.
pub struct FuseEpilogue;

/// The program a fusible consumer computes over its own inputs.
fn consumer_program(node: &Node) -> Option<FusedProgram> {
    if node.ty.dtype != DType::F32 {
        return None;
    }
    let (n_inputs, step) = match node.op()? {
        Op::Fused(p) => return Some(p.clone()),
        Op::Unary(u) => (1, FusedStep::Unary(*u, 0)),
        Op::Clamp { min, max } => (1, FusedStep::Clamp { min: *min, max: *max, x: 0 }),
        Op::Binary(b) => (2, FusedStep::Binary(*b, 0, 1)),
        _ => return None,
    };
    Some(FusedProgram { n_inputs, steps: vec![step] })
}

/// True when `node` computes an f32 op that can be an epilogue's base.
fn is_base(node: &Node) -> bool {
    node.ty.dtype == DType::F32 && node.op().is_some_and(|op| op.epilogue_base_inputs().is_some())
}

impl Rule for FuseEpilogue {
    fn name(&self) -> &str {
        "fuse_epilogue"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let uses = graph.use_counts();
        for (i, node) in graph.nodes().iter().enumerate() {
            let Some(program) = consumer_program(node) else { continue };
            if program.n_inputs != node.inputs.len() {
                continue;
            }
            // The latest base operand first (any would do; this one is the most recent value).
            let mut candidates: Vec<NodeId> = node.inputs.clone();
            candidates.sort();
            candidates.dedup();
            for &b in candidates.iter().rev() {
                let inside = node.inputs.iter().filter(|&&x| x == b).count();
                if inside != uses[b.0] {
                    continue;
                }
                let operand = graph.node(b);
                let (base, view) = match operand.op() {
                    Some(Op::Reshape { shape }) if uses[operand.inputs[0].0] == 1 => {
                        (operand.inputs[0], Some(shape.clone()))
                    }
                    _ => (b, None),
                };
                if !is_base(graph.node(base)) || operand.ty.shape != node.ty.shape {
                    continue;
                }
                if let Some(patch) = fuse(graph, NodeId(i), b, base, view, &program) {
                    return Some(patch);
                }
            }
        }
        None
    }
}

/// The epilogue node replacing `consumer`, whose program reads `operand` (`base`, or `base` in
/// the dims `view`) at one or more inputs.
fn fuse(
    graph: &Graph,
    consumer: NodeId,
    operand: NodeId,
    base: NodeId,
    view: Option<Vec<usize>>,
    program: &FusedProgram,
) -> Option<Patch> {
    let node = graph.node(consumer);
    let base_node = graph.node(base);
    let base_op = base_node.op()?.clone();
    // New inputs: the base's value (input 0), then the consumer's other operands in order.
    let mut extras: Vec<NodeId> = Vec::new();
    let map: Vec<usize> = node
        .inputs
        .iter()
        .map(|&x| {
            if x == operand {
                0
            } else {
                extras.push(x);
                extras.len()
            }
        })
        .collect();
    let (n_old, n_new) = (program.n_inputs, 1 + extras.len());
    let value = |v: usize| if v < n_old { map[v] } else { v - n_old + n_new };
    let steps = program.steps.iter().map(|s| s.map_operands(value)).collect();
    let op =
        Op::Epilogue { base: Box::new(base_op), program: FusedProgram { n_inputs: n_new, steps }, view, perm: None };
    let inputs: Vec<Value> = base_node.inputs.iter().chain(&extras).map(|&x| Value::Existing(x)).collect();
    let mut patch = Patch::new(format!("fuse {} into the epilogue of {}", node.name, base_node.name));
    let fused = patch.op(graph, consumer, "epilogue", op, &inputs).ok()?;
    if *patch.ty(graph, fused) != node.ty {
        return None;
    }
    patch.replace(consumer, fused);
    Some(patch)
}
