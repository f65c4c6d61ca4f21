use super::to_npz::npy_header;
use super::*;
use safetensors::SafeTensors;
use std::io::Read;
use trace_format::stats::compute_stats;
use trace_writer::{Layout, Op};
use trace_writer::{Metadata, TensorMeta, Writer};

fn f16s(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}

/// A trace with every exportable dtype, a permuted view of a storage, a
/// negative-stride view, a repeated name, a stats-only and a q8_0 tensor.
fn build(path: &Path) {
    let run = Metadata::new()
        .with("engine", "export-test")
        .with("rank", 3u64)
        .with("flag", true);
    let w = Writer::create(path, run).unwrap();
    let cache: Vec<f32> = (0..4 * 6).map(|i| i as f32 - 3.5).collect();
    let s = w
        .add_storage("cache", bytemuck::cast_slice(&cache))
        .unwrap();
    let full = Layout::contiguous(DType::F32, &[4, 6], 0).unwrap();
    let c = w
        .add_view("cache", DType::F32, s, &full, TensorMeta::new().layer(0))
        .unwrap()
        .unwrap();
    // permuted view [6, 4] over the [4, 6] cache, and a sliced one
    let k = full.permute(&[1, 0]).unwrap();
    let meta = TensorMeta::new()
        .layer(0)
        .step(1)
        .role("k")
        .parent(c)
        .op(Op::Permute { axes: vec![1, 0] });
    w.add_view("k", DType::F32, s, &k, meta).unwrap();
    let sliced = full.view(4 * 6 + 4, &[2, 3], &[48, 8]).unwrap();
    w.add_view("slice", DType::F32, s, &sliced, TensorMeta::new())
        .unwrap();
    w.add_tensor(
        "attn_out",
        DType::F16,
        &[2, 3],
        &f16s(&[1., 2., 3., 4., 5., 6.]),
        TensorMeta::new().step(0),
    )
    .unwrap();
    w.add_tensor(
        "attn_out",
        DType::F16,
        &[2, 3],
        &f16s(&[-1., -2., -3., -4., -5., -6.]),
        TensorMeta::new().step(1),
    )
    .unwrap();
    let bf: Vec<u8> = [0.5f32, -2.0, 3.25]
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
        .collect();
    w.add_tensor("bf", DType::BF16, &[3], &bf, TensorMeta::new())
        .unwrap();
    w.add_tensor(
        "fp8",
        DType::F8_E4M3,
        &[2, 2],
        &[0x38, 0xb8, 0x40, 0x00],
        TensorMeta::new(),
    )
    .unwrap();
    w.add_tensor(
        "fp8b",
        DType::F8_E5M2,
        &[2],
        &[0x3c, 0xc0],
        TensorMeta::new(),
    )
    .unwrap();
    let rev = Layout::new(vec![3], vec![-8], 16).unwrap();
    let i32s: Vec<i32> = (0..5).map(|i| i * 10 - 7).collect();
    w.add_strided(
        "rev_i32",
        DType::I32,
        &rev,
        bytemuck::cast_slice(&i32s),
        TensorMeta::new(),
    )
    .unwrap();
    let i64s: [i64; 2] = [i64::MIN, 42];
    w.add_tensor(
        "i64",
        DType::I64,
        &[2],
        bytemuck::cast_slice(&i64s),
        TensorMeta::new(),
    )
    .unwrap();
    let u64s: [u64; 1] = [u64::MAX];
    w.add_tensor(
        "scalar_u64",
        DType::U64,
        &[],
        bytemuck::cast_slice(&u64s),
        TensorMeta::new(),
    )
    .unwrap();
    let f64s: [f64; 2] = [std::f64::consts::PI, -0.0];
    w.add_tensor(
        "f64",
        DType::F64,
        &[1, 2],
        bytemuck::cast_slice(&f64s),
        TensorMeta::new(),
    )
    .unwrap();
    w.add_tensor(
        "i16",
        DType::I16,
        &[2],
        bytemuck::cast_slice(&[-5i16, 7]),
        TensorMeta::new(),
    )
    .unwrap();
    w.add_tensor(
        "u16",
        DType::U16,
        &[2],
        bytemuck::cast_slice(&[5u16, 65535]),
        TensorMeta::new(),
    )
    .unwrap();
    w.add_tensor(
        "u32",
        DType::U32,
        &[1],
        bytemuck::cast_slice(&[9u32]),
        TensorMeta::new(),
    )
    .unwrap();
    w.add_tensor("i8", DType::I8, &[2], &[0x80, 0x7f], TensorMeta::new())
        .unwrap();
    w.add_tensor("u8", DType::U8, &[2, 0], &[], TensorMeta::new())
        .unwrap();
    w.add_tensor(
        "mask",
        DType::Bool,
        &[3],
        &[1, 0, 1],
        TensorMeta::new().role("mask"),
    )
    .unwrap();
    let kq = [0.25f32, 0.75];
    let stats = compute_stats(DType::F32, bytemuck::cast_slice(&kq)).unwrap();
    w.add_stats("kq", DType::F32, &[2], stats, TensorMeta::new())
        .unwrap();
    // a q8_0 block: scale 0.5 (f16 0x3800), quants -16..16
    let q8: Vec<u8> = [0x00, 0x38]
        .into_iter()
        .chain((-16i8..16).map(|q| q as u8))
        .collect();
    w.add_tensor("w_q8", DType::Q8_0, &[32], &q8, TensorMeta::new())
        .unwrap();
    w.add_tensor("cache", DType::U8, &[1], &[9], TensorMeta::new())
        .unwrap();
    w.finish().unwrap();
}

