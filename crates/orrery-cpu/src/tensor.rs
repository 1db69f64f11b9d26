//! Strided CPU tensors over shared, immutable buffers.
//!
//! A [`CpuTensor`] is a view (shape, strides, offset) of a [`Buffer`]. Views made by reshape
//! (of contiguous data), permute, slice and expand share the buffer; kernels that need dense
//! input call [`CpuTensor::contiguous`], which copies only when the view is not dense.

use crate::arena::ArenaValues;
use crate::output::Output;
use crate::weight_packs::WeightPacks;
use half::{bf16, f16};
use orrery_ir::shape::contiguous_strides;
use orrery_ir::{DType, TensorType};
use std::sync::Arc;

/// A Rust element type that can live in a [`Buffer`].
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    const DTYPE: DType;
    fn slice(buf: &Buffer) -> Option<&[Self]>;
    fn into_buffer(v: Vec<Self>) -> Buffer;
}

macro_rules! element {
    ($t:ty, $dt:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dt;
            fn slice(buf: &Buffer) -> Option<&[Self]> {
                match buf {
                    Buffer::$dt(v) => Some(v),
                    Buffer::Arena(a) if DType::$dt == DType::F32 => bytemuck::try_cast_slice(a.as_slice()).ok(),
                    Buffer::Mapped(m) if m.dtype == DType::$dt => bytemuck::try_cast_slice(m.bytes()).ok(),
                    _ => None,
                }
            }
            fn into_buffer(v: Vec<Self>) -> Buffer {
                Buffer::$dt(v)
            }
        }
    };
}
element!(f32, F32);
element!(f16, F16);
element!(bf16, BF16);
element!(i64, I64);
element!(i32, I32);
element!(u8, U8);

/// Bytes owned elsewhere (typically a memory-mapped checkpoint), kept alive by `owner`.
#[derive(Clone)]
pub struct MappedBytes {
    pub dtype: DType,
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl MappedBytes {
    /// `None` when the range is out of bounds or misaligned for `dtype` (the caller then copies).
    pub fn new(
        dtype: DType,
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        start: usize,
        len: usize,
    ) -> Option<MappedBytes> {
        let all = (*owner).as_ref();
        let end = start.checked_add(len)?;
        let bytes = all.get(start..end)?;
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(dtype.size_bytes());
        (aligned && dtype != DType::Bool && len.is_multiple_of(dtype.size_bytes())).then_some(MappedBytes {
            dtype,
            owner,
            start,
            len,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }
}

/// The storage behind tensors. Bool is stored as one byte per element (0 or 1).
pub enum Buffer {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    Bool(Vec<u8>),
    Mapped(MappedBytes),
    /// f32 values written in a session's activation arena ([`crate::arena`]).
    Arena(ArenaValues),
}

impl Buffer {
    pub fn dtype(&self) -> DType {
        match self {
            Buffer::F32(_) => DType::F32,
            Buffer::F16(_) => DType::F16,
            Buffer::BF16(_) => DType::BF16,
            Buffer::I64(_) => DType::I64,
            Buffer::I32(_) => DType::I32,
            Buffer::U8(_) => DType::U8,
            Buffer::Bool(_) => DType::Bool,
            Buffer::Mapped(m) => m.dtype,
            Buffer::Arena(_) => DType::F32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buffer::F32(v) => v.len(),
            Buffer::F16(v) => v.len(),
            Buffer::BF16(v) => v.len(),
            Buffer::I64(v) => v.len(),
            Buffer::I32(v) => v.len(),
            Buffer::U8(v) | Buffer::Bool(v) => v.len(),
            Buffer::Mapped(m) => m.len / m.dtype.size_bytes(),
            Buffer::Arena(a) => a.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in process memory (mapped bytes are the file's, not counted).
    pub fn owned_bytes(&self) -> usize {
        match self {
            Buffer::Mapped(_) => 0,
            b => b.len() * b.dtype().size_bytes(),
        }
    }

    /// Element `i` as f64 (for tests and slow paths).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Buffer::F32(v) => v[i] as f64,
            Buffer::Arena(a) => a.as_slice()[i] as f64,
            Buffer::F16(v) => v[i].to_f64(),
            Buffer::BF16(v) => v[i].to_f64(),
            Buffer::I64(v) => v[i] as f64,
            Buffer::I32(v) => v[i] as f64,
            Buffer::U8(v) | Buffer::Bool(v) => v[i] as f64,
            Buffer::Mapped(m) => {
                let b = m.bytes();
                let s = m.dtype.size_bytes();
                let e = &b[i * s..(i + 1) * s];
                match m.dtype {
                    DType::F32 => f32::from_le_bytes(e.try_into().unwrap()) as f64,
                    DType::F16 => f16::from_le_bytes(e.try_into().unwrap()).to_f64(),
                    DType::BF16 => bf16::from_le_bytes(e.try_into().unwrap()).to_f64(),
                    DType::I64 => i64::from_le_bytes(e.try_into().unwrap()) as f64,
                    DType::I32 => i32::from_le_bytes(e.try_into().unwrap()) as f64,
                    DType::U8 | DType::Bool => e[0] as f64,
                }
            }
        }
    }
}

/// A strided view of a shared buffer.
#[derive(Clone)]
pub struct CpuTensor {
    dtype: DType,
    shape: Vec<usize>,
    /// In elements; 0 for broadcast dims.
    strides: Vec<usize>,
    offset: usize,
    buf: Arc<Buffer>,
    /// Packed forms of a weight, kept with it ([`CpuTensor::with_packs`]); shared by clones and
    /// views (a kernel uses a pack only for the view it was made from).
    packs: Option<Arc<WeightPacks>>,
}

impl std::fmt::Debug for CpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuTensor({}{:?}, strides {:?}, offset {})", self.dtype, self.shape, self.strides, self.offset)
    }
}

impl CpuTensor {
    /// A dense tensor owning `data`. Panics if the length does not match the shape.
    pub fn from_vec<T: Element>(shape: Vec<usize>, data: Vec<T>) -> CpuTensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "data does not match shape {shape:?}");
        CpuTensor::from_buffer(shape, T::into_buffer(data))
    }

