//! Resolving weight names to tensors.

use orrery_cpu::CpuTensor;
use orrery_ir::TensorType;

/// Supplies weights by name. Implementations must return exactly the requested type (the
/// model builder declared it from the checkpoint's own dtype and shape).
pub trait WeightResolver: Send + Sync {
    fn resolve(&self, name: &str, expected: &TensorType) -> Result<CpuTensor, String>;
}

/// Weights read from checkpoint files through `orrery-formats`, zero-copy where the file allows.
/// A name may denote a slice of a stored tensor (`name@rows[a:b]`, `name@cols[a:b]`, see
/// `orrery_formats::slice`): only the slice's bytes are read. `bytes_read` counts the bytes of
/// every tensor or slice handed out, which is how a sharded run shows what each rank touched.
pub struct FormatWeights {
    source: Box<dyn orrery_formats::WeightSource>,
    bytes_read: std::sync::atomic::AtomicU64,
}

impl FormatWeights {
    pub fn new(source: Box<dyn orrery_formats::WeightSource>) -> FormatWeights {
        FormatWeights { source, bytes_read: Default::default() }
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
        Ok(t)
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

/// Weights held in memory, by name (tests, and weights computed rather than loaded).
#[derive(Default)]
pub struct MemoryWeights {
    tensors: std::collections::HashMap<String, CpuTensor>,
}

impl MemoryWeights {
    pub fn new() -> MemoryWeights {
        MemoryWeights::default()
    }

    pub fn insert(&mut self, name: &str, t: CpuTensor) {
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
}
