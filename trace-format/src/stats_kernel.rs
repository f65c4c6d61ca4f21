//! The inner loop of [`StatsAccumulator::push_f32s`](crate::stats::StatsAccumulator::push_f32s):
//! one pass over a chunk of f32 values in independent f64 lanes, compiled
//! twice, for the target's baseline and for AVX2 (picked at run time); and
//! the same over f16 values, converted in the loop (with F16C where the CPU
//! has it).
//!
//! The one file of trace-format with `unsafe` code: the calls of the AVX2
//! copies after the CPU said it has AVX2 (and F16C), and F16C's loads. Both copies do the same IEEE
//! operations in the same order (no fused multiply-add: Rust never
//! contracts), so a trace's statistics do not depend on the CPU that
//! recorded it.

// the AVX2 call: see the `unsafe` block and its SAFETY comment
#![allow(unsafe_code)]

/// Independent lanes: enough for the adds' latency on a 4-wide f64 unit.
pub(crate) const LANES: usize = 16;

/// The sums of one chunk: per lane, the values' deviations from `k` and
/// their squares, the smallest and largest value; and whether any value
/// was a NaN or an infinity (then the sums mean nothing).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkSums {
    pub s1: [f64; LANES],
    pub s2: [f64; LANES],
    pub lo: [f32; LANES],
    pub hi: [f32; LANES],
    pub special: bool,
}

impl ChunkSums {
    /// No values yet; `first` seeds the lanes' extremes.
    #[inline(always)]
    fn new(first: f32) -> ChunkSums {
        ChunkSums {
            s1: [0.0; LANES],
            s2: [0.0; LANES],
            lo: [first; LANES],
            hi: [first; LANES],
            special: false,
        }
    }

    /// Value `v` into lane `i` (`k`: the shift).
    #[inline(always)]
    fn add(&mut self, i: usize, v: f32, k: f64) {
        let d = f64::from(v) - k;
        self.s1[i] += d;
        self.s2[i] += d * d;
        self.lo[i] = if v < self.lo[i] { v } else { self.lo[i] };
        self.hi[i] = if v > self.hi[i] { v } else { self.hi[i] };
    }

    /// A NaN or an infinity makes its lane's sums NaN or infinite (an f32
    /// squared cannot overflow an f64): no test per value.
    #[inline(always)]
    fn finish(mut self) -> ChunkSums {
        self.special = !self.s1.iter().chain(&self.s2).all(|x| x.is_finite());
        self
    }
}

/// The sums of `chunk` (not empty) shifted by `k`.
pub(crate) fn chunk_sums(chunk: &[f32], k: f64) -> ChunkSums {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked on the line above), the only
        // requirement of a `#[target_feature(enable = "avx2")]` function.
        return unsafe { chunk_sums_avx2(chunk, k) };
    }
    chunk_sums_portable(chunk, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn chunk_sums_avx2(chunk: &[f32], k: f64) -> ChunkSums {
    chunk_sums_portable(chunk, k)
}

/// [`chunk_sums`] of f16 values (their bits; not empty), each converted to
/// f32 exactly: the same sums as [`chunk_sums`] of the converted values,
/// without a pass that writes them out (with F16C, eight at a time in the
/// loop itself).
pub(crate) fn chunk_sums_f16(bits: &[u16], k: f64) -> ChunkSums {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has AVX2 and F16C (checked on the line above),
        // the only requirement of this `#[target_feature]` function.
        return unsafe { chunk_sums_f16_avx2(bits, k) };
    }
    chunk_sums_f16_portable(bits, k)
}

/// [`chunk_sums_f16`] without F16C: the values converted into a buffer
/// (on the stack for a chunk of [`CHUNK`](crate::stats::CHUNK) values or
/// less), then [`chunk_sums`]' loop.
fn chunk_sums_f16_portable(bits: &[u16], k: f64) -> ChunkSums {
    let mut stack = [0f32; crate::stats::CHUNK];
    let mut heap = Vec::new();
    let values = if bits.len() <= stack.len() {
        &mut stack[..bits.len()]
    } else {
        heap.resize(bits.len(), 0f32);
        &mut heap[..]
    };
    for (v, &b) in values.iter_mut().zip(bits) {
        *v = f16_to_f32(b);
    }
    chunk_sums_portable(values, k)
}

fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[allow(clippy::needless_range_loop)]
fn chunk_sums_f16_avx2(bits: &[u16], k: f64) -> ChunkSums {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let first = f16_to_f32(bits[0]);
    let mut s = ChunkSums::new(first);
    let lanes = bits.chunks_exact(LANES);
    let tail = lanes.remainder();
    for c16 in lanes {
        let mut c = [0f32; LANES];
        let (a, b) = c16.split_at(8);
        // SAFETY: `a` and `b` hold 8 u16 (16 bytes) each, what an unaligned
        // 128-bit load reads; `c` holds 16 f32, two unaligned 256-bit
        // stores of 8.
        unsafe {
            let a = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().cast::<__m128i>()));
            let b = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().cast::<__m128i>()));
            _mm256_storeu_ps(c.as_mut_ptr(), a);
            _mm256_storeu_ps(c[8..].as_mut_ptr(), b);
        }
        for i in 0..LANES {
            let v = c[i];
            s.add(i, v, k);
        }
    }
    for (i, &b) in tail.iter().enumerate() {
        let v = f16_to_f32(b);
        s.add(i, v, k);
    }
    s.finish()
}

// lanes by index: one statement per lane array, the form that vectorizes
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn chunk_sums_portable(chunk: &[f32], k: f64) -> ChunkSums {
    let first = chunk[0];
    let mut s = ChunkSums::new(first);
    let lanes = chunk.chunks_exact(LANES);
    let tail = lanes.remainder();
    for c in lanes {
        for i in 0..LANES {
            let v = c[i];
            s.add(i, v, k);
        }
    }
    for (i, &v) in tail.iter().enumerate() {
        s.add(i, v, k);
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_copies_agree_bit_for_bit() {
        let vals: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1013) as f32 / 7.0 - 60.0)
            .collect();
        let fast = chunk_sums(&vals, 3.0);
        let slow = chunk_sums_portable(&vals, 3.0);
        assert_eq!(fast.s1, slow.s1);
        assert_eq!(fast.s2, slow.s2);
        assert_eq!((fast.lo, fast.hi), (slow.lo, slow.hi));
        assert!(!fast.special);
        let mut odd = vals.clone();
        odd[999] = f32::NAN;
        assert!(chunk_sums(&odd, 0.0).special);
        odd[999] = f32::NEG_INFINITY;
        assert!(chunk_sums(&odd[990..], 0.0).special);
    }

    /// The f16 pass gives the f32 pass's sums of the converted values, bit
    /// for bit (F16C or not), over whole lanes and a tail, and sees NaNs.
    #[test]
    fn f16_sums_are_the_converted_values_sums() {
        let bits: Vec<u16> = (0..1000u32)
            .map(|i| half::f16::from_f32(((i * 7919) % 1013) as f32 / 7.0 - 60.0).to_bits())
            .collect();
        let vals: Vec<f32> = bits.iter().map(|&b| f16_to_f32(b)).collect();
        for n in [1, 15, 16, 17, 1000] {
            let want = chunk_sums_portable(&vals[..n], 3.0);
            for got in [
                chunk_sums_f16(&bits[..n], 3.0),
                chunk_sums_f16_portable(&bits[..n], 3.0),
            ] {
                assert_eq!((got.s1, got.s2), (want.s1, want.s2), "{n}");
                assert_eq!((got.lo, got.hi), (want.lo, want.hi), "{n}");
                assert!(!got.special);
            }
        }
        let mut odd = bits.clone();
        odd[500] = half::f16::NAN.to_bits();
        assert!(chunk_sums_f16(&odd, 0.0).special);
    }
}
