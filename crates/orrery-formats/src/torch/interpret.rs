//! Recognising torch's globals (tensor rebuild functions, storage types, dtypes) and
//! interpreting a rebuild call into a tensor descriptor: dtype, strided layout and the
//! storage it views, checked against the archive.

use orrery_ir::DType;

use super::flatten::Flatten;
use super::Problem;
use crate::layout::StridedLayout;
use crate::pickle::{Id, Node};

const REBUILD_V1: &str = "torch._utils._rebuild_tensor";
const REBUILD_V2: &str = "torch._utils._rebuild_tensor_v2";
const REBUILD_V3: &str = "torch._utils._rebuild_tensor_v3";
const REBUILD_PARAM: &str = "torch._utils._rebuild_parameter";
const REBUILD_PARAM_STATE: &str = "torch._utils._rebuild_parameter_with_state";
const REBUILD_FROM_TYPE: &str = "torch._tensor._rebuild_from_type_v2";
pub(super) const ORDERED_DICT: &str = "collections.OrderedDict";

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

pub(super) fn is_tensor_func(g: &str) -> bool {
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
pub(super) fn is_known_global(g: &str) -> bool {
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

type Parsed = Result<(DType, StridedLayout, String, String, usize), Problem>;

// Tensor constructors are interpreted during the walk: they register storages and look them
// up in the archive.
impl Flatten<'_> {
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
    pub(super) fn tensor_from(&mut self, func: Id, args: Id, depth: usize) -> Parsed {
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
