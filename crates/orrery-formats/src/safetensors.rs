//! safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
//!
//! The header is untrusted, so it is validated completely before any tensor is handed out:
//! the length prefix against the file size (and a 100 MB cap, as upstream), JSON shape,
//! dtype names, every offset pair against the data section, overlaps between tensors, and
//! `numel * dtype size == end - begin`. After that, loading is a bounds-checked slice of the
//! memory map: zero copies.
//!
//! Tensors whose dtype is valid safetensors but unsupported by orrery (F64, I8, F8_*, …) do
//! not make the whole file unreadable; they are left out of `names()` and `load` explains
//! (see [`SafetensorsFile::report`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orrery_ir::DType;
use serde_json::Value;

use crate::error::FormatError;
use crate::source::{
    map_file, not_found_hint, SharedBytes, SourceReport, TensorBytes, TensorData, TensorInfo, TensorProblem,
    WeightSource,
};

/// Upper bound on the JSON header, as in the reference implementation.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor entry of a validated header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderEntry {
    pub name: String,
    /// The dtype string as written (`"BF16"`).
    pub dtype_name: String,
    /// The orrery dtype, or `None` if the (valid) safetensors dtype is unsupported.
    pub dtype: Option<DType>,
    pub shape: Vec<usize>,
    /// Offsets relative to the start of the data section (after the header).
    pub begin: usize,
    pub end: usize,
}

/// A fully validated safetensors header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Entries sorted by `begin` (file order).
    pub entries: Vec<HeaderEntry>,
    /// The `__metadata__` string map, sorted by key.
    pub metadata: Vec<(String, String)>,
    /// Absolute file offset of the data section.
    pub data_start: usize,
}

/// Size in bits of each dtype the safetensors format defines (`None`: not a safetensors dtype).
fn dtype_bits(name: &str) -> Option<u64> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

fn orrery_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// Parses and validates the header of a complete safetensors file held in `file`.
/// Returns a human-readable detail on failure (callers add the path).
pub fn parse_header(file: &[u8]) -> Result<Header, String> {
    let Some(len_bytes) = file.get(..8) else {
        return Err(format!(
            "file is {} bytes, shorter than the 8-byte header length prefix (truncated download?)",
            file.len()
        ));
    };
    let mut lb = [0u8; 8];
    lb.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(lb);
    let avail = (file.len() - 8) as u64;
    if n > MAX_HEADER_LEN {
        return Err(format!(
            "header length prefix {n} exceeds the {MAX_HEADER_LEN}-byte limit (corrupt or not a safetensors file)"
        ));
    }
    if n > avail {
        return Err(format!("header length prefix {n} exceeds the {avail} bytes after it (truncated download?)"));
    }
    if n < 2 {
        return Err(format!("header length {n} is too small to hold a JSON object"));
    }
    // n <= avail < usize::MAX, so these conversions and additions cannot overflow.
    let data_start = 8 + n as usize;
    let json = &file[8..data_start];
    if json.first() != Some(&b'{') {
        return Err("header does not start with '{' (not a safetensors file?)".to_string());
    }
    let root: Value = serde_json::from_slice(json).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let Value::Object(map) = root else {
        return Err("header JSON is not an object".to_string());
    };
    let data_len = file.len() - data_start;
    let mut entries = Vec::new();
    let mut metadata = Vec::new();
    for (name, v) in map {
        if name == "__metadata__" {
            let Value::Object(m) = v else {
                return Err("'__metadata__' must be an object of strings".to_string());
            };
            for (k, val) in m {
                match val {
                    Value::String(s) => metadata.push((k, s)),
                    other => return Err(format!("'__metadata__' value for '{k}' must be a string, found {other}")),
                }
            }
            continue;
        }
        entries.push(parse_entry(&name, v, data_len)?);
    }
    entries.sort_by_key(|a| (a.begin, a.end));
    // Overlap check: in begin order, every non-empty tensor must start at or after the end of
    // the furthest-reaching tensor before it.
    let mut reach: Option<(usize, &str)> = None;
    for e in &entries {
        if e.begin == e.end {
            continue;
        }
        if let Some((r, prev)) = reach {
            if e.begin < r {
                return Err(format!(
                    "tensor '{}' (bytes {}..{}) overlaps tensor '{prev}' (ends at {r})",
                    e.name, e.begin, e.end
                ));
            }
        }
        reach = Some((e.end, &e.name));
    }
    Ok(Header { entries, metadata, data_start })
}

