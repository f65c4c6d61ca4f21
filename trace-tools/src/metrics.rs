//! The metrics of one compared pair: errors, cosine, ULP distance,
//! NaN/Inf mismatches and each side's moments, and the tolerance that
//! judges them.

use trace_format::DType;

mod kernel;

/// When two tensors count as agreeing.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Tolerance {
    /// Absolute tolerance: an element agrees when `|a − b| ≤ atol + rtol·|b|`.
    pub atol: f64,
    /// Relative tolerance (see `atol`).
    pub rtol: f64,
    /// Smallest cosine similarity that agrees.
    pub min_cosine: f64,
}

impl Default for Tolerance {
    /// `atol = 1e-3`, `rtol = 1e-2`, `min_cosine = 0.999`: loose enough for
    /// an f16 engine against an f32 reference, tight enough for real bugs.
    fn default() -> Self {
        Tolerance {
            atol: 1e-3,
            rtol: 1e-2,
            min_cosine: 0.999,
        }
    }
}

/// Mean and spread of one side's values.
#[derive(Clone, Copy, Debug, PartialEq, Default, serde::Serialize)]
pub struct Moments {
    /// Mean of the finite values.
    pub mean: f64,
    /// Population standard deviation of the finite values.
    pub std: f64,
    /// Smallest finite value.
    pub min: f64,
    /// Largest finite value.
    pub max: f64,
}

/// Element-wise comparison of two equally long value sequences.
#[derive(Clone, Debug, PartialEq, Default, serde::Serialize)]
pub struct Metrics {
    /// Elements compared.
    pub numel: u64,
    /// Largest `|a − b|` over elements finite on both sides.
    pub max_abs: f64,
    /// Row-major index of that element.
    pub max_abs_index: Vec<u64>,
    /// A's value there.
    pub max_abs_a: f64,
    /// B's value there.
    pub max_abs_b: f64,
    /// Largest `|a − b| / max(|a|, |b|)` (0 where both are 0); at most 2.
    pub max_rel: f64,
    /// Mean `|a − b|`.
    pub mean_abs: f64,
    /// Root mean square of `a − b`.
    pub rmse: f64,
    /// Cosine similarity of the finite values (exactly 1 when they are identical).
    pub cosine: f64,
    /// Largest distance in units in the last place, for f16 or bf16 tensors
    /// (the other side rounded to that type first).
    pub max_ulp: Option<u64>,
    /// Elements NaN on one side only.
    pub nan_mismatch: u64,
    /// Elements infinite on one side only, or infinite with opposite signs.
    pub inf_mismatch: u64,
    /// Elements outside `atol + rtol·|b|`.
    pub outside_tolerance: u64,
    /// A's moments.
    pub a: Moments,
    /// B's moments.
    pub b: Moments,
}

pub(crate) fn moments(v: &[f64]) -> Moments {
    let mut acc = trace_format::stats::StatsAccumulator::new();
    v.iter().for_each(|&x| acc.push(x));
    let s = acc.finish(None);
    Moments {
        mean: s.mean,
        std: s.std,
        min: s.min,
        max: s.max,
    }
}

/// Map a 16-bit float's bits to an integer line where neighbours differ by 1.
fn ordered16(bits: u16) -> i32 {
    if bits & 0x8000 != 0 {
        -((bits & 0x7fff) as i32)
    } else {
        bits as i32
    }
}

fn to_bits16(dtype: DType, v: f64) -> u16 {
    match dtype {
        DType::BF16 => half::bf16::from_f64(v).to_bits(),
        _ => half::f16::from_f64(v).to_bits(),
    }
}

