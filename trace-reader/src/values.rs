//! Values of a stored view: any layout decoded (block types dequantized,
//! then viewed in elements), gathered row-major and converted; and the
//! limits on how many values a read may make. Pure functions of a layout
//! and its storage's bytes; rebuilding derived tensors from their parents
//! is `replay.rs`'s.

// the length of a vector its rows were converted into: see the `unsafe` blocks and their SAFETY comments
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use rayon::prelude::*;
use trace_format::{DType, Layout};

use crate::pool;

/// How deep a chain of derived tensors may go (each rebuilt from the last).
pub const MAX_DERIVATION_DEPTH: usize = 64;

/// The most values one materialization may produce: 2^23 plus 8 per byte of
/// the file (a byte of any block type holds fewer than 8 values, so every
/// tensor a file can hold fits). A view with zero strides (an `expand`) can
/// name far more elements than its storage holds; materializing such a view
/// beyond this bound is refused with an error rather than exhausting
/// memory: as f64, at most 64 MiB + 64 bytes per byte of the file (SPEC.md
/// §9). The zero-copy `array()` view has no such limit.
pub fn value_limit(file_len: u64) -> u64 {
    (1u64 << 23).saturating_add(file_len.saturating_mul(8))
}

/// Call `f(offset)` for every element of a checked layout, row-major; the
/// offsets are `storage_offset + Σ i·stride`, in whatever unit the layout's
/// strides are (bytes, or elements for a block type's element layout).
pub(crate) fn walk(layout: &Layout, f: impl FnMut(usize)) {
    layout.for_each_offset(f);
}

/// A vector with room for `n` values, or an error instead of an abort.
pub(crate) fn reserve<T>(n: u64, limit: u64) -> Result<Vec<T>, String> {
    if n > limit {
        return Err(format!(
            "materializing {n} values is refused (limit {limit} for this file: use the zero-copy view instead)"
        ));
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n as usize).map_err(|_| {
        format!(
            "cannot allocate {} bytes for {n} values",
            n.saturating_mul(std::mem::size_of::<T>() as u64)
        )
    })?;
    Ok(v)
}

/// The values of a block-type view of `storage` (layout already checked
/// against it): the whole blocks it spans dequantized (SPEC.md §6), and the
/// view's element layout within them.
fn dequantized_span(
    dtype: DType,
    layout: &Layout,
    storage: &[u8],
) -> Result<(Vec<f32>, Layout), String> {
    let el = layout.element_layout(dtype).map_err(|e| e.to_string())?;
    // the whole blocks the view spans (SPEC.md §6), checked against the storage
    let (start, end) = layout
        .byte_span(dtype)
        .map_err(|e| e.to_string())?
        .unwrap_or((0, 0));
    let bytes = usize::try_from(start)
        .ok()
        .zip(usize::try_from(end).ok())
        .and_then(|(a, b)| storage.get(a..b))
        .ok_or_else(|| {
            format!(
                "bytes {start}..{end} lie outside the storage of {} bytes",
                storage.len()
            )
        })?;
    let (be, bb) = (dtype.block_elems(), dtype.block_bytes());
    let first = start as u64 / bb;
    // bounded by the storage's size, so no value limit applies
    let values = bytes.len() as u64 / bb * be;
    let mut deq = reserve::<f32>(values, u64::MAX)?;
    deq.resize(values as usize, 0.0);
    trace_quant::dequantize(dtype, bytes, &mut deq).map_err(|e| e.to_string())?;
    let shifted =
        Layout::new(el.shape, el.strides, el.offset - first * be).map_err(|e| e.to_string())?;
    Ok((deq, shifted))
}

