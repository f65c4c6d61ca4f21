//! The 32-value block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, IQ4_NL, MXFP4,
//! and quantization to Q8_0 and Q4_0.
//!
//! Callers (lib.rs) have checked that `blocks` is whole blocks and `out`
//! holds exactly their values.
//!
//! Every value is computed with the same f32 operations in the same order as
//! gguf-py's `gguf.quants` (numpy) and ggml's reference C: `d * q` for the
//! symmetric types, `(d * q) + m` (two roundings, never a fused multiply-add)
//! for the types with a min. The quantizers follow gguf-py where it and the
//! C differ only on degenerate input (see [`quantize_q4_0`]).

use half::f16;

/// Values per block.
const QK: usize = 32;

/// ggml's `kvalues_iq4nl`, as f32 (exact).
const KVALUES_IQ4NL: [f32; 16] = [
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0,
    89.0, 113.0,
];

/// ggml's `kvalues_mxfp4`: the e2m1 values doubled, as f32 (exact).
const KVALUES_MXFP4: [f32; 16] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 0.0, -1.0, -2.0, -3.0, -4.0, -6.0, -8.0, -12.0,
];

/// The little-endian f16 `[lo, hi]`, widened to f32 (exact).
#[inline(always)]
fn f16_le(lo: u8, hi: u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// ggml's `ggml_e8m0_to_fp32_half`: 2^(e-128), the two smallest as f32 subnormals.
#[inline(always)]
fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// Run `f` on each block of `BB` bytes and its 32 output values.
#[inline(always)]
fn each_block<const BB: usize>(
    blocks: &[u8],
    out: &mut [f32],
    mut f: impl FnMut(&[u8; BB], &mut [f32; QK]),
) {
    for (b, o) in blocks.chunks_exact(BB).zip(out.chunks_exact_mut(QK)) {
        let b: &[u8; BB] = b.try_into().expect("chunks_exact yields BB bytes");
        let o: &mut [f32; QK] = o.try_into().expect("chunks_exact_mut yields 32 values");
        f(b, o);
    }
}

/// Nibbles of `qs` into `o`: low nibbles to `o[0..16]`, high to `o[16..32]`,
/// each through `map`.
#[inline(always)]
fn nibbles(qs: &[u8], o: &mut [f32; QK], map: impl Fn(u8) -> f32) {
    let (lo, hi) = o.split_at_mut(QK / 2);
    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
        *l = map(q & 0x0f);
        *h = map(q >> 4);
    }
}

/// Q4_0: `{f16 d, u8 qs[16]}`; `x = d * (nibble - 8)`.
#[inline(always)]
pub(crate) fn dequantize_q4_0(blocks: &[u8], out: &mut [f32]) {
    each_block::<18>(blocks, out, |b, o| {
        let d = f16_le(b[0], b[1]);
        nibbles(&b[2..], o, |q| d * (i32::from(q) - 8) as f32);
    });
}

/// Q4_1: `{f16 d, f16 m, u8 qs[16]}`; `x = d * nibble + m`.
#[inline(always)]
pub(crate) fn dequantize_q4_1(blocks: &[u8], out: &mut [f32]) {
    each_block::<20>(blocks, out, |b, o| {
        let d = f16_le(b[0], b[1]);
        let m = f16_le(b[2], b[3]);
        nibbles(&b[4..], o, |q| d * f32::from(q) + m);
    });
}

/// The 5-bit values of a Q5 block: nibble `j` of `qs` plus bit `j` of `qh`
/// (elements 0..16 from the low nibbles, 16..32 from the high ones), through `map`.
#[inline(always)]
fn five_bits(qh: u32, qs: &[u8], o: &mut [f32; QK], map: impl Fn(u8) -> f32) {
    let (lo, hi) = o.split_at_mut(QK / 2);
    for (j, ((l, h), &q)) in lo.iter_mut().zip(hi.iter_mut()).zip(qs).enumerate() {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        *l = map((q & 0x0f) | (h0 << 4));
        *h = map((q >> 4) | (h1 << 4));
    }
}

