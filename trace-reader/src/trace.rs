//! Opening a trace: the footer index or, for an unfinished file, a scan.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use regex::Regex;
use trace_format::codec::{
    decode_footer, decode_run_metadata, decode_storage, decode_tensor, DataRef,
};
use trace_format::record::{
    decode_file_header, next_record_offset, split_body, Body, RecordHeader, RecordKind, Trailer,
    FILE_HEADER_BYTES, RECORD_HEADER_BYTES, TRAILER_BYTES,
};
use trace_format::{DType, FormatError, Layout, Lineage, Metadata, SourceLayout, Stats, Value};

use crate::error::ReaderError;
use crate::source::Source;
use crate::view::TensorView;

/// One record as the index (or the scan) knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordEntry {
    /// Offset of the record header.
    pub offset: u64,
    /// Body length.
    pub body_len: u64,
    /// Kind code (see [`RecordKind`]).
    pub kind: u16,
    /// Step of a tensor.
    pub step: Option<i64>,
    /// Layer of a tensor.
    pub layer: Option<i64>,
    name_at: u64,
    name_len: u32,
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
    storage_at: u64,
    storage_len: u64,
}

impl TensorInfo {
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

    /// Absolute file offset of the storage's first byte.
    pub fn storage_file_offset(&self) -> u64 {
        self.storage_at
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

/// Which tensors [`Trace::filter`] returns; empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct TensorFilter {
    /// Names matching this regex (anywhere in the name).
    pub name: Option<Regex>,
    /// This layer.
    pub layer: Option<i64>,
    /// This step.
    pub step: Option<i64>,
    /// This role.
    pub role: Option<String>,
}

/// An open trace: zero-copy over a read-only map of the file.
///
/// [`Trace::open`] checks structure and bounds only (cheap: with a footer it
/// reads the index and nothing else); tensor descriptions are decoded and
/// bounds-checked on first use; [`Trace::verify`] checks every checksum and
/// replays every lineage.
#[derive(Debug)]
pub struct Trace {
    pub(crate) path: PathBuf,
    pub(crate) source: Arc<Source>,
    version: (u16, u16),
    pub(crate) records: Vec<RecordEntry>,
    tensor_ids: Vec<u64>,
    /// Position of each record among the tensors (u32::MAX for other kinds).
    tensor_slot: Vec<u32>,
    finished: bool,
    footer_offset: Option<u64>,
    torn: Option<TornTail>,
    pub(crate) warnings: Vec<String>,
    run_metadata: Metadata,
    /// Decoded tensors, filled on first use (boxed: an unused slot costs 8 bytes).
    infos: Vec<OnceLock<Box<TensorInfo>>>,
    by_name: OnceLock<HashMap<String, Vec<u64>>>,
    /// For a GGUF file opened as a trace: its tensor table.
    gguf: Option<Box<[crate::gguf::GgufTensorInfo]>>,
    /// Derived tensors already rebuilt, shared by every read of this trace.
    pub(crate) derived: std::sync::Mutex<crate::values::DerivedCache>,
    /// Values that reads may still make beyond the bytes their views span
    /// (broadcast views): unlimited unless set ([`Trace::set_broadcast_budget`]).
    broadcast_budget: std::sync::atomic::AtomicU64,
}

impl Trace {
    /// Open a trace file.
    pub fn open(path: impl AsRef<Path>) -> Result<Trace, ReaderError> {
        let path = path.as_ref().to_path_buf();
        let source = Source::map(&path).map_err(|source| ReaderError::Io {
            path: path.clone(),
            error: source,
        })?;
        Self::from_source(path, source)
    }

    /// Read a trace held in memory; `label` names it in errors.
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Trace, ReaderError> {
        Self::from_source(label.into(), Source::Owned(bytes))
    }

