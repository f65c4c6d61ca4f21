//! Attention masks: which keys each query row sees, read from where the
//! values are masked (a softmax's exact zeros, a score's −∞ or the most
//! negative float a framework adds instead), compared between the runs.

use super::{Cause, Finding, Values, MASKED_BELOW};

/// The keys a query row sees: `[first, last]`.
type Keys = (usize, usize);
/// A row both runs say something of: (row, A's keys, B's keys).
type Row = (usize, Keys, Keys);

/// A value a mask hid: an attention probability of exactly 0, or a score
/// at −∞ (or at torch's `finfo.min`, which HF adds instead of −∞).
fn masked(x: f32) -> bool {
    x == 0.0 || x <= MASKED_BELOW
}

/// The keys `[first, last]` each query row of the last two axes sees,
/// the same in every leading slice (heads); `None` for a row that says
/// nothing (all its values equal: a row masked whole gives a uniform
/// softmax), or when some row's visible keys are not one interval, the
/// slices disagree, or the intervals do not move forward with the row
/// (not a mask pattern).
fn visible(v: Values<'_>) -> Option<Vec<Option<Keys>>> {
    let rank = v.shape.len();
    if rank < 2 {
        return None;
    }
    let (rows, keys) = (v.shape[rank - 2], v.shape[rank - 1]);
    if rows == 0 || keys < 2 {
        return None;
    }
    let slices = v.data.len() / (rows * keys);
    let mut out: Vec<Option<Keys>> = Vec::with_capacity(rows);
    for s in 0..slices {
        for i in 0..rows {
            let row = &v.data[(s * rows + i) * keys..][..keys];
            let seen = if row
                .iter()
                .all(|&x| x == row[0] || (x.is_nan() && row[0].is_nan()))
            {
                None
            } else {
                let first = row.iter().position(|&x| !masked(x))?;
                let last = keys - 1 - row.iter().rev().position(|&x| !masked(x))?;
                if row[first..=last].iter().any(|&x| masked(x)) {
                    return None;
                }
                Some((first, last))
            };
            if s == 0 {
                out.push(seen);
            } else if seen.is_some() && out[i].is_some() && seen != out[i] {
                return None;
            }
        }
    }
    // a mask's rows see keys that move forward with the row (causal, a
    // sliding window): zeros at other places are no mask
    let seen: Vec<Keys> = out.iter().flatten().copied().collect();
    seen.windows(2)
        .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        .then_some(out)
}

/// The runs mask their attention differently: in the last two axes
/// (query rows, keys), each row's visible keys are one interval in both
/// runs (values masked to exactly 0 or −∞ outside it), every leading slice
/// (head) has the same, and the intervals differ in some row. When they
/// differ by the same number of keys in every row that differs, that is
/// the finding's offset (a causal mask off by one: `end` = ±1); a run that
/// sees every key in every row where the other hides some applies no mask.
pub fn mask(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    let (va, vb) = (visible(a)?, visible(b)?);
    let both: Vec<Row> = va
        .iter()
        .zip(&vb)
        .enumerate()
        .filter_map(|(i, (x, y))| Some((i, (*x)?, (*y)?)))
        .collect();
    let &(row, ra, rb) = both.iter().find(|(_, x, y)| x != y)?;
    let keys = a.shape[a.shape.len() - 1];
    // the offsets over the rows that differ (a mask off by one leaves the
    // first row alone when it has one key to see either way)
    let differ: Vec<Row> = both.iter().filter(|(_, x, y)| x != y).copied().collect();
    let same = |d: &dyn Fn(&Row) -> i64| {
        let first = d(&differ[0]);
        differ.iter().all(|x| d(x) == first).then_some(first)
    };
    let end = same(&|(_, x, y)| x.1 as i64 - y.1 as i64).filter(|&d| d != 0);
    let start = same(&|(_, x, y)| x.0 as i64 - y.0 as i64).filter(|&d| d != 0);
    let all_keys = (0, keys - 1);
    let keys_text = |(lo, hi): Keys| format!("keys {lo}..={hi}");
    let example = format!("row {row}: A sees {}, B {}", keys_text(ra), keys_text(rb));
    let said = if both.iter().all(|(_, x, _)| *x == all_keys) {
        "A masks nothing (every row sees every key) where B hides some: A applies no mask, or the wrong one".to_string()
    } else if both.iter().all(|(_, _, y)| *y == all_keys) {
        "B masks nothing (every row sees every key) where A hides some: A masks what B does not"
            .to_string()
    } else {
        let n = |d: i64| {
            let k = d.unsigned_abs();
            format!("{k} key{}", if k == 1 { "" } else { "s" })
        };
        match (start, end) {
            (None, Some(d)) => format!(
                "where the rows differ, A's see {} {} than B's at their end: the causal mask is off by {d}",
                n(d),
                if d > 0 { "more" } else { "fewer" }
            ),
            (Some(d), None) => format!(
                "where the rows differ, A's start {} {} than B's: a sliding window of another width",
                n(d),
                if d > 0 { "later" } else { "earlier" }
            ),
            (Some(s), Some(e)) if s == e => {
                format!("A's visible keys are B's moved by {e}: a mask built for other positions")
            }
            _ => "the rows see other keys in A than in B".to_string(),
        }
    };
    Some(Finding {
        evidence: format!("the runs mask attention differently: {said} ({example})"),
        cause: Cause::Mask {
            end,
            start,
            row,
            a: ra,
            b: rb,
        },
        strength: 0.95,
    })
}
