//! Writing safetensors files (the `orrery run` outputs).

use crate::error::FormatError;
use orrery_ir::DType;
use std::io::Write;
use std::path::Path;

/// One tensor to write: its little-endian, row-major element bytes.
pub struct TensorToWrite<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

/// The header name of a dtype (`F32`, `BF16`, `BOOL`, …).
fn header_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::U8 => "U8",
        DType::Bool => "BOOL",
    }
}

/// Writes `tensors` (in the given order) as a safetensors file, atomically: the bytes go to
/// `<path>.partial` in the same folder, which is renamed over `path` only once complete, so a
/// failure never leaves a truncated file or destroys an existing one.
pub fn write_safetensors(path: &Path, tensors: &[TensorToWrite]) -> Result<(), FormatError> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let expected = t.shape.iter().product::<usize>() * t.dtype.size_bytes();
        if t.data.len() != expected {
            return Err(FormatError::InvalidTensor {
                path: path.to_path_buf(),
                key: t.name.to_string(),
                detail: format!("{} bytes do not hold {}{:?} ({expected} bytes)", t.data.len(), t.dtype, t.shape),
            });
        }
        let entry = serde_json::json!({
            "dtype": header_dtype(t.dtype),
            "shape": t.shape,
            "data_offsets": [offset, offset + t.data.len()],
        });
        if header.insert(t.name.to_string(), entry).is_some() {
            return Err(FormatError::InvalidTensor {
                path: path.to_path_buf(),
                key: t.name.to_string(),
                detail: "listed twice".into(),
            });
        }
        offset += t.data.len();
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while !(8 + header.len()).is_multiple_of(8) {
        header.push(b' ');
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".partial");
    let tmp = std::path::PathBuf::from(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(&header)?;
        for t in tensors {
            f.write_all(t.data)?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        FormatError::io(path, "writing", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_read_back() {
        let dir = std::env::temp_dir().join(format!("orrery-st-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let a: Vec<u8> = [1.5f32, -2.0, 3.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b = [1u8, 0];
        let tensors = [
            TensorToWrite { name: "a", dtype: DType::F32, shape: &[3], data: &a },
            TensorToWrite { name: "mask", dtype: DType::Bool, shape: &[1, 2], data: &b },
        ];
        write_safetensors(&path, &tensors).unwrap();
        let src = crate::open_weights(&path).unwrap();
        assert_eq!(src.load("a").unwrap().to_f64_vec(), vec![1.5, -2.0, 3.25]);
        assert_eq!(src.info("mask").unwrap().shape, vec![1, 2]);
        let bad = [TensorToWrite { name: "a", dtype: DType::F32, shape: &[4], data: &a }];
        assert!(write_safetensors(&path, &bad).is_err());
        // The earlier file is untouched by the failed write.
        assert_eq!(crate::open_weights(&path).unwrap().names().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
