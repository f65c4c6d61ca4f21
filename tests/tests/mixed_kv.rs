//! The mixed KV cache: a quantized cold part (a view of a q8_0 or q4_0 cache
//! whose heads are half a block) and an f16 hot window, joined along the
//! sequence axis and permuted as llama.cpp permutes K, recorded as one
//! derived tensor. The reader's rebuild must equal an independent reference
//! (gguf-py dequantization + numpy concat/transpose) bit for bit.

#![forbid(unsafe_code)]

use std::path::Path;

use trace_format::layout::ggml;
use trace_format::{DType, Op};
use trace_reader::Trace;
use trace_writer::{TensorMeta, Writer};
use tracedump_tests::{run_python, Rng};

const N_CTX: u64 = 256;
const N_COLD: u64 = 200;
const N_HOT: u64 = N_CTX - N_COLD;
const N_HEAD: u64 = 2;
const HEAD_DIM: u64 = 16;

struct Part {
    qtype: DType,
    /// The whole cold cache (N_CTX positions), as blocks.
    cache_blocks: Vec<u8>,
    /// The hot window as f16 bytes, [N_HOT, N_HEAD, HEAD_DIM].
    hot_f16: Vec<u8>,
}

fn make_part(rng: &mut Rng, qtype: DType) -> Part {
    let row = (N_HEAD * HEAD_DIM) as usize;
    let cold: Vec<f32> = (0..N_CTX as usize * row)
        .map(|_| rng.f32_in(-3.0, 3.0))
        .collect();
    let cache_blocks = trace_quant::quantize_to_vec(qtype, &cold).unwrap();
    let hot_f16 = (0..N_HOT as usize * row)
        .flat_map(|_| half::f16::from_f32(rng.f32_in(-3.0, 3.0)).to_le_bytes())
        .collect();
    Part {
        qtype,
        cache_blocks,
        hot_f16,
    }
}

/// Record one of K/V: the cache storage, the cold view (positions
/// 0..N_COLD, ggml order ne=[HEAD_DIM, N_HEAD, N_COLD, 1]), the hot window,
/// and the derived logical tensor. Returns the names.
fn record(w: &Writer, which: &str, p: &Part) {
    let bb = p.qtype.block_bytes();
    let row_bytes = bb * N_HEAD * HEAD_DIM / p.qtype.block_elems();
    let head_bytes = row_bytes / N_HEAD;
    let storage = w
        .add_storage(&format!("cache_{which}_l0"), &p.cache_blocks)
        .unwrap();
    // the whole cache, as the engine sees it: ne=[16,2,256,1] nb=[bb,bb/2,bb,256*bb]
    let ne_full = [HEAD_DIM as i64, N_HEAD as i64, N_CTX as i64, 1];
    let nb_full = [bb, head_bytes, row_bytes, row_bytes * N_CTX];
    let full = ggml::to_canonical(&ne_full, &nb_full, 0).unwrap();
    w.add_view(
        &format!("cache_{which}_l0"),
        p.qtype,
        storage,
        &full,
        TensorMeta::new().layer(0).ggml_layout(&ne_full, &nb_full),
    )
    .unwrap();
    let ne = [HEAD_DIM as i64, N_HEAD as i64, N_COLD as i64, 1];
    let nb = [bb, head_bytes, row_bytes, row_bytes * N_COLD];
    let cold = ggml::to_canonical(&ne, &nb, 0).unwrap();
    let quant_meta = TensorMeta::new()
        .layer(0)
        .step(0)
        .role(format!("{which}_quant"))
        .ggml_layout(&ne, &nb);
    let q = w
        .add_view(
            &format!("{}_quant-0", which.to_uppercase()),
            p.qtype,
            storage,
            &cold,
            quant_meta,
        )
        .unwrap()
        .unwrap();
    let hot_shape = [1, N_HOT, N_HEAD, HEAD_DIM];
    let hot_meta = TensorMeta::new()
        .layer(0)
        .step(0)
        .role(format!("{which}_hot"));
    let h = w
        .add_tensor(
            &format!("{}_hot-0", which.to_uppercase()),
            DType::F16,
            &hot_shape,
            &p.hot_f16,
            hot_meta,
        )
        .unwrap()
        .unwrap();
    // llama.cpp: ggml_permute(k, 0, 2, 1, 3) — canonically axes [0, 2, 1, 3]
    let axes = ggml::permute_axes(&[0, 2, 1, 3]).unwrap();
    let meta = TensorMeta::new()
        .layer(0)
        .step(0)
        .role(which)
        .parent(q)
        .parent(h)
        .op(Op::Concat { axis: 1 })
        .op(Op::Permute { axes });
    w.add_derived(
        &format!("{}-0", which.to_uppercase()),
        DType::F32,
        &[1, N_HEAD, N_CTX, HEAD_DIM],
        meta,
    )
    .unwrap();
}

