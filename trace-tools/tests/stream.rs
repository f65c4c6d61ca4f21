//! Chunked metrics equal whole-tensor ones: over any chunk boundaries, with
//! NaN and infinities anywhere, for f32, f16, bf16 and quantized tensors,
//! strided, permuted and broadcast views, and the mapping's transforms.

use proptest::prelude::*;
use trace_format::{DType, Layout};
use trace_reader::Trace;
use trace_tools::compare::{compare_values, Metrics, Tolerance};
use trace_tools::mapping::{self, Transform};
use trace_tools::metrics::MetricAcc;
use trace_tools::stream::{self, Source};
use trace_writer::{Metadata, TensorMeta, Writer, WriterOptions};

fn close(x: f64, y: f64, scale: f64) -> bool {
    x == y || (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-12 * (x.abs() + y.abs() + scale)
}

/// Exact where the metric is a maximum, a count or an index; within
/// rounding where it is a sum (the order of the additions differs).
fn assert_same(got: &Metrics, want: &Metrics, scale: f64) {
    let exact = |what: &str, x: f64, y: f64| {
        assert!(
            x == y || (x.is_nan() && y.is_nan()),
            "{what}: {x} != {y}\n{got:?}\n{want:?}"
        )
    };
    assert_eq!(got.numel, want.numel);
    exact("max_abs", got.max_abs, want.max_abs);
    assert_eq!(got.max_abs_index, want.max_abs_index, "{got:?}\n{want:?}");
    exact("max_abs_a", got.max_abs_a, want.max_abs_a);
    exact("max_abs_b", got.max_abs_b, want.max_abs_b);
    exact("max_rel", got.max_rel, want.max_rel);
    assert_eq!(got.max_ulp, want.max_ulp);
    assert_eq!(got.nan_mismatch, want.nan_mismatch);
    assert_eq!(got.inf_mismatch, want.inf_mismatch);
    assert_eq!(got.outside_tolerance, want.outside_tolerance);
    for (g, w) in [(&got.a, &want.a), (&got.b, &want.b)] {
        exact("min", g.min, w.min);
        exact("max", g.max, w.max);
        assert!(close(g.mean, w.mean, scale), "mean {} {}", g.mean, w.mean);
        assert!(close(g.std, w.std, scale), "std {} {}", g.std, w.std);
    }
    for (what, x, y) in [
        ("mean_abs", got.mean_abs, want.mean_abs),
        ("rmse", got.rmse, want.rmse),
        ("cosine", got.cosine, want.cosine),
    ] {
        assert!(close(x, y, scale), "{what}: {x} != {y}");
    }
}

/// Mostly ordinary values, with zeros, NaN and infinities sprinkled in.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        20 => -8.0f64..8.0,
        2 => Just(0.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ]
}

/// A pair: B is A plus noise, or some other value, element by element.
fn pair(max: usize) -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
    prop::collection::vec((value(), -0.01f64..0.01, value(), 0u8..10), 0..max).prop_map(|v| {
        v.into_iter()
            .map(|(a, noise, other, pick)| match pick {
                0 => (a, other),
                1 => (a, a),
                _ => (a, a + noise),
            })
            .unzip()
    })
}

