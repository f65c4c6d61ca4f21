//! Hypotheses on the values themselves: written or not, finite or not,
//! variance, scale and offset, and the rounding of a narrower format.

use super::{median, sample, strides, unmasked, Cause, Close, Finding, Values};

/// Sum of products in f64 (values are f32; sums of millions need f64).
fn dot(x: &[f32], y: &[f32]) -> f64 {
    x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// All of A is 0, or one value, where B varies; or a region of A holds one
/// value where B differs from A (an output never written). Thresholds:
/// exact equality in A; B must not be constant itself.
pub fn written(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    let first = a.data[0];
    let b_constant = b.data.iter().all(|&y| y == b.data[0]);
    if !b_constant
        && a.data
            .iter()
            .all(|&x| x == first || (x.is_nan() && first.is_nan()))
    {
        let n = a.data.len();
        return Some(if first == 0.0 {
            Finding {
                cause: Cause::Zeros,
                strength: 1.0,
                evidence: format!("all {n} values of A are 0; B's are not"),
            }
        } else {
            Finding {
                cause: Cause::Constant {
                    value: first as f64,
                },
                strength: 1.0,
                evidence: format!("all {n} values of A are {first}; B's vary"),
            }
        });
    }
    // the box that holds every element that differs
    let close = Close::for_reference(b.data);
    let region = differing_box(a, b, close)?;
    let st = strides(a.shape);
    let whole = region
        .iter()
        .zip(a.shape)
        .all(|(&(lo, hi), &n)| lo == 0 && hi == n);
    if whole {
        return None;
    }
    let mut value = None;
    let mut b_varies = false;
    let mut b_first = None;
    for_each_in(&region, &st, |i| {
        let x = a.data[i];
        match value {
            None => value = Some(x),
            Some(v) if v == x || (v.is_nan() && x.is_nan()) => {}
            Some(_) => value = Some(f32::INFINITY),
        }
        match b_first {
            None => b_first = Some(b.data[i]),
            Some(y) if y != b.data[i] => b_varies = true,
            _ => {}
        }
    });
    let value = value?;
    if value == f32::INFINITY || !b_varies {
        return None;
    }
    Some(Finding {
        evidence: format!(
            "A holds {value} throughout {} where B has data; everywhere else A agrees",
            region_text(&region)
        ),
        cause: Cause::Unwritten {
            region,
            value: value as f64,
        },
        strength: 0.97,
    })
}

/// `[lo, hi)` per axis of the elements where A and B differ; None when
/// none do. The outermost axis comes from the first and last differing
/// elements; the scan for the others stops once they span their axes.
pub(crate) fn differing_box(
    a: Values<'_>,
    b: Values<'_>,
    close: Close,
) -> Option<Vec<(usize, usize)>> {
    let differs = |i: usize| !close.eq(a.data[i], b.data[i]);
    let first = (0..a.data.len()).find(|&i| differs(i))?;
    let last = (first..a.data.len()).rev().find(|&i| differs(i))?;
    let rank = a.shape.len();
    if rank == 0 {
        return Some(Vec::new());
    }
    let st = strides(a.shape);
    let mut lo = a.shape.to_vec();
    let mut hi = vec![0usize; rank];
    (lo[0], hi[0]) = (first / st[0], last / st[0] + 1);
    let full = |lo: &[usize], hi: &[usize]| (1..rank).all(|k| lo[k] == 0 && hi[k] == a.shape[k]);
    for i in first..=last {
        if !differs(i) {
            continue;
        }
        let mut rest = i % st[0];
        for k in 1..rank {
            let idx = rest / st[k];
            rest %= st[k];
            lo[k] = lo[k].min(idx);
            hi[k] = hi[k].max(idx + 1);
        }
        if i % 4096 == 0 && full(&lo, &hi) {
            break;
        }
    }
    if rank == 1 {
        return Some(vec![(lo[0], hi[0])]);
    }
    Some(lo.into_iter().zip(hi).collect())
}

/// Call `f` with the flat index of every element of a box.
pub(crate) fn for_each_in(region: &[(usize, usize)], st: &[usize], mut f: impl FnMut(usize)) {
    let rank = region.len();
    if rank == 0 {
        f(0);
        return;
    }
    let mut idx: Vec<usize> = region.iter().map(|r| r.0).collect();
    loop {
        let base: usize = idx.iter().zip(st).map(|(i, s)| i * s).sum();
        let (lo, hi) = region[rank - 1];
        for j in lo..hi {
            f(base - idx[rank - 1] * st[rank - 1] + j * st[rank - 1]);
        }
        let mut k = rank - 1;
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < region[k].1 {
                break;
            }
            idx[k] = region[k].0;
        }
    }
}

