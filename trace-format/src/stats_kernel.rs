//! The inner loop of [`StatsAccumulator::push_f32s`](crate::stats::StatsAccumulator::push_f32s):
//! one pass over a chunk of f32 values in independent f64 lanes, compiled
//! twice, for the target's baseline and for AVX2 (picked at run time).
//!
//! The one file of trace-format with `unsafe` code: the call of the AVX2
//! copy after the CPU said it has AVX2. Both copies do the same IEEE
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

// lanes by index: one statement per lane array, the form that vectorizes
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn chunk_sums_portable(chunk: &[f32], k: f64) -> ChunkSums {
    let first = chunk[0];
    let mut s = ChunkSums {
        s1: [0.0; LANES],
        s2: [0.0; LANES],
        lo: [first; LANES],
        hi: [first; LANES],
        special: false,
    };
    let lanes = chunk.chunks_exact(LANES);
    let tail = lanes.remainder();
    for c in lanes {
        for i in 0..LANES {
            let v = c[i];
            let d = f64::from(v) - k;
            s.s1[i] += d;
            s.s2[i] += d * d;
            s.lo[i] = if v < s.lo[i] { v } else { s.lo[i] };
            s.hi[i] = if v > s.hi[i] { v } else { s.hi[i] };
        }
    }
    for (i, &v) in tail.iter().enumerate() {
        let d = f64::from(v) - k;
        s.s1[i] += d;
        s.s2[i] += d * d;
        s.lo[i] = if v < s.lo[i] { v } else { s.lo[i] };
        s.hi[i] = if v > s.hi[i] { v } else { s.hi[i] };
    }
    // a NaN or an infinity makes its lane's sums NaN or infinite (an f32
    // squared cannot overflow an f64): no test per value
    s.special = !s.s1.iter().chain(&s.s2).all(|x| x.is_finite());
    s
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
}
