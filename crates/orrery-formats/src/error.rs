//! The crate's single error type.
//!
//! Every variant names the file it is about (for in-memory sources, the label they were
//! given), the tensor key or archive entry where one applies, what is wrong, and — where
//! there is one — what the user can do about it. Checkpoints come from the internet, so
//! these messages are the user's only window into why a file was refused.

use std::path::PathBuf;

/// Everything that can go wrong while opening, inspecting or loading weights.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The operating system refused a read, open or map.
    #[error("{path}: {action}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        /// What we were doing (`opening`, `memory-mapping`, …).
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The file's bytes match no format we read.
    #[error("{path}: {detail}", path = .path.display())]
    UnknownFormat { path: PathBuf, detail: String },

    /// A safetensors header that violates the format (bad length, bad JSON, out-of-bounds or
    /// overlapping offsets, size mismatch, …). `detail` names the tensor where one is at fault.
    #[error("{path}: invalid safetensors file: {detail}", path = .path.display())]
    Safetensors { path: PathBuf, detail: String },

    /// A tensor whose element type orrery does not handle.
    #[error(
        "{path}: tensor '{tensor}' has dtype {dtype}, which orrery does not support \
         (supported: F32, F16, BF16, I64, I32, U8, BOOL); convert the checkpoint, e.g. \
         load it in PyTorch and save `t.to(torch.float32)` / `t.to(torch.bfloat16)`",
        path = .path.display()
    )]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String },

    /// A ZIP container problem. `entry` is set when one entry is at fault.
    #[error(
        "{path}: {where_}{detail}",
        path = .path.display(),
        where_ = match .entry { Some(e) => format!("zip entry '{e}': "), None => String::from("zip archive: ") }
    )]
    Zip { path: PathBuf, entry: Option<String>, detail: String },

    /// A ZIP entry that is compressed (or encrypted); torch.save writes stored entries only,
    /// and orrery maps stored entries without copying.
    #[error(
        "{path}: zip entry '{entry}' uses compression method {method}; only stored \
         (uncompressed) entries are supported — re-save with `torch.save(obj, path)`, which \
         never compresses, or unzip and re-zip with `zip -0`",
        path = .path.display()
    )]
    CompressedEntry { path: PathBuf, entry: String, method: u16 },

    /// The pickle stream in a checkpoint is malformed or exceeds a safety limit.
    #[error("{path}: pickle '{entry}' at byte {offset}: {detail}", path = .path.display())]
    Pickle { path: PathBuf, entry: String, offset: usize, detail: String },

    /// A pre-1.6 (non-zip) PyTorch checkpoint.
    #[error(
        "{path}: this is a legacy (pre-zip) PyTorch checkpoint ({what}); orrery reads only the \
         zip format. Re-save it with PyTorch >= 1.6: \
         `torch.save(torch.load(old_path, weights_only=True), new_path)`",
        path = .path.display()
    )]
    LegacyTorchFormat { path: PathBuf, what: &'static str },

    /// The checkpoint records a byte order other than little-endian.
    #[error(
        "{path}: zip entry '{entry}' says the storages are '{order}'-endian; only \
         little-endian checkpoints are supported — re-save the checkpoint on a little-endian machine",
        path = .path.display()
    )]
    UnsupportedByteOrder { path: PathBuf, entry: String, order: String },

    /// A tensor whose reconstruction goes through a Python callable or class orrery does not
    /// know. Nothing is ever called; this tensor is simply unavailable.
    #[error(
        "{path}: tensor '{key}' depends on the unknown Python global '{global}'; orrery never \
         executes pickled code, so it cannot build this tensor — re-save it as a plain tensor \
         (e.g. `{{k: v.detach().as_subclass(torch.Tensor).contiguous() for k, v in sd.items()}}`) \
         or as safetensors",
        path = .path.display()
    )]
    UnknownGlobal { path: PathBuf, key: String, global: String },

    /// A tensor descriptor that is inconsistent (out-of-bounds view, bad shape, unsupported
    /// tensor kind, missing storage, …).
    #[error("{path}: tensor '{key}': {detail}", path = .path.display())]
    InvalidTensor { path: PathBuf, key: String, detail: String },

    /// The requested tensor does not exist in this source.
    #[error("{path}: no tensor named '{key}'{hint}", path = .path.display())]
    TensorNotFound { path: PathBuf, key: String, hint: String },

    /// A shard index (`*.index.json`) that is malformed.
    #[error("{path}: invalid shard index: {detail}", path = .path.display())]
    Index { path: PathBuf, detail: String },

    /// A shard file named by an index is missing.
    #[error(
        "{index}: shard file '{shard}' (holding e.g. '{example}') does not exist; download \
         every file listed in the index's weight_map",
        index = .index.display(), shard = .shard.display()
    )]
    MissingShard { index: PathBuf, shard: PathBuf, example: String },

    /// Two combined sources both provide a tensor.
    #[error(
        "tensor '{key}' is provided by both {first} and {second}; combine files that hold \
         disjoint tensors",
        first = .first.display(), second = .second.display()
    )]
    DuplicateTensor { key: String, first: PathBuf, second: PathBuf },

    /// A directory in which no weights (or several ambiguous candidates) were found.
    #[error("{path}: {detail}", path = .path.display())]
    NoWeights { path: PathBuf, detail: String },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        FormatError::Io { path: path.into(), action, source }
    }
}
