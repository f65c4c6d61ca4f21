//! The `add_*` methods: each tensor kind's checks and descriptor, then
//! [`Writer::append`].

use trace_format::codec::{encode_storage, encode_tensor_ref, DataRef, StorageDesc, TensorDescRef};
use trace_format::record::RecordKind;
use trace_format::stats::compute_stats;
use trace_format::update::{encode_storage_update, StorageUpdateDesc};
use trace_format::NativeType;

use crate::writer::{lock, Record};
use crate::{DType, Layout, Metadata, RecordId, Stats, TensorMeta, Writer, WriterError};

impl Writer {
    /// Append a tensor record of `desc` with `payload` (empty for a view,
    /// a derived or a statistics-only tensor).
    fn append_tensor(
        &self,
        desc: &TensorDescRef<'_>,
        payload: &[u8],
        payload_crc32c: Option<&mut Option<u32>>,
    ) -> Result<Option<RecordId>, WriterError> {
        let record = Record {
            kind: RecordKind::Tensor,
            name: desc.name,
            step: desc.step,
            layer: desc.layer,
            descriptor: encode_tensor_ref(desc),
            payload,
        };
        self.append(&record, payload_crc32c)
    }

    /// Append a statistics-only tensor record of `desc` (its data
    /// [`DataRef::StatsOnly`], its stats set, its metadata within
    /// [`check_depth`]: the caller's checks) if the filter wants it: the
    /// ggml recorder's path, whose descriptors borrow the parts that repeat
    /// at every decode step instead of copying them into a [`TensorDesc`].
    pub(crate) fn append_stats_ref(
        &self,
        desc: &TensorDescRef<'_>,
    ) -> Result<Option<RecordId>, WriterError> {
        debug_assert!(matches!(desc.data, DataRef::StatsOnly) && desc.stats.is_some());
        if !self.wants(desc.name, desc.step, desc.layer) {
            return Ok(None);
        }
        self.append_tensor(desc, &[], None)
    }

    /// Record raw bytes that tensors can view ([`Writer::add_view`]).
    /// Storages are not subject to the capture filter.
    pub fn add_storage(&self, name: &str, bytes: &[u8]) -> Result<RecordId, WriterError> {
        self.add_storage_with(name, bytes, Metadata::new())
    }

    /// [`Writer::add_storage`] with metadata.
    pub fn add_storage_with(
        &self,
        name: &str,
        bytes: &[u8],
        metadata: Metadata,
    ) -> Result<RecordId, WriterError> {
        check_depth(name, &metadata)?;
        let descriptor = encode_storage(&StorageDesc {
            name: name.to_owned(),
            metadata,
        });
        let id = self
            .append(
                &Record {
                    kind: RecordKind::Storage,
                    name,
                    step: None,
                    layer: None,
                    descriptor,
                    payload: bytes,
                },
                None,
            )?
            .ok_or_else(|| WriterError::Dropped {
                name: name.to_owned(),
            })?;
        lock(&self.shared.storages).insert(id, bytes.len() as u64);
        Ok(id)
    }

    /// Record storage `base` (an earlier storage, tensor with its own bytes,
    /// or storage update of this writer) with the byte `ranges`
    /// (`(offset, length)`, in order, not overlapping) rewritten to
    /// `payload` (their bytes, concatenated) and its length made `len`
    /// (SPEC.md §5.7, format 1.2): views of the returned record see the
    /// storage as updated, at the cost of the payload's bytes. Bytes past
    /// the base's length must all be in ranges. Not subject to the capture
    /// filter.
    pub fn add_storage_update(
        &self,
        name: &str,
        base: RecordId,
        len: u64,
        ranges: Vec<(u64, u64)>,
        payload: &[u8],
        metadata: Metadata,
    ) -> Result<RecordId, WriterError> {
        check_depth(name, &metadata)?;
        let update_err = |reason: String| WriterError::StorageUpdate {
            name: name.to_owned(),
            base,
            reason,
        };
        let base_len = lock(&self.shared.storages)
            .get(base)
            .ok_or_else(|| update_err("the base was not recorded by this writer".into()))?;
        let desc = StorageUpdateDesc {
            name: name.to_owned(),
            base,
            len,
            ranges,
            metadata,
        };
        desc.check(base_len, payload.len() as u64)
            .map_err(update_err)?;
        let id = self
            .append(
                &Record {
                    kind: RecordKind::StorageUpdate,
                    name,
                    step: None,
                    layer: None,
                    descriptor: encode_storage_update(&desc),
                    payload,
                },
                None,
            )?
            .ok_or_else(|| WriterError::Dropped {
                name: name.to_owned(),
            })?;
        lock(&self.shared.storages).insert(id, len);
        Ok(id)
    }

