//! RoPE variants: which rotation turns B's input into A.
//!
//! Given the tensor before RoPE (`x`, `[T, H, D]` row-major), the position
//! of each of its T rows, and the two outputs, [`rope`] finds a variant
//! (pairing and base) that gives A and one that gives B, and reports them
//! when they differ.

use super::{Cause, Close, Finding, Values};

/// How RoPE pairs the dimensions of a head, and which frequency each
/// dimension turns at.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// Dimensions (2i, 2i+1), both at frequency i: llama.cpp's normal
    /// mode, GPT-J.
    Adjacent,
    /// Dimensions (i, i + D/2), both at frequency i: NEOX mode, HF
    /// transformers' `rotate_half`.
    Neox,
    /// Dimensions (2i, 2i+1) paired, but dimension j turning at frequency
    /// j mod D/2: HF's cos/sin (`cat(freqs, freqs)`) applied to adjacent
    /// pairs. Not a rotation: a port of one layout onto the other.
    AdjacentWithNeoxFrequencies,
    /// Dimensions (i, i + D/2) paired, but dimension j turning at
    /// frequency j / 2: interleaved cos/sin (`repeat_interleave(freqs,
    /// 2)`) applied with `rotate_half`.
    NeoxWithAdjacentFrequencies,
}

impl Pairing {
    /// The pairings tried: the two RoPEs, then their mixtures.
    const ALL: [Pairing; 4] = [
        Pairing::Adjacent,
        Pairing::Neox,
        Pairing::AdjacentWithNeoxFrequencies,
        Pairing::NeoxWithAdjacentFrequencies,
    ];

    /// The dimensions of pair i of a head of `d`, and the frequency index
    /// each turns at.
    fn pair(self, i: usize, d: usize) -> ((usize, usize), (usize, usize)) {
        let half = d / 2;
        match self {
            Pairing::Adjacent => ((2 * i, 2 * i + 1), (i, i)),
            Pairing::Neox => ((i, i + half), (i, i)),
            Pairing::AdjacentWithNeoxFrequencies => {
                ((2 * i, 2 * i + 1), ((2 * i) % half, (2 * i + 1) % half))
            }
            Pairing::NeoxWithAdjacentFrequencies => ((i, i + half), (i / 2, (i + half) / 2)),
        }
    }

    /// In words.
    fn describe(self) -> &'static str {
        match self {
            Pairing::Adjacent => "adjacent (normal)",
            Pairing::Neox => "NEOX (rotate_half)",
            Pairing::AdjacentWithNeoxFrequencies => {
                "adjacent pairs turned at NEOX's frequencies (cat(freqs, freqs) cos/sin applied to interleaved pairs)"
            }
            Pairing::NeoxWithAdjacentFrequencies => {
                "NEOX halves turned at interleaved frequencies (repeat_interleave cos/sin applied with rotate_half)"
            }
        }
    }
}

/// One RoPE: a pairing and a frequency base.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Variant {
    /// Which dimensions rotate together.
    pub pairing: Pairing,
    /// θ_i = base^(−2i/D).
    pub base: f64,
}

/// The bases tried: the usual ones of Llama 1–3, Qwen, Mistral and others.
pub const BASES: [f64; 6] = [
    10_000.0,
    500_000.0,
    1_000_000.0,
    100_000.0,
    1_000.0,
    5_000_000.0,
];

/// `x` (`[T, H, D]`) rotated by `variant` at `positions` (one per row).
pub fn apply(x: &[f32], shape: [usize; 3], positions: &[f64], variant: Variant) -> Vec<f32> {
    let [t, h, d] = shape;
    let mut out = x.to_vec();
    let half = d / 2;
    for (ti, &pos) in positions.iter().enumerate().take(t) {
        for hi in 0..h {
            let base = (ti * h + hi) * d;
            for i in 0..half {
                let ((p, q), (fp, fq)) = variant.pairing.pair(i, d);
                let angle = |f: usize| pos * variant.base.powf(-2.0 * f as f64 / d as f64);
                let ((sp, cp), (sq, cq)) = (angle(fp).sin_cos(), angle(fq).sin_cos());
                let (p, q) = (base + p, base + q);
                let (x0, x1) = (x[p] as f64, x[q] as f64);
                out[p] = (x0 * cp - x1 * sp) as f32;
                out[q] = (x0 * sq + x1 * cq) as f32;
            }
        }
    }
    out
}

