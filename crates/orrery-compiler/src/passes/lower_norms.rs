//! Normalisations and rotary embeddings lowered to row programs, so fusion can join them with
//! the elementwise work around them.

use super::{Patch, Rule, Value};
use orrery_ir::{BinaryOp, DType, FusedProgram, FusedStep, Graph, Node, NodeId, Op, UnaryOp};

/// `LAYER_NORM(X[, W, B])`, `RMS_NORM(X[, W])` and `ROPE(X, COS, SIN)` over an f32 last axis of
/// D elements → `FUSED{…}` named `<node>.rows`, built from row steps over segments of D:
///
/// - layer norm: `c = x - seg_mean(x)`, `c · rsqrt(seg_mean(c²) + eps)` (`· w + b`);
/// - RMS norm: `x · rsqrt(seg_mean(x²) + eps)` (`· w`);
/// - rope: `x · cos + rotate(x) · sin`.
///
/// The program is the same arithmetic as the dedicated kernels up to the order of the row
/// sums, so the results agree to f32 rounding. On its own it runs as fast as the dedicated
/// kernel; its point is what elementwise fusion can then do: the AdaLN `·(1 + scale) + shift`
/// after a layer norm, a residual add before it, RoPE after a q/k RMS norm become one kernel.
pub struct LowerNorms;

impl Rule for LowerNorms {
    fn name(&self) -> &str {
        "lower_norms"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        graph.ids().find_map(|id| lower(graph, id))
    }
}

/// The row program computing `node`, if it is a lowerable normalisation.
pub(crate) fn row_program(node: &Node) -> Option<FusedProgram> {
    if node.ty.dtype != DType::F32 || node.ty.shape.rank() == 0 {
        return None;
    }
    let d = *node.ty.shape.dims().last()?;
    if d == 0 {
        return None;
    }
    let mut p = Program::default();
    match *node.op()? {
        Op::LayerNorm { eps, affine } => {
            p.n_inputs = 1 + 2 * usize::from(affine);
            let mean = p.step(FusedStep::SegMean { x: 0, len: d });
            let c = p.step(FusedStep::Binary(BinaryOp::Sub, 0, mean));
            let y = p.normalize(c, eps, d);
            if affine {
                let y = p.step(FusedStep::Binary(BinaryOp::Mul, y, 1));
                p.step(FusedStep::Binary(BinaryOp::Add, y, 2));
            }
        }
        Op::RmsNorm { eps, has_weight } => {
            p.n_inputs = 1 + usize::from(has_weight);
            let y = p.normalize(0, eps, d);
            if has_weight {
                p.step(FusedStep::Binary(BinaryOp::Mul, y, 1));
            }
        }
        Op::Rope { style } => {
            p.n_inputs = 3;
            let rot = p.step(FusedStep::Rotate { x: 0, len: d, style });
            let a = p.step(FusedStep::Binary(BinaryOp::Mul, 0, 1));
            let b = p.step(FusedStep::Binary(BinaryOp::Mul, rot, 2));
            p.step(FusedStep::Binary(BinaryOp::Add, a, b));
        }
        _ => return None,
    }
    Some(FusedProgram { n_inputs: p.n_inputs, steps: p.steps })
}

/// A program under construction: `step` returns the new value's index.
#[derive(Default)]
struct Program {
    n_inputs: usize,
    steps: Vec<FusedStep>,
}

impl Program {
    fn step(&mut self, s: FusedStep) -> usize {
        self.steps.push(s);
        self.n_inputs + self.steps.len() - 1
    }

    /// `x · rsqrt(seg_mean(x²) + eps)`.
    fn normalize(&mut self, x: usize, eps: f64, d: usize) -> usize {
        let sq = self.step(FusedStep::Binary(BinaryOp::Mul, x, x));
        let ms = self.step(FusedStep::SegMean { x: sq, len: d });
        let eps = self.step(FusedStep::Const(eps));
        let shifted = self.step(FusedStep::Binary(BinaryOp::Add, ms, eps));
        let r = self.step(FusedStep::Unary(UnaryOp::Rsqrt, shifted));
        self.step(FusedStep::Binary(BinaryOp::Mul, x, r))
    }
}

fn lower(graph: &Graph, id: NodeId) -> Option<Patch> {
    let node = graph.node(id);
    let program = row_program(node)?;
    if program.n_inputs != node.inputs.len() || node.inputs.iter().any(|&i| graph.node(i).ty.dtype != DType::F32) {
        return None;
    }
    let mut patch = Patch::new(format!("lower {} `{}` to a row program", node.op()?.name(), node.name));
    let inputs: Vec<Value> = node.inputs.iter().map(|&i| Value::Existing(i)).collect();
    let fused = patch.op(graph, id, "rows", Op::Fused(program), &inputs).ok()?;
    if *patch.ty(graph, fused) != node.ty {
        return None;
    }
    patch.replace(id, fused);
    Some(patch)
}
