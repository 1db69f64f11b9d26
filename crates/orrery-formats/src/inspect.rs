//! Summaries for `orrery inspect`: the tensors of a weights source (names, dtypes, shapes,
//! bytes), what the checkpoint references but orrery does not interpret (unknown pickle
//! globals, with the keys that use them — e.g. `posix.system` under `evil`), keys that cannot
//! be loaded, and the shape of a diffusers/transformers model folder.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::FormatError;
use crate::folder::{open_weights, read_small_file, resolve_weights};
use crate::source::{TensorInfo, TensorProblem, UnknownGlobal, WeightSource};

/// Everything `orrery inspect` prints about a weights source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    pub path: PathBuf,
    /// `safetensors`, `pytorch-zip`.
    pub formats: Vec<String>,
    pub files: Vec<PathBuf>,
    pub tensors: Vec<TensorInfo>,
    /// Sum of the tensors' `byte_len`.
    pub total_bytes: u64,
    pub metadata: Vec<(String, String)>,
    pub unknown_globals: Vec<UnknownGlobal>,
    pub problems: Vec<TensorProblem>,
}

impl Inspection {
    /// The unknown global named `global`, if referenced.
    pub fn unknown_global(&self, global: &str) -> Option<&UnknownGlobal> {
        self.unknown_globals.iter().find(|g| g.global == global)
    }

    /// A JSON form for `orrery inspect --json`.
    pub fn to_json(&self) -> Value {
        json!({
            "path": self.path.display().to_string(),
            "formats": self.formats,
            "files": self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "tensors": self.tensors.iter().map(|t| json!({
                "name": t.name,
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "bytes": t.byte_len,
                "zero_copy": t.zero_copy,
                "file": t.file.display().to_string(),
            })).collect::<Vec<_>>(),
            "total_bytes": self.total_bytes,
            "metadata": self.metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "unknown_globals": self.unknown_globals.iter().map(|g| json!({"global": g.global, "keys": g.keys})).collect::<Vec<_>>(),
            "problems": self.problems.iter().map(|p| json!({
                "key": p.key, "file": p.file.display().to_string(), "message": p.message,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Inspects an already opened source.
pub fn inspect_source(src: &dyn WeightSource) -> Inspection {
    let tensors: Vec<TensorInfo> = src.names().iter().filter_map(|n| src.info(n)).collect();
    let total_bytes = tensors.iter().map(|t| t.byte_len as u64).sum();
    let r = src.report();
    Inspection {
        path: src.path().to_path_buf(),
        formats: r.formats,
        files: r.files,
        tensors,
        total_bytes,
        metadata: r.metadata,
        unknown_globals: r.unknown_globals,
        problems: r.problems,
    }
}

/// Opens and inspects a weights file, index or model directory.
pub fn inspect(path: impl AsRef<Path>) -> Result<Inspection, FormatError> {
    Ok(inspect_source(open_weights(path)?.as_ref()))
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({})", self.path.display(), self.formats.join(", "))?;
        let w = self.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
        for t in &self.tensors {
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            writeln!(
                f,
                "  {:w$}  {:5}  [{}]  {}{}",
                t.name,
                t.dtype.name(),
                shape.join(", "),
                human(t.byte_len as u64),
                if t.zero_copy { "" } else { "  (strided, copied on load)" }
            )?;
        }
        writeln!(f, "{} tensors, {} ({} bytes)", self.tensors.len(), human(self.total_bytes), self.total_bytes)?;
        for (k, v) in &self.metadata {
            writeln!(f, "metadata {k} = {v}")?;
        }
        for p in &self.problems {
            writeln!(f, "unloadable '{}': {}", p.key, p.message)?;
        }
        for g in &self.unknown_globals {
            writeln!(f, "unknown global {} (never executed) referenced by: {}", g.global, g.keys.join(", "))?;
        }
        Ok(())
    }
}

/// One model of a pipeline, or a model folder on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub path: PathBuf,
    /// `_class_name` from its `config.json` (diffusers), else `architectures[0]` (transformers).
    pub class_name: Option<String>,
    /// `[library, class]` as declared in the pipeline's `model_index.json`.
    pub declared: Option<(String, String)>,
    pub has_config: bool,
    /// The files `open_weights` would read, empty if none.
    pub weight_files: Vec<PathBuf>,
}

/// What a directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FolderDescription {
    /// A diffusers pipeline root (`model_index.json`).
    Pipeline { path: PathBuf, class_name: Option<String>, components: Vec<Component> },
    /// A model folder (`config.json` + weights) with its weights inspected.
    Component { component: Component, weights: Option<Inspection> },
    /// Weights without a config.
    Weights(Inspection),
}

impl Component {
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "path": self.path.display().to_string(),
            "class_name": self.class_name,
            "declared": self.declared.as_ref().map(|(l, c)| json!([l, c])),
            "has_config": self.has_config,
            "weight_files": self.weight_files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        })
    }
}

impl FolderDescription {
    /// A JSON form for `orrery inspect --json`.
    pub fn to_json(&self) -> Value {
        match self {
            FolderDescription::Pipeline { path, class_name, components } => json!({
                "kind": "pipeline",
                "path": path.display().to_string(),
                "class_name": class_name,
                "components": components.iter().map(Component::to_json).collect::<Vec<_>>(),
            }),
            FolderDescription::Component { component, weights } => json!({
                "kind": "component",
                "component": component.to_json(),
                "weights": weights.as_ref().map(Inspection::to_json),
            }),
            FolderDescription::Weights(w) => json!({"kind": "weights", "weights": w.to_json()}),
        }
    }
}

impl fmt::Display for FolderDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let comp = |f: &mut fmt::Formatter<'_>, c: &Component| {
            writeln!(
                f,
                "  {}/  {}{}",
                c.name,
                c.class_name.as_deref().or(c.declared.as_ref().map(|d| d.1.as_str())).unwrap_or("?"),
                if c.weight_files.is_empty() {
                    String::new()
                } else {
                    format!(
                        "  [{}]",
                        c.weight_files
                            .iter()
                            .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )
        };
        match self {
            FolderDescription::Pipeline { path, class_name, components } => {
                writeln!(f, "{}: pipeline {}", path.display(), class_name.as_deref().unwrap_or("?"))?;
                for c in components {
                    comp(f, c)?;
                }
                Ok(())
            }
            FolderDescription::Component { component, weights } => {
                writeln!(f, "{}: model {}", component.path.display(), component.class_name.as_deref().unwrap_or("?"))?;
                match weights {
                    Some(w) => write!(f, "{w}"),
                    None => writeln!(f, "  (no weights)"),
                }
            }
            FolderDescription::Weights(w) => write!(f, "{w}"),
        }
    }
}

