//! Views of one storage recorded once: [`Regions`] remembers the memory
//! a writer recorded (a storage, or a tensor with its own bytes) by
//! address, so that a later tensor whose bytes lie inside it is recorded
//! as a view of that record ([`Writer::add_view`](crate::Writer::add_view))
//! instead of a second copy.
//!
//! A region is offered only while its memory still holds what was
//! recorded: its owner (whatever keeps the memory alive: the Python
//! writer's weak reference to the base array or tensor) is alive, and
//! its bytes hash to the crc32c of the record's payload
//! ([`Writer::payload_crc32c`](crate::Writer::payload_crc32c)).
//!
//! ```
//! use trace_writer::{DType, Layout, Metadata, Region, Regions, TensorMeta, Writer, WriterOptions};
//!
//! let w = Writer::in_memory(Metadata::new(), WriterOptions::default()).unwrap();
//! let cache: Vec<u8> = (0..16u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
//! let base = cache.as_ptr() as usize;
//! let mut regions = Regions::new();
//! let id = w.add_tensor("cache", DType::F32, &[16], &cache, TensorMeta::new()).unwrap().unwrap();
//! regions.push(Region { start: base, len: cache.len(), id, is_tensor: true, owner: () }, |_| true);
//!
//! // later: elements 4..8 of the same memory
//! let crc = |id| w.payload_crc32c(id).ok().flatten();
//! let found = regions.find(base + 16..base + 32, base, &cache, |_| true, crc).unwrap();
//! assert_eq!(found.id, id);
//! let layout = Layout::contiguous(DType::F32, &[4], (base + 16 - found.start) as u64).unwrap();
//! w.add_view("cache[4:8]", DType::F32, found.id, &layout, TensorMeta::new()).unwrap();
//! ```

#![forbid(unsafe_code)]

use std::ops::Range;

use rustc_hash::FxHashMap;

use crate::RecordId;

/// Bytes already in the trace that later tensors can view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region<O> {
    /// Address of the first byte in this process.
    pub start: usize,
    /// Length in bytes.
    pub len: usize,
    /// The record holding them (a storage, or a tensor with its own bytes).
    pub id: RecordId,
    /// The record is a tensor (a view of it may name it as its parent).
    pub is_tensor: bool,
    /// What keeps the memory alive; while it is, the address holds the
    /// same allocation. `()` where the caller knows the memory lives.
    pub owner: O,
}

/// No next region in a chain.
const END: u32 = u32::MAX;

/// A region in [`Regions`]' slab.
#[derive(Debug)]
struct Slot<O> {
    region: Region<O>,
    /// crc32c of the bytes as recorded; `None` until a lookup first needs
    /// it (the recording thread does not checksum what it adds).
    crc: Option<u32>,
    /// Order of addition (the newest region wins).
    seq: u64,
    /// The next (older) region of the same class and bucket, or [`END`].
    next: u32,
}

/// The regions recorded so far, found by address. A region of length class
/// `c` (lengths in `[2^c, 2^(c+1))`) that holds a byte range starts at most
/// `2^(c+1) - 1` bytes before it, so it lies in one of two buckets of
/// `2^(c+1)` start addresses: a lookup is two hash probes per class that
/// has regions, and an addition one, whatever the number of regions.
#[derive(Debug)]
pub struct Regions<O> {
    /// Every region, by slot; `None` slots are free (listed in `free`).
    slots: Vec<Option<Slot<O>>>,
    free: Vec<u32>,
    /// The newest region of each (class, bucket): the head of a chain
    /// through [`Slot::next`], newest first.
    heads: FxHashMap<(u32, usize), u32>,
    /// Regions per class (classes without any are not probed).
    per_class: Vec<u32>,
    next_seq: u64,
    /// Count at which regions whose owner died are dropped (doubles, so
    /// the pruning stays amortised linear in the live regions).
    prune_at: usize,
}

impl<O> Default for Regions<O> {
    fn default() -> Self {
        Regions {
            slots: Vec::new(),
            free: Vec::new(),
            heads: FxHashMap::default(),
            per_class: Vec::new(),
            next_seq: 0,
            prune_at: 0,
        }
    }
}

impl<O> Regions<O> {
    /// No regions.
    pub fn new() -> Self {
        Self::default()
    }

    fn class(len: usize) -> u32 {
        usize::BITS - 1 - len.max(1).leading_zeros()
    }

    /// The bucket of start address `start` in class `c`.
    fn bucket(c: u32, start: usize) -> usize {
        start.checked_shr(c + 1).unwrap_or(0)
    }