/// Export name → record id, as the exporter names them.
fn by_export_name(trace: &Trace) -> Vec<(String, u64)> {
    let (names, _) = export_names(trace, &|_| false);
    trace
        .tensor_ids()
        .iter()
        .map(|id| (names[id].clone(), *id))
        .collect()
}

#[test]
fn safetensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.tdump");
    build(&src);
    let trace = Trace::open(&src).unwrap();
    let st = dir.path().join("out.safetensors");
    let s = export(&trace, ExportFormat::Safetensors, &st, None).unwrap();
    assert_eq!(s.bytes, fs::metadata(&st).unwrap().len());
    let probe = dir.path().join("probe");
    fs::write(&probe, b"").unwrap();
    assert_eq!(
        fs::metadata(&st).unwrap().permissions(),
        fs::metadata(&probe).unwrap().permissions()
    );
    let skipped: Vec<&str> = s.skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(skipped, ["kq"]);
    let converted: Vec<&str> = s.converted.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(converted, ["w_q8"], "{:?}", s.converted);
    assert!(s.converted[0].1.contains("q8_0 → f32"), "{:?}", s.converted);
    assert!(
        s.exported.contains(&"attn_out#1".to_string())
            && s.exported.contains(&"cache#1".to_string())
    );
    assert_eq!(s.exported.len(), trace.len() - 1);

    // the file itself: metadata as plain strings, source layouts kept
    let raw = fs::read(&st).unwrap();
    let (_, header) = SafeTensors::read_metadata(&raw).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta["engine"], "export-test");
    assert_eq!(meta["rank"], "3");
    assert_eq!(meta["flag"], "true");
    let described: serde_json::Value = serde_json::from_str(&meta[TENSORS_KEY]).unwrap();
    let k = &described["k"];
    assert_eq!(k["shape"], json!([6, 4]));
    assert_eq!(k["byte_strides"], json!([4, 24]));
    assert_eq!(k["storage"], json!(1));
    assert_eq!(k["role"], json!("k"));
    assert_eq!(k["lineage"], json!("cache → permute(1,0)"));
    assert_eq!(
        described["kq"]["skipped"],
        json!("statistics only: the trace holds no values")
    );
    assert_eq!(described["cache#1"]["dtype"], json!("u8"));

    // back into a trace
    let back = dir.path().join("back.tdump");
    let imp = import_safetensors(&st, &back).unwrap();
    assert_eq!(imp.tensors as usize, s.exported.len());
    let t2 = Trace::open(&back).unwrap();
    assert!(
        t2.is_finished() && t2.verify().is_ok(),
        "{:?}",
        t2.verify().faults
    );
    assert_eq!(
        t2.run_metadata().get("engine"),
        Some(&Value::Str("export-test".into()))
    );
    assert_eq!(
        t2.run_metadata().get("imported_from"),
        Some(&Value::Str(st.display().to_string()))
    );
    // source order restored
    let imported: Vec<&str> = t2
        .tensor_ids()
        .iter()
        .map(|&id| t2.record_name(id).unwrap())
        .collect();
    assert_eq!(
        imported,
        s.exported.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for (name, id) in by_export_name(&trace) {
        let orig = trace.tensor(id).unwrap();
        if orig.is_stats_only() {
            assert!(t2.get(&name).is_err(), "{name}");
            continue;
        }
        if orig.dtype.is_block() {
            // exported as its dequantized values
            let got = t2.get(&name).unwrap();
            assert_eq!(
                (got.dtype, got.layout.shape()),
                (DType::F32, orig.layout.shape()),
                "{name}"
            );
            assert_eq!(
                t2.view(got.id).unwrap().to_f32().unwrap(),
                trace.view(id).unwrap().to_f32().unwrap(),
                "{name}"
            );
            continue;
        }
        let got = t2.get(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.dtype, orig.dtype, "{name}");
        assert_eq!(got.layout.shape(), orig.layout.shape(), "{name}");
        assert!(got.is_contiguous(), "{name}");
        assert_eq!(
            (got.layer, got.step, &got.role),
            (orig.layer, orig.step, &orig.role),
            "{name}"
        );
        let want = trace.view(id).unwrap().materialize().unwrap();
        assert_eq!(
            t2.view(got.id).unwrap().materialize().unwrap(),
            want,
            "{name}"
        );
    }
    // the permuted view came out as the permuted array, row-major
    let k = t2.view_by_name("k").unwrap().to_f32().unwrap();
    let expect: Vec<f32> = (0..6)
        .flat_map(|j| (0..4).map(move |i| (i * 6 + j) as f32 - 3.5))
        .collect();
    assert_eq!(k, expect);
    assert_eq!(
        t2.view_by_name("rev_i32")
            .unwrap()
            .as_slice::<i32>()
            .unwrap(),
        &[33, 13, -7]
    );
    assert_eq!(
        t2.view_by_name("attn_out#1").unwrap().to_f32().unwrap(),
        [-1., -2., -3., -4., -5., -6.]
    );
}