/// A region in words: `[3:4, :, 0:32]`.
pub(crate) fn region_text(region: &[(usize, usize)]) -> String {
    let parts: Vec<String> = region
        .iter()
        .map(|&(lo, hi)| {
            if hi == lo + 1 {
                lo.to_string()
            } else {
                format!("{lo}:{hi}")
            }
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// NaN or Inf in A where B is finite: the first (row-major) and how many.
pub fn non_finite(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    let (mut nans, mut infs, mut first) = (0u64, 0u64, None);
    for (i, (&x, &y)) in a.data.iter().zip(b.data).enumerate() {
        if !x.is_finite() && y.is_finite() {
            if x.is_nan() {
                nans += 1;
            } else {
                infs += 1;
            }
            first.get_or_insert(i);
        }
    }
    let first = first?;
    let st = strides(a.shape);
    let idx: Vec<usize> = st
        .iter()
        .scan(first, |rest, &s| {
            let i = *rest / s;
            *rest %= s;
            Some(i)
        })
        .collect();
    Some(Finding {
        evidence: format!(
            "A has {nans} NaN and {infs} Inf where B is finite; the first at {idx:?} (A {}, B {})",
            a.data[first], b.data[first]
        ),
        cause: Cause::NonFinite {
            first: idx,
            nans,
            infs,
        },
        strength: 0.99,
    })
}

/// The spread (standard deviation) of the values along `axis` at every
/// position of the other axes, summed row-major so that memory is read in
/// order: the median, over the positions where B's values vary, of A's
/// spread over B's. (Only where B varies: a causal softmax is zero above
/// the diagonal in both runs, and a median over every position would call
/// a mask one position off a collapse.)
fn spread_ratio(a: Values<'_>, b: Values<'_>, axis: usize) -> Option<f64> {
    let n = a.shape[axis];
    let inner = strides(a.shape)[axis];
    let outer = a.data.len() / (n * inner);
    let spreads = |v: &[f32]| {
        let mut out = Vec::with_capacity(outer * inner);
        let (mut s, mut s2, mut c) = (vec![0f64; inner], vec![0f64; inner], vec![0u32; inner]);
        for o in 0..outer {
            s.fill(0.0);
            s2.fill(0.0);
            c.fill(0);
            for k in 0..n {
                let row = &v[(o * n + k) * inner..][..inner];
                for (((s, s2), c), &x) in s.iter_mut().zip(s2.iter_mut()).zip(c.iter_mut()).zip(row)
                {
                    // masked scores (−∞, a framework's most negative float) are no spread
                    if unmasked(x) {
                        let x = x as f64;
                        *s += x;
                        *s2 += x * x;
                        *c += 1;
                    }
                }
            }
            out.extend(s.iter().zip(&s2).zip(&c).map(|((&s, &s2), &c)| {
                let c = f64::from(c.max(1));
                let m = s / c;
                (s2 / c - m * m).max(0.0).sqrt()
            }));
        }
        out
    };
    let (sa, sb) = (spreads(a.data), spreads(b.data));
    let mut ratios: Vec<f64> = sa
        .iter()
        .zip(&sb)
        .filter(|&(&x, &y)| y > 0.0 && y.is_finite() && x.is_finite())
        .map(|(&x, &y)| x / y)
        .collect();
    median(&mut ratios)
}

/// The spread (standard deviation) of the unmasked values of `v` along
/// `axis` at position `p` of the other axes (`inner` = the axis' stride).
fn spread_at(v: &[f32], n: usize, inner: usize, p: usize) -> f64 {
    let (o, i) = (p / inner, p % inner);
    let (mut s, mut s2, mut c) = (0f64, 0f64, 0f64);
    for k in 0..n {
        let x = v[(o * n + k) * inner + i];
        if unmasked(x) {
            s += x as f64;
            s2 += x as f64 * x as f64;
            c += 1.0;
        }
    }
    let c = c.max(1.0);
    (s2 / c - (s / c) * (s / c)).max(0.0).sqrt()
}

/// [`spread_ratio`] on 64 positions only: a screen (a collapse shows at
/// most positions, so their median is near 0 in a sample too).
fn sampled_spread_ratio(a: Values<'_>, b: Values<'_>, axis: usize) -> Option<f64> {
    let n = a.shape[axis];
    let inner = strides(a.shape)[axis];
    let positions = a.data.len() / n;
    let mut ratios: Vec<f64> = sample(positions, 64)
        .into_iter()
        .filter_map(|p| {
            let sb = spread_at(b.data, n, inner, p);
            (sb > 0.0 && sb.is_finite()).then(|| spread_at(a.data, n, inner, p) / sb)
        })
        .filter(|r| r.is_finite())
        .collect();
    median(&mut ratios)
}

/// A's spread along an axis collapsed (≤ 10⁻³ of B's, median over the
/// other axes where B varies) while A itself is not one value: uniform
/// logits, a softmax over a constant, a broadcast of one row. An axis
/// whose median ratio over 64 sampled positions is above 10⁻² is not
/// checked in full.
pub fn collapse(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    let first = a.data[0];
    if a.data.iter().all(|&x| x == first) {
        return None; // `written` says it better
    }
    // the innermost axis first: rows of logits, features of a token
    (0..a.shape.len()).rev().find_map(|axis| {
        if a.shape[axis] < 2 {
            return None;
        }
        if sampled_spread_ratio(a, b, axis)? > 1e-2 {
            return None;
        }
        let ratio = spread_ratio(a, b, axis)?;
        (ratio <= 1e-3).then(|| Finding {
            evidence: format!(
                "along axis {axis} A's values are all but constant: their spread is {ratio:.2e} of B's (median over the other axes, where B's vary)"
            ),
            cause: Cause::Collapse { axis, ratio },
            strength: 0.93,
        })
    })
}

/// A = c·B (c ≠ 1), A = −B, A = B + c, or each slice along an axis scaled
/// by its own factor. Threshold: the fit leaves ≤ 10⁻³ of A's norm.
pub fn scale(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    let (ab, bb, aa) = (
        dot(a.data, b.data),
        dot(b.data, b.data),
        dot(a.data, a.data),
    );
    if !(bb > 0.0 && aa > 0.0 && ab.is_finite() && bb.is_finite() && aa.is_finite()) {
        return None;
    }
    let tight = 1e-3;
    let c = ab / bb;
    // ‖a − c·b‖² = aa − 2c·ab + c²·bb
    let residual = ((aa - 2.0 * c * ab + c * c * bb).max(0.0) / aa).sqrt();
    if residual <= tight && (c - 1.0).abs() > 1e-3 && c.abs() > 1e-6 {
        return Some(if (c + 1.0).abs() <= 1e-3 {
            Finding {
                cause: Cause::SignFlip,
                strength: 0.98,
                evidence: "A = −B (a sign flipped)".into(),
            }
        } else {
            Finding {
                cause: Cause::Scale { c },
                strength: 0.98,
                evidence: format!("A = {c:.6}·B, to {residual:.1e} of A's norm"),
            }
        });
    }
    // offset: a − b constant
    let n = a.data.len() as f64;
    let (mut s, mut s2) = (0f64, 0f64);
    for (&x, &y) in a.data.iter().zip(b.data) {
        let d = x as f64 - y as f64;
        s += d;
        s2 += d * d;
    }
    let mean = s / n;
    let spread = (s2 / n - mean * mean).max(0.0).sqrt();
    let rms_b = (bb / n).sqrt();
    if spread <= tight * rms_b.max(mean.abs()) && mean.abs() > tight * rms_b {
        return Some(Finding {
            cause: Cause::Offset { c: mean },
            strength: 0.98,
            evidence: format!("A = B + {mean:.6} everywhere (to {spread:.1e})"),
        });
    }
    row_scale(a, b, aa)
}

/// Each slice along some axis is B's times its own factor (factors that
/// vary by more than 1 %); the coarsest axis that fits.
fn row_scale(a: Values<'_>, b: Values<'_>, aa: f64) -> Option<Finding> {
    let st = strides(a.shape);
    for (axis, &n) in a.shape.iter().enumerate() {
        if n < 2 || n == a.data.len() {
            continue;
        }
        let inner = st[axis];
        let outer = a.data.len() / (n * inner);
        // element (o, k, i) of the (outer, n, inner) view is at (o·n + k)·inner + i
        let slice = |v: &'_ [f32], o: usize, k: usize| -> std::ops::Range<usize> {
            let _ = v;
            (o * n + k) * inner..(o * n + k + 1) * inner
        };
        let (mut ab, mut bb) = (vec![0f64; n], vec![0f64; n]);
        for o in 0..outer {
            for k in 0..n {
                let r = slice(a.data, o, k);
                ab[k] += dot(&a.data[r.clone()], &b.data[r.clone()]);
                bb[k] += dot(&b.data[r.clone()], &b.data[r]);
            }
        }
        let c: Vec<f64> = ab
            .iter()
            .zip(&bb)
            .map(|(&p, &q)| if q > 0.0 { p / q } else { 1.0 })
            .collect();
        let mut resid = 0f64;
        for o in 0..outer {
            for (k, &ck) in c.iter().enumerate() {
                let r = slice(a.data, o, k);
                for (&x, &y) in a.data[r.clone()].iter().zip(&b.data[r]) {
                    let d = x as f64 - ck * y as f64;
                    resid += d * d;
                }
            }
        }
        let (lo, hi) = c
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                (l.min(x), h.max(x))
            });
        if (resid / aa).sqrt() <= 1e-3 && hi - lo > 1e-2 * hi.abs().max(lo.abs()) {
            // one factor per feature (the last axis) is a norm's weight;
            // one per row, token or head, the statistics it divides by
            let why = if axis + 1 == a.shape.len() {
                "a normalization's weight (gamma) that differs per feature, not its statistics"
            } else {
                "a normalization with the wrong statistics"
            };
            return Some(Finding {
                evidence: format!(
                    "each slice along axis {axis} is B's times its own factor ({lo:.4} to {hi:.4}): {why}"
                ),
                cause: Cause::RowScale {
                    axis,
                    range: (lo, hi),
                },
                strength: 0.95,
            });
        }
    }
    None
}

