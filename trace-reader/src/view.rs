//! Zero-copy views of a tensor's bytes and the copies made from them.

#![forbid(unsafe_code)]

use ndarray::{ArrayViewD, Axis, IxDyn, ShapeBuilder};
use trace_format::stats::StatsAccumulator;
use trace_format::{DType, NativeType, Stats};

use crate::error::ReaderError;
use crate::replay::derive;
use crate::trace::{TensorInfo, Trace};
use crate::updates::StorageBytes;
use crate::values::{gather, gather_f32, value_limit, walk};

/// A tensor and the bytes of its storage. Its layout was checked against
/// the storage when the tensor was decoded, so every element it names is
/// inside `storage_bytes()`.
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    trace: &'a Trace,
    info: &'a TensorInfo,
    storage: StorageBytes<'a>,
}

impl<'a> TensorView<'a> {
    fn new(trace: &'a Trace, info: &'a TensorInfo, storage: StorageBytes<'a>) -> Self {
        TensorView {
            trace,
            info,
            storage,
        }
    }

    /// The tensor's description.
    pub fn info(&self) -> &'a TensorInfo {
        self.info
    }

    /// The whole storage the tensor views (for a storage made of updates,
    /// SPEC.md §5.7: its bytes as of that update, materialized).
    pub fn storage_bytes(&self) -> &[u8] {
        &self.storage
    }

    /// The same bytes as [`storage_bytes`](Self::storage_bytes), as a handle
    /// that lives as long as the trace (a reader of chunks keeps it).
    pub fn storage(&self) -> StorageBytes<'a> {
        self.storage.clone()
    }

    fn unsupported(&self, what: impl Into<String>) -> ReaderError {
        ReaderError::Unsupported {
            tensor: self.info.name.clone(),
            what: what.into(),
        }
    }

    fn require_data(&self) -> Result<(), ReaderError> {
        if self.info.is_stats_only() {
            return Err(self.unsupported("it was recorded as statistics only; it has no values"));
        }
        Ok(())
    }

    /// Spend what reading this view's values makes beyond the bytes it
    /// spans (a broadcast view) from the trace's budget, or refuse (SPEC.md
    /// §9). Every read of the values does this; a reader that walks them
    /// by itself (a chunk at a time) calls it once before it starts.
    pub fn spend_broadcast(&self) -> Result<(), ReaderError> {
        let beyond = self.info.values_beyond_bytes();
        if beyond == 0 || self.trace.spend_broadcast(beyond) {
            return Ok(());
        }
        Err(self.tensor_error(format!(
            "reading it expands {beyond} values beyond its bytes (zero strides), past the budget left for this trace's broadcast views (SPEC.md §9); the zero-copy view has no such limit"
        )))
    }

    fn require_stored(&self, what: &str) -> Result<(), ReaderError> {
        self.require_data()?;
        if self.info.derived {
            return Err(self.unsupported(format!(
                "it is derived from its parents (no bytes of its own): {what} needs stored bytes; use to_f32()"
            )));
        }
        Ok(())
    }

    /// The tensor's bytes, without copying, when they are contiguous
    /// (row-major, dense; for block types, whole blocks from a block boundary).
    pub fn contiguous_bytes(&self) -> Option<&[u8]> {
        let info = self.info;
        if info.storage.is_none() || !info.is_contiguous() {
            return None;
        }
        let numel = info.layout.numel();
        let dtype = info.dtype;
        let start = if dtype.is_block() {
            let el = info.layout.element_layout(dtype).ok()?;
            if el.offset % dtype.block_elems() != 0 {
                return None;
            }
            el.offset / dtype.block_elems() * dtype.block_bytes()
        } else {
            info.layout.storage_offset()
        };
        let len = dtype.bytes_for(numel)?;
        self.storage
            .get(start as usize..start.checked_add(len)? as usize)
    }

    /// The values as a slice of `T`, without copying: the tensor must be
    /// contiguous, of `T`'s dtype, and aligned for `T`.
    pub fn as_slice<T: NativeType>(&self) -> Result<&[T], ReaderError> {
        self.check_dtype::<T>()?;
        let bytes = self
            .contiguous_bytes()
            .ok_or_else(|| self.unsupported("not contiguous: use array() or materialize()"))?;
        bytemuck::try_cast_slice(bytes)
            .map_err(|e| self.unsupported(format!("cannot view the bytes as {}: {e}", T::DTYPE)))
    }

    fn check_dtype<T: NativeType>(&self) -> Result<(), ReaderError> {
        self.require_stored("a zero-copy view")?;
        if self.info.dtype != T::DTYPE {
            return Err(ReaderError::DTypeMismatch {
                tensor: self.info.name.clone(),
                actual: self.info.dtype,
                requested: T::DTYPE,
            });
        }
        Ok(())
    }

    /// An `ndarray` view with the tensor's real strides (negative, zero and
    /// overlapping included), without copying. The storage offset and every
    /// stride of a dimension longer than 1 must be whole elements, and the
    /// storage aligned for `T` (payloads start 64-byte aligned in the file).
    pub fn array<T: NativeType>(&self) -> Result<ArrayViewD<'_, T>, ReaderError> {
        self.check_dtype::<T>()?;
        let layout = &self.info.layout;
        let size = std::mem::size_of::<T>() as i64;
        let shape: Vec<usize> = layout.shape().iter().map(|&n| n as usize).collect();
        if layout.shape().contains(&0) {
            return ArrayViewD::from_shape(IxDyn(&shape), &[])
                .map_err(|e| self.unsupported(e.to_string()));
        }
        let mut strides = Vec::with_capacity(shape.len());
        let mut low = layout.storage_offset() as i64;
        for (&n, &s) in layout.shape().iter().zip(layout.byte_strides()) {
            if n <= 1 {
                strides.push(0usize);
                continue;
            }
            if s % size != 0 {
                return Err(self.unsupported(format!(
                    "byte stride {s} is not a whole number of {}-byte elements",
                    size
                )));
            }
            if s < 0 {
                low += s * (n as i64 - 1);
            }
            strides.push((s.unsigned_abs() / size as u64) as usize);
        }
        if low % size != 0 {
            return Err(self.unsupported(format!(
                "storage offset {} is not a whole number of elements",
                layout.storage_offset()
            )));
        }
        let from = &self.storage[low as usize..];
        let usable = from.len() - from.len() % size as usize;
        let elems: &[T] = bytemuck::try_cast_slice(&from[..usable]).map_err(|e| {
            self.unsupported(format!(
                "storage bytes are not aligned for {}: {e}",
                T::DTYPE
            ))
        })?;
        let mut view = ArrayViewD::from_shape(IxDyn(&shape).strides(IxDyn(&strides)), elems)
            .map_err(|e| self.unsupported(format!("ndarray refused the layout: {e}")))?;
        for (d, &s) in layout.byte_strides().iter().enumerate() {
            if s < 0 && layout.shape()[d] > 1 {
                view.invert_axis(Axis(d));
            }
        }
        Ok(view)
    }

    /// A contiguous row-major copy in the tensor's own dtype (block types:
    /// the raw blocks of a contiguous, block-aligned tensor; derived tensors:
    /// their rebuilt values encoded in their dtype, a float type).
    pub fn materialize(&self) -> Result<Vec<u8>, ReaderError> {
        self.require_data()?;
        self.spend_broadcast()?;
        if self.info.derived {
            let values = self.to_f64()?;
            return encode_floats(self.info.dtype, &values).ok_or_else(|| {
                self.unsupported(format!(
                    "a derived {} tensor has no byte form; use to_f32()",
                    self.info.dtype
                ))
            });
        }
        if let Some(b) = self.contiguous_bytes() {
            return Ok(b.to_vec());
        }
        let Some(size) = self.info.dtype.element_bytes() else {
            return Err(self.unsupported(format!(
                "raw {} blocks of a strided view cannot be copied without dequantizing",
                self.info.dtype
            )));
        };
        let layout = &self.info.layout;
        // a strided view may repeat its storage's bytes (stride 0): the same
        // limit as for values (SPEC.md §9), before anything is allocated
        let limit = value_limit(self.trace.file_len());
        if layout.numel() > limit {
            return Err(self.tensor_error(format!(
                "materializing {} values is refused (limit {limit} for this file: use the zero-copy view instead)",
                layout.numel()
            )));
        }
        if layout.numel() == 0 {
            // no element to copy; the other extents may be anything (an
            // extent of 2^62 beside a 0 would overflow the row length below)
            return Ok(Vec::new());
        }
        let total = self.info.dtype.bytes_for(layout.numel()).unwrap_or(0) as usize;
        let mut out = Vec::with_capacity(total);
        let inner_contig = layout.byte_strides().last() == Some(&(size as i64));
        // one deref of the storage, not one per element
        let storage: &[u8] = &self.storage;
        if inner_contig && layout.ndim() > 0 {
            let n = *layout.shape().last().unwrap_or(&1) as usize * size;
            let outer = layout.outer();
            if n > 0 {
                walk(&outer, |o| out.extend_from_slice(&storage[o..o + n]));
            }
        } else {
            walk(layout, |o| out.extend_from_slice(&storage[o..o + size]));
        }
        Ok(out)
    }

    fn tensor_error(&self, reason: String) -> ReaderError {
        ReaderError::Tensor {
            path: self.trace.path().to_path_buf(),
            tensor: self.info.name.clone(),
            record: self.info.id,
            offset: self.info.record_offset,
            reason,
        }
    }

    fn values<T>(&self, conv: impl Fn(f64) -> T) -> Result<Vec<T>, ReaderError> {
        self.require_data()?;
        self.spend_broadcast()?;
        if self.info.derived {
            let array = derive(self.trace, self.info, 0)?;
            return Ok(array.iter().map(|&v| conv(v)).collect());
        }
        gather(
            self.info.dtype,
            &self.info.layout,
            &self.storage,
            value_limit(self.trace.file_len()),
            conv,
        )
        .map_err(|reason| self.tensor_error(reason))
    }

    /// The logical values as f32, row-major: block types dequantized
    /// (bit-exact with ggml's reference C), derived tensors rebuilt from
    /// their parents, f64 and 64-bit integers rounded.
    ///
    /// A large f32, f16 or bf16 view (256 KiB of f32 or more) is converted
    /// by the threads of the reader's rayon pool together, where the
    /// machine has more than one core; the values are the same.
    pub fn to_f32(&self) -> Result<Vec<f32>, ReaderError> {
        if self.info.dtype == DType::F32 && !self.info.derived {
            if let Ok(s) = self.as_slice::<f32>() {
                return Ok(s.to_vec());
            }
        }
        if !self.info.derived {
            self.require_data()?;
            self.spend_broadcast()?;
            return gather_f32(
                self.info.dtype,
                &self.info.layout,
                &self.storage,
                value_limit(self.trace.file_len()),
            )
            .map_err(|reason| self.tensor_error(reason));
        }
        self.values(|v| v as f32)
    }

    /// The logical values as f64, row-major (see [`TensorView::to_f32`]).
    pub fn to_f64(&self) -> Result<Vec<f64>, ReaderError> {
        self.values(|v| v)
    }

    /// The logical values as an owned f32 `ndarray` of the tensor's shape.
    pub fn to_array_f32(&self) -> Result<ndarray::ArrayD<f32>, ReaderError> {
        let shape: Vec<usize> = self
            .info
            .layout
            .shape()
            .iter()
            .map(|&n| n as usize)
            .collect();
        ndarray::ArrayD::from_shape_vec(IxDyn(&shape), self.to_f32()?)
            .map_err(|e| self.unsupported(e.to_string()))
    }

    /// Statistics of the values (and the crc32c of the row-major bytes).
    pub fn compute_stats(&self) -> Result<Stats, ReaderError> {
        let values = self.to_f64()?;
        let mut acc = StatsAccumulator::new();
        values.iter().for_each(|&v| acc.push(v));
        // the crc is of the row-major bytes "as stored"; a strided view of
        // blocks (a head that is half a block) has no such bytes
        let crc = self
            .materialize()
            .ok()
            .map(|b| trace_format::record::crc32c(&b));
        Ok(acc.finish(crc))
    }
}

