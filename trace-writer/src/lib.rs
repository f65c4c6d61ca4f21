#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod capi;
mod error;
mod filter;
pub mod ggml;
mod sink;
mod stream_copy;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub use error::WriterError;
pub use filter::CaptureFilter;
pub use trace_format::{
    DType, EngineOp, Layout, Lineage, Metadata, Op, SourceLayout, Stats, Value,
};

use sink::{RecordParts, Sink};
use trace_format::codec::{
    encode_run_metadata, encode_storage, encode_tensor, DataRef, StorageDesc, TensorDesc,
};
use trace_format::record::RecordKind;
use trace_format::stats::compute_stats;
use trace_format::NativeType;

/// The path an in-memory writer reports ([`Writer::in_memory`]).
const MEMORY_PATH: &str = "<memory>";

/// A record's id: its position among the file's records, from 0. Tensors are
/// identified by it (names repeat); storages are referred to by it.
pub type RecordId = u64;

/// Run metadata a user would want in every trace: the command line
/// (`command_line`), the time (`created_unix_ns`), the process id (`pid`) and
/// the writer's version (`tracedump_version`). Add your own keys (`engine`,
/// `model`, `engine_version`, …) to it.
pub fn default_run_metadata() -> Metadata {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let args: Vec<String> = std::env::args().collect();
    Metadata::new()
        .with("command_line", args.join(" "))
        .with("created_unix_ns", now)
        .with("pid", u64::from(std::process::id()))
        .with("tracedump_version", env!("CARGO_PKG_VERSION"))
}

/// What to do when the background queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait until the writer thread has made room (nothing is lost).
    Block,
    /// Drop the record and count it ([`Writer::dropped`]); `add_*` return `Ok(None)`.
    Drop,
}

/// How records reach the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The recording thread frames and writes the record itself (small
    /// ones into a shared mapping of the file where the file system
    /// allows: see the crate README).
    Sync,
    /// The recording thread copies the bytes once into a queue; a writer
    /// thread does the I/O. At most `budget_bytes` wait in the queue, and at
    /// most as much again is kept for reuse (written staging chunks, the
    /// last batch's arena), so memory stays below twice the budget whatever
    /// the recording rate.
    Background {
        /// Most bytes (payloads and descriptors) held in the queue.
        budget_bytes: u64,
        /// Block or drop when the budget is used up.
        when_full: WhenFull,
    },
}

/// Options of [`Writer::with_options`].
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Sync (default) or background.
    pub mode: Mode,
    /// Which tensors to record (default: all).
    pub filter: CaptureFilter,
    /// Sync mode on Linux: copy small records into a shared mapping of
    /// space allocated ahead of them, one system call fewer a record
    /// (default). The file never shrinks, so a finished file keeps that
    /// space as its footer's zero payload (SPEC.md §5.6): up to the file's
    /// own size, at most 4 MiB, its disk blocks given back. `false` writes
    /// every record, and a file exactly as long as its records.
    pub allocate_ahead: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            mode: Mode::Sync,
            filter: CaptureFilter::default(),
            allocate_ahead: true,
        }
    }
}

/// Everything about a tensor besides its bytes and layout.
#[derive(Clone, Debug, Default)]
pub struct TensorMeta {
    /// Decode step.
    pub step: Option<i64>,
    /// Layer number.
    pub layer: Option<i64>,
    /// Role (`q`, `k`, `v`, `mask`, `kq`, `kqv_out`, `k_hot`, `k_quant`, …).
    pub role: Option<String>,
    /// Parents, steps and engine op.
    pub lineage: Lineage,
    /// The engine's own layout (ggml `ne`/`nb`).
    pub source_layout: Option<SourceLayout>,
    /// Statistics to store with the tensor.
    pub stats: Option<Stats>,
    /// Free typed metadata.
    pub metadata: Metadata,
}

