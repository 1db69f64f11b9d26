//! Constant folding.

use super::{Patch, Rule};
use orrery_ir::reference::eval_op;
use orrery_ir::{Graph, NodeKind, Op, RefTensor, TensorType};

/// Outputs larger than this many elements are left to the runtime (they would bloat the plan).
pub const MAX_FOLD_ELEMENTS: usize = 64 * 1024;

/// `OP(CONST, …, CONST)` → `CONST` (named `<op node>.const`), when the result has at most
/// [`MAX_FOLD_ELEMENTS`] elements.
///
/// The value comes from the reference evaluator and is rounded to the node's dtype (an f32
/// result is stored as the nearest f32), as a kernel would store it. Ops reading inputs or
/// weights are never folded; ops without operands (`arange`) are. An op whose evaluation fails
/// on these values (an out-of-range index) is left for the runtime to report.
pub struct ConstFold;

impl Rule for ConstFold {
    fn name(&self) -> &str {
        "const_fold"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        for (id, node) in graph.ids().zip(graph.nodes()) {
            let NodeKind::Op(op) = &node.kind else { continue };
            if node.ty.shape.numel() > MAX_FOLD_ELEMENTS {
                continue;
            }
            let args: Option<Vec<&RefTensor>> = node
                .inputs
                .iter()
                .map(|x| match &graph.node(*x).kind {
                    NodeKind::Constant(c) => Some(c),
                    _ => None,
                })
                .collect();
            let Some(args) = args else { continue };
            let Ok(value) = eval_op(op, &args, &node.ty) else { continue };
            let Some(value) = round_to_dtype(value, &node.ty) else { continue };
            let mut patch = Patch::new(format!("fold `{}` ({op}) into a constant {}", node.name, node.ty));
            let folded = patch.constant(graph, id, "const", value);
            patch.replace(id, folded);
            return Some(patch);
        }
        None
    }
}

/// The values as storage of `ty.dtype` holds them (a cast to the same dtype rounds).
fn round_to_dtype(value: RefTensor, ty: &TensorType) -> Option<RefTensor> {
    let rounded = eval_op(&Op::Cast { to: ty.dtype }, &[&value], ty).ok()?;
    (rounded.ty() == *ty).then_some(rounded)
}
