//! The runtime-facing abstraction: a named collection of tensors whose raw bytes can be
//! handed out without copying.
//!
//! Every reader in this crate (safetensors, PyTorch zip checkpoints, shard indexes, combined
//! files) implements [`WeightSource`]. Loading returns [`TensorBytes`]: little-endian,
//! C-contiguous element bytes, borrowed from a shared owner (normally the file's memory map)
//! whenever the on-disk layout already is contiguous, and an owned buffer only when a copy is
//! unavoidable (strided views saved by PyTorch). The owner/start/len triple is exactly what
//! `orrery_cpu::CpuTensor::from_mapped` takes, so a mapped tensor reaches the kernels without
//! ever being copied.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use orrery_ir::DType;

use crate::error::FormatError;

/// Shared, immutable bytes that tensors can borrow from: a [`MappedFile`], an `Arc<Vec<u8>>`, …
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A read-only memory map of a whole file, usable as the owner of zero-copy tensors.
///
/// Safety note: like every mmap-based reader, this assumes the file is not truncated or
/// rewritten while mapped (doing so can fault the process); checkpoints are treated as
/// immutable once opened.
pub struct MappedFile {
    map: Option<Mmap>,
    path: PathBuf,
}

impl MappedFile {
    /// Maps `path` read-only. Empty files are represented without a mapping (mapping zero
    /// bytes is an error on some platforms).
    pub fn open(path: &Path) -> Result<MappedFile, FormatError> {
        let file = File::open(path).map_err(|e| FormatError::io(path, "opening", e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, "reading metadata of", e))?.len();
        if len == 0 {
            return Ok(MappedFile { map: None, path: path.to_path_buf() });
        }
        // SAFETY: the map is read-only; we rely on the file not being modified while mapped,
        // which is the documented contract of this type.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, "memory-mapping", e))?;
        Ok(MappedFile { map: Some(map), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile").field("path", &self.path).field("len", &self.len()).finish()
    }
}

/// Maps a file and returns it as [`SharedBytes`].
pub fn map_file(path: &Path) -> Result<SharedBytes, FormatError> {
    Ok(Arc::new(MappedFile::open(path)?))
}

/// What a source knows about one tensor without reading its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// `product(shape) * dtype.size_bytes()`: the size of the contiguous bytes `load` returns.
    pub byte_len: usize,
    /// True when `load` borrows the bytes from the file; false when it must gather a copy.
    pub zero_copy: bool,
    /// The file the tensor lives in (for in-memory sources, their label).
    pub file: PathBuf,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Where a loaded tensor's bytes live.
pub enum TensorData {
    /// `owner.as_ref()[start..start + len]`, shared with the file map: no copy was made.
    Mapped { owner: SharedBytes, start: usize, len: usize },
    /// A contiguous copy (needed for strided views).
    Owned(Vec<u8>),
}

/// A loaded tensor: dtype, shape and its little-endian, C-contiguous element bytes.
pub struct TensorBytes {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl TensorBytes {
    /// The element bytes (row-major, little-endian).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.data {
            TensorData::Mapped { owner, start, len } => {
                // Sources only build Mapped data for ranges they validated against the
                // owner; `get` keeps this non-panicking even if an owner misbehaves.
                let all: &[u8] = (**owner).as_ref();
                start.checked_add(*len).and_then(|end| all.get(*start..end)).unwrap_or(&[])
            }
            TensorData::Owned(v) => v,
        }
    }

    pub fn is_zero_copy(&self) -> bool {
        matches!(self.data, TensorData::Mapped { .. })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The `(owner, start, len)` triple for `CpuTensor::from_mapped`. Owned copies are moved
    /// into an `Arc` (no further copy).
    pub fn into_shared(self) -> (SharedBytes, usize, usize) {
        match self.data {
            TensorData::Mapped { owner, start, len } => (owner, start, len),
            TensorData::Owned(v) => {
                let len = v.len();
                (Arc::new(v), 0, len)
            }
        }
    }

    /// Copies the bytes out into an owned vector.
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    /// Decodes every element to f64 (exact for all supported dtypes except i64 beyond 2^53).
    /// Meant for tests, inspection and small tensors.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let b = self.as_bytes();
        match self.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
                .collect(),
            DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
            DType::U8 => b.iter().map(|&x| x as f64).collect(),
            DType::Bool => b.iter().map(|&x| if x != 0 { 1.0 } else { 0.0 }).collect(),
        }
    }
}

