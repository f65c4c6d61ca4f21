//! Blame through the graph on recorded runs: a small model recorded twice
//! with the Writer, once with a bug planted in one op of layer 1. The
//! blame must name that op (not the logits its error reaches) and its
//! diagnosis must name the bug; a clean pair blames nothing.

use std::path::Path;

use trace_reader::Trace;
use trace_tools::compare::{diff, Tolerance};
use trace_tools::diagnose::Cause;
use trace_tools::mapping::Mapping;
use trace_writer::{DType, Metadata, TensorMeta, Writer};

const T: usize = 6;
const D: usize = 32;
const LAYERS: usize = 3;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Bug {
    None,
    /// The projection's output read transposed ([D, T] data as [T, D]).
    Layout,
    /// The activation returns zeros.
    Zeros,
    /// The norm divides by the wrong statistics (eps far too large).
    NormEps,
    /// The projection's output scaled.
    Scale,
    /// The activation's buffer is the previous layer's, never rewritten.
    Stale,
}

fn weights(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) / (D as f32).sqrt() * 2.0
        })
        .collect()
}

fn run(path: &Path, bug: Bug, seed: u64) {
    let w = Writer::create(path, Metadata::new()).unwrap();
    let add = |name: &str, v: &[f32], parents: &[Option<u64>]| -> Option<u64> {
        let mut m = TensorMeta::new();
        m.lineage.parents.extend(parents.iter().flatten());
        w.add_tensor(
            name,
            DType::F32,
            &[T as u64, D as u64],
            bytemuck::cast_slice(v),
            m,
        )
        .unwrap()
    };
    let mut previous_silu: Vec<f32> = Vec::new();
    let mut x = weights(seed, T * D);
    let mut x_id = add("embd", &x, &[]);
    for l in 0..LAYERS {
        let planted = l == 1;
        let eps = if planted && bug == Bug::NormEps {
            1.0
        } else {
            1e-6
        };
        let h: Vec<f32> = x
            .chunks(D)
            .flat_map(|r| {
                let rms = (r.iter().map(|v| v * v).sum::<f32>() / D as f32 + eps).sqrt();
                r.iter().map(move |v| v / rms).collect::<Vec<_>>()
            })
            .collect();
        let h_id = add(&format!("norm-{l}"), &h, &[x_id]);
        let wt = weights(seed + 10 + l as u64, D * D);
        let mut a: Vec<f32> = (0..T * D)
            .map(|i| (0..D).map(|k| h[i / D * D + k] * wt[k * D + i % D]).sum())
            .collect();
        if planted && bug == Bug::Layout {
            a = (0..T * D).map(|i| a[(i % T) * D + i / T]).collect();
        }
        if planted && bug == Bug::Scale {
            a.iter_mut().for_each(|v| *v *= 1.5);
        }
        let a_id = add(&format!("proj-{l}"), &a, &[h_id]);
        let mut s: Vec<f32> = a.iter().map(|&v| v / (1.0 + (-v).exp())).collect();
        if planted && bug == Bug::Zeros {
            s.fill(0.0);
        }
        if planted && bug == Bug::Stale {
            s = previous_silu.clone();
        }
        previous_silu = s.clone();
        let s_id = add(&format!("silu-{l}"), &s, &[a_id]);
        x = x.iter().zip(&s).map(|(p, q)| p + q).collect();
        x_id = add(&format!("out-{l}"), &x, &[s_id, x_id]);
    }
    let logits: Vec<f32> = x.iter().map(|v| v * 3.0).collect();
    add("logits", &logits, &[x_id]);
    w.finish().unwrap();
}

fn blame_of(bug: Bug, seed: u64) -> (Vec<String>, Option<Cause>) {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.tdump"), dir.path().join("b.tdump"));
    run(&pa, bug, seed);
    run(&pb, Bug::None, seed);
    let (a, b) = (Trace::open(&pa).unwrap(), Trace::open(&pb).unwrap());
    let r = diff(&a, &b, &Mapping::none(), &Tolerance::default(), |_, _| {}).unwrap();
    let names = r
        .blamed
        .iter()
        .map(|x| r.pairs[x.pair].key.clone())
        .collect();
    let cause = r
        .blamed
        .first()
        .and_then(|x| x.diagnosis.first())
        .map(|f| f.cause.clone());
    (names, cause)
}

