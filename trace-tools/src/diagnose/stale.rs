//! A equals another tensor: a buffer reused without being written.

use super::{sample, Cause, Close, Finding, Values};

/// A equals one of `others` (any tensor of either run with as many values:
/// the same tensor one step earlier, another layer's), within 10⁻³ on
/// every element. `others` are (name, values); the first that matches is
/// named.
pub fn stale<'o>(
    a: Values<'_>,
    others: impl IntoIterator<Item = (&'o str, &'o [f32])>,
) -> Option<Finding> {
    let screen = sample(a.data.len(), 64);
    others.into_iter().find_map(|(name, values)| {
        if values.len() != a.data.len() {
            return None;
        }
        let close = Close::for_reference(values);
        let same = |i: usize| close.eq(a.data[i], values[i]);
        (screen.iter().all(|&i| same(i)) && (0..a.data.len()).all(same)).then(|| Finding {
            evidence: format!("A equals `{name}`: a buffer reused without being written, or read from the wrong step or layer"),
            cause: Cause::Stale {
                other: name.to_owned(),
            },
            strength: 0.95,
        })
    })
}
