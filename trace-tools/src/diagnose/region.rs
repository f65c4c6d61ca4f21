//! A divergence confined to a region: only the last token, positions from
//! p on, one head, the first n columns, one block of 32.

use super::checks::{differing_box, for_each_in, region_text};
use super::{strides, Cause, Close, Finding, Values};

/// Only a region differs: the box around every differing element leaves
/// part of the tensor out (on some axis it is not the whole extent), and
/// at least a quarter of what it holds differs (a few stray elements are
/// not a region). Everything outside it agrees within 10⁻³.
pub fn partial(a: Values<'_>, b: Values<'_>) -> Option<Finding> {
    let close = Close::for_reference(b.data);
    let region = differing_box(a, b, close)?;
    let strict: Vec<usize> = (0..region.len())
        .filter(|&k| region[k] != (0, a.shape[k]))
        .collect();
    if strict.is_empty() {
        return None;
    }
    let st = strides(a.shape);
    let (mut inside, mut differing) = (0usize, 0usize);
    for_each_in(&region, &st, |i| {
        inside += 1;
        differing += usize::from(!close.eq(a.data[i], b.data[i]));
    });
    if differing * 4 < inside {
        return None;
    }
    let description = strict
        .iter()
        .map(|&k| axis_part(k, region[k], a.shape[k], a.shape.len()))
        .collect::<Vec<_>>()
        .join(", ");
    Some(Finding {
        evidence: format!(
            "only {} differs ({description}); everything else agrees",
            region_text(&region)
        ),
        cause: Cause::Partial {
            region,
            description,
        },
        strength: 0.7,
    })
}

/// One axis of a region in words.
fn axis_part(axis: usize, (lo, hi): (usize, usize), n: usize, rank: usize) -> String {
    let last_axis = axis + 1 == rank;
    match (lo, hi) {
        (lo, hi) if hi == lo + 1 && hi == n && axis == 0 => {
            format!("only the last index of axis 0 (the last row or token, {lo})")
        }
        (lo, hi) if hi == lo + 1 => {
            format!("only index {lo} of axis {axis} (one slice: a head, a row)")
        }
        (lo, hi) if last_axis && hi - lo == 32 && lo % 32 == 0 => {
            format!("one block of 32 along the last axis ({lo}..{hi})")
        }
        (0, hi) => format!("the first {hi} of axis {axis}"),
        (lo, hi) if hi == n => format!("positions {lo} and later along axis {axis}"),
        (lo, hi) => format!("{lo}..{hi} of axis {axis}"),
    }
}