    /// Record a contiguous (row-major) tensor with its own bytes.
    /// `Ok(None)` when the capture filter or a full queue skipped it.
    pub fn add_tensor(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        bytes: &[u8],
        meta: TensorMeta,
    ) -> Result<Option<RecordId>, WriterError> {
        self.add_contiguous(name, dtype, shape, bytes, meta, None)
    }

    /// [`Writer::add_tensor`], also returning the crc32c of `bytes`, for a
    /// caller that wants to recognise these bytes again later (the Python
    /// writer records a later view of them as a view of this record). No
    /// extra pass over the bytes: in sync mode it is the sink's checksum of
    /// the payload (see [`Writer::payload_crc32c`]), in background mode it
    /// is computed while the bytes are copied into the queue.
    pub fn add_tensor_checksummed(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        bytes: &[u8],
        meta: TensorMeta,
    ) -> Result<Option<(RecordId, u32)>, WriterError> {
        let mut crc = None;
        let id = self.add_contiguous(name, dtype, shape, bytes, meta, Some(&mut crc))?;
        Ok(id.map(|id| {
            (
                id,
                crc.unwrap_or_else(|| trace_format::record::crc32c(bytes)),
            )
        }))
    }

    fn add_contiguous(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        bytes: &[u8],
        meta: TensorMeta,
        payload_crc32c: Option<&mut Option<u32>>,
    ) -> Result<Option<RecordId>, WriterError> {
        if !self.wants(name, meta.step, meta.layer) {
            return Ok(None);
        }
        let layout = Layout::contiguous(dtype, shape, 0).map_err(|source| WriterError::Layout {
            name: name.into(),
            error: source,
        })?;
        let expected = trace_format::layout::numel(shape)
            .and_then(|n| dtype.bytes_for(n))
            .ok_or_else(|| WriterError::Layout {
                name: name.into(),
                error: trace_format::LayoutError::PartialBlock {
                    dtype,
                    block_elems: dtype.block_elems(),
                    numel: trace_format::layout::numel(shape).unwrap_or(u64::MAX),
                },
            })?;
        if expected != bytes.len() as u64 {
            return Err(WriterError::DataLength {
                name: name.into(),
                expected,
                actual: bytes.len() as u64,
            });
        }
        self.add_inline(name, dtype, layout, bytes, meta, payload_crc32c)
    }

    /// Record a tensor with its own bytes laid out as `layout` says (any
    /// strides, negative or zero included): `bytes` is the storage the
    /// layout's offset and strides point into.
    pub fn add_strided(
        &self,
        name: &str,
        dtype: DType,
        layout: &Layout,
        bytes: &[u8],
        meta: TensorMeta,
    ) -> Result<Option<RecordId>, WriterError> {
        if !self.wants(name, meta.step, meta.layer) {
            return Ok(None);
        }
        self.add_inline(name, dtype, layout.clone(), bytes, meta, None)
    }

    fn add_inline(
        &self,
        name: &str,
        dtype: DType,
        layout: Layout,
        bytes: &[u8],
        meta: TensorMeta,
        payload_crc32c: Option<&mut Option<u32>>,
    ) -> Result<Option<RecordId>, WriterError> {
        layout
            .check_within(dtype, bytes.len() as u64)
            .map_err(|source| WriterError::Layout {
                name: name.into(),
                error: source,
            })?;
        let desc = tensor_desc(
            name,
            dtype,
            DataRef::Inline {
                offset: layout.storage_offset(),
            },
            &layout,
            &meta,
        )?;
        let id = self.append_tensor(&desc, bytes, payload_crc32c)?;
        if let Some(id) = id {
            // a tensor's own bytes are a storage other views may use
            lock(&self.shared.storages).insert(id, bytes.len() as u64);
        }
        Ok(id)
    }

