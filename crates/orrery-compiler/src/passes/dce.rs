//! Dead-code elimination.

use super::{Patch, Rule};
use orrery_ir::{Graph, NodeKind};

/// `X` with no path to a graph output → removed.
///
/// Graph inputs are kept even when nothing uses them: they are the caller's contract (a run
/// binds inputs by name, and dropping one would make a valid call fail). Weights and constants
/// that nothing uses disappear, so the plan neither loads nor counts them. One patch removes
/// every dead node at once.
pub struct Dce;

impl Rule for Dce {
    fn name(&self) -> &str {
        "dce"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let mut live = vec![false; graph.len()];
        for (_, id) in graph.outputs() {
            live[id.0] = true;
        }
        for (i, node) in graph.nodes().iter().enumerate().rev() {
            if live[i] {
                for x in &node.inputs {
                    live[x.0] = true;
                }
            }
        }
        let dead: Vec<_> =
            graph.ids().filter(|id| !live[id.0] && !matches!(graph.node(*id).kind, NodeKind::Input)).collect();
        if dead.is_empty() {
            return None;
        }
        let mut names: Vec<&str> = dead.iter().take(4).map(|id| graph.node(*id).name.as_str()).collect();
        if dead.len() > 4 {
            names.push("…");
        }
        let mut patch = Patch::new(format!("remove {} dead node(s): {}", dead.len(), names.join(", ")));
        for id in dead {
            patch.remove(id);
        }
        Some(patch)
    }
}
