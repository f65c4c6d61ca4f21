//! Hypotheses on the order of the values: a permutation of axes (with an
//! axis split first: a head split the other way), a shift along an axis,
//! slices (heads) in another order or repeated another way.

use super::{sample, strides, Cause, Close, Finding, Values};

/// Candidates are screened on this many sampled positions before a full check.
const SCREEN: usize = 64;
/// At most this many (split, permutation) candidates are screened.
const MAX_CANDIDATES: usize = 4000;

/// Whether A[i] ≈ B[map(i)] for the screening sample, then for every i.
fn holds(a: &[f32], b: &[f32], close: Close, map: impl Fn(usize) -> Option<usize>) -> bool {
    let check = |i: usize| map(i).is_some_and(|j| close.eq(a[i], b[j]));
    sample(a.len(), SCREEN).into_iter().all(check) && (0..a.len()).all(check)
}

/// The permutations of `0..n` in lexicographic order (Heap's would do; n ≤ 5).
fn permutations(n: usize) -> Vec<Vec<usize>> {
    let mut out = vec![];
    let mut p: Vec<usize> = (0..n).collect();
    loop {
        out.push(p.clone());
        // next permutation
        let Some(i) = (0..n.saturating_sub(1)).rev().find(|&i| p[i] < p[i + 1]) else {
            return out;
        };
        let j = (i + 1..n).rev().find(|&j| p[j] > p[i]).unwrap_or(i);
        p.swap(i, j);
        p[i + 1..].reverse();
    }
}

/// The flat index into B (of `shape`) of A's flat index `i`, when A is B
/// with its axes in `perm` order.
fn permuted_index(i: usize, shape: &[usize], st: &[usize], perm: &[usize], pst: &[usize]) -> usize {
    let mut rest = i;
    let mut j = 0;
    for (k, &p) in perm.iter().enumerate() {
        let idx = rest / pst[k];
        rest %= pst[k];
        j += idx * st[p];
        debug_assert!(idx < shape[p]);
    }
    j
}

/// B's shape with axis `axis` split in two, for each divisor worth trying.
/// Which axis was split, into which two extents.
type Split = Option<(usize, usize, usize)>;

fn splits(shape: &[usize]) -> Vec<(Split, Vec<usize>)> {
    let mut out = vec![(None, shape.to_vec())];
    for (axis, &n) in shape.iter().enumerate() {
        let divisors: Vec<usize> = (2..n).filter(|d| n % d == 0 && d * d <= n * n).collect();
        for &d in divisors.iter().take(16) {
            let mut s = shape[..axis].to_vec();
            s.extend([d, n / d]);
            s.extend(&shape[axis + 1..]);
            out.push((Some((axis, d, n / d)), s));
        }
    }
    out
}

/// A holds B's values in another order: B's axes permuted (after splitting
/// one axis in two, at most), then read as A. Screened on sampled
/// positions, then checked on every element within 10⁻³.
pub fn permutation(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    permutation_with(a, b, Close::for_reference(b.data))
}

/// [`permutation`], elements compared with `close`.
pub(crate) fn permutation_with(a: Values<'_>, b: Values<'_>, close: Close) -> Option<Finding> {
    if a.data.len() != b.data.len() || a.data.len() < 2 {
        return None;
    }
    // a permutation keeps the sum and the sum of squares
    let moments = |v: &[f32]| {
        v.iter().fold((0f64, 0f64), |(s, q), &x| {
            (s + x as f64, q + x as f64 * x as f64)
        })
    };
    let ((sa, qa), (sb, qb)) = (moments(a.data), moments(b.data));
    let n = a.data.len() as f64;
    if (qa - qb).abs() > 2e-3 * qb.max(f64::MIN_POSITIVE)
        || (sa - sb).abs() > 1e-3 * (n * qb).sqrt()
    {
        return None;
    }
    let mut tried = 0;
    // the unsplit shape first, then splits: the simplest explanation wins
    for (split, shape) in splits(b.shape) {
        let rank = shape.len();
        if rank > 5 {
            continue;
        }
        let st = strides(&shape);
        for perm in permutations(rank) {
            if perm.iter().enumerate().all(|(i, &p)| i == p) {
                continue;
            }
            // permuting axes of size 1 changes nothing
            let moved: Vec<usize> = perm.iter().copied().filter(|&p| shape[p] > 1).collect();
            if moved.windows(2).all(|w| w[0] < w[1]) {
                continue;
            }
            tried += 1;
            if tried > MAX_CANDIDATES {
                return None;
            }
            let pshape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let pst = strides(&pshape);
            if holds(a.data, b.data, close, |i| {
                Some(permuted_index(i, &shape, &st, &perm, &pst))
            }) {
                let transform = describe(a.shape, b.shape, split, &perm);
                return Some(Finding {
                    evidence: format!("A holds B's values in another order: {transform}"),
                    cause: Cause::Layout {
                        transform,
                        split_shape: shape,
                        permutation: perm,
                    },
                    strength: 0.97,
                });
            }
        }
    }
    None
}