#[test]
fn export_filter_and_name_clashes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.tdump");
    build(&src);
    let trace = Trace::open(&src).unwrap();
    let second = trace.find("attn_out")[1];
    let st = dir.path().join("one.safetensors");
    let s = export(&trace, ExportFormat::Safetensors, &st, Some(&[second])).unwrap();
    assert_eq!(s.exported, ["attn_out#1"]);
    let raw = fs::read(&st).unwrap();
    let f = SafeTensors::deserialize(&raw).unwrap();
    assert_eq!(f.names(), ["attn_out#1"]);
    let err = export(&trace, ExportFormat::Npz, &st, Some(&[0])).unwrap_err();
    assert!(
        err.to_string().contains("record 0 is not a tensor"),
        "{err:#}"
    );
    assert!(export(&trace, ExportFormat::Npz, &src, None).is_err());

    // a tensor literally named `x#1` beside two `x`s, and one named __metadata__
    let p = dir.path().join("clash.tdump");
    let w = Writer::create(&p, Metadata::new()).unwrap();
    for (n, v) in [("x", 1u8), ("x#1", 2), ("x", 3), ("__metadata__", 4)] {
        w.add_tensor(n, DType::U8, &[1], &[v], TensorMeta::new())
            .unwrap();
    }
    w.finish().unwrap();
    let t = Trace::open(&p).unwrap();
    let out = dir.path().join("clash.safetensors");
    let s = export(&t, ExportFormat::Safetensors, &out, None).unwrap();
    assert_eq!(s.exported, ["x", "x#1", "x#1@3", "__metadata__@4"]);
    assert_eq!(s.converted.len(), 2, "{:?}", s.converted);
    let back = dir.path().join("clash.tdump2");
    import_safetensors(&out, &back).unwrap();
    let t2 = Trace::open(&back).unwrap();
    for (name, v) in [("x", 1u8), ("x#1", 2), ("x#1@3", 3), ("__metadata__@4", 4)] {
        assert_eq!(
            t2.view_by_name(name).unwrap().as_slice::<u8>().unwrap(),
            &[v],
            "{name}"
        );
    }
}

#[test]
fn import_errors_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let out = dir.path().join("o.tdump");
    let err = import_safetensors(&junk, &out).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("junk.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
    assert!(!out.exists());
    let missing = dir.path().join("missing.safetensors");
    assert!(
        format!("{:#}", import_safetensors(&missing, &out).unwrap_err())
            .contains("missing.safetensors")
    );

    struct Raw(Dtype, Vec<usize>, Vec<u8>);
    impl View for &Raw {
        fn dtype(&self) -> Dtype {
            self.0
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.2)
        }
        fn data_len(&self) -> usize {
            self.2.len()
        }
    }
    let ok = Raw(Dtype::F32, vec![1], vec![0; 4]);
    let odd = Raw(Dtype::C64, vec![1], vec![0; 8]);
    let f = dir.path().join("c64.safetensors");
    safetensors::serialize_to_file([("fine", &ok), ("complex", &odd)], None, &f).unwrap();
    let msg = format!("{:#}", import_safetensors(&f, &out).unwrap_err());
    assert!(
        msg.contains("c64.safetensors") && msg.contains("`complex`") && msg.contains("C64"),
        "{msg}"
    );
    assert!(!out.exists());
    assert!(import_safetensors(&f, &f).is_err());
}

