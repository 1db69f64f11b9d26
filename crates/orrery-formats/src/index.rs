//! Sharded checkpoints: `*.index.json` files whose `weight_map` says which shard file holds
//! each tensor (`model.safetensors.index.json`, `diffusion_pytorch_model.safetensors.index.json`,
//! `pytorch_model.bin.index.json`, …).
//!
//! Shards are opened (mapped, headers validated) when the index is opened, so a missing or
//! corrupt shard is reported up front with the shard's name rather than in the middle of a
//! model load; mapping is cheap and touches no tensor data. The index is checked against
//! the shards: every listed tensor must be in the shard the map names.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::error::FormatError;
use crate::folder::{open_file, read_small_file};
use crate::source::{CombinedWeights, WeightSource};

/// A parsed shard index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardIndex {
    pub path: PathBuf,
    /// tensor name -> shard file name (relative to the index's directory), sorted by name.
    pub weight_map: BTreeMap<String, String>,
    /// `metadata.total_size` when present.
    pub total_size: Option<u64>,
}

impl ShardIndex {
    /// Reads and validates an index file.
    pub fn load(path: &Path) -> Result<ShardIndex, FormatError> {
        let bytes = read_small_file(path)?;
        ShardIndex::parse(path, &bytes)
    }

    /// Validates index JSON; `label` is used in messages.
    pub fn parse(label: &Path, json: &[u8]) -> Result<ShardIndex, FormatError> {
        let bad = |detail: String| FormatError::Index { path: label.to_path_buf(), detail };
        let root: Value = serde_json::from_slice(json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Value::Object(root) = root else {
            return Err(bad("top level is not a JSON object".into()));
        };
        let Some(Value::Object(map)) = root.get("weight_map") else {
            return Err(bad("no 'weight_map' object mapping tensor names to shard files".into()));
        };
        let mut weight_map = BTreeMap::new();
        for (name, file) in map {
            let Value::String(file) = file else {
                return Err(bad(format!("weight_map entry for '{name}' is not a file name string")));
            };
            let p = Path::new(file);
            let plain = !file.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
            if !plain {
                return Err(bad(format!(
                    "weight_map puts '{name}' in '{file}', which is not a relative path inside the index's \
                     directory (refusing absolute paths and '..')"
                )));
            }
            weight_map.insert(name.clone(), file.clone());
        }
        if weight_map.is_empty() {
            return Err(bad("weight_map is empty".into()));
        }
        let total_size = root.get("metadata").and_then(|m| m.get("total_size")).and_then(|t| t.as_u64());
        Ok(ShardIndex { path: label.to_path_buf(), weight_map, total_size })
    }

    /// Shard file names in sorted order, without duplicates.
    pub fn shard_files(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> = self.weight_map.values().collect();
        set.into_iter().cloned().collect()
    }
}

/// Opens an index and all its shards as one source.
pub fn open_index(path: &Path) -> Result<CombinedWeights, FormatError> {
    let index = ShardIndex::load(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut parts: Vec<Box<dyn WeightSource>> = Vec::new();
    for shard in index.shard_files() {
        let shard_path = dir.join(&shard);
        if !shard_path.is_file() {
            let example =
                index.weight_map.iter().find(|(_, f)| **f == shard).map(|(n, _)| n.clone()).unwrap_or_default();
            return Err(FormatError::MissingShard { index: path.to_path_buf(), shard: shard_path, example });
        }
        let src = open_file(&shard_path)?;
        let names: HashSet<String> = src.names().into_iter().collect();
        let problems: HashSet<String> = src.report().problems.into_iter().map(|p| p.key).collect();
        for (name, file) in &index.weight_map {
            if *file == shard && !names.contains(name) && !problems.contains(name) {
                return Err(FormatError::Index {
                    path: path.to_path_buf(),
                    detail: format!(
                        "weight_map places '{name}' in '{shard}', but that shard has no such tensor (stale index or \
                         mixed-up downloads; re-download the checkpoint)"
                    ),
                });
            }
        }
        parts.push(src);
    }
    CombinedWeights::new(path, parts)
}