impl Trace {
    /// A zero-copy view of the tensor with record id `id`.
    pub fn view(&self, id: u64) -> Result<TensorView<'_>, ReaderError> {
        let info = self.tensor(id)?;
        Ok(TensorView::new(self, info, self.storage_bytes(info)?))
    }

    /// [`Trace::view`] by name (see [`Trace::get`] for repeated names).
    pub fn view_by_name(&self, name: &str) -> Result<TensorView<'_>, ReaderError> {
        self.resolve(name).and_then(|id| self.view(id))
    }
}

/// `values` encoded little-endian in the float dtype `dtype` (values are
/// already representable in it); `None` for other dtypes.
fn encode_floats(dtype: DType, values: &[f64]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * dtype.element_bytes()?);
    for &v in values {
        match dtype {
            DType::F64 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_format::Layout;

    #[test]
    fn encode_floats_round_trips() {
        let b = encode_floats(DType::F16, &[1.5, -2.0]).unwrap();
        assert_eq!(b, [0x00, 0x3e, 0x00, 0xc0]);
        assert!(encode_floats(DType::Q8_0, &[1.0]).is_none());
    }

    /// Found by the `trace_bytes` fuzz target (fuzz/regressions/trace_bytes/):
    /// an empty view whose offset lies past its storage (so it has no
    /// contiguous bytes) and whose other extent is 2^62 overflowed the row
    /// length in `materialize`.
    #[test]
    fn materialize_empty_view_with_huge_extent() {
        use trace_writer::{Metadata, TensorMeta, Writer};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.tdump");
        let w = Writer::create(&path, Metadata::new()).unwrap();
        let s = w.add_storage("s", &[0; 16]).unwrap();
        let layout = Layout::new(vec![0, 1 << 62], vec![16, 8], 32).unwrap();
        w.add_view("empty", DType::F64, s, &layout, TensorMeta::new())
            .unwrap();
        w.finish().unwrap();
        let trace = Trace::open(&path).unwrap();
        let view = trace.view_by_name("empty").unwrap();
        assert!(view.contiguous_bytes().is_none());
        assert_eq!(view.materialize().unwrap(), Vec::<u8>::new());
        assert_eq!(view.to_f32().unwrap(), Vec::<f32>::new());
        assert_eq!(view.compute_stats().unwrap().count, 0);
    }

    #[test]
    fn walk_visits_row_major() {
        let l = Layout::new(vec![2, 3], vec![4, 8], 0).unwrap();
        let mut v = vec![];
        walk(&l, |o| v.push(o));
        assert_eq!(v, vec![0, 8, 16, 4, 12, 20]);
        let l = Layout::new(vec![2, 2], vec![-8, -4], 12).unwrap();
        let mut v = vec![];
        walk(&l, |o| v.push(o));
        assert_eq!(v, vec![12, 8, 4, 0]);
        let l = Layout::new(vec![], vec![], 4).unwrap();
        let mut v = vec![];
        walk(&l, |o| v.push(o));
        assert_eq!(v, vec![4]);
    }
}