    /// Record a view over an earlier storage, or over the bytes of an
    /// earlier tensor recorded with its own bytes: `layout.storage_offset()`
    /// and its byte strides are relative to the storage's first byte.
    pub fn add_view(
        &self,
        name: &str,
        dtype: DType,
        storage: RecordId,
        layout: &Layout,
        meta: TensorMeta,
    ) -> Result<Option<RecordId>, WriterError> {
        if !self.wants(name, meta.step, meta.layer) {
            return Ok(None);
        }
        let len = lock(&self.shared.storages).get(storage).ok_or_else(|| {
            WriterError::UnknownStorage {
                name: name.into(),
                storage,
            }
        })?;
        layout
            .check_within(dtype, len)
            .map_err(|source| WriterError::Layout {
                name: name.into(),
                error: source,
            })?;
        let desc = tensor_desc(
            name,
            dtype,
            DataRef::Storage {
                storage,
                offset: layout.storage_offset(),
            },
            layout,
            &meta,
        )?;
        self.append_tensor(&desc, &[], None)
    }

    /// Record an `ndarray` view with its real strides: a standard-layout
    /// view as a contiguous tensor, any other (sliced, transposed, negative
    /// or zero strides) as a view over the bytes it spans.
    pub fn add_ndarray<T: NativeType, D: ndarray::Dimension>(
        &self,
        name: &str,
        array: &ndarray::ArrayView<'_, T, D>,
        meta: TensorMeta,
    ) -> Result<Option<RecordId>, WriterError> {
        let shape: Vec<u64> = array.shape().iter().map(|&n| n as u64).collect();
        if let Some(slice) = array.as_slice() {
            return self.add_tensor(name, T::DTYPE, &shape, bytemuck::cast_slice(slice), meta);
        }
        if !self.wants(name, meta.step, meta.layer) {
            return Ok(None);
        }
        let size = std::mem::size_of::<T>() as isize;
        let (mut lo, mut hi) = (0isize, 0isize);
        if array.is_empty() {
            let layout =
                Layout::contiguous(T::DTYPE, &shape, 0).map_err(|source| WriterError::Layout {
                    name: name.into(),
                    error: source,
                })?;
            return self.add_inline(name, T::DTYPE, layout, &[], meta, None);
        }
        for (&n, &s) in array.shape().iter().zip(array.strides()) {
            let reach = (n as isize - 1) * s;
            if reach < 0 {
                lo += reach;
            } else {
                hi += reach;
            }
        }
        let count = (hi - lo + 1) as usize;
        // SAFETY: `array` is a non-empty view; every element it can index lies
        // in one allocation of initialised `T`s, and the elements at the lowest
        // (`lo`) and highest (`hi`) element offsets from `as_ptr()` are among
        // them, so `[as_ptr() + lo, as_ptr() + hi]` is inside that allocation.
        // The borrow lives as long as `array`'s, and `T: Pod` has no padding.
        let span: &[T] = unsafe { std::slice::from_raw_parts(array.as_ptr().offset(lo), count) };
        let layout = Layout::new(
            shape,
            array.strides().iter().map(|&s| (s * size) as i64).collect(),
            (-lo * size) as u64,
        )
        .map_err(|source| WriterError::Layout {
            name: name.into(),
            error: source,
        })?;
        self.add_inline(
            name,
            T::DTYPE,
            layout,
            bytemuck::cast_slice(span),
            meta,
            None,
        )
    }

    /// Record a tensor whose values are rebuilt by the reader from its
    /// parents by replaying `meta`'s lineage on values (data kind 3, SPEC.md
    /// §5.4): no bytes are stored twice. The mixed KV cache is the case in
    /// point: `K = Concat(K_quant, K_hot)` along the sequence axis, then
    /// permuted as the engine permutes it, recorded as f32.
    pub fn add_derived(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        meta: TensorMeta,
    ) -> Result<Option<RecordId>, WriterError> {
        if !self.wants(name, meta.step, meta.layer) {
            return Ok(None);
        }
        if meta.lineage.ops.is_empty() || meta.lineage.parents.is_empty() {
            return Err(WriterError::Unsupported {
                name: name.into(),
                what: "a derived tensor without parents and lineage steps to rebuild it from"
                    .into(),
            });
        }
        let layout = Layout::contiguous(dtype, shape, 0).map_err(|source| WriterError::Layout {
            name: name.into(),
            error: source,
        })?;
        let desc = tensor_desc(name, dtype, DataRef::Derived, &layout, &meta)?;
        self.append_tensor(&desc, &[], None)
    }

