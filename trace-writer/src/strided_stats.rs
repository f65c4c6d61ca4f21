//! Statistics of a ggml tensor's values where they lie (its `ne`/`nb` over
//! its owner's bytes), in one pass and without copying them out: what the
//! ggml recorder's stats-only mode records.

#![forbid(unsafe_code)]

use rustc_hash::FxHashMap;
use trace_format::record::{crc32c, crc32c_append};
use trace_format::stats::StatsAccumulator;
use trace_format::{DType, Stats};

/// Bytes per piece of a view's run whose statistics [`PieceCache`] keeps.
const PIECE_BYTES: u64 = 16 << 10;
/// Bytes checksummed and then read for statistics at a time: a multiple of
/// every element size and of the statistics' chunks (so the values group
/// as in one call), small enough to stay in L2.
const FUSED_BYTES: usize = 64 << 10;
/// Pieces kept before the cache starts over (about 6 MiB of entries).
const MAX_PIECES: usize = 100_000;

/// The statistics of pieces of memory that outlive a graph (the KV cache,
/// which every decode step views whole and changes by a row), by owner
/// address, offset, length and dtype, with the pieces' crc32c: a piece
/// whose bytes have not changed is not read twice, only checksummed
/// (crc32c: about 20 GB/s on one core; the statistics of f16 values,
/// converted, about 6 GB/s), or not even that when the recorder knows no
/// node wrote the owner since the piece was last read (its token).
#[derive(Debug, Default)]
pub(crate) struct PieceCache {
    pieces: FxHashMap<(usize, u64, u64, u16), Piece>,
}

/// What an owner's bytes are as of: (graph epoch, writes seen in it).
pub(crate) type Token = (u64, u64);

#[derive(Debug)]
struct Piece {
    crc: u32,
    stats: StatsAccumulator,
    /// The owner's (epoch, writes) when the piece was last read or
    /// checked: the same token later means no node wrote it since.
    token: Option<Token>,
}

