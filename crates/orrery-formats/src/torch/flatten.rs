//! Walking the unpickled object tree into dotted keys (`model.encoder.weight`, `ema.0`),
//! collecting tensors, keys that cannot be loaded, and the unknown globals met on the way.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::interpret::{is_known_global, is_tensor_func, ORDERED_DICT};
use super::{Problem, TorchTensor, MAX_DEPTH, MAX_WORK, ROOT_KEY, WALK_COST};
use crate::pickle::{Id, Node, Pickle};
use crate::zip::ZipArchive;

/// The state of one walk: what has been found so far, and the work spent.
pub(super) struct Flatten<'a> {
    pub(super) pk: &'a Pickle,
    pub(super) archive: &'a ZipArchive,
    pub(super) prefix: &'a str,
    pub(super) gather_limit: usize,
    pub(super) visits: usize,
    pub(super) tensors: Vec<TorchTensor>,
    pub(super) index: HashMap<String, usize>,
    pub(super) problems: Vec<(String, Problem)>,
    pub(super) problem_index: HashMap<String, usize>,
    /// global -> keys referencing it
    pub(super) unknown: BTreeMap<String, Vec<String>>,
    /// storage key -> (storage type, bytes)
    pub(super) storages: HashMap<String, (String, usize)>,
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

impl<'a> Flatten<'a> {
    /// An empty walk over `pk`, whose storages live in `archive` under `prefix`.
    pub(super) fn new(pk: &'a Pickle, archive: &'a ZipArchive, prefix: &'a str, gather_limit: usize) -> Flatten<'a> {
        Flatten {
            pk,
            archive,
            prefix,
            gather_limit,
            visits: 0,
            tensors: Vec::new(),
            index: HashMap::new(),
            problems: Vec::new(),
            problem_index: HashMap::new(),
            unknown: BTreeMap::new(),
            storages: HashMap::new(),
        }
    }

    /// The node, borrowed from the pickle (not from `self`, so walking needs no clones).
    pub(super) fn node(&self, id: Id) -> &'a Node {
        self.pk.get(id).unwrap_or(&Node::None)
    }

    fn charge(&mut self, units: usize) -> Result<(), String> {
        self.visits += units;
        if self.visits > MAX_WORK {
            return Err(format!(
                "object graph too large to flatten (work budget of {MAX_WORK} units exhausted; hostile or \
                 corrupt pickle)"
            ));
        }
        Ok(())
    }

    /// Scalars hold no tensors and no globals: they are skipped without building their key.
    fn is_scalar(&self, id: Id) -> bool {
        matches!(
            self.node(id),
            Node::None
                | Node::Bool(_)
                | Node::Int(_)
                | Node::BigInt(_)
                | Node::Float(_)
                | Node::Str(_)
                | Node::Bytes(_)
        )
    }

    fn key_str(&self, id: Id) -> String {
        match self.node(id) {
            Node::Str(s) => s.clone(),
            Node::Int(i) => i.to_string(),
            Node::BigInt(s) => s.clone(),
            Node::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            Node::None => "None".to_string(),
            Node::Float(f) => f.to_string(),
            Node::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Node::Tuple(items) => {
                let parts: Vec<String> = items.iter().take(8).map(|&i| self.key_str_flat(i)).collect();
                format!("({})", parts.join(","))
            }
            _ => "<object>".to_string(),
        }
    }

    fn key_str_flat(&self, id: Id) -> String {
        match self.node(id) {
            Node::Tuple(_) => "(…)".to_string(),
            _ => self.key_str(id),
        }
    }

