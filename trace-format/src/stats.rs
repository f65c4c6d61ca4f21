//! Summary statistics over a tensor's values.

use crate::codec::Stats;
use crate::record::crc32c;
use crate::DType;

/// Accumulates statistics one value at a time (Welford's mean and variance).
#[derive(Clone, Debug, Default)]
pub struct StatsAccumulator {
    count: u64,
    finite: u64,
    nan: u64,
    inf: u64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
    abs_max: f64,
    sum_sq: f64,
}

impl StatsAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        StatsAccumulator {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ..Default::default()
        }
    }

    /// Add one value.
    #[inline]
    pub fn push(&mut self, v: f64) {
        self.count += 1;
        if v.is_nan() {
            self.nan += 1;
            return;
        }
        if v.is_infinite() {
            self.inf += 1;
            return;
        }
        self.finite += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.abs_max = self.abs_max.max(v.abs());
        self.sum_sq += v * v;
        let delta = v - self.mean;
        self.mean += delta / self.finite as f64;
        self.m2 += delta * (v - self.mean);
    }

    /// The statistics so far (NaN min/max/mean/std when no value was finite).
    pub fn finish(&self, bytes_crc32c: Option<u32>) -> Stats {
        let none = self.finite == 0;
        Stats {
            count: self.count,
            nan_count: self.nan,
            inf_count: self.inf,
            min: if none { f64::NAN } else { self.min },
            max: if none { f64::NAN } else { self.max },
            mean: if none { f64::NAN } else { self.mean },
            std: if none {
                f64::NAN
            } else {
                (self.m2 / self.finite as f64).sqrt()
            },
            abs_max: if none { f64::NAN } else { self.abs_max },
            l2_norm: self.sum_sq.sqrt(),
            bytes_crc32c,
        }
    }
}

/// Statistics of contiguous little-endian values of a scalar `dtype`, with
/// the crc32c of the bytes. `None` for block dtypes (dequantize first).
pub fn compute_stats(dtype: DType, bytes: &[u8]) -> Option<Stats> {
    let size = dtype.element_bytes()?;
    let mut acc = StatsAccumulator::new();
    for chunk in bytes.chunks_exact(size) {
        acc.push(dtype.decode_f64(chunk)?);
    }
    Some(acc.finish(Some(crc32c(bytes))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_known_values() {
        let vals = [1.0f32, 2.0, 3.0, 4.0, f32::NAN, f32::INFINITY, -6.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let s = compute_stats(DType::F32, &bytes).unwrap();
        assert_eq!((s.count, s.nan_count, s.inf_count), (7, 1, 1));
        assert_eq!((s.min, s.max, s.abs_max), (-6.0, 4.0, 6.0));
        assert_eq!(s.mean, 4.0 / 5.0);
        let var = [1.0, 2.0, 3.0, 4.0, -6.0]
            .iter()
            .map(|v: &f64| (v - 0.8).powi(2))
            .sum::<f64>()
            / 5.0;
        assert!((s.std - var.sqrt()).abs() < 1e-12);
        assert_eq!(s.l2_norm, 66f64.sqrt());
        assert_eq!(s.bytes_crc32c, Some(crc32c(&bytes)));
        assert!(compute_stats(DType::Q8_0, &bytes).is_none());
    }
}
