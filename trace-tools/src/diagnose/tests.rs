//! Planted bugs, across shapes and seeds: the top hypothesis must name the
//! bug in ≥ 95 % of cases, and clean pairs must get nothing but
//! "precision". The generators below are not the cases the thresholds were
//! chosen on: shapes and values vary with the seed.

use super::rope::{apply, Pairing, Variant};
use super::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
    /// Roughly normal (sum of uniforms).
    fn normal(&mut self) -> f32 {
        (0..4)
            .map(|_| (self.next() >> 11) as f32 / (1u64 << 53) as f32)
            .sum::<f32>()
            - 2.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

fn bf16_round(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// ggml's q8_0 / q4_0 round trip of blocks of 32 (quantize_row_q8_0_ref,
/// quantize_row_q4_0_ref, with the scale stored in f16).
fn q_round(v: &[f32], q4: bool) -> Vec<f32> {
    v.chunks(32)
        .flat_map(|b| {
            if q4 {
                let max = b
                    .iter()
                    .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let dh = f16_round(d);
                b.iter()
                    .map(|&x| ((x * id + 8.5) as i32).min(15) as f32 - 8.0)
                    .map(|q| q * dh)
                    .collect::<Vec<_>>()
            } else {
                let amax = b.iter().fold(0f32, |m, &x| m.max(x.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let dh = f16_round(d);
                b.iter().map(|&x| (x * id).round() * dh).collect()
            }
        })
        .collect()
}

/// B's values with axes permuted as `perm` (row-major).
fn permute(v: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let st = strides(shape);
    let pshape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let pst = strides(&pshape);
    (0..v.len())
        .map(|i| {
            let mut rest = i;
            let mut j = 0;
            for (k, &p) in perm.iter().enumerate() {
                j += rest / pst[k] * st[p];
                rest %= pst[k];
            }
            v[j]
        })
        .collect()
}

fn shape3(r: &mut Rng) -> Vec<usize> {
    vec![
        r.pick(&[3, 5, 6, 8, 9]),
        r.pick(&[2, 4, 8]),
        r.pick(&[8, 16, 32, 64]),
    ]
}

/// One planted case: (what the top hypothesis must be, A, B, shape).
type Case = (&'static str, Vec<f32>, Vec<f32>, Vec<usize>);

fn planted(seed: u64) -> Vec<Case> {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut cases: Vec<Case> = Vec::new();
    let s = shape3(&mut r);
    let n: usize = s.iter().product();
    let b = r.vec(n);
    let (t, h, d) = (s[0], s[1], s[2]);

    cases.push(("zeros", vec![0.0; n], b.clone(), s.clone()));
    cases.push((
        "constant",
        vec![0.25 + r.below(4) as f32; n],
        b.clone(),
        s.clone(),
    ));
    let from = 1 + r.below(t - 1);
    let mut a = b.clone();
    a[from * h * d..].fill(0.0);
    cases.push(("unwritten", a, b.clone(), s.clone()));
    let mut a = b.clone();
    a[r.below(n)] = if r.below(2) == 0 {
        f32::NAN
    } else {
        f32::INFINITY
    };
    cases.push(("non_finite", a, b.clone(), s.clone()));
    // logits gone uniform: every row its mean
    let v = r.pick(&[32, 100, 256]);
    let logits = r.vec(t * v);
    let uniform: Vec<f32> = logits
        .chunks(v)
        .flat_map(|row| {
            let m = row.iter().sum::<f32>() / v as f32;
            vec![m; v]
        })
        .collect();
    cases.push(("collapse", uniform, logits, vec![t, v]));
    let c = r.pick(&[0.5f32, 1.7, 2.0, 0.125, 3.3]);
    cases.push((
        "scale",
        b.iter().map(|x| x * c).collect(),
        b.clone(),
        s.clone(),
    ));
    cases.push((
        "sign_flip",
        b.iter().map(|x| -x).collect(),
        b.clone(),
        s.clone(),
    ));
    let off = r.pick(&[0.3f32, -1.0, 0.05]);
    cases.push((
        "offset",
        b.iter().map(|x| x + off).collect(),
        b.clone(),
        s.clone(),
    ));
    let factors: Vec<f32> = (0..t).map(|_| 0.5 + r.below(100) as f32 / 50.0).collect();
    let a: Vec<f32> = b
        .iter()
        .enumerate()
        .map(|(i, x)| x * factors[i / (h * d)])
        .collect();
    cases.push(("row_scale", a, b.clone(), s.clone()));
    // layout: a permuted view read in B's shape; a transpose; column-major;
    // a head split the other way
    cases.push(("layout", permute(&b, &s, &[1, 0, 2]), b.clone(), s.clone()));
    cases.push((
        "layout",
        permute(&b, &s, &[0, 2, 1]),
        b.clone(),
        vec![t, d, h],
    ));
    let m = r.vec(t * d);
    cases.push((
        "layout",
        permute(&m, &[t, d], &[1, 0]),
        m.clone(),
        vec![t, d],
    ));
    let split = permute(&b, &s, &[0, 2, 1]);
    cases.push(("layout", split, b.clone(), vec![t, h * d]));
    // shift: the cache read one or more rows off
    let k = 1 + r.below(t / 2);
    let mut a = r.vec(n);
    a[k * h * d..].copy_from_slice(&b[..(t - k) * h * d]);
    cases.push(("shift", a, b.clone(), s.clone()));
    // heads: GQA repeat against repeat_interleave, and a permutation
    let hh = 8;
    let g = r.pick(&[2usize, 4]);
    let rep = hh / g;
    let kv = r.vec(t * g * d);
    let build = |f: &dyn Fn(usize) -> usize| -> Vec<f32> {
        (0..t)
            .flat_map(|ti| (0..hh).map(move |hi| (ti, hi)))
            .flat_map(|(ti, hi)| {
                let gi = f(hi);
                kv[(ti * g + gi) * d..(ti * g + gi + 1) * d].to_vec()
            })
            .collect()
    };
    let interleave = build(&|hi| hi / rep);
    let repeat = build(&|hi| hi % g);
    cases.push(("heads", repeat.clone(), interleave.clone(), vec![t, hh, d]));
    cases.push(("heads", interleave, repeat, vec![t, hh, d]));
    let order: Vec<usize> = {
        let mut o: Vec<usize> = (0..h).collect();
        o.rotate_left(1 + r.below(h - 1));
        o
    };
    let a: Vec<f32> = (0..t)
        .flat_map(|ti| {
            let (b, order) = (&b, &order);
            (0..h).flat_map(move |hi| {
                let src = (ti * h + order[hi]) * d;
                b[src..src + d].to_vec()
            })
        })
        .collect();
    cases.push(("heads", a, b.clone(), s.clone()));
    // partial: the last token; positions from p; one head; a block of 32
    let mut a = b.clone();
    for x in &mut a[(t - 1) * h * d..] {
        *x += 0.5 + r.normal().abs();
    }
    cases.push(("partial", a, b.clone(), s.clone()));
    let hi = r.below(h);
    let mut a = b.clone();
    for ti in 0..t {
        for x in &mut a[(ti * h + hi) * d..(ti * h + hi + 1) * d] {
            *x = *x * 0.5 + 0.7;
        }
    }
    cases.push(("partial", a, b.clone(), s.clone()));
    let wide = r.vec(t * 128);
    let mut a = wide.clone();
    let blk = r.below(4) * 32;
    for ti in 0..t {
        for x in &mut a[ti * 128 + blk..ti * 128 + blk + 32] {
            *x = -*x * 2.0 + 1.0;
        }
    }
    cases.push(("partial", a, wide, vec![t, 128]));
    // precision: B rounded to a narrower format
    cases.push((
        "precision",
        b.iter().map(|&x| f16_round(x)).collect(),
        b.clone(),
        s.clone(),
    ));
    cases.push((
        "precision",
        b.iter().map(|&x| bf16_round(x)).collect(),
        b.clone(),
        s.clone(),
    ));
    let q = r.vec(t * 64);
    cases.push(("precision", q_round(&q, false), q.clone(), vec![t, 64]));
    cases.push(("precision", q_round(&q, true), q, vec![t, 64]));
    cases
}

fn kind(c: &Cause) -> &'static str {
    match c {
        Cause::Zeros => "zeros",
        Cause::Constant { .. } => "constant",
        Cause::Unwritten { .. } => "unwritten",
        Cause::NonFinite { .. } => "non_finite",
        Cause::Collapse { .. } => "collapse",
        Cause::Scale { .. } => "scale",
        Cause::SignFlip => "sign_flip",
        Cause::Offset { .. } => "offset",
        Cause::RowScale { .. } => "row_scale",
        Cause::Layout { .. } => "layout",
        Cause::Shift { .. } => "shift",
        Cause::Heads { .. } => "heads",
        Cause::Partial { .. } => "partial",
        Cause::Precision { .. } => "precision",
        Cause::Stale { .. } => "stale",
        Cause::Rope { .. } => "rope",
        Cause::Params { .. } => "params",
        Cause::Reshaped { .. } => "reshaped",
        Cause::Path { .. } => "path",
        Cause::InReference { .. } => "in_reference",
        Cause::Mask { .. } => "mask",
        Cause::Grouping { .. } => "grouping",
    }
}

#[test]
fn the_top_hypothesis_names_the_planted_bug() {
    let (mut total, mut right) = (0, 0);
    let mut wrong = Vec::new();
    for seed in 0..40 {
        for (want, a, b, shape) in planted(seed) {
            let bshape = vec![b.len()];
            let got = diagnose(
                Values::new(&a, &shape).unwrap(),
                Values::new(&b, &bshape_for(&shape, &bshape, b.len())).unwrap(),
            );
            total += 1;
            match got.first() {
                Some(f) if kind(&f.cause) == want => right += 1,
                other => wrong.push(format!(
                    "seed {seed} {want} {shape:?}: {:?}",
                    other.map(|f| &f.evidence)
                )),
            }
        }
    }
    let rate = right as f64 / total as f64;
    eprintln!(
        "top hypothesis right in {right} of {total} planted cases ({:.1} %)",
        100.0 * rate
    );
    for w in &wrong {
        eprintln!("  missed: {w}");
    }
    assert!(rate >= 0.95, "{right} of {total}:\n{}", wrong.join("\n"));
}

/// The planted bugs the value checks find, planted in B instead: the top
/// hypothesis names the same cause, as B's ([`Cause::InReference`]), and
/// its evidence speaks of B.
#[test]
fn a_bug_in_the_reference_is_named_as_the_references() {
    let swappable = ["zeros", "constant", "unwritten", "non_finite", "collapse"];
    let (mut total, mut right) = (0, 0);
    let mut wrong = Vec::new();
    for seed in 0..40 {
        for (want, buggy, reference, shape) in planted(seed) {
            if !swappable.contains(&want) {
                continue;
            }
            let got = diagnose(
                Values::new(&reference, &shape).unwrap(),
                Values::new(&buggy, &shape).unwrap(),
            );
            total += 1;
            match got.first() {
                Some(Finding {
                    cause: Cause::InReference { cause },
                    evidence,
                    ..
                }) if kind(cause) == want && !evidence.contains(" of A ") => right += 1,
                other => wrong.push(format!(
                    "seed {seed} {want} {shape:?}: {:?}",
                    other.map(|f| &f.evidence)
                )),
            }
        }
    }
    assert!(total >= 100, "{total} cases");
    let rate = right as f64 / total as f64;
    assert!(rate >= 0.95, "{right} of {total}:\n{}", wrong.join("\n"));
}

#[test]
fn swapping_sides_swaps_only_the_words_a_and_b() {
    assert_eq!(
        swap_sides("all 4 values of A are 0; B's are not (A 1, B 2) at [A_B, AB]"),
        "all 4 values of B are 0; A's are not (B 1, A 2) at [A_B, AB]"
    );
}

/// B's shape for a planted case: A's, unless A's is a transposed shape.
fn bshape_for(a: &[usize], _flat: &[usize], n: usize) -> Vec<usize> {
    let _ = n;
    a.to_vec()
}

/// A small MLP computed twice: in f32, and with every intermediate
/// rounded to f16 (or bf16): each pair it produces is clean.
fn clean_pairs(seed: u64, round: fn(f32) -> f32) -> Vec<(Vec<f32>, Vec<f32>, Vec<usize>)> {
    let mut r = Rng(seed * 7919 + 13);
    let (t, w) = (r.pick(&[4usize, 7]), r.pick(&[32usize, 64]));
    let mut x32 = r.vec(t * w);
    let mut x16: Vec<f32> = x32.iter().map(|&v| round(v)).collect();
    let mut out = Vec::new();
    for _layer in 0..4 {
        let wts: Vec<f32> = r.vec(w * w).iter().map(|v| v / (w as f32).sqrt()).collect();
        let step = |x: &[f32], rnd: &dyn Fn(f32) -> f32| -> Vec<f32> {
            let mut y = vec![0f32; t * w];
            for i in 0..t {
                let row = &x[i * w..(i + 1) * w];
                let rms = (row.iter().map(|v| v * v).sum::<f32>() / w as f32 + 1e-6).sqrt();
                for j in 0..w {
                    let mut acc = 0f32;
                    for k in 0..w {
                        acc += rnd(row[k] / rms) * rnd(wts[k * w + j]);
                    }
                    let h = rnd(acc);
                    y[i * w + j] = rnd(row[j] + h / (1.0 + (-h).exp()));
                }
            }
            y
        };
        x32 = step(&x32, &|v| v);
        x16 = step(&x16, &|v| round(v));
        out.push((x16.clone(), x32.clone(), vec![t, w]));
    }
    out
}

/// A quantized KV cache against an f16 one: both hold what one f32 K was,
/// one rounded to q8_0 (or q4_0) by ggml, the other to f16. The block
/// scales ggml took from the f32 values are not the f16 values' own (an f16
/// step apart in some blocks), and the pair is still that format's rounding.
#[test]
fn a_quantized_copy_against_an_f16_copy_is_that_formats_rounding() {
    for seed in 0..20 {
        let mut r = Rng(seed * 7 + 3);
        let k: Vec<f32> = (0..64 * 64).map(|_| r.normal() * 2.0).collect();
        let b: Vec<f32> = k.iter().map(|&x| f16_round(x)).collect();
        for (q4, format) in [(false, "q8_0"), (true, "q4_0")] {
            let a = q_round(&k, q4);
            let shape = [64, 64];
            let found = diagnose(
                Values::new(&a, &shape).unwrap(),
                Values::new(&b, &shape).unwrap(),
            );
            assert!(
                matches!(found.first().map(|f| &f.cause), Some(Cause::Precision { format: f, .. }) if f == format),
                "seed {seed} {format}: {:?}",
                found.first().map(|f| &f.evidence)
            );
        }
    }
}

#[test]
fn clean_pairs_get_nothing_but_precision() {
    for seed in 0..20 {
        for round in [f16_round as fn(f32) -> f32, bf16_round] {
            for (a, b, shape) in clean_pairs(seed, round) {
                let (va, vb) = (
                    Values::new(&a, &shape).unwrap(),
                    Values::new(&b, &shape).unwrap(),
                );
                for f in diagnose(va, vb) {
                    assert!(
                        matches!(f.cause, Cause::Precision { .. }),
                        "seed {seed}: a clean pair diagnosed as {:?}",
                        f.evidence
                    );
                }
                // the same run twice: nothing at all
                assert!(diagnose(vb, vb).is_empty());
            }
        }
    }
}

#[test]
fn a_stale_buffer_is_named() {
    let mut r = Rng(5);
    let shape = [4usize, 16];
    let (prev, now, other) = (r.vec(64), r.vec(64), r.vec(64));
    let a = Values::new(&prev, &shape).unwrap();
    let found = stale(
        a,
        [("k-1 (layer 1)", &other[..]), ("k-0 (step 0)", &prev[..])],
    )
    .unwrap();
    assert_eq!(
        found.cause,
        Cause::Stale {
            other: "k-0 (step 0)".into()
        }
    );
    assert!(stale(Values::new(&now, &shape).unwrap(), [("k-0", &prev[..])]).is_none());
}

#[test]
fn rope_pairing_and_base_are_told_apart() {
    let mut r = Rng(11);
    for (t, h, d) in [(5usize, 2usize, 16usize), (3, 4, 64)] {
        let shape = [t, h, d];
        let x = r.vec(t * h * d);
        let pos: Vec<f64> = (0..t).map(|p| p as f64 + 3.0).collect();
        let normal = Variant {
            pairing: Pairing::Adjacent,
            base: 10_000.0,
        };
        let neox = Variant {
            pairing: Pairing::Neox,
            base: 10_000.0,
        };
        let other_base = Variant {
            pairing: Pairing::Neox,
            base: 500_000.0,
        };
        // a base none of the usual: fitted from the values
        let twice = Variant {
            pairing: Pairing::Neox,
            base: 20_000.0,
        };
        // HF's cos/sin on adjacent pairs, interleaved cos/sin on halves
        let mixed = [
            Pairing::AdjacentWithNeoxFrequencies,
            Pairing::NeoxWithAdjacentFrequencies,
        ]
        .map(|pairing| Variant {
            pairing,
            base: 10_000.0,
        });
        let b = apply(&x, shape, &pos, neox);
        for want in [normal, other_base, twice, mixed[0], mixed[1]] {
            let a = apply(&x, shape, &pos, want);
            let f = rope::rope(
                Values::new(&a, &shape).unwrap(),
                Values::new(&b, &shape).unwrap(),
                &x,
                &pos,
            )
            .unwrap();
            assert_eq!(
                f.cause,
                Cause::Rope {
                    a: want,
                    b: Some(neox)
                },
                "{}",
                f.evidence
            );
        }
        // the same variant on both sides is not a RoPE bug
        assert!(rope::rope(
            Values::new(&b, &shape).unwrap(),
            Values::new(&b, &shape).unwrap(),
            &x,
            &pos
        )
        .is_none());
    }
}

#[test]
fn diagnosing_a_large_pair_is_bounded() {
    // 1 M values in a debug build: the screening keeps it to seconds
    let mut r = Rng(3);
    let shape = [64usize, 16, 1024];
    let b = r.vec(64 * 16 * 1024);
    let mut a = b.clone();
    for x in &mut a[63 * 16 * 1024..] {
        *x += 1.0;
    }
    let start = std::time::Instant::now();
    let got = diagnose(
        Values::new(&a, &shape).unwrap(),
        Values::new(&b, &shape).unwrap(),
    );
    assert_eq!(kind(&got[0].cause), "partial");
    assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
}

#[test]
fn an_infinite_reference_is_close_only_to_itself() {
    let close = Close::for_reference(&[1.0, f32::INFINITY]);
    assert!(!close.eq(1.0, f32::INFINITY));
    assert!(!close.eq(f32::NEG_INFINITY, f32::INFINITY));
    assert!(close.eq(f32::INFINITY, f32::INFINITY));
    assert!(close.eq(1.0005, 1.0) && !close.eq(f32::INFINITY, 1.0));
}

/// A causal softmax whose mask is one position off (the diagonal masked
/// too, from row 1 on) against the right one: both are zero above the
/// diagonal, which is no collapse of either run's variance: a mask off by
/// one.
#[test]
fn a_mask_one_position_off_is_named_and_no_collapse() {
    let (h, t) = (4, 8);
    let mut r = Rng(11);
    let logits = r.vec(h * t * t);
    let softmax = |strict: bool| -> Vec<f32> {
        let mut out = vec![0f32; h * t * t];
        for hi in 0..h {
            for i in 0..t {
                let seen = |j: usize| if strict && i > 0 { j < i } else { j <= i };
                let row = &logits[(hi * t + i) * t..][..t];
                let z: f32 = (0..t).filter(|&j| seen(j)).map(|j| row[j].exp()).sum();
                for j in (0..t).filter(|&j| seen(j)) {
                    out[(hi * t + i) * t + j] = row[j].exp() / z;
                }
            }
        }
        out
    };
    let (right, off) = (softmax(false), softmax(true));
    let shape = [1, h, t, t];
    let (a, b) = (
        Values::new(&off, &shape).unwrap(),
        Values::new(&right, &shape).unwrap(),
    );
    // named as the mask it is, either way round
    for (found, d) in [(diagnose(a, b), -1), (diagnose(b, a), 1)] {
        assert!(
            matches!(found[0].cause, Cause::Mask { end: Some(e), start: None, row: 1, .. } if e == d),
            "{:?}",
            found.iter().map(|f| &f.evidence).collect::<Vec<_>>()
        );
        for f in found {
            let collapse = match &f.cause {
                Cause::InReference { cause } => matches!(**cause, Cause::Collapse { .. }),
                c => matches!(c, Cause::Collapse { .. }),
            };
            assert!(!collapse, "{}", f.evidence);
        }
    }
}

/// Random K (`[2, 9, 16]`: heads, positions, dims) as B, and A the same
/// rolled by one position (A[i] = B[(i + 1) mod 9]), each value off by
/// ± `noise` relative (alternating).
fn rolled(seed: u64, noise: f32) -> (Vec<f32>, Vec<f32>, [usize; 3]) {
    let (h, t, d) = (2, 9, 16);
    let b = Rng(seed).vec(h * t * d);
    let mut a = vec![0f32; b.len()];
    for hi in 0..h {
        for i in 0..t {
            let from = (i + 1) % t;
            for k in 0..d {
                let off = if (i + k) % 2 == 0 {
                    1.0 + noise
                } else {
                    1.0 - noise
                };
                a[(hi * t + i) * d + k] = b[(hi * t + from) * d + k] * off;
            }
        }
    }
    (a, b, [h, t, d])
}

/// K rolled by one position along the sequence (a ring buffer read from
/// the wrong start): named as a roll, and the shift it implies is not
/// named again.
#[test]
fn a_roll_is_named_as_one_and_not_also_as_a_shift() {
    let (a, b, shape) = rolled(3, 0.0);
    let found = diagnose(
        Values::new(&a, &shape).unwrap(),
        Values::new(&b, &shape).unwrap(),
    );
    match &found[0].cause {
        Cause::Heads {
            axis: 1,
            map,
            pattern,
        } => {
            assert_eq!(map, &[1, 2, 3, 4, 5, 6, 7, 8, 0]);
            assert!(pattern.starts_with("rolled by 1"), "{pattern}");
        }
        other => panic!("{other:?}: {}", found[0].evidence),
    }
    assert!(
        !found.iter().any(|f| matches!(f.cause, Cause::Shift { .. })),
        "{:?}",
        found.iter().map(|f| &f.evidence).collect::<Vec<_>>()
    );
}

/// Random attention scores of 2 heads and 6 tokens, unmasked and with a
/// causal mask as HF adds it (`finfo.min` above the diagonal), and their
/// shape `[1, 2, 6, 6]`.
fn causal_scores(seed: u64) -> (Vec<f32>, Vec<f32>, [usize; 4]) {
    let (h, t) = (2, 6);
    let scores = Rng(seed).vec(h * t * t);
    let masked = (0..h * t * t)
        .map(|k| {
            if k % t > k / t % t {
                f32::MIN
            } else {
                scores[k]
            }
        })
        .collect();
    (scores, masked, [1, h, t, t])
}

/// Masked scores (HF adds `finfo.min`, llama.cpp −∞) of a run that applies
/// no mask against a causal one: named as a run that masks nothing.
#[test]
fn scores_without_a_mask_are_named() {
    let (scores, masked, shape) = causal_scores(17);
    let found = diagnose(
        Values::new(&scores, &shape).unwrap(),
        Values::new(&masked, &shape).unwrap(),
    );
    assert!(
        matches!(
            found[0].cause,
            Cause::Mask {
                row: 0,
                a: (0, 5),
                b: (0, 0),
                ..
            }
        ) && found[0].evidence.contains("A masks nothing"),
        "{:?}",
        found.iter().map(|f| &f.evidence).collect::<Vec<_>>()
    );
}

/// HF adds `finfo.min` where it masks scores: that is no magnitude for the
/// closeness tolerance (a millionth of 3.4e38 would call every score
/// equal) nor any spread (every row would look collapsed beside it).
#[test]
fn masked_scores_at_the_most_negative_float_are_no_magnitude() {
    let (scores, masked, shape) = causal_scores(19);
    let close = Close::for_reference(&masked);
    assert!(!close.eq(1.0, 1.5));
    for f in diagnose(
        Values::new(&scores, &shape).unwrap(),
        Values::new(&masked, &shape).unwrap(),
    ) {
        assert!(
            !matches!(f.cause, Cause::Heads { .. } | Cause::Collapse { .. }),
            "{}",
            f.evidence
        );
    }
}

/// A rolled K whose values carry 0.3 % of noise (another engine's
/// kernels): no exact hypothesis holds, and within a comparison's
/// tolerance the roll is named, weaker by 0.05 and saying so.
#[test]
fn a_roll_under_noise_is_named_within_the_tolerance() {
    let (a, b, shape) = rolled(23, 0.003);
    let (va, vb) = (
        Values::new(&a, &shape).unwrap(),
        Values::new(&b, &shape).unwrap(),
    );
    assert!(!diagnose(va, vb)
        .iter()
        .any(|f| matches!(f.cause, Cause::Heads { .. } | Cause::Shift { .. })));
    let found = order_within(va, vb, 1e-3, 1e-2);
    assert_eq!(
        found.len(),
        1,
        "{:?}",
        found.iter().map(|f| &f.evidence).collect::<Vec<_>>()
    );
    assert!(matches!(&found[0].cause, Cause::Heads { axis: 1, map, .. } if map[0] == 1));
    assert!((found[0].strength - 0.915).abs() < 1e-9);
    assert!(found[0]
        .evidence
        .ends_with("(within the comparison's tolerance: atol 1e-3, rtol 1e-2)"));
    // a tolerance that does not reach the noise finds nothing
    assert!(order_within(va, vb, 1e-6, 1e-3).is_empty());
    // nor one under which A is B already (every value within atol)
    assert!(order_within(va, vb, 10.0, 0.0).is_empty());
}

/// One factor per row is a norm's statistics; one per feature (the last
/// axis) its weight: the evidence tells them apart.
#[test]
fn a_factor_per_feature_is_a_norm_weight() {
    let mut r = Rng(29);
    let (t, d) = (6, 32);
    let b = r.vec(t * d);
    let shape = [t, d];
    let per_row: Vec<f32> = b
        .iter()
        .enumerate()
        .map(|(i, x)| x * (1.0 + (i / d) as f32 * 0.1))
        .collect();
    let per_feature: Vec<f32> = b
        .iter()
        .enumerate()
        .map(|(i, x)| x * (1.0 + (i % d) as f32 * 0.02))
        .collect();
    let vb = Values::new(&b, &shape).unwrap();
    for (a, axis, why) in [
        (per_row, 0, "the wrong statistics"),
        (per_feature, 1, "weight (gamma)"),
    ] {
        let found = diagnose(Values::new(&a, &shape).unwrap(), vb);
        assert!(
            matches!(found[0].cause, Cause::RowScale { axis: x, .. } if x == axis)
                && found[0].evidence.contains(why),
            "{}",
            found[0].evidence
        );
    }
}

/// Attention scores with 6 query heads on 3 KV heads, K repeated with
/// `repeat` in A and `repeat_interleave` in B: heads 0 and 5 read the same
/// KV head either way and agree; the pattern names the grouping.
#[test]
fn kv_heads_grouped_the_other_way_are_named() {
    let (h, g, t, d) = (6, 3, 5, 8);
    let mut r = Rng(31);
    let (q, k) = (r.vec(h * t * d), r.vec(g * t * d));
    let scores = |kv_of: &dyn Fn(usize) -> usize| -> Vec<f32> {
        let mut out = vec![0f32; h * t * t];
        for hi in 0..h {
            let kh = kv_of(hi);
            for i in 0..t {
                for j in 0..t {
                    out[(hi * t + i) * t + j] = (0..d)
                        .map(|x| q[(hi * t + i) * d + x] * k[(kh * t + j) * d + x])
                        .sum();
                }
            }
        }
        out
    };
    let (a, b) = (scores(&|hi| hi % g), scores(&|hi| hi / (h / g)));
    let shape = [1, h, t, t];
    let found = diagnose(
        Values::new(&a, &shape).unwrap(),
        Values::new(&b, &shape).unwrap(),
    );
    assert!(
        matches!(&found[0].cause, Cause::Grouping { axis: 1, kv_heads: 3, agree } if agree == &[0, 5]),
        "{:?}",
        found.iter().map(|f| &f.evidence).collect::<Vec<_>>()
    );
}