    /// The number of regions.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add a region recorded just now (it wins over older ones holding the
    /// same bytes). Once the count doubles, regions whose owner died
    /// (`alive` says false) are dropped first.
    pub fn push(&mut self, region: Region<O>, mut alive: impl FnMut(&O) -> bool) {
        if self.len() >= self.prune_at.max(64) {
            let dead: Vec<u32> = (0..self.slots.len() as u32)
                .filter(|&i| {
                    self.slots[i as usize]
                        .as_ref()
                        .is_some_and(|s| !alive(&s.region.owner))
                })
                .collect();
            for i in dead {
                self.remove(i);
            }
            self.prune_at = (self.len() * 2).max(64);
        }
        let c = Self::class(region.len);
        let key = (c, Self::bucket(c, region.start));
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let next = self.heads.insert(key, i).unwrap_or(END);
        self.slots[i as usize] = Some(Slot {
            region,
            crc: None,
            seq: self.next_seq,
            next,
        });
        self.next_seq += 1;
        if self.per_class.len() <= c as usize {
            self.per_class.resize(c as usize + 1, 0);
        }
        self.per_class[c as usize] += 1;
    }

    /// Take slot `i` out of its chain and free it.
    fn remove(&mut self, i: u32) {
        let Some(slot) = self.slots[i as usize].take() else {
            return;
        };
        let c = Self::class(slot.region.len);
        let key = (c, Self::bucket(c, slot.region.start));
        if self.heads.get(&key) == Some(&i) {
            if slot.next == END {
                self.heads.remove(&key);
            } else {
                self.heads.insert(key, slot.next);
            }
        } else {
            let mut at = self.heads.get(&key).copied().unwrap_or(END);
            while at != END {
                let s = self.slots[at as usize]
                    .as_mut()
                    .expect("chained slots are full");
                if s.next == i {
                    s.next = slot.next;
                    break;
                }
                at = s.next;
            }
        }
        self.free.push(i);
        self.per_class[c as usize] -= 1;
    }

    /// The newest region holding the bytes `bytes` (absolute addresses)
    /// that lies inside `buf` (the memory at address `base` the caller is
    /// recording from), whose owner is alive and whose bytes are unchanged;
    /// regions met on the way whose owner died or whose bytes changed are
    /// forgotten. `crc_of(id)` is the crc32c of record `id`'s payload
    /// (`|id| writer.payload_crc32c(id).ok().flatten()`), asked once per
    /// region.
    pub fn find(
        &mut self,
        bytes: Range<usize>,
        base: usize,
        buf: &[u8],
        mut alive: impl FnMut(&O) -> bool,
        mut crc_of: impl FnMut(RecordId) -> Option<u32>,
    ) -> Option<&Region<O>> {
        let (lo, hi) = (bytes.start, bytes.end);
        let mut candidates: Vec<(u64, u32)> = Vec::new();
        for c in 0..self.per_class.len() as u32 {
            if self.per_class[c as usize] == 0 {
                continue;
            }
            // the longest length of class c: 2^(c+1) - 1
            let longest = 1usize.checked_shl(c + 1).map_or(usize::MAX, |p| p - 1);
            let from = hi.saturating_sub(longest);
            if from > lo {
                continue;
            }
            let (first, last) = (Self::bucket(c, from), Self::bucket(c, lo));
            for b in first..=last {
                let mut at = self.heads.get(&(c, b)).copied().unwrap_or(END);
                while at != END {
                    let s = self.slots[at as usize]
                        .as_ref()
                        .expect("chained slots are full");
                    let r = &s.region;
                    if (from..=lo).contains(&r.start) && r.start + r.len >= hi {
                        candidates.push((s.seq, at));
                    }
                    at = s.next;
                }
            }
        }
        candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        for (_, i) in candidates {
            let Some(s) = self.slots[i as usize].as_mut() else {
                continue;
            };
            let r = &s.region;
            if !(r.start >= base && r.start + r.len <= base + buf.len()) {
                continue;
            }
            let live = alive(&r.owner);
            if live && s.crc.is_none() {
                s.crc = crc_of(r.id);
            }
            let now = &buf[r.start - base..r.start - base + r.len];
            if !live || s.crc != Some(trace_format::record::crc32c(now)) {
                self.remove(i);
                continue;
            }
            return self.slots[i as usize].as_ref().map(|s| &s.region);
        }
        None
    }