/// Compare `a` against the reference `b` (same length, row-major of `shape`).
/// `ulp_dtype` is f16 or bf16 when either side is stored in it.
pub fn compare_values(
    a: &[f64],
    b: &[f64],
    shape: &[u64],
    tol: &Tolerance,
    ulp_dtype: Option<DType>,
) -> Metrics {
    let mut m = Metrics {
        numel: a.len().min(b.len()) as u64,
        ..Default::default()
    };
    let (mut dot, mut na, mut nb, mut sum_abs, mut sum_sq, mut finite) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0u64);
    let mut max_ulp = 0u64;
    let mut at = None;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x.is_nan() || y.is_nan() {
            if x.is_nan() != y.is_nan() {
                m.nan_mismatch += 1;
                m.outside_tolerance += 1;
            }
            continue;
        }
        if x.is_infinite() || y.is_infinite() {
            if x != y {
                m.inf_mismatch += 1;
                m.outside_tolerance += 1;
            }
            continue;
        }
        let d = (x - y).abs();
        if d > m.max_abs || at.is_none() {
            m.max_abs = d;
            at = Some(i);
        }
        let scale = x.abs().max(y.abs());
        if scale > 0.0 {
            m.max_rel = m.max_rel.max(d / scale);
        }
        if d > tol.atol + tol.rtol * y.abs() {
            m.outside_tolerance += 1;
        }
        if let Some(dt) = ulp_dtype {
            let u =
                (ordered16(to_bits16(dt, x)) - ordered16(to_bits16(dt, y))).unsigned_abs() as u64;
            max_ulp = max_ulp.max(u);
        }
        dot += x * y;
        na += x * x;
        nb += y * y;
        sum_abs += d;
        sum_sq += d * d;
        finite += 1;
    }
    if let Some(i) = at {
        m.max_abs_index = unravel(i as u64, shape);
        m.max_abs_a = a[i];
        m.max_abs_b = b[i];
    }
    if finite > 0 {
        m.mean_abs = sum_abs / finite as f64;
        m.rmse = (sum_sq / finite as f64).sqrt();
    }
    m.cosine = if sum_sq == 0.0 {
        // identical finite values: exactly 1, not 1 − rounding
        1.0
    } else if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0)
    };
    m.max_ulp = ulp_dtype.map(|_| max_ulp);
    m.a = moments(a);
    m.b = moments(b);
    m
}

/// The multi-index of row-major position `flat` in `shape`.
pub fn unravel(mut flat: u64, shape: &[u64]) -> Vec<u64> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        let n = shape[d].max(1);
        idx[d] = flat % n;
        flat /= n;
    }
    idx
}

