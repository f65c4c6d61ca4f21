//! Pairing two engines' traces: within steps, by engine op, through the
//! mapping's transforms; and the ggml recorder's graph-level tensors.

#![forbid(unsafe_code)]

use trace_format::{DType, Metadata};
use trace_reader::Trace;
use trace_tools::compare::{diff, Tolerance, Verdict};
use trace_tools::mapping::Mapping;
use trace_writer::ggml::{GgmlNode, GgmlRecorder};
use trace_writer::{TensorMeta, Writer};

fn f32s(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// HF order of one head of `d` values: `x[k·d/2 + j]`; llama.cpp's
/// converter puts it at `2j + k`.
fn to_llama_rows(hf: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0.0; hf.len()];
    for (head, o) in hf.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        for j in 0..d / 2 {
            o[2 * j] = head[j];
            o[2 * j + 1] = head[d / 2 + j];
        }
    }
    out
}

/// An "engine" (llama.cpp names, ggml ops, rows permuted for RoPE) and a
/// "reference" (HF names) of the same values over a prompt of 3 tokens and
/// one decode step; `bug` perturbs the engine's step-1 q.
fn write_pair(dir: &std::path::Path, bug: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    let (heads, d) = (2usize, 4usize);
    let a_path = dir.join(format!("engine{bug}.tdump"));
    let b_path = dir.join("reference.tdump");
    let a = Writer::create(&a_path, Metadata::new()).unwrap();
    let b = Writer::create(&b_path, Metadata::new()).unwrap();
    for (step, tokens) in [(0i64, 3usize), (1, 1)] {
        let n = tokens * heads * d;
        let q: Vec<f32> = (0..n)
            .map(|i| (i as f32 + 1.0) * 0.25 + step as f32)
            .collect();
        let mut q_llama = to_llama_rows(&q, d);
        if bug && step == 1 {
            q_llama[1] += 1.0;
        }
        let meta = |op: &str| {
            TensorMeta::new()
                .step(step)
                .layer(0)
                .engine_op("ggml", op, &[])
        };
        // llama.cpp: Qcur-0 as MUL_MAT [T, H·D], then RESHAPE [T, H, D]
        a.add_tensor(
            "Qcur-0",
            DType::F32,
            &[tokens as u64, (heads * d) as u64],
            f32s(&q_llama),
            meta("MUL_MAT"),
        )
        .unwrap();
        a.add_tensor(
            "Qcur-0",
            DType::F32,
            &[1, tokens as u64, heads as u64, d as u64],
            f32s(&q_llama),
            meta("RESHAPE"),
        )
        .unwrap();
        // the output: llama.cpp keeps only the last token's row
        let logits: Vec<f32> = (0..tokens * 5)
            .map(|i| i as f32 * 0.5 - step as f32)
            .collect();
        a.add_tensor(
            "result_output",
            DType::F32,
            &[1, 5],
            f32s(&logits[logits.len() - 5..]),
            TensorMeta::new().step(step),
        )
        .unwrap();
        a.add_tensor(
            "inp_pos",
            DType::F32,
            &[tokens as u64],
            f32s(&vec![0.0; tokens]),
            TensorMeta::new().step(step),
        )
        .unwrap();
        b.add_tensor(
            "q_proj",
            DType::F32,
            &[1, tokens as u64, (heads * d) as u64],
            f32s(&q),
            TensorMeta::new().step(step).layer(0),
        )
        .unwrap();
        b.add_tensor(
            "lm_head",
            DType::F32,
            &[1, tokens as u64, 5],
            f32s(&logits),
            TensorMeta::new().step(step),
        )
        .unwrap();
    }
    a.finish().unwrap();
    b.finish().unwrap();
    (a_path, b_path)
}

const MAP: &str = r"
^Qcur-(\d+)$ @MUL_MAT => unpaired: rows permuted for RoPE, compared as its RESHAPE
^Qcur-(\d+)$ @RESHAPE => q_proj | rope_rows | reshape
^result_output$ => lm_head | last_rows
";

#[test]
fn pairs_within_steps_through_transforms() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_pair(dir.path(), false);
    let (ta, tb) = (Trace::open(&a).unwrap(), Trace::open(&b).unwrap());
    let m = Mapping::from_map(MAP).unwrap();
    let r = diff(&ta, &tb, &m, &Tolerance::default(), |_, _| {}).unwrap();
    assert!(r.by_step);
    assert!(r.agrees(), "{:#?}", r.pairs);
    let made: Vec<(Option<i64>, &str, &str)> = r
        .pairs
        .iter()
        .map(|p| (p.step, p.a.name.as_str(), p.b.name.as_str()))
        .collect();
    assert_eq!(
        made,
        [
            (Some(0), "Qcur-0", "q_proj"),
            (Some(0), "result_output", "lm_head"),
            (Some(1), "Qcur-0", "q_proj"),
            (Some(1), "result_output", "lm_head"),
        ]
    );
    assert_eq!(r.pairs[0].transforms, ["rope_rows", "reshape"]);
    assert_eq!(
        r.pairs[0].rule.as_deref(),
        Some(r"^Qcur-(\d+)$ @RESHAPE => q_proj | rope_rows | reshape")
    );
    // the MUL_MAT by its rule, inp_pos for want of a partner: each with why
    assert_eq!(r.unpaired.len(), 4);
    assert!(
        r.unpaired[0].reason.starts_with("rows permuted for RoPE"),
        "{:?}",
        r.unpaired[0]
    );
    assert!(
        r.unpaired[1]
            .reason
            .starts_with("B has no tensor named `inp_pos`"),
        "{:?}",
        r.unpaired[1]
    );

    // without the transform, the same pair diverges: nothing is reinterpreted silently
    let plain = Mapping::from_map("^Qcur-(\\d+)$ @RESHAPE => q_proj | reshape").unwrap();
    let r = diff(&ta, &tb, &plain, &Tolerance::default(), |_, _| {}).unwrap();
    assert_eq!(r.first_divergence, Some(0));
    // and without `reshape`, [T, H, D] against [T, H·D] is a shape mismatch
    let r = diff(
        &ta,
        &tb,
        &Mapping::from_map("^Qcur-(\\d+)$ @RESHAPE => q_proj | rope_rows").unwrap(),
        &Tolerance::default(),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(r.pairs[0].verdict, Verdict::ShapeMismatch);
}

