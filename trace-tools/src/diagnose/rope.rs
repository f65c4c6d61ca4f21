//! RoPE variants: which rotation turns B's input into A.
//!
//! Given the tensor before RoPE (`x`, `[T, H, D]` row-major), the position
//! of each of its T rows, and the two outputs, [`rope`] finds a variant
//! (pairing and base) that gives A and one that gives B, and reports them
//! when they differ.

use super::{Cause, Close, Finding, Values};

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// Dimensions (2i, 2i+1): llama.cpp's normal mode, GPT-J.
    Adjacent,
    /// Dimensions (i, i + D/2): NEOX mode, HF transformers' `rotate_half`.
    Neox,
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
                let theta = pos * variant.base.powf(-2.0 * i as f64 / d as f64);
                let (s, c) = theta.sin_cos();
                let (p, q) = match variant.pairing {
                    Pairing::Adjacent => (base + 2 * i, base + 2 * i + 1),
                    Pairing::Neox => (base + i, base + i + half),
                };
                let (x0, x1) = (x[p] as f64, x[q] as f64);
                out[p] = (x0 * c - x1 * s) as f32;
                out[q] = (x0 * s + x1 * c) as f32;
            }
        }
    }
    out
}

/// The variant (of both pairings and [`BASES`]) that gives `target` from `x`.
fn which(x: &[f32], shape: [usize; 3], positions: &[f64], target: &[f32]) -> Option<Variant> {
    let close = Close::for_reference(target);
    [Pairing::Adjacent, Pairing::Neox]
        .into_iter()
        .flat_map(|pairing| BASES.into_iter().map(move |base| Variant { pairing, base }))
        .find(|&v| {
            apply(x, shape, positions, v)
                .iter()
                .zip(target)
                .all(|(&p, &q)| close.eq(p, q))
        })
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
    let name = |v: Variant| {
        format!(
            "{} pairing, base {}",
            match v.pairing {
                Pairing::Adjacent => "adjacent (normal)",
                Pairing::Neox => "NEOX (rotate_half)",
            },
            v.base
        )
    };
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