/// The variant (of both pairings and [`BASES`], else a base fitted to the
/// values) that gives `target` from `x`.
fn which(x: &[f32], shape: [usize; 3], positions: &[f64], target: &[f32]) -> Option<Variant> {
    let close = Close::for_reference(target);
    let gives = |v: Variant| {
        apply(x, shape, positions, v)
            .iter()
            .zip(target)
            .all(|(&p, &q)| close.eq(p, q))
    };
    Pairing::ALL
        .into_iter()
        .flat_map(|pairing| BASES.into_iter().map(move |base| Variant { pairing, base }))
        .find(|&v| gives(v))
        .or_else(|| {
            // (a base is fitted for the two RoPEs only)
            [Pairing::Adjacent, Pairing::Neox]
                .into_iter()
                .find_map(|pairing| {
                    let base = fit_base(x, shape, positions, target, pairing)?;
                    // a round base where one fits (a config says 20000, not 19999.97)
                    let round = base.round();
                    [round, base]
                        .into_iter()
                        .map(|base| Variant { pairing, base })
                        .find(|&v| gives(v))
                })
        })
}

/// The base a rotation of `x` into `target` with `pairing` used, from the
/// angle of the second frequency at the first non-zero position (in the
/// head where that pair is largest): θ₁ = base^(−2/D). `None` when the
/// angle says no base (a rotation by another rule); the caller checks the
/// base on every value.
fn fit_base(
    x: &[f32],
    shape: [usize; 3],
    positions: &[f64],
    target: &[f32],
    pairing: Pairing,
) -> Option<f64> {
    let [t, h, d] = shape;
    if d < 4 || x.len() != t * h * d || target.len() != x.len() {
        return None;
    }
    let (row, &pos) = positions
        .iter()
        .enumerate()
        .take(t)
        .find(|(_, &p)| p > 0.0)?;
    let ((p, q), (fp, fq)) = pairing.pair(1, d);
    if (fp, fq) != (1, 1) {
        return None; // no one angle to read a base from
    }
    let at = |head: usize| (row * h + head) * d;
    let head = (0..h).max_by(|&i, &j| {
        let norm = |k: usize| (x[at(k) + p] as f64).hypot(x[at(k) + q] as f64);
        norm(i).total_cmp(&norm(j))
    })?;
    let (x0, x1) = (x[at(head) + p] as f64, x[at(head) + q] as f64);
    let (y0, y1) = (target[at(head) + p] as f64, target[at(head) + q] as f64);
    let angle = (x0 * y1 - x1 * y0).atan2(x0 * y0 + x1 * y1);
    let theta = angle / pos;
    if !(theta > 0.0 && theta < 1.0) {
        return None;
    }
    let base = theta.powf(-(d as f64) / 2.0);
    base.is_finite().then_some(base)
}

/// A is `x` rotated with another RoPE variant than B: the other pairing
/// (normal against NEOX) or another base. `x` is the pre-RoPE tensor
/// (`[T, H, D]`, as A and B), `positions` its rows' positions.
pub fn rope(a: Values<'_>, b: Values<'_>, x: &[f32], positions: &[f64]) -> Option<Finding> {
    let &[t, h, d] = a.shape else { return None };
    if x.len() != a.data.len() || positions.len() != t || d % 2 != 0 {
        return None;
    }
    let shape = [t, h, d];
    let va = which(x, shape, positions, a.data)?;
    let vb = which(x, shape, positions, b.data);
    if vb == Some(va) {
        return None;
    }
    let name = |v: Variant| format!("{} pairing, base {}", v.pairing.describe(), v.base);
    Some(Finding {
        evidence: format!(
            "A is the input rotated with {}{}",
            name(va),
            vb.map(|v| format!("; B with {}", name(v)))
                .unwrap_or_default()
        ),
        cause: Cause::Rope { a: va, b: vb },
        strength: 0.97,
    })
}