    fn from_source(path: PathBuf, source: Source) -> Result<Trace, ReaderError> {
        let bytes = source.bytes();
        if bytes.starts_with(crate::gguf::GGUF_MAGIC) {
            return Self::from_gguf(path, source);
        }
        let version = decode_file_header(bytes).map_err(|source| ReaderError::NotATrace {
            path: path.clone(),
            error: Box::new(source),
        })?;
        let mut warnings = Vec::new();
        let (records, finished, footer_offset, torn) = match read_footer(bytes) {
            Ok(Some((records, footer_offset))) => (records, true, Some(footer_offset), None),
            Ok(None) => {
                let (records, torn) = scan(bytes);
                (records, false, None, torn)
            }
            Err(e) => {
                warnings.push(format!(
                    "the footer index is damaged ({e}); records were found by scanning"
                ));
                let (records, torn) = scan(bytes);
                (records, false, None, torn)
            }
        };
        let mut tensor_ids = Vec::new();
        let mut tensor_slot = vec![u32::MAX; records.len()];
        for (id, r) in records.iter().enumerate() {
            if r.kind == RecordKind::Tensor as u16 {
                tensor_slot[id] = tensor_ids.len() as u32;
                tensor_ids.push(id as u64);
            } else if RecordKind::from_code(r.kind).is_none() {
                warnings.push(format!(
                    "record {id} at byte {} has unknown kind {}; skipped",
                    r.offset, r.kind
                ));
            }
        }
        let infos = (0..tensor_ids.len()).map(|_| OnceLock::new()).collect();
        let mut trace = Trace {
            path,
            source: Arc::new(source),
            version,
            records,
            tensor_ids,
            tensor_slot,
            finished,
            footer_offset,
            torn,
            warnings,
            run_metadata: Metadata::new(),
            infos,
            by_name: OnceLock::new(),
            gguf: None,
            derived: Default::default(),
            broadcast_budget: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        let mut run = Metadata::new();
        for id in 0..trace.records.len() as u64 {
            if trace.records[id as usize].kind == RecordKind::RunMetadata as u16 {
                let body = trace.body(id)?;
                let m = decode_run_metadata(body.descriptor, body.descriptor_offset)
                    .map_err(|e| trace.record_error(id, e))?;
                for (k, v) in m.0 {
                    run.insert(k, v);
                }
            }
        }
        trace.run_metadata = run;
        Ok(trace)
    }

    /// A GGUF file as a trace: every tensor (raw blocks, ggml `ne` kept as
    /// the source layout), the key-value metadata as run metadata, layer
    /// and step parsed from the tensor names.
    fn from_gguf(path: PathBuf, source: Source) -> Result<Trace, ReaderError> {
        let g = crate::gguf::parse(&path, source.bytes())?;
        let mut run = Metadata::new();
        run.insert("format", Value::Str("gguf".into()));
        run.insert("gguf_version", Value::U64(u64::from(g.version)));
        for (k, v) in &g.metadata {
            run.insert(k.clone(), v.to_value());
        }
        let records: Vec<RecordEntry> = g
            .tensors
            .iter()
            .map(|t| RecordEntry {
                offset: t.info_offset,
                body_len: 0,
                kind: RecordKind::Tensor as u16,
                step: crate::names::step_from_name(&t.name),
                layer: crate::names::layer_from_name(&t.name),
                name_at: t.name_offset,
                name_len: t.name.len() as u32,
            })
            .collect();
        let n = records.len();
        Ok(Trace {
            path,
            source: Arc::new(source),
            version: (0, 0),
            tensor_ids: (0..n as u64).collect(),
            tensor_slot: (0..n as u32).collect(),
            records,
            finished: true,
            footer_offset: None,
            torn: None,
            warnings: Vec::new(),
            run_metadata: run,
            infos: (0..n).map(|_| OnceLock::new()).collect(),
            by_name: OnceLock::new(),
            gguf: Some(g.tensors.into_boxed_slice()),
            derived: Default::default(),
            broadcast_budget: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    /// Whether this is a GGUF file opened as a trace (no records, no
    /// checksums; [`Trace::version`] is (0, 0)).
    pub fn is_gguf(&self) -> bool {
        self.gguf.is_some()
    }

    fn decode_gguf_tensor(
        &self,
        id: u64,
        tensors: &[crate::gguf::GgufTensorInfo],
    ) -> Result<TensorInfo, ReaderError> {
        let t = &tensors[id as usize];
        let err = |reason: String| ReaderError::Gguf {
            path: self.path.clone(),
            offset: t.info_offset,
            tensor: Some(t.name.clone()),
            reason,
        };
        let dtype = t.dtype.ok_or_else(|| {
            err(format!(
                "ggml type {} is not known to this reader",
                t.ggml_type
            ))
        })?;
        let shape: Vec<u64> = t.ne.iter().rev().copied().collect();
        let layout = Layout::contiguous(dtype, &shape, 0).map_err(|e| err(e.to_string()))?;
        layout
            .check_within(dtype, t.nbytes)
            .map_err(|e| err(e.to_string()))?;
        // ggml's ne/nb of the contiguous tensor (nb[0] = block bytes)
        let (ne, nb) = trace_format::layout::ggml::from_canonical(&layout, t.ne.len())
            .ok_or_else(|| err("its layout has no ggml form".into()))?;
        let r = self.records[id as usize];
        Ok(TensorInfo {
            id,
            name: t.name.clone(),
            dtype,
            layout,
            storage: Some(id),
            step: r.step,
            layer: r.layer,
            role: None,
            source_layout: Some(SourceLayout::Ggml { ne, nb }),
            lineage: Lineage::default(),
            stats: None,
            metadata: Metadata::new().with("gguf_offset", t.offset),
            record_offset: t.info_offset,
            derived: false,
            storage_at: t.file_offset,
            storage_len: t.nbytes,
        })
    }

    /// Bound the values all reads of this trace may make beyond the bytes
    /// their views span (a view with zero strides names more values than
    /// it holds): once `values` of them are spent, such a read is refused
    /// with an error naming the tensor. Unlimited by default; the
    /// `tracedump` verbs set 4 × the file's value limit (SPEC.md §9), so
    /// that their work follows the file's size, not what it claims.
    pub fn set_broadcast_budget(&self, values: u64) {
        self.broadcast_budget
            .store(values, std::sync::atomic::Ordering::Relaxed);
    }

    /// Spend `values` of the broadcast budget; false (nothing spent) when
    /// fewer are left.
    pub(crate) fn spend_broadcast(&self, values: u64) -> bool {
        use std::sync::atomic::Ordering;
        self.broadcast_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(values)
            })
            .is_ok()
    }
    /// The file's path (or the label given to [`Trace::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shared bytes of the file (for zero-copy bindings).
    pub fn source(&self) -> &Arc<Source> {
        &self.source
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.source.bytes().len() as u64
    }

    /// Format version (major, minor).
    pub fn version(&self) -> (u16, u16) {
        self.version
    }

    /// Whether the writer finished the file (footer and trailer present and valid).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// For an unfinished file: where the complete records end, and why.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// Things found while opening that are not errors (unknown record kinds,
    /// a damaged footer that forced a scan).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Run-level metadata (all RUN_METADATA records, later keys winning).
    pub fn run_metadata(&self) -> &Metadata {
        &self.run_metadata
    }

    /// Every record, in file order (index = record id).
    pub fn records(&self) -> &[RecordEntry] {
        &self.records
    }

    /// Offset of the footer record, for a finished file.
    pub fn footer_offset(&self) -> Option<u64> {
        self.footer_offset
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensor_ids.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensor_ids.is_empty()
    }

    /// Record ids of every tensor, in record (= execution) order.
    pub fn tensor_ids(&self) -> &[u64] {
        &self.tensor_ids
    }

    /// The name of record `id` (tensor or storage), from the index.
    pub fn record_name(&self, id: u64) -> Option<&str> {
        let r = self.records.get(id as usize)?;
        let b = self
            .source
            .bytes()
            .get(r.name_at as usize..(r.name_at + u64::from(r.name_len)) as usize)?;
        std::str::from_utf8(b).ok()
    }

    /// Every tensor's description, in record order.
    pub fn tensors(&self) -> impl Iterator<Item = Result<&TensorInfo, ReaderError>> + '_ {
        self.tensor_ids.iter().map(move |&id| self.tensor(id))
    }

    /// The tensor with record id `id`, decoded and bounds-checked.
    pub fn tensor(&self, id: u64) -> Result<&TensorInfo, ReaderError> {
        let slot = *self
            .tensor_slot
            .get(id as usize)
            .ok_or(ReaderError::NoSuchTensor {
                path: self.path.clone(),
                record: id,
            })?;
        if slot == u32::MAX {
            return Err(ReaderError::NoSuchTensor {
                path: self.path.clone(),
                record: id,
            });
        }
        let cell = &self.infos[slot as usize];
        if let Some(info) = cell.get() {
            return Ok(info);
        }
        let info = Box::new(match &self.gguf {
            Some(tensors) => self.decode_gguf_tensor(id, tensors)?,
            None => self.decode_tensor(id)?,
        });
        Ok(cell.get_or_init(|| info))
    }

    /// Record ids of every tensor named `name`, in order.
    pub fn find(&self, name: &str) -> &[u64] {
        self.name_index()
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Which occurrence of its name tensor `id` is: `(k, n)`, the k-th (from 0) of n.
    pub fn occurrence(&self, id: u64) -> Option<(usize, usize)> {
        let all = self.find(self.record_name(id)?);
        all.iter().position(|&x| x == id).map(|k| (k, all.len()))
    }

    /// The lineage of tensor `id` as one line, parents by name and record
    /// id: `cache_k_l0#16 → view(+0, [1,8,4,16]) → permute(0,2,1,3) → [ggml PERMUTE]`
    /// (empty when it has none or cannot be read).
    pub fn lineage_text(&self, id: u64) -> String {
        let Ok(t) = self.tensor(id) else {
            return String::new();
        };
        let mut parts: Vec<String> = Vec::new();
        if !t.lineage.parents.is_empty() {
            let names: Vec<String> = t
                .lineage
                .parents
                .iter()
                .map(|&p| format!("{}#{p}", self.record_name(p).unwrap_or("?")))
                .collect();
            parts.push(names.join(" + "));
        }
        parts.extend(t.lineage.ops.iter().map(|o| o.to_string()));
        if let Some(op) = &t.lineage.engine_op {
            parts.push(format!("[{} {}]", op.engine, op.op));
        }
        parts.join(" → ")
    }

    /// Look a tensor up by name. Names are not identities: a plain name
    /// gives its **first** occurrence in execution order; `name#k` gives
    /// the k-th (from 0) when no tensor is literally named `name#k`; use
    /// [`Trace::find`] for all of them.
    pub fn get(&self, name: &str) -> Result<&TensorInfo, ReaderError> {
        self.resolve(name).and_then(|id| self.tensor(id))
    }

    /// The record id [`Trace::get`] would return.
    pub fn resolve(&self, name: &str) -> Result<u64, ReaderError> {
        if let Some(&id) = self.find(name).first() {
            return Ok(id);
        }
        if let Some((base, k)) = name.rsplit_once('#') {
            if let Ok(k) = k.parse::<usize>() {
                if let Some(&id) = self.find(base).get(k) {
                    return Ok(id);
                }
            }
        }
        Err(ReaderError::NotFound {
            path: self.path.clone(),
            name: name.to_owned(),
        })
    }

    /// Record ids of the tensors that pass `filter`, in order. Tensors whose
    /// description cannot be decoded are kept when only their role is unknown.
    pub fn filter(&self, filter: &TensorFilter) -> Result<Vec<u64>, ReaderError> {
        let mut out = Vec::new();
        for &id in &self.tensor_ids {
            let r = &self.records[id as usize];
            if let Some(re) = &filter.name {
                if !re.is_match(self.record_name(id).unwrap_or("")) {
                    continue;
                }
            }
            // the index's step and layer are the records' own (verify checks that)
            if filter.layer.is_some() && r.layer != filter.layer
                || filter.step.is_some() && r.step != filter.step
            {
                continue;
            }
            if filter.role.is_some() {
                // a tensor that cannot be decoded stays in, so its error is seen
                if let Ok(t) = self.tensor(id) {
                    if t.role != filter.role {
                        continue;
                    }
                }
            }
            out.push(id);
        }
        Ok(out)
    }

    /// A zero-copy view of the tensor with record id `id`.
    pub fn view(&self, id: u64) -> Result<TensorView<'_>, ReaderError> {
        let info = self.tensor(id)?;
        let bytes = self.source.bytes();
        let storage = if info.storage.is_some() {
            &bytes[info.storage_at as usize..(info.storage_at + info.storage_len) as usize]
        } else {
            &[][..]
        };
        Ok(TensorView::new(self, info, storage))
    }

    /// [`Trace::view`] by name (see [`Trace::get`] for repeated names).
    pub fn view_by_name(&self, name: &str) -> Result<TensorView<'_>, ReaderError> {
        self.resolve(name).and_then(|id| self.view(id))
    }

