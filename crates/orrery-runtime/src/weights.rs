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
            return Err(format!(
                "the checkpoint has {}{:?}, the model expects {expected}",
                info.dtype, info.shape
            ));
        }
        let bytes = self.source.load(name).map_err(|e| e.to_string())?;
        bytes
            .into_tensor(info.dtype, info.shape.clone())
            .ok_or_else(|| format!("byte length does not match {}{:?}", info.dtype, info.shape))
    }
}
