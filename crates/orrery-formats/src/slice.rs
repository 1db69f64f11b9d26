//! Named parts of a stored tensor, so that a split or sharded plan can load only the bytes one
//! kernel or one rank reads: `name@rows[a:b]` is rows `a..b` (axis 0) of tensor `name`,
//! `name@cols[a:b]` its columns `a..b` (axis 1, whatever follows it kept whole). A rows slice
//! is one contiguous byte range of the stored tensor; a columns slice is one range per row.
//! Both read exactly the slice's bytes ([`read_slice_into`]), never the whole tensor.

use crate::source::{TensorInfo, WeightSource};
use crate::FormatError;

/// Which axis a [`TensorSlice`] cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SliceAxis {
    /// Axis 0 (the output rows of a `linear` weight `[N, K]`, the output channels of a conv).
    Rows,
    /// Axis 1 (the inputs of a `linear` weight `[N, K]`).
    Cols,
}

/// A part of a stored tensor, named `base@rows[start:end]` or `base@cols[start:end]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorSlice {
    pub base: String,
    pub axis: SliceAxis,
    pub start: usize,
    pub end: usize,
}

impl TensorSlice {
    /// The slice a weight name denotes; `None` for a plain name (or a malformed suffix, which
    /// then names no tensor at all).
    pub fn parse(name: &str) -> Option<TensorSlice> {
        let (base, rest) = name.rsplit_once('@')?;
        let (axis, range) = if let Some(r) = rest.strip_prefix("rows[") {
            (SliceAxis::Rows, r)
        } else {
            (SliceAxis::Cols, rest.strip_prefix("cols[")?)
        };
        let (a, b) = range.strip_suffix(']')?.split_once(':')?;
        let (start, end) = (a.parse().ok()?, b.parse().ok()?);
        (!base.is_empty() && start < end).then(|| TensorSlice { base: base.to_string(), axis, start, end })
    }

    /// The weight name of this slice.
    pub fn name(&self) -> String {
        let axis = match self.axis {
            SliceAxis::Rows => "rows",
            SliceAxis::Cols => "cols",
        };
        format!("{}@{axis}[{}:{}]", self.base, self.start, self.end)
    }

    fn dim(&self) -> usize {
        match self.axis {
            SliceAxis::Rows => 0,
            SliceAxis::Cols => 1,
        }
    }

    /// The slice's metadata from its base tensor's: `None` when the base does not exist or the
    /// range does not fit its shape.
    pub fn info(&self, base: &TensorInfo) -> Option<TensorInfo> {
        let dim = self.dim();
        if base.shape.len() <= dim || self.end > base.shape[dim] {
            return None;
        }
        let mut shape = base.shape.clone();
        shape[dim] = self.end - self.start;
        let byte_len = shape.iter().product::<usize>() * base.dtype.size_bytes();
        Some(TensorInfo {
            name: self.name(),
            shape,
            byte_len,
            zero_copy: base.zero_copy && self.axis == SliceAxis::Rows,
            ..base.clone()
        })
    }

    /// The byte ranges of the slice within its base tensor's stored bytes, in order.
    pub fn byte_ranges(&self, base: &TensorInfo) -> Vec<std::ops::Range<usize>> {
        let elem = base.dtype.size_bytes();
        match self.axis {
            SliceAxis::Rows => {
                let row = base.shape[1..].iter().product::<usize>() * elem;
                std::iter::once(self.start * row..self.end * row).collect()
            }
            SliceAxis::Cols => {
                let inner = base.shape[2..].iter().product::<usize>() * elem;
                let row = base.shape[1] * inner;
                (0..base.shape[0]).map(|r| r * row + self.start * inner..r * row + self.end * inner).collect()
            }
        }
    }
}

/// The metadata of weight `name` in `source`: the tensor's own, or a slice's.
pub fn tensor_info(source: &dyn WeightSource, name: &str) -> Option<TensorInfo> {
    match source.info(name) {
        Some(info) => Some(info),
        None => {
            let slice = TensorSlice::parse(name)?;
            slice.info(&source.info(&slice.base)?)
        }
    }
}

/// Reads weight `name` (a tensor or a slice of one) into `dst`, exactly its bytes.
pub fn read_tensor_into(source: &dyn WeightSource, name: &str, dst: &mut [u8]) -> Result<(), FormatError> {
    if source.info(name).is_some() {
        return source.read_into(name, dst);
    }
    let missing = || FormatError::InvalidTensor {
        path: source.path().to_path_buf(),
        key: name.to_string(),
        detail: "no such tensor or slice of one".into(),
    };
    let slice = TensorSlice::parse(name).ok_or_else(missing)?;
    let base = source.info(&slice.base).ok_or_else(missing)?;
    let info = slice.info(&base).ok_or_else(|| FormatError::InvalidTensor {
        path: source.path().to_path_buf(),
        key: name.to_string(),
        detail: format!("the range does not fit `{}` of shape {:?}", slice.base, base.shape),
    })?;
    if info.byte_len != dst.len() {
        return Err(FormatError::InvalidTensor {
            path: source.path().to_path_buf(),
            key: name.to_string(),
            detail: format!("{} bytes in the slice, {} expected", info.byte_len, dst.len()),
        });
    }
    let mut at = 0;
    for range in slice.byte_ranges(&base) {
        let len = range.len();
        source.read_range_into(&slice.base, range.start, &mut dst[at..at + len])?;
        at += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_malformed_suffixes_name_nothing() {
        let s = TensorSlice::parse("blocks.0.ff.net.2.weight@cols[128:256]").unwrap();
        assert_eq!((s.base.as_str(), s.axis, s.start, s.end), ("blocks.0.ff.net.2.weight", SliceAxis::Cols, 128, 256));
        assert_eq!(s.name(), "blocks.0.ff.net.2.weight@cols[128:256]");
        assert_eq!(TensorSlice::parse("w@rows[0:8]").unwrap().axis, SliceAxis::Rows);
        for bad in ["w", "w@rows[8:8]", "w@rows[9:8]", "w@rows[0:x]", "w@diag[0:2]", "@rows[0:2]", "w@rows[0:2"] {
            assert!(TensorSlice::parse(bad).is_none(), "{bad}");
        }
    }
}
