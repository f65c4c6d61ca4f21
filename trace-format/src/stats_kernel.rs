//! The inner loop of [`StatsAccumulator::push_f32s`](crate::stats::StatsAccumulator::push_f32s):
//! one pass over a chunk of f32 values in independent f64 lanes, portable
//! and with AVX2 intrinsics (picked at run time); and the same over f16
//! values, converted in the loop (with F16C where the CPU has it).
//!
//! The one file of trace-format with `unsafe` code: the calls of the AVX2
//! copies after the CPU said it has AVX2 (and F16C), their loads, stores
//! and register operations. Both copies do the same IEEE operations in the
//! same order (no fused multiply-add: Rust never contracts), so a trace's
//! statistics do not depend on the CPU that recorded it (tested bit for
//! bit, signed zeros included).

// the AVX2 code: see the `unsafe` blocks and their SAFETY comments
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

/// [`chunk_sums_portable`] with AVX2, its lanes kept in registers: the
/// f64 sums as four 4-wide vectors, the extremes as two 8-wide ones. The
/// portable loop compiled for AVX2 spilled them (16 lanes of sums and
/// extremes need 17 registers in the shape the compiler picks: about 4.7
/// instructions a value, against about 2 here).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn chunk_sums_avx2(chunk: &[f32], k: f64) -> ChunkSums {
    use std::arch::x86_64::_mm256_loadu_ps;
    let mut s = ChunkSums::new(chunk[0]);
    let lanes = chunk.chunks_exact(LANES);
    let tail = lanes.remainder();
    // SAFETY: the CPU has AVX2 (this function's requirement, which the
    // calls below share); each `c` holds 16 f32, two unaligned 256-bit
    // loads of 8.
    unsafe {
        let mut r = Registers::load(&s, k);
        for c in lanes {
            r.add(
                _mm256_loadu_ps(c.as_ptr()),
                _mm256_loadu_ps(c[8..].as_ptr()),
            );
        }
        r.store(&mut s);
    }
    for (i, &v) in tail.iter().enumerate() {
        s.add(i, v, k);
    }
    s.finish()
}

/// A [`ChunkSums`] in AVX2 registers: lane `i`'s sums are element `i % 4`
/// of `s1[i / 4]` and `s2[i / 4]`, its extremes element `i % 8` of
/// `lo[i / 8]` and `hi[i / 8]`.
#[cfg(target_arch = "x86_64")]
struct Registers {
    s1: [std::arch::x86_64::__m256d; 4],
    s2: [std::arch::x86_64::__m256d; 4],
    lo: [std::arch::x86_64::__m256; 2],
    hi: [std::arch::x86_64::__m256; 2],
    k: std::arch::x86_64::__m256d,
}

#[cfg(target_arch = "x86_64")]
impl Registers {
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load(s: &ChunkSums, k: f64) -> Registers {
        use std::arch::x86_64::{_mm256_loadu_pd, _mm256_loadu_ps, _mm256_set1_pd};
        // SAFETY: AVX2 (the caller's promise); each load reads 4 f64 or
        // 8 f32 inside the 16 of its array.
        unsafe {
            let pd = |a: &[f64; LANES], i: usize| _mm256_loadu_pd(a[i..].as_ptr());
            let ps = |a: &[f32; LANES], i: usize| _mm256_loadu_ps(a[i..].as_ptr());
            Registers {
                s1: [pd(&s.s1, 0), pd(&s.s1, 4), pd(&s.s1, 8), pd(&s.s1, 12)],
                s2: [pd(&s.s2, 0), pd(&s.s2, 4), pd(&s.s2, 8), pd(&s.s2, 12)],
                lo: [ps(&s.lo, 0), ps(&s.lo, 8)],
                hi: [ps(&s.hi, 0), ps(&s.hi, 8)],
                k: _mm256_set1_pd(k),
            }
        }
    }

