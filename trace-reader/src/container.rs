//! What opening a container gives a [`Trace`](crate::Trace), whichever
//! container it is (a `.tdump` file's records, a GGUF file's tensor table):
//! the record index, the run metadata, and the tensor descriptions, read by
//! a [`Describe`] of the container.

#![forbid(unsafe_code)]

use std::path::Path;

use trace_format::{DType, Layout, Lineage, Metadata, SourceLayout, Stats};

use crate::error::ReaderError;

/// One record as the index (or the scan) knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordEntry {
    /// Offset of the record header.
    pub offset: u64,
    /// Body length.
    pub body_len: u64,
    /// Kind code (see [`RecordKind`](trace_format::record::RecordKind)).
    pub kind: u16,
    /// Step of a tensor.
    pub step: Option<i64>,
    /// Layer of a tensor.
    pub layer: Option<i64>,
    pub(crate) name_at: u64,
    pub(crate) name_len: u32,
}

/// Where an unfinished file stops making sense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Offset of the first byte not part of a complete record.
    pub offset: u64,
    /// Bytes from there to the end of the file.
    pub bytes: u64,
    /// Why the scan stopped there.
    pub reason: String,
}

/// A tensor's description, checked against the file: its view lies inside
/// its storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Record id: the tensor's identity (names repeat).
    pub id: u64,
    /// The engine's name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape, byte strides and storage offset.
    pub layout: Layout,
    /// The storage's record id (`None` for stats-only tensors). Equal to
    /// `id` when the tensor carries its own bytes.
    pub storage: Option<u64>,
    /// Step.
    pub step: Option<i64>,
    /// Layer.
    pub layer: Option<i64>,
    /// Role.
    pub role: Option<String>,
    /// The engine's own layout (ggml `ne`/`nb`).
    pub source_layout: Option<SourceLayout>,
    /// Parents, steps and engine op.
    pub lineage: Lineage,
    /// Stored statistics.
    pub stats: Option<Stats>,
    /// Free metadata.
    pub metadata: Metadata,
    /// Offset of the record header in the file.
    pub record_offset: u64,
    /// Whether the values are rebuilt from the parents by replaying the
    /// lineage (data kind 3, SPEC.md §5.4) instead of read from a storage.
    pub derived: bool,
    pub(crate) storage_at: u64,
    pub(crate) storage_len: u64,
    /// The storage is a STORAGE_UPDATE record's (SPEC.md §5.7): its bytes
    /// are not in the file as they are but materialized on first read.
    pub(crate) updated: bool,
}

impl TensorInfo {
    /// The op that made the tensor, as its metadata's `tracedump.op` says
    /// (SPEC.md §5.4, format 1.1): `None` when not recorded, an error
    /// message when the key holds something SPEC.md does not allow.
    pub fn op(&self) -> Option<Result<trace_format::op::OpInfo, String>> {
        trace_format::op::OpInfo::from_metadata(&self.metadata)
    }

    /// Whether the tensor is computed from its parents (its inputs) rather
    /// than a view of the first: what `tracedump.op` says, else what the
    /// lineage implies (parents without view steps are inputs).
    pub fn is_computed(&self) -> bool {
        match self.op() {
            Some(Ok(op)) => op.relation == trace_format::op::Relation::Computed,
            _ => self.lineage.ops.is_empty(),
        }
    }

    /// Whether the tensor has no data, only statistics.
    pub fn is_stats_only(&self) -> bool {
        self.storage.is_none() && !self.derived
    }

    /// How many more values the tensor names than the bytes its view spans
    /// can hold (no byte of any type holds more than 8): non-zero only for
    /// a view with zero strides (a broadcast), what reading it expands.
    pub fn values_beyond_bytes(&self) -> u64 {
        if self.derived || self.is_stats_only() {
            return 0;
        }
        let span = match self.layout.byte_span(self.dtype) {
            Ok(Some((lo, hi))) => u64::try_from(hi - lo).unwrap_or(u64::MAX),
            _ => return 0,
        };
        self.layout.numel().saturating_sub(span.saturating_mul(8))
    }

