//! Reading input tensors and writing outputs as safetensors.

use anyhow::{Context, Result};
use orrery_cpu::CpuTensor;
use orrery_runtime::tensor_from_source;
use std::collections::HashMap;
use std::io::Write;
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

/// Writes `tensors` as f32 safetensors, atomically: a temporary file in the same folder is
/// renamed over `path` only once complete, so a failure never leaves a truncated file.
pub fn write_f32_safetensors(path: &Path, tensors: &HashMap<String, CpuTensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut blobs = Vec::with_capacity(names.len());
    for name in &names {
        let t = &tensors[*name];
        let data: Vec<u8> = t.to_f32_vec().iter().flat_map(|v| v.to_le_bytes()).collect();
        header.insert(
            (*name).clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape(), "data_offsets": [offset, offset + data.len()]}),
        );
        offset += data.len();
        blobs.push(data);
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    // Pad so the data starts 8-byte aligned, as the reference implementation does.
    while (8 + header.len()) % 8 != 0 {
        header.push(b' ');
    }
    let tmp = path.with_extension("safetensors.partial");
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(&header)?;
        for b in &blobs {
            f.write_all(b)?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write()
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            e
        })
        .with_context(|| format!("writing {}", path.display()))
}