impl std::fmt::Debug for TensorBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorBytes")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("zero_copy", &self.is_zero_copy())
            .field("len", &self.as_bytes().len())
            .finish()
    }
}

/// A Python global that a checkpoint references but orrery does not interpret, with the
/// (flattened) keys under which it appears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownGlobal {
    /// `module.name`, e.g. `posix.system`.
    pub global: String,
    pub keys: Vec<String>,
}

/// A key that looks like a tensor but cannot be loaded, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorProblem {
    pub key: String,
    pub file: PathBuf,
    pub message: String,
}

/// Non-tensor findings a source can report for `orrery inspect`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceReport {
    /// Format of the underlying file(s), e.g. `safetensors`, `pytorch-zip`.
    pub formats: Vec<String>,
    /// Files read.
    pub files: Vec<PathBuf>,
    /// `__metadata__` of safetensors files (merged).
    pub metadata: Vec<(String, String)>,
    pub unknown_globals: Vec<UnknownGlobal>,
    pub problems: Vec<TensorProblem>,
}

impl SourceReport {
    /// Merges another report into this one (used by sharded and combined sources).
    pub fn merge(&mut self, other: SourceReport) {
        for f in other.formats {
            if !self.formats.contains(&f) {
                self.formats.push(f);
            }
        }
        self.files.extend(other.files);
        self.metadata.extend(other.metadata);
        for g in other.unknown_globals {
            match self.unknown_globals.iter_mut().find(|x| x.global == g.global) {
                Some(x) => x.keys.extend(g.keys),
                None => self.unknown_globals.push(g),
            }
        }
        self.problems.extend(other.problems);
    }
}

/// A collection of named tensors. Implementations are immutable after opening and can be
/// shared between threads.
pub trait WeightSource: Send + Sync {
    /// Loadable tensor names, in file order where the format has one.
    fn names(&self) -> Vec<String>;
    /// Metadata of one tensor, `None` if it does not exist (or cannot be loaded — see
    /// [`WeightSource::report`]).
    fn info(&self, name: &str) -> Option<TensorInfo>;
    /// The tensor's bytes; zero-copy when the stored layout is contiguous.
    fn load(&self, name: &str) -> Result<TensorBytes, FormatError>;
    /// A label for messages: the file, index or directory this source was opened from.
    fn path(&self) -> &Path;
    /// Non-tensor findings (unknown pickle globals, unloadable keys, metadata).
    fn report(&self) -> SourceReport {
        SourceReport::default()
    }
    /// Sum of `byte_len` over all loadable tensors.
    fn total_bytes(&self) -> u64 {
        self.names().iter().filter_map(|n| self.info(n)).map(|i| i.byte_len as u64).sum()
    }
    fn contains(&self, name: &str) -> bool {
        self.info(name).is_some()
    }
    /// Copies tensor `name`'s contiguous bytes into `dst` (exactly its `byte_len`) without
    /// keeping them mapped: what a weight streamer reads through, so that a released weight
    /// leaves no resident file pages behind. The default copies from [`WeightSource::load`]
    /// (which touches the mapped pages); readers that can read their file directly override it.
    fn read_into(&self, name: &str, dst: &mut [u8]) -> Result<(), FormatError> {
        copy_tensor_bytes(self.path(), name, self.load(name)?.as_bytes(), dst)
    }
    /// Copies `dst.len()` bytes of tensor `name`'s contiguous bytes from `offset` into `dst`
    /// (a part of a tensor: see [`crate::slice`]), on the same terms as
    /// [`WeightSource::read_into`].
    fn read_range_into(&self, name: &str, offset: usize, dst: &mut [u8]) -> Result<(), FormatError> {
        copy_tensor_range(self.path(), name, self.load(name)?.as_bytes(), offset, dst)
    }
}

/// `dst` ← `src[offset..offset + dst.len()]` for tensor `name`, refusing a range outside it.
pub(crate) fn copy_tensor_range(
    path: &Path,
    name: &str,
    src: &[u8],
    offset: usize,
    dst: &mut [u8],
) -> Result<(), FormatError> {
    let part = offset.checked_add(dst.len()).and_then(|end| src.get(offset..end));
    let part = part.ok_or_else(|| FormatError::InvalidTensor {
        path: path.to_path_buf(),
        key: name.to_string(),
        detail: format!("bytes {offset}..+{} lie outside its {} bytes", dst.len(), src.len()),
    })?;
    dst.copy_from_slice(part);
    Ok(())
}