#[test]
fn the_planted_op_is_blamed_not_its_cascade() {
    for seed in 1..=5 {
        let (names, cause) = blame_of(Bug::Layout, seed);
        assert_eq!(names, ["proj-1"], "seed {seed}");
        assert!(
            matches!(cause, Some(Cause::Layout { .. })),
            "seed {seed}: {cause:?}"
        );

        let (names, cause) = blame_of(Bug::Zeros, seed);
        assert_eq!(names, ["silu-1"], "seed {seed}");
        assert_eq!(cause, Some(Cause::Zeros), "seed {seed}");

        let (names, cause) = blame_of(Bug::NormEps, seed);
        assert_eq!(names, ["norm-1"], "seed {seed}");
        assert!(
            matches!(cause, Some(Cause::RowScale { axis: 0, .. })),
            "seed {seed}: {cause:?}"
        );

        let (names, cause) = blame_of(Bug::Stale, seed);
        assert_eq!(names, ["silu-1"], "seed {seed}");
        assert!(
            matches!(&cause, Some(Cause::Stale { other }) if other.starts_with("silu-0 ")),
            "seed {seed}: {cause:?}"
        );

        let (names, cause) = blame_of(Bug::Scale, seed);
        assert_eq!(names, ["proj-1"], "seed {seed}");
        assert!(
            matches!(cause, Some(Cause::Scale { c }) if (c - 1.5).abs() < 1e-3),
            "seed {seed}: {cause:?}"
        );
    }
}

#[test]
fn a_clean_pair_blames_nothing() {
    assert_eq!(blame_of(Bug::None, 7), (vec![], None));
}

#[test]
fn amplification_is_measured_along_the_cascade() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.tdump"), dir.path().join("b.tdump"));
    run(&pa, Bug::Scale, 3);
    run(&pb, Bug::None, 3);
    let (a, b) = (Trace::open(&pa).unwrap(), Trace::open(&pb).unwrap());
    let r = diff(&a, &b, &Mapping::none(), &Tolerance::default(), |_, _| {}).unwrap();
    // the logits are the last layer's output times 3: the same relative error
    let logits = r.pairs.iter().find(|p| p.key == "logits").unwrap();
    let x = logits
        .amplification
        .expect("a divergent pair with divergent inputs");
    assert!((x - 1.0).abs() < 1e-3, "{x}");
    // the blamed op's inputs agree exactly: no amplification, the error starts there
    assert_eq!(r.blamed[0].amplification, None);
}

/// Two runs of one RMSNorm recorded with the op relation and its eps
/// (format 1.1): the eps that differs is the first finding.
#[test]
fn a_recorded_parameter_that_differs_comes_first() {
    let dir = tempfile::tempdir().unwrap();
    let x = weights(9, T * D);
    let mut traces = Vec::new();
    for (name, eps) in [("a.tdump", 0.5f64), ("b.tdump", 1e-6)] {
        let path = dir.path().join(name);
        let w = Writer::create(&path, Metadata::new()).unwrap();
        let shape = [T as u64, D as u64];
        let xid = w
            .add_tensor(
                "x",
                DType::F32,
                &shape,
                bytemuck::cast_slice(&x),
                TensorMeta::new(),
            )
            .unwrap()
            .unwrap();
        let h: Vec<f32> = x
            .chunks(D)
            .flat_map(|r| {
                let rms = (r.iter().map(|v| v * v).sum::<f32>() / D as f32 + eps as f32).sqrt();
                r.iter().map(move |v| v / rms).collect::<Vec<_>>()
            })
            .collect();
        let meta = TensorMeta::new()
            .computed_from("rms_norm", &[xid])
            .op_param("eps", eps);
        w.add_tensor("norm", DType::F32, &shape, bytemuck::cast_slice(&h), meta)
            .unwrap();
        w.finish().unwrap();
        traces.push(Trace::open(&path).unwrap());
    }
    let info = traces[0].get("norm").unwrap();
    assert!(info.is_computed());
    let op = info.op().unwrap().unwrap();
    assert_eq!(op.name.as_deref(), Some("rms_norm"));
    let r = diff(
        &traces[0],
        &traces[1],
        &Mapping::none(),
        &Tolerance::default(),
        |_, _| {},
    )
    .unwrap();
    let d = &r.blamed[0].diagnosis;
    assert!(
        matches!(&d[0].cause, Cause::Params { differ } if differ.len() == 1 && differ[0].0 == "eps"),
        "{d:?}"
    );
    // the values' own evidence is still there
    assert!(
        d.iter()
            .any(|f| matches!(f.cause, Cause::RowScale { axis: 0, .. })),
        "{d:?}"
    );
}