/// The statistics of the tensor `ne`/`nb` (ggml order, fastest first) at
/// byte `offset` of `data`. Rows (`ne[0]` values) that lie contiguously go
/// through the vectorized pass ([`StatsAccumulator::push_bytes`]); block
/// types are dequantized a row at a time. `bytes_crc32c` is the crc of the
/// tensor's bytes when they are one contiguous run read without the cache,
/// else absent. `Err`
/// says why not: a row outside `data`, a block type whose rows are not
/// whole contiguous blocks, a dtype without values. With `cache` (the
/// owner's address and the cache), contiguous runs go piece by piece
/// through it; with a token (what the owner's bytes are as of: see
/// `ggml.rs`, `WriteTracking`), a piece last read or checked at the same
/// token is taken without its crc.
pub(crate) fn ggml_stats(
    dtype: DType,
    ne: &[i64; 4],
    nb: &[u64; 4],
    offset: u64,
    data: &[u8],
    mut cache: Option<(usize, Option<Token>, &mut PieceCache)>,
) -> Result<Stats, String> {
    let ne: Vec<u64> = ne
        .iter()
        .map(|&n| u64::try_from(n).map_err(|_| format!("ne {n}")))
        .collect::<Result<_, _>>()?;
    let mut acc = StatsAccumulator::new();
    if ne.contains(&0) {
        return Ok(acc.finish(Some(crc32c(&[]))));
    }
    let (unit_elems, unit_bytes) = match dtype.element_bytes() {
        Some(b) => (1, b as u64),
        None => (dtype.block_elems(), dtype.block_bytes()),
    };
    if ne[0] % unit_elems != 0 {
        return Err(format!(
            "rows of {} values of {dtype}: not whole blocks",
            ne[0]
        ));
    }
    let row_bytes = ne[0] / unit_elems * unit_bytes;
    let row_contiguous = nb[0] == unit_bytes || ne[0] == 1;
    let whole = row_contiguous
        && (ne[1] == 1 || nb[1] == row_bytes)
        && (ne[2] == 1 || nb[2] == row_bytes * ne[1])
        && (ne[3] == 1 || nb[3] == row_bytes * ne[1] * ne[2]);
    let span = |start: u64, len: u64| -> Result<&[u8], String> {
        let end = start.checked_add(len).ok_or("offset overflows")?;
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| data.get(s..e))
            .ok_or_else(|| format!("bytes {start}..{end} outside the {} bytes read", data.len()))
    };
    let mut values = Vec::new();
    let mut push_fresh = |acc: &mut StatsAccumulator, bytes: &[u8]| -> Result<(), String> {
        if dtype.is_block() {
            values.resize(
                (bytes.len() as u64 / unit_bytes * unit_elems) as usize,
                0f32,
            );
            trace_quant::dequantize(dtype, bytes, &mut values)
                .map_err(|e| format!("statistics of {dtype} values: {e}"))?;
            acc.push_f32s(&values);
            Ok(())
        } else if acc.push_bytes(dtype, bytes) {
            Ok(())
        } else {
            Err(format!("statistics of {dtype} values"))
        }
    };
    // a permutation of one packed run (a KV cache view permuted for the
    // attention): its values are that run's, read in storage order
    let dense = !whole && !dtype.is_block() && is_packed(&ne, nb, unit_bytes);
    // rows shorter than a piece, read one by one: a piece per row would
    // cost a crc and a lookup per row, and a decode step changes every row
    // of a transposed V cache anyway; read them afresh
    if !(whole || dense) && row_bytes < PIECE_BYTES {
        cache = None;
    }
    let cached = cache.is_some();
    // a run at `start`: through the piece cache when there is one
    let mut push_run =
        |acc: &mut StatsAccumulator, start: u64, bytes: &[u8]| -> Result<(), String> {
            let Some((owner, token, cache)) = cache.as_mut() else {
                return push_fresh(acc, bytes);
            };
            let token = *token;
            if cache.pieces.len() > MAX_PIECES {
                cache.pieces.clear();
            }
            let piece = (PIECE_BYTES / unit_bytes).max(1) * unit_bytes;
            for (i, p) in bytes.chunks(piece as usize).enumerate() {
                let key = (*owner, start + i as u64 * piece, p.len() as u64, dtype.id());
                if let Some(known) = cache
                    .pieces
                    .get(&key)
                    .filter(|k| token.is_some() && k.token == token)
                {
                    acc.merge(&known.stats);
                    continue;
                }
                let crc = crc32c(p);
                match cache.pieces.get_mut(&key) {
                    Some(k) if k.crc == crc => {
                        k.token = token;
                        acc.merge(&k.stats);
                    }
                    _ => {
                        let mut stats = StatsAccumulator::new();
                        push_fresh(&mut stats, p)?;
                        acc.merge(&stats);
                        cache.pieces.insert(key, Piece { crc, stats, token });
                    }
                }
            }
            Ok(())
        };
    if whole || dense {
        let bytes = span(offset, row_bytes * ne[1] * ne[2] * ne[3])?;
        if dtype.is_block() && !cached {
            // a row at a time: a bounded buffer of dequantized values
            for row in bytes.chunks(row_bytes as usize) {
                push_run(&mut acc, 0, row)?;
            }
        } else if whole && !cached {
            // one pass: each part checksummed, then read for the
            // statistics while it is still in the cache (a tensor of a
            // few MiB read twice would come from memory twice)
            let mut crc = 0;
            for part in bytes.chunks(FUSED_BYTES) {
                crc = crc32c_append(crc, part);
                push_run(&mut acc, 0, part)?;
            }
            return Ok(acc.finish(Some(crc)));
        } else {
            push_run(&mut acc, offset, bytes)?;
        }
        // (through the cache: the pieces' crcs are not the whole's; a
        // permutation's bytes are not in its order)
        return Ok(acc.finish((!cached && whole).then(|| crc32c(bytes))));
    }
    let size = unit_bytes as usize;
    // rows read afresh, short ones above all (a transposed V cache's rows
    // are its cells): gathered into whole chunks of the statistics, so that
    // each costs a copy rather than a pass of its own, and the values group
    // as the same values read in one run would
    let gather_rows = row_contiguous && !cached && !dtype.is_block();
    let chunk_bytes = trace_format::stats::CHUNK * size;
    let mut gathered: Vec<u8> = Vec::new();
    if gather_rows {
        gathered.reserve(chunk_bytes.min((row_bytes * ne[1] * ne[2] * ne[3]) as usize));
    }
    for i3 in 0..ne[3] {
        for i2 in 0..ne[2] {
            for i1 in 0..ne[1] {
                let start = offset + i1 * nb[1] + i2 * nb[2] + i3 * nb[3];
                if gather_rows {
                    let mut row = span(start, row_bytes)?;
                    while !row.is_empty() {
                        let take = (chunk_bytes - gathered.len()).min(row.len());
                        gathered.extend_from_slice(&row[..take]);
                        row = &row[take..];
                        if gathered.len() == chunk_bytes {
                            push_run(&mut acc, 0, &gathered)?;
                            gathered.clear();
                        }
                    }
                } else if row_contiguous {
                    push_run(&mut acc, start, span(start, row_bytes)?)?;
                } else if dtype.is_block() {
                    return Err(format!("{dtype} rows with a stride of {} bytes", nb[0]));
                } else {
                    for i0 in 0..ne[0] {
                        let v = span(start + i0 * nb[0], unit_bytes)?;
                        acc.push(
                            dtype
                                .decode_f64(&v[..size])
                                .ok_or_else(|| format!("statistics of {dtype} values"))?,
                        );
                    }
                }
            }
        }
    }
    if !gathered.is_empty() {
        push_run(&mut acc, 0, &gathered)?;
    }
    Ok(acc.finish(None))
}