/// Q5_0: `{f16 d, u8 qh[4], u8 qs[16]}`; `x = d * (q5 - 16)`.
#[inline(always)]
pub(crate) fn dequantize_q5_0(blocks: &[u8], out: &mut [f32]) {
    each_block::<22>(blocks, out, |b, o| {
        let d = f16_le(b[0], b[1]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        five_bits(qh, &b[6..], o, |q| d * (i32::from(q) - 16) as f32);
    });
}

/// Q5_1: `{f16 d, f16 m, u8 qh[4], u8 qs[16]}`; `x = d * q5 + m`.
#[inline(always)]
pub(crate) fn dequantize_q5_1(blocks: &[u8], out: &mut [f32]) {
    each_block::<24>(blocks, out, |b, o| {
        let d = f16_le(b[0], b[1]);
        let m = f16_le(b[2], b[3]);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        five_bits(qh, &b[8..], o, |q| d * f32::from(q) + m);
    });
}

/// `o[j] = d * qs[j] as i8`.
#[inline(always)]
fn scaled_i8(d: f32, qs: &[u8], o: &mut [f32; QK]) {
    for (o, &q) in o.iter_mut().zip(qs) {
        *o = d * f32::from(q as i8);
    }
}

/// Q8_0: `{f16 d, i8 qs[32]}`; `x = d * q`.
#[inline(always)]
pub(crate) fn dequantize_q8_0(blocks: &[u8], out: &mut [f32]) {
    each_block::<34>(blocks, out, |b, o| {
        scaled_i8(f16_le(b[0], b[1]), &b[2..], o)
    });
}

/// Q8_1: `{f16 d, f16 s, i8 qs[32]}` (36 bytes); `x = d * q`. `s` (d times
/// the sum of the quants, kept for dot products) plays no part.
#[inline(always)]
pub(crate) fn dequantize_q8_1(blocks: &[u8], out: &mut [f32]) {
    each_block::<36>(blocks, out, |b, o| {
        scaled_i8(f16_le(b[0], b[1]), &b[4..], o)
    });
}

/// IQ4_NL: `{f16 d, u8 qs[16]}`; `x = d * kvalues_iq4nl[nibble]`.
#[inline(always)]
pub(crate) fn dequantize_iq4_nl(blocks: &[u8], out: &mut [f32]) {
    each_block::<18>(blocks, out, |b, o| {
        let d = f16_le(b[0], b[1]);
        nibbles(&b[2..], o, |q| d * KVALUES_IQ4NL[usize::from(q & 0x0f)]);
    });
}

/// MXFP4: `{u8 e, u8 qs[16]}`; `x = e8m0_half(e) * kvalues_mxfp4[nibble]`.
#[inline(always)]
pub(crate) fn dequantize_mxfp4(blocks: &[u8], out: &mut [f32]) {
    each_block::<17>(blocks, out, |b, o| {
        let d = e8m0_to_f32_half(b[0]);
        nibbles(&b[1..], o, |q| d * KVALUES_MXFP4[usize::from(q & 0x0f)]);
    });
}

/// A float-to-8-bit cast as numpy's `astype(np.int8 / np.uint8)` performs it
/// on x86-64 (and ggml's C `(int8_t)` cast compiles to): truncate to i32,
/// where NaN and anything outside i32 become `i32::MIN`, then keep the low
/// byte. Values in range are simply truncated.
#[inline(always)]
fn cast_low_byte(v: f32) -> u8 {
    if v.abs() < 2_147_483_648.0 {
        v as i32 as u8
    } else {
        0
    }
}

/// Each block of 32 values and its `BB` output bytes.
#[inline(always)]
fn each_value_block<const BB: usize>(
    values: &[f32],
    out: &mut [u8],
    mut f: impl FnMut(&[f32; QK], &mut [u8; BB]),
) {
    for (v, o) in values.chunks_exact(QK).zip(out.chunks_exact_mut(BB)) {
        let v: &[f32; QK] = v.try_into().expect("chunks_exact yields 32 values");
        let o: &mut [u8; BB] = o.try_into().expect("chunks_exact_mut yields BB bytes");
        f(v, o);
    }
}

/// Q8_0 as gguf-py's `Q8_0.quantize_blocks` (ggml's `quantize_row_q8_0_ref`):
/// `d = max|x| / 127` in f32, `id = 1/d` (0 when `d == 0`), `q = roundf(x * id)`
/// (half away from zero, gguf-py's `np_roundf`), and `d` stored as the
/// nearest f16 (ties to even). The f32 `id`, not the rounded f16, scales.
///
/// A NaN anywhere in a block makes its `d` NaN and its quants 0, as numpy's
/// NaN-propagating `max` does (ggml's C `MAX` would skip it).
pub(crate) fn quantize_q8_0(values: &[f32], out: &mut [u8]) {
    each_value_block::<34>(values, out, |x, o| {
        let mut amax = 0.0f32;
        for &v in x {
            let a = v.abs();
            if a.is_nan() {
                amax = a;
                break;
            }
            if a > amax {
                amax = a;
            }
        }
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        o[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for (q, &v) in o[2..].iter_mut().zip(x) {
            *q = cast_low_byte((v * id).round());
        }
    });
}

/// Q4_0 as gguf-py's `Q4_0.quantize_blocks` (ggml's `quantize_row_q4_0_ref`):
/// `max` is the signed value of the first element of greatest magnitude,
/// `d = max / -8` and `id = 1/d` (0 when `d == 0`) in f32,
/// `q = min(15, trunc(x * id + 8.5))`, `d` stored as the nearest f16.
/// Element `j` goes to the low nibble of byte `j`, element `j + 16` to its
/// high nibble.
///
/// Where gguf-py and the C differ, this follows gguf-py: a block whose
/// largest magnitude is zero takes `max` from its first element (so a block
/// of `-0.0`s stores `d = +0`, where the C, starting from `max = 0.0f`,
/// stores `-0`); a NaN is the maximum (numpy's `argmax`) where the C skips it.
pub(crate) fn quantize_q4_0(values: &[f32], out: &mut [u8]) {
    each_value_block::<18>(values, out, |x, o| {
        let mut max = x[0];
        let mut amax = max.abs();
        if !amax.is_nan() {
            for &v in &x[1..] {
                let a = v.abs();
                if a.is_nan() || a > amax {
                    max = v;
                    amax = a;
                    if a.is_nan() {
                        break;
                    }
                }
            }
        }
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        o[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let q = |v: f32| cast_low_byte((v * id + 8.5).trunc()).min(15);
        let (lo, hi) = x.split_at(QK / 2);
        for ((b, &l), &h) in o[2..].iter_mut().zip(lo).zip(hi) {
            *b = q(l) | (q(h) << 4);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deq(f: fn(&[u8], &mut [f32]), block: &[u8]) -> Vec<f32> {
        let mut out = vec![f32::NAN; QK];
        f(block, &mut out);
        out
    }

    /// Bytes per block: d (f16 0x3800 = 0.5) then 32 quants.
    #[test]
    fn q8_0_block_with_half_scale() {
        let qs: Vec<i8> = (0..32)
            .map(|j| [-128, -1, 0, 1, 127, 3, -7, 64][j % 8])
            .collect();
        let mut block = vec![0x00, 0x38];
        block.extend(qs.iter().map(|&q| q as u8));
        let got = deq(dequantize_q8_0, &block);
        let want: Vec<f32> = (0..32)
            .map(|j| [-64.0, -0.5, 0.0, 0.5, 63.5, 1.5, -3.5, 32.0][j % 8])
            .collect();
        assert_eq!(got, want);
        // Two blocks: the second with d = -2 (0xc000).
        let mut two = block.clone();
        two.extend([0x00, 0xc0]);
        two.extend(qs.iter().map(|&q| q as u8));
        let mut out = vec![0.0; 64];
        dequantize_q8_0(&two, &mut out);
        assert_eq!(out[..32], want[..]);
        assert_eq!(out[32..36], [256.0, 2.0, -0.0, -2.0]);
    }

    /// ggml's `block_q8_1` is `{f16 d, f16 s, int8 qs[32]}`; the value is `d * q`
    /// and `s` is ignored.
    #[test]
    fn q8_1_is_d_times_q_and_ignores_s() {
        let mut block = vec![0x00, 0x34, 0x00, 0x7c]; // d = 0.25, s = +inf
        block.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let got = deq(dequantize_q8_1, &block);
        let want: Vec<f32> = (0..32).map(|j| (j as f32 - 16.0) * 0.25).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn q4_0_nibble_order() {
        // d = 2.0 (0x4000); byte j = lo nibble j, hi nibble 15 - j.
        let mut block = vec![0x00, 0x40];
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = deq(dequantize_q4_0, &block);
        for j in 0..16 {
            assert_eq!(got[j], (j as f32 - 8.0) * 2.0, "element {j}");
            assert_eq!(got[j + 16], (7.0 - j as f32) * 2.0, "element {}", j + 16);
        }
    }

    #[test]
    fn q4_1_is_d_q_plus_m() {
        // d = 0.5, m = -1.0 (0xbc00).
        let mut block = vec![0x00, 0x38, 0x00, 0xbc];
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = deq(dequantize_q4_1, &block);
        for j in 0..16 {
            assert_eq!(got[j], j as f32 * 0.5 - 1.0);
            assert_eq!(got[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    #[test]
    fn q5_high_bits() {
        // qh bit j set for odd j: element j gains 16 when j is odd.
        let qh: u32 = 0xaaaa_aaaa;
        let mut b0 = vec![0x00, 0x3c]; // d = 1
        b0.extend(qh.to_le_bytes());
        b0.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        // Element j's nibble, plus 16 when j is odd.
        let q5 = |j: usize| {
            (if j < 16 { j } else { 31 - j }) as f32 + if j % 2 == 1 { 16.0 } else { 0.0 }
        };
        let got = deq(dequantize_q5_0, &b0);
        for (j, &v) in got.iter().enumerate() {
            assert_eq!(v, q5(j) - 16.0, "q5_0 element {j}");
        }
        let mut b1 = vec![0x00, 0x40, 0x00, 0x3c]; // d = 2, m = 1
        b1.extend(qh.to_le_bytes());
        b1.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = deq(dequantize_q5_1, &b1);
        for (j, &v) in got.iter().enumerate() {
            assert_eq!(v, q5(j) * 2.0 + 1.0, "q5_1 element {j}");
        }
    }

    #[test]
    fn iq4_nl_uses_the_table() {
        let mut block = vec![0x00, 0xc0]; // d = -2
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = deq(dequantize_iq4_nl, &block);
        assert_eq!(got[0], 254.0);
        assert_eq!(got[15], -226.0);
        assert_eq!(got[16], -226.0);
        assert_eq!(got[31], 254.0);
        assert_eq!(got[8], -2.0);
    }

    #[test]
    fn mxfp4_scales() {
        assert_eq!(e8m0_to_f32_half(128), 1.0);
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(2), 2f32.powi(-126));
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-64) * 2f32.powi(-63));
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-64) * 2f32.powi(-64));
        assert_eq!(e8m0_to_f32_half(255), 2f32.powi(127));
        let mut block = vec![128u8];
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = deq(dequantize_mxfp4, &block);
        assert_eq!(got[..16], KVALUES_MXFP4);
        assert_eq!(got[16], -12.0);
        assert_eq!(got[31], 0.0);
        block[0] = 255; // 2^127 * 12 overflows
        let got = deq(dequantize_mxfp4, &block);
        assert_eq!(got[7], f32::INFINITY);
        assert_eq!(got[1], 2f32.powi(127));
        block[0] = 0; // 2^-128 * 3 is a subnormal, exact
        let got = deq(dequantize_mxfp4, &block);
        assert_eq!(got[3], 3.0 * 2f32.powi(-64) * 2f32.powi(-64));
    }

    /// The ramp -16..16: max = -16 so d = 2, id = 0.5 and q = trunc(x/2 + 8.5),
    /// capped at 15.
    #[test]
    fn q4_0_quantize_ramp() {
        let x: Vec<f32> = (0..32).map(|j| j as f32 - 16.0).collect();
        let mut out = [0u8; 18];
        quantize_q4_0(&x, &mut out);
        assert_eq!(
            out,
            [
                0x00, 0x40, 0x80, 0x91, 0x91, 0xa2, 0xa2, 0xb3, 0xb3, 0xc4, 0xc4, 0xd5, 0xd5, 0xe6,
                0xe6, 0xf7, 0xf7, 0xf8
            ]
        );
        let back = deq(dequantize_q4_0, &out);
        assert_eq!(back[0], -16.0);
        assert_eq!(back[31], 14.0);
    }

    /// Zero blocks: `d = max / -8` with max the first element.
    #[test]
    fn q4_0_quantize_zeros() {
        let mut out = [0u8; 18];
        quantize_q4_0(&[0.0; 32], &mut out);
        assert_eq!(out[..2], [0x00, 0x80], "+0 / -8 = -0");
        assert!(out[2..].iter().all(|&b| b == 0x88));
        quantize_q4_0(&[-0.0; 32], &mut out);
        assert_eq!(out[..2], [0x00, 0x00], "-0 / -8 = +0 (gguf-py)");
    }

    /// amax = 127 gives d = 1 exactly; halves round away from zero.
    #[test]
    fn q8_0_quantize_rounds_half_away() {
        let mut x = [0.0f32; 32];
        x[..8].copy_from_slice(&[127.0, -2.5, 2.5, 0.5, -0.5, 1.5, 0.49999997, -126.5]);
        let mut out = [0u8; 34];
        quantize_q8_0(&x, &mut out);
        assert_eq!(out[..2], [0x00, 0x3c]);
        let q: Vec<i8> = out[2..10].iter().map(|&b| b as i8).collect();
        assert_eq!(q, [127, -3, 3, 1, -1, 2, 0, -127]);
        assert!(out[10..].iter().all(|&b| b == 0));
        quantize_q8_0(&[0.0; 32], &mut out);
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn numpy_style_casts() {
        assert_eq!(cast_low_byte(3.9), 3);
        assert_eq!(cast_low_byte(-1.0), 0xff);
        assert_eq!(cast_low_byte(300.0), 44);
        assert_eq!(cast_low_byte(f32::NAN), 0);
        assert_eq!(cast_low_byte(f32::INFINITY), 0);
        assert_eq!(cast_low_byte(-3e9), 0);
    }
}
