//! An open trace: a container's records and tensor descriptions over the
//! file's bytes, whichever container (`.tdump` or GGUF) they came from.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use regex::Regex;
use trace_format::codec::decode_storage;
use trace_format::record::{Body, RecordHeader, RecordKind};
use trace_format::{FormatError, Metadata};

use crate::container::{Describe, Opened, Records};
pub use crate::container::{RecordEntry, StorageInfo, TensorInfo, TornTail};
use crate::error::ReaderError;
use crate::source::Source;
use crate::updates::StorageBytes;

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
    by_name: OnceLock<crate::name_index::NameIndex>,
    /// How the container describes its tensors.
    tensors: Box<dyn Describe>,
    /// Derived tensors already rebuilt, shared by every read of this trace.
    pub(crate) derived: std::sync::Mutex<crate::replay::DerivedCache>,
    /// Values that reads may still make beyond the bytes their views span
    /// (broadcast views): unlimited unless set ([`Trace::set_broadcast_budget`]).
    broadcast_budget: std::sync::atomic::AtomicU64,
    /// Storage updates checked and storages materialized from them.
    updates: crate::updates::Updates,
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

    /// The one place that tells the containers apart: a GGUF file by its
    /// magic, anything else read as a `.tdump` file.
    fn from_source(path: PathBuf, source: Source) -> Result<Trace, ReaderError> {
        let bytes = source.bytes();
        let opened = if bytes.starts_with(crate::gguf::GGUF_MAGIC) {
            crate::gguf::open(&path, bytes)?
        } else {
            crate::tdump::open(&path, bytes)?
        };
        let Opened {
            version,
            records,
            finished,
            footer_offset,
            torn,
            mut warnings,
            run_metadata,
            tensors,
        } = opened;
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
        Ok(Trace {
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
            run_metadata,
            infos,
            by_name: OnceLock::new(),
            tensors,
            derived: Default::default(),
            broadcast_budget: std::sync::atomic::AtomicU64::new(u64::MAX),
            updates: Default::default(),
        })
    }

    /// The records over the file's bytes, what descriptions are read from.
    fn at(&self) -> Records<'_> {
        Records {
            path: &self.path,
            bytes: self.source.bytes(),
            records: &self.records,
            updates: &self.updates,
        }
    }

    /// Whether this is a GGUF file opened as a trace (no records, no
    /// checksums; [`Trace::version`] is (0, 0)).
    pub fn is_gguf(&self) -> bool {
        self.tensors.is_gguf()
    }

    /// Whether the records are framed and checksummed (not a GGUF file's).
    pub(crate) fn framed(&self) -> bool {
        self.tensors.framed()
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
        self.at().name(id)
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
            // built only on failure: this runs on every access by id
            .ok_or_else(|| ReaderError::NoSuchTensor {
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
        let info = Box::new(self.tensors.describe(self.at(), id)?);
        Ok(cell.get_or_init(|| info))
    }

    /// Record ids of every tensor named `name`, in order.
    pub fn find(&self, name: &str) -> &[u64] {
        self.name_index().find(name.as_bytes(), |id| {
            self.at().name_bytes(id).unwrap_or_default()
        })
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
        match t.op() {
            Some(Ok(op)) => {
                let params: Vec<String> =
                    op.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let name = op.name.as_deref().unwrap_or("?");
                parts.push(match (op.relation, params.is_empty()) {
                    (trace_format::op::Relation::Computed, true) => format!("computed by {name}"),
                    (trace_format::op::Relation::Computed, false) => {
                        format!("computed by {name}({})", params.join(", "))
                    }
                    // the view steps already say how
                    (trace_format::op::Relation::View, _) if !t.lineage.ops.is_empty() => {
                        String::new()
                    }
                    (trace_format::op::Relation::View, _) => format!("view ({name})"),
                });
                parts.retain(|p| !p.is_empty());
            }
            Some(Err(e)) => parts.push(format!("(bad op: {e})")),
            None => {}
        }
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

    /// The whole storage `info` views (empty for a tensor without one):
    /// decoding `info` checked that it lies inside the file, or that its
    /// updates are sound (then it is materialized, SPEC.md §5.7).
    pub(crate) fn storage_bytes(&self, info: &TensorInfo) -> Result<StorageBytes<'_>, ReaderError> {
        let Some(id) = info.storage else {
            return Ok(StorageBytes::Mapped(&[]));
        };
        if info.updated {
            return self
                .updates
                .materialize(self.at(), id)
                .map(StorageBytes::Materialized)
                .map_err(|reason| ReaderError::Tensor {
                    path: self.path.clone(),
                    tensor: info.name.clone(),
                    record: info.id,
                    offset: info.record_offset,
                    reason: format!("its storage cannot be rebuilt: {reason}"),
                });
        }
        Ok(StorageBytes::Mapped(
            &self.source.bytes()
                [info.storage_at as usize..(info.storage_at + info.storage_len) as usize],
        ))
    }

    /// What holds the bytes of the storage `info` views, and the offset of
    /// the storage's first byte in it: the file's own bytes, or, for a
    /// storage made of updates (SPEC.md §5.7), a buffer materialized from
    /// them, shared with the trace's cache (at offset 0). For bindings that
    /// hand out views of the bytes: those of a materialized storage are a
    /// copy, not the file.
    pub fn storage_source(&self, info: &TensorInfo) -> Result<(Arc<Source>, u64), ReaderError> {
        match self.storage_bytes(info)? {
            StorageBytes::Materialized(s) => Ok((s, 0)),
            StorageBytes::Mapped(_) => Ok((Arc::clone(&self.source), info.storage_at)),
        }
    }

    /// The storage record `id`.
    pub fn storage(&self, id: u64) -> Result<StorageInfo, ReaderError> {
        let r = self
            .records
            .get(id as usize)
            .ok_or_else(|| ReaderError::NoSuchTensor {
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

    /// Check storage update record `id` and its chain (SPEC.md §5.7);
    /// its name, or why it is unsound.
    pub(crate) fn check_update(&self, id: u64) -> Result<String, String> {
        self.updates
            .check(self.at(), id)
            .map(|c| c.desc.name.clone())
    }

    fn name_index(&self) -> &crate::name_index::NameIndex {
        self.by_name.get_or_init(|| {
            crate::name_index::NameIndex::new(&self.tensor_ids, |id| {
                self.at().name_bytes(id).unwrap_or_default()
            })
        })
    }

    pub(crate) fn record_error(&self, id: u64, source: FormatError) -> ReaderError {
        self.at().record_error(id, source)
    }

    /// The header of record `id`, checked against the index.
    pub(crate) fn header(&self, id: u64) -> Result<RecordHeader, ReaderError> {
        self.at().header(id)
    }

    /// The body of record `id`, split (no checksum check: see `verify`).
    pub(crate) fn body(&self, id: u64) -> Result<Body<'_>, ReaderError> {
        self.at().body(id)
    }
}
