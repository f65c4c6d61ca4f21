//! The background queue: the recording thread copies a record in
//! ([`Shared::enqueue`]), a writer thread takes the queue a batch at a
//! time and appends the records to the sink ([`background_loop`]).

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard};
use std::thread::JoinHandle;

use crate::staging::{Staged, CHUNK_BYTES, STAGE_MIN_BYTES};
use crate::writer::{lock, Record, Shared};
use crate::{RecordId, WhenFull, WriterError};
use trace_format::record::RecordKind;

use crate::sink::RecordParts;

/// A record waiting in the background queue.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) id: RecordId,
    kind: RecordKind,
    step: Option<i64>,
    layer: Option<i64>,
    /// The name's and descriptor's bytes in the queue's arena.
    name: std::ops::Range<usize>,
    descriptor: std::ops::Range<usize>,
    pub(crate) payload: Staged,
    /// The payload's crc32c when the recording thread computed it (it
    /// asked for it): the writer thread then does not compute it again.
    payload_crc32c: Option<u32>,
}

impl Pending {
    fn cost(&self) -> u64 {
        (self.descriptor.len() + self.payload.len() + self.name.len()) as u64
    }
}

/// Queued bytes from which the recording thread wakes an idle writer thread.
const WAKE_BYTES: u64 = 64 << 10;

/// How long an idle writer thread sleeps before it looks at the queue
/// again (small records that did not wake it wait at most this long).
const WAKE_AFTER: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) items: VecDeque<Pending>,
    /// Names, descriptors and small payloads of `items`.
    pub(crate) arena: Vec<u8>,
    /// The arena of the last batch written, emptied, for the next swap.
    pub(crate) spare_arena: Vec<u8>,
    pub(crate) queued_bytes: u64,
    /// The background budget (0 in sync mode).
    pub(crate) budget: u64,
    /// Ids handed out (background mode assigns ids at enqueue time).
    pub(crate) next_id: u64,
    pub(crate) writing: bool,
    /// The writer thread is waiting for work (only then is it woken).
    pub(crate) writer_idle: bool,
    pub(crate) closing: bool,
    pub(crate) dropped: u64,
    pub(crate) error: Option<String>,
}

impl Queue {
    /// Add a record whose payload is staged (`None`: small, copied into
    /// the arena here); returns its id.
    fn push(
        &mut self,
        r: &Record<'_>,
        staged: Option<Staged>,
        payload_crc32c: Option<u32>,
        cost: u64,
    ) -> RecordId {
        let id = self.next_id;
        self.next_id += 1;
        self.queued_bytes += cost;
        let arena = &mut self.arena;
        let name = arena.len()..arena.len() + r.name.len();
        arena.extend_from_slice(r.name.as_bytes());
        let descriptor = arena.len()..arena.len() + r.descriptor.len();
        arena.extend_from_slice(&r.descriptor);
        let payload = staged.unwrap_or_else(|| {
            let at = arena.len()..arena.len() + r.payload.len();
            arena.extend_from_slice(r.payload);
            Staged::Arena(at)
        });
        self.items.push_back(Pending {
            id,
            kind: r.kind,
            step: r.step,
            layer: r.layer,
            name,
            descriptor,
            payload,
            payload_crc32c,
        });
        id
    }

    /// The writer thread failed: the error to hand every later call.
    fn failed(&self, shared: &Shared) -> Result<(), WriterError> {
        match &self.error {
            Some(msg) => Err(shared.failed_error(msg)),
            None => Ok(()),
        }
    }
}

