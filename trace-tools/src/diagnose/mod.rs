//! Why two tensors differ: a catalogue of hypotheses tested on the values.
//!
//! [`diagnose`] takes the values of a divergent pair — A, the run under
//! test, and B, the reference, both logical and row-major — and returns
//! the hypotheses that hold, strongest first, each with its evidence: all
//! zeros or a region never written, the first NaN/Inf, collapsed variance,
//! a scale/offset/sign/per-row scale, a layout (A holds B's values in
//! another order: a permutation, a transpose, a head split the other way,
//! column-major for row-major), a shift or roll along an axis, heads in
//! another order or repeated the other way (or, in scores, grouped onto KV
//! heads the other way), an attention mask that hides other keys, a
//! divergence confined to a region, or only the rounding of a narrower
//! format; and the value checks again with the roles swapped, for a
//! reference that is the one at fault ([`Cause::InReference`]).
//! [`order_within`] tries the order hypotheses again within a
//! comparison's own tolerance. [`stale`] checks A against other
//! tensors (a buffer reused without being written) and [`rope`] against
//! the other RoPE pairing, frequency layout or base.
//!
//! Each hypothesis is a small function with its acceptance threshold in
//! its documentation. Searches are bounded: candidates are screened on a
//! fixed sample of positions before a full check, so a pair of 16 M
//! elements is diagnosed in about a second.

mod checks;
mod layout;
mod mask;
mod region;
pub mod rope;
mod stale;
#[cfg(test)]
mod tests;

pub use checks::{collapse, non_finite, precision, reshaped, scale, written};
pub use layout::{grouping, heads, permutation, shift};
pub use mask::mask;
pub use region::partial;
pub use stale::stale;

