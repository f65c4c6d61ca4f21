//! The diff's inner loop ([`super::fast_chunk_portable`]) compiled twice,
//! for the target's baseline and for AVX2, picked at run time: a diff is
//! bound by this loop's f64 arithmetic, which AVX2 does four values at a
//! time instead of two. Both copies do the same IEEE operations in the same
//! order (no fused multiply-add: Rust never contracts), so the metrics do
//! not depend on the CPU.
//!
//! The one file of trace-tools with `unsafe` code: the call of the AVX2
//! copy after the CPU said it has AVX2.

#![allow(unsafe_code)]

use super::{fast_chunk_portable, MetricAcc, Tolerance};

/// [`fast_chunk_portable`], on AVX2 where the CPU has it.
pub(super) fn fast_chunk<T: Copy + Into<f64>>(
    start: u64,
    a: &[T],
    b: &[T],
    tol: &Tolerance,
    beat: Option<f64>,
) -> Option<MetricAcc> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked on the line above), the only
        // requirement of a `#[target_feature(enable = "avx2")]` function.
        return unsafe { fast_chunk_avx2(start, a, b, tol, beat) };
    }
    fast_chunk_portable(start, a, b, tol, beat)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fast_chunk_avx2<T: Copy + Into<f64>>(
    start: u64,
    a: &[T],
    b: &[T],
    tol: &Tolerance,
    beat: Option<f64>,
) -> Option<MetricAcc> {
    fast_chunk_portable(start, a, b, tol, beat)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 copy and the baseline give the same metrics, bit for bit.
    #[test]
    fn both_copies_agree_bit_for_bit() {
        let a: Vec<f32> = (0..1003)
            .map(|i| ((i * 7919) % 1013) as f32 / 7.0 - 60.0)
            .collect();
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, x)| x + (i as f32 * 0.37).sin() * 1e-3)
            .collect();
        let tol = Tolerance::default();
        let fast = fast_chunk(5, &a, &b, &tol, None).unwrap();
        let slow = fast_chunk_portable(5, &a, &b, &tol, None).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
        let mut odd = a.clone();
        odd[17] = f32::NAN;
        assert!(fast_chunk(0, &odd, &b, &tol, None).is_none());
    }
}