/// RoPE applied with the other pairing: the blamed rope op's diagnosis
/// names the variant of each run, from the input and positions it records.
#[test]
fn rope_with_the_other_pairing_is_named() {
    use trace_tools::diagnose::rope::{apply, Pairing, Variant};
    let (t, h, d) = (5usize, 4usize, 16usize);
    let dir = tempfile::tempdir().unwrap();
    let x = weights(21, t * h * d);
    let pos: Vec<i32> = (0..t as i32).map(|p| p + 2).collect();
    let pos_f: Vec<f64> = pos.iter().map(|&p| p as f64).collect();
    let mut traces = Vec::new();
    for (name, pairing) in [("a.tdump", Pairing::Adjacent), ("b.tdump", Pairing::Neox)] {
        let y = apply(
            &x,
            [t, h, d],
            &pos_f,
            Variant {
                pairing,
                base: 10_000.0,
            },
        );
        let shape = [t as u64, h as u64, d as u64];
        let path = dir.path().join(name);
        traces.push(rope_trace(
            &path,
            Metadata::new(),
            &shape,
            &x,
            &pos,
            "rope",
            &y,
        ));
    }
    let r = diff(
        &traces[0],
        &traces[1],
        &Mapping::none(),
        &Tolerance::default(),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(r.blamed.len(), 1);
    assert_eq!(r.pairs[r.blamed[0].pair].key, "q_rope");
    let top = &r.blamed[0].diagnosis[0];
    match &top.cause {
        Cause::Rope { a, b } => {
            assert_eq!(a.pairing, Pairing::Adjacent);
            assert_eq!(b.map(|v| v.pairing), Some(Pairing::Neox));
        }
        other => panic!("{other:?}: {}", top.evidence),
    }
}

/// One op of a decode recorded at three steps, as llama.cpp with a
/// quantized KV cache records it against an f16 one: run A rotates K
/// (a MUL_MAT with a matrix B has no counterpart of) before writing its
/// cache; both view V under their own shapes. The cache is blamed once,
/// with the path finding naming A's extra op and the later steps as
/// repeats; the two views of V are the same values in another shape.
#[test]
fn a_graph_only_one_run_has_is_named_and_repeats_are_grouped() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.tdump"), dir.path().join("b.tdump"));
    let shape = [T as u64, D as u64];
    for (path, rotated) in [(&pa, true), (&pb, false)] {
        let w = Writer::create(path, Metadata::new()).unwrap();
        let add = |name: &str, v: &[f32], shape: &[u64], step: i64, parents: &[Option<u64>]| {
            let mut m = TensorMeta::new().step(step).layer(0);
            let parents: Vec<u64> = parents.iter().flatten().copied().collect();
            if name == "node_18" {
                m = m.computed_from("mul_mat", &parents);
            } else {
                m.lineage.parents.extend(parents);
            }
            w.add_tensor(name, DType::F32, shape, bytemuck::cast_slice(v), m)
                .unwrap()
        };
        // (A's rotation: each row's values in reverse order, negated)
        let rot: Vec<f32> = (0..D * D)
            .map(|i| if i / D + i % D == D - 1 { -1.0 } else { 0.0 })
            .collect();
        let rot_id = rotated.then(|| add("attn_inp_k_rot", &rot, &[D as u64, D as u64], 0, &[]));
        for step in 0..3 {
            let k = weights(40 + step as u64, T * D);
            let k_id = add("Kcur-0", &k, &shape, step, &[]);
            let (cache, from) = if rotated {
                let r: Vec<f32> = k
                    .chunks(D)
                    .flat_map(|row| row.iter().rev().map(|v| -v))
                    .collect();
                // (the op's input as a record that names no op, as torch
                // capture keeps a module's input: walked through, not listed)
                let k_in = add("node_18.input.0", &k, &shape, step, &[k_id]);
                let r_id = add("node_18", &r, &shape, step, &[rot_id.flatten(), k_in]);
                // (stored rounded, as a quantized cache holds it)
                let q: Vec<f32> = r.iter().map(|v| (v * 64.0).round() / 64.0).collect();
                (q, r_id)
            } else {
                (k.clone(), k_id)
            };
            let cache_id = add("cache_k_l0", &cache, &shape, step, &[from]).unwrap();
            // a view of the cache's own bytes: the same values, no stale buffer
            let whole = trace_format::Layout::contiguous(DType::F32, &shape, 0).unwrap();
            let mut m = TensorMeta::new().step(step).layer(0);
            m.lineage.parents.push(cache_id);
            w.add_view("cache_k_l0 (view)", DType::F32, cache_id, &whole, m)
                .unwrap();
            let v = weights(80 + step as u64, T * D);
            let v_id = add("Vcur-0", &v, &shape, step, &[]);
            let v_shape = if rotated {
                [2 * T as u64, D as u64 / 2]
            } else {
                shape
            };
            add("Vcur-0 (reshaped)", &v, &v_shape, step, &[v_id]);
        }
        w.finish().unwrap();
    }
    let (a, b) = (Trace::open(&pa).unwrap(), Trace::open(&pb).unwrap());
    let r = diff(&a, &b, &Mapping::none(), &Tolerance::default(), |_, _| {}).unwrap();
    let blamed: Vec<(&str, Option<i64>, Option<&str>)> = r
        .blamed
        .iter()
        .map(|bl| {
            (
                r.pairs[bl.pair].key.as_str(),
                r.pairs[bl.pair].step,
                bl.same_op_as.map(|i| r.pairs[i].key.as_str()),
            )
        })
        .collect();
    let (cache, view) = ("cache_k_l0", "Vcur-0 (reshaped)");
    assert_eq!(
        blamed,
        [
            (cache, Some(0), None),
            (view, Some(0), None),
            (cache, Some(1), Some(cache)),
            (view, Some(1), Some(view)),
            (cache, Some(2), Some(cache)),
            (view, Some(2), Some(view)),
        ]
    );
    // only the first of each op is diagnosed
    let diagnosed: Vec<bool> = r.blamed.iter().map(|bl| bl.diagnosed).collect();
    assert_eq!(diagnosed, [true, true, false, false, false, false]);
    let cache_findings = &r.blamed[0].diagnosis;
    // one engine's two runs record ops alike: the extra op is the likely cause
    assert!(
        matches!(
            cache_findings.first().map(|f| &f.cause),
            Some(Cause::Path { .. })
        ),
        "{cache_findings:?}"
    );
    assert!(
        !cache_findings
            .iter()
            .any(|f| matches!(f.cause, Cause::Stale { .. })),
        "a view of its own bytes is not a stale buffer: {cache_findings:?}"
    );
    let path = cache_findings
        .iter()
        .find_map(|f| match &f.cause {
            Cause::Path { only_a, only_b } => Some((only_a.clone(), only_b.clone(), &f.evidence)),
            _ => None,
        })
        .expect("a path finding");
    assert_eq!(
        (path.0.as_slice(), path.1.as_slice()),
        (
            ["node_18 (#4) = mul_mat(attn_inp_k_rot (#1), node_18.input.0 (#3))".to_string()]
                .as_slice(),
            [].as_slice()
        ),
        "{}",
        path.2
    );
    assert_eq!(
        r.blamed[1].diagnosis.first().map(|f| &f.cause),
        Some(&Cause::Reshaped {
            a: vec![2 * T, D / 2],
            b: vec![T, D]
        })
    );
    let text = trace_tools::diff_text::blame_text(&r).unwrap();
    assert_eq!(text.matches("BLAMED OP").count(), 2, "{text}");
    assert!(
        text.contains("blamed again at 2 later steps (1, 2: pairs"),
        "{text}"
    );
}

