//! f16 → f32 of many values: x86's F16C instruction (8 values per instruction)
//! where the CPU has it, detected at run time, else an exact branch-free
//! conversion the compiler vectorizes. Both give the same bits for every
//! one of the 65,536 f16 values (tested), and the same as the `half` crate.
//!
//! With `source.rs` (the memory map), one of the two files of the reader
//! with `unsafe` code: the F16C loop below.

/// Append the f32 value of every f16 in `src` (as bits) to `out`.
pub(crate) fn extend_f16_as_f32(out: &mut Vec<f32>, src: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        out.reserve(src.len());
        let len = out.len();
        let dst = &mut out.spare_capacity_mut()[..src.len()];
        // SAFETY: the CPU has F16C and AVX (checked just above), the one
        // requirement of `f16_to_f32_f16c`; `dst` has room for `src.len()`
        // values (reserved above).
        unsafe { x86::f16_to_f32_f16c(src, dst.as_mut_ptr().cast::<f32>()) };
        // SAFETY: `f16_to_f32_f16c` wrote all `src.len()` values after
        // `len`, within the capacity.
        unsafe { out.set_len(len + src.len()) };
        return;
    }
    out.extend(src.iter().map(|&h| f16_bits_to_f32(h)));
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

    #[test]
    fn every_f16_converts_as_half_does() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut fast = vec![1.5f32];
        extend_f16_as_f32(&mut fast, &all);
        assert_eq!(fast.remove(0), 1.5);
        for (&h, f) in all.iter().zip(&fast) {
            let want = half::f16::from_bits(h).to_f32().to_bits();
            assert_eq!(f16_bits_to_f32(h).to_bits(), want, "portable, {h:#06x}");
            assert_eq!(f.to_bits(), want, "slice path, {h:#06x}");
        }
        // lengths that are not a multiple of 8 end on the portable path
        let mut odd = Vec::new();
        extend_f16_as_f32(&mut odd, &all[1000..1013]);
        assert_eq!(odd, fast[1000..1013]);
    }
}
