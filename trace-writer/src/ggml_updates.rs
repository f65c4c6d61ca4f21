//! Memory that views read again and again, recorded once and then only
//! where it changed (STORAGE_UPDATE records, SPEC.md §5.7, format 1.2).
//!
//! llama.cpp's KV cache (`cache_k_l0`…) is the owner of the views every
//! decode step reads; recording the whole owner whenever its bytes changed
//! makes each step cost the whole context. [`Shadows`] keeps a copy of the
//! bytes recorded for each owner (by the owner's address, name and length)
//! and, when they change, compares them with the copy (a memcmp of 64-byte
//! chunks, bytes only in the chunks that differ) and records the ranges
//! that differ as an update of the last record: a decode step then costs
//! the rows it wrote. It needs nothing from the engine (no knowledge of
//! SET_ROWS or of the cache's layout), at the cost of a pass over the
//! owner per view (the crc32c check it replaces was one too) and memory
//! equal to the owners recorded. Measured (release build, 2 shared cores):
//! comparing a 1 MiB f16 K cache (n_ctx 2048, 4 KV heads of 64) with one
//! row written takes 20–110 µs, with a V column written (transposed
//! cache: 256 two-byte ranges) 40–165 µs, where its crc32c took 85–135 µs;
//! 8 caches a step cost ~1–3 ms against a 440 ms decode step of a
//! TinyLlama-width model.
//!
//! A fresh full storage is recorded instead of an update when the update
//! would hold more than half the owner, and when the updates since the
//! last full storage hold as many bytes as the owner: a reader rebuilds
//! any step from at most twice the owner's bytes, and the file holds at
//! most twice the bytes that changed.

#![forbid(unsafe_code)]

use std::collections::HashMap;

use trace_format::update::diff_ranges;
use trace_format::Metadata;

use crate::{RecordId, Writer, WriterError};

/// Ranges closer than this are joined (a range costs 16 bytes on disk).
const JOIN_GAP: usize = 16;

#[derive(Debug)]
struct Shadow {
    name: String,
    /// The record whose storage is `bytes`.
    storage: RecordId,
    bytes: Vec<u8>,
    /// Payload bytes of the updates since the last full storage.
    chained: u64,
}

/// Copies of the owners recorded, to record only what changed.
#[derive(Debug, Default)]
pub(crate) struct Shadows {
    by_owner: HashMap<usize, Shadow>,
}

/// What [`Shadows::storage_for`] recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Nothing: the bytes are those of the last record.
    Unchanged,
    /// An update of `payload` bytes.
    Update { payload: u64 },
    /// A full storage.
    Full,
}

impl Shadows {
    /// Whether owner `key` has a copy (a view of it is then recorded
    /// through [`Shadows::storage_for`], with no crc32c check).
    pub(crate) fn has(&self, key: usize) -> bool {
        self.by_owner.contains_key(&key)
    }

    /// The record holding `data`, the bytes owner `key` (named `name`)
    /// holds now: the last one when they are unchanged, else an update of
    /// it or a full storage, recorded now (`first_view` names the view
    /// that found them, in the record's metadata).
    pub(crate) fn storage_for(
        &mut self,
        writer: &Writer,
        key: usize,
        name: &str,
        data: &[u8],
        first_view: &str,
    ) -> Result<(RecordId, Stored), WriterError> {
        let meta = || Metadata::new().with("first_view", first_view);
        if let Some(s) = self
            .by_owner
            .get_mut(&key)
            .filter(|s| s.name == name && s.bytes.len() <= data.len())
        {
            if s.bytes.len() == data.len() && s.bytes == data {
                return Ok((s.storage, Stored::Unchanged));
            }
            let ranges = diff_ranges(&s.bytes, data, JOIN_GAP);
            let payload_len: u64 = ranges.iter().map(|r| r.1).sum();
            let cost = payload_len + 16 * ranges.len() as u64;
            let len = data.len() as u64;
            if cost <= len / 2 && s.chained + payload_len <= len {
                let mut payload = Vec::with_capacity(payload_len as usize);
                for &(o, n) in &ranges {
                    payload.extend_from_slice(&data[o as usize..(o + n) as usize]);
                }
                let id = writer.add_storage_update(
                    name,
                    s.storage,
                    len,
                    ranges.clone(),
                    &payload,
                    meta(),
                )?;
                s.bytes.resize(data.len(), 0);
                for &(o, n) in &ranges {
                    let r = o as usize..(o + n) as usize;
                    s.bytes[r.clone()].copy_from_slice(&data[r]);
                }
                s.storage = id;
                s.chained += payload_len;
                return Ok((
                    id,
                    Stored::Update {
                        payload: payload_len,
                    },
                ));
            }
        }
        let id = writer.add_storage_with(name, data, meta())?;
        let s = self.by_owner.entry(key).or_insert_with(|| Shadow {
            name: String::new(),
            storage: id,
            bytes: Vec::new(),
            chained: 0,
        });
        s.name.clear();
        s.name.push_str(name);
        s.storage = id;
        s.bytes.clear();
        s.bytes.extend_from_slice(data);
        s.chained = 0;
        Ok((id, Stored::Full))
    }

    /// Forget owner `key` (its bytes were recorded another way).
    pub(crate) fn forget(&mut self, key: usize) {
        self.by_owner.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriterOptions;

    #[test]
    fn changed_rows_become_updates_and_big_changes_full_storages() {
        let w = Writer::in_memory(Metadata::new(), WriterOptions::default()).unwrap();
        let mut sh = Shadows::default();
        let mut cache = vec![0u8; 4096];
        let (first, how) = sh.storage_for(&w, 1, "cache_k_l0", &cache, "v").unwrap();
        assert_eq!(how, Stored::Full);
        assert_eq!(
            sh.storage_for(&w, 1, "cache_k_l0", &cache, "v").unwrap(),
            (first, Stored::Unchanged)
        );
        cache[512..576].fill(3);
        let (upd, how) = sh.storage_for(&w, 1, "cache_k_l0", &cache, "v").unwrap();
        assert_eq!(how, Stored::Update { payload: 64 });
        assert!(upd > first);
        // a different name at the same address: a full storage
        let (_, how) = sh.storage_for(&w, 1, "cache_v_l0", &cache, "v").unwrap();
        assert_eq!(how, Stored::Full);
        // more than half changed: a full storage
        cache[..3000].fill(9);
        let (_, how) = sh.storage_for(&w, 1, "cache_v_l0", &cache, "v").unwrap();
        assert_eq!(how, Stored::Full);
        // updates holding the owner's size in all: then a full storage again
        let mut fulls = 0;
        for i in 0..65 {
            cache[(i % 64) * 64..(i % 64) * 64 + 64].fill(i as u8 + 100);
            if sh.storage_for(&w, 1, "cache_v_l0", &cache, "v").unwrap().1 == Stored::Full {
                fulls += 1;
            }
        }
        assert_eq!(fulls, 1);
    }
}