/// The values of a view of `storage` (layout already checked against it),
/// row-major, converted by `conv`. Block types are dequantized (only the
/// blocks the view spans) and then indexed in elements (SPEC.md §6).
pub(crate) fn gather<T>(
    dtype: DType,
    layout: &Layout,
    storage: &[u8],
    limit: u64,
    conv: impl Fn(f64) -> T,
) -> Result<Vec<T>, String> {
    let numel = layout.numel();
    let mut out = reserve::<T>(numel, limit)?;
    if numel == 0 {
        return Ok(out);
    }
    if dtype.is_block() {
        let (deq, shifted) = dequantized_span(dtype, layout, storage)?;
        walk(&shifted, |i| out.push(conv(f64::from(deq[i]))));
        return Ok(out);
    }
    let mut failed = false;
    walk(layout, |o| match dtype.decode_f64(&storage[o..]) {
        Some(v) => out.push(conv(v)),
        None => failed = true,
    });
    if failed {
        return Err(format!("cannot decode {dtype} values"));
    }
    Ok(out)
}

/// [`gather`] into f32 without the detour through f64: f32, f16 and bf16
/// views are converted a contiguous innermost run at a time (f16/bf16 with
/// the CPU's vector conversion where it has one, e.g. x86 F16C), block
/// types dequantize straight into the result when the view is all of the
/// blocks it spans. Every value is the same as `gather(.., |v| v as f32)`:
/// f16, bf16 and f32 convert to f32 exactly.
///
/// From [`SHARED_MIN_VALUES`] values on (and where the machine has more
/// than one core), the rows are converted by the threads of the reader's
/// [`pool`] together; the values are the same.
pub(crate) fn gather_f32(
    dtype: DType,
    layout: &Layout,
    storage: &[u8],
    limit: u64,
) -> Result<Vec<f32>, String> {
    gather_f32_with(dtype, layout, storage, limit, Threads::Auto)
}

/// [`gather_f32`], with who converts the rows of f32/f16/bf16 views chosen.
pub(crate) fn gather_f32_with(
    dtype: DType,
    layout: &Layout,
    storage: &[u8],
    limit: u64,
    threads: Threads,
) -> Result<Vec<f32>, String> {
    let numel = layout.numel();
    if numel == 0 || !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) && !dtype.is_block() {
        return gather(dtype, layout, storage, limit, |v| v as f32);
    }
    let mut out = reserve::<f32>(numel, limit)?;
    if dtype.is_block() {
        let (deq, shifted) = dequantized_span(dtype, layout, storage)?;
        // a row-major view of exactly the blocks it spans: those values
        if layout.is_contiguous(dtype) && shifted.storage_offset() == 0 && deq.len() as u64 == numel
        {
            return Ok(deq);
        }
        walk(&shifted, |i| out.push(deq[i]));
        return Ok(out);
    }
    let size = dtype.element_bytes().unwrap_or(1);
    let nd = layout.ndim();
    if nd == 0 || layout.byte_strides()[nd - 1] != size as i64 {
        let mut failed = false;
        walk(layout, |o| match dtype.decode_f32(&storage[o..]) {
            Some(v) => out.push(v),
            None => failed = true,
        });
        if failed {
            return Err(format!("cannot decode {dtype} values"));
        }
        return Ok(out);
    }
    // one contiguous run per innermost row
    let row_len = layout.shape()[nd - 1] as usize;
    let rows = layout.outer();
    let n = numel as usize; // reserved above, so it fits
    let dst = &mut out.spare_capacity_mut()[..n];
    let shared = match threads {
        Threads::Auto => numel >= SHARED_MIN_VALUES && pool::pool().is_some(),
        Threads::One => false,
        Threads::Shared => true,
    };
    let done = if shared && rows.numel() > 1 {
        convert_rows_shared(dtype, &rows, row_len, storage, dst)
    } else {
        convert_rows(dtype, &rows, row_len, 0, storage, dst)
    };
    if let Some(o) = done.outside {
        return Err(format!(
            "a row of {} bytes at {o} lies outside the storage of {} bytes",
            row_len * size,
            storage.len()
        ));
    }
    if done.undecodable || done.written != n {
        return Err(format!("cannot decode {dtype} values"));
    }
    // SAFETY: the first `n` values, within the capacity (reserved above),
    // were all written: `written` counts the values of the rows converted,
    // and every row was (no row outside the storage, none undecodable).
    unsafe { out.set_len(n) };
    Ok(out)
}

