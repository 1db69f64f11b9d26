//! Patches: a local rewrite described against a graph, applied by rebuilding the graph.
//!
//! A rule never edits the graph it is matching. It returns a [`Patch`]: new nodes (built
//! against the existing graph's values and named `<matched node>.<suffix>`), a replacement
//! map `old value → new value`, and for dead-code elimination a list of nodes to drop. The
//! optimizer applies it with [`apply`], which rebuilds the graph:
//!
//! - the patch's new nodes are placed just before the earliest node it replaces, so index
//!   order stays a topological order (every value a patch uses must precede that node);
//! - every use of a replaced value, graph outputs included (their names are kept), is
//!   rerouted to its replacement;
//! - what the patch leaves without uses is removed: the replaced nodes, then transitively any
//!   node whose last use went away (weights and constants included), and new nodes nothing
//!   uses. Graph inputs always stay; nodes that were already dead are left to the DCE rule.

use orrery_ir::{Graph, Node, NodeId, NodeKind, Op, RefTensor, TensorType};
use std::collections::HashSet;

/// A value a patch refers to: one of the graph's, or one of the patch's new nodes (by index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Existing(NodeId),
    New(usize),
}

impl From<NodeId> for Value {
    fn from(id: NodeId) -> Value {
        Value::Existing(id)
    }
}

/// A node the patch adds; its operands may be existing values or earlier new nodes.
#[derive(Clone, Debug)]
struct NewNode {
    name: String,
    kind: NodeKind,
    inputs: Vec<Value>,
    ty: TensorType,
}

/// A labelled local rewrite, built against one graph and applied by the optimizer.
#[derive(Clone, Debug)]
pub struct Patch {
    label: String,
    nodes: Vec<NewNode>,
    replacements: Vec<(NodeId, Value)>,
    removals: Vec<NodeId>,
}

impl Patch {
    /// An empty patch; `label` says what it does (`"fold transpose into matmul `attn.qk`"`).
    pub fn new(label: impl Into<String>) -> Patch {
        Patch { label: label.into(), nodes: Vec::new(), replacements: Vec::new(), removals: Vec::new() }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// True when applying the patch would change nothing.
    pub fn is_empty(&self) -> bool {
        self.replacements.is_empty() && self.removals.is_empty()
    }

    /// The type of `v`, an existing value of `graph` or one of this patch's new nodes.
    pub fn ty<'a>(&'a self, graph: &'a Graph, v: Value) -> &'a TensorType {
        match v {
            Value::Existing(id) => &graph.node(id).ty,
            Value::New(i) => &self.nodes[i].ty,
        }
    }

    fn push(
        &mut self,
        graph: &Graph,
        source: NodeId,
        suffix: &str,
        kind: NodeKind,
        inputs: &[Value],
        ty: TensorType,
    ) -> Value {
        let name = format!("{}.{suffix}", graph.node(source).name);
        self.nodes.push(NewNode { name, kind, inputs: inputs.to_vec(), ty });
        Value::New(self.nodes.len() - 1)
    }

    /// Adds `op` on `inputs` as a node named `<source's name>.<suffix>`, inferring its type.
    /// Errors are the op's inference message (a rule bug or a pattern that does not apply).
    pub fn op(
        &mut self,
        graph: &Graph,
        source: NodeId,
        suffix: &str,
        op: Op,
        inputs: &[Value],
    ) -> Result<Value, String> {
        let tys: Vec<TensorType> = inputs.iter().map(|v| self.ty(graph, *v).clone()).collect();
        let ty = op.infer(&tys)?;
        Ok(self.push(graph, source, suffix, NodeKind::Op(op), inputs, ty))
    }

    /// Adds an op node whose type is declared by the caller, not inferred. Nothing checks it
    /// until [`Graph::verify`] runs (the optimizer's `verify_each`); tests use it to build a
    /// broken patch on purpose.
    pub fn op_with_type(
        &mut self,
        graph: &Graph,
        source: NodeId,
        suffix: &str,
        op: Op,
        inputs: &[Value],
        ty: TensorType,
    ) -> Value {
        self.push(graph, source, suffix, NodeKind::Op(op), inputs, ty)
    }

    /// Adds a weight read by its exact `name` (a checkpoint key, or a slice of one such as
    /// `conv.weight@rows[0:96]`); unlike other new nodes it is not renamed after a source.
    pub fn weight(&mut self, name: impl Into<String>, ty: TensorType) -> Value {
        self.nodes.push(NewNode { name: name.into(), kind: NodeKind::Weight, inputs: Vec::new(), ty });
        Value::New(self.nodes.len() - 1)
    }

    /// Adds a constant named `<source's name>.<suffix>`.
    pub fn constant(&mut self, graph: &Graph, source: NodeId, suffix: &str, value: RefTensor) -> Value {
        let ty = value.ty();
        self.push(graph, source, suffix, NodeKind::Constant(value), &[], ty)
    }

    /// Reroutes every use of `old` (graph outputs included) to `new`, which must have the same
    /// type and precede `old`'s position (new nodes are placed there).
    pub fn replace(&mut self, old: NodeId, new: impl Into<Value>) {
        self.replacements.push((old, new.into()));
    }

    /// Drops `node`, which must be unused once the patch is applied (dead-code elimination).
    pub fn remove(&mut self, node: NodeId) {
        self.removals.push(node);
    }
}

/// One position in the rebuilt order: an old node or one of the patch's new nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Old(usize),
    New(usize),
}