/// `dst.copy_from_slice(src)` for tensor `name`, refusing a length mismatch with an error.
pub(crate) fn copy_tensor_bytes(path: &Path, name: &str, src: &[u8], dst: &mut [u8]) -> Result<(), FormatError> {
    if src.len() != dst.len() {
        return Err(FormatError::InvalidTensor {
            path: path.to_path_buf(),
            key: name.to_string(),
            detail: format!("{} bytes stored, {} expected", src.len(), dst.len()),
        });
    }
    dst.copy_from_slice(src);
    Ok(())
}

impl std::fmt::Debug for dyn WeightSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightSource({})", self.path().display())
    }
}

impl std::fmt::Debug for CombinedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CombinedWeights").field("label", &self.label).field("parts", &self.parts).finish()
    }
}

/// Builds the "did you mean" tail of a [`FormatError::TensorNotFound`].
pub(crate) fn not_found_hint(names: &[String], key: &str) -> String {
    if names.is_empty() {
        return " (the source holds no loadable tensors)".to_string();
    }
    // Suggest names sharing the key's last component: typical for prefix mismatches
    // (`model.x.weight` vs `x.weight`).
    let last = key.rsplit('.').next().unwrap_or(key);
    let similar: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(key) || key.ends_with(n.as_str()) || n.rsplit('.').next() == Some(last))
        .take(3)
        .collect();
    if similar.is_empty() {
        format!(" ({} tensors available, e.g. '{}')", names.len(), names[0])
    } else {
        let list: Vec<String> = similar.iter().map(|s| format!("'{s}'")).collect();
        format!(" (similar names: {})", list.join(", "))
    }
}

/// Several sources presented as one (sharded checkpoints, or files the user lists together).
/// Tensor names must be unique across the parts.
pub struct CombinedWeights {
    label: PathBuf,
    parts: Vec<Box<dyn WeightSource>>,
    /// name -> index into `parts`, plus the names in order.
    owner: HashMap<String, usize>,
    order: Vec<String>,
}

impl CombinedWeights {
    /// Combines `parts`; fails if two parts provide the same tensor.
    pub fn new(label: impl Into<PathBuf>, parts: Vec<Box<dyn WeightSource>>) -> Result<CombinedWeights, FormatError> {
        let mut owner: HashMap<String, usize> = HashMap::new();
        let mut order = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            for n in p.names() {
                if let Some(&j) = owner.get(&n) {
                    return Err(FormatError::DuplicateTensor {
                        key: n,
                        first: parts[j].path().to_path_buf(),
                        second: p.path().to_path_buf(),
                    });
                }
                owner.insert(n.clone(), i);
                order.push(n);
            }
        }
        Ok(CombinedWeights { label: label.into(), parts, owner, order })
    }

    pub fn parts(&self) -> &[Box<dyn WeightSource>] {
        &self.parts
    }
}

impl WeightSource for CombinedWeights {
    fn names(&self) -> Vec<String> {
        self.order.clone()
    }
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.parts.get(*self.owner.get(name)?)?.info(name)
    }
    fn read_into(&self, name: &str, dst: &mut [u8]) -> Result<(), FormatError> {
        match self.owner.get(name).and_then(|&i| self.parts.get(i)) {
            Some(p) => p.read_into(name, dst),
            None => self.load(name).map(|_| ()),
        }
    }

    fn load(&self, name: &str) -> Result<TensorBytes, FormatError> {
        match self.owner.get(name).and_then(|&i| self.parts.get(i)) {
            Some(p) => p.load(name),
            None => {
                // A part may know the key as an unloadable tensor: let it explain.
                for p in &self.parts {
                    if p.report().problems.iter().any(|pr| pr.key == name) {
                        return p.load(name);
                    }
                }
                Err(FormatError::TensorNotFound {
                    path: self.label.clone(),
                    key: name.to_string(),
                    hint: not_found_hint(&self.order, name),
                })
            }
        }
    }
    fn path(&self) -> &Path {
        &self.label
    }
    fn report(&self) -> SourceReport {
        let mut r = SourceReport::default();
        for p in &self.parts {
            r.merge(p.report());
        }
        r
    }
}
