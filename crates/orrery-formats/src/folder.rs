//! Finding the weights in a path: a single file of any supported format (detected from its
//! bytes, not its extension), a shard index, or a diffusers/transformers model directory.
//!
//! Directory resolution follows the Hugging Face conventions, in their order of preference:
//! `model.safetensors` / `diffusion_pytorch_model.safetensors`, then their `.index.json`
//! shard indexes, then `pytorch_model.bin` / `diffusion_pytorch_model.bin` and their indexes,
//! then `model.pt`/`.pth`/`.ckpt`; failing those, a lone weights file or a complete
//! `*-0000K-of-0000N.safetensors` set. A diffusers *pipeline* root (with `model_index.json`)
//! holds several models, so it is refused with the list of component folders to choose from.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::FormatError;
use crate::index::open_index;
use crate::safetensors::SafetensorsFile;
use crate::source::{map_file, CombinedWeights, WeightSource};
use crate::torch::{is_legacy_torch, is_tar, TorchCheckpoint};

/// Extensions of single-file weights.
pub const WEIGHT_EXTENSIONS: &[&str] = &["safetensors", "pt", "pth", "bin", "ckpt"];

/// The biggest JSON side file (configs, indexes) we read.
const MAX_JSON_FILE: u64 = 256 << 20;

/// What a directory's weights consist of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightsLayout {
    /// One file (safetensors or PyTorch).
    File(PathBuf),
    /// A shard index (`*.index.json`).
    Index(PathBuf),
    /// Shard files without an index, combined.
    Shards(Vec<PathBuf>),
}

impl WeightsLayout {
    /// Files involved (for an index: the index itself).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            WeightsLayout::File(p) | WeightsLayout::Index(p) => vec![p.clone()],
            WeightsLayout::Shards(v) => v.clone(),
        }
    }
}

pub(crate) fn read_small_file(path: &Path) -> Result<Vec<u8>, FormatError> {
    let meta = fs::metadata(path).map_err(|e| FormatError::io(path, "reading", e))?;
    if meta.len() > MAX_JSON_FILE {
        return Err(FormatError::UnknownFormat {
            path: path.to_path_buf(),
            detail: format!("{} bytes is too large for a JSON config/index (limit {MAX_JSON_FILE})", meta.len()),
        });
    }
    fs::read(path).map_err(|e| FormatError::io(path, "reading", e))
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    let rd = fs::read_dir(dir).map_err(|e| FormatError::io(dir, "listing", e))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| FormatError::io(dir, "listing", e))?;
        out.push(e.path());
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn has_weight_ext(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e))
}