/// What a hypothesis found.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Cause {
    /// Every value of A is 0 where B's are not.
    Zeros,
    /// Every value of A is the same (`value`), where B's vary.
    Constant {
        /// A's one value.
        value: f64,
    },
    /// A region of A holds zeros (or one repeated value) where B has data:
    /// an output never written, or written by a kernel that did not finish.
    Unwritten {
        /// The region, per axis `[start, end)`.
        region: Vec<(usize, usize)>,
        /// The value A holds there.
        value: f64,
    },
    /// A has NaN or Inf where B is finite.
    NonFinite {
        /// The first such element (row-major order).
        first: Vec<usize>,
        /// NaNs in A where B is finite.
        nans: u64,
        /// Infinities in A where B is finite.
        infs: u64,
    },
    /// A's values along `axis` are (nearly) constant where B's vary: the
    /// variance collapsed (uniform logits, a softmax over a constant).
    Collapse {
        /// The axis.
        axis: usize,
        /// A's spread along it over B's (median over the other axes).
        ratio: f64,
    },
    /// A = c·B.
    Scale {
        /// The factor.
        c: f64,
    },
    /// A = −B.
    SignFlip,
    /// A = B + c.
    Offset {
        /// The offset.
        c: f64,
    },
    /// Each slice along `axis` is B's scaled by its own factor (a
    /// normalization applied per row, or with the wrong statistics).
    RowScale {
        /// The axis whose slices carry one factor each.
        axis: usize,
        /// The smallest and largest factor.
        range: (f64, f64),
    },
    /// A holds B's values in another order.
    Layout {
        /// What maps B onto A, in words.
        transform: String,
        /// B's shape as the transform reads it (after any split).
        split_shape: Vec<usize>,
        /// The axis order of that shape that gives A.
        permutation: Vec<usize>,
    },
    /// A equals B moved by `by` positions along `axis` (a cache or
    /// position read at the wrong offset).
    Shift {
        /// The axis.
        axis: usize,
        /// `A[i] = B[i − by]`.
        by: i64,
    },
    /// A's slices along `axis` (heads) are B's in another order or
    /// repeated another way.
    Heads {
        /// The axis.
        axis: usize,
        /// For each of A's slices, the B slice it equals.
        map: Vec<usize>,
        /// The pattern, in words (a permutation, repeat vs repeat_interleave).
        pattern: String,
    },
    /// Only this region differs; the rest agrees.
    Partial {
        /// The region, per axis `[start, end)`.
        region: Vec<(usize, usize)>,
        /// What the region is, in words.
        description: String,
    },
    /// A is B within the rounding of `format`: not a bug, and the
    /// tolerance that accepts it.
    Precision {
        /// f16, bf16, q8_0 or q4_0.
        format: String,
        /// The smallest absolute tolerance that accepts the pair.
        atol: f64,
        /// ‖A − B‖ / ‖B‖.
        relative_rms: f64,
    },
    /// A equals another tensor (`other`): a buffer reused without being
    /// written, or read from the wrong step or layer.
    Stale {
        /// The other tensor, as the caller named it.
        other: String,
    },
    /// The op's recorded parameters differ between the runs (SPEC.md §5.4,
    /// `tracedump.op`): the op itself was configured differently.
    Params {
        /// (parameter, A's value, B's value); `op` when the ops differ.
        differ: Vec<(String, String, String)>,
    },
    /// A and B hold the same values in row-major order under different
    /// shapes: the runs view one tensor differently, no value differs (the
    /// pair is a shape mismatch, not a numerical divergence).
    Reshaped {
        /// A's shape.
        a: Vec<usize>,
        /// B's shape.
        b: Vec<usize>,
    },
    /// Between the pair's agreeing inputs and its output, a run computes
    /// through ops the other run has no paired counterpart of (a rotation
    /// of K before a quantized cache, another attention kernel): the runs
    /// compute the output another way, or one of them records less.
    Path {
        /// A's unpaired ops, as `name = op(inputs)`, in execution order.
        only_a: Vec<String>,
        /// B's unpaired ops, likewise.
        only_b: Vec<String>,
    },
    /// A equals B's input rotated with another RoPE variant.
    Rope {
        /// The variant that gives A.
        a: rope::Variant,
        /// The variant that gives B, where one does.
        b: Option<rope::Variant>,
    },
    /// Query heads grouped onto KV heads differently (GQA `repeat` against
    /// `repeat_interleave`): along `axis` only the heads whose KV head is
    /// the same either way agree.
    Grouping {
        /// The heads axis.
        axis: usize,
        /// KV heads.
        kv_heads: usize,
        /// The heads that agree.
        agree: Vec<usize>,
    },
    /// The runs mask attention differently: in the last two axes (query
    /// rows, keys) each row sees one interval of keys in both runs (the
    /// rest exactly 0 or −∞), and the intervals differ.
    Mask {
        /// A's last visible key minus B's, where that is the same in every
        /// row that differs (±1: a causal mask off by one).
        end: Option<i64>,
        /// A's first visible key minus B's, likewise (a sliding window).
        start: Option<i64>,
        /// The first row where they differ.
        row: usize,
        /// The keys A's row sees, `[first, last]`.
        a: (usize, usize),
        /// The keys B's row sees.
        b: (usize, usize),
    },
    /// What is wrong is B's: `cause` holds for B against A (B all zeros,
    /// a region of B never written, NaN or Inf in B, B's variance
    /// collapsed), where the runs were given the other way round or the
    /// reference is the one at fault.
    InReference {
        /// The cause, with A and B's roles swapped.
        cause: Box<Cause>,
    },
}

/// A hypothesis that holds, with how strongly and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Finding {
    /// What it is.
    pub cause: Cause,
    /// 0..1: how much of the difference it explains (1: all of it, exactly).
    pub strength: f64,
    /// The evidence, in one sentence.
    pub evidence: String,
}

/// Logical, row-major values and their shape.
#[derive(Clone, Copy, Debug)]
pub struct Values<'a> {
    /// The values, row-major.
    pub data: &'a [f32],
    /// The shape, outermost first.
    pub shape: &'a [usize],
}