impl TensorMeta {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the step.
    pub fn step(mut self, step: i64) -> Self {
        self.step = Some(step);
        self
    }
    /// Set the layer.
    pub fn layer(mut self, layer: i64) -> Self {
        self.layer = Some(layer);
        self
    }
    /// Set the role.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = Some(role.into());
        self
    }
    /// Add a parent tensor.
    pub fn parent(mut self, id: RecordId) -> Self {
        self.lineage.parents.push(id);
        self
    }
    /// Add a lineage step.
    pub fn op(mut self, op: Op) -> Self {
        self.lineage.ops.push(op);
        self
    }
    /// Set the engine's op, kept verbatim.
    pub fn engine_op(mut self, engine: &str, op: &str, params: &[u8]) -> Self {
        self.lineage.engine_op = Some(EngineOp {
            engine: engine.into(),
            op: op.into(),
            params: params.to_vec(),
        });
        self
    }
    /// Keep ggml's `ne`/`nb` (fastest first) beside the canonical layout.
    pub fn ggml_layout(mut self, ne: &[i64], nb: &[u64]) -> Self {
        self.source_layout = Some(SourceLayout::Ggml {
            ne: ne.to_vec(),
            nb: nb.to_vec(),
        });
        self
    }
    /// Add a metadata entry.
    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key, value);
        self
    }
}

/// What [`Writer::finish`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishSummary {
    /// Records written (footer excluded).
    pub records: u64,
    /// Records dropped because the background queue was full.
    pub dropped: u64,
    /// File size in bytes.
    pub bytes: u64,
}

/// A record waiting in the background queue.
#[derive(Debug)]
struct Pending {
    id: RecordId,
    kind: RecordKind,
    step: Option<i64>,
    layer: Option<i64>,
    /// The name's and descriptor's bytes in the queue's arena.
    name: std::ops::Range<usize>,
    descriptor: std::ops::Range<usize>,
    payload: Staged,
    /// The payload's crc32c when the recording thread computed it (it
    /// asked for it): the writer thread then does not compute it again.
    payload_crc32c: Option<u32>,
}

impl Pending {
    fn cost(&self) -> u64 {
        (self.descriptor.len() + self.payload.len() + self.name.len()) as u64
    }
}

/// A payload copied into the queue: a small one in the queue's arena (with
/// the names and descriptors: one buffer, reused batch after batch, so a
/// small record costs no allocation on either thread), a large one in
/// staging chunks (reused from record to record, so that once the queue
/// has been through its budget, or after [`Writer::preallocate`], the copy
/// goes to memory that is already mapped).
#[derive(Debug)]
enum Staged {
    Arena(std::ops::Range<usize>),
    Chunks { chunks: Vec<Chunk>, len: usize },
}

/// A chunk of staging memory: an anonymous mapping of [`CHUNK_BYTES`]
/// whose pages are mapped in one go when it is made (`MAP_POPULATE` on
/// Linux: about twice as fast as faulting the pages in one by one with the
/// first copy).
type Chunk = memmap2::MmapMut;

impl Staged {
    fn len(&self) -> usize {
        match self {
            Staged::Arena(r) => r.len(),
            Staged::Chunks { len, .. } => *len,
        }
    }

    /// The bytes, in order (`arena`: the queue arena they were added to);
    /// a small payload is one piece, with no allocation.
    fn pieces<'a>(&'a self, arena: &'a [u8]) -> Pieces<'a> {
        match self {
            Staged::Arena(r) => Pieces::One([&arena[r.clone()]]),
            Staged::Chunks { chunks, len } => {
                let mut left = *len;
                Pieces::Many(
                    chunks
                        .iter()
                        .map(|c| {
                            let n = left.min(c.len());
                            left -= n;
                            &c[..n]
                        })
                        .collect(),
                )
            }
        }
    }
}