fn read_json(path: &Path) -> Result<Value, FormatError> {
    let bytes = read_small_file(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| FormatError::UnknownFormat { path: path.to_path_buf(), detail: format!("not valid JSON: {e}") })
}

fn class_of(config: &Value) -> Option<String> {
    if let Some(Value::String(s)) = config.get("_class_name") {
        return Some(s.clone());
    }
    match config.get("architectures") {
        Some(Value::Array(a)) => a.first().and_then(|v| v.as_str()).map(str::to_string),
        _ => None,
    }
}

fn component(dir: &Path, name: String, declared: Option<(String, String)>) -> Result<Component, FormatError> {
    let cfg = dir.join("config.json");
    let has_config = cfg.is_file();
    let class_name = if has_config { class_of(&read_json(&cfg)?) } else { None };
    let weight_files = match resolve_weights(dir) {
        Ok(l) => l.files(),
        Err(_) => Vec::new(),
    };
    Ok(Component { name, path: dir.to_path_buf(), class_name, declared, has_config, weight_files })
}

/// Describes a model directory: a diffusers pipeline (components and their classes), a
/// single model folder (its class and weights), or bare weights.
pub fn describe_folder(dir: impl AsRef<Path>) -> Result<FolderDescription, FormatError> {
    let dir = dir.as_ref();
    let index = dir.join("model_index.json");
    if index.is_file() {
        let v = read_json(&index)?;
        let Value::Object(map) = &v else {
            return Err(FormatError::UnknownFormat { path: index, detail: "top level is not an object".into() });
        };
        let class_name = map.get("_class_name").and_then(|c| c.as_str()).map(str::to_string);
        let mut components = Vec::new();
        for (name, val) in map {
            if name.starts_with('_') {
                continue;
            }
            let Value::Array(pair) = val else { continue };
            let declared = match pair.as_slice() {
                [Value::String(lib), Value::String(cls)] => Some((lib.clone(), cls.clone())),
                _ => None,
            };
            let sub = dir.join(name);
            // Names come from the file: only accept plain child folders.
            if name.contains('/') || name.contains('\\') || name == ".." || name == "." {
                continue;
            }
            components.push(component(&sub, name.clone(), declared)?);
        }
        // Component folders that model_index.json does not mention.
        if let Ok(rd) = std::fs::read_dir(dir) {
            let mut extra: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            extra.sort();
            for p in extra {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if p.is_dir() && p.join("config.json").is_file() && !components.iter().any(|c| c.name == name) {
                    components.push(component(&p, name, None)?);
                }
            }
        }
        return Ok(FolderDescription::Pipeline { path: dir.to_path_buf(), class_name, components });
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if dir.join("config.json").is_file() {
        let c = component(dir, name, None)?;
        let weights = if c.weight_files.is_empty() { None } else { Some(inspect(dir)?) };
        return Ok(FolderDescription::Component { component: c, weights });
    }
    Ok(FolderDescription::Weights(inspect(dir)?))
}
