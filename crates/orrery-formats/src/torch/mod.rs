//! PyTorch zip checkpoints (`torch.save` since 1.6; also `.bin`/`.ckpt`/`.pth`), read without
//! running any Python.
//!
//! Layout: a stored ZIP with `<archive>/data.pkl` (the pickled object, with tensors replaced
//! by persistent ids naming storages), `<archive>/data/<key>` (raw little-endian storage
//! bytes, 64-byte aligned), and `<archive>/byteorder`. The pickle is decoded by the
//! restricted unpickler in [`crate::pickle`], and this module interprets the resulting tree
//! structurally:
//!
//! * `torch._utils._rebuild_tensor_v2/_v3/_rebuild_tensor(storage, offset, size, stride, …)`
//!   become tensor descriptors (storage key, dtype, offset, shape, stride);
//! * `_rebuild_parameter(_with_state)` and `torch._tensor._rebuild_from_type_v2` (with
//!   `torch.Tensor`/`Parameter` as the type) unwrap to their tensor;
//! * persistent ids `('storage', torch.FloatStorage|…|torch.storage.UntypedStorage, key,
//!   location, numel)` name storages and their dtype;
//! * `collections.OrderedDict` and plain dicts/lists/tuples are flattened into dotted keys
//!   (`model.encoder.weight`, `ema.0`);
//! * every other global is opaque: it is reported with the keys that reference it, and a
//!   tensor that depends on it is unavailable (its `load` names the global and the key).
//!
//! Storages are located in the archive at open (central directory only) and mapped at load:
//! contiguous views are zero-copy slices of the file map; strided views are gathered into a
//! contiguous copy. All numbers from the pickle are validated with checked arithmetic against
//! the storage sizes, and unloadable tensors never prevent the others from loading.
//!
//! A checkpoint whose root is a single tensor (`torch.save(t, p)`) exposes it under the
//! empty name; a root that is an opaque object (a pickled `nn.Module`) is reported under
//! [`ROOT_KEY`].

mod flatten;
mod interpret;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orrery_ir::DType;

use crate::error::FormatError;
use crate::layout::StridedLayout;
use crate::pickle::unpickle;
use crate::source::{
    map_file, not_found_hint, SharedBytes, SourceReport, TensorBytes, TensorData, TensorInfo, TensorProblem,
    UnknownGlobal, WeightSource,
};
use crate::zip::{ZipArchive, ZipError};
use flatten::Flatten;

/// Deepest container nesting flattened (also stops self-referencing containers).
pub const MAX_DEPTH: usize = 256;
/// Work budget for flattening, in units: skipping a scalar leaf costs 1, walking into a
/// container or call (which builds its dotted key) costs [`WALK_COST`]. Shared sub-objects are
/// walked once per reference (tied weights appear under every key), so this is what bounds
/// the work a hostile DAG (2^40 paths through 41 lists) can cause.
pub const MAX_WORK: usize = 1 << 26;
/// Budget units charged per container/call walked.
pub const WALK_COST: usize = 16;
/// Strided views are gathered into a copy; the copy may not exceed this or the file size,
/// whichever is larger (a stride-0 view could otherwise request terabytes).
pub const MIN_GATHER_LIMIT: usize = 64 << 20;
/// How reports name the checkpoint's root object when it is not a container.
pub const ROOT_KEY: &str = "<root>";

const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// True if `data` starts like a pre-1.6 (non-zip) `torch.save` file: a pickled magic number.
pub fn is_legacy_torch(data: &[u8]) -> bool {
    data.first() == Some(&0x80) && data.get(2..4) == Some(&[0x8a, 0x0a]) && data.get(4..14) == Some(&LEGACY_MAGIC)
}

/// True if `data` is a tar archive (torch < 0.4 wrote checkpoints as tar files).
pub fn is_tar(data: &[u8]) -> bool {
    data.get(257..262) == Some(b"ustar")
}

/// One loadable tensor of a checkpoint: a strided view into a storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorchTensor {
    pub name: String,
    pub dtype: DType,
    /// Shape, stride and offset in elements of `dtype`.
    pub layout: StridedLayout,
    pub storage_key: String,
    /// Archive entry holding the storage (`<archive>/data/<key>`).
    pub storage_entry: String,
    /// Storage size in bytes, as declared by the persistent id (validated against the entry).
    pub storage_bytes: usize,
    /// `numel * dtype size`.
    pub byte_len: usize,
}

impl TorchTensor {
    pub fn shape(&self) -> &[usize] {
        &self.layout.shape
    }
    pub fn stride(&self) -> &[usize] {
        &self.layout.stride
    }
    pub fn storage_offset(&self) -> usize {
        self.layout.offset
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }
}

/// Why a key that looks like a tensor cannot be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Problem {
    UnknownGlobal(String),
    UnsupportedDtype(String),
    Invalid(String),
    Compressed { entry: String, method: u16 },
}