    /// The storage record `id`.
    pub fn storage(&self, id: u64) -> Result<StorageInfo, ReaderError> {
        let r = self
            .records
            .get(id as usize)
            .ok_or(ReaderError::NoSuchTensor {
                path: self.path.clone(),
                record: id,
            })?;
        if r.kind != RecordKind::Storage as u16 {
            return Err(ReaderError::NoSuchTensor {
                path: self.path.clone(),
                record: id,
            });
        }
        let body = self.body(id)?;
        let d = decode_storage(body.descriptor, body.descriptor_offset)
            .map_err(|e| self.record_error(id, e))?;
        Ok(StorageInfo {
            id,
            name: d.name,
            metadata: d.metadata,
            len: body.payload.len() as u64,
            file_offset: body.payload_offset,
        })
    }

    fn name_index(&self) -> &HashMap<String, Vec<u64>> {
        self.by_name.get_or_init(|| {
            let mut m: HashMap<String, Vec<u64>> = HashMap::with_capacity(self.tensor_ids.len());
            for &id in &self.tensor_ids {
                m.entry(self.record_name(id).unwrap_or("").to_owned())
                    .or_default()
                    .push(id);
            }
            m
        })
    }

    pub(crate) fn record_error(&self, id: u64, source: FormatError) -> ReaderError {
        let offset = self.records.get(id as usize).map_or(0, |r| r.offset);
        let name = self.record_name(id).unwrap_or("").to_owned();
        ReaderError::Record {
            path: self.path.clone(),
            record: id,
            name,
            offset,
            error: Box::new(source),
        }
    }

