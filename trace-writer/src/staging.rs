//! The background queue's staging memory: payloads copied in by the
//! recording thread, in chunks of mapped memory reused from record to
//! record, or in the queue's arena when they are small.

#![forbid(unsafe_code)]

use crate::stream_copy;
use crate::writer::{lock, Shared};
use crate::WriterError;

/// A payload copied into the queue: a small one in the queue's arena (with
/// the names and descriptors: one buffer, reused batch after batch, so a
/// small record costs no allocation on either thread), a large one in
/// staging chunks (reused from record to record, so that once the queue
/// has been through its budget, or after [`Writer::preallocate`](crate::Writer::preallocate), the copy
/// goes to memory that is already mapped).
#[derive(Debug)]
pub(crate) enum Staged {
    Arena(std::ops::Range<usize>),
    Chunks { chunks: Vec<Chunk>, len: usize },
}

/// A chunk of staging memory: an anonymous mapping of [`CHUNK_BYTES`]
/// whose pages are mapped in one go when it is made (`MAP_POPULATE` on
/// Linux: about twice as fast as faulting the pages in one by one with the
/// first copy).
pub(crate) type Chunk = memmap2::MmapMut;

impl Staged {
    pub(crate) fn len(&self) -> usize {
        match self {
            Staged::Arena(r) => r.len(),
            Staged::Chunks { len, .. } => *len,
        }
    }

    /// The bytes, in order (`arena`: the queue arena they were added to);
    /// a small payload is one piece, with no allocation.
    pub(crate) fn pieces<'a>(&'a self, arena: &'a [u8]) -> Pieces<'a> {
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
pub(crate) enum Pieces<'a> {
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

/// Payloads from this size on are staged in chunks.
pub(crate) const STAGE_MIN_BYTES: usize = 64 << 10;

/// The size of a staging chunk.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// A new staging chunk, its pages mapped.
fn mapped_chunk() -> std::io::Result<Chunk> {
    memmap2::MmapOptions::new()
        .len(CHUNK_BYTES)
        .populate()
        .map_anon()
}

impl Shared {
    /// Copy `payload` into the queue: staging chunks (spare ones first)
    /// for a large payload, its own allocation for a small one; and its
    /// crc32c when `with_crc`, each chunk checksummed right after it is
    /// copied, while it is in the cache.
    pub(crate) fn stage(
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
    pub(crate) fn recycle(&self, payload: Staged) {
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

    /// Map staging chunks until the spare ones hold `budget` bytes
    /// ([`Writer::preallocate`](crate::Writer::preallocate)).
    pub(crate) fn preallocate(&self, budget: u64) -> Result<(), WriterError> {
        let want = usize::try_from(budget / CHUNK_BYTES as u64).unwrap_or(usize::MAX);
        let have = lock(&self.spare).len();
        let mut fresh = Vec::new();
        for _ in have..want {
            let chunk = mapped_chunk().map_err(|e| {
                self.io_error(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot map the background queue's {budget} bytes of staging memory: {e}"
                    ),
                ))
            })?;
            fresh.push(chunk);
        }
        let mut spare = lock(&self.spare);
        let room = want.saturating_sub(spare.len());
        spare.extend(fresh.into_iter().take(room));
        Ok(())
    }
}