impl Problem {
    fn message(&self) -> String {
        match self {
            Problem::UnknownGlobal(g) => format!("depends on the unknown Python global '{g}'"),
            Problem::UnsupportedDtype(d) => format!("dtype {d} is not supported by orrery"),
            Problem::Invalid(d) => d.clone(),
            Problem::Compressed { entry, method } => {
                format!("storage entry '{entry}' is compressed (method {method})")
            }
        }
    }
}

/// A PyTorch zip checkpoint, mapped and indexed.
pub struct TorchCheckpoint {
    path: PathBuf,
    bytes: SharedBytes,
    archive: ZipArchive,
    prefix: String,
    tensors: Vec<TorchTensor>,
    index: HashMap<String, usize>,
    problems: Vec<(String, Problem)>,
    problem_index: HashMap<String, usize>,
    unknown_globals: Vec<UnknownGlobal>,
    /// Largest gathered copy of a strided view (see [`MIN_GATHER_LIMIT`]).
    gather_limit: usize,
}

impl TorchCheckpoint {
    /// Maps and indexes the checkpoint at `path`.
    pub fn open(path: &Path) -> Result<TorchCheckpoint, FormatError> {
        let bytes = map_file(path)?;
        TorchCheckpoint::from_shared(path, bytes)
    }

    /// Indexes a checkpoint image held in memory; `label` is used in messages.
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<TorchCheckpoint, FormatError> {
        TorchCheckpoint::from_shared(label, Arc::new(bytes))
    }

    /// Indexes a checkpoint image held by any shared owner.
    pub fn from_shared(label: impl Into<PathBuf>, bytes: SharedBytes) -> Result<TorchCheckpoint, FormatError> {
        let path: PathBuf = label.into();
        let data: &[u8] = (*bytes).as_ref();
        if is_legacy_torch(data) {
            return Err(FormatError::LegacyTorchFormat { path, what: "pickle stream with torch's magic number" });
        }
        if is_tar(data) {
            return Err(FormatError::LegacyTorchFormat { path, what: "tar archive from torch < 0.4" });
        }
        let archive = ZipArchive::parse(data).map_err(|e| zip_error(&path, e))?;
        let pkl = find_data_pkl(&archive, &path)?;
        let prefix = pkl.name.strip_suffix("data.pkl").unwrap_or("").to_string();
        let pkl_name = pkl.name.clone();

        if let Some(bo) = archive.find(&format!("{prefix}byteorder")) {
            let raw = archive.read(data, bo).map_err(|e| zip_error(&path, e))?;
            let order = String::from_utf8_lossy(raw).trim().to_string();
            if order != "little" {
                return Err(FormatError::UnsupportedByteOrder { path, entry: bo.name.clone(), order });
            }
        }

        let pkl_bytes = archive.read(data, pkl).map_err(|e| zip_error(&path, e))?;
        let pickle = unpickle(pkl_bytes).map_err(|e| FormatError::Pickle {
            path: path.clone(),
            entry: pkl_name.clone(),
            offset: e.offset,
            detail: e.detail,
        })?;

        let gather_limit = data.len().max(MIN_GATHER_LIMIT);
        let mut fl = Flatten::new(&pickle, &archive, &prefix, gather_limit);
        fl.walk(pickle.root, String::new(), 0).map_err(|detail| FormatError::Pickle {
            path: path.clone(),
            entry: pkl_name.clone(),
            offset: 0,
            detail,
        })?;
        let Flatten { tensors, index, problems, problem_index, unknown, .. } = fl;
        let unknown_globals = unknown.into_iter().map(|(global, keys)| UnknownGlobal { global, keys }).collect();
        Ok(TorchCheckpoint {
            path,
            bytes: bytes.clone(),
            archive,
            prefix,
            tensors,
            index,
            problems,
            problem_index,
            unknown_globals,
            gather_limit,
        })
    }

    /// The descriptor of a loadable tensor (storage key, offset, shape, stride).
    pub fn tensor(&self, name: &str) -> Option<&TorchTensor> {
        self.tensors.get(*self.index.get(name)?)
    }

    pub fn tensors(&self) -> &[TorchTensor] {
        &self.tensors
    }

    /// Globals the checkpoint references that orrery does not interpret, with their keys.
    pub fn unknown_globals(&self) -> &[UnknownGlobal] {
        &self.unknown_globals
    }

    /// The archive's top-level directory (`archive/`, `model/`, …), with the trailing slash.
    pub fn archive_prefix(&self) -> &str {
        &self.prefix
    }

    /// Keys that look like tensors but cannot be loaded, with the reason.
    pub fn problems(&self) -> Vec<TensorProblem> {
        self.problems
            .iter()
            .map(|(k, p)| TensorProblem { key: k.clone(), file: self.path.clone(), message: p.message() })
            .collect()
    }