/// From how many values on [`gather_f32`] shares a conversion of rows out
/// between the threads of the [`pool`] (where there is one): 2^21 values,
/// 8 MiB of f32. The pool's threads sleep between calls, and waking them
/// is slow where the cores idle in a virtual machine: on this project's
/// 2-core VM, permuted f16 views converted five calls in a row after 20 ms
/// of idleness (best of the five, median of 100 such blocks; steady state,
/// calls back to back, in brackets), one thread against shared: 2^18 values
/// 52 against 102 µs (45 against 34), 2^20 255 against 306 µs (208 against
/// 125), 2^22 1477 against 903 µs (1409 against 797). Below about 2^21 a
/// call after a pause loses more to the wake-up than sharing saves, and
/// calls come after pauses: a user's, or another program's (the bench's
/// torch rounds). Before, from 2^16 values on, the rows were shared.
pub(crate) const SHARED_MIN_VALUES: u64 = 1 << 21;

/// The size of the pieces of a shared conversion, in values: rayon hands
/// them out as its threads ask, so a thread that joins late takes only
/// what is left.
const CHUNK_VALUES: usize = 1 << 14;

/// Who converts the rows of a [`gather_f32_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    /// Shared with the pool's threads from [`SHARED_MIN_VALUES`] on.
    Auto,
    /// The calling thread alone.
    #[cfg_attr(not(test), allow(dead_code))]
    One,
    /// Shared whatever the size (for tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Shared,
}

/// What converting rows did: how many values it wrote, and the faults that
/// leave the rest of them unwritten.
#[derive(Debug, Default)]
struct Converted {
    written: usize,
    /// The last row (in row-major order) outside the storage, at this offset.
    outside: Option<usize>,
    undecodable: bool,
}

impl Converted {
    /// `self`, then `later` (rows after it): the last outside row is later's.
    fn then(self, later: Converted) -> Converted {
        Converted {
            written: self.written + later.written,
            outside: later.outside.or(self.outside),
            undecodable: self.undecodable || later.undecodable,
        }
    }
}

/// Convert the rows `first..` of `rows` (one offset per row: a view's outer
/// dimensions), `row_len` contiguous `dtype` values each in `storage`, into
/// `dst`, as many rows as it holds.
fn convert_rows(
    dtype: DType,
    rows: &Layout,
    row_len: usize,
    first: u64,
    storage: &[u8],
    dst: &mut [MaybeUninit<f32>],
) -> Converted {
    // the casts read native-endian values: on a big-endian host, or for a
    // run at an odd address, every value is decoded on its own
    let little = cfg!(target_endian = "little");
    fn halves(bytes: &[u8]) -> Option<&[u16]> {
        bytemuck::try_cast_slice::<u8, u16>(bytes)
            .ok()
            .filter(|_| cfg!(target_endian = "little"))
    }
    // one by one
    let each = |bytes: &[u8], dst: &mut [MaybeUninit<f32>]| {
        let mut values = bytes.chunks_exact(dtype.element_bytes().unwrap_or(1));
        dst.iter_mut().all(|d| {
            values
                .next()
                .and_then(|c| dtype.decode_f32(c))
                .map(|v| d.write(v))
                .is_some()
        })
    };
    // the dtype's conversion of a run, chosen once (not per row)
    match dtype {
        DType::F32 => convert_rows_by(rows, row_len, first, storage, dst, 4, |bytes, dst| {
            match bytemuck::try_cast_slice::<u8, f32>(bytes)
                .ok()
                .filter(|_| little)
            {
                Some(values) => {
                    for (d, &v) in dst.iter_mut().zip(values) {
                        d.write(v);
                    }
                    true
                }
                None => each(bytes, dst),
            }
        }),
        DType::F16 => {
            let f16 = crate::halves::F16ToF32::new();
            convert_rows_by(
                rows,
                row_len,
                first,
                storage,
                dst,
                2,
                |bytes, dst| match halves(bytes) {
                    Some(h) => {
                        f16.convert(h, dst);
                        true
                    }
                    None => each(bytes, dst),
                },
            )
        }
        DType::BF16 => {
            convert_rows_by(
                rows,
                row_len,
                first,
                storage,
                dst,
                2,
                |bytes, dst| match halves(bytes) {
                    Some(h) => {
                        for (d, &b) in dst.iter_mut().zip(h) {
                            d.write(f32::from_bits(u32::from(b) << 16));
                        }
                        true
                    }
                    None => each(bytes, dst),
                },
            )
        }
        _ => {
            let size = dtype.element_bytes().unwrap_or(1);
            convert_rows_by(rows, row_len, first, storage, dst, size, each)
        }
    }
}