    /// The header of record `id`, checked against the index.
    pub(crate) fn header(&self, id: u64) -> Result<RecordHeader, ReaderError> {
        let r = self.records[id as usize];
        let bytes = self.source.bytes();
        let h = bytes.get(r.offset as usize..).unwrap_or(&[]);
        let header = RecordHeader::decode(h, r.offset).map_err(|e| self.record_error(id, e))?;
        let mismatch = |what: &str| {
            self.record_error(
                id,
                FormatError::Invalid {
                    field: "record header",
                    offset: r.offset,
                    reason: format!("{what} differs from the index"),
                },
            )
        };
        if header.record_id != id {
            return Err(mismatch("record id"));
        }
        if header.kind != r.kind {
            return Err(mismatch("kind"));
        }
        if header.body_len != r.body_len {
            return Err(mismatch("body length"));
        }
        Ok(header)
    }

    /// The body of record `id`, split (no checksum check: see `verify`).
    pub(crate) fn body(&self, id: u64) -> Result<Body<'_>, ReaderError> {
        self.header(id)?;
        let r = self.records[id as usize];
        let start = (r.offset + RECORD_HEADER_BYTES) as usize;
        // open() checked that every body lies inside the file.
        let body = &self.source.bytes()[start..start + r.body_len as usize];
        split_body(body, r.offset).map_err(|e| self.record_error(id, e))
    }

