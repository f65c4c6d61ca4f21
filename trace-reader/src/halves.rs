//! f16 → f32 of many values: x86's F16C instruction (8 values per instruction)
//! where the CPU has it, detected at run time, else an exact branch-free
//! conversion the compiler vectorizes. Both give the same bits for every
//! one of the 65,536 f16 values (tested), and the same as the `half` crate.
//!
//! Kept instead of `half`'s own slice conversion (`convert_to_f32_slice`,
//! which also picks F16C at run time) because that measured about 3× slower
//! here: 12.7–14.2 µs against 4.5 µs for 2^15 values (the bench row
//! "contiguous f16, one thread", bench/README.md; `half` 2.7.1 calls F16C
//! through a pointer per 8 values, and needs its output zeroed first).
//!
//! One of the few places of the reader with `unsafe` code (with
//! `source.rs`, the memory map, and `values.rs`, the length of a vector its
//! rows were converted into): the F16C loop below.

// the F16C loop: see the `unsafe` blocks and their SAFETY comments
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

/// f16 → f32 of slices, with the CPU's vector conversion where it has one
/// (detected once, when made).
#[derive(Clone, Copy, Debug)]
pub(crate) struct F16ToF32 {
    /// The CPU has F16C and AVX: only ever true when detected (`new`).
    f16c: bool,
}

impl F16ToF32 {
    pub(crate) fn new() -> F16ToF32 {
        #[cfg(target_arch = "x86_64")]
        let f16c = std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("avx");
        #[cfg(not(target_arch = "x86_64"))]
        let f16c = false;
        F16ToF32 { f16c }
    }

    /// Write the f32 value of every f16 in `src` (as bits) to `dst`, which
    /// has the same length.
    #[inline]
    pub(crate) fn convert(self, src: &[u16], dst: &mut [MaybeUninit<f32>]) {
        assert_eq!(
            src.len(),
            dst.len(),
            "f16 -> f32 of slices of different lengths"
        );
        #[cfg(target_arch = "x86_64")]
        if self.f16c {
            // SAFETY: the CPU has F16C and AVX (`f16c` is only true when
            // `new` detected them), the one requirement of
            // `f16_to_f32_f16c`; `dst` has room for `src.len()` values (the
            // same length, asserted above).
            unsafe { x86::f16_to_f32_f16c(src, dst.as_mut_ptr().cast::<f32>()) };
            return;
        }
        for (d, &h) in dst.iter_mut().zip(src) {
            d.write(f16_bits_to_f32(h));
        }
    }
}

/// IEEE binary16 → binary32, exact, branch-free so that loops of it
/// vectorize: normal numbers rebias their exponent, subnormals are an
/// integer times 2^-24 (exact in f32), infinities and NaNs keep their
/// payload with the quiet bit set (what F16C and `half` do).
#[inline(always)]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // normal: exponent + (127 - 15), mantissa shifted into place
    let normal = (em << 13) + ((127 - 15) << 23);
    let subnormal = (em as f32 * (1.0 / 16_777_216.0)).to_bits();
    let special = (em << 13) | 0x7f80_0000 | if em > 0x7c00 { 0x0040_0000 } else { 0 };
    let bits = if em < 0x0400 {
        subnormal
    } else if em >= 0x7c00 {
        special
    } else {
        normal
    };
    f32::from_bits(bits | sign)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};

    /// Write the f32 value of every f16 of `src` to `dst[..src.len()]`,
    /// eight values per F16C instruction.
    ///
    /// # Safety
    /// The CPU must support F16C and AVX, and `dst` must be valid for
    /// writes of `src.len()` f32 values (alignment is not needed).
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f16_to_f32_f16c(src: &[u16], dst: *mut f32) {
        let n = src.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, so the 16 bytes read from `src` lie inside
            // it and the 32 bytes written lie inside `dst`'s n values (this
            // function's contract); the unaligned load and store need no
            // alignment; AVX and F16C are there (the contract too).
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
                _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        while i < n {
            // SAFETY: i < n, inside `dst` (the contract).
            unsafe { dst.add(i).write(super::f16_bits_to_f32(src[i])) };
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `src` converted by `with` (the CPU's way, or the portable one).
    fn convert_with(with: F16ToF32, src: &[u16]) -> Vec<f32> {
        let mut dst = vec![MaybeUninit::new(f32::NAN); src.len()];
        with.convert(src, &mut dst);
        // SAFETY: every element was initialized (with NaN) above
        dst.iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    fn convert(src: &[u16]) -> Vec<f32> {
        convert_with(F16ToF32::new(), src)
    }

    #[test]
    fn every_f16_converts_as_half_does() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let fast = convert(&all);
        let portable = convert_with(F16ToF32 { f16c: false }, &all);
        for ((&h, f), p) in all.iter().zip(&fast).zip(&portable) {
            let want = half::f16::from_bits(h).to_f32().to_bits();
            assert_eq!(f16_bits_to_f32(h).to_bits(), want, "portable, {h:#06x}");
            assert_eq!(f.to_bits(), want, "slice path, {h:#06x}");
            assert_eq!(p.to_bits(), want, "portable slice path, {h:#06x}");
        }
        // lengths that are not a multiple of 8 end on the portable path
        assert_eq!(convert(&all[1000..1013]), fast[1000..1013]);
    }
}