/// The transform in words.
fn describe(a_shape: &[usize], b_shape: &[usize], split: Split, perm: &[usize]) -> String {
    let swapped: Vec<usize> = (0..perm.len()).filter(|&i| perm[i] != i).collect();
    let same_shape = a_shape == b_shape;
    match split {
        None if swapped.len() == 2 && !same_shape => format!(
            "B with axes {} and {} swapped (transpose({}, {}))",
            swapped[0], swapped[1], swapped[0], swapped[1]
        ),
        None if perm.iter().rev().copied().eq(0..perm.len()) && same_shape => {
            "B's values in column-major order read as row-major: a reshape where a permute (transpose) was needed".into()
        }
        None if same_shape => format!(
            "B permuted ({perm:?}) but read in B's own shape: a reshape where a permute was needed"
        ),
        None => format!("B permuted as {perm:?}"),
        Some((axis, x, y)) if swapped == [axis, axis + 1] => format!(
            "B's axis {axis} split as [{y}, {x}] instead of [{x}, {y}]: a head split the other way (e.g. [T, H·D] read as [T, D, H])"
        ),
        Some((axis, x, y)) => format!(
            "B's axis {axis} split into [{x}, {y}], then its axes permuted as {perm:?}"
        ),
    }
}

/// A equals B moved by k positions along an axis, where they overlap (at
/// least half of the axis): A[.., i, ..] = B[.., i − k, ..], |k| ≤ 64.
pub fn shift(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    shift_with(a, b, Close::for_reference(b.data))
}

/// [`shift`], elements compared with `close`.
pub(crate) fn shift_with(a: Values<'_>, b: Values<'_>, close: Close) -> Option<Finding> {
    let st = strides(a.shape);
    for (axis, &n) in a.shape.iter().enumerate() {
        if n < 2 {
            continue;
        }
        let max = (n / 2).min(64) as i64;
        for by in (1..=max).flat_map(|k| [k, -k]) {
            let map = |i: usize| {
                let idx = (i / st[axis]) % n;
                let from = idx as i64 - by;
                (0..n as i64)
                    .contains(&from)
                    .then(|| (i as i64 - by * st[axis] as i64) as usize)
            };
            // only the overlap is compared; the screen needs enough of it
            let check = |i: usize| map(i).is_none_or(|j| close.eq(a.data[i], b.data[j]));
            let screened = sample(a.data.len(), SCREEN * 4);
            if screened.iter().filter(|&&i| map(i).is_some()).count() < 8
                || !screened.into_iter().all(check)
                || !(0..a.data.len()).all(check)
            {
                continue;
            }
            // B must not be periodic along the axis: moved by `by` it must differ
            let b_moved_differs =
                (0..b.data.len()).any(|i| map(i).is_some_and(|j| !close.eq(b.data[i], b.data[j])));
            if !b_moved_differs {
                continue;
            }
            return Some(Finding {
                evidence: format!(
                    "A equals B moved by {by} along axis {axis} (A[i] = B[i − {by}] wherever both exist): a cache or position read at the wrong offset"
                ),
                cause: Cause::Shift { axis, by },
                strength: 0.96,
            });
        }
    }
    None
}

/// The slices along an axis (heads) are B's in another order, or repeated
/// another way (GQA's `repeat` against `repeat_interleave`): every slice of
/// A equals some slice of B within 10⁻³, and not the same one.
pub fn heads(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    heads_with(a, b, Close::for_reference(b.data))
}

/// [`heads`], elements compared with `close`.
pub(crate) fn heads_with(a: Values<'_>, b: Values<'_>, close: Close) -> Option<Finding> {
    let st = strides(a.shape);
    for (axis, &n) in a.shape.iter().enumerate() {
        if !(2..=256).contains(&n) || n == a.data.len() {
            continue;
        }
        let inner = st[axis];
        let outer = a.data.len() / (n * inner);
        let slice_len = outer * inner;
        // the element of slice h at position p (0..slice_len)
        let at = |h: usize, p: usize| (p / inner) * n * inner + h * inner + p % inner;
        let probe = sample(slice_len, 16);
        let equal_at = |ha: usize, hb: usize, ps: &[usize]| {
            ps.iter()
                .all(|&p| close.eq(a.data[at(ha, p)], b.data[at(hb, p)]))
        };
        let mut map = Vec::with_capacity(n);
        for h in 0..n {
            let candidates = std::iter::once(h).chain((0..n).filter(|&g| g != h));
            let Some(g) = candidates
                .filter(|&g| equal_at(h, g, &probe))
                .find(|&g| (0..slice_len).all(|p| close.eq(a.data[at(h, p)], b.data[at(g, p)])))
            else {
                break;
            };
            map.push(g);
        }
        if map.len() < n || map.iter().enumerate().all(|(i, &g)| i == g) {
            continue;
        }
        // B's slices must differ among themselves for a map to mean anything
        let distinct_b =
            (1..n).any(|g| (0..slice_len).any(|p| !close.eq(b.data[at(0, p)], b.data[at(g, p)])));
        if !distinct_b {
            continue;
        }
        let (pattern, repeat) = head_pattern(a, b, axis, close, &map);
        return Some(Finding {
            evidence: format!(
                "along axis {axis}, A's slices are B's {pattern}: A[h] = B[map[h]], map = {}",
                short_list(&map)
            ),
            cause: Cause::Heads { axis, map, pattern },
            // a repeat scheme says more than the axis split it coincides
            // with; a plain permutation less (an axis split swapped is also
            // a permutation of columns), but more than a shift, which only
            // covers an overlap
            strength: if repeat { 0.985 } else { 0.965 },
        });
    }
    None
}

