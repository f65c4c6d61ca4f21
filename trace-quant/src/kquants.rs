//! The 256-value super-block types: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_XS.
//!
//! Callers (lib.rs) have checked that `blocks` is whole blocks and `out`
//! holds exactly their values.
//!
//! Every function is a transcription of ggml's reference C
//! (`dequantize_row_*` in `ggml-quants.c`, block structs in `ggml-common.h`)
//! and does the f32 arithmetic in the same order: a scale is first formed as
//! `d * sc` (and a min as `dmin * m`), then each value is `scale * q - min`.
//! gguf-py's `gguf.quants` groups the operations the same way, so the two
//! agree bit for bit. Half-precision fields convert to f32 exactly.
//!
//! With an 11-bit f16 significand and small integer scales and quants, every
//! product in the f16-scaled types is exact in f32 (at most 23 significant
//! bits; Q8_K's f32 `d * q` is a single rounded product), so the
//! grouping of the multiplications cannot change a result; the one rounding
//! step is the subtraction of the min in Q2_K, Q4_K and Q5_K. That is why the
//! multiply and the subtract must stay separate operations: a fused
//! multiply-add (`mul_add`, or a C compiler contracting `d1 * q - m1`) would
//! round once instead of twice and differ from gguf-py in the last bit.
//!
//! Loops run over `chunks_exact` super-blocks viewed as fixed-size arrays,
//! so the compiler proves every index in range and vectorizes the inner
//! loops; nothing is allocated.

use half::f16;

/// Values per super-block (`QK_K`).
const QK_K: usize = 256;

/// `sizeof(block_q2_K)`: scales[16], qs[64], d, dmin.
const Q2_K_BYTES: usize = 84;
/// `sizeof(block_q3_K)`: hmask[32], qs[64], scales[12], d.
const Q3_K_BYTES: usize = 110;
/// `sizeof(block_q4_K)`: d, dmin, scales[12], qs[128].
const Q4_K_BYTES: usize = 144;
/// `sizeof(block_q5_K)`: d, dmin, scales[12], qh[32], qs[128].
const Q5_K_BYTES: usize = 176;
/// `sizeof(block_q6_K)`: ql[128], qh[64], scales[16] (i8), d.
const Q6_K_BYTES: usize = 210;
/// `sizeof(block_q8_K)`: d (f32), qs[256] (i8), bsums[16] (i16).
const Q8_K_BYTES: usize = 292;
/// `sizeof(block_iq4_xs)`: d, scales_h (u16), scales_l[4], qs[128].
const IQ4_XS_BYTES: usize = 136;

/// ggml's `kvalues_iq4nl` (as f32: every value is exact).
const KVALUES_IQ4NL: [f32; 16] = [
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0,
    89.0, 113.0,
];

/// `s` as a fixed-size array; `s` has length `N` at every call site (a
/// `chunks_exact` chunk or a constant sub-range of a fixed array), so the
/// check folds away.
#[inline(always)]
fn arr<const N: usize>(s: &[u8]) -> &[u8; N] {
    s.try_into().expect("a block field has its fixed length")
}

/// [`arr`] for output chunks.
#[inline(always)]
fn arr_mut<const N: usize>(s: &mut [f32]) -> &mut [f32; N] {
    s.try_into().expect("an output chunk has its fixed length")
}