/// Chunk by chunk (`chunk` values each) into groups of `group` chunks, the
/// groups merged in order.
fn chunked<T: Copy + Into<f64>>(
    a: &[T],
    b: &[T],
    chunk: usize,
    group: usize,
    ulp: Option<DType>,
) -> Metrics {
    let tol = Tolerance::default();
    let mut total = MetricAcc::default();
    for (g, (ga, gb)) in a
        .chunks(chunk * group)
        .zip(b.chunks(chunk * group))
        .enumerate()
    {
        let mut acc = MetricAcc::default();
        for (c, (ca, cb)) in ga.chunks(chunk).zip(gb.chunks(chunk)).enumerate() {
            acc.add_chunk((g * chunk * group + c * chunk) as u64, ca, cb, &tol, ulp);
        }
        total.merge(acc);
    }
    total.finish(&[a.len() as u64], ulp)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunked_metrics_equal_whole((a, b) in pair(300), chunk in 1usize..40, group in 1usize..5) {
        let want = compare_values(&a, &b, &[a.len() as u64], &Tolerance::default(), None);
        assert_same(&chunked(&a, &b, chunk, group, None), &want, 8.0);
        // the same values as f32, read as f32
        let (fa, fb): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|&x| x as f32).collect(),
            b.iter().map(|&x| x as f32).collect(),
        );
        let (wa, wb): (Vec<f64>, Vec<f64>) = (
            fa.iter().map(|&x| f64::from(x)).collect(),
            fb.iter().map(|&x| f64::from(x)).collect(),
        );
        let want = compare_values(&wa, &wb, &[a.len() as u64], &Tolerance::default(), None);
        assert_same(&chunked(&fa, &fb, chunk, group, None), &want, 8.0);
    }

    #[test]
    fn chunked_ulp_equals_whole((a, b) in pair(200), chunk in 1usize..40, bf in any::<bool>()) {
        let (dt, round): (DType, fn(f64) -> f64) = if bf {
            (DType::BF16, |x| half::bf16::from_f64(x).to_f64())
        } else {
            (DType::F16, |x| half::f16::from_f64(x).to_f64())
        };
        let a: Vec<f64> = a.into_iter().map(round).collect();
        let want = compare_values(&a, &b, &[a.len() as u64], &Tolerance::default(), Some(dt));
        assert_same(&chunked(&a, &b, chunk, 3, Some(dt)), &want, 8.0);
        // as f32 (how an f16/bf16 tensor streams), the ULPs of whole slices
        let (fa, fb): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|&x| x as f32).collect(),
            b.iter().map(|&x| x as f32).collect(),
        );
        let (wa, wb): (Vec<f64>, Vec<f64>) = (
            fa.iter().map(|&x| f64::from(x)).collect(),
            fb.iter().map(|&x| f64::from(x)).collect(),
        );
        let want = compare_values(&wa, &wb, &[a.len() as u64], &Tolerance::default(), Some(dt));
        let mut acc = MetricAcc::default();
        for (k, (ca, cb)) in fa.chunks(chunk).zip(fb.chunks(chunk)).enumerate() {
            acc.add_chunk_f32((k * chunk) as u64, ca, cb, &Tolerance::default(), Some(dt));
        }
        assert_same(&acc.finish(&[a.len() as u64], Some(dt)), &want, 8.0);
    }

    #[test]
    fn streamed_views_equal_whole(
        (a, b) in pair(400),
        rows in 1u64..6,
        chunk in 1usize..50,
        group in 1usize..4,
    ) {
        check_views(&a, &b, rows, (chunk, group));
    }

    #[test]
    fn streamed_transforms_equal_whole(
        (d0, d1, half) in (1u64..4, 1u64..4, 1u64..4),
        vals in prop::collection::vec(-4.0f64..4.0, 64),
        chunk in 1usize..20,
        case in 0usize..7,
    ) {
        check_transforms(d0, d1, half * 2, &vals, case, (chunk, 2));
    }
}

fn bytes_f32(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()
}

fn compare_streamed(t: &Trace, a: &str, b: &str, ulp: Option<DType>, sizes: (usize, usize)) {
    let (va, vb) = (t.view_by_name(a).unwrap(), t.view_by_name(b).unwrap());
    let shape = va.info().layout.shape().to_vec();
    let want = compare_values(
        &va.to_f64().unwrap(),
        &vb.to_f64().unwrap(),
        &shape,
        &Tolerance::default(),
        ulp,
    );
    let (sa, sb) = (Source::of(t, va).unwrap(), Source::of(t, vb).unwrap());
    let got = stream::compare_in(&sa, &sb, &Tolerance::default(), ulp, sizes)
        .unwrap()
        .finish(&shape, ulp);
    assert_same(&got, &want, 8.0);
    // and the moments alone
    let m = stream::moments_in(&sa, sizes).unwrap().moments();
    assert!(close(m.mean, want.a.mean, 8.0) && close(m.std, want.a.std, 8.0));
    assert!(m.min == want.a.min || m.min.is_nan() && want.a.min.is_nan());
}