/// `name-00001-of-00003.safetensors` -> Some((1, 3)).
fn shard_number(name: &str) -> Option<(u32, u32)> {
    let stem = name.strip_suffix(".safetensors")?;
    let (head, total) = stem.rsplit_once("-of-")?;
    let (_, idx) = head.rsplit_once('-')?;
    if idx.is_empty() || total.is_empty() || !idx.bytes().chain(total.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((idx.parse().ok()?, total.parse().ok()?))
}

/// Decides which files in `dir` hold the model's weights.
pub fn resolve_weights(dir: &Path) -> Result<WeightsLayout, FormatError> {
    let entries = list_dir(dir)?;
    if dir.join("model_index.json").is_file() {
        let comps: Vec<String> = entries
            .iter()
            .filter(|p| p.is_dir() && p.join("config.json").is_file())
            .map(|p| format!("{}/", file_name(p)))
            .collect();
        return Err(FormatError::NoWeights {
            path: dir.to_path_buf(),
            detail: format!(
                "this is a diffusers pipeline folder (model_index.json) holding several models; open one \
                 component folder instead: {}",
                if comps.is_empty() { "(none found)".to_string() } else { comps.join(", ") }
            ),
        });
    }
    for name in ["model.safetensors", "diffusion_pytorch_model.safetensors"] {
        if dir.join(name).is_file() {
            return Ok(WeightsLayout::File(dir.join(name)));
        }
    }
    let indexes = |suffix: &str, preferred: &[&str]| -> Result<Option<PathBuf>, FormatError> {
        for name in preferred {
            if dir.join(name).is_file() {
                return Ok(Some(dir.join(name)));
            }
        }
        let others: Vec<&PathBuf> = entries.iter().filter(|p| p.is_file() && file_name(p).ends_with(suffix)).collect();
        match others.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).clone())),
            many => Err(FormatError::NoWeights {
                path: dir.to_path_buf(),
                detail: format!(
                    "several shard indexes ({}); open the one you want directly",
                    many.iter().map(|p| file_name(p)).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    };
    if let Some(p) = indexes(
        ".safetensors.index.json",
        &["model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json"],
    )? {
        return Ok(WeightsLayout::Index(p));
    }
    for name in ["pytorch_model.bin", "diffusion_pytorch_model.bin"] {
        if dir.join(name).is_file() {
            return Ok(WeightsLayout::File(dir.join(name)));
        }
    }
    if let Some(p) =
        indexes(".bin.index.json", &["pytorch_model.bin.index.json", "diffusion_pytorch_model.bin.index.json"])?
    {
        return Ok(WeightsLayout::Index(p));
    }
    for name in ["model.pt", "model.pth", "model.ckpt"] {
        if dir.join(name).is_file() {
            return Ok(WeightsLayout::File(dir.join(name)));
        }
    }
    let files: Vec<PathBuf> = entries.into_iter().filter(|p| p.is_file() && has_weight_ext(p)).collect();
    match files.as_slice() {
        [] => Err(FormatError::NoWeights {
            path: dir.to_path_buf(),
            detail: format!(
                "no weights found (looked for model.safetensors, diffusion_pytorch_model.safetensors, *.index.json, \
                 pytorch_model.bin, model.pt and any .{} file)",
                WEIGHT_EXTENSIONS.join("/.")
            ),
        }),
        [one] => Ok(WeightsLayout::File(one.clone())),
        many => {
            // A complete set of index-less shards?
            let nums: Vec<Option<(u32, u32)>> = many.iter().map(|p| shard_number(&file_name(p))).collect();
            if let Some(Some((_, total))) = nums.first() {
                let complete = nums.len() == *total as usize
                    && nums.iter().all(|n| n.is_some_and(|(_, t)| t == *total))
                    && (1..=*total).all(|i| nums.iter().any(|n| n.is_some_and(|(k, _)| k == i)));
                if complete {
                    return Ok(WeightsLayout::Shards(many.to_vec()));
                }
            }
            Err(FormatError::NoWeights {
                path: dir.to_path_buf(),
                detail: format!(
                    "several candidate weight files ({}); open one file directly, or combine them explicitly",
                    many.iter().map(|p| file_name(p)).collect::<Vec<_>>().join(", ")
                ),
            })
        }
    }
}

/// Opens one weights file, choosing the reader from the file's bytes (so a `.bin` that is
/// really safetensors, or a `.pt` that is a legacy pickle, is handled or explained).
pub fn open_file(path: &Path) -> Result<Box<dyn WeightSource>, FormatError> {
    let bytes = map_file(path)?;
    let data: &[u8] = (*bytes).as_ref();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let zip_magic = data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06");
    if zip_magic || is_legacy_torch(data) || is_tar(data) {
        return Ok(Box::new(TorchCheckpoint::from_shared(path, bytes)?));
    }
    if data.get(8) == Some(&b'{') || ext == "safetensors" {
        return Ok(Box::new(SafetensorsFile::from_file_map(path, bytes)?));
    }
    if data.is_empty() {
        return Err(FormatError::UnknownFormat {
            path: path.to_path_buf(),
            detail: "the file is empty (interrupted download?)".to_string(),
        });
    }
    if matches!(ext.as_str(), "pt" | "pth" | "bin" | "ckpt") {
        // Let the zip reader explain what is wrong (e.g. a truncated archive).
        return Ok(Box::new(TorchCheckpoint::from_shared(path, bytes)?));
    }
    let head: String = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(FormatError::UnknownFormat {
        path: path.to_path_buf(),
        detail: format!(
            "not a safetensors file or PyTorch zip checkpoint (first bytes {head}); expected .safetensors, .pt, \
             .pth, .bin or .ckpt weights"
        ),
    })
}

/// Opens several files as one source (e.g. shards without an index). Tensor names must be
/// unique across the files.
pub fn open_files(paths: &[PathBuf]) -> Result<CombinedWeights, FormatError> {
    let label = paths.first().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_default();
    let parts = paths.iter().map(|p| open_file(p)).collect::<Result<Vec<_>, _>>()?;
    CombinedWeights::new(label, parts)
}

/// Opens the weights at `path`: a weights file, a `*.index.json`, or a model directory.
pub fn open_weights(path: impl AsRef<Path>) -> Result<Box<dyn WeightSource>, FormatError> {
    let path = path.as_ref();
    let meta = fs::metadata(path).map_err(|e| FormatError::io(path, "opening", e))?;
    if meta.is_dir() {
        return match resolve_weights(path)? {
            WeightsLayout::File(f) => open_file(&f),
            WeightsLayout::Index(i) => Ok(Box::new(open_index(&i)?)),
            WeightsLayout::Shards(s) => Ok(Box::new(open_files(&s)?)),
        };
    }
    if file_name(path).ends_with(".index.json") {
        return Ok(Box::new(open_index(path)?));
    }
    open_file(path)
}

#[cfg(test)]
mod tests {
    use super::shard_number;

    #[test]
    fn shard_numbers() {
        assert_eq!(shard_number("model-00002-of-00003.safetensors"), Some((2, 3)));
        assert_eq!(shard_number("model.safetensors"), None);
        assert_eq!(shard_number("a-b-of-3.safetensors"), None);
    }
}