fn parse_entry(name: &str, v: Value, data_len: usize) -> Result<HeaderEntry, String> {
    let Value::Object(obj) = v else {
        return Err(format!("entry for tensor '{name}' is not an object"));
    };
    let mut dtype_name = None;
    let mut shape = None;
    let mut offsets = None;
    for (k, val) in obj {
        match k.as_str() {
            "dtype" => dtype_name = Some(val),
            "shape" => shape = Some(val),
            "data_offsets" => offsets = Some(val),
            // Unknown fields are ignored, as by the reference implementation.
            _ => {}
        }
    }
    let dtype_name = match dtype_name {
        Some(Value::String(s)) => s,
        Some(_) => return Err(format!("tensor '{name}': 'dtype' is not a string")),
        None => return Err(format!("tensor '{name}' has no 'dtype'")),
    };
    let Some(bits) = dtype_bits(&dtype_name) else {
        return Err(format!(
            "tensor '{name}' has unknown dtype '{dtype_name}' (not a safetensors dtype; orrery supports F32, F16, BF16, I64, I32, U8, BOOL)"
        ));
    };
    let shape: Vec<usize> = match shape {
        Some(Value::Array(a)) => a
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| format!("tensor '{name}': 'shape' must be an array of non-negative integers"))?,
        Some(_) => return Err(format!("tensor '{name}': 'shape' is not an array")),
        None => return Err(format!("tensor '{name}' has no 'shape'")),
    };
    let (begin, end) = match offsets {
        Some(Value::Array(a)) if a.len() == 2 => match (a[0].as_u64(), a[1].as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(format!("tensor '{name}': 'data_offsets' must be two non-negative integers")),
        },
        Some(_) => return Err(format!("tensor '{name}': 'data_offsets' must be a [begin, end] pair")),
        None => return Err(format!("tensor '{name}' has no 'data_offsets'")),
    };
    if begin > end {
        return Err(format!("tensor '{name}': data_offsets [{begin}, {end}] has begin after end"));
    }
    if end > data_len as u64 {
        return Err(format!(
            "tensor '{name}': data_offsets [{begin}, {end}] reach past the {data_len}-byte data section (truncated file?)"
        ));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("tensor '{name}': element count of shape {shape:?} overflows"))?;
    let nbits =
        numel.checked_mul(bits).ok_or_else(|| format!("tensor '{name}': byte size of shape {shape:?} overflows"))?;
    let expected = nbits.div_ceil(8);
    if expected != end - begin {
        return Err(format!(
            "tensor '{name}': shape {shape:?} of {dtype_name} needs {expected} bytes but data_offsets [{begin}, {end}] span {}",
            end - begin
        ));
    }
    Ok(HeaderEntry {
        name: name.to_string(),
        dtype: orrery_dtype(&dtype_name),
        dtype_name,
        shape,
        // end <= data_len, a usize.
        begin: begin as usize,
        end: end as usize,
    })
}

/// A memory-mapped (or in-memory) safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: SharedBytes,
    header: Header,
    /// name -> index into `header.entries`.
    index: HashMap<String, usize>,
    names: Vec<String>,
    /// `path` is the file `bytes` maps (not just a label for bytes held in memory).
    on_disk: bool,
    /// Opened on the first `read_into` (streamed reads bypass the map).
    file: std::sync::OnceLock<std::fs::File>,
}

/// `pread` until `dst` is full.
#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, dst: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, dst, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &std::fs::File, dst: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(dst)
}

impl SafetensorsFile {
    /// Maps and validates `path`.
    pub fn open(path: &Path) -> Result<SafetensorsFile, FormatError> {
        SafetensorsFile::from_file_map(path, map_file(path)?)
    }

