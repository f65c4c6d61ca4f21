//! Storages made of updates (STORAGE_UPDATE records, SPEC.md §5.7): a
//! chain from a STORAGE (or a tensor with its own bytes) through updates
//! that each rewrite some byte ranges. A tensor viewing an update sees the
//! storage as it was at that update: its bytes are materialized on first
//! read (the nearest materialized ancestor, or the root, plus the updates
//! after it, in order) and kept in a cache bounded by bytes, shared by
//! every read of the trace.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use trace_format::codec::{decode_tensor, DataRef};
use trace_format::record::RecordKind;
use trace_format::update::{apply, decode_storage_update, StorageUpdateDesc};

use crate::container::Records;
use crate::source::Source;

/// Bytes of materialized storages kept for later reads (the most recently
/// used first); a storage longer than this is materialized for each read.
pub(crate) const CACHE_BYTES: usize = 256 << 20;

/// The bytes of a tensor's storage: a slice of the file, or a storage
/// materialized from updates (shared with the trace's cache).
#[derive(Clone, Debug)]
pub enum StorageBytes<'a> {
    /// The storage's bytes in the file.
    Mapped(&'a [u8]),
    /// A storage rebuilt from STORAGE_UPDATE records (an owned buffer).
    Materialized(Arc<Source>),
}

impl Deref for StorageBytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            StorageBytes::Mapped(b) => b,
            StorageBytes::Materialized(s) => s.bytes(),
        }
    }
}

/// One update of a chain, checked against its base and its payload.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) base: u64,
    /// Whether the base is itself an update.
    base_is_update: bool,
    pub(crate) desc: StorageUpdateDesc,
    /// Absolute file offset of the payload.
    payload_at: u64,
}

impl Checked {
    /// Length of the storage this update makes.
    pub(crate) fn len(&self) -> u64 {
        self.desc.len
    }
}

/// The checked updates and the materialized storages of one trace.
#[derive(Debug, Default)]
pub(crate) struct Updates {
    checked: Mutex<HashMap<u64, Arc<Checked>>>,
    /// Materialized storages, most recently used last.
    cache: Mutex<Vec<(u64, Arc<Source>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Updates {
    /// Check update record `id` and every update before it in its chain
    /// (each once per trace), down to the root storage: the error says
    /// which record, at which byte, and why.
    pub(crate) fn check(&self, at: Records<'_>, id: u64) -> Result<Arc<Checked>, String> {
        if let Some(c) = lock(&self.checked).get(&id) {
            return Ok(Arc::clone(c));
        }
        // walk back to a checked update or the root; no recursion: chains
        // are as long as the file makes them
        let mut todo: Vec<(u64, StorageUpdateDesc, u64, u64)> = Vec::new();
        let mut at_id = id;
        let base_len = loop {
            let offset = at.records.get(at_id as usize).map_or(0, |r| r.offset);
            if let Some(c) = lock(&self.checked).get(&at_id) {
                break c.len();
            }
            let r = at
                .records
                .get(at_id as usize)
                .ok_or_else(|| format!("record {at_id} does not exist"))?;
            let body = at.body(at_id).map_err(|e| e.to_string())?;
            if r.kind == RecordKind::StorageUpdate as u16 {
                let d = decode_storage_update(body.descriptor, body.descriptor_offset).map_err(
                    |e| format!("storage update record {at_id} (at byte {offset}): {e}"),
                )?;
                if d.base >= at_id {
                    return Err(format!(
                        "storage update record {at_id} (at byte {offset}) updates record {}, which does not come before it",
                        d.base
                    ));
                }
                let next = d.base;
                todo.push((at_id, d, body.payload_offset, body.payload.len() as u64));
                at_id = next;
                continue;
            }
            if r.kind == RecordKind::Storage as u16 {
                break body.payload.len() as u64;
            }
            if r.kind == RecordKind::Tensor as u16 {
                let d = decode_tensor(body.descriptor, body.descriptor_offset)
                    .map_err(|e| format!("record {at_id} (at byte {offset}): {e}"))?;
                if matches!(d.data, DataRef::Inline { .. }) {
                    break body.payload.len() as u64;
                }
                return Err(format!(
                    "record {at_id} (at byte {offset}) is a tensor without its own bytes, not a storage an update can start from"
                ));
            }
            return Err(format!(
                "record {at_id} (at byte {offset}) is not a storage (kind {}); an update chain must start at one",
                r.kind
            ));
        };
        let mut len = base_len;
        let mut last = None;
        for (uid, d, payload_at, payload_len) in todo.into_iter().rev() {
            let offset = at.records[uid as usize].offset;
            d.check(len, payload_len).map_err(|reason| {
                format!("storage update record {uid} (at byte {offset}): {reason}")
            })?;
            len = d.len;
            let base_is_update =
                at.records[d.base as usize].kind == RecordKind::StorageUpdate as u16;
            let c = Arc::new(Checked {
                base: d.base,
                base_is_update,
                desc: d,
                payload_at,
            });
            lock(&self.checked).insert(uid, Arc::clone(&c));
            last = Some(c);
        }
        match last {
            Some(c) => Ok(c),
            None => lock(&self.checked)
                .get(&id)
                .cloned()
                .ok_or_else(|| format!("record {id} is not a storage update")),
        }
    }

    /// The storage update record `id` makes (checked by [`Updates::check`]).
    pub(crate) fn materialize(&self, at: Records<'_>, id: u64) -> Result<Arc<Source>, String> {
        self.check(at, id)?;
        {
            let mut cache = lock(&self.cache);
            if let Some(i) = cache.iter().position(|(k, _)| *k == id) {
                let hit = cache.remove(i);
                let s = Arc::clone(&hit.1);
                cache.push(hit);
                return Ok(s);
            }
        }
        // the updates to apply, newest first, down to a cached storage or the root
        let mut chain: Vec<Arc<Checked>> = Vec::new();
        let mut cur = id;
        let mut bytes: Vec<u8> = loop {
            if cur != id {
                if let Some((_, s)) = lock(&self.cache).iter().find(|(k, _)| *k == cur) {
                    break s.bytes().to_vec();
                }
            }
            let c = lock(&self.checked)
                .get(&cur)
                .cloned()
                .ok_or_else(|| format!("storage update record {cur} was not checked"))?;
            let (base, base_is_update) = (c.base, c.base_is_update);
            chain.push(c);
            if !base_is_update {
                let body = at.body(base).map_err(|e| e.to_string())?;
                break body.payload.to_vec();
            }
            cur = base;
        };
        for c in chain.iter().rev() {
            let start = c.payload_at as usize;
            let n = c.desc.payload_len().unwrap_or(0) as usize;
            let payload = at
                .bytes
                .get(start..start + n)
                .ok_or_else(|| format!("payload at byte {start} runs past the file"))?;
            apply(&mut bytes, &c.desc, payload);
        }
        let s = Arc::new(Source::Owned(bytes));
        if s.len() <= CACHE_BYTES {
            let mut cache = lock(&self.cache);
            let mut total: usize = cache.iter().map(|(_, s)| s.len()).sum::<usize>() + s.len();
            while total > CACHE_BYTES && !cache.is_empty() {
                total -= cache.remove(0).1.len();
            }
            cache.push((id, Arc::clone(&s)));
        }
        Ok(s)
    }
}
