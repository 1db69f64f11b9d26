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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orrery_ir::DType;

use crate::error::FormatError;
use crate::layout::StridedLayout;
use crate::pickle::{unpickle, Id, Node, Pickle};
use crate::source::{
    map_file, not_found_hint, SharedBytes, SourceReport, TensorBytes, TensorData, TensorInfo, TensorProblem,
    UnknownGlobal, WeightSource,
};
use crate::zip::{ZipArchive, ZipError};

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
        let mut fl = Flatten {
            pk: &pickle,
            archive: &archive,
            prefix: &prefix,
            gather_limit,
            visits: 0,
            tensors: Vec::new(),
            index: HashMap::new(),
            problems: Vec::new(),
            problem_index: HashMap::new(),
            unknown: BTreeMap::new(),
            storages: HashMap::new(),
        };
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

// ---------------------------------------------------------------------------------------
// Interpretation of the pickle tree.

const REBUILD_V1: &str = "torch._utils._rebuild_tensor";
const REBUILD_V2: &str = "torch._utils._rebuild_tensor_v2";
const REBUILD_V3: &str = "torch._utils._rebuild_tensor_v3";
const REBUILD_PARAM: &str = "torch._utils._rebuild_parameter";
const REBUILD_PARAM_STATE: &str = "torch._utils._rebuild_parameter_with_state";
const REBUILD_FROM_TYPE: &str = "torch._tensor._rebuild_from_type_v2";
const ORDERED_DICT: &str = "collections.OrderedDict";
/// How reports name the checkpoint's root object when it is not a container.
pub const ROOT_KEY: &str = "<root>";

/// Tensor constructors torch has but orrery cannot represent.
const UNSUPPORTED_TENSOR_FUNCS: &[&str] = &[
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_sparse_csr_tensor",
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_wrapper_subclass",
    "torch._utils._rebuild_nested_tensor",
    "torch._utils._rebuild_xla_tensor",
    "torch._utils._rebuild_mps_tensor",
];

fn is_tensor_func(g: &str) -> bool {
    matches!(g, REBUILD_V1 | REBUILD_V2 | REBUILD_V3 | REBUILD_PARAM | REBUILD_PARAM_STATE | REBUILD_FROM_TYPE)
        || UNSUPPORTED_TENSOR_FUNCS.contains(&g)
}

