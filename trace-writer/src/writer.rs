//! The writer: opening (a file or memory), appending a record in sync
//! mode or through the background queue, flushing and finishing. The
//! `add_*` methods are in `add.rs`.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use trace_format::codec::encode_run_metadata;
use trace_format::record::RecordKind;

use crate::add::check_depth;
use crate::queue::{self, Queue};
use crate::sink::{RecordParts, Sink};
use crate::staging::Chunk;
use crate::{CaptureFilter, FinishSummary, Metadata, Mode, RecordId, WriterError, WriterOptions};

/// The path an in-memory writer reports ([`Writer::in_memory`]).
const MEMORY_PATH: &str = "<memory>";

/// Records tensors into a `.tdump` trace. `Send + Sync`: share it by
/// reference or `Arc` between threads; records land whole, never interleaved.
///
/// Dropping a writer without [`Writer::finish`] flushes what was recorded
/// and leaves a file without footer, which readers open by scanning.
#[derive(Debug)]
pub struct Writer {
    pub(crate) shared: Arc<Shared>,
    mode: Mode,
    filter: CaptureFilter,
    thread: Option<JoinHandle<()>>,
}

/// Lock `m`, whether or not a thread panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data
    // half-updated in a way later calls trust; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the recording threads and the writer thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The trace file (`<memory>` for an in-memory writer).
    pub(crate) path: PathBuf,
    pub(crate) sink: Mutex<Sink>,
    /// The background queue (empty in sync mode).
    pub(crate) queue: Mutex<Queue>,
    /// Signalled when items arrive or the writer should close.
    pub(crate) work: Condvar,
    /// Signalled when room is made or the queue drains.
    pub(crate) room: Condvar,
    /// Storage lengths by record id, to check views when they are recorded.
    pub(crate) storages: Mutex<StorageLens>,
    /// The first I/O error of sync mode (the file is then not extended further).
    pub(crate) failed: Mutex<Option<String>>,
    /// Staging chunks not in use: written by the background thread and
    /// kept for reuse (at most the queue budget's worth), so the recording
    /// thread copies into memory that is already mapped.
    pub(crate) spare: Mutex<Vec<Chunk>>,
}

impl Shared {
    /// The error of a write, flush or fsync of this writer's trace.
    pub(crate) fn io_error(&self, error: std::io::Error) -> WriterError {
        WriterError::Io {
            path: self.path.clone(),
            error,
        }
    }

    /// The error of any call after the write that failed with `message`.
    pub(crate) fn failed_error(&self, message: &str) -> WriterError {
        WriterError::Failed {
            path: self.path.clone(),
            message: message.to_owned(),
        }
    }
}

/// Storage lengths by record id (ids are dense, so a vector: no hashing on
/// every tensor recorded with its own bytes).
#[derive(Debug, Default)]
pub(crate) struct StorageLens(Vec<u64>);

impl StorageLens {
    const NONE: u64 = u64::MAX;

    pub(crate) fn insert(&mut self, id: RecordId, len: u64) {
        let Ok(i) = usize::try_from(id) else { return };
        if self.0.len() <= i {
            self.0.resize(i + 1, Self::NONE);
        }
        self.0[i] = len;
    }

    pub(crate) fn get(&self, id: RecordId) -> Option<u64> {
        let len = *self.0.get(usize::try_from(id).ok()?)?;
        (len != Self::NONE).then_some(len)
    }
}

/// A record as the `add_*` methods hand it to [`Writer::append`].
#[derive(Debug)]
pub(crate) struct Record<'a> {
    pub kind: RecordKind,
    pub name: &'a str,
    pub step: Option<i64>,
    pub layer: Option<i64>,
    pub descriptor: Vec<u8>,
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// A tensor or storage record.
    fn parts(&self) -> RecordParts<'_> {
        RecordParts {
            kind: self.kind,
            name: self.name,
            step: self.step,
            layer: self.layer,
            descriptor: &self.descriptor,
            payload: std::slice::from_ref(&self.payload),
            payload_crc32c: None,
            checksum_inline: false,
        }
    }
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
        sink.checksum_thread = options.checksum_thread;
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
            Mode::Background { .. } => Some(queue::spawn_writer_thread(&shared)?),
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
        self.shared.queued_payload_crc32c(id)
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
        self.shared.preallocate(budget)
    }
    /// Records dropped so far because the background queue was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.queue).dropped
    }

    /// Whether a tensor with this name, step and layer passes the capture filter.
    pub fn wants(&self, name: &str, step: Option<i64>, layer: Option<i64>) -> bool {
        self.filter.accepts(name, step, layer)
    }

    /// Append `r` in this writer's mode; `Ok(None)` when a full queue
    /// dropped it. `payload_crc32c` (when asked) gets the payload's crc32c
    /// where it is computed anyway: by the sink (sync mode) or while the
    /// payload is copied into the queue.
    pub(crate) fn append(
        &self,
        r: &Record<'_>,
        payload_crc32c: Option<&mut Option<u32>>,
    ) -> Result<Option<RecordId>, WriterError> {
        match self.mode {
            Mode::Sync => self.append_sync(r, payload_crc32c).map(Some),
            Mode::Background {
                budget_bytes,
                when_full,
            } => self
                .shared
                .enqueue(r, budget_bytes, when_full, payload_crc32c),
        }
    }

    /// Sync mode: frame and write the record on this thread. Write-through:
    /// when add returns, the record is in the OS (one write for the framed
    /// record, or a copy into the file's shared mapping: sink.rs), so it
    /// survives a crash of this process, SIGKILL included. A failed write
    /// fails every later call.
    fn append_sync(
        &self,
        r: &Record<'_>,
        payload_crc32c: Option<&mut Option<u32>>,
    ) -> Result<RecordId, WriterError> {
        let mut failed = lock(&self.shared.failed);
        if let Some(msg) = failed.as_ref() {
            return Err(self.shared.failed_error(msg));
        }
        let mut sink = lock(&self.shared.sink);
        match sink
            .append(&r.parts())
            .and_then(|id| sink.flush().map(|()| id))
        {
            Ok(id) => {
                if let Some(out) = payload_crc32c {
                    *out = sink.payload_crc32c(id);
                }
                Ok(id)
            }
            Err(e) => {
                *failed = Some(e.to_string());
                Err(self.shared.io_error(e))
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
        self.shared.io_error(error)
    }

    /// Wait until every record added so far is in the sink; the error of
    /// an earlier failed write, if any.
    fn drain(&self) -> Result<(), WriterError> {
        if self.thread.is_some() {
            return self.shared.wait_drained();
        }
        match lock(&self.shared.failed).as_ref() {
            Some(msg) => Err(self.shared.failed_error(msg)),
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
            None => std::fs::read(&self.shared.path).map_err(|e| self.shared.io_error(e))?,
        };
        Ok((summary, bytes))
    }

    fn finish_sink(&mut self) -> Result<FinishSummary, WriterError> {
        self.drain()?;
        self.stop_thread();
        let finished = lock(&self.shared.sink).finish();
        let (records, bytes) = finished.map_err(|e| self.shared.io_error(e))?;
        Ok(FinishSummary {
            records,
            dropped: self.dropped(),
            bytes,
        })
    }

    fn stop_thread(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shared.stop(t);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop_thread();
        let _ = lock(&self.shared.sink).flush();
    }
}
