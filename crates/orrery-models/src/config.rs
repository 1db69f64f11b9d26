//! Reading `config.json` and choosing the model class.

use crate::ModelError;
use orrery_ir::DType;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A parsed `config.json` with the model class it names.
#[derive(Clone, Debug)]
pub struct ComponentConfig {
    pub path: PathBuf,
    pub class: String,
    pub json: Value,
}

impl ComponentConfig {
    /// Reads `config.json` from a component folder, or the given `.json` file itself.
    pub fn read(path: &Path) -> Result<ComponentConfig, ModelError> {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let err = |reason: String| ModelError::Config { path: file.display().to_string(), reason };
        let text = std::fs::read_to_string(&file).map_err(|e| err(format!("cannot read: {e}")))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        if !json.is_object() {
            return Err(err("must be a JSON object".into()));
        }
        let class = class_of(&json).ok_or_else(|| {
            err("names no model: expected `_class_name` (diffusers), `architectures` or `model_type` (transformers)".into())
        })?;
        Ok(ComponentConfig { path: file, class, json })
    }

    /// The folder holding the config (and normally the weights).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn err(&self, reason: String) -> ModelError {
        ModelError::Config { path: self.path.display().to_string(), reason }
    }

    /// A required positive integer field.
    pub fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.opt_usize(key)?.ok_or_else(|| self.err(format!("missing required key `{key}`")))
    }

    /// An optional non-negative integer field (`null` counts as absent).
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a non-negative integer, got {v}"))),
        }
    }

    /// An optional finite number (`null` counts as absent).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a finite number, got {v}"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, ModelError> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(format!("`{key}` must be a string, got {v}"))),
        }
    }

    /// `torch_dtype` (or `dtype`, as transformers 5 writes it) when present and known.
    pub fn torch_dtype(&self) -> Result<Option<DType>, ModelError> {
        let key = if self.json.get("torch_dtype").is_some() { "torch_dtype" } else { "dtype" };
        match self.opt_str(key)? {
            None => Ok(None),
            Some(s) => DType::parse(s.trim_start_matches("torch."))
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` {s:?} is not one of float32, float16, bfloat16"))),
        }
    }
}

/// diffusers `_class_name`; else the first transformers `architectures` entry; else `model_type`.
fn class_of(json: &Value) -> Option<String> {
    if let Some(c) = json.get("_class_name").and_then(Value::as_str) {
        return Some(c.to_string());
    }
    if let Some(a) = json.get("architectures").and_then(Value::as_array).and_then(|a| a.first()) {
        return a.as_str().map(str::to_string);
    }
    json.get("model_type").and_then(Value::as_str).map(str::to_string)
}
