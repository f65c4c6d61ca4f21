//! The dequantizers compiled a second time for x86-64's AVX2 and F16C,
//! called when the CPU has them (detected at run time).
//!
//! The portable loops are written to vectorize (fixed-size arrays, 16- or
//! 32-lane inner loops), but x86-64's baseline (SSE2) has no instruction
//! that widens bytes to 32-bit lanes, nor a vector f16 conversion; with
//! AVX2 the same source becomes 8-wide code. The arithmetic is the same
//! f32 operations in the same order (the compiler never fuses a multiply
//! and an add), so the results are the same bits; the tests check both
//! copies against each other on every type.
//!
//! The one file of trace-quant with `unsafe` code: the calls of the
//! `#[target_feature]` functions.

// the calls of the AVX2 copies: see the `unsafe` block and its SAFETY comment
#![allow(unsafe_code)]

use trace_format::DType;

// the copies' sources (only x86-64 has copies; the tests compare both)
#[cfg(any(target_arch = "x86_64", test))]
use crate::{kquants, legacy};

/// A dequantizer: whole blocks in, their values out (lengths checked by the caller).
pub(crate) type Dequantizer = fn(&[u8], &mut [f32]);

/// The AVX2 copy of `dtype`'s dequantizer, where the CPU runs it.
pub(crate) fn dequantizer(dtype: DType) -> Option<Dequantizer> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
        return x86::dequantizer(dtype);
    }
    let _ = dtype;
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    macro_rules! avx2_copies {
        ($($dtype:ident => $module:ident::$f:ident),* $(,)?) => {
            /// The safe entry of each copy, for a CPU known to have AVX2 and F16C.
            pub(super) fn dequantizer(dtype: DType) -> Option<Dequantizer> {
                $(
                    #[target_feature(enable = "avx2,f16c")]
                    fn $f(blocks: &[u8], out: &mut [f32]) {
                        $module::$f(blocks, out)
                    }
                )*
                match dtype {
                    $(DType::$dtype => Some(|blocks, out| {
                        // SAFETY: `dequantizer` (the only caller of this
                        // module's) detected AVX2 and F16C on this CPU, the
                        // one requirement of the `#[target_feature]` copy.
                        unsafe { $f(blocks, out) }
                    }),)*
                    _ => None,
                }
            }
        };
    }

    avx2_copies! {
        Q4_0 => legacy::dequantize_q4_0,
        Q4_1 => legacy::dequantize_q4_1,
        Q5_0 => legacy::dequantize_q5_0,
        Q5_1 => legacy::dequantize_q5_1,
        Q8_0 => legacy::dequantize_q8_0,
        Q8_1 => legacy::dequantize_q8_1,
        IQ4_NL => legacy::dequantize_iq4_nl,
        MXFP4 => legacy::dequantize_mxfp4,
        Q2_K => kquants::dequantize_q2_k,
        Q3_K => kquants::dequantize_q3_k,
        Q4_K => kquants::dequantize_q4_k,
        Q5_K => kquants::dequantize_q5_k,
        Q6_K => kquants::dequantize_q6_k,
        Q8_K => kquants::dequantize_q8_k,
        IQ4_XS => kquants::dequantize_iq4_xs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable dequantizer of `dtype`.
    fn portable(dtype: DType) -> Dequantizer {
        match dtype {
            DType::Q4_0 => legacy::dequantize_q4_0,
            DType::Q4_1 => legacy::dequantize_q4_1,
            DType::Q5_0 => legacy::dequantize_q5_0,
            DType::Q5_1 => legacy::dequantize_q5_1,
            DType::Q8_0 => legacy::dequantize_q8_0,
            DType::Q8_1 => legacy::dequantize_q8_1,
            DType::IQ4_NL => legacy::dequantize_iq4_nl,
            DType::MXFP4 => legacy::dequantize_mxfp4,
            DType::Q2_K => kquants::dequantize_q2_k,
            DType::Q3_K => kquants::dequantize_q3_k,
            DType::Q4_K => kquants::dequantize_q4_k,
            DType::Q5_K => kquants::dequantize_q5_k,
            DType::Q6_K => kquants::dequantize_q6_k,
            DType::Q8_K => kquants::dequantize_q8_k,
            DType::IQ4_XS => kquants::dequantize_iq4_xs,
            other => panic!("{other} has no dequantizer"),
        }
    }

    /// Random bytes: every scale field takes arbitrary f16/f32/e8m0 bits,
    /// NaNs, infinities and subnormals included.
    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn both_copies_agree_on_every_bit() {
        let Some(_) = dequantizer(DType::Q8_0) else {
            // no AVX2 here: `dequantize` runs only the portable copies
            return;
        };
        let types = [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
            DType::Q8_0,
            DType::Q8_1,
            DType::IQ4_NL,
            DType::MXFP4,
            DType::Q2_K,
            DType::Q3_K,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
            DType::Q8_K,
            DType::IQ4_XS,
        ];
        for dtype in types {
            assert!(crate::can_dequantize(dtype));
            let avx2 = dequantizer(dtype).expect("every dequantizable type has a copy");
            for (blocks, seed) in [(1usize, 1u64), (7, 2), (64, 3)] {
                let bytes = random_bytes(blocks * dtype.block_bytes() as usize, seed);
                let n = blocks * dtype.block_elems() as usize;
                let (mut a, mut b) = (vec![0f32; n], vec![1f32; n]);
                portable(dtype)(&bytes, &mut a);
                avx2(&bytes, &mut b);
                for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{dtype} value {i}: {a} vs {b}");
                }
            }
        }
    }
}
