//! Reading input tensors and writing outputs as safetensors.

use anyhow::{Context, Result};
use orrery_cpu::CpuTensor;
use orrery_formats::{write_safetensors, TensorToWrite};
use orrery_ir::DType;
use orrery_runtime::tensor_from_source;
use std::collections::HashMap;
use std::path::Path;

/// Every tensor of a safetensors file, in name order.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, CpuTensor)>> {
    let source =
        orrery_formats::open_weights(path).with_context(|| format!("reading inputs from {}", path.display()))?;
    let mut names = source.names();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let t = tensor_from_source(source.as_ref(), &name)
                .map_err(|e| anyhow::anyhow!("{}: tensor `{name}`: {e}", path.display()))?;
            Ok((name, t))
        })
        .collect()
}

/// Writes `tensors` as f32 safetensors in name order, atomically (see
/// [`orrery_formats::write_safetensors`]).
pub fn write_f32_safetensors(path: &Path, tensors: &HashMap<String, CpuTensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let data: Vec<(Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let t = &tensors[*n];
            (t.shape().to_vec(), t.to_f32_vec().iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let list: Vec<TensorToWrite> = names
        .iter()
        .zip(&data)
        .map(|(name, (shape, bytes))| TensorToWrite { name, dtype: DType::F32, shape, data: bytes })
        .collect();
    Ok(write_safetensors(path, &list)?)
}