    /// Whether the tensor has values (stored, or derived from its parents).
    pub fn has_values(&self) -> bool {
        self.storage.is_some() || self.derived
    }

    /// Element strides where they divide (block types: SPEC.md §6).
    pub fn element_strides(&self) -> Option<Vec<i64>> {
        self.layout.element_strides(self.dtype)
    }

    /// Whether the elements are dense and row-major (size-1 strides ignored).
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous(self.dtype)
    }

    /// Byte length of the storage the tensor views.
    pub fn storage_len(&self) -> u64 {
        self.storage_len
    }

    /// Absolute file offset of the storage's first byte; 0 for a storage
    /// that is not in the file as it is ([`TensorInfo::storage_in_file`]).
    pub fn storage_file_offset(&self) -> u64 {
        self.storage_at
    }

    /// Whether the storage's bytes lie in the file as they are (a zero-copy
    /// view of the file can show them): false for a storage made of
    /// STORAGE_UPDATE records (format 1.2, SPEC.md §5.7), whose bytes are
    /// materialized from its updates ([`crate::Trace::storage_source`]).
    pub fn storage_in_file(&self) -> bool {
        self.storage.is_some() && !self.updated
    }
}

/// A storage record's description.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageInfo {
    /// Record id.
    pub id: u64,
    /// Label.
    pub name: String,
    /// Metadata.
    pub metadata: Metadata,
    /// Length in bytes.
    pub len: u64,
    /// Absolute file offset of the first byte.
    pub file_offset: u64,
}

/// A container opened: its records and what it says about itself.
#[derive(Debug)]
pub(crate) struct Opened {
    /// Format version (major, minor); (0, 0) for a GGUF file.
    pub(crate) version: (u16, u16),
    /// Every record, in file order.
    pub(crate) records: Vec<RecordEntry>,
    /// Whether the file is complete (a finished `.tdump`, any GGUF file).
    pub(crate) finished: bool,
    pub(crate) footer_offset: Option<u64>,
    pub(crate) torn: Option<TornTail>,
    pub(crate) warnings: Vec<String>,
    pub(crate) run_metadata: Metadata,
    /// How its tensor records are described.
    pub(crate) tensors: Box<dyn Describe>,
}

/// The tensor descriptions of one kind of container.
pub(crate) trait Describe: std::fmt::Debug + Send + Sync {
    /// The description of tensor record `id` (a record of kind Tensor),
    /// decoded and checked against the file.
    fn describe(&self, at: Records<'_>, id: u64) -> Result<TensorInfo, ReaderError>;

    /// Whether every record is framed (header, checksum, padding), what
    /// [`Trace::verify`](crate::Trace::verify) checks byte by byte.
    fn framed(&self) -> bool;

    /// Whether the container is a GGUF file.
    fn is_gguf(&self) -> bool;
}

/// The records of an open file over its bytes: what descriptions are read from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Records<'a> {
    /// The file's path (or label), named in errors.
    pub(crate) path: &'a Path,
    pub(crate) bytes: &'a [u8],
    pub(crate) records: &'a [RecordEntry],
    /// The trace's checked storage updates.
    pub(crate) updates: &'a crate::updates::Updates,
}

impl<'a> Records<'a> {
    /// The name of record `id`, from the index.
    pub(crate) fn name(&self, id: u64) -> Option<&'a str> {
        std::str::from_utf8(self.name_bytes(id)?).ok()
    }

    /// The bytes of record `id`'s name, from the index: UTF-8, which every
    /// container checks at open.
    pub(crate) fn name_bytes(&self, id: u64) -> Option<&'a [u8]> {
        let r = self.records.get(id as usize)?;
        self.bytes
            .get(r.name_at as usize..(r.name_at + u64::from(r.name_len)) as usize)
    }
}