/// A little-endian IEEE binary16 as f32 (exact, as `GGML_FP16_TO_FP32`).
#[inline(always)]
fn f16_le(lo: u8, hi: u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j`
/// (0..8) from the 12 packed bytes of a Q4_K/Q5_K super-block.
///
/// Bytes 0..4 hold scales 0..3 in their low 6 bits, bytes 4..8 mins 0..3;
/// scales/mins 4..7 keep their low nibbles in bytes 8..12 (scale low, min
/// high) and their top two bits in the spare top bits of bytes 0..4 / 4..8.
#[inline(always)]
fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight `(scale, min)` pairs of a Q4_K/Q5_K super-block, as f32
/// products `d * sc` and `dmin * m` (ggml's `d1`/`m1`…).
#[inline(always)]
fn k4_scales(d: f32, dmin: f32, q: &[u8; 12]) -> ([f32; 8], [f32; 8]) {
    let mut ds = [0.0f32; 8];
    let mut ms = [0.0f32; 8];
    for (j, (ds, ms)) in ds.iter_mut().zip(&mut ms).enumerate() {
        let (sc, m) = get_scale_min_k4(j, q);
        *ds = d * f32::from(sc);
        *ms = dmin * f32::from(m);
    }
    (ds, ms)
}

/// The sixteen signed 6-bit scales of a Q3_K super-block (already minus 32).
///
/// Scale `j` has its low nibble in byte `j` (j < 8) or the high nibble of
/// byte `j - 8`, and its top two bits in byte `8 + j % 4` at bit `2 * (j / 4)`;
/// this is what the C's `kmask1`/`kmask2` shuffle of `aux[]` computes.
#[inline(always)]
fn q3_k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        // 0..=63 fits an i8; minus 32 gives -32..=31.
        *o = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

/// The 6-bit scale of IQ4_XS sub-block `ib` (0..8), minus 32.
#[inline(always)]
fn iq4_xs_scale(scales_h: u16, scales_l: &[u8; 4], ib: usize) -> i8 {
    let lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
    let hi = ((scales_h >> (2 * ib)) & 3) as u8;
    (lo | (hi << 4)) as i8 - 32
}

/// Q2_K: 16 sub-blocks of 16, 2-bit quants, 4-bit scale and min each:
/// `(d * (sc & 15)) * q - dmin * (sc >> 4)`.
#[inline(always)]
pub(crate) fn dequantize_q2_k(blocks: &[u8], out: &mut [f32]) {
    for (b, y) in blocks
        .chunks_exact(Q2_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let b: &[u8; Q2_K_BYTES] = arr(b);
        let scales: &[u8; 16] = arr(&b[0..16]);
        let qs: &[u8; 64] = arr(&b[16..80]);
        let d = f16_le(b[80], b[81]);
        let min = f16_le(b[82], b[83]);
        // Each sub-block's `d * sc` and `dmin * m`, formed once.
        let mut dl = [0.0f32; 16];
        let mut ml = [0.0f32; 16];
        for ((dl, ml), &sc) in dl.iter_mut().zip(&mut ml).zip(scales) {
            *dl = d * f32::from(sc & 0xF);
            *ml = min * f32::from(sc >> 4);
        }
        // Each 128-value half uses 32 bytes of qs four times (shift 0, 2, 4,
        // 6): value 32j + l (l < 32) is bits 2j of qs[l], in sub-block
        // 2j + l/16. One pass over each 16 bytes writes all four j, with
        // constant shifts and the four scales hoisted, so it vectorizes.
        for ((q, y), (dl, ml)) in qs
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(128))
            .zip(dl.chunks_exact(8).zip(ml.chunks_exact(8)))
        {
            let y: &mut [f32; 128] = arr_mut(y);
            let (ya, yb) = y.split_at_mut(64);
            let (y0, y1) = ya.split_at_mut(32);
            let (y2, y3) = yb.split_at_mut(32);
            for (half, range) in [(0usize, 0..16usize), (1, 16..32)] {
                let q: &[u8; 16] = arr(&q[range.clone()]);
                let (d0, d1, d2, d3) = (dl[half], dl[half + 2], dl[half + 4], dl[half + 6]);
                let (m0, m1, m2, m3) = (ml[half], ml[half + 2], ml[half + 4], ml[half + 6]);
                let y0: &mut [f32; 16] = arr_mut(&mut y0[range.clone()]);
                let y1: &mut [f32; 16] = arr_mut(&mut y1[range.clone()]);
                let y2: &mut [f32; 16] = arr_mut(&mut y2[range.clone()]);
                let y3: &mut [f32; 16] = arr_mut(&mut y3[range]);
                for (l, &q) in q.iter().enumerate() {
                    y0[l] = d0 * f32::from(q & 3) - m0;
                    y1[l] = d1 * f32::from((q >> 2) & 3) - m1;
                    y2[l] = d2 * f32::from((q >> 4) & 3) - m2;
                    y3[l] = d3 * f32::from(q >> 6) - m3;
                }
            }
        }
    }
}

/// Q3_K: 16 sub-blocks of 16, 3-bit quants (2 low bits in qs, the high bit
/// in hmask, *set* meaning no offset), signed 6-bit scales:
/// `(d * (sc - 32)) * (q - 4 * !h)`.
#[inline(always)]
pub(crate) fn dequantize_q3_k(blocks: &[u8], out: &mut [f32]) {
    for (b, y) in blocks
        .chunks_exact(Q3_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let b: &[u8; Q3_K_BYTES] = arr(b);
        let hmask: &[u8; 32] = arr(&b[0..32]);
        let qs: &[u8; 64] = arr(&b[32..96]);
        let scales = q3_k_scales(arr(&b[96..108]));
        let d = f16_le(b[108], b[109]);
        // Each sub-block's `d * (sc - 32)`, formed once.
        let mut dl = [0.0f32; 16];
        for (dl, &sc) in dl.iter_mut().zip(&scales) {
            *dl = d * f32::from(sc);
        }
        // Value n*128 + j*32 + l (l < 32) takes bits 2j of qs[n*32 + l] and
        // bit 4n + j of hmask[l]; its scale is sub-block n*8 + 2j + l/16. As
        // in Q2_K, one pass over each 16 bytes of qs (and of hmask, shifted
        // so that bits 0..4 are this half's) writes all four j. The high bit
        // is merged without a branch: `(low | h << 2) - 4` is `low - 4 * !h`.
        for (n, ((q, y), dl)) in qs
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(128))
            .zip(dl.chunks_exact(8))
            .enumerate()
        {
            let hshift = 4 * n as u32;
            let y: &mut [f32; 128] = arr_mut(y);
            let (ya, yb) = y.split_at_mut(64);
            let (y0, y1) = ya.split_at_mut(32);
            let (y2, y3) = yb.split_at_mut(32);
            for (half, range) in [(0usize, 0..16usize), (1, 16..32)] {
                let q: &[u8; 16] = arr(&q[range.clone()]);
                let h: &[u8; 16] = arr(&hmask[range.clone()]);
                let (d0, d1, d2, d3) = (dl[half], dl[half + 2], dl[half + 4], dl[half + 6]);
                let y0: &mut [f32; 16] = arr_mut(&mut y0[range.clone()]);
                let y1: &mut [f32; 16] = arr_mut(&mut y1[range.clone()]);
                let y2: &mut [f32; 16] = arr_mut(&mut y2[range.clone()]);
                let y3: &mut [f32; 16] = arr_mut(&mut y3[range]);
                for (l, (&q, &h)) in q.iter().zip(h).enumerate() {
                    let h = h >> hshift;
                    // 0..=7 fits an i8; minus 4 gives -4..=3.
                    let q0 = ((q & 3) | ((h & 1) << 2)) as i8 - 4;
                    let q1 = (((q >> 2) & 3) | ((h & 2) << 1)) as i8 - 4;
                    let q2 = (((q >> 4) & 3) | (h & 4)) as i8 - 4;
                    let q3 = ((q >> 6) | ((h & 8) >> 1)) as i8 - 4;
                    y0[l] = d0 * f32::from(q0);
                    y1[l] = d1 * f32::from(q1);
                    y2[l] = d2 * f32::from(q2);
                    y3[l] = d3 * f32::from(q3);
                }
            }
        }
    }
}

/// Q4_K: 8 sub-blocks of 32, 4-bit quants, 6-bit scale and min each:
/// `(d * sc) * q - dmin * m`.
#[inline(always)]
pub(crate) fn dequantize_q4_k(blocks: &[u8], out: &mut [f32]) {
    for (b, y) in blocks
        .chunks_exact(Q4_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let b: &[u8; Q4_K_BYTES] = arr(b);
        let d = f16_le(b[0], b[1]);
        let dmin = f16_le(b[2], b[3]);
        let (ds, ms) = k4_scales(d, dmin, arr(&b[4..16]));
        let qs: &[u8; 128] = arr(&b[16..144]);
        // 32 bytes give 64 values: low nibbles then high nibbles.
        for (((q, y), ds), ms) in qs
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .zip(ds.chunks_exact(2))
            .zip(ms.chunks_exact(2))
        {
            let q: &[u8; 32] = arr(q);
            let y: &mut [f32; 64] = arr_mut(y);
            let (d1, m1, d2, m2) = (ds[0], ms[0], ds[1], ms[1]);
            let (lo, hi) = y.split_at_mut(32);
            for ((&q, lo), hi) in q.iter().zip(lo).zip(hi) {
                *lo = d1 * f32::from(q & 0xF) - m1;
                *hi = d2 * f32::from(q >> 4) - m2;
            }
        }
    }
}

/// Q5_K: Q4_K plus a fifth bit per value from qh:
/// `(d * sc) * (q | h << 4) - dmin * m`.
#[inline(always)]
pub(crate) fn dequantize_q5_k(blocks: &[u8], out: &mut [f32]) {
    for (b, y) in blocks
        .chunks_exact(Q5_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let b: &[u8; Q5_K_BYTES] = arr(b);
        let d = f16_le(b[0], b[1]);
        let dmin = f16_le(b[2], b[3]);
        let (ds, ms) = k4_scales(d, dmin, arr(&b[4..16]));
        let qh: &[u8; 32] = arr(&b[16..48]);
        let qs: &[u8; 128] = arr(&b[48..176]);
        // 64-value chunk j: low nibbles take bit 2j of qh[l], high nibbles bit 2j + 1.
        for (j, (((q, y), ds), ms)) in qs
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .zip(ds.chunks_exact(2))
            .zip(ms.chunks_exact(2))
            .enumerate()
        {
            let q: &[u8; 32] = arr(q);
            let y: &mut [f32; 64] = arr_mut(y);
            let (d1, m1, d2, m2) = (ds[0], ms[0], ds[1], ms[1]);
            let (u1, u2) = (2 * j as u32, 2 * j as u32 + 1);
            let (lo, hi) = y.split_at_mut(32);
            for (((&q, &h), lo), hi) in q.iter().zip(qh).zip(lo).zip(hi) {
                *lo = d1 * f32::from((q & 0xF) | (((h >> u1) & 1) << 4)) - m1;
                *hi = d2 * f32::from((q >> 4) | (((h >> u2) & 1) << 4)) - m2;
            }
        }
    }
}

/// Q6_K: 16 sub-blocks of 16, 6-bit quants (4 low bits in ql, 2 high in
/// qh) minus 32, signed 8-bit scales: `(d * sc) * q`.
#[inline(always)]
pub(crate) fn dequantize_q6_k(blocks: &[u8], out: &mut [f32]) {
    for (b, y) in blocks
        .chunks_exact(Q6_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let b: &[u8; Q6_K_BYTES] = arr(b);
        let ql: &[u8; 128] = arr(&b[0..128]);
        let qh: &[u8; 64] = arr(&b[128..192]);
        let sc: &[u8; 16] = arr(&b[192..208]);
        let d = f16_le(b[208], b[209]);
        let mut dsc = [0.0f32; 16];
        for (o, &s) in dsc.iter_mut().zip(sc) {
            *o = d * f32::from(s as i8);
        }
        // Each 128-value half: ql[l] and ql[l + 32] give values l, l + 32
        // (low nibbles) and l + 64, l + 96 (high nibbles); qh[l] gives their
        // top bits at 0, 2, 4, 6. Value l + 32k uses scale 2k + l / 16.
        for (((ql, qh), dsc), y) in ql
            .chunks_exact(64)
            .zip(qh.chunks_exact(32))
            .zip(dsc.chunks_exact(8))
            .zip(y.chunks_exact_mut(128))
        {
            let ql: &[u8; 64] = arr(ql);
            let qh: &[u8; 32] = arr(qh);
            let y: &mut [f32; 128] = arr_mut(y);
            let (ya, yb) = y.split_at_mut(64);
            let (y0, y1) = ya.split_at_mut(32);
            let (y2, y3) = yb.split_at_mut(32);
            let (ql0, ql1) = ql.split_at(32);
            for (half, range) in [(0usize, 0..16usize), (1, 16..32)] {
                let (s0, s1, s2, s3) = (dsc[half], dsc[half + 2], dsc[half + 4], dsc[half + 6]);
                for (((((&a, &b), &h), y0), y1), (y2, y3)) in ql0[range.clone()]
                    .iter()
                    .zip(&ql1[range.clone()])
                    .zip(&qh[range.clone()])
                    .zip(&mut y0[range.clone()])
                    .zip(&mut y1[range.clone()])
                    .zip(y2[range.clone()].iter_mut().zip(&mut y3[range]))
                {
                    let q1 = ((a & 0xF) | ((h & 3) << 4)) as i8 - 32;
                    let q2 = ((b & 0xF) | (((h >> 2) & 3) << 4)) as i8 - 32;
                    let q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
                    let q4 = ((b >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
                    *y0 = s0 * f32::from(q1);
                    *y1 = s1 * f32::from(q2);
                    *y2 = s2 * f32::from(q3);
                    *y3 = s3 * f32::from(q4);
                }
            }
        }
    }
}

/// Q8_K: an f32 scale and 256 signed bytes (the 16 `bsums` are ignored):
/// `d * q`.
#[inline(always)]
pub(crate) fn dequantize_q8_k(blocks: &[u8], out: &mut [f32]) {
    for (b, y) in blocks
        .chunks_exact(Q8_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let b: &[u8; Q8_K_BYTES] = arr(b);
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let qs: &[u8; QK_K] = arr(&b[4..4 + QK_K]);
        for (y, &q) in y.iter_mut().zip(qs) {
            *y = d * f32::from(q as i8);
        }
    }
}

/// IQ4_XS: 8 sub-blocks of 32, 4-bit indices into `kvalues_iq4nl`, signed
/// 6-bit scales (low nibble in scales_l, top two bits in scales_h):
/// `(d * (ls - 32)) * kvalues[q]`.
#[inline(always)]
pub(crate) fn dequantize_iq4_xs(blocks: &[u8], out: &mut [f32]) {
    for (b, y) in blocks
        .chunks_exact(IQ4_XS_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let b: &[u8; IQ4_XS_BYTES] = arr(b);
        let d = f16_le(b[0], b[1]);
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        let scales_l: &[u8; 4] = arr(&b[4..8]);
        let qs: &[u8; 128] = arr(&b[8..136]);
        for (ib, (q, y)) in qs.chunks_exact(16).zip(y.chunks_exact_mut(32)).enumerate() {
            let dl = d * f32::from(iq4_xs_scale(scales_h, scales_l, ib));
            let q: &[u8; 16] = arr(q);
            let y: &mut [f32; 32] = arr_mut(y);
            let (lo, hi) = y.split_at_mut(16);
            for ((&q, lo), hi) in q.iter().zip(lo).zip(hi) {
                *lo = dl * KVALUES_IQ4NL[usize::from(q & 0xF)];
                *hi = dl * KVALUES_IQ4NL[usize::from(q >> 4)];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    /// ggml's packing of eight 6-bit (scale, min) pairs, as
    /// `quantize_row_q4_K_ref` writes them.
    fn pack_k4(ls: [u8; 8], lm: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                s[j] = ls[j];
                s[j + 4] = lm[j];
            } else {
                s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
                s[j - 4] |= (ls[j] >> 4) << 6;
                s[j] |= (lm[j] >> 4) << 6;
            }
        }
        s
    }

    #[test]
    fn get_scale_min_k4_hand_built() {
        // Scales 4..7 = 0b11_0101 (53), mins 4..7 = 0b10_1010 (42):
        // bytes 0..4 keep scale 0..3 = 1,2,3,4 with top bits 11;
        // bytes 4..8 keep min 0..3 = 5,6,7,8 with top bits 10;
        // bytes 8..12 = low nibbles: scale 0101, min 1010 -> 0xA5.
        let q = [
            0xC1, 0xC2, 0xC3, 0xC4, 0x85, 0x86, 0x87, 0x88, 0xA5, 0xA5, 0xA5, 0xA5,
        ];
        for j in 0..4 {
            assert_eq!(get_scale_min_k4(j, &q), (j as u8 + 1, j as u8 + 5));
        }
        for j in 4..8 {
            assert_eq!(get_scale_min_k4(j, &q), (53, 42));
        }
        // Extremes and a round trip through ggml's packing.
        assert_eq!(get_scale_min_k4(0, &[0xFF; 12]), (63, 63));
        assert_eq!(get_scale_min_k4(7, &[0xFF; 12]), (63, 63));
        assert_eq!(get_scale_min_k4(5, &[0; 12]), (0, 0));
        let ls = [0, 63, 17, 32, 48, 1, 62, 31];
        let lm = [63, 0, 44, 15, 16, 59, 2, 33];
        let q = pack_k4(ls, lm);
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &q), (ls[j], lm[j]), "sub-block {j}");
        }
    }

    #[test]
    fn q4_k_hand_built() {
        let mut b = [0u8; Q4_K_BYTES];
        b[0..2].copy_from_slice(&f16_bytes(0.5));
        b[2..4].copy_from_slice(&f16_bytes(0.25));
        let ls = [1, 2, 3, 4, 5, 6, 7, 63];
        let lm = [0, 1, 2, 3, 4, 5, 6, 63];
        b[4..16].copy_from_slice(&pack_k4(ls, lm));
        for (i, q) in b[16..].iter_mut().enumerate() {
            *q = (i as u8 & 0xF) | (((i / 8) as u8 & 0xF) << 4);
        }
        let mut y = [0.0f32; QK_K];
        dequantize_q4_k(&b, &mut y);
        for (e, &v) in y.iter().enumerate() {
            let (chunk, within) = (e / 64, e % 64);
            let byte = 16 + 32 * chunk + within % 32;
            let (sub, q) = if within < 32 {
                (2 * chunk, b[byte] & 0xF)
            } else {
                (2 * chunk + 1, b[byte] >> 4)
            };
            let expect = 0.5 * f32::from(ls[sub]) * f32::from(q) - 0.25 * f32::from(lm[sub]);
            assert_eq!(v.to_bits(), expect.to_bits(), "element {e}");
        }
        assert_eq!(y[0], 0.0); // q 0, min 0
        assert_eq!(y[255], 0.5 * 63.0 * 15.0 - 0.25 * 63.0); // qs[127] = 0xFF
    }

    #[test]
    fn q5_k_fifth_bit() {
        let mut b = [0u8; Q5_K_BYTES];
        b[0..2].copy_from_slice(&f16_bytes(1.0));
        b[2..4].copy_from_slice(&f16_bytes(1.0));
        b[4..16].copy_from_slice(&pack_k4([1; 8], [2; 8]));
        // qh[3] bit 5 -> value 2*64 + 32 + 3 (high nibbles of chunk 2).
        b[16 + 3] = 1 << 5;
        let mut y = [0.0f32; QK_K];
        dequantize_q5_k(&b, &mut y);
        for (e, &v) in y.iter().enumerate() {
            let expect = if e == 2 * 64 + 32 + 3 { 14.0 } else { -2.0 };
            assert_eq!(v, expect, "element {e}");
        }
    }

    #[test]
    fn q8_k_block_per_c_definition() {
        // block_q8_K = { float d; int8_t qs[256]; int16_t bsums[16]; }
        let mut b = [0u8; Q8_K_BYTES];
        b[0..4].copy_from_slice(&0.375f32.to_le_bytes());
        for (i, q) in b[4..260].iter_mut().enumerate() {
            *q = (i as i32 - 128) as i8 as u8;
        }
        b[260..].fill(0xAB); // bsums are not part of the values
        let mut y = vec![0.0f32; 2 * QK_K];
        let mut two = b.to_vec();
        two.extend_from_slice(&b);
        two[Q8_K_BYTES..Q8_K_BYTES + 4].copy_from_slice(&(-2.0f32).to_le_bytes());
        dequantize_q8_k(&two, &mut y);
        for i in 0..QK_K {
            assert_eq!(y[i], 0.375 * (i as f32 - 128.0), "block 0 element {i}");
            assert_eq!(
                y[QK_K + i],
                -2.0 * (i as f32 - 128.0),
                "block 1 element {i}"
            );
        }
        assert_eq!(y[0], -48.0);
        assert_eq!(y[255], 0.375 * 127.0);
    }

    #[test]
    fn q2_k_hand_built() {
        let mut b = [0u8; Q2_K_BYTES];
        for (g, s) in b[0..16].iter_mut().enumerate() {
            *s = (g as u8) | ((15 - g as u8) << 4); // scale g, min 15 - g
        }
        // qs[l] holds values l, l + 32, l + 64, l + 96 of its half at bits 0, 2, 4, 6.
        for q in &mut b[16..80] {
            *q = 0b11_10_01_00;
        }
        b[80..82].copy_from_slice(&f16_bytes(2.0));
        b[82..84].copy_from_slice(&f16_bytes(0.5));
        let mut y = [0.0f32; QK_K];
        dequantize_q2_k(&b, &mut y);
        for (e, &v) in y.iter().enumerate() {
            let g = e / 16;
            let q = ((e % 128) / 32) as f32;
            let expect = 2.0 * g as f32 * q - 0.5 * (15 - g) as f32;
            assert_eq!(v, expect, "element {e}");
        }
    }

    #[test]
    fn q3_k_scales_and_high_bit() {
        // Pack arbitrary 6-bit values the way quantize_row_q3_K_ref does and
        // read them back.
        let want: [u8; 16] = [0, 63, 32, 31, 1, 62, 15, 16, 47, 48, 5, 58, 33, 30, 7, 56];
        let mut s = [0u8; 12];
        for (j, &l) in want.iter().enumerate() {
            if j < 8 {
                s[j] = l & 0xF;
            } else {
                s[j - 8] |= (l & 0xF) << 4;
            }
            s[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
        }
        let got = q3_k_scales(&s);
        for j in 0..16 {
            assert_eq!(got[j], want[j] as i8 - 32, "scale {j}");
        }
        // A block with every scale 33 (= +1), d = 1: values are q - 4 where the
        // hmask bit is clear, q where it is set.
        let mut b = [0u8; Q3_K_BYTES];
        b[0] = 0b0000_0001; // hmask[0] bit 0 -> value 0
        b[5] = 0b0010_0000; // hmask[5] bit 5 -> value 128 + 32 + 5
        for q in &mut b[32..96] {
            *q = 0b11_10_01_00;
        }
        for (j, &l) in [33u8; 16].iter().enumerate() {
            if j < 8 {
                b[96 + j] |= l & 0xF;
            } else {
                b[96 + j - 8] |= (l & 0xF) << 4;
            }
            b[96 + j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
        }
        b[108..110].copy_from_slice(&f16_bytes(1.0));
        let mut y = [0.0f32; QK_K];
        dequantize_q3_k(&b, &mut y);
        for (e, &v) in y.iter().enumerate() {
            let q = ((e % 128) / 32) as f32;
            let expect = if e == 0 || e == 128 + 32 + 5 {
                q
            } else {
                q - 4.0
            };
            assert_eq!(v, expect, "element {e}");
        }
    }

    #[test]
    fn q6_k_layout() {
        let mut b = [0u8; Q6_K_BYTES];
        for (i, s) in b[192..208].iter_mut().enumerate() {
            *s = (i as i8 - 8) as u8;
        }
        b[208..210].copy_from_slice(&f16_bytes(0.5));
        // Every quant 32 (value 0) except a few.
        for q in &mut b[128..192] {
            *q = 0b10_10_10_10;
        }
        b[40] = 0x0F | 0x30; // ql[40]: value 40 low = 15, value 104 high = 3
        b[128 + 32 + 8] = 0b11_10_10_10; // qh[40] (second half, l = 8): value 128+96+8 top bits 3
        let mut y = [0.0f32; QK_K];
        dequantize_q6_k(&b, &mut y);
        let scale = |e: usize| 0.5 * f32::from((e / 16) as i8 - 8);
        for (e, &v) in y.iter().enumerate() {
            let q = match e {
                40 => 15 | 32,
                104 => 3 | 32,
                232 => 48,
                _ => 32,
            };
            assert_eq!(
                v.to_bits(),
                (scale(e) * f32::from(q as i8 - 32)).to_bits(),
                "element {e}"
            );
        }
    }

    #[test]
    fn iq4_xs_hand_built() {
        let mut b = [0u8; IQ4_XS_BYTES];
        b[0..2].copy_from_slice(&f16_bytes(0.5));
        // Sub-block ib scale = 32 + ib - 4 (ib 0..8): low nibbles then top bits.
        let ls: [u8; 8] = [28, 29, 30, 31, 32, 33, 34, 63];
        let mut h = 0u16;
        for (ib, &l) in ls.iter().enumerate() {
            b[4 + ib / 2] |= (l & 0xF) << (4 * (ib % 2));
            h |= u16::from(l >> 4) << (2 * ib);
        }
        b[2..4].copy_from_slice(&h.to_le_bytes());
        for (i, q) in b[8..].iter_mut().enumerate() {
            *q = (i as u8 % 16) | ((15 - i as u8 % 16) << 4);
        }
        let mut y = [0.0f32; QK_K];
        dequantize_iq4_xs(&b, &mut y);
        for (e, &v) in y.iter().enumerate() {
            let (ib, j) = (e / 32, e % 32);
            let idx = if j < 16 { j } else { 15 - (j - 16) };
            let expect = 0.5 * (f32::from(ls[ib]) - 32.0) * KVALUES_IQ4NL[idx];
            assert_eq!(v.to_bits(), expect.to_bits(), "element {e}");
        }
    }
}