/// A trace of one RoPE: its input `q` and the positions `pos`, and its
/// output `q_rope` computed by `op` from both.
fn rope_trace(
    path: &Path,
    metadata: Metadata,
    shape: &[u64],
    q: &[f32],
    pos: &[i32],
    op: &str,
    q_rope: &[f32],
) -> Trace {
    let w = Writer::create(path, metadata).unwrap();
    let add = |name: &str, dtype, shape: &[u64], bytes: &[u8], meta| {
        w.add_tensor(name, dtype, shape, bytes, meta)
            .unwrap()
            .unwrap()
    };
    let q_id = add(
        "q",
        DType::F32,
        shape,
        bytemuck::cast_slice(q),
        TensorMeta::new(),
    );
    let n = [pos.len() as u64];
    let pos_id = add(
        "pos",
        DType::I32,
        &n,
        bytemuck::cast_slice(pos),
        TensorMeta::new(),
    );
    let meta = TensorMeta::new().computed_from(op, &[q_id, pos_id]);
    add(
        "q_rope",
        DType::F32,
        shape,
        bytemuck::cast_slice(q_rope),
        meta,
    );
    w.finish().unwrap();
    Trace::open(path).unwrap()
}

/// The same RoPE as the llama.cpp ↔ HF pairing meets it: A `[1, T, H, D]`,
/// B `[1, H, T, D]` compared through `transpose(-3, -2)`, B rotated with a
/// base none of the usual ones (twice Llama's): the diagnosis reads A's
/// input through the same transform and fits B's base.
#[test]
fn rope_with_another_base_is_named_through_the_pairings_transform() {
    // four heads, and one (a single KV head: still an axis of the frame)
    for h in [4usize, 1] {
        rope_with_another_base_for(h);
    }
}