    /// Values 0–7 (`a`) and 8–15 (`b`) of a step of 16: the same IEEE
    /// operations, per lane, as [`ChunkSums::add`]. `min_ps(v, lo)` is
    /// `v < lo ? v : lo` (a NaN keeps `lo`), `max_ps` likewise.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn add(&mut self, a: std::arch::x86_64::__m256, b: std::arch::x86_64::__m256) {
        use std::arch::x86_64::{
            _mm256_add_pd, _mm256_castps256_ps128, _mm256_cvtps_pd, _mm256_extractf128_ps,
            _mm256_max_ps, _mm256_min_ps, _mm256_mul_pd, _mm256_sub_pd,
        };
        // SAFETY: AVX2 (the caller's promise); register operations only
        // (an `unsafe` block Rust needs before 1.87, this crate's 1.85 included)
        #[allow(unused_unsafe)]
        unsafe {
            self.lo[0] = _mm256_min_ps(a, self.lo[0]);
            self.hi[0] = _mm256_max_ps(a, self.hi[0]);
            self.lo[1] = _mm256_min_ps(b, self.lo[1]);
            self.hi[1] = _mm256_max_ps(b, self.hi[1]);
            let quads = [
                _mm256_castps256_ps128(a),
                _mm256_extractf128_ps::<1>(a),
                _mm256_castps256_ps128(b),
                _mm256_extractf128_ps::<1>(b),
            ];
            for (j, q) in quads.into_iter().enumerate() {
                let d = _mm256_sub_pd(_mm256_cvtps_pd(q), self.k);
                self.s1[j] = _mm256_add_pd(self.s1[j], d);
                self.s2[j] = _mm256_add_pd(self.s2[j], _mm256_mul_pd(d, d));
            }
        }
    }

    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store(&self, s: &mut ChunkSums) {
        use std::arch::x86_64::{_mm256_storeu_pd, _mm256_storeu_ps};
        // SAFETY: AVX2 (the caller's promise); each store writes 4 f64 or
        // 8 f32 inside the 16 of its array.
        unsafe {
            for (j, i) in [0, 4, 8, 12].into_iter().enumerate() {
                _mm256_storeu_pd(s.s1[i..].as_mut_ptr(), self.s1[j]);
                _mm256_storeu_pd(s.s2[i..].as_mut_ptr(), self.s2[j]);
            }
            for (j, i) in [0, 8].into_iter().enumerate() {
                _mm256_storeu_ps(s.lo[i..].as_mut_ptr(), self.lo[j]);
                _mm256_storeu_ps(s.hi[i..].as_mut_ptr(), self.hi[j]);
            }
        }
    }
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
fn chunk_sums_f16_avx2(bits: &[u16], k: f64) -> ChunkSums {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm_loadu_si128};
    let first = f16_to_f32(bits[0]);
    let mut s = ChunkSums::new(first);
    let lanes = bits.chunks_exact(LANES);
    let tail = lanes.remainder();
    // SAFETY: the CPU has AVX2 and F16C (this function's requirements,
    // which the calls below share); each `c` holds 16 u16, two unaligned
    // 128-bit loads of 8.
    unsafe {
        let mut r = Registers::load(&s, k);
        for c in lanes {
            let a = _mm256_cvtph_ps(_mm_loadu_si128(c.as_ptr().cast::<__m128i>()));
            let b = _mm256_cvtph_ps(_mm_loadu_si128(c[8..].as_ptr().cast::<__m128i>()));
            r.add(a, b);
        }
        r.store(&mut s);
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

    /// Bit for bit, signed zeros in the extremes included, over lengths
    /// around the 16-value step and values of every sign and size.
    #[test]
    fn both_copies_agree_on_every_bit() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut vals: Vec<f32> = (0..517)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let e = (x >> 40) % 60;
                let m = (x >> 8) as u32 as f32 / u32::MAX as f32;
                (m - 0.5) * 2f32.powi(e as i32 - 30)
            })
            .collect();
        for i in (0..vals.len()).step_by(37) {
            vals[i] = if i % 2 == 0 { -0.0 } else { 0.0 };
        }
        let bits = |a: &[f64]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let bits32 = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for n in [1, 2, 15, 16, 17, 31, 32, 33, 100, 517] {
            for start in [0, 5, 37] {
                let v = &vals[start..(start + n).min(vals.len())];
                for k in [0.0, -1.5e-3, 7.0] {
                    let (fast, slow) = (chunk_sums(v, k), chunk_sums_portable(v, k));
                    assert_eq!(bits(&fast.s1), bits(&slow.s1), "{n} {start} {k}");
                    assert_eq!(bits(&fast.s2), bits(&slow.s2), "{n} {start} {k}");
                    assert_eq!(bits32(&fast.lo), bits32(&slow.lo), "{n} {start} {k}");
                    assert_eq!(bits32(&fast.hi), bits32(&slow.hi), "{n} {start} {k}");
                    let h: Vec<u16> = v
                        .iter()
                        .map(|&x| half::f16::from_f32(x).to_bits())
                        .collect();
                    let hv: Vec<f32> = h.iter().map(|&b| f16_to_f32(b)).collect();
                    let (fast, slow) = (chunk_sums_f16(&h, k), chunk_sums_portable(&hv, k));
                    assert_eq!(bits(&fast.s1), bits(&slow.s1), "f16 {n} {start} {k}");
                    assert_eq!(bits(&fast.s2), bits(&slow.s2), "f16 {n} {start} {k}");
                    assert_eq!(bits32(&fast.lo), bits32(&slow.lo), "f16 {n} {start} {k}");
                    assert_eq!(bits32(&fast.hi), bits32(&slow.hi), "f16 {n} {start} {k}");
                }
            }
        }
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
