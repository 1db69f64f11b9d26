//! Resolving weight names to tensors.

use orrery_cpu::CpuTensor;
use orrery_ir::TensorType;

/// Supplies weights by name. Implementations must return exactly the requested type (the
/// model builder declared it from the checkpoint's own dtype and shape).
pub trait WeightResolver: Send + Sync {
    fn resolve(&self, name: &str, expected: &TensorType) -> Result<CpuTensor, String>;
}

/// Weights read from checkpoint files through `orrery-formats`, zero-copy where the file allows.
pub struct FormatWeights {
    source: Box<dyn orrery_formats::WeightSource>,
}

impl FormatWeights {
    pub fn new(source: Box<dyn orrery_formats::WeightSource>) -> FormatWeights {
        FormatWeights { source }
    }

    pub fn source(&self) -> &dyn orrery_formats::WeightSource {
        self.source.as_ref()
    }
}

impl WeightResolver for FormatWeights {
    fn resolve(&self, name: &str, expected: &TensorType) -> Result<CpuTensor, String> {
        let info = self.source.info(name).ok_or_else(|| "not found in the checkpoint".to_string())?;
        if info.dtype != expected.dtype || info.shape != expected.shape.dims() {
            return Err(format!("the checkpoint has {}{:?}, the model expects {expected}", info.dtype, info.shape));
        }
        tensor_from_source(self.source.as_ref(), name)
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