fn rope_with_another_base_for(h: usize) {
    use trace_tools::diagnose::rope::{apply, Pairing, Variant};
    let (t, d) = (5usize, 16usize);
    let dir = tempfile::tempdir().unwrap();
    let x = weights(23, t * h * d);
    let pos: Vec<i32> = (0..t as i32).collect();
    let pos_f: Vec<f64> = pos.iter().map(|&p| p as f64).collect();
    // [T, H, D] -> [H, T, D]
    let heads_first = |v: &[f32]| -> Vec<f32> {
        let mut out = vec![0f32; v.len()];
        for ti in 0..t {
            for hi in 0..h {
                let (from, to) = ((ti * h + hi) * d, (hi * t + ti) * d);
                out[to..to + d].copy_from_slice(&v[from..from + d]);
            }
        }
        out
    };
    let mut traces = Vec::new();
    for (name, base, engine) in [
        ("a.tdump", 10_000.0, "ggml"),
        ("b.tdump", 20_000.0, "torch"),
    ] {
        let path = dir.path().join(name);
        let neox = Variant {
            pairing: Pairing::Neox,
            base,
        };
        let y = apply(&x, [t, h, d], &pos_f, neox);
        let (xs, ys, shape) = if engine == "ggml" {
            (x.clone(), y, [1, t as u64, h as u64, d as u64])
        } else {
            (
                heads_first(&x),
                heads_first(&y),
                [1, h as u64, t as u64, d as u64],
            )
        };
        // each engine's own name for the op: not a finding between engines
        let op = if engine == "ggml" { "rope" } else { "add" };
        let metadata = Metadata::new().with("engine", engine);
        traces.push(rope_trace(&path, metadata, &shape, &xs, &pos, op, &ys));
    }
    let mut mapping = Mapping::none();
    mapping.push_rule("q => q | transpose(-3, -2)").unwrap();
    mapping
        .push_rule("q_rope => q_rope | transpose(-3, -2)")
        .unwrap();
    let r = diff(
        &traces[0],
        &traces[1],
        &mapping,
        &Tolerance::default(),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(r.blamed.len(), 1);
    let found = &r.blamed[0].diagnosis;
    assert!(
        !found
            .iter()
            .any(|f| matches!(f.cause, Cause::Params { .. })),
        "ggml's rope and torch's add are one op in two engines' words: {found:?}"
    );
    match &found[0].cause {
        Cause::Rope { a, b } => {
            assert_eq!((a.pairing, a.base), (Pairing::Neox, 10_000.0));
            assert_eq!(
                b.map(|v| (v.pairing, v.base)),
                Some((Pairing::Neox, 20_000.0))
            );
        }
        other => panic!("{other:?}: {}", found[0].evidence),
    }
}

/// Two runs of one step each, in `dir`: a ggml run (A) and a torch run
/// (B), each recording `x` and then `y`, computed from it by the run's op
/// (`(op, y)` of `a` and `b`).
fn x_then_y(dir: &Path, x: &[f32], a: (&str, Vec<f32>), b: (&str, Vec<f32>)) -> Vec<Trace> {
    let shape = [T as u64, D as u64];
    [("a.tdump", "ggml", a), ("b.tdump", "torch", b)]
        .into_iter()
        .map(|(name, engine, (op, y))| {
            let path = dir.join(name);
            let w = Writer::create(&path, Metadata::new().with("engine", engine)).unwrap();
            let xid = w
                .add_tensor(
                    "x",
                    DType::F32,
                    &shape,
                    bytemuck::cast_slice(x),
                    TensorMeta::new(),
                )
                .unwrap()
                .unwrap();
            let meta = TensorMeta::new().computed_from(op, &[xid]);
            w.add_tensor("y", DType::F32, &shape, bytemuck::cast_slice(&y), meta)
                .unwrap();
            w.finish().unwrap();
            Trace::open(&path).unwrap()
        })
        .collect()
}

/// A copy op's output equals its input by design; B (another engine, whose
/// op names are its own) computes something else where A copies: A equals
/// B's input, from which B computes its output.
#[test]
fn a_copy_is_not_stale_and_a_match_upstream_in_b_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let x = weights(31, T * D);
    let sin = x.iter().map(|v| (v * 7.0).sin()).collect();
    let traces = x_then_y(dir.path(), &x, ("cont", x.clone()), ("sin", sin));
    let stale = stale_findings(&traces, &Tolerance::default());
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(
        stale[0].starts_with("A equals `x (record #1 of B)`, which B computes its output from"),
        "A's own input (of a copy) is no stale buffer; B's is upstream: {}",
        stale[0]
    );
}