fn reference(dir: &Path, p: &Part, n_cold: u64, with_hot: bool, permute: bool) -> Vec<u32> {
    let row_bytes = (p.qtype.block_bytes() * N_HEAD * HEAD_DIM / p.qtype.block_elems()) as usize;
    let cold = dir.join("cold.bin");
    let hot = dir.join("hot.bin");
    let out = dir.join("ref.f32");
    std::fs::write(&cold, &p.cache_blocks[..n_cold as usize * row_bytes]).unwrap();
    std::fs::write(&hot, if with_hot { &p.hot_f16[..] } else { &[][..] }).unwrap();
    let n_hot = if with_hot { N_HOT } else { 0 };
    let args: Vec<String> = [n_cold, n_hot, N_HEAD, HEAD_DIM, u64::from(permute)]
        .iter()
        .map(u64::to_string)
        .collect();
    run_python(
        "mixed_kv_reference.py",
        &[
            &p.qtype.name(),
            &cold,
            &hot,
            &args[0],
            &args[1],
            &args[2],
            &args[3],
            &args[4],
            &out,
        ],
    );
    let bytes = std::fs::read(&out).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn mixed_kv_cache_is_rebuilt_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.tdump");
    let mut rng = Rng::new(7);
    let k = make_part(&mut rng, DType::Q8_0);
    let v = make_part(&mut rng, DType::Q4_0);
    let w = Writer::create(&path, trace_writer::default_run_metadata()).unwrap();
    record(&w, "k", &k);
    record(&w, "v", &v);
    w.finish().unwrap();

    let trace = Trace::open(&path).unwrap();
    let report = trace.verify();
    assert!(report.is_ok(), "{:?}", report.faults);
    for (which, part) in [("K", &k), ("V", &v)] {
        // the logical tensor: cold (dequantized) ++ hot, permuted
        let t = trace.get(&format!("{which}-0")).unwrap();
        assert!(t.derived && !t.is_stats_only());
        assert_eq!(t.layout.shape(), vec![1, N_HEAD, N_CTX, HEAD_DIM]);
        let got = trace.view(t.id).unwrap().to_f32().unwrap();
        let want = reference(dir.path(), part, N_COLD, true, true);
        assert_eq!(
            bits(&got),
            want,
            "{which}: rebuilt tensor differs from gguf-py + numpy"
        );
        // the cold part alone: half-block heads, dequantized then viewed in elements
        let cold = trace
            .view_by_name(&format!("{which}_quant-0"))
            .unwrap()
            .to_f32()
            .unwrap();
        assert_eq!(
            bits(&cold),
            reference(dir.path(), part, N_COLD, false, false),
            "{which}_quant"
        );
        // the raw blocks are still there, untouched
        let raw = trace.view_by_name(&format!("{which}_quant-0")).unwrap();
        assert_eq!(raw.storage_bytes(), &part.cache_blocks[..]);
    }
}