impl Shared {
    /// Copy a record into the queue for the writer thread (`budget` and
    /// `when_full`: the background mode's); `Ok(None)` when it was dropped
    /// for want of room. `payload_crc32c` (when asked) gets the payload's
    /// crc32c, computed while it is copied.
    pub(crate) fn enqueue(
        &self,
        r: &Record<'_>,
        budget: u64,
        when_full: WhenFull,
        payload_crc32c: Option<&mut Option<u32>>,
    ) -> Result<Option<RecordId>, WriterError> {
        // the caller wants the crc; or the writer thread is behind (the
        // queue over half full: this add would soon wait for room anyway),
        // so the recording thread takes the checksum off it, computed
        // while each staged chunk is in the cache
        let want_crc = payload_crc32c.is_some()
            || (r.payload.len() >= STAGE_MIN_BYTES && lock(&self.queue).queued_bytes > budget / 2);
        let (staged, crc) = self.stage(r.payload, want_crc).map_err(|e| {
            self.io_error(std::io::Error::new(
                e.kind(),
                format!("cannot map staging memory for `{}`: {e}", r.name),
            ))
        })?;
        if let Some(out) = payload_crc32c {
            *out = crc;
        }
        let payload_len = staged.as_ref().map_or(r.payload.len(), Staged::len);
        let cost = (r.name.len() + r.descriptor.len() + payload_len) as u64;
        let Some(mut q) = self.wait_for_room(cost, budget, when_full)? else {
            return Ok(None);
        };
        let id = q.push(r, staged, crc, cost);
        // an idle writer thread is woken for a large record or once enough
        // small ones wait; otherwise it finds them when its timed wait ends
        // (WAKE_AFTER): a wake-up per small record would cost the
        // recording thread more than the record
        let wake = q.writer_idle && q.queued_bytes >= WAKE_BYTES.min(budget / 2);
        drop(q);
        if wake {
            self.work.notify_one();
        }
        Ok(Some(id))
    }

    /// The queue, locked, once `cost` more bytes fit in `budget` (or the
    /// queue is empty and idle: a record larger than the budget goes
    /// alone); `None` when the record is dropped instead (counted).
    fn wait_for_room(
        &self,
        cost: u64,
        budget: u64,
        when_full: WhenFull,
    ) -> Result<Option<MutexGuard<'_, Queue>>, WriterError> {
        let mut q = lock(&self.queue);
        loop {
            q.failed(self)?;
            if q.queued_bytes + cost <= budget || (q.items.is_empty() && !q.writing) {
                return Ok(Some(q));
            }
            match when_full {
                WhenFull::Drop => {
                    q.dropped += 1;
                    return Ok(None);
                }
                WhenFull::Block => {
                    self.work.notify_one();
                    q = self.room.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// The crc32c of record `id`'s payload in background mode: from its
    /// queued copy while it waits, from the sink once written; one being
    /// written is waited for. `None`: never recorded, or dropped.
    pub(crate) fn queued_payload_crc32c(&self, id: RecordId) -> Result<Option<u32>, WriterError> {
        let mut q = lock(&self.queue);
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
            if let Some(crc) = lock(&self.sink).payload_crc32c(id) {
                return Ok(Some(crc));
            }
            q.failed(self)?;
            if !q.writing {
                // neither queued, nor written, nor being written: dropped
                return Ok(None);
            }
            // being written by the writer thread: wait for it
            q = self.room.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Wait until the writer thread has written everything queued.
    pub(crate) fn wait_drained(&self) -> Result<(), WriterError> {
        let mut q = lock(&self.queue);
        if !q.items.is_empty() {
            // small records may wait for the writer thread's next round
            self.work.notify_one();
        }
        while !q.items.is_empty() || q.writing {
            q = self.room.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        q.failed(self)
    }

    /// Tell the writer thread to stop once the queue is empty, and wait for it.
    pub(crate) fn stop(&self, thread: JoinHandle<()>) {
        lock(&self.queue).closing = true;
        self.work.notify_all();
        let _ = thread.join();
    }
}

/// Start the writer thread of `shared`'s queue.
pub(crate) fn spawn_writer_thread(shared: &Arc<Shared>) -> Result<JoinHandle<()>, WriterError> {
    let s = Arc::clone(shared);
    std::thread::Builder::new()
        .name("tracedump-writer".into())
        .spawn(move || background_loop(&s))
        .map_err(|e| shared.io_error(e))
}

/// The writer thread: takes what is queued, a batch at a time, and appends
/// it to the sink, until told to close.
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
