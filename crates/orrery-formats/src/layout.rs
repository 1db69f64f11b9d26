//! Strided tensor layouts (shape, stride, storage offset), as PyTorch stores them.
//!
//! A `.pt` tensor is a view into a storage: element `i` (a multi-index) lives at
//! `offset + sum(i[d] * stride[d])` storage elements. Views saved as-is (a transposed weight,
//! a slice) are not contiguous; this module checks that every addressed element lies inside
//! the storage (with overflow-checked arithmetic, since all numbers come from the file) and
//! gathers such views into a contiguous, row-major copy.

/// Shape, strides and storage offset, all in elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StridedLayout {
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
    pub offset: usize,
}

impl StridedLayout {
    /// Element count, `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }

    /// True when the view is row-major contiguous, so its bytes are one run of the storage.
    /// Dimensions of size 1 may have any stride; empty tensors are trivially contiguous.
    pub fn is_contiguous(&self) -> bool {
        if self.shape.contains(&0) {
            return true;
        }
        let mut expected = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expected {
                return false;
            }
            match expected.checked_mul(d) {
                Some(e) => expected = e,
                None => return false,
            }
        }
        true
    }

    /// One past the last storage element the view touches (`offset` for empty views), or
    /// `None` on overflow / rank mismatch.
    pub fn storage_extent(&self) -> Option<usize> {
        if self.shape.len() != self.stride.len() {
            return None;
        }
        if self.shape.contains(&0) {
            return Some(self.offset);
        }
        let mut last = self.offset;
        for (&d, &s) in self.shape.iter().zip(&self.stride) {
            last = last.checked_add((d - 1).checked_mul(s)?)?;
        }
        last.checked_add(1)
    }

    /// Copies the view out of `storage` (elements of `elem` bytes) into a contiguous
    /// row-major buffer of at most `max_bytes` (a stride-0 view can ask for far more memory
    /// than its storage holds). Returns `None` if any element would fall outside `storage`
    /// or the output would exceed `max_bytes`; never panics.
    pub fn gather(&self, storage: &[u8], elem: usize, max_bytes: usize) -> Option<Vec<u8>> {
        let numel = self.numel()?;
        let total = numel.checked_mul(elem)?;
        if total > max_bytes || self.storage_extent()?.checked_mul(elem)? > storage.len() {
            return None;
        }
        let mut out = Vec::with_capacity(total);
        if numel == 0 {
            return Some(out);
        }
        let rank = self.shape.len();
        if rank == 0 {
            let start = self.offset.checked_mul(elem)?;
            out.extend_from_slice(storage.get(start..start.checked_add(elem)?)?);
            return Some(out);
        }
        // Copy innermost rows; a unit inner stride makes each row one memcpy.
        let inner = self.shape[rank - 1];
        let inner_stride = self.stride[rank - 1];
        let mut idx = vec![0usize; rank - 1];
        loop {
            let mut base = self.offset;
            for (d, &i) in idx.iter().enumerate() {
                base = base.checked_add(i.checked_mul(self.stride[d])?)?;
            }
            if inner_stride == 1 {
                let s = base.checked_mul(elem)?;
                let len = inner.checked_mul(elem)?;
                out.extend_from_slice(storage.get(s..s.checked_add(len)?)?);
            } else {
                for j in 0..inner {
                    let s = base.checked_add(j.checked_mul(inner_stride)?)?.checked_mul(elem)?;
                    out.extend_from_slice(storage.get(s..s.checked_add(elem)?)?);
                }
            }
            // Advance the outer multi-index (odometer).
            let mut d = rank - 1;
            loop {
                if d == 0 {
                    return Some(out);
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(shape: &[usize], stride: &[usize], offset: usize) -> StridedLayout {
        StridedLayout { shape: shape.to_vec(), stride: stride.to_vec(), offset }
    }

    #[test]
    fn contiguity() {
        assert!(l(&[2, 3], &[3, 1], 0).is_contiguous());
        assert!(!l(&[4, 3], &[1, 4], 0).is_contiguous());
        assert!(l(&[1, 3], &[99, 1], 5).is_contiguous());
        assert!(l(&[0, 3], &[7, 7], 0).is_contiguous());
        assert!(l(&[], &[], 3).is_contiguous());
    }

    #[test]
    fn extent_and_overflow() {
        assert_eq!(l(&[4, 3], &[1, 4], 0).storage_extent(), Some(12));
        assert_eq!(l(&[3], &[1], 3).storage_extent(), Some(6));
        assert_eq!(l(&[0], &[1], 9).storage_extent(), Some(9));
        assert_eq!(l(&[usize::MAX, 2], &[2, 1], 0).storage_extent(), None);
        assert_eq!(l(&[2], &[1, 1], 0).storage_extent(), None);
    }

    #[test]
    fn gathers_transpose() {
        // arange(12).reshape(3,4).t(): shape (4,3), stride (1,4)
        let storage: Vec<u8> = (0u8..12).collect();
        let v = l(&[4, 3], &[1, 4], 0).gather(&storage, 1, 1 << 20).unwrap();
        assert_eq!(v, vec![0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        assert_eq!(l(&[4, 3], &[1, 4], 1).gather(&storage, 1, 1 << 20), None);
        // Broadcast (stride 0), within and beyond the output limit.
        assert_eq!(l(&[2, 2], &[0, 1], 3).gather(&storage, 1, 4).unwrap(), vec![3, 4, 3, 4]);
        assert_eq!(l(&[1 << 50, 2], &[0, 1], 3).gather(&storage, 1, 1 << 20), None);
    }
}