/// Storage types: `Ok(Some((dtype, element size)))` for supported ones, `Ok(None)` + name for
/// torch storage types we cannot represent, `Err` for anything that is not a torch storage.
enum StorageKind {
    Typed(DType),
    Untyped,
    Unsupported(&'static str),
}

fn storage_kind(g: &str) -> Option<StorageKind> {
    use StorageKind::*;
    Some(match g {
        "torch.FloatStorage" => Typed(DType::F32),
        "torch.HalfStorage" => Typed(DType::F16),
        "torch.BFloat16Storage" => Typed(DType::BF16),
        "torch.LongStorage" => Typed(DType::I64),
        "torch.IntStorage" => Typed(DType::I32),
        "torch.ByteStorage" => Typed(DType::U8),
        "torch.BoolStorage" => Typed(DType::Bool),
        "torch.storage.UntypedStorage" | "torch.UntypedStorage" => Untyped,
        "torch.DoubleStorage" => Unsupported("float64"),
        "torch.CharStorage" => Unsupported("int8"),
        "torch.ShortStorage" => Unsupported("int16"),
        "torch.ComplexFloatStorage" => Unsupported("complex64"),
        "torch.ComplexDoubleStorage" => Unsupported("complex128"),
        "torch.QInt8Storage" => Unsupported("qint8"),
        "torch.QUInt8Storage" => Unsupported("quint8"),
        "torch.QInt32Storage" => Unsupported("qint32"),
        "torch.QUInt4x2Storage" => Unsupported("quint4x2"),
        "torch.QUInt2x4Storage" => Unsupported("quint2x4"),
        _ => return None,
    })
}

/// `torch.<dtype>` globals (as passed to `_rebuild_tensor_v3`).
fn torch_dtype(g: &str) -> Option<Result<DType, String>> {
    let name = g.strip_prefix("torch.")?;
    Some(match name {
        "float32" | "float" => Ok(DType::F32),
        "float16" | "half" => Ok(DType::F16),
        "bfloat16" => Ok(DType::BF16),
        "int64" | "long" => Ok(DType::I64),
        "int32" | "int" => Ok(DType::I32),
        "uint8" => Ok(DType::U8),
        "bool" => Ok(DType::Bool),
        "float64" | "double" | "int8" | "int16" | "short" | "uint16" | "uint32" | "uint64" | "complex64"
        | "complex128" | "cfloat" | "cdouble" | "float8_e4m3fn" | "float8_e5m2" | "float8_e4m3fnuz"
        | "float8_e5m2fnuz" | "float8_e8m0fnu" | "float4_e2m1fn_x2" | "quint8" | "qint8" | "qint32" | "bits8"
        | "bits16" => Err(name.to_string()),
        _ => return None,
    })
}

/// Globals that are interpreted (or harmless and understood) and so not reported as unknown.
fn is_known_global(g: &str) -> bool {
    is_tensor_func(g)
        || storage_kind(g).is_some()
        || torch_dtype(g).is_some()
        || matches!(
            g,
            ORDERED_DICT
                | "torch.Size"
                | "torch.device"
                | "torch.Tensor"
                | "torch.nn.parameter.Parameter"
                | "torch.nn.Parameter"
        )
}

struct Flatten<'a> {
    pk: &'a Pickle,
    archive: &'a ZipArchive,
    prefix: &'a str,
    gather_limit: usize,
    visits: usize,
    tensors: Vec<TorchTensor>,
    index: HashMap<String, usize>,
    problems: Vec<(String, Problem)>,
    problem_index: HashMap<String, usize>,
    /// global -> keys referencing it
    unknown: BTreeMap<String, Vec<String>>,
    /// storage key -> (storage type, bytes)
    storages: HashMap<String, (String, usize)>,
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

type Parsed = Result<(DType, StridedLayout, String, String, usize), Problem>;

impl<'a> Flatten<'a> {
    /// The node, borrowed from the pickle (not from `self`, so walking needs no clones).
    fn node(&self, id: Id) -> &'a Node {
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