    fn decode_tensor(&self, id: u64) -> Result<TensorInfo, ReaderError> {
        let body = self.body(id)?;
        let r = self.records[id as usize];
        let mut d = decode_tensor(body.descriptor, body.descriptor_offset).map_err(|e| {
            match self.record_error(id, e) {
                ReaderError::Record {
                    path,
                    record,
                    name,
                    offset,
                    error: source,
                } if name.is_empty() => {
                    // name the tensor from its own descriptor when the index has no name
                    let name = trace_format::codec::Decoder::new(body.descriptor, 0)
                        .str("name")
                        .unwrap_or("")
                        .to_owned();
                    ReaderError::Record {
                        path,
                        record,
                        name,
                        offset,
                        error: source,
                    }
                }
                other => other,
            }
        })?;
        let tensor_err = |reason: String| ReaderError::Tensor {
            path: self.path.clone(),
            tensor: d.name.clone(),
            record: id,
            offset: r.offset,
            reason,
        };
        if !matches!(d.data, DataRef::Inline { .. }) && !body.payload.is_empty() {
            return Err(tensor_err(format!(
                "carries {} payload bytes but does not say they are its data",
                body.payload.len()
            )));
        }
        let layout = Layout::new(
            std::mem::take(&mut d.shape),
            std::mem::take(&mut d.byte_strides),
            0,
        )
        .map_err(|source| ReaderError::Layout {
            path: self.path.clone(),
            tensor: d.name.clone(),
            record: id,
            error: Box::new(source),
        })?;
        let (storage, offset, storage_at, storage_len) = match d.data {
            DataRef::StatsOnly => {
                if d.stats.is_none() {
                    return Err(tensor_err("stats-only tensor without stats".into()));
                }
                (None, 0, 0, 0)
            }
            DataRef::Derived => {
                if d.lineage.ops.is_empty() {
                    return Err(tensor_err(
                        "derived tensor without lineage steps to rebuild it from".into(),
                    ));
                }
                (None, 0, 0, 0)
            }
            DataRef::Inline { offset } => (
                Some(id),
                offset,
                body.payload_offset,
                body.payload.len() as u64,
            ),
            DataRef::Storage { storage, offset } => {
                if storage >= id {
                    return Err(tensor_err(format!(
                        "views storage record {storage}, which does not come before it"
                    )));
                }
                let kind = self.records[storage as usize].kind;
                let sb = self.body(storage)?;
                if kind == RecordKind::Tensor as u16 {
                    let sd = decode_tensor(sb.descriptor, sb.descriptor_offset)
                        .map_err(|e| self.record_error(storage, e))?;
                    if !matches!(sd.data, DataRef::Inline { .. }) {
                        return Err(tensor_err(format!(
                            "record {storage} is a tensor without its own bytes, not a storage"
                        )));
                    }
                } else if kind != RecordKind::Storage as u16 {
                    return Err(tensor_err(format!(
                        "record {storage} is not a storage (kind {kind})"
                    )));
                }
                (
                    Some(storage),
                    offset,
                    sb.payload_offset,
                    sb.payload.len() as u64,
                )
            }
        };
        let layout = Layout {
            storage_offset: offset,
            ..layout
        };
        if let Some(s) = storage {
            layout
                .check_within(d.dtype, storage_len)
                .map_err(|source| ReaderError::Layout {
                    path: self.path.clone(),
                    tensor: d.name.clone(),
                    record: id,
                    error: Box::new(annotate(source, s)),
                })?;
        }
        Ok(TensorInfo {
            id,
            name: d.name,
            dtype: d.dtype,
            layout,
            storage,
            step: d.step,
            layer: d.layer,
            role: d.role,
            source_layout: d.source_layout,
            lineage: d.lineage,
            stats: d.stats,
            metadata: d.metadata,
            record_offset: r.offset,
            derived: matches!(d.data, DataRef::Derived),
            storage_at,
            storage_len,
        })
    }
}