#[test]
fn q8_0_cache_with_half_block_heads() {
    // the real case: ne=[16,2,256,1], nb=[34,17,34,8704]
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.tdump");
    let mut rng = Rng::new(11);
    let k = make_part(&mut rng, DType::Q8_0);
    let w = Writer::create(&path, trace_writer::default_run_metadata()).unwrap();
    record(&w, "k", &k);
    w.finish().unwrap();
    let trace = Trace::open(&path).unwrap();
    let t = trace.get("cache_k_l0").unwrap();
    match &t.source_layout {
        Some(trace_format::SourceLayout::Ggml { ne, nb }) => {
            assert_eq!(
                (ne.as_slice(), nb.as_slice()),
                (&[16i64, 2, 256, 1][..], &[34u64, 17, 34, 8704][..])
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.element_strides(), Some(vec![8192, 32, 16, 1]));
    let got = trace.view(t.id).unwrap().to_f32().unwrap();
    assert_eq!(bits(&got), reference(dir.path(), &k, N_CTX, false, false));
    // one head of one position: elements 16..32 of block 5
    let all = trace_quant::dequantize_to_vec(DType::Q8_0, &k.cache_blocks).unwrap();
    let head = &got[(5 * 32 + 16) as usize..(5 * 32 + 32) as usize];
    assert_eq!(head, &all[5 * 32 + 16..5 * 32 + 32]);
}

#[test]
fn derived_tensor_errors_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.tdump");
    let w = Writer::create(&path, trace_writer::default_run_metadata()).unwrap();
    let a = w
        .add_tensor(
            "a",
            DType::F32,
            &[2, 3],
            bytemuck::cast_slice(&[1.0f32; 6]),
            TensorMeta::new(),
        )
        .unwrap()
        .unwrap();
    let s = w
        .add_stats_of(
            "s",
            DType::F32,
            &[2, 3],
            bytemuck::cast_slice(&[1.0f32; 6]),
            TensorMeta::new(),
        )
        .unwrap()
        .unwrap();
    // concat of mismatched extents
    let bad = TensorMeta::new()
        .parent(a)
        .parent(a)
        .op(Op::Concat { axis: 0 })
        .op(Op::Permute { axes: vec![1, 0] });
    w.add_derived("wrong_shape", DType::F32, &[3, 5], bad)
        .unwrap();
    // a stats-only parent has no values
    let meta = TensorMeta::new().parent(s).op(Op::Cont);
    w.add_derived("from_stats", DType::F32, &[2, 3], meta)
        .unwrap();
    // convert + quantize + a byte view of values
    let meta = TensorMeta::new()
        .parent(a)
        .op(Op::Convert { dtype: DType::F16 })
        .op(Op::View {
            offset: 2,
            shape: vec![5],
            byte_strides: vec![2],
        });
    w.add_derived("tail", DType::F16, &[5], meta).unwrap();
    assert!(w
        .add_derived("no_steps", DType::F32, &[2, 3], TensorMeta::new().parent(a))
        .is_err());
    w.finish().unwrap();
    let trace = Trace::open(&path).unwrap();
    let e = trace
        .view_by_name("wrong_shape")
        .unwrap()
        .to_f32()
        .unwrap_err()
        .to_string();
    assert!(e.contains("`wrong_shape`") && e.contains("[3, 4]"), "{e}");
    let e = trace
        .view_by_name("from_stats")
        .unwrap()
        .to_f32()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`from_stats`") && e.contains("statistics only"),
        "{e}"
    );
    assert_eq!(
        trace.view_by_name("tail").unwrap().to_f32().unwrap(),
        vec![1.0; 5]
    );
    // verify replays layouts: the wrong shape is a lineage fault
    let faults = trace.verify().faults;
    assert!(
        faults.iter().any(|f| f.to_string().contains("wrong_shape")),
        "{faults:?}"
    );
}

#[test]
fn hostile_derivations_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.tdump");
    let w = Writer::create(&path, trace_writer::default_run_metadata()).unwrap();
    let a = w
        .add_tensor(
            "a",
            DType::F32,
            &[4],
            bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0]),
            TensorMeta::new(),
        )
        .unwrap()
        .unwrap();
    // 70 derived tensors, each the previous one copied
    let mut prev = a;
    for i in 0..70 {
        prev = w
            .add_derived(
                &format!("d{i}"),
                DType::F32,
                &[4],
                TensorMeta::new().parent(prev).op(Op::Cont),
            )
            .unwrap()
            .unwrap();
    }
    // each doubles the last: 2^41 values at the end
    let mut prev = a;
    let mut n = 4u64;
    for i in 0..40 {
        n *= 2;
        let meta = TensorMeta::new()
            .parent(prev)
            .parent(prev)
            .op(Op::Concat { axis: 0 });
        prev = w
            .add_derived(&format!("big{i}"), DType::F32, &[n], meta)
            .unwrap()
            .unwrap();
    }
    w.finish().unwrap();
    let trace = Trace::open(&path).unwrap();
    assert_eq!(
        trace.view_by_name("d10").unwrap().to_f32().unwrap(),
        vec![1.0, 2.0, 3.0, 4.0]
    );
    let e = trace
        .view_by_name("d69")
        .unwrap()
        .to_f32()
        .unwrap_err()
        .to_string();
    assert!(e.contains("64 deep"), "{e}");
    assert_eq!(
        trace.view_by_name("big2").unwrap().to_f32().unwrap().len(),
        32
    );
    let e = trace
        .view_by_name("big39")
        .unwrap()
        .to_f32()
        .unwrap_err()
        .to_string();
    assert!(e.contains("`big") && e.contains("values"), "{e}");
}