    /// Quantize row-major f32 `values` of `shape` to the block dtype `dtype`
    /// (Q8_0 or Q4_0, bit-exact with ggml's reference quantizer) and record
    /// the blocks: how a test or a Rust engine writes a `K_quant`.
    pub fn add_quantized(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        values: &[f32],
        meta: TensorMeta,
    ) -> Result<Option<RecordId>, WriterError> {
        if !self.wants(name, meta.step, meta.layer) {
            return Ok(None);
        }
        if trace_format::layout::numel(shape) != Some(values.len() as u64) {
            return Err(WriterError::DataLength {
                name: name.into(),
                expected: trace_format::layout::numel(shape).unwrap_or(u64::MAX),
                actual: values.len() as u64,
            });
        }
        if shape.last().is_some_and(|&n| n % dtype.block_elems() != 0) {
            return Err(WriterError::Unsupported {
                name: name.into(),
                what: format!(
                    "quantizing rows of {} values to {dtype} (rows must be whole blocks)",
                    shape.last().unwrap_or(&0)
                ),
            });
        }
        let blocks =
            trace_quant::quantize_to_vec(dtype, values).map_err(|e| WriterError::Unsupported {
                name: name.into(),
                what: e.to_string(),
            })?;
        self.add_tensor(name, dtype, shape, &blocks, meta)
    }

    /// Record statistics only (no data) for a tensor of `dtype` and `shape`.
    pub fn add_stats(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        stats: Stats,
        mut meta: TensorMeta,
    ) -> Result<Option<RecordId>, WriterError> {
        if !self.wants(name, meta.step, meta.layer) {
            return Ok(None);
        }
        let layout = Layout::contiguous(dtype, shape, 0).map_err(|source| WriterError::Layout {
            name: name.into(),
            error: source,
        })?;
        meta.stats = Some(stats);
        let desc = tensor_desc(name, dtype, DataRef::StatsOnly, &layout, &meta)?;
        self.append_tensor(&desc, &[], None)
    }

    /// Compute statistics of contiguous `bytes` and record them without the data.
    pub fn add_stats_of(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        bytes: &[u8],
        meta: TensorMeta,
    ) -> Result<Option<RecordId>, WriterError> {
        if !self.wants(name, meta.step, meta.layer) {
            return Ok(None);
        }
        let stats = if dtype.is_block() {
            let values = trace_quant::dequantize_to_vec(dtype, bytes).map_err(|e| {
                WriterError::Unsupported {
                    name: name.into(),
                    what: format!("statistics of {dtype} values: {e}"),
                }
            })?;
            compute_stats(DType::F32, bytemuck::cast_slice(&values)).map(|s| Stats {
                bytes_crc32c: Some(trace_format::record::crc32c(bytes)),
                ..s
            })
        } else {
            compute_stats(dtype, bytes)
        };
        let stats = stats.ok_or_else(|| WriterError::Unsupported {
            name: name.into(),
            what: format!("statistics of {dtype} values"),
        })?;
        self.add_stats(name, dtype, shape, stats, meta)
    }
}

/// The descriptor of a tensor record, borrowing every field from the
/// caller's name, layout and metadata: nothing is copied or allocated (the
/// descriptor is encoded at once, [`Writer::append_tensor`]).
pub(crate) fn tensor_desc<'a>(
    name: &'a str,
    dtype: DType,
    data: DataRef,
    layout: &'a Layout,
    meta: &'a TensorMeta,
) -> Result<TensorDescRef<'a>, WriterError> {
    check_depth(name, &meta.metadata)?;
    Ok(TensorDescRef {
        name,
        dtype,
        data,
        shape: layout.shape(),
        byte_strides: layout.byte_strides(),
        step: meta.step,
        layer: meta.layer,
        role: meta.role.as_deref(),
        source_layout: meta.source_layout.as_ref(),
        parents: &meta.lineage.parents,
        ops: &meta.lineage.ops,
        engine_op: meta.lineage.engine_op.as_ref(),
        stats: meta.stats.as_ref(),
        metadata: &meta.metadata,
    })
}

/// Refuse metadata a reader would refuse: nested deeper than SPEC.md §4 allows.
pub(crate) fn check_depth(name: &str, metadata: &Metadata) -> Result<(), WriterError> {
    match metadata.too_deep() {
        None => Ok(()),
        Some(path) => Err(WriterError::MetadataTooDeep {
            name: name.to_owned(),
            path,
        }),
    }
}
