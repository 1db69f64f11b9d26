//! Writing safetensors files (the `orrery run` outputs).

use crate::error::FormatError;
use orrery_ir::DType;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

/// A file's leading bytes (length + JSON header) and each tensor's (offset, length) in its data.
type Header = (Vec<u8>, Vec<(u64, u64)>);

/// The header bytes (padded so the data starts 8-byte aligned, as the reference writer does)
/// for tensors of the given dtypes and shapes laid out in order, and the byte range of each.
fn header(path: &Path, tensors: &[(&str, DType, &[usize])]) -> Result<Header, FormatError> {
    let mut map = serde_json::Map::new();
    let mut ranges = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for &(name, dtype, shape) in tensors {
        let bytes = shape.iter().product::<usize>() as u64 * dtype.size_bytes() as u64;
        let entry = serde_json::json!({
            "dtype": header_dtype(dtype),
            "shape": shape,
            "data_offsets": [offset, offset + bytes],
        });
        if map.insert(name.to_string(), entry).is_some() {
            return Err(FormatError::InvalidTensor {
                path: path.to_path_buf(),
                key: name.to_string(),
                detail: "listed twice".into(),
            });
        }
        ranges.push((offset, bytes));
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(map).to_string().into_bytes();
    while !(8 + header.len()).is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    Ok((out, ranges))
}

/// `<path>.partial`, where a file is written before it is renamed over `path`.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Writes `tensors` (in the given order) as a safetensors file, atomically: the bytes go to
/// `<path>.partial` in the same folder, which is renamed over `path` only once complete, so a
/// failure never leaves a truncated file or destroys an existing one.
pub fn write_safetensors(path: &Path, tensors: &[TensorToWrite]) -> Result<(), FormatError> {
    for t in tensors {
        let expected = t.shape.iter().product::<usize>() * t.dtype.size_bytes();
        if t.data.len() != expected {
            return Err(FormatError::InvalidTensor {
                path: path.to_path_buf(),
                key: t.name.to_string(),
                detail: format!("{} bytes do not hold {}{:?} ({expected} bytes)", t.data.len(), t.dtype, t.shape),
            });
        }
    }
    let list: Vec<(&str, DType, &[usize])> = tensors.iter().map(|t| (t.name, t.dtype, t.shape)).collect();
    let (header, _) = header(path, &list)?;
    let tmp = partial_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(File::create(&tmp)?);
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

/// A safetensors file written piece by piece, for results too large to hold (a decoded video
/// streamed out chunk by chunk). The header is written first, from the declared tensors; the
/// data arrives in any order through [`StreamingSafetensors::write`]. Like
/// [`write_safetensors`] it writes `<path>.partial` and renames it over `path` in
/// [`StreamingSafetensors::finish`]; dropped unfinished, it removes the partial file.
pub struct StreamingSafetensors {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    data_start: u64,
    /// Name and byte range (within the data) of each tensor.
    ranges: Vec<(String, u64, u64)>,
}

impl StreamingSafetensors {
    /// Creates `<path>.partial` holding the header for `tensors` and room for their data.
    pub fn create(path: &Path, tensors: &[(&str, DType, &[usize])]) -> Result<StreamingSafetensors, FormatError> {
        let (header, ranges) = header(path, tensors)?;
        let tmp = partial_path(path);
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        let file = (|| -> std::io::Result<File> {
            let mut f = File::create(&tmp)?;
            f.write_all(&header)?;
            f.set_len(header.len() as u64 + total)?;
            Ok(f)
        })()
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            FormatError::io(path, "creating", e)
        })?;
        let ranges = tensors.iter().zip(ranges).map(|(t, (start, len))| (t.0.to_string(), start, len)).collect();
        Ok(StreamingSafetensors {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
            data_start: header.len() as u64,
            ranges,
        })
    }

    /// Writes `bytes` into tensor `name` starting `offset` bytes into its data.
    pub fn write(&mut self, name: &str, offset: u64, bytes: &[u8]) -> Result<(), FormatError> {
        let Some(&(_, start, len)) = self.ranges.iter().find(|r| r.0 == name) else {
            return Err(FormatError::InvalidTensor {
                path: self.path.clone(),
                key: name.to_string(),
                detail: "not declared when the file was created".into(),
            });
        };
        if offset.checked_add(bytes.len() as u64).is_none_or(|end| end > len) {
            return Err(FormatError::InvalidTensor {
                path: self.path.clone(),
                key: name.to_string(),
                detail: format!("{} bytes at offset {offset} overrun its {len} bytes", bytes.len()),
            });
        }
        let file = self.file.as_mut().expect("open until finish");
        file.seek(SeekFrom::Start(self.data_start + start + offset))
            .and_then(|_| file.write_all(bytes))
            .map_err(|e| FormatError::io(&self.path, "writing", e))
    }

    /// Flushes the file to disk and renames it over the final path.
    pub fn finish(mut self) -> Result<(), FormatError> {
        let file = self.file.take().expect("open until finish");
        let done = file.sync_all().and_then(|_| std::fs::rename(&self.tmp, &self.path));
        done.map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            FormatError::io(&self.path, "writing", e)
        })
    }
}

impl Drop for StreamingSafetensors {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
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

    #[test]
    fn streamed_files_read_back_and_unfinished_ones_vanish() {
        let dir = std::env::temp_dir().join(format!("orrery-st-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("video.safetensors");
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut w =
            StreamingSafetensors::create(&path, &[("x", DType::F32, &[2, 2]), ("y", DType::F32, &[1])]).unwrap();
        // Out of order, as chunks of a middle axis arrive.
        w.write("x", 8, &bytes(&[3.0, 4.0])).unwrap();
        w.write("y", 0, &bytes(&[9.0])).unwrap();
        w.write("x", 0, &bytes(&[1.0, 2.0])).unwrap();
        assert!(w.write("x", 12, &bytes(&[5.0, 6.0])).is_err(), "past the tensor's end");
        assert!(w.write("z", 0, &bytes(&[1.0])).is_err(), "undeclared");
        assert!(!path.exists(), "only the partial file exists before finish");
        w.finish().unwrap();
        let src = crate::open_weights(&path).unwrap();
        assert_eq!(src.load("x").unwrap().to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(src.load("y").unwrap().to_f64_vec(), vec![9.0]);

        // Dropped before finish (a failed run): the earlier file stays, no partial file is left.
        let w = StreamingSafetensors::create(&path, &[("x", DType::F32, &[3])]).unwrap();
        drop(w);
        assert_eq!(crate::open_weights(&path).unwrap().names().len(), 2);
        assert!(!partial_path(&path).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