impl<'a> Values<'a> {
    /// Values of a shape (their product must be the length).
    pub fn new(data: &'a [f32], shape: &'a [usize]) -> Option<Self> {
        (shape.iter().product::<usize>() == data.len()).then_some(Values { data, shape })
    }
}

/// Below this a score is masked: torch adds `finfo.min` (−3.4e38), not
/// −∞, where it masks attention.
pub(crate) const MASKED_BELOW: f32 = -1e30;

/// A value that counts: finite and not a masked score.
pub(crate) fn unmasked(x: f32) -> bool {
    x.is_finite() && x > MASKED_BELOW
}

/// The median of `v` (reordered), `None` when it is empty.
pub(crate) fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    Some(*v.select_nth_unstable_by(mid, f64::total_cmp).1)
}

/// Element closeness used by every check: |a − b| ≤ atol + rtol·|b|, with
/// atol a millionth of B's largest magnitude (so that exact zeros and
/// denormal noise agree; masked scores at a framework's most negative
/// float are no magnitude) and rtol 10⁻³ (an f16 rounding passes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Close {
    atol: f32,
    rtol: f32,
}

impl Close {
    pub(crate) fn for_reference(b: &[f32]) -> Close {
        // (the most negative float a framework adds as a mask is no magnitude)
        let max = b
            .iter()
            .filter(|&&x| unmasked(x))
            .fold(0f32, |m, x| m.max(x.abs()));
        Close {
            atol: (max * 1e-6).max(f32::MIN_POSITIVE),
            rtol: 1e-3,
        }
    }

    /// [`Close::for_reference`] loosened to a comparison's tolerance
    /// (`|a − b| ≤ atol + rtol·|b|`) where that is looser.
    pub(crate) fn within(b: &[f32], atol: f64, rtol: f64) -> Close {
        let base = Close::for_reference(b);
        Close {
            atol: base.atol.max(atol as f32),
            rtol: base.rtol.max(rtol as f32),
        }
    }

    /// (An infinite B is close only to itself: its relative tolerance
    /// would accept any A.)
    #[inline]
    pub(crate) fn eq(&self, a: f32, b: f32) -> bool {
        a == b
            || (a.is_nan() && b.is_nan())
            || (b.is_finite() && (a - b).abs() <= self.atol + self.rtol * b.abs())
    }
}

/// Row-major strides of a shape, in elements.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// A fixed, well-spread sample of positions in `0..n` (all of them when
/// `n <= k`), the same on every call: checks screen candidates on it.
pub(crate) fn sample(n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ n as u64;
    let mut out: Vec<usize> = (0..k)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        })
        .collect();
    // the ends are where many bugs live (last token, last block)
    out.push(0);
    out.push(n - 1);
    out
}