    fn note_unknown(&mut self, global: String, key: &str) {
        // The whole object (e.g. a pickled nn.Module rather than its state_dict).
        let key = if key.is_empty() { ROOT_KEY } else { key };
        let keys = self.unknown.entry(global).or_default();
        if keys.last().map(|k| k.as_str()) != Some(key) && !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
        }
    }

    fn add_problem(&mut self, key: String, p: Problem) {
        let key = if key.is_empty() { ROOT_KEY.to_string() } else { key };
        if self.index.contains_key(&key) || self.problem_index.contains_key(&key) {
            return;
        }
        self.problem_index.insert(key.clone(), self.problems.len());
        self.problems.push((key, p));
    }

    fn add_tensor(&mut self, t: TorchTensor) {
        if self.index.contains_key(&t.name) || self.problem_index.contains_key(&t.name) {
            return;
        }
        self.index.insert(t.name.clone(), self.tensors.len());
        self.tensors.push(t);
    }

    /// Items of a dict or of an `OrderedDict(...)` call (SETITEMS or a list of pairs).
    fn dict_items(&self, id: Id) -> Option<Vec<(Id, Id)>> {
        match self.node(id) {
            Node::Dict(items) => Some(items.clone()),
            Node::Call(c) if self.pk.global_name(c.func).as_deref() == Some(ORDERED_DICT) => {
                let mut items = Vec::new();
                if let Some(&arg) = self.pk.seq(c.args).and_then(|a| a.first()) {
                    match self.node(arg) {
                        Node::Dict(d) => items.extend(d.iter().copied()),
                        Node::List(l) | Node::Tuple(l) => {
                            for &p in l {
                                if let Some([k, v]) = self.pk.seq(p) {
                                    items.push((*k, *v));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                items.extend(c.items.iter().copied());
                Some(items)
            }
            _ => None,
        }
    }

    pub(super) fn walk(&mut self, id: Id, key: String, depth: usize) -> Result<(), String> {
        self.charge(WALK_COST)?;
        if depth > MAX_DEPTH {
            self.add_problem(key, Problem::Invalid(format!("containers nested deeper than {MAX_DEPTH} levels")));
            return Ok(());
        }
        if let Some(items) = self.dict_items(id) {
            for (k, v) in items {
                if self.is_scalar(v) {
                    self.charge(1)?;
                    continue;
                }
                let kk = join(&key, &self.key_str(k));
                self.walk(v, kk, depth + 1)?;
            }
            return Ok(());
        }
        match self.node(id) {
            Node::List(items) | Node::Tuple(items) => {
                for (i, &v) in items.iter().enumerate() {
                    if self.is_scalar(v) {
                        self.charge(1)?;
                        continue;
                    }
                    self.walk(v, join(&key, &i.to_string()), depth + 1)?;
                }
            }
            Node::Call(c) => {
                match self.pk.global_name(c.func) {
                    Some(g) if is_tensor_func(&g) => {
                        // Unknown globals in non-data arguments (hooks, metadata) are reported.
                        self.scan(c.args, &key, false);
                        match self.tensor_from(c.func, c.args, 0) {
                            Ok((dtype, layout, storage_key, storage_entry, storage_bytes)) => {
                                let byte_len = match layout.numel().and_then(|n| n.checked_mul(dtype.size_bytes())) {
                                    Some(b) => b,
                                    None => {
                                        self.add_problem(key, Problem::Invalid("byte size overflows".into()));
                                        return Ok(());
                                    }
                                };
                                if !layout.is_contiguous() && byte_len > self.gather_limit {
                                    self.add_problem(
                                        key,
                                        Problem::Invalid(format!(
                                            "strided view would expand to {byte_len} bytes, more than the \
                                             {}-byte limit; re-save it with `.contiguous()`",
                                            self.gather_limit
                                        )),
                                    );
                                    return Ok(());
                                }
                                self.add_tensor(TorchTensor {
                                    name: key,
                                    dtype,
                                    layout,
                                    storage_key,
                                    storage_entry,
                                    storage_bytes,
                                    byte_len,
                                });
                            }
                            Err(p) => {
                                if let Problem::UnknownGlobal(g) = &p {
                                    self.note_unknown(g.clone(), &key);
                                }
                                self.add_problem(key, p);
                            }
                        }
                    }
                    Some(g) if is_known_global(&g) => {
                        // torch.Size(...), torch.device(...): not tensors.
                    }
                    func => {
                        // An opaque object: report every unknown global in it; if it wraps
                        // tensors, those depend on the object's global.
                        let name = match func {
                            Some(g) => {
                                self.note_unknown(g.clone(), &key);
                                g
                            }
                            None => String::new(),
                        };
                        let has_tensor = self.scan(id, &key, true);
                        if has_tensor {
                            let culprit = if name.is_empty() {
                                self.first_unknown_global(c.func).unwrap_or_else(|| "<computed callable>".into())
                            } else {
                                name
                            };
                            self.add_problem(key, Problem::UnknownGlobal(culprit));
                        }
                    }
                }
            }
            Node::Global { .. } => {
                if let Some(g) = self.pk.global_name(id) {
                    if !is_known_global(&g) {
                        self.note_unknown(g, &key);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn first_unknown_global(&self, id: Id) -> Option<String> {
        let mut stack = vec![id];
        let mut seen = HashSet::new();
        while let Some(i) = stack.pop() {
            if !seen.insert(i) || seen.len() > 100_000 {
                continue;
            }
            match self.node(i) {
                Node::Global { .. } => {
                    let g = self.pk.global_name(i)?;
                    if !is_known_global(&g) {
                        return Some(g);
                    }
                }
                Node::Call(c) => stack.extend([c.func, c.args]),
                Node::Tuple(v) | Node::List(v) | Node::Set(v) => stack.extend(v.iter().copied()),
                _ => {}
            }
        }
        None
    }

    /// Records the unknown globals reachable from `id` under `key`; returns whether a tensor
    /// constructor is reachable. Each node is visited once (visited set); shared work is
    /// bounded by the global visit budget, past which scanning just stops.
    fn scan(&mut self, id: Id, key: &str, look_for_tensors: bool) -> bool {
        let mut stack = vec![id];
        let mut seen = HashSet::new();
        let mut found_tensor = false;
        while let Some(i) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            self.visits += 1;
            if self.visits > MAX_WORK {
                break;
            }
            match self.node(i) {
                Node::Global { .. } => {
                    if let Some(g) = self.pk.global_name(i) {
                        if look_for_tensors && is_tensor_func(&g) {
                            found_tensor = true;
                        }
                        if !is_known_global(&g) {
                            self.note_unknown(g, key);
                        }
                    }
                }
                Node::Tuple(v) | Node::List(v) | Node::Set(v) => stack.extend(v.iter().copied()),
                Node::Dict(items) => stack.extend(items.iter().flat_map(|&(k, v)| [k, v])),
                Node::Call(c) => {
                    stack.extend([c.func, c.args]);
                    stack.extend(c.kwargs);
                    stack.extend(c.state);
                    stack.extend(c.items.iter().flat_map(|&(k, v)| [k, v]));
                    stack.extend(c.appended.iter().copied());
                }
                Node::PersistentId(p) => stack.push(*p),
                _ => {}
            }
        }
        found_tensor
    }
}