    fn problem_error(&self, key: &str, p: &Problem) -> FormatError {
        let path = self.path.clone();
        let key = key.to_string();
        match p {
            Problem::UnknownGlobal(g) => FormatError::UnknownGlobal { path, key, global: g.clone() },
            Problem::UnsupportedDtype(d) => FormatError::UnsupportedDtype { path, tensor: key, dtype: d.clone() },
            Problem::Invalid(detail) => FormatError::InvalidTensor { path, key, detail: detail.clone() },
            Problem::Compressed { entry, method } => {
                FormatError::CompressedEntry { path, entry: entry.clone(), method: *method }
            }
        }
    }
}

fn zip_error(path: &Path, e: ZipError) -> FormatError {
    match e {
        ZipError::Invalid { entry, detail } => FormatError::Zip { path: path.to_path_buf(), entry, detail },
        ZipError::Compressed { entry, method } => {
            FormatError::CompressedEntry { path: path.to_path_buf(), entry, method }
        }
    }
}

/// The `data.pkl` entry: at the top level or one directory down (the directory name varies
/// with the torch version and the file name).
fn find_data_pkl<'a>(archive: &'a ZipArchive, path: &Path) -> Result<&'a crate::zip::ZipEntry, FormatError> {
    let candidates: Vec<&crate::zip::ZipEntry> = archive
        .entries()
        .iter()
        .filter(|e| match e.name.strip_suffix("data.pkl") {
            Some("") => true,
            Some(p) => p.ends_with('/') && p.matches('/').count() == 1,
            None => false,
        })
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(FormatError::Zip {
            path: path.to_path_buf(),
            entry: None,
            detail: "no '<archive>/data.pkl' entry: this zip is not a torch.save checkpoint (TorchScript \
                     archives and other zips are not weights files)"
                .to_string(),
        }),
        many => Err(FormatError::Zip {
            path: path.to_path_buf(),
            entry: None,
            detail: format!(
                "{} data.pkl entries ({}, …): ambiguous archive",
                many.len(),
                many.iter().take(3).map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

impl std::fmt::Debug for TorchCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchCheckpoint")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .field("problems", &self.problems.len())
            .finish()
    }
}

impl WeightSource for TorchCheckpoint {
    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        let t = self.tensor(name)?;
        Some(TensorInfo {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.layout.shape.clone(),
            byte_len: t.byte_len,
            zero_copy: t.is_contiguous(),
            file: self.path.clone(),
        })
    }

    fn load(&self, name: &str) -> Result<TensorBytes, FormatError> {
        let Some(t) = self.tensor(name) else {
            if let Some(&i) = self.problem_index.get(name) {
                if let Some((k, p)) = self.problems.get(i) {
                    return Err(self.problem_error(k, p));
                }
            }
            return Err(FormatError::TensorNotFound {
                path: self.path.clone(),
                key: name.to_string(),
                hint: not_found_hint(&self.names(), name),
            });
        };
        let data: &[u8] = (*self.bytes).as_ref();
        let invalid =
            |detail: String| FormatError::InvalidTensor { path: self.path.clone(), key: t.name.clone(), detail };
        let entry = self
            .archive
            .find(&t.storage_entry)
            .ok_or_else(|| invalid(format!("storage entry '{}' vanished", t.storage_entry)))?;
        let range = self.archive.data_range(data, entry).map_err(|e| zip_error(&self.path, e))?;
        // Open validated storage_bytes <= entry size, and data_range checked the entry lies in
        // the file; still compute with checks.
        let storage_end = range
            .start
            .checked_add(t.storage_bytes)
            .filter(|&e| e <= range.end)
            .ok_or_else(|| invalid(format!("storage entry '{}' is shorter than the storage", t.storage_entry)))?;
        let elem = t.dtype.size_bytes();
        if t.is_contiguous() {
            let start = t
                .layout
                .offset
                .checked_mul(elem)
                .and_then(|o| o.checked_add(range.start))
                .filter(|s| s.checked_add(t.byte_len).is_some_and(|e| e <= storage_end))
                .ok_or_else(|| invalid("view lies outside its storage".to_string()))?;
            Ok(TensorBytes {
                dtype: t.dtype,
                shape: t.layout.shape.clone(),
                data: TensorData::Mapped { owner: self.bytes.clone(), start, len: t.byte_len },
            })
        } else {
            let storage = data
                .get(range.start..storage_end)
                .ok_or_else(|| invalid("storage lies outside the file".to_string()))?;
            let v = t
                .layout
                .gather(storage, elem, self.gather_limit)
                .ok_or_else(|| invalid("strided view reaches outside its storage".to_string()))?;
            Ok(TensorBytes { dtype: t.dtype, shape: t.layout.shape.clone(), data: TensorData::Owned(v) })
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn report(&self) -> SourceReport {
        SourceReport {
            formats: vec!["pytorch-zip".to_string()],
            files: vec![self.path.clone()],
            metadata: Vec::new(),
            unknown_globals: self.unknown_globals.clone(),
            problems: self.problems(),
        }
    }
}