    /// Validates `bytes`, the memory map of the file at `path` (streamed reads then go to the
    /// file itself, see [`WeightSource::read_into`]).
    pub fn from_file_map(path: &Path, bytes: SharedBytes) -> Result<SafetensorsFile, FormatError> {
        let mut file = SafetensorsFile::from_shared(path, bytes)?;
        file.on_disk = true;
        Ok(file)
    }

    /// Validates a safetensors image held in memory; `label` is used in messages.
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<SafetensorsFile, FormatError> {
        SafetensorsFile::from_shared(label, Arc::new(bytes))
    }

    /// Validates a safetensors image held by any shared owner (a map, a vector, …).
    pub fn from_shared(label: impl Into<PathBuf>, bytes: SharedBytes) -> Result<SafetensorsFile, FormatError> {
        let path = label.into();
        let header = parse_header((*bytes).as_ref())
            .map_err(|detail| FormatError::Safetensors { path: path.clone(), detail })?;
        let mut index = HashMap::new();
        let mut names = Vec::new();
        for (i, e) in header.entries.iter().enumerate() {
            index.insert(e.name.clone(), i);
            if e.dtype.is_some() {
                names.push(e.name.clone());
            }
        }
        Ok(SafetensorsFile { path, bytes, header, index, names, on_disk: false, file: std::sync::OnceLock::new() })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn metadata(&self) -> &[(String, String)] {
        &self.header.metadata
    }
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.header.entries.len())
            .finish()
    }
}