/// [`convert_rows`] with the conversion of one row's bytes (`row_len`
/// values of `size` bytes) into its `row_len` values: false if a value
/// cannot be decoded.
#[inline(always)]
fn convert_rows_by(
    rows: &Layout,
    row_len: usize,
    first: u64,
    storage: &[u8],
    dst: &mut [MaybeUninit<f32>],
    size: usize,
    convert: impl Fn(&[u8], &mut [MaybeUninit<f32>]) -> bool,
) -> Converted {
    let run = row_len * size;
    let mut done = Converted::default();
    let count = (dst.len() / row_len) as u64;
    let mut dst_rows = dst.chunks_exact_mut(row_len);
    rows.for_each_offset_from(first, count, |o| {
        let Some(d) = dst_rows.next() else { return };
        match storage.get(o..o.saturating_add(run)) {
            Some(bytes) if convert(bytes, d) => done.written += row_len,
            Some(_) => done.undecodable = true,
            None => done.outside = Some(o),
        }
    });
    done
}

/// [`convert_rows`] of all of `rows` into `dst`, a chunk of rows at a time,
/// the chunks shared out between the threads of the [`pool`] (converted in
/// turn on the calling thread where there is none).
fn convert_rows_shared(
    dtype: DType,
    rows: &Layout,
    row_len: usize,
    storage: &[u8],
    dst: &mut [MaybeUninit<f32>],
) -> Converted {
    let chunk_rows = (CHUNK_VALUES / row_len).max(1);
    let convert = |(i, d): (usize, &mut [MaybeUninit<f32>])| {
        convert_rows(dtype, rows, row_len, (i * chunk_rows) as u64, storage, d)
    };
    let chunk = chunk_rows * row_len;
    let done: Vec<Converted> = match pool::pool() {
        Some(pool) => pool.install(|| dst.par_chunks_mut(chunk).enumerate().map(convert).collect()),
        None => dst.chunks_mut(chunk).enumerate().map(convert).collect(),
    };
    // in row order
    done.into_iter().fold(Converted::default(), Converted::then)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gather_f32` gives exactly `gather(.., |v| v as f32)`, bit for bit,
    /// over contiguous, permuted, reversed, strided, unaligned and scalar
    /// layouts of f32/f16/bf16 and over block-type views.
    #[test]
    fn gather_f32_matches_the_f64_path() {
        let storage: Vec<u8> = (0..16384u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let size = dtype.element_bytes().unwrap() as i64;
            let base = Layout::contiguous(dtype, &[4, 8, 16], 0).unwrap();
            let layouts = [
                base.clone(),
                base.permute(&[1, 0, 2]).unwrap(),
                base.permute(&[2, 1, 0]).unwrap(),
                // innermost reversed
                Layout::new(vec![4, 16], vec![16 * size, -size], 15 * size as u64).unwrap(),
                // every other element, and a zero stride (an expand)
                Layout::new(vec![3, 0], vec![size, size], 0).unwrap(),
                Layout::new(vec![5, 7], vec![0, 2 * size], 8).unwrap(),
                // an odd start: the vector path's cast fails, bytes are read one by one
                Layout::new(vec![6, 9], vec![9 * size, size], 1).unwrap(),
                Layout::new(vec![], vec![], 6).unwrap(),
                // rows longer than one conversion chunk
                Layout::contiguous(dtype, &[2, 1500], 2).unwrap(),
            ];
            for layout in &layouts {
                let slow = gather(dtype, layout, &storage, u64::MAX, |v| v as f32).unwrap();
                let fast = gather_f32(dtype, layout, &storage, u64::MAX).unwrap();
                assert_eq!(bits(&slow), bits(&fast), "{dtype} {layout:?}");
            }
        }
        let values: Vec<f32> = (0..1024).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        for dtype in [DType::Q8_0, DType::Q4_0] {
            let blocks = trace_quant::quantize_to_vec(dtype, &values).unwrap();
            let whole = Layout::contiguous(dtype, &[4, 256], 0).unwrap();
            let rows = whole.byte_strides()[0];
            let layouts = [
                whole.clone(),
                // heads outermost: [2, 4, 128] of a [4, 2, 128] cache
                Layout::contiguous(dtype, &[4, 2, 128], 0)
                    .unwrap()
                    .permute(&[1, 0, 2])
                    .unwrap(),
                // the second and third rows only
                Layout::new(vec![2, 256], whole.byte_strides().to_vec(), rows as u64).unwrap(),
            ];
            for layout in &layouts {
                let slow = gather(dtype, layout, &blocks, u64::MAX, |v| v as f32).unwrap();
                let fast = gather_f32(dtype, layout, &blocks, u64::MAX).unwrap();
                assert_eq!(bits(&slow), bits(&fast), "{dtype} {layout:?}");
            }
        }
        // the limit holds on the fast path too
        let layout = Layout::contiguous(DType::F16, &[64], 0).unwrap();
        assert!(gather_f32(DType::F16, &layout, &storage, 10)
            .unwrap_err()
            .contains("refused"));
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// `got` is `want`, bit for bit (the first difference named).
    fn same(want: &[f32], got: &[f32], what: &str) {
        assert_eq!(want.len(), got.len(), "{what}");
        if let Some(i) = (0..want.len()).find(|&i| want[i].to_bits() != got[i].to_bits()) {
            panic!(
                "{what}: value {i} is {:#x}, want {:#x}",
                got[i].to_bits(),
                want[i].to_bits()
            );
        }
    }

    /// The shared conversion gives the single-threaded one's values bit for
    /// bit (and the same errors), over permuted views with offsets, odd row
    /// counts, rows shorter and longer than a chunk, and sizes just under
    /// and over the threshold.
    #[test]
    fn shared_rows_match_one_thread() {
        let t = SHARED_MIN_VALUES;
        // room for every layout below in f32
        let storage: Vec<u8> = (0..(t as u32 + 4096) * 4)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let size = dtype.element_bytes().unwrap() as u64;
            let layouts = [
                // the KV-cache view: [positions, heads, dim] seen as [heads, positions, dim]
                Layout::contiguous(dtype, &[256, 8, 128], 0)
                    .unwrap()
                    .permute(&[1, 0, 2])
                    .unwrap(),
                Layout::contiguous(dtype, &[97, 5, 64], 3 * size)
                    .unwrap()
                    .permute(&[1, 0, 2])
                    .unwrap(),
                // just under and just over the threshold, odd row counts
                Layout::contiguous(dtype, &[t / 128 - 1, 128], 7 * size).unwrap(),
                Layout::contiguous(dtype, &[t / 128 + 1, 128], 0).unwrap(),
                Layout::contiguous(dtype, &[(t - 1) / 3, 3], size).unwrap(),
                Layout::contiguous(dtype, &[3, 5, t / 15 + 1], 0)
                    .unwrap()
                    .permute(&[1, 0, 2])
                    .unwrap(),
                // rows longer than a chunk
                Layout::contiguous(dtype, &[5, CHUNK_VALUES as u64 * 2 + 3], 11 * size).unwrap(),
                // one row: nothing to share
                Layout::contiguous(dtype, &[1, 1000], 0).unwrap(),
                // a stride between rows, rows read backwards
                Layout::new(
                    vec![301, 40],
                    vec![-(64 * size as i64), size as i64],
                    300 * 64 * size,
                )
                .unwrap(),
                // an odd start: decoded one by one
                Layout::contiguous(dtype, &[333, 17], 1).unwrap(),
            ];
            for layout in &layouts {
                layout.check_within(dtype, storage.len() as u64).unwrap();
                let one = gather_f32_with(dtype, layout, &storage, u64::MAX, Threads::One).unwrap();
                let shared =
                    gather_f32_with(dtype, layout, &storage, u64::MAX, Threads::Shared).unwrap();
                let auto = gather_f32(dtype, layout, &storage, u64::MAX).unwrap();
                // element by element, the plainest way (bf16's signaling NaNs
                // are quieted by `half`, kept by the run-at-a-time path)
                let mut each = Vec::new();
                walk(layout, |o| {
                    each.push(dtype.decode_f32(&storage[o..]).unwrap())
                });
                assert_eq!(each.len(), one.len());
                for (i, (a, b)) in each.iter().zip(&one).enumerate() {
                    let ok = a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan();
                    assert!(ok, "{dtype} {layout:?}: value {i} is {b}, want {a}");
                }
                same(&one, &shared, &format!("shared, {dtype} {layout:?}"));
                same(&one, &auto, &format!("auto, {dtype} {layout:?}"));
            }
            // rows outside the storage: the same error either way
            let layout = Layout::contiguous(dtype, &[300, 64], 0).unwrap();
            let short = &storage[..(200 * 64 * size as usize + 5)];
            let one = gather_f32_with(dtype, &layout, short, u64::MAX, Threads::One).unwrap_err();
            let shared =
                gather_f32_with(dtype, &layout, short, u64::MAX, Threads::Shared).unwrap_err();
            assert_eq!(one, shared);
            assert!(one.contains("outside"), "{one}");
        }
    }

    /// Many shared conversions in a row, and from several threads at once
    /// (each its own values), all exact.
    #[test]
    fn shared_conversions_back_to_back_and_concurrent() {
        let storage: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
            .collect();
        let layouts: Vec<(DType, Layout)> = (0..6u64)
            .map(|i| {
                let dtype = [DType::F16, DType::BF16, DType::F32][i as usize % 3];
                let layout = Layout::contiguous(dtype, &[64 + i, 4, 128], 2 * i)
                    .unwrap()
                    .permute(&[1, 0, 2])
                    .unwrap();
                (dtype, layout)
            })
            .collect();
        let want: Vec<Vec<u32>> = layouts
            .iter()
            .map(|(d, l)| bits(&gather_f32_with(*d, l, &storage, u64::MAX, Threads::One).unwrap()))
            .collect();
        for round in 0..300 {
            let k = round % layouts.len();
            let (dtype, layout) = &layouts[k];
            let got = gather_f32_with(*dtype, layout, &storage, u64::MAX, Threads::Shared).unwrap();
            assert_eq!(bits(&got), want[k], "round {round}");
        }
        std::thread::scope(|s| {
            for t in 0..4 {
                let (layouts, want, storage) = (&layouts, &want, &storage);
                s.spawn(move || {
                    for round in 0..150 {
                        let k = (round + t) % layouts.len();
                        let (dtype, layout) = &layouts[k];
                        let got =
                            gather_f32_with(*dtype, layout, storage, u64::MAX, Threads::Shared)
                                .unwrap();
                        assert_eq!(bits(&got), want[k], "thread {t} round {round}");
                    }
                });
            }
        });
    }
}
