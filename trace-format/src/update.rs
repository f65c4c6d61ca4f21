//! STORAGE_UPDATE records (SPEC.md §5.7, format 1.2): a storage as an
//! earlier one with some byte ranges rewritten, so that memory recorded
//! again and again (a KV cache at every decode step) costs the bytes that
//! changed, not the whole memory each time.
//!
//! ```
//! use trace_format::update::{apply, StorageUpdateDesc};
//! use trace_format::Metadata;
//!
//! let base = [0u8, 1, 2, 3, 4, 5];
//! let u = StorageUpdateDesc {
//!     name: "cache_k_l0".into(),
//!     base: 1,
//!     len: 8,
//!     ranges: vec![(1, 1), (5, 3)],
//!     metadata: Metadata::new(),
//! };
//! u.check(base.len() as u64, 4).unwrap();
//! let mut bytes = base.to_vec();
//! apply(&mut bytes, &u, &[9, 7, 7, 7]);
//! assert_eq!(bytes, [0, 9, 2, 3, 4, 7, 7, 7]);
//! ```

use crate::codec::{Decoder, Encoder};
use crate::error::FormatError;
use crate::Metadata;

/// Bytes of one range on disk (`u64` offset, `u64` length).
pub const RANGE_BYTES: usize = 16;

/// The descriptor of a STORAGE_UPDATE record (kind 5).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StorageUpdateDesc {
    /// A label, usually the base storage's (`cache_k_l0`).
    pub name: String,
    /// Record id of the storage this one updates: an earlier STORAGE, TENSOR
    /// with its own bytes (data kind 2) or STORAGE_UPDATE.
    pub base: u64,
    /// Length of the updated storage in bytes.
    pub len: u64,
    /// The rewritten byte ranges `(offset, length)`, in increasing order,
    /// not overlapping, none empty; the payload holds their bytes in order.
    pub ranges: Vec<(u64, u64)>,
    /// Free typed metadata.
    pub metadata: Metadata,
}

impl StorageUpdateDesc {
    /// The payload length the ranges need (`None` when it overflows).
    pub fn payload_len(&self) -> Option<u64> {
        self.ranges
            .iter()
            .try_fold(0u64, |acc, &(_, n)| acc.checked_add(n))
    }

    /// Check the update against its base's length and its payload's length
    /// (SPEC.md §5.7): ranges in order, not overlapping, not empty, inside
    /// `len`; every byte past the base's length covered by a range; the
    /// payload exactly the ranges' bytes. The message says what is wrong.
    pub fn check(&self, base_len: u64, payload_len: u64) -> Result<(), String> {
        let mut end = 0u64;
        // bytes past the base's length that no range covered so far
        let mut covered_to = base_len.min(self.len);
        for (i, &(off, n)) in self.ranges.iter().enumerate() {
            if n == 0 {
                return Err(format!("range {i} at byte {off} is empty"));
            }
            if i > 0 && off < end {
                return Err(format!(
                    "range {i} starts at byte {off}, before the end of range {} (byte {end})",
                    i - 1
                ));
            }
            end = off
                .checked_add(n)
                .filter(|&e| e <= self.len)
                .ok_or_else(|| {
                    format!(
                        "range {i} (bytes {off}..{off}+{n}) ends past the storage's {} bytes",
                        self.len
                    )
                })?;
            if off > covered_to && covered_to < self.len {
                return Err(format!(
                    "bytes {covered_to}..{off} are past the base's {base_len} bytes and no range holds them"
                ));
            }
            covered_to = covered_to.max(end);
        }
        if covered_to < self.len {
            return Err(format!(
                "bytes {covered_to}..{} are past the base's {base_len} bytes and no range holds them",
                self.len
            ));
        }
        match self.payload_len() {
            Some(p) if p == payload_len => Ok(()),
            _ => Err(format!(
                "the ranges hold {} bytes but the payload has {payload_len}",
                self.payload_len()
                    .map_or_else(|| "more than 2^64".into(), |p| p.to_string())
            )),
        }
    }
}

