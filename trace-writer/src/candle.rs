//! Recording candle tensors (feature `candle`): a `candle_core::Tensor` on
//! the CPU with its real layout — dims, element strides, start offset and
//! dtype — read through candle's public `Tensor::storage_and_layout`.

#![forbid(unsafe_code)]

use candle_core::{CpuStorage, Storage, Tensor};
use trace_format::{DType, Layout};

use crate::{RecordId, TensorMeta, Writer, WriterError};

impl Writer {
    /// Record a candle tensor as candle holds it: the bytes its view spans
    /// in its storage, with its strides and offset (a transposed or
    /// narrowed tensor stays a strided view; nothing is made contiguous).
    /// CPU tensors only; a device tensor is [`WriterError::Unsupported`]
    /// (`to_device(&Device::Cpu)` first). `Ok(None)`: filtered out.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use trace_writer::{Metadata, TensorMeta, Writer};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let w = Writer::create(dir.path().join("run.tdump"), Metadata::new()).unwrap();
    /// let t = Tensor::arange(0f32, 6., &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
    /// w.add_candle("t.T", &t.t().unwrap(), TensorMeta::new()).unwrap(); // a strided view
    /// w.finish().unwrap();
    /// ```
    pub fn add_candle(
        &self,
        name: &str,
        tensor: &Tensor,
        meta: TensorMeta,
    ) -> Result<Option<RecordId>, WriterError> {
        let unsupported = |what: String| WriterError::Unsupported {
            name: name.into(),
            what,
        };
        let (storage, layout) = tensor.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err(unsupported(format!(
                "a candle tensor on {:?} (copy it to the CPU first)",
                tensor.device()
            )));
        };
        let (dtype, bytes): (DType, &[u8]) = match cpu {
            CpuStorage::U8(v) => (DType::U8, v),
            CpuStorage::U32(v) => (DType::U32, bytemuck::cast_slice(v)),
            CpuStorage::I16(v) => (DType::I16, bytemuck::cast_slice(v)),
            CpuStorage::I32(v) => (DType::I32, bytemuck::cast_slice(v)),
            CpuStorage::I64(v) => (DType::I64, bytemuck::cast_slice(v)),
            CpuStorage::BF16(v) => (DType::BF16, bytemuck::cast_slice(v)),
            CpuStorage::F16(v) => (DType::F16, bytemuck::cast_slice(v)),
            CpuStorage::F32(v) => (DType::F32, bytemuck::cast_slice(v)),
            CpuStorage::F64(v) => (DType::F64, bytemuck::cast_slice(v)),
            _ => return Err(unsupported(format!("candle dtype {:?}", tensor.dtype()))),
        };
        let elem = dtype.block_bytes() as usize;
        let layout_err = |error| WriterError::Layout {
            name: name.into(),
            error,
        };
        let view = Layout::new(
            layout.dims().iter().map(|&d| d as u64).collect(),
            layout.stride().iter().map(|&s| (s * elem) as i64).collect(),
            (layout.start_offset() * elem) as u64,
        )
        .map_err(layout_err)?;
        // only the bytes the view spans: a narrow view of a large storage
        // does not take the whole storage with it
        let (start, end) = match view.byte_span(dtype).map_err(layout_err)? {
            Some((s, e)) => (s.max(0) as usize, (e as usize).min(bytes.len())),
            None => (0, 0),
        };
        let offset = view.storage_offset() - start as u64;
        let view = view.at_offset(offset);
        self.add_strided(name, dtype, &view, &bytes[start.min(end)..end], meta)
    }
}
