//! The metrics of one compared pair: errors, cosine, ULP distance,
//! NaN/Inf mismatches and each side's moments, and the tolerance that
//! judges them.

use trace_format::DType;

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
