//! Common-subexpression elimination.

use super::{Patch, Rule};
use orrery_ir::{Graph, NodeId, NodeKind};
use std::collections::HashMap;

/// `OP{p}(A, B)` twice → one node; equal constants → one constant.
///
/// Two op nodes are the same when their ops, parameters and operands are. `Op` holds f64
/// parameters, so equality is decided on the exact bits: the key is the op's `Debug` form, which
/// prints every f64 as its shortest round-trip decimal (so `-0.0` ≠ `0.0`; only distinct NaN
/// payloads would compare equal). Constants merge when dtype, shape and every value's bits are
/// equal. Inputs and weights never merge (the builder already deduplicates weight names). The
/// later node is rerouted to the earlier one.
pub struct Cse;

#[derive(PartialEq, Eq, Hash)]
enum Key {
    Op(String, Vec<NodeId>),
    Constant(String, Vec<usize>, Vec<u64>),
}

impl Rule for Cse {
    fn name(&self) -> &str {
        "cse"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let mut seen: HashMap<Key, NodeId> = HashMap::new();
        for (id, node) in graph.ids().zip(graph.nodes()) {
            let key = match &node.kind {
                NodeKind::Op(op) => Key::Op(format!("{op:?}"), node.inputs.clone()),
                NodeKind::Constant(c) => {
                    Key::Constant(c.dtype.to_string(), c.shape.clone(), c.data.iter().map(|v| v.to_bits()).collect())
                }
                NodeKind::Input | NodeKind::Weight => continue,
            };
            if let Some(&first) = seen.get(&key) {
                let mut patch = Patch::new(format!("`{}` is `{}`", node.name, graph.node(first).name));
                patch.replace(id, first);
                return Some(patch);
            }
            seen.insert(key, id);
        }
        None
    }
}