    /// Forget every region.
    pub fn clear(&mut self) {
        *self = Regions::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use trace_format::record::crc32c;

    fn region(start: usize, len: usize, id: RecordId) -> Region<bool> {
        Region {
            start,
            len,
            id,
            is_tensor: id % 2 == 0,
            owner: true,
        }
    }

    #[test]
    fn the_newest_region_holding_the_bytes_wins() {
        let buf = vec![7u8; 4096];
        let crcs: HashMap<RecordId, u32> = [(1, crc32c(&buf[..4096])), (2, crc32c(&buf[100..200]))]
            .into_iter()
            .collect();
        let mut r = Regions::new();
        r.push(region(1000, 4096, 1), |&o| o);
        r.push(region(1100, 100, 2), |&o| o);
        assert_eq!(r.len(), 2);
        let crc = |id| crcs.get(&id).copied();
        // inside both: the newer, 2
        let found = r.find(1120..1150, 1000, &buf, |&o| o, crc).unwrap();
        assert_eq!((found.id, found.start, found.len), (2, 1100, 100));
        // reaching past region 2: only region 1 holds it
        let found = r.find(1120..1300, 1000, &buf, |&o| o, crc).unwrap();
        assert_eq!((found.id, found.start), (1, 1000));
        // the whole of region 1, and not a byte more
        assert_eq!(r.find(1000..5096, 1000, &buf, |&o| o, crc).unwrap().id, 1);
        assert!(r.find(999..1010, 1000, &buf, |&o| o, crc).is_none());
        assert!(r.find(5000..5097, 1000, &buf, |&o| o, crc).is_none());
        // a region outside the memory being recorded from is not offered
        assert!(r.find(1120..1150, 1110, &buf[110..], |&o| o, crc).is_none());
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn changed_bytes_and_dead_owners_are_forgotten() {
        let mut buf = vec![1u8; 256];
        let recorded = crc32c(&buf[..128]);
        let mut r = Regions::new();
        r.push(region(0, 128, 4), |&o| o);
        r.push(region(128, 128, 6), |&o| o);
        let mut asked = 0;
        let found = r.find(
            10..20,
            0,
            &buf,
            |&o| o,
            |_| {
                asked += 1;
                Some(recorded)
            },
        );
        assert_eq!(found.map(|f| f.id), Some(4));
        // the crc is asked once per region
        assert_eq!(
            r.find(10..20, 0, &buf, |&o| o, |_| None).map(|f| f.id),
            Some(4)
        );
        assert_eq!(asked, 1);
        buf[50] = 2;
        assert!(r
            .find(10..20, 0, &buf, |&o| o, |_| Some(recorded))
            .is_none());
        assert_eq!(r.len(), 1, "the changed region is forgotten");
        // region 6: its owner died
        assert!(r
            .find(130..140, 0, &buf, |_| false, |_| Some(recorded))
            .is_none());
        assert!(r.is_empty());
    }

    #[test]
    fn dead_owners_are_pruned_as_regions_are_added() {
        let mut r = Regions::new();
        for i in 0..64 {
            let mut g = region(i * 16, 16, i as u64);
            g.owner = i % 2 == 0;
            r.push(g, |&o| o);
        }
        assert_eq!(r.len(), 64);
        r.push(region(4096, 16, 99), |&o| o);
        assert_eq!(r.len(), 33, "the 32 dead ones dropped, the new one added");
        r.clear();
        assert!(r.is_empty());
    }

    /// Regions of every length class at pseudo-random places, checked
    /// against a linear search over all of them.
    #[test]
    fn lookups_agree_with_a_linear_search() {
        let buf = vec![0u8; 1 << 16];
        let zero_crc = |len: usize| crc32c(&buf[..len]);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut r = Regions::new();
        let mut all = Vec::new();
        for id in 0..300u64 {
            let class = next(14);
            let len = 1 + next(1 << class);
            let start = next((1 << 16) - len + 1);
            r.push(region(start, len, id), |_| true);
            all.push((start, len, id));
        }
        let lens: HashMap<RecordId, usize> = all.iter().map(|&(_, l, id)| (id, l)).collect();
        let mut hits = 0;
        for _ in 0..2000 {
            let lo = next(1 << 16);
            let class = next(14);
            let hi = lo + 1 + next(((1 << 16) - lo).min(1 << class));
            let want = all
                .iter()
                .filter(|&&(s, l, _)| s <= lo && s + l >= hi)
                .map(|&(_, _, id)| id)
                .max();
            let got = r
                .find(lo..hi, 0, &buf, |_| true, |id| Some(zero_crc(lens[&id])))
                .map(|f| f.id);
            assert_eq!(got, want, "bytes {lo}..{hi}");
            hits += usize::from(got.is_some());
        }
        assert!(hits > 200, "{hits} of 2000 lookups found a region");
    }
}