/// Encode a STORAGE_UPDATE descriptor.
pub fn encode_storage_update(u: &StorageUpdateDesc) -> Vec<u8> {
    let mut e = Encoder::new();
    e.str(&u.name);
    e.u64(u.base);
    e.u64(u.len);
    e.u32(u.ranges.len() as u32);
    for &(off, n) in &u.ranges {
        e.u64(off);
        e.u64(n);
    }
    e.metadata(&u.metadata);
    e.buf
}

/// Decode a STORAGE_UPDATE descriptor that starts at absolute offset `base`.
/// Structure only: [`StorageUpdateDesc::check`] checks the ranges against
/// the base and the payload.
pub fn decode_storage_update(buf: &[u8], base: u64) -> Result<StorageUpdateDesc, FormatError> {
    let mut d = Decoder::new(buf, base);
    let name = d.str("storage update name")?.to_owned();
    let base_id = d.u64("storage update base")?;
    let len = d.u64("storage update length")?;
    let at = d.offset();
    let n = d.u32("storage update ranges")? as usize;
    if n.saturating_mul(RANGE_BYTES) > d.remaining() {
        return Err(FormatError::Invalid {
            field: "storage update ranges",
            offset: at,
            reason: format!("count {n} needs more than the {} bytes left", d.remaining()),
        });
    }
    let mut ranges = Vec::with_capacity(n);
    for _ in 0..n {
        let off = d.u64("range offset")?;
        let len = d.u64("range length")?;
        ranges.push((off, len));
    }
    let metadata = d.metadata()?;
    d.finish("storage update descriptor")?;
    Ok(StorageUpdateDesc {
        name,
        base: base_id,
        len,
        ranges,
        metadata,
    })
}

/// Apply a checked update to `bytes` (the base's storage, or a copy of it):
/// cut or extend it to the update's length, then copy the payload's bytes
/// over the ranges. `u` MUST have passed [`StorageUpdateDesc::check`] with
/// this base length and payload.
pub fn apply(bytes: &mut Vec<u8>, u: &StorageUpdateDesc, payload: &[u8]) {
    bytes.resize(u.len as usize, 0);
    let mut at = 0usize;
    for &(off, n) in &u.ranges {
        let (off, n) = (off as usize, n as usize);
        bytes[off..off + n].copy_from_slice(&payload[at..at + n]);
        at += n;
    }
}