/// Whether `r` is `x` rounded to `format` by ggml: for f16 and bf16,
/// `r` is representable and within half a unit in the last place of
/// `x`; for q8_0/q4_0 (blocks of 32, checked by the caller), `r` lies on
/// the block's grid (an integer times the f16 scale ggml derives from the
/// block's largest magnitude) within one step of `x`.
fn rounds_to(format: &str, x: &[f32], r: &[f32]) -> bool {
    match format {
        "f16" => x.iter().zip(r).all(|(&x, &r)| {
            half::f16::from_f32(r).to_f32() == r
                && (half::f16::from_f32(x).to_f32() - r).abs() <= ulp_f16(r) * 0.5001
        }),
        "bf16" => x.iter().zip(r).all(|(&x, &r)| {
            half::bf16::from_f32(r).to_f32() == r
                && (half::bf16::from_f32(x).to_f32() - r).abs() <= ulp_bf16(r) * 0.5001
        }),
        "q8_0" | "q4_0" => x.chunks(32).zip(r.chunks(32)).all(|(xb, rb)| {
            let (lo, hi) = if format == "q8_0" {
                (-127.0, 127.0)
            } else {
                (-8.0, 7.0)
            };
            let largest = |b: &[f32]| {
                b.iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
            };
            // the block's scale as ggml derives it from x (q8_0: max |x| / 127;
            // q4_0 keeps the sign of the largest magnitude: max / -8), or
            // as r's largest value says it is (r = q·d with q at an end of
            // the range): x may itself be rounded (an f16 copy of what was
            // quantized), which moves ggml's scale by an f16 step
            let from_x = half::f16::from_f32(if format == "q8_0" {
                largest(xb).abs() / 127.0
            } else {
                largest(xb) / -8.0
            })
            .to_f32();
            let m = largest(rb);
            // (NaN: no third candidate; it fails every comparison)
            let candidates = if format == "q8_0" {
                [from_x, m.abs() / 127.0, f32::NAN]
            } else {
                [from_x, m / -8.0, m / 7.0]
            };
            candidates.iter().any(|&d| {
                if d == 0.0 {
                    // (a block of zeros: only x's own scale can say so)
                    return from_x == 0.0 && rb.iter().all(|&v| v == 0.0);
                }
                xb.iter().zip(rb).all(|(&x, &r)| {
                    let q = r / d;
                    (q - q.round()).abs() <= 1e-3
                        && (lo..=hi).contains(&q.round())
                        && (x - r).abs() <= d.abs() * 1.01
                })
            })
        }),
        _ => false,
    }
}