    fn walk(&mut self, id: Id, key: String, depth: usize) -> Result<(), String> {
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

    fn first_unknown_global(&self, id: Id) -> Option<String> {
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

    fn int_arg(&self, id: Id, what: &str) -> Result<usize, Problem> {
        match self.node(id) {
            Node::Int(i) => usize::try_from(*i)
                .map_err(|_| Problem::Invalid(format!("{what} is negative ({i}); corrupt checkpoint"))),
            Node::BigInt(s) => Err(Problem::Invalid(format!("{what} {s} is out of range; corrupt checkpoint"))),
            _ => Err(Problem::Invalid(format!("{what} is not an integer; corrupt checkpoint"))),
        }
    }

    fn int_list(&self, id: Id, what: &str) -> Result<Vec<usize>, Problem> {
        let items = match self.node(id) {
            Node::Tuple(v) | Node::List(v) => v.clone(),
            // torch.Size((..)) in very old checkpoints
            Node::Call(c) if self.pk.global_name(c.func).as_deref() == Some("torch.Size") => {
                match self.pk.seq(c.args).and_then(|a| a.first()).and_then(|&a| self.pk.seq(a)) {
                    Some(v) => v.to_vec(),
                    None => return Err(Problem::Invalid(format!("{what} is a malformed torch.Size"))),
                }
            }
            _ => return Err(Problem::Invalid(format!("{what} is not a tuple of integers; corrupt checkpoint"))),
        };
        items.iter().map(|&i| self.int_arg(i, what)).collect()
    }

    /// Interprets `func(*args)` as a tensor: (dtype, layout, storage key, entry, storage bytes).
    fn tensor_from(&mut self, func: Id, args: Id, depth: usize) -> Parsed {
        if depth > 8 {
            return Err(Problem::Invalid("tensor wrappers nested too deeply".into()));
        }
        let Some(g) = self.pk.global_name(func) else {
            return Err(match self.first_unknown_global(func) {
                Some(g) => Problem::UnknownGlobal(g),
                None => Problem::Invalid("tensor constructor is not a global; corrupt checkpoint".into()),
            });
        };
        let a: Vec<Id> = match self.pk.seq(args) {
            Some(a) => a.to_vec(),
            None => return Err(Problem::Invalid(format!("arguments of {g} are not a tuple; corrupt checkpoint"))),
        };
        let need = |n: usize| -> Result<(), Problem> {
            if a.len() < n {
                Err(Problem::Invalid(format!(
                    "{g} has {} arguments, expected at least {n}; corrupt checkpoint",
                    a.len()
                )))
            } else {
                Ok(())
            }
        };
        match g.as_str() {
            REBUILD_V1 | REBUILD_V2 => {
                need(if g == REBUILD_V1 { 4 } else { 6 })?;
                let (kind, key, entry, storage_bytes) = self.storage(a[0])?;
                let dtype = match kind {
                    StorageKind::Typed(d) => d,
                    StorageKind::Untyped => DType::U8,
                    StorageKind::Unsupported(n) => return Err(Problem::UnsupportedDtype(n.to_string())),
                };
                let layout = self.layout(a[1], a[2], a[3])?;
                self.check_bounds(&layout, dtype, &key, storage_bytes)?;
                Ok((dtype, layout, key, entry, storage_bytes))
            }
            REBUILD_V3 => {
                need(7)?;
                let (kind, key, entry, storage_bytes) = self.storage(a[0])?;
                if let StorageKind::Unsupported(n) = kind {
                    return Err(Problem::UnsupportedDtype(n.to_string()));
                }
                let dtype = match self.pk.global_name(a[6]) {
                    Some(dg) => match torch_dtype(&dg) {
                        Some(Ok(d)) => d,
                        Some(Err(n)) => return Err(Problem::UnsupportedDtype(n)),
                        None => return Err(Problem::UnknownGlobal(dg)),
                    },
                    None => {
                        return Err(Problem::Invalid("dtype argument is not a torch dtype; corrupt checkpoint".into()))
                    }
                };
                let layout = self.layout(a[1], a[2], a[3])?;
                self.check_bounds(&layout, dtype, &key, storage_bytes)?;
                Ok((dtype, layout, key, entry, storage_bytes))
            }
            REBUILD_PARAM | REBUILD_PARAM_STATE => {
                need(1)?;
                match self.node(a[0]) {
                    Node::Call(c) => self.tensor_from(c.func, c.args, depth + 1),
                    _ => Err(Problem::Invalid("parameter does not wrap a tensor; corrupt checkpoint".into())),
                }
            }
            REBUILD_FROM_TYPE => {
                // (func, new_type, args, state)
                need(3)?;
                match self.pk.global_name(a[1]) {
                    Some(t)
                        if matches!(
                            t.as_str(),
                            "torch.Tensor" | "torch.nn.parameter.Parameter" | "torch.nn.Parameter"
                        ) =>
                    {
                        self.tensor_from(a[0], a[2], depth + 1)
                    }
                    Some(t) => Err(Problem::UnknownGlobal(t)),
                    None => Err(Problem::Invalid("tensor subclass type is not a global; corrupt checkpoint".into())),
                }
            }
            other if UNSUPPORTED_TENSOR_FUNCS.contains(&other) => Err(Problem::Invalid(format!(
                "it is built by {other} (quantized, sparse, nested, meta or numpy-backed tensor), which \
                 orrery does not support; save a dense tensor instead"
            ))),
            other => Err(Problem::UnknownGlobal(other.to_string())),
        }
    }

    fn layout(&self, offset: Id, size: Id, stride: Id) -> Result<StridedLayout, Problem> {
        let offset = self.int_arg(offset, "storage offset")?;
        let shape = self.int_list(size, "size")?;
        let stride = self.int_list(stride, "stride")?;
        if shape.len() != stride.len() {
            return Err(Problem::Invalid(format!(
                "size has {} dimensions but stride has {}; corrupt checkpoint",
                shape.len(),
                stride.len()
            )));
        }
        Ok(StridedLayout { shape, stride, offset })
    }

    fn check_bounds(&self, l: &StridedLayout, dtype: DType, key: &str, storage_bytes: usize) -> Result<(), Problem> {
        let elem = dtype.size_bytes();
        let need = l.storage_extent().and_then(|e| e.checked_mul(elem));
        match need {
            Some(n) if n <= storage_bytes => Ok(()),
            Some(n) => Err(Problem::Invalid(format!(
                "view (offset {}, size {:?}, stride {:?}) needs {n} bytes of storage '{key}', which holds \
                 only {storage_bytes}; corrupt checkpoint",
                l.offset, l.shape, l.stride
            ))),
            None => Err(Problem::Invalid(format!(
                "view (offset {}, size {:?}, stride {:?}) overflows; corrupt checkpoint",
                l.offset, l.shape, l.stride
            ))),
        }
    }

    /// Interprets a persistent id `('storage', type, key, location, numel)` and locates its
    /// archive entry. Returns (kind, key, entry name, storage bytes).
    fn storage(&mut self, id: Id) -> Result<(StorageKind, String, String, usize), Problem> {
        let Node::PersistentId(pid) = self.node(id) else {
            return Err(Problem::Invalid("storage argument is not a persistent id; corrupt checkpoint".into()));
        };
        let parts = match self.pk.seq(*pid) {
            Some(p) if p.len() >= 5 && self.pk.str(p[0]) == Some("storage") => p.to_vec(),
            _ => {
                return Err(Problem::Invalid(
                    "persistent id is not ('storage', type, key, location, numel); corrupt checkpoint".into(),
                ))
            }
        };
        let type_name = match self.pk.global_name(parts[1]) {
            Some(t) => t,
            None => return Err(Problem::Invalid("storage type is not a global; corrupt checkpoint".into())),
        };
        let kind = match storage_kind(&type_name) {
            Some(k) => k,
            None if type_name.starts_with("torch.") && type_name.ends_with("Storage") => {
                return Err(Problem::UnsupportedDtype(type_name))
            }
            None => return Err(Problem::UnknownGlobal(type_name)),
        };
        let key = match self.node(parts[2]) {
            Node::Str(s) => s.clone(),
            Node::Int(i) => i.to_string(),
            _ => return Err(Problem::Invalid("storage key is not a string; corrupt checkpoint".into())),
        };
        let numel = self.int_arg(parts[4], "storage element count")?;
        let elem = match kind {
            StorageKind::Typed(d) => d.size_bytes(),
            StorageKind::Untyped => 1,
            // Sizes are irrelevant: the tensor is refused anyway.
            StorageKind::Unsupported(_) => 1,
        };
        let bytes = numel
            .checked_mul(elem)
            .ok_or_else(|| Problem::Invalid(format!("storage '{key}' size overflows; corrupt checkpoint")))?;
        match self.storages.get(&key) {
            Some((t, b)) if *t != type_name || *b != bytes => {
                return Err(Problem::Invalid(format!(
                    "storage '{key}' is referenced both as {t} of {b} bytes and as {type_name} of {bytes} bytes; \
                     corrupt checkpoint"
                )))
            }
            Some(_) => {}
            None => {
                self.storages.insert(key.clone(), (type_name.clone(), bytes));
            }
        }
        let entry_name = format!("{}data/{key}", self.prefix);
        let Some(entry) = self.archive.find(&entry_name) else {
            return Err(Problem::Invalid(format!(
                "its storage entry '{entry_name}' is missing from the archive (truncated or corrupt checkpoint)"
            )));
        };
        if entry.method != 0 {
            return Err(Problem::Compressed { entry: entry_name, method: entry.method });
        }
        if entry.size < bytes as u64 {
            return Err(Problem::Invalid(format!(
                "storage entry '{entry_name}' has {} bytes but the checkpoint declares {bytes}; corrupt checkpoint",
                entry.size
            )));
        }
        Ok((kind, key, entry_name, bytes))
    }
}