/// The name of a slice map: a permutation, or one repeat scheme for another.
fn head_pattern(
    a: Values<'_>,
    b: Values<'_>,
    axis: usize,
    close: Close,
    map: &[usize],
) -> (String, bool) {
    let n = map.len();
    let st = strides(a.shape);
    let inner = st[axis];
    let slice_len = a.data.len() / n;
    let at = |h: usize, p: usize| (p / inner) * n * inner + h * inner + p % inner;
    let same = |ha: usize, hb: usize| {
        (0..slice_len).all(|p| close.eq(a.data[at(ha, p)], b.data[at(hb, p)]))
    };
    for r in (2..n).filter(|r| n % r == 0) {
        let g = n / r;
        // B = repeat_interleave(kv, r): B[j] = kv[j / r]; A = repeat: A[i] = kv[i % g]
        if (0..n).all(|i| same(i, (i % g) * r)) {
            return (format!(
                "repeated with `repeat` ({g} KV heads tiled {r} times: head i reads KV head i mod {g}) where B used `repeat_interleave` (each KV head {r} times in a row)"
            ), true);
        }
        // B = repeat: B[j] = kv[j % g]; A = repeat_interleave: A[i] = kv[i / r]
        if (0..n).all(|i| same(i, i / r)) {
            return (format!(
                "repeated with `repeat_interleave` (each of {g} KV heads {r} times in a row) where B used `repeat` (tiled: head i reads KV head i mod {g})"
            ), true);
        }
    }
    if let Some(k) = rotation(map) {
        return (
            format!(
                "rolled by {k} (A[i] = B[(i + {k}) mod {n}], torch.roll by −{k}): positions read at an offset that wraps around, e.g. a ring buffer's start"
            ),
            false,
        );
    }
    let mut seen = map.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() == n {
        (
            "in another order (a permutation of the heads)".into(),
            false,
        )
    } else {
        (
            format!("with some repeated and {} missing", n - seen.len()),
            false,
        )
    }
}

/// Query heads grouped onto KV heads the other way: along an axis of n
/// slices (heads), exactly those slices agree whose KV head is the same
/// under `repeat` (head h reads KV head h mod g) and `repeat_interleave`
/// (h / r), for one split n = g·r (g, r ≥ 2). The scores and outputs of
/// the other heads mix a different K into each, so no slice map holds;
/// the pattern of the heads that agree is the evidence.
pub fn grouping(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    let close = Close::for_reference(b.data);
    let st = strides(a.shape);
    // (heads are never the last axis: that is features or keys)
    for (axis, &n) in a
        .shape
        .iter()
        .enumerate()
        .take(a.shape.len().saturating_sub(1))
    {
        if !(4..=256).contains(&n) {
            continue;
        }
        let inner = st[axis];
        let outer = a.data.len() / (n * inner);
        let agree: Vec<bool> = (0..n)
            .map(|h| {
                (0..outer).all(|o| {
                    let at = (o * n + h) * inner;
                    (at..at + inner).all(|i| close.eq(a.data[i], b.data[i]))
                })
            })
            .collect();
        let fits: Vec<usize> = (2..n)
            .filter(|r| n % r == 0 && n / r >= 2)
            .filter(|&r| (0..n).all(|h| agree[h] == (h / r == h % (n / r))))
            .collect();
        let [r] = fits[..] else {
            continue;
        };
        let g = n / r;
        let same: Vec<usize> = (0..n).filter(|&h| agree[h]).collect();
        return Some(Finding {
            evidence: format!(
                "along axis {axis}, only heads {} agree: those whose KV head is the same whether \
                 {n} query heads read {g} KV heads with `repeat` (head h reads KV head h mod {g}) \
                 or with `repeat_interleave` (h / {r}): the runs group query heads onto KV heads \
                 differently (GQA)",
                short_list(&same)
            ),
            cause: Cause::Grouping {
                axis,
                kv_heads: g,
                agree: same,
            },
            strength: 0.9,
        });
    }
    None
}

/// k when `map` is a cyclic rotation by k ≠ 0: map[i] = (i + k) mod n.
pub(crate) fn rotation(map: &[usize]) -> Option<usize> {
    let n = map.len();
    let k = *map.first()?;
    (k != 0 && map.iter().enumerate().all(|(i, &g)| g == (i + k) % n)).then_some(k)
}

/// A list, its first 16 items and a count of the rest.
fn short_list(v: &[usize]) -> String {
    if v.len() <= 16 {
        return format!("{v:?}");
    }
    format!("{:?} … ({} more)", &v[..16], v.len() - 16).replace("] …", ", …]")
}