/// A parsed `.npy` file: (descr, shape, data).
fn parse_npy(b: &[u8]) -> (String, Vec<u64>, Vec<u8>) {
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let start = 10 + hlen;
    assert_eq!(start % 64, 0);
    let h = std::str::from_utf8(&b[10..start]).unwrap();
    assert!(h.ends_with('\n'));
    let descr = h
        .split("'descr': '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_owned();
    assert!(h.contains("'fortran_order': False"));
    let shape = h
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (descr, shape, b[start..].to_vec())
}

#[test]
fn npz_export() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.tdump");
    build(&src);
    let trace = Trace::open(&src).unwrap();
    let npz = dir.path().join("out.npz");
    let s = export(&trace, ExportFormat::Npz, &npz, None).unwrap();
    let conv: Vec<&str> = s.converted.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(conv, ["bf", "fp8", "fp8b", "w_q8"]);
    assert_eq!(s.skipped.len(), 1);

    let mut zip = zip::ZipArchive::new(File::open(&npz).unwrap()).unwrap();
    assert_eq!(zip.len(), s.exported.len());
    let mut seen = HashMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Stored);
        assert_eq!(f.data_start().unwrap() % 64, 0, "{}", f.name());
        let name = f.name().strip_suffix(".npy").unwrap().to_owned();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        seen.insert(name, parse_npy(&b));
    }
    for (name, id) in by_export_name(&trace) {
        let t = trace.tensor(id).unwrap();
        if t.is_stats_only() {
            assert!(!seen.contains_key(&name));
            continue;
        }
        let (descr, shape, data) = &seen[&name];
        if t.dtype.is_block() {
            let want: Vec<u8> = (-16..16)
                .flat_map(|q| (q as f32 * 0.5).to_le_bytes())
                .collect();
            assert_eq!((descr.as_str(), data), ("<f4", &want), "{name}");
            continue;
        }
        assert_eq!(shape, t.layout.shape(), "{name}");
        let v = trace.view(id).unwrap();
        let want = match t.dtype {
            DType::BF16 | DType::F8_E4M3 | DType::F8_E5M2 => {
                assert_eq!(descr, "<f4");
                v.to_f32()
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect()
            }
            _ => v.materialize().unwrap(),
        };
        assert_eq!(data, &want, "{name}");
    }
    assert_eq!(seen["mask"].0, "|b1");
    assert_eq!(seen["attn_out#1"].0, "<f2");
    assert_eq!(seen["scalar_u64"].1, Vec::<u64>::new());
    assert_eq!(seen["u8"].1, [2, 0]);
    let fp8: Vec<f32> = seen["fp8"]
        .2
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(fp8, [1.0, -1.0, 2.0, 0.0]);
    let k: Vec<f32> = seen["k"]
        .2
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(k[..4], [-3.5, 2.5, 8.5, 14.5]);
    assert_eq!(npy_header("<f4", &[7]).unwrap().len() % 64, 0);
    assert!(
        String::from_utf8(npy_header("<f4", &[2, 3]).unwrap()[10..].to_vec())
            .unwrap()
            .contains("'shape': (2, 3), }")
    );

    numpy_check(&npz, &trace);
}

/// Load the npz with numpy in a subprocess (the reference Python that
/// `make test` sets up in `.venv`, or `$TRACEDUMP_PYTHON`) and compare.
fn numpy_check(npz: &Path, trace: &Trace) {
    let python = std::env::var_os("TRACEDUMP_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let script = r#"
import json, sys, numpy as np
z = np.load(sys.argv[1])
out = {}
for k in z.files:
    a = z[k]
    out[k] = {"dtype": a.dtype.str, "shape": list(a.shape), "values": a.astype(np.float64).ravel().tolist()}
print(json.dumps(out))
"#;
    let o = std::process::Command::new(&python).args(["-c", script]).arg(npz).output().unwrap_or_else(|e| {
            panic!("cannot run {} ({e}): run `make test`, which creates .venv with numpy, or set TRACEDUMP_PYTHON", python.display())
        });
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut n = 0;
    for (name, id) in by_export_name(trace) {
        let t = trace.tensor(id).unwrap();
        if t.is_stats_only() {
            assert!(got.get(&name).is_none());
            continue;
        }
        n += 1;
        let g = &got[&name];
        assert_eq!(g["shape"], json!(t.layout.shape()), "{name}");
        let want = trace.view(id).unwrap().to_f64().unwrap();
        let vals: Vec<f64> = g["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(vals, want, "{name}");
    }
    assert_eq!(got.as_object().unwrap().len(), n);
}