/// Every hypothesis that holds for A (under test) against B (reference),
/// strongest first. A and B must have as many values; A's shape is the one
/// reported (B is read in A's shape where they differ). An agreeing pair
/// gives nothing; a pair within a format's rounding gives only
/// [`Cause::Precision`].
pub fn diagnose(a: Values<'_>, b: Values<'_>) -> Vec<Finding> {
    if a.data.len() != b.data.len() || a.data.is_empty() {
        return Vec::new();
    }
    let close = Close::for_reference(b.data);
    if a.data.iter().zip(b.data).all(|(&x, &y)| close.eq(x, y)) {
        // within 10^-3: precision, if there is any difference at all
        return precision(a, b).into_iter().collect();
    }
    if let Some(p) = precision(a, b) {
        return vec![p];
    }
    let b_as_a = Values {
        data: b.data,
        shape: a.shape,
    };
    // two independent halves of the catalogue, on two threads
    let (mut found, mut order, swapped): (Vec<Finding>, Vec<Finding>, Vec<Finding>) =
        std::thread::scope(|s| {
            let values = s.spawn(|| {
                let mut f = Vec::new();
                f.extend(non_finite(a, b_as_a));
                f.extend(written(a, b_as_a));
                f.extend(scale(a, b_as_a));
                f.extend(collapse(a, b_as_a));
                f.extend(mask(a, b_as_a));
                f
            });
            let mut order = Vec::new();
            order.extend(permutation(a, b));
            order.extend(shift(a, b_as_a));
            order.extend(heads(a, b_as_a));
            order.extend(grouping(a, b_as_a));
            // the same value checks with the runs' roles swapped: a reference
            // that holds zeros, NaNs or a collapsed variance where the run
            // under test does not (checks that A = f(B) already cover
            // B = f⁻¹(A))
            let swapped: Vec<Finding> = [
                non_finite(b_as_a, a),
                written(b_as_a, a),
                collapse(b_as_a, a),
            ]
            .into_iter()
            .flatten()
            .map(in_reference)
            .collect();
            // a panic in a check is a bug of ours: let it surface as one
            let found = values
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (found, order, swapped)
        });
    drop_implied_shifts(&mut order);
    found.extend(order);
    found.extend(swapped);
    // a region is a weaker statement than any exact explanation of it
    if !found.iter().any(|f| f.strength >= 0.9) {
        found.extend(partial(a, b_as_a));
    }
    found.sort_by(|x, y| y.strength.total_cmp(&x.strength));
    found
}

/// A finding of B against A (the roles swapped) as one about B.
fn in_reference(found: Finding) -> Finding {
    Finding {
        cause: Cause::InReference {
            cause: Box::new(found.cause),
        },
        strength: found.strength,
        evidence: swap_sides(&found.evidence),
    }
}

/// `text` with the words `A` and `B` swapped (`A's` included): the
/// evidence of a check run with the roles swapped, told the right way.
fn swap_sides(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "A" => "B",
            "B" => "A",
            w => w,
        });
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A roll along an axis (slices rotated, wrapping around) implies the
/// shift it makes where both overlap: the shift says less and goes.
fn drop_implied_shifts(order: &mut Vec<Finding>) {
    let rolled: Vec<usize> = order
        .iter()
        .filter_map(|f| match &f.cause {
            Cause::Heads { axis, map, .. } if layout::rotation(map).is_some() => Some(*axis),
            _ => None,
        })
        .collect();
    order.retain(|f| !matches!(f.cause, Cause::Shift { axis, .. } if rolled.contains(&axis)));
}

/// The order hypotheses (a permutation of axes, a shift or roll, heads in
/// another order) with elements compared within a comparison's tolerance
/// (`|a − b| ≤ atol + rtol·|b|`) where that is looser than [`diagnose`]'s
/// 10⁻³: between engines, f16 tables and fused kernels leave an output
/// that is B rearranged only up to that noise. Each finding is 0.05
/// weaker than its exact form and says so.
pub fn order_within(a: Values<'_>, b: Values<'_>, atol: f64, rtol: f64) -> Vec<Finding> {
    if a.data.len() != b.data.len() || a.data.is_empty() {
        return Vec::new();
    }
    let close = Close::within(b.data, atol, rtol);
    // A already B within it (a pair parted by its cosine alone): any
    // rearrangement of B would be as close, and none means anything
    if a.data.iter().zip(b.data).all(|(&x, &y)| close.eq(x, y)) {
        return Vec::new();
    }
    let b_as_a = Values {
        data: b.data,
        shape: a.shape,
    };
    let mut order: Vec<Finding> = [
        layout::permutation_with(a, b, close),
        layout::shift_with(a, b_as_a, close),
        layout::heads_with(a, b_as_a, close),
    ]
    .into_iter()
    .flatten()
    .collect();
    drop_implied_shifts(&mut order);
    for f in &mut order {
        f.strength -= 0.05;
        f.evidence = format!(
            "{} (within the comparison's tolerance: atol {atol:e}, rtol {rtol:e})",
            f.evidence
        );
    }
    order
}