/// Name the storage in an out-of-bounds error.
fn annotate(e: trace_format::LayoutError, storage: u64) -> trace_format::LayoutError {
    match e {
        trace_format::LayoutError::BlockMapping { dtype, reason } => {
            trace_format::LayoutError::BlockMapping {
                dtype,
                reason: format!("{reason} (storage {storage})"),
            }
        }
        other => other,
    }
}

/// The records of a finished file, from its footer. `Ok(None)` when there
/// is no valid trailer (an unfinished file).
fn read_footer(bytes: &[u8]) -> Result<Option<(Vec<RecordEntry>, u64)>, FormatError> {
    let len = bytes.len() as u64;
    if len < FILE_HEADER_BYTES + TRAILER_BYTES {
        return Ok(None);
    }
    let Some(trailer) = Trailer::decode(&bytes[(len - TRAILER_BYTES) as usize..]) else {
        return Ok(None);
    };
    let invalid = |offset, reason: String| FormatError::Invalid {
        field: "footer",
        offset,
        reason,
    };
    let fo = trailer.footer_offset;
    if fo < FILE_HEADER_BYTES
        || fo % 64 != 0
        || fo.saturating_add(RECORD_HEADER_BYTES) > len - TRAILER_BYTES
    {
        return Err(invalid(
            len - TRAILER_BYTES,
            format!("trailer points to byte {fo}, outside the file"),
        ));
    }
    let h = RecordHeader::decode(&bytes[fo as usize..], fo)?;
    if h.kind != RecordKind::Footer as u16 || h.record_id != trailer.record_count {
        return Err(invalid(
            fo,
            "the trailer does not point to the footer record".into(),
        ));
    }
    let body_start = fo + RECORD_HEADER_BYTES;
    if next_record_offset(fo, h.body_len) != Some(len - TRAILER_BYTES) {
        return Err(invalid(
            fo,
            format!(
                "footer body of {} bytes does not end where the trailer starts",
                h.body_len
            ),
        ));
    }
    let body = &bytes[body_start as usize..(body_start + h.body_len) as usize];
    if trace_format::record::crc32c(body) != h.body_crc32c {
        return Err(invalid(fo, "footer checksum mismatch".into()));
    }
    let b = split_body(body, fo)?;
    let (entries, names) = decode_footer(b.descriptor, b.descriptor_offset)?;
    if entries.len() as u64 != trailer.record_count {
        return Err(invalid(
            fo,
            "record count differs from the trailer's".into(),
        ));
    }
    let names_at = b.descriptor_offset + b.descriptor.len() as u64 - names.len() as u64;
    let mut records = Vec::with_capacity(entries.len());
    let mut expect = FILE_HEADER_BYTES;
    for (id, e) in entries.iter().enumerate() {
        let at = b.descriptor_offset + 8 + (id * trace_format::codec::INDEX_ENTRY_BYTES) as u64;
        if e.offset != expect {
            return Err(invalid(
                at,
                format!(
                    "record {id} is indexed at byte {}, expected {expect}",
                    e.offset
                ),
            ));
        }
        expect = next_record_offset(e.offset, e.body_len)
            .filter(|&n| n <= fo)
            .ok_or_else(|| {
                invalid(
                    at,
                    format!("record {id} of {} bytes runs past the footer", e.body_len),
                )
            })?;
        let name_end = e
            .name_offset
            .checked_add(u64::from(e.name_len))
            .filter(|&n| n <= names.len() as u64);
        let Some(name_end) = name_end else {
            return Err(invalid(
                at,
                format!("record {id}'s name lies outside the name table"),
            ));
        };
        if std::str::from_utf8(&names[e.name_offset as usize..name_end as usize]).is_err() {
            return Err(invalid(at, format!("record {id}'s name is not UTF-8")));
        }
        records.push(RecordEntry {
            offset: e.offset,
            body_len: e.body_len,
            kind: e.kind,
            step: e.step,
            layer: e.layer,
            name_at: names_at + e.name_offset,
            name_len: e.name_len,
        });
    }
    if expect != fo {
        return Err(invalid(
            fo,
            format!("bytes {expect}..{fo} before the footer belong to no record"),
        ));
    }
    Ok(Some((records, fo)))
}