fn ulp_f16(r: f32) -> f32 {
    let h = half::f16::from_f32(r.abs());
    (half::f16::from_bits(h.to_bits() + 1).to_f32() - h.to_f32()).max(2f32.powi(-24))
}

fn ulp_bf16(r: f32) -> f32 {
    let h = half::bf16::from_f32(r.abs());
    half::bf16::from_bits(h.to_bits() + 1).to_f32() - h.to_f32()
}

/// A and B of different shapes hold the same values in row-major order
/// (each element close, as every check takes it): strength 1, the whole
/// difference is the shape.
pub fn reshaped(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    if a.shape == b.shape || a.data.len() != b.data.len() || a.data.is_empty() {
        return None;
    }
    let close = Close::for_reference(b.data);
    if !a.data.iter().zip(b.data).all(|(&x, &y)| close.eq(x, y)) {
        return None;
    }
    let dims = |s: &[usize]| s.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    Some(Finding {
        evidence: format!(
            "the same {} values in row-major order under another shape (A [{}], B [{}]): \
             the runs view one tensor differently and no value differs; a `reshape` \
             transform in the pairing's mapping compares them",
            a.data.len(),
            dims(a.shape),
            dims(b.shape)
        ),
        cause: Cause::Reshaped {
            a: a.shape.to_vec(),
            b: b.shape.to_vec(),
        },
        strength: 1.0,
    })
}

