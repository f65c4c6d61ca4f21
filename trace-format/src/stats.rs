//! Summary statistics over a tensor's values.

use crate::codec::Stats;
use crate::record::crc32c;
use crate::DType;

/// Values per chunk of [`StatsAccumulator::push_f32s`] (fits L1 beside
/// its f32 copy).
pub const CHUNK: usize = 2048;

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

    /// Add `values` in one vectorizable pass: chunks of [`CHUNK`] values,
    /// each reduced in f64 lanes (sum, then the squared deviations from its
    /// own first value, min, max) and merged into the running statistics
    /// with Chan's formula; a chunk holding a NaN or an infinity goes value
    /// by value. The result agrees with [`push`](Self::push) to rounding
    /// (about 1e-15 relative) and does not depend on the CPU (AVX2 or not).
    pub fn push_f32s(&mut self, values: &[f32]) {
        for chunk in values.chunks(CHUNK) {
            let Some(&first) = chunk.first() else {
                continue;
            };
            let k = f64::from(first);
            let sums = crate::stats_kernel::chunk_sums(chunk, k);
            if sums.special {
                for &v in chunk {
                    self.push(f64::from(v));
                }
                continue;
            }
            self.merge_finite_chunk(chunk.len(), k, &sums);
        }
    }

    /// Add f16 values, by their bits: the same statistics as
    /// [`push_f32s`](Self::push_f32s) of the values converted to f32 (in
    /// the same chunks), in one pass (F16C converts in the loop where the
    /// CPU has it).
    pub(crate) fn push_f16_bits(&mut self, bits: &[u16]) {
        for chunk in bits.chunks(CHUNK) {
            let Some(&first) = chunk.first() else {
                continue;
            };
            let k = f64::from(half::f16::from_bits(first).to_f32());
            let sums = crate::stats_kernel::chunk_sums_f16(chunk, k);
            if sums.special {
                for &b in chunk {
                    self.push(f64::from(half::f16::from_bits(b).to_f32()));
                }
                continue;
            }
            self.merge_finite_chunk(chunk.len(), k, &sums);
        }
    }

    /// Add little-endian values of `dtype` (any length: a trailing partial
    /// element is ignored): f32, f16 and bf16 as
    /// [`push_f32s`](Self::push_f32s) of their values (f16 converted in the
    /// statistics' own pass), other scalar dtypes value by value.
    /// `false` (nothing added) for a dtype with no scalar decoding (block
    /// types: dequantize first).
    pub fn push_bytes(&mut self, dtype: DType, bytes: &[u8]) -> bool {
        // sized to the values (a row can be short), not zeroed per call
        let mut buf = Vec::new();
        match dtype {
            DType::F32 => {
                // the bytes as they lie where they are f32-aligned (ggml's
                // and our own buffers are), else a copy a chunk at a time
                #[cfg(target_endian = "little")]
                if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
                    self.push_f32s(values);
                    return true;
                }
                buf.resize((bytes.len() / 4).min(CHUNK), 0f32);
                for c in bytes.chunks(CHUNK * 4) {
                    let n = c.len() / 4;
                    for (d, s) in buf[..n].iter_mut().zip(c.chunks_exact(4)) {
                        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    }
                    self.push_f32s(&buf[..n]);
                }
            }
            DType::F16 => {
                // the bytes as they lie where they are aligned, else a copy
                // a chunk at a time
                #[cfg(target_endian = "little")]
                if let Ok(bits) = bytemuck::try_cast_slice::<u8, u16>(&bytes[..bytes.len() / 2 * 2])
                {
                    self.push_f16_bits(bits);
                    return true;
                }
                let mut bits = vec![0u16; (bytes.len() / 2).min(CHUNK)];
                for c in bytes.chunks(CHUNK * 2) {
                    let n = c.len() / 2;
                    for (d, s) in bits[..n].iter_mut().zip(c.chunks_exact(2)) {
                        *d = u16::from_le_bytes([s[0], s[1]]);
                    }
                    self.push_f16_bits(&bits[..n]);
                }
            }
            DType::BF16 => {
                buf.resize((bytes.len() / 2).min(CHUNK), 0f32);
                for c in bytes.chunks(CHUNK * 2) {
                    let n = c.len() / 2;
                    for (d, s) in buf[..n].iter_mut().zip(c.chunks_exact(2)) {
                        *d = f32::from_bits(u32::from(u16::from_le_bytes([s[0], s[1]])) << 16);
                    }
                    self.push_f32s(&buf[..n]);
                }
            }
            _ => {
                let Some(size) = dtype.element_bytes() else {
                    return false;
                };
                if dtype.decode_f64(&[0u8; 8][..size]).is_none() {
                    return false;
                }
                for chunk in bytes.chunks_exact(size) {
                    self.push(dtype.decode_f64(chunk).unwrap_or(f64::NAN));
                }
            }
        }
        true
    }

    /// Merge the statistics of a chunk of `n` finite values from its
    /// sums shifted by `k` (its first value: so that the variance does not
    /// cancel).
    fn merge_finite_chunk(&mut self, n: usize, k: f64, sums: &crate::stats_kernel::ChunkSums) {
        let count = n as u64;
        let n = n as f64;
        let (s1, s2): (f64, f64) = (sums.s1.iter().sum(), sums.s2.iter().sum());
        let mean_b = k + s1 / n;
        let m2_b = (s2 - s1 * s1 / n).max(0.0);
        let sum_sq_b = s2 + 2.0 * k * s1 + n * k * k;
        let min_b = f64::from(
            sums.lo
                .iter()
                .fold(f32::INFINITY, |a, &b| if b < a { b } else { a }),
        );
        let max_b = f64::from(
            sums.hi
                .iter()
                .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a }),
        );
        let na = self.finite as f64;
        let total = na + n;
        let delta = mean_b - self.mean;
        self.mean += delta * n / total;
        self.m2 += m2_b + delta * delta * na * n / total;
        self.count += count;
        self.finite += count;
        self.min = self.min.min(min_b);
        self.max = self.max.max(max_b);
        self.abs_max = self.abs_max.max(min_b.abs()).max(max_b.abs());
        self.sum_sq += sum_sq_b;
    }

    /// Merge `other`'s values into these (Chan's formula): the statistics
    /// of both sets of values together.
    pub fn merge(&mut self, other: &StatsAccumulator) {
        let (na, nb) = (self.finite as f64, other.finite as f64);
        if other.finite > 0 {
            let total = na + nb;
            let delta = other.mean - self.mean;
            self.mean += delta * nb / total;
            self.m2 += other.m2 + delta * delta * na * nb / total;
        }
        self.count += other.count;
        self.finite += other.finite;
        self.nan += other.nan;
        self.inf += other.inf;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.abs_max = self.abs_max.max(other.abs_max);
        self.sum_sq += other.sum_sq;
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

    #[test]
    fn the_vectorized_pass_agrees_with_welford() {
        // 5000 values (chunks of 2048 and a ragged tail), a NaN and an
        // infinity in the second chunk, an offset mean
        let mut vals: Vec<f32> = (0..5000)
            .map(|i| 3.0 + ((i * 7919) % 1000) as f32 / 37.0 - (i % 3) as f32)
            .collect();
        vals[2100] = f32::NAN;
        vals[3000] = f32::NEG_INFINITY;
        let mut slow = StatsAccumulator::new();
        vals.iter().for_each(|&v| slow.push(f64::from(v)));
        let mut fast = StatsAccumulator::new();
        fast.push_f32s(&vals[..1000]);
        fast.push_f32s(&vals[1000..]);
        let (a, b) = (slow.finish(None), fast.finish(None));
        assert_eq!(
            (a.count, a.nan_count, a.inf_count),
            (b.count, b.nan_count, b.inf_count)
        );
        assert_eq!((a.min, a.max, a.abs_max), (b.min, b.max, b.abs_max));
        for (x, y) in [(a.mean, b.mean), (a.std, b.std), (a.l2_norm, b.l2_norm)] {
            assert!((x - y).abs() <= 1e-12 * x.abs(), "{x} vs {y}");
        }
        // f16 and bf16 bytes: the same statistics as value by value
        let h: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let mut fh = StatsAccumulator::new();
        assert!(fh.push_bytes(DType::F16, &h));
        let sh = compute_stats(DType::F16, &h).unwrap();
        let fh = fh.finish(Some(crc32c(&h)));
        assert_eq!(
            (fh.count, fh.nan_count, fh.inf_count, fh.min, fh.max),
            (sh.count, sh.nan_count, sh.inf_count, sh.min, sh.max)
        );
        assert!((fh.mean - sh.mean).abs() <= 1e-12 * sh.mean.abs());
        let bf: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let mut fb = StatsAccumulator::new();
        assert!(fb.push_bytes(DType::BF16, &bf));
        assert_eq!(
            fb.finish(None).max,
            compute_stats(DType::BF16, &bf).unwrap().max
        );
        let ints: Vec<u8> = [1i32, -5, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut fi = StatsAccumulator::new();
        assert!(fi.push_bytes(DType::I32, &ints));
        assert_eq!((fi.finish(None).min, fi.finish(None).max), (-5.0, 9.0));
        assert!(!StatsAccumulator::new().push_bytes(DType::Q8_0, &ints));
        // merged parts: the statistics of the whole
        let (mut p, mut q) = (StatsAccumulator::new(), StatsAccumulator::new());
        p.push_f32s(&vals[..2500]);
        q.push_f32s(&vals[2500..]);
        p.merge(&q);
        let m = p.finish(None);
        assert_eq!(
            (m.count, m.nan_count, m.inf_count, m.min, m.max),
            (a.count, a.nan_count, a.inf_count, a.min, a.max)
        );
        assert!(
            (m.std - a.std).abs() <= 1e-12 * a.std
                && (m.mean - a.mean).abs() <= 1e-12 * a.mean.abs()
        );
        // a constant far from 0: no cancellation in the variance
        let mut c = StatsAccumulator::new();
        c.push_f32s(&[1.0e6; 3000]);
        let c = c.finish(None);
        assert_eq!(
            (c.mean, c.std, c.l2_norm),
            (1.0e6, 0.0, (3000f64 * 1.0e12).sqrt())
        );
    }
}