/// Between engines A's kernel may differ from B's input by more than an
/// exact match allows (here 0.3 %: an f16 table, a fused kernel) and still
/// within the comparison's tolerance: A then equals, as far as the
/// comparison can tell, a tensor B computes its output from.
#[test]
fn a_match_upstream_in_b_within_the_tolerance_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let x = weights(37, T * D);
    let scaled = x.iter().map(|v| v * 1.003).collect();
    let sin = x.iter().map(|v| (v * 7.0).sin()).collect();
    let traces = x_then_y(dir.path(), &x, ("scale", scaled), ("sin", sin));
    let stale = stale_findings(&traces, &Tolerance::default());
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(
        stale[0].starts_with(
            "A equals `x (record #1 of B)` within the comparison's tolerance (atol 1e-3, rtol 1e-2)"
        ),
        "{}",
        stale[0]
    );
    // with a tolerance that does not accept 0.3 %, no such finding
    let tight = Tolerance {
        atol: 1e-6,
        rtol: 1e-3,
        ..Tolerance::default()
    };
    assert!(stale_findings(&traces, &tight).is_empty());
}

/// The evidence of the stale-buffer findings of the one op blamed when
/// `traces` are compared within `tolerance`.
fn stale_findings(traces: &[Trace], tolerance: &Tolerance) -> Vec<String> {
    let r = diff(
        &traces[0],
        &traces[1],
        &Mapping::none(),
        tolerance,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(r.blamed.len(), 1);
    r.blamed[0]
        .diagnosis
        .iter()
        .filter(|f| matches!(f.cause, Cause::Stale { .. }))
        .map(|f| f.evidence.clone())
        .collect()
}

/// A RoPE pair of two shapes (B keeps only the last 4 of 5 tokens' rows,
/// as llama.cpp keeps only the rows it outputs): a shape mismatch from
/// agreeing inputs, diagnosed without a frame for the RoPE check (whose
/// heads-first reading would index B's shorter values), and no panic.
#[test]
fn a_rope_pair_of_two_shapes_is_diagnosed_without_a_panic() {
    use trace_tools::diagnose::rope::{apply, Pairing, Variant};
    let (t, h, d) = (5usize, 4usize, 16usize);
    let dir = tempfile::tempdir().unwrap();
    let neox = Variant {
        pairing: Pairing::Neox,
        base: 10_000.0,
    };
    // [T, H, D] -> [H, T, D], keeping the tokens from `from` on
    let heads_first = |v: &[f32], from: usize| -> Vec<f32> {
        let mut out = Vec::new();
        for hi in 0..h {
            for ti in from..t {
                out.extend_from_slice(&v[(ti * h + hi) * d..][..d]);
            }
        }
        out
    };
    let x = weights(25, t * h * d);
    let pos: Vec<i32> = (0..t as i32).collect();
    let pos_f: Vec<f64> = pos.iter().map(|&p| p as f64).collect();
    let y = apply(&x, [t, h, d], &pos_f, neox);
    let mut traces = Vec::new();
    for (name, from) in [("a.tdump", 0usize), ("b.tdump", 1)] {
        let path = dir.path().join(name);
        let w = Writer::create(&path, Metadata::new()).unwrap();
        let add = |name: &str, dtype, shape: &[u64], bytes: &[u8], meta| {
            w.add_tensor(name, dtype, shape, bytes, meta)
                .unwrap()
                .unwrap()
        };
        let q_shape = [1, h as u64, t as u64, d as u64];
        let q_id = add(
            "q",
            DType::F32,
            &q_shape,
            bytemuck::cast_slice(&heads_first(&x, 0)),
            TensorMeta::new(),
        );
        let pos_id = add(
            "pos",
            DType::I32,
            &[t as u64],
            bytemuck::cast_slice(&pos),
            TensorMeta::new(),
        );
        let meta = TensorMeta::new().computed_from("rope", &[q_id, pos_id]);
        let out_shape = [1, h as u64, (t - from) as u64, d as u64];
        add(
            "q_rope",
            DType::F32,
            &out_shape,
            bytemuck::cast_slice(&heads_first(&y, from)),
            meta,
        );
        w.finish().unwrap();
        traces.push(Trace::open(&path).unwrap());
    }
    let r = diff(
        &traces[0],
        &traces[1],
        &Mapping::none(),
        &Tolerance::default(),
        |_, _| {},
    )
    .unwrap();
    let rope = r.pairs.iter().position(|p| p.key == "q_rope").unwrap();
    assert_eq!(
        r.pairs[rope].verdict,
        trace_tools::compare::Verdict::ShapeMismatch
    );
    assert!(
        r.blamed.iter().any(|bl| bl.pair == rope && bl.diagnosed),
        "{:?}",
        r.blamed
    );
}