/// A is B within the rounding of a narrower format, either exactly (every
/// element within that format's rounding of the larger of the two: f16,
/// bf16, or ggml's q8_0/q4_0 blocks of 32 along the last axis) or as the
/// noise of a run computed in it (‖A − B‖/‖B‖ ≤ 8 × its unit roundoff, with
/// no bias and no correlation with B: a scale or an offset is not noise).
pub fn precision(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    let n = a.data.len();
    let last = a.shape.last().copied().unwrap_or(1).max(1);
    let (mut dd, mut bb, mut db, mut ds, mut max_abs) = (0f64, 0f64, 0f64, 0f64, 0f32);
    for (&x, &y) in a.data.iter().zip(b.data) {
        if x.is_finite() != y.is_finite() {
            return None;
        }
        if !x.is_finite() {
            if x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()) {
                return None;
            }
            continue;
        }
        let d = x as f64 - y as f64;
        dd += d * d;
        bb += y as f64 * y as f64;
        db += d * y as f64;
        ds += d;
        max_abs = max_abs.max((x - y).abs());
    }
    if max_abs == 0.0 {
        return None;
    }
    let rel = (dd / bb.max(f64::MIN_POSITIVE)).sqrt();
    for format in ["f16", "bf16", "q8_0", "q4_0"] {
        if format.starts_with('q') && last % 32 != 0 {
            continue;
        }
        // either side may be the rounded one
        if rounds_to(format, b.data, a.data) || rounds_to(format, a.data, b.data) {
            return Some(Finding {
                evidence: format!(
                    "A is B rounded to {format} (or B is A rounded; max |A − B| {max_abs:.3e}): not a bug; --atol {max_abs:.1e} accepts it"
                ),
                cause: Cause::Precision {
                    format: format.into(),
                    atol: max_abs as f64,
                    relative_rms: rel,
                },
                strength: 0.9,
            });
        }
    }
    // the noise of a computation in a narrower format: unbiased, not along B
    let rms_d = (dd / n as f64).sqrt();
    let bias = (ds / n as f64).abs();
    let corr = db / (dd.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE);
    if bias > 0.5 * rms_d || corr.abs() > 0.5 {
        return None;
    }
    let format = [("f16", 2f64.powi(-11)), ("bf16", 2f64.powi(-8))]
        .into_iter()
        .find(|(_, u)| rel <= 8.0 * u)?
        .0;
    Some(Finding {
        evidence: format!(
            "A − B is unbiased noise of {rel:.2e} of B's norm, within what {format} arithmetic makes (max |A − B| {max_abs:.3e}): not a bug; --atol {max_abs:.1e} accepts it"
        ),
        cause: Cause::Precision {
            format: format.into(),
            atol: max_abs as f64,
            relative_rms: rel,
        },
        strength: 0.8,
    })
}