/// Whether the elements of `ne`/`nb` (`unit_bytes` each, ggml order) tile
/// one run of bytes from the view's offset exactly once, in some order of
/// the dimensions: a permutation of a packed tensor.
fn is_packed(ne: &[u64], nb: &[u64; 4], unit_bytes: u64) -> bool {
    let mut dims: Vec<(u64, u64)> = ne
        .iter()
        .zip(nb)
        .filter(|(&n, _)| n > 1)
        .map(|(&n, &b)| (b, n))
        .collect();
    dims.sort_unstable();
    let mut expected = unit_bytes;
    for (stride, n) in dims {
        if stride != expected {
            return false;
        }
        let Some(next) = expected.checked_mul(n) else {
            return false;
        };
        expected = next;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_format::stats::compute_stats;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn contiguous_strided_and_quantized() {
        let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b = f32_bytes(&x);
        // the whole [2,3,4] tensor: the same as compute_stats, crc included
        let s = ggml_stats(DType::F32, &[4, 3, 2, 1], &[4, 16, 48, 96], 0, &b, None).unwrap();
        let w = compute_stats(DType::F32, &b).unwrap();
        assert_eq!(
            (s.count, s.min, s.max, s.bytes_crc32c),
            (w.count, w.min, w.max, w.bytes_crc32c)
        );
        assert!((s.mean - w.mean).abs() < 1e-12 && (s.std - w.std).abs() < 1e-12);
        // a view of rows 1..3 of each of the 2 matrices (at byte 16)
        let s = ggml_stats(DType::F32, &[4, 2, 2, 1], &[4, 16, 48, 96], 16, &b, None).unwrap();
        let want: Vec<f32> = [4..12, 16..24]
            .into_iter()
            .flat_map(|r| x[r].to_vec())
            .collect();
        let w = compute_stats(DType::F32, &f32_bytes(&want)).unwrap();
        assert_eq!(
            (s.count, s.min, s.max, s.bytes_crc32c),
            (8 * 2, w.min, w.max, None)
        );
        assert!((s.mean - w.mean).abs() < 1e-12 && (s.std - w.std).abs() < 1e-12);
        // the whole tensor with its two outer dimensions swapped (packed):
        // the whole's statistics, without its crc (not in the view's order)
        let p = ggml_stats(DType::F32, &[4, 2, 3, 1], &[4, 48, 16, 96], 0, &b, None).unwrap();
        let w = compute_stats(DType::F32, &b).unwrap();
        assert_eq!(
            (p.count, p.min, p.max, p.bytes_crc32c),
            (w.count, w.min, w.max, None)
        );
        assert!((p.mean - w.mean).abs() < 1e-12 && (p.std - w.std).abs() < 1e-12);
        assert!(is_packed(&[4, 2, 3, 1], &[4, 48, 16, 96], 4));
        assert!(!is_packed(&[4, 2, 2, 1], &[4, 48, 16, 96], 4));
        // 3 of every 4 values of 2 rows: gaps
        assert!(!is_packed(&[3, 2, 1, 1], &[4, 16, 48, 48], 4));
        assert!(is_packed(&[3, 4, 1, 1], &[16, 4, 48, 48], 4));
        // transposed (nb[0] is not the element size): value by value
        let t = ggml_stats(DType::F32, &[3, 4, 1, 1], &[16, 4, 48, 48], 0, &b, None).unwrap();
        let w = compute_stats(DType::F32, &f32_bytes(&x[..12])).unwrap();
        assert_eq!((t.count, t.min, t.max), (12, w.min, w.max));
        // q8_0: dequantized
        let vals: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) / 8.0).collect();
        let q = trace_quant::quantize_to_vec(DType::Q8_0, &vals).unwrap();
        let deq = trace_quant::dequantize_to_vec(DType::Q8_0, &q).unwrap();
        let s = ggml_stats(DType::Q8_0, &[32, 2, 1, 1], &[34, 34, 68, 68], 0, &q, None).unwrap();
        let w = compute_stats(DType::F32, &f32_bytes(&deq)).unwrap();
        assert_eq!((s.count, s.min, s.max), (64, w.min, w.max));
        // a tensor of several parts (checksummed and read part by part):
        // the same crc and statistics as in one piece
        let big: Vec<f32> = (0..100_000)
            .map(|i| ((i * 7) % 1009) as f32 - 500.0)
            .collect();
        let bb = f32_bytes(&big);
        let n = [100_000, 1, 1, 1];
        let s = ggml_stats(
            DType::F32,
            &n,
            &[4, 400_000, 400_000, 400_000],
            0,
            &bb,
            None,
        )
        .unwrap();
        let w = compute_stats(DType::F32, &bb).unwrap();
        assert_eq!(
            (s.count, s.min, s.max, s.bytes_crc32c),
            (w.count, w.min, w.max, w.bytes_crc32c)
        );
        assert!((s.mean - w.mean).abs() < 1e-12 && (s.std - w.std).abs() < 1e-9 * w.std);
        // out of bounds is an error, not a panic
        let e = ggml_stats(DType::F32, &[4, 3, 2, 1], &[4, 16, 48, 96], 8, &b, None).unwrap_err();
        assert!(e.contains("outside the 96 bytes"), "{e}");
        assert!(ggml_stats(DType::Q8_0, &[32, 2, 1, 1], &[68, 34, 68, 68], 0, &q, None).is_err());
    }

    /// A transposed f16 V cache's view (rows of a few cells, a stride of the
    /// whole context): its short rows, gathered into whole chunks, give the
    /// statistics of the same values read in one run, bit for bit.
    #[test]
    fn short_rows_group_as_one_run() {
        let (n_ctx, rows, n_kv) = (512u64, 300u64, 37u64);
        let cache: Vec<u8> = (0..n_ctx * rows)
            .flat_map(|i| {
                half::f16::from_f32(((i * 7919) % 1013) as f32 / 9.0 - 50.0).to_le_bytes()
            })
            .collect();
        let s = ggml_stats(
            DType::F16,
            &[n_kv as i64, rows as i64, 1, 1],
            &[2, n_ctx * 2, 0, 0],
            6,
            &cache,
            None,
        )
        .unwrap();
        let run: Vec<u8> = (0..rows)
            .flat_map(|r| {
                let at = (6 + r * n_ctx * 2) as usize;
                cache[at..at + n_kv as usize * 2].to_vec()
            })
            .collect();
        let mut one = StatsAccumulator::new();
        assert!(one.push_bytes(DType::F16, &run));
        let w = one.finish(None);
        assert_eq!(
            (s.count, s.min, s.max, s.mean.to_bits(), s.std.to_bits()),
            (w.count, w.min, w.max, w.mean.to_bits(), w.std.to_bits())
        );
    }

    #[test]
    fn the_piece_cache_reads_only_what_changed_and_agrees() {
        // a "KV cache" of 3 pieces and a bit, f16, viewed whole twice with a
        // row changed in between, and as a strided view
        let n = (PIECE_BYTES as usize / 2) * 3 + 100;
        let mut h: Vec<u8> = (0..n)
            .flat_map(|i| half::f16::from_f32((i % 97) as f32 * 0.25 - 7.0).to_le_bytes())
            .collect();
        let ne = [n as i64, 1, 1, 1];
        let nb = [2, 2 * n as u64, 2 * n as u64, 2 * n as u64];
        let mut cache = PieceCache::default();
        let mut before = Vec::new();
        for round in 0..3 {
            if round == 2 {
                h[PIECE_BYTES as usize + 10..PIECE_BYTES as usize + 14]
                    .copy_from_slice(&[0, 0x3c, 0, 0xbc]);
            }
            let fresh = ggml_stats(DType::F16, &ne, &nb, 0, &h, None).unwrap();
            let cached =
                ggml_stats(DType::F16, &ne, &nb, 0, &h, Some((7, None, &mut cache))).unwrap();
            assert_eq!(cache.pieces.len(), 4);
            let crcs: Vec<u32> = (0..4u64)
                .map(|i| {
                    let len = if i == 3 { 200 } else { PIECE_BYTES };
                    cache.pieces[&(7, i * PIECE_BYTES, len, DType::F16.id())].crc
                })
                .collect();
            if round == 1 {
                before = crcs;
            } else if round == 2 {
                // the changed piece alone has new bytes (the others came from the cache)
                let changed: Vec<bool> = crcs.iter().zip(&before).map(|(a, b)| a != b).collect();
                assert_eq!(changed, [false, true, false, false]);
            }
            assert_eq!(
                (cached.count, cached.min, cached.max, cached.bytes_crc32c),
                (fresh.count, fresh.min, fresh.max, None)
            );
            assert!(fresh.bytes_crc32c.is_some());
            assert!(
                (cached.mean - fresh.mean).abs() < 1e-12 && (cached.std - fresh.std).abs() < 1e-12
            );
        }
        // rows of 64 values 128 values apart, through the cache
        let (ne, nb) = ([64, 40, 1, 1], [2, 256, 256 * 40, 256 * 40]);
        let fresh = ggml_stats(DType::F16, &ne, &nb, 6, &h, None).unwrap();
        let cached = ggml_stats(DType::F16, &ne, &nb, 6, &h, Some((7, None, &mut cache))).unwrap();
        assert_eq!(
            (cached.count, cached.min, cached.max, cached.bytes_crc32c),
            (fresh.count, fresh.min, fresh.max, None)
        );
        assert!((cached.mean - fresh.mean).abs() < 1e-12);
    }
}
