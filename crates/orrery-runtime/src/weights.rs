//! Resolving weight names to tensors.

use orrery_cpu::{CpuTensor, PackBudget, WeightPacks};
use orrery_ir::TensorType;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Supplies weights by name. Implementations must return exactly the requested type (the
/// model builder declared it from the checkpoint's own dtype and shape).
pub trait WeightResolver: Send + Sync {
    fn resolve(&self, name: &str, expected: &TensorType) -> Result<CpuTensor, String>;

    /// Bytes of the packed forms kept with this resolver's weights ([`default_pack_budget`]).
    fn packed_bytes(&self) -> u64 {
        0
    }

    /// The budget a session draws from to keep the values it computes from weights and
    /// constants alone between runs (see `Session`); none keeps nothing.
    fn derived_budget(&self) -> Option<Arc<PackBudget>> {
        None
    }
}

/// The budget resolvers draw their weights' packed forms from unless given another (one for
/// the whole process, so every model part shares it): `$ORRERY_PACK_BUDGET` (a size such as
/// `8GiB`; `0` packs nothing), else a quarter of the memory available when first asked
/// (Linux's `MemAvailable`; nothing is packed where it is unknown).
///
/// A packed weight is read by its products instead of being packed again on every call (see
/// `orrery_cpu::WeightPacks`): 6 bytes per value on CPUs with AMX, 4 elsewhere, kept as long
/// as the resolver. Results are the same bits with or without packs.
pub fn default_pack_budget() -> Arc<PackBudget> {
    process_pack_budget(|| available_memory().map_or(0, |bytes| bytes / 4))
}

/// Makes the process's pack budget ([`default_pack_budget`]) `bytes`: for a run that plans its
/// memory within a budget and leaves `bytes` of it beside its plan (0 when weights are
/// streamed through the rest), so that packs never take the budget's room. `$ORRERY_PACK_BUDGET`
/// still wins when set, and a budget already in use stays (the first one holds for the
/// process). Returns the budget in force.
pub fn plan_pack_budget(bytes: u64) -> Arc<PackBudget> {
    process_pack_budget(|| bytes)
}

/// The process's pack budget, made on first use: `$ORRERY_PACK_BUDGET`, else `fallback()`.
fn process_pack_budget(fallback: impl FnOnce() -> u64) -> Arc<PackBudget> {
    static BUDGET: OnceLock<Arc<PackBudget>> = OnceLock::new();
    BUDGET
        .get_or_init(|| {
            let setting = std::env::var("ORRERY_PACK_BUDGET").ok();
            let limit = pack_budget_limit(setting.as_deref(), fallback).unwrap_or_else(|(e, fallback)| {
                eprintln!("orrery: warning: ORRERY_PACK_BUDGET: {e}; keeping the default");
                fallback
            });
            PackBudget::new(limit)
        })
        .clone()
}

/// The pack budget for `$ORRERY_PACK_BUDGET` = `setting`, else `fallback()`; an unusable
/// setting gives its error and the fallback.
fn pack_budget_limit(setting: Option<&str>, fallback: impl FnOnce() -> u64) -> Result<u64, (String, u64)> {
    match setting.map(str::trim) {
        Some("0") => Ok(0),
        Some(v) if !v.is_empty() => crate::parse_byte_size(v).map_err(|e| (e, fallback())),
        _ => Ok(fallback()),
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Each weight's packs, by name, kept across the sessions that share a resolver.
struct PackTable {
    /// The budget given, or none: the process's ([`default_pack_budget`]), taken when the first
    /// weight is resolved, so that a run planning its memory can set it
    /// ([`plan_pack_budget`]) after making its resolvers.
    budget: Option<Arc<PackBudget>>,
    by_name: Mutex<HashMap<String, Arc<WeightPacks>>>,
}

impl PackTable {
    fn new(budget: Option<Arc<PackBudget>>) -> PackTable {
        PackTable { budget, by_name: Mutex::new(HashMap::new()) }
    }

    fn budget(&self) -> Arc<PackBudget> {
        self.budget.clone().unwrap_or_else(default_pack_budget)
    }

    /// `t` carrying the packs of weight `name` (made empty on its first resolve; a file's
    /// weight keeps its bytes while the resolver lives).
    fn attach(&self, name: &str, t: CpuTensor) -> CpuTensor {
        let mut by_name = self.by_name.lock().expect("pack table poisoned");
        let packs = by_name.entry(name.to_string()).or_insert_with(|| WeightPacks::new(&self.budget()));
        t.with_packs(packs.clone())
    }

    /// `t`, a new value of weight `name`, carrying new packs.
    fn replace(&self, name: &str, t: CpuTensor) -> CpuTensor {
        let packs = WeightPacks::new(&self.budget());
        self.by_name.lock().expect("pack table poisoned").insert(name.to_string(), packs.clone());
        t.with_packs(packs)
    }

    fn bytes(&self) -> u64 {
        let by_name = self.by_name.lock().expect("pack table poisoned");
        by_name.values().map(|p| p.bytes()).sum()
    }
}

/// Weights read from checkpoint files through `orrery-formats`, zero-copy where the file allows.
/// A name may denote a slice of a stored tensor (`name@rows[a:b]`, `name@cols[a:b]`, see
/// `orrery_formats::slice`): only the slice's bytes are read. `bytes_read` counts the bytes of
/// every tensor or slice handed out, which is how a sharded run shows what each rank touched.
///
/// Each weight keeps its packed forms across resolves (and so across the sessions sharing this
/// resolver), within [`default_pack_budget`] or the budget given.
pub struct FormatWeights {
    source: Box<dyn orrery_formats::WeightSource>,
    bytes_read: std::sync::atomic::AtomicU64,
    packs: PackTable,
}

impl FormatWeights {
    pub fn new(source: Box<dyn orrery_formats::WeightSource>) -> FormatWeights {
        FormatWeights { source, bytes_read: Default::default(), packs: PackTable::new(None) }
    }

    /// [`FormatWeights::new`] drawing packs from `budget`.
    pub fn with_pack_budget(source: Box<dyn orrery_formats::WeightSource>, budget: Arc<PackBudget>) -> FormatWeights {
        FormatWeights { source, bytes_read: Default::default(), packs: PackTable::new(Some(budget)) }
    }

    pub fn source(&self) -> &dyn orrery_formats::WeightSource {
        self.source.as_ref()
    }

    /// The metadata of a weight: a stored tensor or a slice of one.
    pub fn info(&self, name: &str) -> Option<orrery_formats::TensorInfo> {
        orrery_formats::tensor_info(self.source.as_ref(), name)
    }

    /// Copies a weight's bytes (a tensor or a slice) into `dst`, exactly its length.
    pub fn read_into(&self, name: &str, dst: &mut [u8]) -> Result<(), orrery_formats::FormatError> {
        orrery_formats::read_tensor_into(self.source.as_ref(), name, dst)?;
        self.count(dst.len());
        Ok(())
    }

    /// Bytes of the weights (or slices) resolved or read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count(&self, bytes: usize) {
        self.bytes_read.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// A slice's tensor: rows are a zero-copy window of the stored bytes where they are
    /// mapped; columns (one range per row) are gathered.
    fn slice_tensor(
        &self,
        slice: &orrery_formats::TensorSlice,
        info: &orrery_formats::TensorInfo,
    ) -> Result<CpuTensor, String> {
        let base = self.source.info(&slice.base).ok_or("its tensor is not in the checkpoint")?;
        let ranges = slice.byte_ranges(&base);
        if let ([range], true) = (ranges.as_slice(), base.zero_copy) {
            let bytes = self.source.load(&slice.base).map_err(|e| e.to_string())?;
            let (owner, start, _) = bytes.into_shared();
            return CpuTensor::from_mapped(info.dtype, info.shape.clone(), owner, start + range.start, range.len())
                .ok_or_else(|| format!("{} bytes do not hold {}{:?}", range.len(), info.dtype, info.shape));
        }
        let mut bytes = vec![0u8; info.byte_len];
        orrery_formats::read_tensor_into(self.source.as_ref(), &slice.name(), &mut bytes).map_err(|e| e.to_string())?;
        let len = bytes.len();
        CpuTensor::from_mapped(info.dtype, info.shape.clone(), std::sync::Arc::new(bytes), 0, len)
            .ok_or_else(|| format!("{len} bytes do not hold {}{:?}", info.dtype, info.shape))
    }
}

impl WeightResolver for FormatWeights {
    fn resolve(&self, name: &str, expected: &TensorType) -> Result<CpuTensor, String> {
        let info = self.info(name).ok_or_else(|| "not found in the checkpoint".to_string())?;
        if info.dtype != expected.dtype || info.shape != expected.shape.dims() {
            return Err(format!("the checkpoint has {}{:?}, the model expects {expected}", info.dtype, info.shape));
        }
        let t = match orrery_formats::TensorSlice::parse(name).filter(|_| self.source.info(name).is_none()) {
            Some(slice) => self.slice_tensor(&slice, &info)?,
            None => tensor_from_source(self.source.as_ref(), name)?,
        };
        self.count(info.byte_len);
        Ok(self.packs.attach(name, t))
    }

    fn packed_bytes(&self) -> u64 {
        self.packs.bytes()
    }

    fn derived_budget(&self) -> Option<Arc<PackBudget>> {
        Some(self.packs.budget())
    }
}

/// Loads tensor `name` from `source` as a CPU tensor, zero-copy when the bytes are mapped and
/// aligned for the dtype.
pub fn tensor_from_source(source: &dyn orrery_formats::WeightSource, name: &str) -> Result<CpuTensor, String> {
    let bytes = source.load(name).map_err(|e| e.to_string())?;
    let (dtype, shape) = (bytes.dtype, bytes.shape.clone());
    let (owner, start, len) = bytes.into_shared();
    CpuTensor::from_mapped(dtype, shape.clone(), owner, start, len)
        .ok_or_else(|| format!("{} bytes do not hold {dtype}{shape:?}", len))
}

/// Weights held in memory, by name (tests, and weights computed rather than loaded), with
/// their packs drawn from [`default_pack_budget`] or the budget given.
pub struct MemoryWeights {
    tensors: HashMap<String, CpuTensor>,
    packs: PackTable,
}

impl Default for MemoryWeights {
    fn default() -> MemoryWeights {
        MemoryWeights { tensors: HashMap::new(), packs: PackTable::new(None) }
    }
}

impl MemoryWeights {
    pub fn new() -> MemoryWeights {
        MemoryWeights::default()
    }

    /// No weights yet; their packs drawn from `budget`.
    pub fn with_pack_budget(budget: Arc<PackBudget>) -> MemoryWeights {
        MemoryWeights { tensors: HashMap::new(), packs: PackTable::new(Some(budget)) }
    }

    pub fn insert(&mut self, name: &str, t: CpuTensor) {
        let t = self.packs.replace(name, t);
        self.tensors.insert(name.to_string(), t);
    }
}

impl WeightResolver for MemoryWeights {
    fn resolve(&self, name: &str, expected: &TensorType) -> Result<CpuTensor, String> {
        let t = self.tensors.get(name).ok_or_else(|| "not among the in-memory weights".to_string())?;
        if t.ty() != *expected {
            return Err(format!("held as {}, expected {expected}", t.ty()));
        }
        Ok(t.clone())
    }

    fn packed_bytes(&self) -> u64 {
        self.packs.bytes()
    }

    fn derived_budget(&self) -> Option<Arc<PackBudget>> {
        Some(self.packs.budget())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_ir::{DType, Op};

    #[test]
    fn the_pack_budget_comes_from_the_setting_or_the_fallback() {
        let quarter = || 2 << 30;
        assert_eq!(pack_budget_limit(None, quarter), Ok(2 << 30));
        assert_eq!(pack_budget_limit(Some(""), quarter), Ok(2 << 30));
        assert_eq!(pack_budget_limit(Some("512MiB"), quarter), Ok(512 << 20));
        assert_eq!(pack_budget_limit(Some(" 0 "), quarter), Ok(0));
        let (error, fallback) = pack_budget_limit(Some("lots"), quarter).unwrap_err();
        assert!(error.contains("`lots` is not a size"), "{error}");
        assert_eq!(fallback, 2 << 30);
    }

    /// A resolved weight carries packs that outlive the tensor handed out (the next resolve,
    /// by another session, finds the pack made by the first); a new value under the same name
    /// starts with none.
    #[test]
    fn a_weight_keeps_its_packs_across_resolves() {
        let (rows, k, n) = (64, 128, 96);
        let budget = PackBudget::new(1 << 30);
        let mut weights = MemoryWeights::with_pack_budget(budget.clone());
        let values: Vec<f32> = (0..n * k).map(|i| (i % 17) as f32 * 0.25 - 2.0).collect();
        weights.insert("w", CpuTensor::from_vec(vec![n, k], values.clone()));
        let ty = orrery_ir::TensorType::new(DType::F32, [n, k]);
        let x = CpuTensor::from_vec(vec![rows, k], (0..rows * k).map(|i| (i % 5) as f32).collect::<Vec<_>>());
        let out = orrery_ir::TensorType::new(DType::F32, [rows, n]);
        let first = weights.resolve("w", &ty).unwrap();
        orrery_cpu::execute(&Op::Linear { has_bias: false }, &[&x, &first], &out).unwrap();
        drop(first);
        let again = weights.resolve("w", &ty).unwrap();
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            assert!(weights.packed_bytes() >= (n * k * 4) as u64, "the product packed the weight");
        }
        assert_eq!(again.packs().unwrap().bytes(), weights.packed_bytes());
        assert_eq!(budget.used(), weights.packed_bytes());
        weights.insert("w", CpuTensor::from_vec(vec![n, k], values));
        assert_eq!(weights.resolve("w", &ty).unwrap().packs().unwrap().bytes(), 0);
        assert_eq!(weights.packed_bytes(), 0, "the old value's pack is no longer counted");
    }
}