/// Contiguous f32, f16 and bf16; a transposed, a reversed and a broadcast
/// view; q8_0 and q4_0 blocks (whole and a strided column of blocks).
fn check_views(a: &[f64], b: &[f64], rows: u64, sizes: (usize, usize)) {
    let n = a.len() as u64 / rows * rows;
    let cols = n / rows;
    let (a, b) = (&a[..n as usize], &b[..n as usize]);
    let w = Writer::in_memory(Metadata::new(), WriterOptions::default()).unwrap();
    let shape = [rows, cols];
    let meta = TensorMeta::new;
    w.add_tensor("a", DType::F32, &shape, &bytes_f32(a), meta())
        .unwrap();
    w.add_tensor("b", DType::F32, &shape, &bytes_f32(b), meta())
        .unwrap();
    for (dt, conv) in [
        (
            DType::F16,
            (|x| half::f16::from_f64(x).to_le_bytes()) as fn(f64) -> [u8; 2],
        ),
        (DType::BF16, |x| half::bf16::from_f64(x).to_le_bytes()),
    ] {
        let bytes = |v: &[f64]| v.iter().flat_map(|&x| conv(x)).collect::<Vec<u8>>();
        w.add_tensor(&format!("a{dt}"), dt, &shape, &bytes(a), meta())
            .unwrap();
        w.add_tensor(&format!("b{dt}"), dt, &shape, &bytes(b), meta())
            .unwrap();
    }
    let sa = w.add_storage("sa", &bytes_f32(a)).unwrap();
    let sb = w.add_storage("sb", &bytes_f32(b)).unwrap();
    let contiguous = Layout::contiguous(DType::F32, &shape, 0).unwrap();
    let transposed = contiguous.transpose(0, 1).unwrap();
    let reversed = Layout::new(vec![n], vec![-4], 4 * n.saturating_sub(1)).unwrap();
    let broadcast = Layout::new(vec![3, cols], vec![0, 4], 0).unwrap();
    for (name, l) in [("t", &transposed), ("r", &reversed), ("z", &broadcast)] {
        w.add_view(&format!("a{name}"), DType::F32, sa, l, meta())
            .unwrap();
        w.add_view(&format!("b{name}"), DType::F32, sb, l, meta())
            .unwrap();
    }
    // blocks: finite values (quantizing NaN is not the point here)
    let finite = |v: &[f64]| -> Vec<f32> {
        let mut out: Vec<f32> = v
            .iter()
            .map(|&x| if x.is_finite() { x as f32 } else { 1.5 })
            .collect();
        out.resize((v.len() / 64).max(1) * 64, 0.25);
        out
    };
    let (qa, qb) = (finite(a), finite(b));
    let qshape = [qa.len() as u64 / 64, 64];
    for dt in [DType::Q8_0, DType::Q4_0] {
        w.add_quantized(&format!("a{dt}"), dt, &qshape, &qa, meta())
            .unwrap();
        w.add_quantized(&format!("b{dt}"), dt, &qshape, &qb, meta())
            .unwrap();
    }
    // a column of blocks: every row's second block
    let bb = DType::Q8_0.block_bytes() as i64;
    let qs_a = w
        .add_storage(
            "qa",
            &trace_quant::quantize_to_vec(DType::Q8_0, &qa).unwrap(),
        )
        .unwrap();
    let qs_b = w
        .add_storage(
            "qb",
            &trace_quant::quantize_to_vec(DType::Q8_0, &qb).unwrap(),
        )
        .unwrap();
    let col = Layout::new(vec![qshape[0], 32], vec![2 * bb, bb], bb as u64).unwrap();
    w.add_view("acol", DType::Q8_0, qs_a, &col, meta()).unwrap();
    w.add_view("bcol", DType::Q8_0, qs_b, &col, meta()).unwrap();
    let (_, bytes) = w.finish_into_bytes().unwrap();
    let t = Trace::from_bytes("views.tdump", bytes).unwrap();
    compare_streamed(&t, "a", "b", None, sizes);
    compare_streamed(&t, "af16", "bf16", Some(DType::F16), sizes);
    compare_streamed(&t, "abf16", "bbf16", Some(DType::BF16), sizes);
    compare_streamed(&t, "af16", "b", Some(DType::F16), sizes);
    for v in ["t", "r", "z", "q8_0", "q4_0", "col"] {
        compare_streamed(&t, &format!("a{v}"), &format!("b{v}"), None, sizes);
    }
}