/// One side's moments, mergeable (Chan et al.): what `moments` gives,
/// built a chunk at a time.
#[derive(Clone, Copy, Debug)]
pub struct MomentAcc {
    /// Values seen.
    pub count: u64,
    /// Finite values seen.
    pub finite: u64,
    /// NaN values seen.
    pub nan: u64,
    /// Infinite values seen.
    pub inf: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

impl Default for MomentAcc {
    fn default() -> Self {
        MomentAcc {
            count: 0,
            finite: 0,
            nan: 0,
            inf: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl MomentAcc {
    /// Join the moments of the values that come after these.
    pub fn merge(&mut self, o: &MomentAcc) {
        self.count += o.count;
        self.nan += o.nan;
        self.inf += o.inf;
        if o.finite == 0 {
            return;
        }
        if self.finite == 0 {
            (self.finite, self.mean, self.m2) = (o.finite, o.mean, o.m2);
        } else {
            let n = (self.finite + o.finite) as f64;
            let (n1, n2) = (self.finite as f64, o.finite as f64);
            let delta = o.mean - self.mean;
            self.mean += delta * (n2 / n);
            self.m2 += o.m2 + delta * delta * (n1 * n2 / n);
            self.finite += o.finite;
        }
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// The moments (NaN when no value was finite).
    pub fn moments(&self) -> Moments {
        if self.finite == 0 {
            return Moments {
                mean: f64::NAN,
                std: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        Moments {
            mean: self.mean,
            std: (self.m2 / self.finite as f64).sqrt(),
            min: self.min,
            max: self.max,
        }
    }

    /// Largest |value| among the finite ones (NaN when none is).
    pub fn abs_max(&self) -> f64 {
        if self.finite == 0 {
            f64::NAN
        } else {
            self.max.abs().max(self.min.abs())
        }
    }

    /// The moments of one chunk of values.
    pub fn of_chunk<T: Copy + Into<f64>>(v: &[T]) -> MomentAcc {
        let mut m = MomentAcc {
            count: v.len() as u64,
            ..Default::default()
        };
        // all finite (the usual case): lanes the compiler vectorizes
        let (mut sum, mut lo, mut hi) = (
            [0.0f64; LANES],
            [f64::INFINITY; LANES],
            [f64::NEG_INFINITY; LANES],
        );
        let chunks = v.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..LANES {
                let x: f64 = c[l].into();
                sum[l] += x;
                lo[l] = if x < lo[l] { x } else { lo[l] };
                hi[l] = if x > hi[l] { x } else { hi[l] };
            }
        }
        for &x in rest {
            let x: f64 = x.into();
            sum[0] += x;
            lo[0] = if x < lo[0] { x } else { lo[0] };
            hi[0] = if x > hi[0] { x } else { hi[0] };
        }
        let total: f64 = sum.iter().sum();
        if total.is_finite() && !v.is_empty() {
            m.finite = v.len() as u64;
            m.mean = total / v.len() as f64;
            m.min = lo.iter().copied().fold(f64::INFINITY, f64::min);
            m.max = hi.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            m.m2 = sum_sq_dev(v, m.mean);
            if m.min.is_finite() && m.max.is_finite() && m.m2.is_finite() {
                return m;
            }
            m = MomentAcc {
                count: v.len() as u64,
                ..Default::default()
            };
        }
        // some value is NaN or infinite (or the sum overflows): one by one
        let mut total = 0.0;
        for &x in v {
            let x: f64 = x.into();
            if x.is_nan() {
                m.nan += 1;
            } else if x.is_infinite() {
                m.inf += 1;
            } else {
                m.finite += 1;
                total += x;
                m.min = m.min.min(x);
                m.max = m.max.max(x);
            }
        }
        if m.finite > 0 {
            m.mean = total / m.finite as f64;
            if !m.mean.is_finite() {
                // the sum overflowed: Welford's running mean instead
                let (mut mean, mut k) = (0.0, 0.0);
                for &x in v {
                    let x: f64 = x.into();
                    if x.is_finite() {
                        k += 1.0;
                        mean += (x - mean) / k;
                    }
                }
                m.mean = mean;
            }
            let mean = m.mean;
            m.m2 = v
                .iter()
                .map(|&x| x.into())
                .filter(|x: &f64| x.is_finite())
                .map(|x| (x - mean) * (x - mean))
                .sum();
        }
        m
    }
}

/// Σ (x − mean)² over a chunk of finite values, in lanes.
#[inline(always)]
fn sum_sq_dev<T: Copy + Into<f64>>(v: &[T], mean: f64) -> f64 {
    let mut s = [0.0f64; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l].into() - mean;
            s[l] += d * d;
        }
    }
    for &x in rest {
        let d = x.into() - mean;
        s[0] += d * d;
    }
    s.iter().sum()
}

/// Accumulator lanes of the chunk kernels (independent sums the compiler
/// keeps in vector registers).
const LANES: usize = 8;

/// The metrics of a pair, a chunk at a time: [`compare_values`] for
/// values read in pieces (see [`crate::stream`]). Chunks are added in
/// row-major order ([`MetricAcc::add_chunk`]), accumulators of consecutive
/// ranges joined in order ([`MetricAcc::merge`]).
#[derive(Clone, Debug, Default)]
pub struct MetricAcc {
    numel: u64,
    max_abs: f64,
    /// (flat index, a, b) of the largest |a − b| so far.
    at: Option<(u64, f64, f64)>,
    max_rel: f64,
    sum_abs: f64,
    sum_sq: f64,
    dot: f64,
    na: f64,
    nb: f64,
    finite: u64,
    max_ulp: u64,
    nan_mismatch: u64,
    inf_mismatch: u64,
    outside: u64,
    a: MomentAcc,
    b: MomentAcc,
}

impl MetricAcc {
    /// Join the accumulator of the range that comes right after this one's.
    pub fn merge(&mut self, o: MetricAcc) {
        if let Some(at) = o.at {
            if self.at.is_none() || o.max_abs > self.max_abs {
                self.max_abs = o.max_abs;
                self.at = Some(at);
            }
        }
        self.numel += o.numel;
        self.max_rel = self.max_rel.max(o.max_rel);
        self.sum_abs += o.sum_abs;
        self.sum_sq += o.sum_sq;
        self.dot += o.dot;
        self.na += o.na;
        self.nb += o.nb;
        self.finite += o.finite;
        self.max_ulp = self.max_ulp.max(o.max_ulp);
        self.nan_mismatch += o.nan_mismatch;
        self.inf_mismatch += o.inf_mismatch;
        self.outside += o.outside;
        self.a.merge(&o.a);
        self.b.merge(&o.b);
    }

    /// Add the chunk of values `a` and `b` whose first is the `start`-th
    /// (row-major) of the pair, right after the values added so far.
    pub fn add_chunk<T: Copy + Into<f64>>(
        &mut self,
        start: u64,
        a: &[T],
        b: &[T],
        tol: &Tolerance,
        ulp_dtype: Option<DType>,
    ) {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let chunk = if ulp_dtype.is_none() {
            kernel::fast_chunk(start, a, b, tol, self.at.map(|_| self.max_abs))
        } else {
            None
        };
        let chunk = chunk.unwrap_or_else(|| careful_chunk(start, a, b, tol, ulp_dtype));
        self.merge(chunk);
    }

    /// Add the chunk of f32 values `a` and `b` of a pair with an f16 or
    /// bf16 side (`ulp_dtype`): [`MetricAcc::add_chunk`], with the ULP
    /// distance taken over whole slices converted at once (the CPU's vector
    /// conversion where it has one) instead of value by value. The values
    /// are the same: an f32 rounds to f16/bf16 as its f64 does.
    pub fn add_chunk_f32(
        &mut self,
        start: u64,
        a: &[f32],
        b: &[f32],
        tol: &Tolerance,
        ulp_dtype: Option<DType>,
    ) {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        self.add_chunk(start, a, b, tol, None);
        let Some(dt) = ulp_dtype else { return };
        use half::slice::HalfFloatSliceExt;
        let (mut ha, mut hb) = (vec![0u16; n], vec![0u16; n]);
        if dt == DType::BF16 {
            bytemuck::cast_slice_mut::<u16, half::bf16>(&mut ha).convert_from_f32_slice(a);
            bytemuck::cast_slice_mut::<u16, half::bf16>(&mut hb).convert_from_f32_slice(b);
        } else {
            bytemuck::cast_slice_mut::<u16, half::f16>(&mut ha).convert_from_f32_slice(a);
            bytemuck::cast_slice_mut::<u16, half::f16>(&mut hb).convert_from_f32_slice(b);
        }
        let mut top = 0u64;
        for i in 0..n {
            // NaN and infinities on either side are counted, not measured
            if a[i].is_finite() && b[i].is_finite() {
                let u = (ordered16(ha[i]) - ordered16(hb[i])).unsigned_abs() as u64;
                top = top.max(u);
            }
        }
        self.max_ulp = self.max_ulp.max(top);
    }

    /// The metrics (`shape`: for the multi-index of the largest error).
    pub fn finish(&self, shape: &[u64], ulp_dtype: Option<DType>) -> Metrics {
        let mut m = Metrics {
            numel: self.numel,
            max_abs: self.max_abs,
            max_rel: self.max_rel,
            nan_mismatch: self.nan_mismatch,
            inf_mismatch: self.inf_mismatch,
            outside_tolerance: self.outside,
            ..Default::default()
        };
        if let Some((i, x, y)) = self.at {
            m.max_abs_index = unravel(i, shape);
            m.max_abs_a = x;
            m.max_abs_b = y;
        }
        if self.finite > 0 {
            m.mean_abs = self.sum_abs / self.finite as f64;
            m.rmse = (self.sum_sq / self.finite as f64).sqrt();
        }
        m.cosine = if self.sum_sq == 0.0 {
            // identical finite values: exactly 1, not 1 − rounding
            1.0
        } else if self.na == 0.0 || self.nb == 0.0 {
            0.0
        } else {
            (self.dot / (self.na.sqrt() * self.nb.sqrt())).clamp(-1.0, 1.0)
        };
        m.max_ulp = ulp_dtype.map(|_| self.max_ulp);
        m.a = self.a.moments();
        m.b = self.b.moments();
        m
    }
}

/// The chunk's metrics when every value on both sides is finite (`None`
/// otherwise): branch-free lanes. The largest error's index is looked for
/// (a second scan) only when it beats `beat`, the largest so far. Compiled
/// for AVX2 too, picked at run time ([`kernel`]): the same IEEE operations
/// in the same order, so the metrics do not depend on the CPU.
#[inline(always)]
fn fast_chunk_portable<T: Copy + Into<f64>>(
    start: u64,
    a: &[T],
    b: &[T],
    tol: &Tolerance,
    beat: Option<f64>,
) -> Option<MetricAcc> {
    let z = [0.0f64; LANES];
    let (mut mx, mut rel, mut sabs, mut ssq, mut dot, mut na, mut nb) = (z, z, z, z, z, z, z);
    let (mut sa, mut sb, mut out) = (z, z, z);
    let (mut loa, mut hia) = ([f64::INFINITY; LANES], [f64::NEG_INFINITY; LANES]);
    let (mut lob, mut hib) = ([f64::INFINITY; LANES], [f64::NEG_INFINITY; LANES]);
    let (atol, rtol) = (tol.atol, tol.rtol);
    let n = a.len();
    let full = n - n % LANES;
    let mut step = |l: usize, x: f64, y: f64| {
        let d = (x - y).abs();
        mx[l] = if d > mx[l] { d } else { mx[l] };
        let scale = if x.abs() > y.abs() { x.abs() } else { y.abs() };
        let r = if scale > 0.0 { d / scale } else { 0.0 };
        rel[l] = if r > rel[l] { r } else { rel[l] };
        out[l] += if d > atol + rtol * y.abs() { 1.0 } else { 0.0 };
        sabs[l] += d;
        ssq[l] += d * d;
        dot[l] += x * y;
        na[l] += x * x;
        nb[l] += y * y;
        sa[l] += x;
        sb[l] += y;
        loa[l] = if x < loa[l] { x } else { loa[l] };
        hia[l] = if x > hia[l] { x } else { hia[l] };
        lob[l] = if y < lob[l] { y } else { lob[l] };
        hib[l] = if y > hib[l] { y } else { hib[l] };
    };
    for (ca, cb) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            step(l, ca[l].into(), cb[l].into());
        }
    }
    for i in full..n {
        step(0, a[i].into(), b[i].into());
    }
    let sum = |v: [f64; LANES]| v.iter().sum::<f64>();
    let top = |v: [f64; LANES]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let low = |v: [f64; LANES]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (sum_abs, sum_a, sum_b) = (sum(sabs), sum(sa), sum(sb));
    let (sum_sq, dot, na, nb) = (sum(ssq), sum(dot), sum(na), sum(nb));
    // a NaN or an infinity on either side makes some |a − b| NaN or infinite
    if !(sum_abs.is_finite()
        && sum_sq.is_finite()
        && na.is_finite()
        && nb.is_finite()
        && dot.is_finite()
        && sum_a.is_finite()
        && sum_b.is_finite())
    {
        return None;
    }
    let mut m = MetricAcc {
        numel: n as u64,
        max_rel: top(rel),
        sum_abs,
        sum_sq,
        dot,
        na,
        nb,
        finite: n as u64,
        outside: sum(out) as u64,
        ..Default::default()
    };
    if n == 0 {
        return Some(m);
    }
    let side = |s: f64, lo, hi, v: &[T]| {
        let mean = s / n as f64;
        MomentAcc {
            count: n as u64,
            finite: n as u64,
            nan: 0,
            inf: 0,
            mean,
            m2: sum_sq_dev(v, mean),
            min: lo,
            max: hi,
        }
    };
    m.a = side(sum_a, low(loa), top(hia), a);
    m.b = side(sum_b, low(lob), top(hib), b);
    let best = top(mx);
    m.max_abs = best;
    if beat.is_none_or(|b| best > b) {
        if let Some(i) = (0..n).find(|&i| (a[i].into() - b[i].into()).abs() == best) {
            m.at = Some((start + i as u64, a[i].into(), b[i].into()));
        }
    }
    Some(m)
}

/// The chunk's metrics one value at a time ([`compare_values`]'s rules).
fn careful_chunk<T: Copy + Into<f64>>(
    start: u64,
    a: &[T],
    b: &[T],
    tol: &Tolerance,
    ulp_dtype: Option<DType>,
) -> MetricAcc {
    let mut m = MetricAcc {
        numel: a.len() as u64,
        ..Default::default()
    };
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let (x, y): (f64, f64) = (x.into(), y.into());
        if x.is_nan() || y.is_nan() {
            if x.is_nan() != y.is_nan() {
                m.nan_mismatch += 1;
                m.outside += 1;
            }
            continue;
        }
        if x.is_infinite() || y.is_infinite() {
            if x != y {
                m.inf_mismatch += 1;
                m.outside += 1;
            }
            continue;
        }
        let d = (x - y).abs();
        if d > m.max_abs || m.at.is_none() {
            m.max_abs = d;
            m.at = Some((start + i as u64, x, y));
        }
        let scale = x.abs().max(y.abs());
        if scale > 0.0 {
            m.max_rel = m.max_rel.max(d / scale);
        }
        if d > tol.atol + tol.rtol * y.abs() {
            m.outside += 1;
        }
        if let Some(dt) = ulp_dtype {
            let u =
                (ordered16(to_bits16(dt, x)) - ordered16(to_bits16(dt, y))).unsigned_abs() as u64;
            m.max_ulp = m.max_ulp.max(u);
        }
        m.dot += x * y;
        m.na += x * x;
        m.nb += y * y;
        m.sum_abs += d;
        m.sum_sq += d * d;
        m.finite += 1;
    }
    m.a = MomentAcc::of_chunk(a);
    m.b = MomentAcc::of_chunk(b);
    m
}