/// Applies `patch` to `graph`, giving the rebuilt graph. Errors say why the patch is malformed
/// (the optimizer adds the rule and label). The result is not verified here.
pub fn apply(graph: &Graph, patch: &Patch) -> Result<Graph, String> {
    let n_old = graph.len();
    let name_of = |id: NodeId| graph.nodes().get(id.0).map(|n| n.name.as_str());
    let in_range = |v: Value| match v {
        Value::Existing(id) => id.0 < n_old,
        Value::New(i) => i < patch.nodes.len(),
    };

    // Validate the replacement map.
    let mut replaced: Vec<Option<Value>> = vec![None; n_old];
    for &(old, new) in &patch.replacements {
        if old.0 >= n_old || !in_range(new) {
            return Err(format!("replacement {old} → {new:?} refers to a missing node"));
        }
        if replaced[old.0].replace(new).is_some() {
            return Err(format!("`{}` is replaced twice", graph.node(old).name));
        }
        if matches!(graph.node(old).kind, NodeKind::Input) {
            return Err(format!("graph input `{}` cannot be replaced", graph.node(old).name));
        }
        let new_ty = patch.ty(graph, new);
        if *new_ty != graph.node(old).ty {
            return Err(format!(
                "`{}` of type {} is replaced by a value of type {new_ty}",
                graph.node(old).name,
                graph.node(old).ty
            ));
        }
        if let Value::Existing(id) = new {
            if id.0 >= old.0 {
                return Err(format!(
                    "`{}` is replaced by `{}`, which does not precede it",
                    graph.node(old).name,
                    graph.node(id).name
                ));
            }
        }
    }
    for &id in &patch.removals {
        match graph.nodes().get(id.0) {
            None => return Err(format!("removal of missing node {id}")),
            Some(n) if matches!(n.kind, NodeKind::Input) => {
                return Err(format!("graph input `{}` is the caller's contract and cannot be removed", n.name))
            }
            Some(_) => {}
        }
    }
    // New nodes go just before the earliest replaced node; each may only use values before it.
    let at = patch.replacements.iter().map(|(old, _)| old.0).min();
    if !patch.nodes.is_empty() && at.is_none() {
        return Err("the patch adds nodes but replaces nothing".into());
    }
    let at = at.unwrap_or(n_old);
    for (i, node) in patch.nodes.iter().enumerate() {
        for &v in &node.inputs {
            let ok = match v {
                Value::Existing(id) => id.0 < at && replaced[id.0].is_none(),
                Value::New(j) => j < i,
            };
            if !ok || !in_range(v) {
                let what = match v {
                    Value::Existing(id) => name_of(id).unwrap_or("?").to_string(),
                    Value::New(j) => format!("new node {j}"),
                };
                return Err(format!(
                    "new node `{}` uses `{what}`, which is replaced, missing or comes later",
                    node.name
                ));
            }
        }
    }

    // The rebuilt order and each item's operands, with replacements resolved.
    let mut order: Vec<Item> = Vec::with_capacity(n_old + patch.nodes.len());
    for i in 0..n_old {
        if i == at {
            order.extend((0..patch.nodes.len()).map(Item::New));
        }
        order.push(Item::Old(i));
    }
    // Chains (`a → b`, `b → c`) end because an existing replacement always precedes.
    let resolve = |mut v: Value| -> Item {
        loop {
            match v {
                Value::Existing(id) => match replaced[id.0] {
                    Some(next) => v = next,
                    None => return Item::Old(id.0),
                },
                Value::New(j) => return Item::New(j),
            }
        }
    };
    let operands = |item: Item| -> Vec<Item> {
        match item {
            Item::Old(i) => graph.nodes()[i].inputs.iter().map(|&x| resolve(Value::Existing(x))).collect(),
            Item::New(j) => patch.nodes[j].inputs.iter().map(|&v| resolve(v)).collect(),
        }
    };
    let slot = |item: Item| match item {
        Item::Old(i) => i,
        Item::New(j) => n_old + j,
    };
    let n_items = n_old + patch.nodes.len();
    let mut uses = vec![0usize; n_items];
    let mut all_operands: Vec<Vec<Item>> = vec![Vec::new(); n_items];
    for &item in &order {
        let ops = operands(item);
        for &x in &ops {
            uses[slot(x)] += 1;
        }
        all_operands[slot(item)] = ops;
    }
    let outputs: Vec<(String, Item)> =
        graph.outputs().iter().map(|(name, id)| (name.clone(), resolve(Value::Existing(*id)))).collect();
    for (_, x) in &outputs {
        uses[slot(*x)] += 1;
    }

    // Remove what the patch leaves unused (see the module docs).
    let before = graph.use_counts();
    let explicit: HashSet<usize> = patch.removals.iter().map(|id| id.0).collect();
    let removable = |item: Item| match item {
        Item::New(_) => true,
        Item::Old(i) => {
            !matches!(graph.nodes()[i].kind, NodeKind::Input)
                && (before[i] > 0 || replaced[i].is_some() || explicit.contains(&i))
        }
    };
    let mut removed = vec![false; n_items];
    let mut work: Vec<Item> = order.iter().copied().filter(|&x| uses[slot(x)] == 0 && removable(x)).collect();
    while let Some(item) = work.pop() {
        if std::mem::replace(&mut removed[slot(item)], true) {
            continue;
        }
        for &x in &all_operands[slot(item)] {
            uses[slot(x)] -= 1;
            if uses[slot(x)] == 0 && removable(x) {
                work.push(x);
            }
        }
    }
    if let Some(&still) = patch.removals.iter().find(|id| !removed[id.0]) {
        return Err(format!("`{}` is removed but still used", graph.node(still).name));
    }

    // Emit the kept items, renumbering operands and making new names unique.
    let mut new_id: Vec<Option<NodeId>> = vec![None; n_items];
    let mut names: HashSet<String> = order
        .iter()
        .filter(|&&x| !removed[slot(x)])
        .filter_map(|x| match x {
            Item::Old(i) => Some(graph.nodes()[*i].name.clone()),
            Item::New(_) => None,
        })
        .collect();
    let mut nodes: Vec<Node> = Vec::with_capacity(n_items);
    for &item in &order {
        if removed[slot(item)] {
            continue;
        }
        let mut inputs = Vec::with_capacity(all_operands[slot(item)].len());
        for &x in &all_operands[slot(item)] {
            match new_id[slot(x)] {
                Some(id) => inputs.push(id),
                None => return Err(format!("operand order broken at {item:?} (uses {x:?})")),
            }
        }
        let node = match item {
            Item::Old(i) => {
                let old = &graph.nodes()[i];
                Node { name: old.name.clone(), kind: old.kind.clone(), inputs, ty: old.ty.clone() }
            }
            Item::New(j) => {
                let new = &patch.nodes[j];
                let name = unique_name(&mut names, &new.name);
                Node { name, kind: new.kind.clone(), inputs, ty: new.ty.clone() }
            }
        };
        new_id[slot(item)] = Some(NodeId(nodes.len()));
        nodes.push(node);
    }
    let outputs = outputs
        .into_iter()
        .map(|(name, x)| new_id[slot(x)].map(|id| (name, id)).ok_or_else(|| "an output was removed".to_string()))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Graph::from_parts(nodes, outputs))
}

/// `base`, or `base.1`, `base.2`, … if taken (the builder's convention).
fn unique_name(names: &mut HashSet<String>, base: &str) -> String {
    let mut candidate = base.to_string();
    let mut n = 0;
    while names.contains(&candidate) {
        n += 1;
        candidate = format!("{base}.{n}");
    }
    names.insert(candidate.clone());
    candidate
}