/// Each transform (and rope_rows then a transpose, as the llama presets
/// pair Q and K) streamed as strides equals it applied to the values.
fn check_transforms(d0: u64, d1: u64, d2: u64, vals: &[f64], case: usize, sizes: (usize, usize)) {
    let sa = vec![d0, d1, d2];
    let (transforms, sb): (Vec<Transform>, Vec<u64>) = match case {
        0 => (vec![Transform::Transpose(0, 1)], vec![d1, d0, d2]),
        1 => (vec![Transform::RopeRows], sa.clone()),
        2 => (
            vec![Transform::RopeRows, Transform::Transpose(-3, -2)],
            vec![d1, d0, d2],
        ),
        3 => (vec![Transform::Reshape], vec![d0 * d1, d2]),
        4 => (
            vec![Transform::Transpose(0, 2), Transform::Reshape],
            vec![d2 * d1 * d0],
        ),
        5 => (vec![Transform::Crop(-1)], vec![d0, d1, 1.max(d2 / 2)]),
        _ => (vec![Transform::LastRows], vec![d0, d1 + 2, d2]),
    };
    let na = (d0 * d1 * d2) as usize;
    let nb: usize = sb.iter().product::<u64>() as usize;
    let a: Vec<f64> = vals.iter().cycle().take(na).copied().collect();
    let b: Vec<f64> = vals.iter().rev().cycle().take(nb).copied().collect();
    let w = Writer::in_memory(Metadata::new(), WriterOptions::default()).unwrap();
    w.add_tensor("a", DType::F32, &sa, &bytes_f32(&a), TensorMeta::new())
        .unwrap();
    w.add_tensor("b", DType::F32, &sb, &bytes_f32(&b), TensorMeta::new())
        .unwrap();
    let (_, bytes) = w.finish_into_bytes().unwrap();
    let t = Trace::from_bytes("transforms.tdump", bytes).unwrap();
    let (ta, tb) = (t.view_by_name("a").unwrap(), t.view_by_name("b").unwrap());
    let (shape_a, _) = mapping::transformed_shapes(&transforms, &sa, &sb).unwrap();
    let (wa, wb) = mapping::apply(
        &transforms,
        ta.to_f64().unwrap(),
        &sa,
        tb.to_f64().unwrap(),
        &sb,
    );
    let want = compare_values(&wa, &wb, &shape_a, &Tolerance::default(), None);
    let (mut xa, mut xb) = (Source::of(&t, ta).unwrap(), Source::of(&t, tb).unwrap());
    assert!(
        stream::transform(&transforms, &mut xa, &sa, &mut xb, &sb),
        "{transforms:?} on {sa:?} has strides"
    );
    assert_eq!(xa.numel(), wa.len() as u64, "{transforms:?}");
    let got = stream::compare_in(&xa, &xb, &Tolerance::default(), None, sizes)
        .unwrap()
        .finish(&shape_a, None);
    assert_same(&got, &want, 8.0);
}

/// A tensor of more values than one task walks is split over the pool, and
/// the result is the same as one pass (and the same run to run).
#[test]
fn a_large_tensor_is_split_and_merged_in_order() {
    let n = stream::CHUNK * stream::GROUP * 3 + 12345;
    let a: Vec<f64> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f64 / 100.0 - 5.0)
        .collect();
    let mut b: Vec<f64> = a.iter().map(|x| x + 1e-4).collect();
    b[n - 7] += 3.0;
    let w = Writer::in_memory(Metadata::new(), WriterOptions::default()).unwrap();
    w.add_tensor(
        "a",
        DType::F32,
        &[n as u64],
        &bytes_f32(&a),
        TensorMeta::new(),
    )
    .unwrap();
    w.add_tensor(
        "b",
        DType::F32,
        &[n as u64],
        &bytes_f32(&b),
        TensorMeta::new(),
    )
    .unwrap();
    let (_, bytes) = w.finish_into_bytes().unwrap();
    let t = Trace::from_bytes("large.tdump", bytes).unwrap();
    compare_streamed(&t, "a", "b", None, (stream::CHUNK, stream::GROUP));
    let (sa, sb) = (
        Source::of(&t, t.view_by_name("a").unwrap()).unwrap(),
        Source::of(&t, t.view_by_name("b").unwrap()).unwrap(),
    );
    let runs: Vec<Metrics> = (0..3)
        .map(|_| {
            stream::compare(&sa, &sb, &Tolerance::default(), None)
                .unwrap()
                .finish(&[n as u64], None)
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[1], runs[2]);
    assert_eq!(runs[0].max_abs_index, vec![n as u64 - 7]);
}