/// A staged payload's pieces.
enum Pieces<'a> {
    One([&'a [u8]; 1]),
    Many(Vec<&'a [u8]>),
}

impl<'a> std::ops::Deref for Pieces<'a> {
    type Target = [&'a [u8]];

    fn deref(&self) -> &Self::Target {
        match self {
            Pieces::One(p) => p,
            Pieces::Many(p) => p,
        }
    }
}

/// Queued bytes from which the recording thread wakes an idle writer thread.
const WAKE_BYTES: u64 = 64 << 10;

/// How long an idle writer thread sleeps before it looks at the queue
/// again (small records that did not wake it wait at most this long).
const WAKE_AFTER: std::time::Duration = std::time::Duration::from_millis(2);

/// Storage lengths by record id (ids are dense, so a vector: no hashing on
/// every tensor recorded with its own bytes).
#[derive(Debug, Default)]
struct StorageLens(Vec<u64>);

impl StorageLens {
    const NONE: u64 = u64::MAX;

    fn insert(&mut self, id: RecordId, len: u64) {
        let Ok(i) = usize::try_from(id) else { return };
        if self.0.len() <= i {
            self.0.resize(i + 1, Self::NONE);
        }
        self.0[i] = len;
    }

    fn get(&self, id: RecordId) -> Option<u64> {
        let len = *self.0.get(usize::try_from(id).ok()?)?;
        (len != Self::NONE).then_some(len)
    }
}

/// Payloads from this size on are staged in chunks.
const STAGE_MIN_BYTES: usize = 64 << 10;

/// The size of a staging chunk.
const CHUNK_BYTES: usize = 1 << 20;

/// A new staging chunk, its pages mapped.
fn mapped_chunk() -> std::io::Result<Chunk> {
    memmap2::MmapOptions::new()
        .len(CHUNK_BYTES)
        .populate()
        .map_anon()
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Pending>,
    /// Names, descriptors and small payloads of `items`.
    arena: Vec<u8>,
    /// The arena of the last batch written, emptied, for the next swap.
    spare_arena: Vec<u8>,
    queued_bytes: u64,
    /// The background budget (0 in sync mode).
    budget: u64,
    /// Ids handed out (background mode assigns ids at enqueue time).
    next_id: u64,
    writing: bool,
    /// The writer thread is waiting for work (only then is it woken).
    writer_idle: bool,
    closing: bool,
    dropped: u64,
    error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    sink: Mutex<Sink>,
    queue: Mutex<Queue>,
    /// Signalled when items arrive or the writer should close.
    work: Condvar,
    /// Signalled when room is made or the queue drains.
    room: Condvar,
    /// Storage lengths by record id, to check views when they are recorded.
    storages: Mutex<StorageLens>,
    /// The first I/O error of sync mode (the file is then not extended further).
    failed: Mutex<Option<String>>,
    /// Staging chunks not in use: written by the background thread and
    /// kept for reuse (at most the queue budget's worth), so the recording
    /// thread copies into memory that is already mapped.
    spare: Mutex<Vec<Chunk>>,
}

impl Shared {
    /// Copy `payload` into the queue: staging chunks (spare ones first)
    /// for a large payload, its own allocation for a small one; and its
    /// crc32c when `with_crc`, each chunk checksummed right after it is
    /// copied, while it is in the cache.
    fn stage(
        &self,
        payload: &[u8],
        with_crc: bool,
    ) -> std::io::Result<(Option<Staged>, Option<u32>)> {
        if payload.len() < STAGE_MIN_BYTES {
            // copied into the arena under the queue's lock
            let crc = with_crc.then(|| trace_format::record::crc32c(payload));
            return Ok((None, crc));
        }
        let n = payload.len().div_ceil(CHUNK_BYTES);
        let mut chunks = {
            let mut spare = lock(&self.spare);
            let keep = spare.len().saturating_sub(n);
            spare.split_off(keep)
        };
        while chunks.len() < n {
            chunks.push(mapped_chunk()?);
        }
        let mut crc = 0;
        for (chunk, piece) in chunks.iter_mut().zip(payload.chunks(CHUNK_BYTES)) {
            let staged = &mut chunk[..piece.len()];
            if with_crc {
                // 32 KiB at a time: the source checksummed while its
                // bytes, just read for the copy, are in the L1 cache (the
                // streamed copy is not in any cache). Bytes changed by
                // another thread during the call would then fail the
                // record's checksum instead of being recorded torn
                // under a valid one.
                for (d, s) in staged.chunks_mut(32 << 10).zip(piece.chunks(32 << 10)) {
                    stream_copy::copy_streaming(d, s);
                    crc = trace_format::record::crc32c_append(crc, s);
                }
            } else {
                stream_copy::copy_streaming(staged, piece);
            }
        }
        let staged = Staged::Chunks {
            chunks,
            len: payload.len(),
        };
        Ok((Some(staged), with_crc.then_some(crc)))
    }

    /// Keep the staging chunks of a written record, up to the queue budget.
    fn recycle(&self, payload: Staged) {
        let Staged::Chunks { chunks, .. } = payload else {
            return;
        };
        let (budget, arena) = {
            let q = lock(&self.queue);
            (q.budget as usize, q.spare_arena.capacity())
        };
        let mut spare = lock(&self.spare);
        let room = (budget.saturating_sub(arena) / CHUNK_BYTES).saturating_sub(spare.len());
        spare.extend(chunks.into_iter().take(room));
    }
}

/// Records tensors into a `.tdump` trace. `Send + Sync`: share it by
/// reference or `Arc` between threads; records land whole, never interleaved.
///
/// Dropping a writer without [`Writer::finish`] flushes what was recorded
/// and leaves a file without footer, which readers open by scanning.
#[derive(Debug)]
pub struct Writer {
    shared: Arc<Shared>,
    mode: Mode,
    filter: CaptureFilter,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data
    // half-updated in a way later calls trust; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    /// Create (truncate) `path` and record `run_metadata` as record 0, in sync mode.
    pub fn create(path: impl AsRef<Path>, run_metadata: Metadata) -> Result<Writer, WriterError> {
        Self::with_options(path, run_metadata, WriterOptions::default())
    }

    /// Create (truncate) `path` with options.
    pub fn with_options(
        path: impl AsRef<Path>,
        run_metadata: Metadata,
        options: WriterOptions,
    ) -> Result<Writer, WriterError> {
        let path = path.as_ref().to_path_buf();
        let sink = Sink::create(&path).map_err(|source| WriterError::Io {
            path: path.clone(),
            error: source,
        })?;
        Self::open(path, sink, run_metadata, options)
    }

    /// Record into memory rather than a file, with options; the trace's
    /// bytes come back from [`Writer::finish_into_bytes`]. They are those
    /// a file writer with the same options writes, but for the space a
    /// file allocates ahead of its records (`allocate_ahead` is ignored:
    /// nothing is allocated ahead). Errors name the path `<memory>`. For
    /// a test, a fuzzer or an engine that sends the trace elsewhere.
    ///
    /// ```
    /// use trace_writer::{DType, Metadata, TensorMeta, Writer, WriterOptions};
    ///
    /// let w = Writer::in_memory(Metadata::new(), WriterOptions::default()).unwrap();
    /// let bytes: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    /// w.add_tensor("x", DType::F32, &[2], &bytes, TensorMeta::new()).unwrap();
    /// let (summary, trace) = w.finish_into_bytes().unwrap();
    /// assert_eq!(summary.records, 2); // run metadata, tensor
    /// assert_eq!(summary.bytes, trace.len() as u64);
    /// ```
    pub fn in_memory(
        run_metadata: Metadata,
        options: WriterOptions,
    ) -> Result<Writer, WriterError> {
        Self::open(
            PathBuf::from(MEMORY_PATH),
            Sink::in_memory(),
            run_metadata,
            options,
        )
    }

    fn open(
        path: PathBuf,
        mut sink: Sink,
        run_metadata: Metadata,
        options: WriterOptions,
    ) -> Result<Writer, WriterError> {
        check_depth("", &run_metadata)?;
        let descriptor = encode_run_metadata(&run_metadata);
        sink.append(&RecordParts {
            kind: RecordKind::RunMetadata,
            name: "",
            step: None,
            layer: None,
            descriptor: &descriptor,
            payload: &[],
            payload_crc32c: None,
            checksum_inline: false,
        })
        // flushed at once, so that a process killed from here on leaves a
        // trace the reader opens, not an empty file
        .and_then(|_| sink.flush())
        .map_err(|source| WriterError::Io {
            path: path.clone(),
            error: source,
        })?;
        if matches!(options.mode, Mode::Sync) && options.allocate_ahead {
            sink.map_small_records();
        }
        let shared = Arc::new(Shared {
            path,
            sink: Mutex::new(sink),
            queue: Mutex::new(Queue {
                next_id: 1,
                budget: match options.mode {
                    Mode::Background { budget_bytes, .. } => budget_bytes,
                    Mode::Sync => 0,
                },
                ..Default::default()
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            storages: Mutex::new(StorageLens::default()),
            failed: Mutex::new(None),
            spare: Mutex::new(Vec::new()),
        });
        let thread = match options.mode {
            Mode::Sync => None,
            Mode::Background { .. } => {
                let s = Arc::clone(&shared);
                Some(
                    std::thread::Builder::new()
                        .name("tracedump-writer".into())
                        .spawn(move || background_loop(&s))
                        .map_err(|source| WriterError::Io {
                            path: shared.path.clone(),
                            error: source,
                        })?,
                )
            }
        };
        Ok(Writer {
            shared,
            mode: options.mode,
            filter: options.filter,
            thread,
        })
    }

    /// The file being written (`<memory>` for [`Writer::in_memory`]).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The crc32c of the payload of record `id` (a tensor's own bytes, a
    /// storage), for a caller that recognises these bytes later: the
    /// Python writer records a later view of them as a view of this record
    /// only while they are unchanged. In background mode a record still in
    /// the queue is checksummed from its queued copy, one being written is
    /// waited for; the recording thread does not checksum what it adds.
    /// `None` for an id this writer never recorded (or dropped).
    pub fn payload_crc32c(&self, id: RecordId) -> Result<Option<u32>, WriterError> {
        if self.thread.is_none() {
            return Ok(lock(&self.shared.sink).payload_crc32c(id));
        }
        let mut q = lock(&self.shared.queue);
        loop {
            if id >= q.next_id {
                return Ok(None);
            }
            if let Ok(i) = q.items.binary_search_by_key(&id, |item| item.id) {
                let pieces = q.items[i].payload.pieces(&q.arena);
                let crc = pieces
                    .iter()
                    .fold(0, |crc, p| trace_format::record::crc32c_append(crc, p));
                return Ok(Some(crc));
            }
            if let Some(crc) = lock(&self.shared.sink).payload_crc32c(id) {
                return Ok(Some(crc));
            }
            if let Some(msg) = &q.error {
                return Err(WriterError::Failed {
                    path: self.shared.path.clone(),
                    message: msg.clone(),
                });
            }
            if !q.writing {
                // neither queued, nor written, nor being written: dropped
                return Ok(None);
            }
            // being written by the writer thread: wait for it
            q = self.shared.room.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Background mode: allocate the queue's staging memory now, the whole
    /// budget of it with every page touched, so that from then on `add_*`
    /// copies a large payload into memory that is already mapped (a plain
    /// memcpy) instead of paying the page faults of fresh memory. It costs
    /// the time to touch the budget (about 0.1 s per 256 MiB) and holds that
    /// much memory until the writer is finished. Without it, the staging
    /// memory is allocated as records arrive and reused once written. Sync
    /// mode: does nothing.
    pub fn preallocate(&self) -> Result<(), WriterError> {
        let budget = match self.mode {
            Mode::Background { budget_bytes, .. } => budget_bytes,
            Mode::Sync => return Ok(()),
        };
        let want = usize::try_from(budget / CHUNK_BYTES as u64).unwrap_or(usize::MAX);
        let have = lock(&self.shared.spare).len();
        let mut fresh = Vec::new();
        for _ in have..want {
            let chunk = mapped_chunk().map_err(|e| WriterError::Io {
                path: self.shared.path.clone(),
                error: std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot map the background queue's {budget} bytes of staging memory: {e}"
                    ),
                ),
            })?;
            fresh.push(chunk);
        }
        let mut spare = lock(&self.shared.spare);
        let room = want.saturating_sub(spare.len());
        spare.extend(fresh.into_iter().take(room));
        Ok(())
    }

    /// Records dropped so far because the background queue was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.queue).dropped
    }

    /// Whether a tensor with this name, step and layer passes the capture filter.
    pub fn wants(&self, name: &str, step: Option<i64>, layer: Option<i64>) -> bool {
        self.filter.accepts(name, step, layer)
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
            .append(RecordKind::Storage, name, None, None, descriptor, bytes)?
            .ok_or_else(|| WriterError::Dropped {
                name: name.to_owned(),
            })?;
        lock(&self.shared.storages).insert(id, bytes.len() as u64);
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
                offset: layout.storage_offset,
            },
            layout,
            meta,
        )?;
        let id = self.append_with(
            RecordKind::Tensor,
            name,
            desc.step,
            desc.layer,
            encode_tensor(&desc),
            bytes,
            payload_crc32c,
        )?;
        if let Some(id) = id {
            // a tensor's own bytes are a storage other views may use
            lock(&self.shared.storages).insert(id, bytes.len() as u64);
        }
        Ok(id)
    }

    /// Record a view over an earlier storage, or over the bytes of an
    /// earlier tensor recorded with its own bytes: `layout.storage_offset`
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
                offset: layout.storage_offset,
            },
            layout.clone(),
            meta,
        )?;
        self.append(
            RecordKind::Tensor,
            name,
            desc.step,
            desc.layer,
            encode_tensor(&desc),
            &[],
        )
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
        let desc = tensor_desc(name, dtype, DataRef::Derived, layout, meta)?;
        self.append(
            RecordKind::Tensor,
            name,
            desc.step,
            desc.layer,
            encode_tensor(&desc),
            &[],
        )
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
        let desc = tensor_desc(name, dtype, DataRef::StatsOnly, layout, meta)?;
        self.append(
            RecordKind::Tensor,
            name,
            desc.step,
            desc.layer,
            encode_tensor(&desc),
            &[],
        )
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

    fn append(
        &self,
        kind: RecordKind,
        name: &str,
        step: Option<i64>,
        layer: Option<i64>,
        descriptor: Vec<u8>,
        payload: &[u8],
    ) -> Result<Option<RecordId>, WriterError> {
        self.append_with(kind, name, step, layer, descriptor, payload, None)
    }

    /// [`Writer::append`], also handing back the payload's crc32c when the
    /// sink computed it anyway (a large payload in sync mode).
    #[allow(clippy::too_many_arguments)]
    fn append_with(
        &self,
        kind: RecordKind,
        name: &str,
        step: Option<i64>,
        layer: Option<i64>,
        descriptor: Vec<u8>,
        payload: &[u8],
        payload_crc32c: Option<&mut Option<u32>>,
    ) -> Result<Option<RecordId>, WriterError> {
        match self.mode {
            Mode::Sync => {
                let mut failed = lock(&self.shared.failed);
                if let Some(msg) = failed.as_ref() {
                    return Err(WriterError::Failed {
                        path: self.shared.path.clone(),
                        message: msg.clone(),
                    });
                }
                let mut sink = lock(&self.shared.sink);
                let parts = RecordParts {
                    kind,
                    name,
                    step,
                    layer,
                    descriptor: &descriptor,
                    payload: &[payload],
                    payload_crc32c: None,
                    checksum_inline: false,
                };
                // write-through: when add returns, the record is in the OS
                // (one write for the framed record, or a copy into the
                // file's shared mapping: sink.rs), so it survives a crash of
                // this process, SIGKILL included
                match sink.append(&parts).and_then(|id| sink.flush().map(|()| id)) {
                    Ok(id) => {
                        if let Some(out) = payload_crc32c {
                            *out = sink.payload_crc32c(id);
                        }
                        Ok(Some(id))
                    }
                    Err(source) => {
                        *failed = Some(source.to_string());
                        Err(WriterError::Io {
                            path: self.shared.path.clone(),
                            error: source,
                        })
                    }
                }
            }
            Mode::Background {
                budget_bytes,
                when_full,
            } => {
                // the caller wants the crc; or the writer thread is behind
                // (the queue over half full: this add would soon wait for
                // room anyway), so the recording thread takes the checksum
                // off it, computed while each staged chunk is in the cache
                let want_crc = payload_crc32c.is_some()
                    || (payload.len() >= STAGE_MIN_BYTES
                        && lock(&self.shared.queue).queued_bytes > budget_bytes / 2);
                let (staged, crc) =
                    self.shared
                        .stage(payload, want_crc)
                        .map_err(|e| WriterError::Io {
                            path: self.shared.path.clone(),
                            error: std::io::Error::new(
                                e.kind(),
                                format!("cannot map staging memory for `{name}`: {e}"),
                            ),
                        })?;
                if let Some(out) = payload_crc32c {
                    *out = crc;
                }
                let cost = (name.len()
                    + descriptor.len()
                    + staged.as_ref().map_or(payload.len(), Staged::len))
                    as u64;
                let mut q = lock(&self.shared.queue);
                loop {
                    if let Some(msg) = &q.error {
                        return Err(WriterError::Failed {
                            path: self.shared.path.clone(),
                            message: msg.clone(),
                        });
                    }
                    let fits =
                        q.queued_bytes + cost <= budget_bytes || (q.items.is_empty() && !q.writing);
                    if fits {
                        break;
                    }
                    match when_full {
                        WhenFull::Drop => {
                            q.dropped += 1;
                            return Ok(None);
                        }
                        WhenFull::Block => {
                            self.shared.work.notify_one();
                            q = self.shared.room.wait(q).unwrap_or_else(|e| e.into_inner())
                        }
                    }
                }
                let id = q.next_id;
                q.next_id += 1;
                q.queued_bytes += cost;
                let arena = &mut q.arena;
                let name_at = arena.len()..arena.len() + name.len();
                arena.extend_from_slice(name.as_bytes());
                let descriptor_at = arena.len()..arena.len() + descriptor.len();
                arena.extend_from_slice(&descriptor);
                let payload = match staged {
                    Some(chunks) => chunks,
                    None => {
                        let at = arena.len()..arena.len() + payload.len();
                        arena.extend_from_slice(payload);
                        Staged::Arena(at)
                    }
                };
                q.items.push_back(Pending {
                    id,
                    kind,
                    step,
                    layer,
                    name: name_at,
                    descriptor: descriptor_at,
                    payload,
                    payload_crc32c: crc,
                });
                // an idle writer thread is woken for a large record or once
                // enough small ones wait; otherwise it finds them when its
                // timed wait ends (WAKE_AFTER): a wake-up per small record
                // would cost the recording thread more than the record
                let wake = q.writer_idle && q.queued_bytes >= WAKE_BYTES.min(budget_bytes / 2);
                drop(q);
                if wake {
                    self.shared.work.notify_one();
                }
                Ok(Some(id))
            }
        }
    }

    /// Wait until every record added so far is handed to the operating
    /// system: it then survives a crash of this process.
    pub fn flush(&self) -> Result<(), WriterError> {
        self.drain()?;
        let flushed = lock(&self.shared.sink).flush();
        flushed.map_err(|e| self.io_failed(e))
    }

    /// [`Writer::flush`], then `fsync`: the records survive a crash of the machine.
    pub fn sync_all(&self) -> Result<(), WriterError> {
        self.drain()?;
        let synced = lock(&self.shared.sink).sync_all();
        synced.map_err(|e| self.io_failed(e))
    }

    /// A failed flush or fsync fails the writer as a failed record write
    /// does: what was buffered may be partly written, so nothing more is
    /// appended after it, and later calls say so ([`WriterError::Failed`]).
    /// Call without holding the sink lock (the sync path takes `failed`
    /// before `sink`).
    fn io_failed(&self, error: std::io::Error) -> WriterError {
        let message = error.to_string();
        if self.thread.is_some() {
            lock(&self.shared.queue).error.get_or_insert(message);
        } else {
            lock(&self.shared.failed).get_or_insert(message);
        }
        WriterError::Io {
            path: self.shared.path.clone(),
            error,
        }
    }

    fn drain(&self) -> Result<(), WriterError> {
        if self.thread.is_none() {
            return match lock(&self.shared.failed).as_ref() {
                Some(msg) => Err(WriterError::Failed {
                    path: self.shared.path.clone(),
                    message: msg.clone(),
                }),
                None => Ok(()),
            };
        }
        let mut q = lock(&self.shared.queue);
        if !q.items.is_empty() {
            // small records may wait for the writer thread's next round
            self.shared.work.notify_one();
        }
        while !q.items.is_empty() || q.writing {
            q = self.shared.room.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        match &q.error {
            Some(msg) => Err(WriterError::Failed {
                path: self.shared.path.clone(),
                message: msg.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Write the footer index and trailer and close the file.
    pub fn finish(mut self) -> Result<FinishSummary, WriterError> {
        self.finish_sink()
    }

    /// [`Writer::finish`], handing back the trace's bytes: those of a
    /// [`Writer::in_memory`] writer, or a file writer's file read back.
    pub fn finish_into_bytes(mut self) -> Result<(FinishSummary, Vec<u8>), WriterError> {
        let summary = self.finish_sink()?;
        let bytes = lock(&self.shared.sink).take_bytes();
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => std::fs::read(&self.shared.path).map_err(|error| WriterError::Io {
                path: self.shared.path.clone(),
                error,
            })?,
        };
        Ok((summary, bytes))
    }

    fn finish_sink(&mut self) -> Result<FinishSummary, WriterError> {
        self.drain()?;
        self.stop_thread();
        let (records, bytes) =
            lock(&self.shared.sink)
                .finish()
                .map_err(|source| WriterError::Io {
                    path: self.shared.path.clone(),
                    error: source,
                })?;
        Ok(FinishSummary {
            records,
            dropped: self.dropped(),
            bytes,
        })
    }

    fn stop_thread(&mut self) {
        if let Some(t) = self.thread.take() {
            lock(&self.shared.queue).closing = true;
            self.shared.work.notify_all();
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop_thread();
        let _ = lock(&self.shared.sink).flush();
    }
}

fn background_loop(shared: &Shared) {
    loop {
        // take everything queued at once: one lock round per batch, not per record
        let (batch, mut arena, failed) = {
            let mut q = lock(&shared.queue);
            loop {
                if !q.items.is_empty() {
                    q.writing = true;
                    let spare = std::mem::take(&mut q.spare_arena);
                    let arena = std::mem::replace(&mut q.arena, spare);
                    break (std::mem::take(&mut q.items), arena, q.error.is_some());
                }
                if q.closing {
                    return;
                }
                q.writer_idle = true;
                q = shared
                    .work
                    .wait_timeout(q, WAKE_AFTER)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                q.writer_idle = false;
            }
        };
        let mut error = None;
        // queue bytes written but not yet given back to the recording side
        let mut cost = 0;
        for item in batch {
            cost += item.cost();
            if !failed && error.is_none() {
                let pieces = item.payload.pieces(&arena);
                let name = std::str::from_utf8(&arena[item.name.clone()]).unwrap_or_default();
                let parts = RecordParts {
                    kind: item.kind,
                    name,
                    step: item.step,
                    layer: item.layer,
                    descriptor: &arena[item.descriptor.clone()],
                    payload: &pieces,
                    payload_crc32c: item.payload_crc32c,
                    checksum_inline: true,
                };
                if let Err(e) = lock(&shared.sink).append(&parts) {
                    error = Some(e.to_string());
                }
            }
            if matches!(item.payload, Staged::Chunks { .. }) {
                // a large record: its chunks and its room go back at once,
                // so a recording thread waiting for room (or for mapped
                // memory) need not wait for the rest of the batch
                shared.recycle(item.payload);
                lock(&shared.queue).queued_bytes -= std::mem::take(&mut cost);
                shared.room.notify_all();
            }
        }
        arena.clear();
        // kept for the next batch when it fits, with the spare chunks, in
        // the budget (memory for reuse stays below the budget)
        let spare_chunks = lock(&shared.spare).len() * CHUNK_BYTES;
        let mut q = lock(&shared.queue);
        if arena.capacity() > q.spare_arena.capacity()
            && (arena.capacity() + spare_chunks) as u64 <= q.budget
        {
            q.spare_arena = arena;
        }
        q.writing = false;
        q.queued_bytes -= cost;
        if let Some(e) = error {
            q.error.get_or_insert(e);
        }
        drop(q);
        shared.room.notify_all();
    }
}

/// The descriptor of a tensor record; `layout` is moved in (its shape and
/// strides become the descriptor's, no copy).
fn tensor_desc(
    name: &str,
    dtype: DType,
    data: DataRef,
    layout: Layout,
    meta: TensorMeta,
) -> Result<TensorDesc, WriterError> {
    check_depth(name, &meta.metadata)?;
    Ok(TensorDesc {
        name: name.to_owned(),
        dtype,
        data,
        shape: layout.shape,
        byte_strides: layout.byte_strides,
        step: meta.step,
        layer: meta.layer,
        role: meta.role,
        source_layout: meta.source_layout,
        lineage: meta.lineage,
        stats: meta.stats,
        metadata: meta.metadata,
    })
}

/// Refuse metadata a reader would refuse: nested deeper than SPEC.md §4 allows.
fn check_depth(name: &str, metadata: &Metadata) -> Result<(), WriterError> {
    match metadata.too_deep() {
        None => Ok(()),
        Some(path) => Err(WriterError::MetadataTooDeep {
            name: name.to_owned(),
            path,
        }),
    }
}