/// Walk the records of a file from the start; stop at the first that is
/// incomplete or invalid. Footer records met on the way are not records of
/// the trace (a writer that died after its footer but before its trailer).
fn scan(bytes: &[u8]) -> (Vec<RecordEntry>, Option<TornTail>) {
    let len = bytes.len() as u64;
    let mut records = Vec::new();
    let mut at = FILE_HEADER_BYTES;
    let stop = |at: u64, reason: String| {
        Some(TornTail {
            offset: at,
            bytes: len - at,
            reason,
        })
    };
    loop {
        if at >= len {
            return (records, None);
        }
        let h = match RecordHeader::decode(&bytes[at as usize..], at) {
            Ok(h) => h,
            // only zeros left: space a writer allocated ahead, nothing lost
            Err(_) if bytes[at as usize..].iter().all(|&b| b == 0) => return (records, None),
            Err(e) => return (records, stop(at, e.to_string())),
        };
        if h.record_id != records.len() as u64 {
            let reason = format!(
                "record header says id {}, expected {}",
                h.record_id,
                records.len()
            );
            return (records, stop(at, reason));
        }
        let end = at
            .checked_add(RECORD_HEADER_BYTES)
            .and_then(|x| x.checked_add(h.body_len));
        let Some(end) = end.filter(|&e| e <= len) else {
            return (
                records,
                stop(
                    at,
                    format!(
                        "record {} needs {} body bytes; the file ends first",
                        h.record_id, h.body_len
                    ),
                ),
            );
        };
        let body = &bytes[(at + RECORD_HEADER_BYTES) as usize..end as usize];
        if h.kind == RecordKind::Footer as u16 {
            let trailing = len - at;
            return (
                records,
                stop(
                    at,
                    format!("footer record without a valid trailer ({trailing} bytes)"),
                ),
            );
        }
        let Ok(b) = split_body(body, at) else {
            return (records, stop(at, "malformed record body".into()));
        };
        let (mut name_at, mut name_len, mut step, mut layer) =
            (b.descriptor_offset, 0u32, None, None);
        if h.kind == RecordKind::Tensor as u16 || h.kind == RecordKind::Storage as u16 {
            if b.descriptor.len() >= 4 {
                let n = u32::from_le_bytes(b.descriptor[0..4].try_into().unwrap_or_default());
                if 4 + n as usize <= b.descriptor.len()
                    && std::str::from_utf8(&b.descriptor[4..4 + n as usize]).is_ok()
                {
                    name_at = b.descriptor_offset + 4;
                    name_len = n;
                }
            }
            if h.kind == RecordKind::Tensor as u16 {
                if let Ok(d) = decode_tensor(b.descriptor, b.descriptor_offset) {
                    step = d.step;
                    layer = d.layer;
                }
            }
        }
        records.push(RecordEntry {
            offset: at,
            body_len: h.body_len,
            kind: h.kind,
            step,
            layer,
            name_at,
            name_len,
        });
        match next_record_offset(at, h.body_len) {
            Some(next) if next <= len => at = next,
            // the last record is complete; only its padding was cut
            _ => {
                return (
                    records,
                    stop(
                        end,
                        "the file ends inside the padding after the last record".into(),
                    ),
                )
            }
        }
    }
}