#[test]
fn a_bug_is_found_in_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_pair(dir.path(), true);
    let (ta, tb) = (Trace::open(&a).unwrap(), Trace::open(&b).unwrap());
    let r = diff(
        &ta,
        &tb,
        &Mapping::from_map(MAP).unwrap(),
        &Tolerance::default(),
        |_, _| {},
    )
    .unwrap();
    let first = &r.pairs[r.first_divergence.unwrap()];
    assert_eq!((first.step, first.a.name.as_str()), (Some(1), "Qcur-0"));
    let m = first.metrics.as_ref().unwrap();
    // A's element 1 in llama.cpp's order (2j + k, j = 0, k = 1) is HF's
    // element k·D/2 + j = 2 of head 0, reported in B's shape [1, 1, 8]
    assert_eq!(m.max_abs, 1.0);
    assert_eq!(m.max_abs_index, [0, 0, 2]);
}

#[test]
fn without_steps_occurrences_pair_over_the_whole_trace() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, values: &[[f32; 2]]| {
        let p = dir.path().join(name);
        let w = Writer::create(&p, Metadata::new()).unwrap();
        for v in values {
            w.add_tensor("x", DType::F32, &[2], f32s(v), TensorMeta::new())
                .unwrap();
        }
        w.finish().unwrap();
        Trace::open(p).unwrap()
    };
    let a = write("a.tdump", &[[1.0, 2.0], [3.0, 4.0]]);
    let b = write("b.tdump", &[[1.0, 2.0], [3.0, 4.5]]);
    let r = diff(&a, &b, &Mapping::none(), &Tolerance::default(), |_, _| {}).unwrap();
    assert!(!r.by_step);
    assert_eq!(r.pairs.len(), 2);
    assert_eq!(r.first_divergence, Some(1));
    assert_eq!(r.pairs[1].step, None);

    // two runs that share no name compared nothing: they do not agree
    let p = dir.path().join("other.tdump");
    let w = Writer::create(&p, Metadata::new()).unwrap();
    w.add_tensor("y", DType::F32, &[2], f32s(&[1.0, 2.0]), TensorMeta::new())
        .unwrap();
    w.finish().unwrap();
    let r = diff(
        &a,
        &Trace::open(p).unwrap(),
        &Mapping::none(),
        &Tolerance::default(),
        |_, _| {},
    )
    .unwrap();
    assert!(r.pairs.is_empty() && r.first_divergence.is_none());
    assert!(!r.agrees());
}

#[test]
fn graph_level_ggml_tensors_have_no_layer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.tdump");
    let rec = GgmlRecorder::new(Writer::create(&path, Metadata::new()).unwrap());
    rec.set_step(Some(0));
    let data: Vec<f32> = vec![1.0; 4];
    let node = |name: &'static str,
                op: &'static str,
                key: usize,
                srcs: &'static [(usize, &'static str)]| GgmlNode {
        name,
        op,
        ggml_type: 0,
        ne: [4, 1, 1, 1],
        nb: [4, 16, 16, 16],
        op_params: &[],
        key,
        srcs,
        data: f32s(&data),
        view: None,
        once: false,
    };
    for n in [
        node("l_out-1", "ADD", 1, &[]),
        node("norm", "RMS_NORM", 2, &[(1, "l_out-1")]),
        node("node_7", "MUL", 3, &[(1, "l_out-1")]),
        node("l_out-1 (view)", "VIEW", 4, &[(1, "l_out-1")]),
        node("result_output", "MUL_MAT", 5, &[(2, "norm")]),
    ] {
        rec.record(&n).unwrap();
    }
    rec.finish().unwrap();
    let t = Trace::open(&path).unwrap();
    let layers: Vec<(String, Option<i64>)> = t
        .tensors()
        .map(|x| x.unwrap())
        .map(|x| (x.name.clone(), x.layer))
        .collect();
    assert_eq!(
        layers,
        [
            ("l_out-1".into(), Some(1)),
            ("norm".into(), None),
            ("node_7".into(), Some(1)),
            ("l_out-1 (view)".into(), Some(1)),
            ("result_output".into(), None),
        ]
    );
    // format 1.1's op relation: computed by the ggml op, a view by a view op
    let op = |name: &str| t.get(name).unwrap().op().map(|o| o.unwrap());
    let norm = op("norm").unwrap();
    assert_eq!(norm.relation, trace_format::op::Relation::Computed);
    assert_eq!(norm.name.as_deref(), Some("rms_norm"));
    assert!(t.get("norm").unwrap().is_computed());
    let view = op("l_out-1 (view)").unwrap();
    assert_eq!(view.relation, trace_format::op::Relation::View);
    assert!(!t.get("l_out-1 (view)").unwrap().is_computed());
    assert_eq!(
        op("result_output").unwrap().name.as_deref(),
        Some("mul_mat")
    );
}