/// The byte ranges where `new` differs from `old` (equal lengths, or
/// `new` longer: its tail is one more range), joining ranges whose gap
/// is at most `gap` bytes (each range costs [`RANGE_BYTES`] on disk, so
/// a gap of that size costs no more stored than a new range).
/// Blocks of 4 KiB, then chunks of 64 bytes are compared first (memcmp),
/// bytes only in the chunks that differ.
pub fn diff_ranges(old: &[u8], new: &[u8], gap: usize) -> Vec<(u64, u64)> {
    const CHUNK: usize = 64;
    const BLOCK: usize = 4096;
    let common = old.len().min(new.len());
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut push = |lo: usize, hi: usize| match out.last_mut() {
        Some(last) if lo <= (last.0 + last.1) as usize + gap => {
            last.1 = (hi as u64).max(last.0 + last.1) - last.0;
        }
        _ => out.push((lo as u64, (hi - lo) as u64)),
    };
    let mut at = 0;
    while at < common {
        // most of a cache is unchanged: skip it a block at a time
        let block = (at + BLOCK).min(common);
        if old[at..block] == new[at..block] {
            at = block;
            continue;
        }
        while at < block {
            let end = (at + CHUNK).min(block);
            let (a, b) = (&old[at..end], &new[at..end]);
            if a != b {
                let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
                let last = a.iter().zip(b).rposition(|(x, y)| x != y).unwrap_or(0);
                // within a chunk, bytes that differ with equal ones between
                // them are joined when the gap allows, else split
                let mut lo = at + first;
                let mut hi = lo + 1;
                for i in at + first + 1..=at + last {
                    if old[i] != new[i] {
                        if i > hi + gap {
                            push(lo, hi);
                            lo = i;
                        }
                        hi = i + 1;
                    }
                }
                push(lo, hi);
            }
            at = end;
        }
    }
    if new.len() > common {
        push(common, new.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn desc(len: u64, ranges: Vec<(u64, u64)>) -> StorageUpdateDesc {
        StorageUpdateDesc {
            name: "cache_v_l3".into(),
            base: 7,
            len,
            ranges,
            metadata: Metadata::new().with("step", 4i64),
        }
    }

    #[test]
    fn checks_refuse_what_the_spec_refuses() {
        let ok = desc(10, vec![(0, 2), (4, 2)]);
        assert_eq!(ok.check(10, 4), Ok(()));
        assert!(ok.check(10, 5).unwrap_err().contains("payload has 5"));
        let overlap = desc(10, vec![(0, 3), (2, 2)]);
        assert!(overlap.check(10, 5).unwrap_err().contains("before the end"));
        let out = desc(10, vec![(8, 3)]);
        assert!(out.check(10, 3).unwrap_err().contains("past the storage"));
        let empty = desc(10, vec![(8, 0)]);
        assert!(empty.check(10, 0).unwrap_err().contains("empty"));
        let huge = desc(u64::MAX, vec![(u64::MAX - 1, 5)]);
        assert!(huge.check(0, 5).is_err());
        // growing: the new bytes must all come from ranges
        let gap = desc(12, vec![(10, 1)]);
        assert!(gap.check(10, 1).unwrap_err().contains("bytes 11..12"));
        let gap = desc(12, vec![(11, 1)]);
        assert!(gap.check(10, 1).unwrap_err().contains("bytes 10..11"));
        assert_eq!(desc(12, vec![(3, 1), (10, 2)]).check(10, 3), Ok(()));
        // shrinking needs no range
        assert_eq!(desc(4, vec![]).check(10, 0), Ok(()));
    }

    #[test]
    fn a_hostile_count_is_refused_before_allocating() {
        let mut b = encode_storage_update(&desc(10, vec![(0, 1)]));
        // the count field follows the name (4 + 10), base and len (16)
        b[30..34].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = decode_storage_update(&b, 1000).unwrap_err();
        assert!(e.to_string().contains("count 4294967295"), "{e}");
        assert!(e.to_string().contains("byte 1030"), "{e}");
    }

    #[test]
    fn diff_finds_what_changed() {
        let old = vec![0u8; 300];
        let mut new = old.clone();
        new[5] = 1;
        new[7] = 1; // joined with 5 (gap 1)
        new[100] = 2;
        new[250..260].fill(3);
        assert_eq!(
            diff_ranges(&old, &new, 16),
            vec![(5, 3), (100, 1), (250, 10)]
        );
        assert_eq!(
            diff_ranges(&old, &new, 0),
            vec![(5, 1), (7, 1), (100, 1), (250, 10)]
        );
        assert!(diff_ranges(&old, &old, 16).is_empty());
        let longer: Vec<u8> = (0..310).map(|i| (i >= 300) as u8).collect();
        assert_eq!(diff_ranges(&old, &longer, 16), vec![(300, 10)]);
    }

    proptest! {
        /// Encoding round-trips, and applying the diff of two buffers to
        /// the first gives the second.
        #[test]
        fn diff_apply_round_trip(
            old in proptest::collection::vec(0u8..3, 0..9000),
            edits in proptest::collection::vec((0usize..9100, 0u8..3), 0..40),
            grow in 0usize..40,
            gap in 0usize..20,
        ) {
            let mut new = old.clone();
            new.extend(std::iter::repeat_n(7u8, grow));
            for (i, v) in edits {
                if i < new.len() {
                    new[i] = v;
                }
            }
            let ranges = diff_ranges(&old, &new, gap);
            let payload: Vec<u8> = ranges
                .iter()
                .flat_map(|&(o, n)| new[o as usize..(o + n) as usize].to_vec())
                .collect();
            let u = desc(new.len() as u64, ranges);
            prop_assert_eq!(u.check(old.len() as u64, payload.len() as u64), Ok(()));
            let enc = encode_storage_update(&u);
            let dec = decode_storage_update(&enc, 64).unwrap();
            prop_assert_eq!(&dec, &u);
            let mut bytes = old.clone();
            apply(&mut bytes, &dec, &payload);
            prop_assert_eq!(bytes, new);
        }
    }
}