impl WeightSource for SafetensorsFile {
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        let e = self.header.entries.get(*self.index.get(name)?)?;
        Some(TensorInfo {
            name: e.name.clone(),
            dtype: e.dtype?,
            shape: e.shape.clone(),
            byte_len: e.end - e.begin,
            zero_copy: true,
            file: self.path.clone(),
        })
    }

    fn load(&self, name: &str) -> Result<TensorBytes, FormatError> {
        let Some(e) = self.index.get(name).and_then(|&i| self.header.entries.get(i)) else {
            return Err(FormatError::TensorNotFound {
                path: self.path.clone(),
                key: name.to_string(),
                hint: not_found_hint(&self.names, name),
            });
        };
        let Some(dtype) = e.dtype else {
            return Err(FormatError::UnsupportedDtype {
                path: self.path.clone(),
                tensor: e.name.clone(),
                dtype: e.dtype_name.clone(),
            });
        };
        // Validated at open: data_start + end <= file length.
        Ok(TensorBytes {
            dtype,
            shape: e.shape.clone(),
            data: TensorData::Mapped {
                owner: self.bytes.clone(),
                start: self.header.data_start + e.begin,
                len: e.end - e.begin,
            },
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the bytes with `pread` on the file, not through the map, so no file pages stay
    /// resident in this process once the caller drops its copy.
    fn read_into(&self, name: &str, dst: &mut [u8]) -> Result<(), FormatError> {
        let Some(e) = self.index.get(name).and_then(|&i| self.header.entries.get(i)).filter(|_| self.on_disk) else {
            // In memory (or unknown: let `load` explain): copying from the bytes is all there is.
            return crate::source::copy_tensor_bytes(&self.path, name, self.load(name)?.as_bytes(), dst);
        };
        if e.end - e.begin != dst.len() {
            return Err(FormatError::InvalidTensor {
                path: self.path.clone(),
                key: name.to_string(),
                detail: format!("{} bytes stored, {} expected", e.end - e.begin, dst.len()),
            });
        }
        self.read_range_into(name, 0, dst)
    }

    fn read_range_into(&self, name: &str, offset: usize, dst: &mut [u8]) -> Result<(), FormatError> {
        let Some(e) = self.index.get(name).and_then(|&i| self.header.entries.get(i)).filter(|_| self.on_disk) else {
            // In memory (or unknown: let `load` explain): copy from the bytes.
            let bytes = self.load(name)?;
            return crate::source::copy_tensor_range(&self.path, name, bytes.as_bytes(), offset, dst);
        };
        if offset.checked_add(dst.len()).is_none_or(|end| end > e.end - e.begin) {
            return Err(FormatError::InvalidTensor {
                path: self.path.clone(),
                key: name.to_string(),
                detail: format!("bytes {offset}..+{} lie outside its {} bytes", dst.len(), e.end - e.begin),
            });
        }
        let file = match self.file.get() {
            Some(f) => f,
            None => {
                let f = std::fs::File::open(&self.path).map_err(|err| FormatError::io(&self.path, "opening", err))?;
                self.file.get_or_init(|| f)
            }
        };
        read_exact_at(file, dst, (self.header.data_start + e.begin + offset) as u64)
            .map_err(|err| FormatError::io(&self.path, "reading", err))
    }

    fn report(&self) -> SourceReport {
        SourceReport {
            formats: vec!["safetensors".to_string()],
            files: vec![self.path.clone()],
            metadata: self.header.metadata.clone(),
            unknown_globals: Vec::new(),
            problems: self
                .header
                .entries
                .iter()
                .filter(|e| e.dtype.is_none())
                .map(|e| TensorProblem {
                    key: e.name.clone(),
                    file: self.path.clone(),
                    message: format!("dtype {} is not supported by orrery", e.dtype_name),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a safetensors image from a JSON header and a data section.
    pub(crate) fn image(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_and_loads_zero_copy() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let img =
            image(r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#, &data);
        let f = SafetensorsFile::from_bytes("mem", img).unwrap();
        assert_eq!(f.names(), vec!["a"]);
        assert_eq!(f.metadata(), &[("format".to_string(), "pt".to_string())]);
        let t = f.load("a").unwrap();
        assert!(t.is_zero_copy());
        assert_eq!(t.to_f64_vec(), vec![1.0, 2.0, 3.0]);
    }

    fn err(header: &str, data: &[u8]) -> String {
        match SafetensorsFile::from_bytes("mem.safetensors", image(header, data)) {
            Ok(_) => panic!("accepted {header}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let d = [0u8; 16];
        assert!(err(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}"#, &d).contains("needs 8 bytes"));
        assert!(err(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,24]}}"#, &d).contains("past"));
        assert!(err(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, &d).contains("begin after end"));
        assert!(err(r#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#, &d).contains("unknown dtype 'Q9'"));
        assert!(err(r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, &d).contains("non-negative"));
        // Unknown per-tensor fields are ignored, like the reference implementation does.
        let img = image(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#, &d);
        assert!(SafetensorsFile::from_bytes("m", img).is_ok());
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &d,
        );
        assert!(e.contains("overlaps"), "{e}");
        assert!(err(r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#, &d)
            .contains("overflows"));
        assert!(err(r#"{"__metadata__":{"k":1}}"#, &d).contains("__metadata__"));
        assert!(err(r#"{"a":1}"#, &d).contains("not an object"));
        assert!(err(r#"{"a":"#, &d).contains("not valid JSON"));
        // Header length prefix beyond the file.
        let mut img = image("{}", &[]);
        img[0] = 200;
        assert!(SafetensorsFile::from_bytes("m", img).unwrap_err().to_string().contains("exceeds"));
        assert!(SafetensorsFile::from_bytes("m", vec![1, 2, 3]).unwrap_err().to_string().contains("shorter"));
    }

    #[test]
    fn unsupported_dtype_is_deferred_and_named() {
        let img = image(
            r#"{"d":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"a":{"dtype":"U8","shape":[1],"data_offsets":[8,9]}}"#,
            &[0u8; 9],
        );
        let f = SafetensorsFile::from_bytes("mem.safetensors", img).unwrap();
        assert_eq!(f.names(), vec!["a"]);
        assert!(f.info("d").is_none());
        let e = f.load("d").unwrap_err().to_string();
        assert!(e.contains("'d'") && e.contains("F64") && e.contains("mem.safetensors"), "{e}");
        assert_eq!(f.report().problems.len(), 1);
    }

    #[test]
    fn empty_and_zero_sized_tensors() {
        let img = image(
            r#"{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"BF16","shape":[],"data_offsets":[0,2]}}"#,
            &[0x80, 0x3f],
        );
        let f = SafetensorsFile::from_bytes("m", img).unwrap();
        assert_eq!(f.load("e").unwrap().as_bytes().len(), 0);
        assert_eq!(f.load("s").unwrap().to_f64_vec(), vec![1.0]);
    }
}