    /// A dense bool tensor (one byte per element, nonzero = true).
    pub fn from_bools(shape: Vec<usize>, data: Vec<bool>) -> CpuTensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "data does not match shape {shape:?}");
        CpuTensor::from_buffer(shape, Buffer::Bool(data.into_iter().map(u8::from).collect()))
    }

    /// A dense tensor over a whole buffer. Panics if the length does not match the shape.
    pub fn from_buffer(shape: Vec<usize>, buf: Buffer) -> CpuTensor {
        assert_eq!(shape.iter().product::<usize>(), buf.len(), "buffer does not match shape {shape:?}");
        let strides = contiguous_strides(&shape);
        CpuTensor { dtype: buf.dtype(), strides, shape, offset: 0, buf: Arc::new(buf), packs: None }
    }

    /// A dense tensor from f64 values, converted to `dtype` (f16/bf16 round to nearest even,
    /// integers truncate, bool is `v != 0`).
    pub fn from_f64(dtype: DType, shape: Vec<usize>, data: &[f64]) -> CpuTensor {
        let buf = match dtype {
            DType::F32 => Buffer::F32(data.iter().map(|&v| v as f32).collect()),
            DType::F16 => Buffer::F16(data.iter().map(|&v| f16::from_f64(v)).collect()),
            DType::BF16 => Buffer::BF16(data.iter().map(|&v| bf16::from_f64(v)).collect()),
            DType::I64 => Buffer::I64(data.iter().map(|&v| v as i64).collect()),
            DType::I32 => Buffer::I32(data.iter().map(|&v| v as i32).collect()),
            DType::U8 => Buffer::U8(data.iter().map(|&v| v as u8).collect()),
            DType::Bool => Buffer::Bool(data.iter().map(|&v| u8::from(v != 0.0)).collect()),
        };
        CpuTensor::from_buffer(shape, buf)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn buffer(&self) -> &Arc<Buffer> {
        &self.buf
    }

    /// This tensor as a constant weight whose packed forms (made by the first kernel that
    /// wants one) are kept in `packs`, which must belong to this weight's values only
    /// ([`crate::weight_packs`]). Replaces packs it had.
    pub fn with_packs(mut self, packs: Arc<WeightPacks>) -> CpuTensor {
        self.packs = Some(packs);
        self
    }

    /// The packed forms kept with this weight, if it is one ([`CpuTensor::with_packs`]).
    pub fn packs(&self) -> Option<&WeightPacks> {
        self.packs.as_deref()
    }

    /// The buffer this view reads (shared with its other views).
    pub(crate) fn into_buffer(self) -> Arc<Buffer> {
        self.buf
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype, self.shape.clone())
    }

    /// True when the view is dense row-major (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// The dense data of a contiguous tensor of element type `T`; `None` if the view is not
    /// contiguous or `T` is not its dtype.
    pub fn data<T: Element>(&self) -> Option<&[T]> {
        if !self.is_contiguous() {
            return None;
        }
        T::slice(&self.buf).map(|s| &s[self.offset..self.offset + self.numel()])
    }

    /// Dense bool data as bytes (0/1) of a contiguous bool tensor.
    pub fn bool_data(&self) -> Option<&[u8]> {
        match (&*self.buf, self.is_contiguous()) {
            (Buffer::Bool(v), true) => Some(&v[self.offset..self.offset + self.numel()]),
            _ => None,
        }
    }

    /// Buffer offset of every element in row-major order of the view.
    pub fn element_offsets(&self) -> Vec<usize> {
        let n = self.numel();
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let rank = self.shape.len();
        let mut idx = vec![0usize; rank];
        let mut off = self.offset;
        for _ in 0..n {
            out.push(off);
            for d in (0..rank).rev() {
                idx[d] += 1;
                off += self.strides[d];
                if idx[d] < self.shape[d] {
                    break;
                }
                off -= self.strides[d] * self.shape[d];
                idx[d] = 0;
            }
        }
        out
    }

    /// A dense copy when the view is not dense (parallel, tiled for transposes); a cheap
    /// clone otherwise.
    pub fn contiguous(&self) -> CpuTensor {
        if self.is_contiguous() {
            return self.clone();
        }
        crate::kernels::dense_copy(self).unwrap_or_else(|| self.gather_copy())
    }

    /// A tensor whose buffer holds exactly its elements, in process memory: a copy when this
    /// view shares a larger buffer (so that buffer can be freed while the result lives on) or
    /// reads a mapped file (so the mapping can be dropped), a cheap clone otherwise. The copy
    /// is a kernel output: it takes the arena slot offered around the call
    /// ([`crate::with_output_slot`]).
    pub fn compact(&self) -> CpuTensor {
        let numel: usize = self.shape.iter().product();
        if self.is_contiguous() && self.offset == 0 && self.buf.len() == numel && !self.is_mapped() {
            return self.clone();
        }
        crate::kernels::output_copy(self).unwrap_or_else(|| self.gather_copy())
    }

    /// Whether the elements live in bytes owned elsewhere (a memory-mapped file).
    pub fn is_mapped(&self) -> bool {
        matches!(*self.buf, Buffer::Mapped(_))
    }

    /// The single-threaded fallback of [`CpuTensor::contiguous`], for any buffer kind.
    fn gather_copy(&self) -> CpuTensor {
        let offs = self.element_offsets();
        fn gather<T: Copy>(v: &[T], offs: &[usize]) -> Vec<T> {
            offs.iter().map(|&o| v[o]).collect()
        }
        let buf = match &*self.buf {
            Buffer::F32(v) => Buffer::F32(gather(v, &offs)),
            Buffer::Arena(a) => Buffer::F32(gather(a.as_slice(), &offs)),
            Buffer::F16(v) => Buffer::F16(gather(v, &offs)),
            Buffer::BF16(v) => Buffer::BF16(gather(v, &offs)),
            Buffer::I64(v) => Buffer::I64(gather(v, &offs)),
            Buffer::I32(v) => Buffer::I32(gather(v, &offs)),
            Buffer::U8(v) => Buffer::U8(gather(v, &offs)),
            Buffer::Bool(v) => Buffer::Bool(gather(v, &offs)),
            Buffer::Mapped(m) => {
                let s = m.dtype.size_bytes();
                let b = m.bytes();
                let mut bytes = Vec::with_capacity(offs.len() * s);
                for &o in &offs {
                    bytes.extend_from_slice(&b[o * s..(o + 1) * s]);
                }
                return CpuTensor::from_le_bytes(self.dtype, self.shape.clone(), &bytes)
                    .expect("length matches by construction");
            }
        };
        CpuTensor::from_buffer(self.shape.clone(), buf)
    }

    /// A dense owned tensor from little-endian bytes (copies; no alignment needed).
    pub fn from_le_bytes(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Option<CpuTensor> {
        let n: usize = shape.iter().product();
        if bytes.len() != n * dtype.size_bytes() {
            return None;
        }
        fn read<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
            bytes.chunks_exact(std::mem::size_of::<T>()).map(bytemuck::pod_read_unaligned).collect()
        }
        let buf = match dtype {
            DType::F32 => Buffer::F32(read(bytes)),
            DType::F16 => Buffer::F16(read(bytes)),
            DType::BF16 => Buffer::BF16(read(bytes)),
            DType::I64 => Buffer::I64(read(bytes)),
            DType::I32 => Buffer::I32(read(bytes)),
            DType::U8 => Buffer::U8(bytes.to_vec()),
            DType::Bool => Buffer::Bool(bytes.iter().map(|&b| u8::from(b != 0)).collect()),
        };
        Some(CpuTensor::from_buffer(shape, buf))
    }

    /// A dense tensor over mapped bytes, zero-copy when aligned, else copied.
    pub fn from_mapped(
        dtype: DType,
        shape: Vec<usize>,
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        start: usize,
        len: usize,
    ) -> Option<CpuTensor> {
        let n: usize = shape.iter().product();
        if len != n * dtype.size_bytes() {
            return None;
        }
        match MappedBytes::new(dtype, owner.clone(), start, len) {
            Some(m) => Some(CpuTensor::from_buffer(shape, Buffer::Mapped(m))),
            None => {
                let bytes = (*owner).as_ref().get(start..start.checked_add(len)?)?;
                CpuTensor::from_le_bytes(dtype, shape, bytes)
            }
        }
    }

    /// The f32 buffer (a `Vec` or arena values) of this dense tensor when it is the buffer's
    /// only reference and holds exactly its elements; else the tensor back.
    pub(crate) fn try_into_output(self) -> Result<Output, CpuTensor> {
        if !(self.is_contiguous() && self.offset == 0 && self.buf.len() == self.numel()) {
            return Err(self);
        }
        match Arc::try_unwrap(self.buf) {
            Ok(Buffer::F32(v)) => Ok(Output::Heap(v)),
            Ok(Buffer::Arena(values)) => Ok(Output::Arena(values)),
            Ok(other) => Err(CpuTensor { buf: Arc::new(other), ..self }),
            Err(buf) => Err(CpuTensor { buf, ..self }),
        }
    }

    /// The f32 elements in row-major order, taking the buffer (a `Vec` or arena values)
    /// without a copy when this tensor is its dense, only owner (a kernel's fresh output),
    /// else copied.
    pub(crate) fn into_output(self) -> Output {
        self.try_into_output().unwrap_or_else(|t| Output::Heap(t.to_f32_vec()))
    }

    /// All elements, in row-major order of the view, widened to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        if let Some(d) = self.data::<f32>() {
            return d.to_vec();
        }
        self.element_offsets().into_iter().map(|o| self.buf.get_f64(o) as f32).collect()
    }

    /// All elements, in row-major order of the view, as f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.element_offsets().into_iter().map(|o| self.buf.get_f64(o)).collect()
    }

    /// Raw little-endian bytes of the elements in row-major order (for writing files).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let t = self.contiguous();
        let s = t.dtype.size_bytes();
        let range = t.offset * s..(t.offset + t.numel()) * s;
        match &*t.buf {
            Buffer::F32(v) => bytemuck::cast_slice(v)[range].to_vec(),
            Buffer::Arena(a) => bytemuck::cast_slice(a.as_slice())[range].to_vec(),
            Buffer::F16(v) => bytemuck::cast_slice(v)[range].to_vec(),
            Buffer::BF16(v) => bytemuck::cast_slice(v)[range].to_vec(),
            Buffer::I64(v) => bytemuck::cast_slice(v)[range].to_vec(),
            Buffer::I32(v) => bytemuck::cast_slice(v)[range].to_vec(),
            Buffer::U8(v) | Buffer::Bool(v) => v[range].to_vec(),
            Buffer::Mapped(m) => m.bytes()[range].to_vec(),
        }
    }

    // Zero-copy views. Arguments are assumed valid (the IR checked them).

    pub fn permute(&self, perm: &[usize]) -> CpuTensor {
        CpuTensor {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            ..self.clone()
        }
    }

    pub fn slice(&self, axis: usize, start: usize, end: usize, step: usize) -> CpuTensor {
        let mut t = self.clone();
        t.shape[axis] = (end - start).div_ceil(step);
        if t.shape[axis] > 0 {
            t.offset += start * self.strides[axis];
        }
        t.strides[axis] *= step;
        t
    }

    pub fn expand(&self, shape: &[usize]) -> CpuTensor {
        let lead = shape.len() - self.shape.len();
        let strides = (0..shape.len())
            .map(|i| if i < lead || (self.shape[i - lead] == 1 && shape[i] != 1) { 0 } else { self.strides[i - lead] })
            .collect();
        CpuTensor { shape: shape.to_vec(), strides, ..self.clone() }
    }

    /// A view when the data is contiguous, else a dense copy with the new shape.
    pub fn reshape(&self, shape: &[usize]) -> CpuTensor {
        let t = self.contiguous();
        CpuTensor { strides: contiguous_strides(shape), shape: shape.to_vec(), ..t }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_share_data_and_copy_on_demand() {
        let t = CpuTensor::from_vec(vec![2, 3], (0..6).map(|x| x as f32).collect::<Vec<_>>());
        let p = t.permute(&[1, 0]);
        assert!(!p.is_contiguous());
        assert_eq!(p.to_f32_vec(), vec![0., 3., 1., 4., 2., 5.]);
        let s = t.slice(1, 0, 3, 2);
        assert_eq!(s.to_f32_vec(), vec![0., 2., 3., 5.]);
        let e = CpuTensor::from_vec(vec![3, 1], vec![1f32, 2., 3.]).expand(&[2, 3, 2]);
        assert_eq!(e.contiguous().data::<f32>().unwrap(), &[1., 1., 2., 2., 3., 3., 1., 1., 2., 2., 3., 3.]);
        assert_eq!(p.reshape(&[6]).to_f32_vec(), vec![0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn mapped_bytes_are_zero_copy_when_aligned() {
        let words: Vec<u32> = vec![0, 1f32.to_bits(), 2f32.to_bits()];
        let bytes: Vec<u8> = bytemuck::cast_slice(&words).to_vec();
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(bytes);
        let t = CpuTensor::from_mapped(DType::F32, vec![2], owner.clone(), 4, 8).unwrap();
        assert_eq!(t.data::<f32>().unwrap(), &[1.0, 2.0]);
        // Misaligned: copied, same values.
        let u = CpuTensor::from_mapped(DType::U8, vec![3], owner, 1, 3).unwrap();
        assert_eq!(u.to_f64_vec().len(), 3);
    }
}
