//! The `tracedump` binary: every verb on the demo traces and on hostile files,
//! with its output snapshotted (a change in output is a reviewed change).

use std::path::Path;
use std::process::Command;

use insta_cmd::{assert_cmd_snapshot, get_cargo_bin};
use trace_reader::Trace;

fn tracedump(dir: &Path) -> Command {
    let mut c = Command::new(get_cargo_bin("tracedump"));
    c.current_dir(dir).env_remove("COLUMNS");
    c
}

fn run(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = tracedump(dir).args(args).output().expect("run tracedump");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn demo_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(dir.path(), &["demo", "demo.tdump"]).0, 0);
    dir
}

#[test]
fn snapshots() {
    let dir = demo_dir();
    let d = dir.path();
    assert_cmd_snapshot!(
        "inspect_layer0_ggml",
        tracedump(d).args(["inspect", "demo.tdump", "--layer", "0", "--ggml"])
    );
    assert_cmd_snapshot!(
        "inspect_tree",
        tracedump(d).args(["inspect", "demo.tdump", "--tree", "--layer", "1"])
    );
    assert_cmd_snapshot!(
        "inspect_stats",
        tracedump(d).args([
            "inspect",
            "demo.reference.tdump",
            "--filter",
            "^(k|kq_soft_max)-0$",
            "--stats"
        ])
    );
    assert_cmd_snapshot!(
        "diff",
        tracedump(d).args(["diff", "demo.tdump", "demo.reference.tdump"])
    );
    assert_cmd_snapshot!("show_k", tracedump(d).args(["show", "demo.tdump", "k-0"]));
    assert_cmd_snapshot!(
        "show_slice",
        tracedump(d).args([
            "show",
            "demo.tdump",
            "k-0 (copy)",
            "--slice",
            "0, 1, -2:, ::5"
        ])
    );
    assert_cmd_snapshot!("verify", tracedump(d).args(["verify", "demo.tdump"]));
}

#[test]
fn diff_finds_the_planted_divergence_and_gates_ci() {
    let dir = demo_dir();
    let d = dir.path();
    let (code, text) = run(d, &["diff", "demo.tdump", "demo.reference.tdump", "--json"]);
    assert_eq!(code, 1, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let first = json["first_divergence"].as_u64().unwrap() as usize;
    assert_eq!(json["pairs"][first]["key"], "ffn_norm-2");
    // the permuted f16-fed K view of A is compared by value with B's contiguous K
    let k0 = json["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "k-0")
        .unwrap();
    assert_eq!(k0["a"]["contiguous"], false);
    assert_eq!(k0["b"]["contiguous"], true);
    assert_eq!(k0["verdict"]["kind"], "agree");
    assert_eq!(k0["metrics"]["max_abs"], 0.0);
    // a run compared with itself agrees: exit 0
    assert_eq!(
        run(d, &["diff", "demo.reference.tdump", "demo.reference.tdump"]).0,
        0
    );
    // loose enough tolerances make the planted bug pass
    let (code, _) = run(
        d,
        &[
            "diff",
            "demo.tdump",
            "demo.reference.tdump",
            "--atol",
            "10",
            "--min-cosine",
            "0.9",
        ],
    );
    assert_eq!(code, 0);
    // renaming pairs differently named runs
    let (code, text) = run(
        d,
        &[
            "diff",
            "demo.tdump",
            "demo.reference.tdump",
            "--rename",
            "^ffn_norm-(\\d+)$=>nothing-$1",
            "--json",
        ],
    );
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(json["only_in_a"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("ffn_norm-2")));
    assert!(json["unpaired"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "ffn_norm-2"
            && u["reason"]
                == "B has no tensor named `nothing-2` (rule `^ffn_norm-(\\d+)$=>nothing-$1`)"));

    // --explain-pairing: the rule and transforms of each pair, the reason of each unpaired one
    let (code, text) = run(
        d,
        &[
            "diff",
            "demo.tdump",
            "demo.reference.tdump",
            "--rename",
            "^ffn_norm-(\\d+)$ => unpaired: checked elsewhere",
            "--explain-pairing",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        text.contains("pairing (within steps, then by occurrence)"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("ffn_norm-2") && l.ends_with("checked elsewhere")),
        "{text}"
    );
    // a bad rule is a clear error naming it
    let (code, text) = run(
        d,
        &[
            "diff",
            "demo.tdump",
            "demo.reference.tdump",
            "--rename",
            "a => b | flip",
        ],
    );
    assert_eq!(code, 2);
    assert!(text.contains("unknown transform `flip`"), "{text}");
}

#[test]
fn demo_values_and_layouts() {
    let dir = demo_dir();
    let trace = Trace::open(dir.path().join("demo.tdump")).unwrap();
    assert!(trace.verify().is_ok());
    // the f16 copy holds exactly the permuted view's values, rounded to f16
    let view = trace.view_by_name("k-0").unwrap().to_f32().unwrap();
    let copy = trace.view_by_name("k-0 (copy)").unwrap().to_f32().unwrap();
    assert_eq!(view.len(), 512);
    let rounded: Vec<f32> = view
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();
    assert_eq!(rounded, copy);
    // read contiguously, the cache's first 512 values are not the view (the users' misread)
    let cache = trace.view_by_name("cache_k_l0").unwrap().to_f32().unwrap();
    assert_ne!(&cache[..512], &view[..]);
    let reference = Trace::open(dir.path().join("demo.reference.tdump")).unwrap();
    assert_eq!(
        reference.view_by_name("k-0").unwrap().to_f32().unwrap(),
        view
    );
}

#[test]
fn hostile_files_are_clear_errors() {
    let dir = demo_dir();
    let d = dir.path();
    let bytes = std::fs::read(d.join("demo.tdump")).unwrap();
    std::fs::write(d.join("torn.tdump"), &bytes[..bytes.len() - 700]).unwrap();
    let (code, text) = run(d, &["inspect", "torn.tdump"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("UNFINISHED: torn tail"), "{text}");
    let (code, text) = run(d, &["verify", "torn.tdump"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAULT") && text.contains("unfinished trace"),
        "{text}"
    );

    std::fs::write(d.join("junk.tdump"), b"hello").unwrap();
    for verb in [
        &["inspect", "junk.tdump"][..],
        &["verify", "junk.tdump"],
        &["show", "junk.tdump", "x"],
        &["diff", "junk.tdump", "demo.tdump"],
    ] {
        let (code, text) = run(d, verb);
        assert_eq!(code, 2, "{verb:?}: {text}");
        assert!(
            text.contains("junk.tdump") && text.starts_with("error:"),
            "{verb:?}: {text}"
        );
    }
    let (code, text) = run(d, &["show", "demo.tdump", "no-such-tensor"]);
    assert_eq!(code, 2);
    assert!(text.contains("no tensor named `no-such-tensor`"), "{text}");
    let (code, text) = run(d, &["show", "demo.tdump", "kq_soft_max-0"]);
    assert_eq!(code, 2);
    assert!(text.contains("statistics only"), "{text}");
    let (code, text) = run(d, &["show", "demo.tdump", "k-0", "--slice", "0,9"]);
    assert_eq!(code, 2);
    assert!(text.contains("out of range"), "{text}");
}

#[test]
fn recover_export_import_round_trip() {
    let dir = demo_dir();
    let d = dir.path();
    // a writer killed mid-file: recover keeps every complete record and finishes the file
    let bytes = std::fs::read(d.join("demo.tdump")).unwrap();
    std::fs::write(d.join("torn.tdump"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    let torn = Trace::open(d.join("torn.tdump")).unwrap();
    let (code, text) = run(d, &["recover", "torn.tdump", "fixed.tdump"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("stopped at byte"), "{text}");
    let fixed = Trace::open(d.join("fixed.tdump")).unwrap();
    assert!(fixed.is_finished() && fixed.verify().is_ok());
    assert_eq!(fixed.tensor_ids(), torn.tensor_ids());
    for &id in torn.tensor_ids() {
        let (a, b) = (torn.view(id).unwrap(), fixed.view(id).unwrap());
        assert_eq!(a.info().name, b.info().name);
        if !a.info().is_stats_only() {
            assert_eq!(a.materialize().unwrap(), b.materialize().unwrap());
        }
    }
    assert_eq!(
        run(d, &["recover", "fixed.tdump", "fixed.tdump"]).0,
        2,
        "refuses to overwrite its input"
    );

    // export the reference to safetensors, import it back: the runs agree exactly
    let (code, text) = run(
        d,
        &[
            "export",
            "demo.reference.tdump",
            "--to",
            "safetensors",
            "ref.safetensors",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(run(d, &["import", "ref.safetensors", "ref2.tdump"]).0, 0);
    let (code, text) = run(
        d,
        &[
            "diff",
            "ref2.tdump",
            "demo.reference.tdump",
            "--atol",
            "0",
            "--rtol",
            "0",
            "--min-cosine",
            "1",
        ],
    );
    assert_eq!(code, 0, "{text}");
    // the backend run: strided views are written contiguous, stats-only skipped, f16 kept
    let (code, text) = run(
        d,
        &[
            "export",
            "demo.tdump",
            "--to",
            "safetensors",
            "a.safetensors",
            "--layer",
            "0",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{text}");
    let sum: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(sum["exported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "k-0"));
    assert!(sum["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p[0] == "kq_soft_max-0"));
    assert_eq!(run(d, &["import", "a.safetensors", "a.tdump"]).0, 0);
    let a = Trace::open(d.join("a.tdump")).unwrap();
    let k = a.get("k-0").unwrap();
    assert!(k.is_contiguous());
    assert_eq!(
        a.view(k.id).unwrap().to_f32().unwrap(),
        Trace::open(d.join("demo.tdump"))
            .unwrap()
            .view_by_name("k-0")
            .unwrap()
            .to_f32()
            .unwrap()
    );
    let (code, text) = run(
        d,
        &[
            "export",
            "demo.tdump",
            "--to",
            "npz",
            "a.npz",
            "--filter",
            "^Qcur",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(std::fs::metadata(d.join("a.npz")).unwrap().len() > 4 * 8 * 64 * 2);
    let (code, text) = run(d, &["export", "demo.tdump", "--to", "csv", "x.csv"]);
    assert_eq!(code, 2);
    assert!(
        text.contains("choose safetensors, npz or parquet"),
        "{text}"
    );
}

/// A trace written record by record, with what the writer refuses to write:
/// a view past its storage and a dtype id no reader knows.
fn hostile_trace(path: &Path) {
    use trace_format::codec::{
        encode_run_metadata, encode_storage, encode_tensor, DataRef, IndexEntry, StorageDesc,
        TensorDesc,
    };
    use trace_format::record::{encode_file_header, frame_footer, frame_record, RecordKind};
    use trace_format::{Lineage, Metadata};
    let mut bytes = encode_file_header().to_vec();
    let mut index = Vec::new();
    let mut names = Vec::new();
    let mut push =
        |bytes: &mut Vec<u8>, kind: RecordKind, name: &str, descriptor: Vec<u8>, payload: &[u8]| {
            let off = bytes.len() as u64;
            let framed = frame_record(off, index.len() as u64, kind, &descriptor, payload);
            let body_len = u64::from_le_bytes(framed[16..24].try_into().unwrap());
            bytes.extend_from_slice(&framed);
            index.push(IndexEntry {
                offset: off,
                body_len,
                kind: kind as u16,
                step: None,
                layer: None,
                name_offset: names.len() as u64,
                name_len: name.len() as u32,
            });
            names.extend_from_slice(name.as_bytes());
        };
    let tensor =
        |name: &str, dtype: trace_format::DType, data, shape: &[u64], strides: &[i64]| TensorDesc {
            name: name.into(),
            dtype,
            data,
            shape: shape.to_vec(),
            byte_strides: strides.to_vec(),
            step: None,
            layer: None,
            role: None,
            source_layout: None,
            lineage: Lineage::default(),
            stats: None,
            metadata: Metadata::new(),
        };
    push(
        &mut bytes,
        RecordKind::RunMetadata,
        "",
        encode_run_metadata(&Metadata::new().with("engine", "hostile")),
        &[],
    );
    push(
        &mut bytes,
        RecordKind::Storage,
        "buf",
        encode_storage(&StorageDesc {
            name: "buf".into(),
            metadata: Metadata::new(),
        }),
        &[0u8; 64],
    );
    let good = tensor(
        "good",
        trace_format::DType::F32,
        DataRef::Storage {
            storage: 1,
            offset: 0,
        },
        &[4, 4],
        &[16, 4],
    );
    push(
        &mut bytes,
        RecordKind::Tensor,
        "good",
        encode_tensor(&good),
        &[],
    );
    let bad = tensor(
        "bad_strides",
        trace_format::DType::F32,
        DataRef::Storage {
            storage: 1,
            offset: 0,
        },
        &[4, 4],
        &[32, 4],
    );
    push(
        &mut bytes,
        RecordKind::Tensor,
        "bad_strides",
        encode_tensor(&bad),
        &[],
    );
    let mut unknown = encode_tensor(&tensor(
        "mystery",
        trace_format::DType::F32,
        DataRef::Inline { offset: 0 },
        &[1],
        &[4],
    ));
    unknown[11..13].copy_from_slice(&777u16.to_le_bytes()); // the dtype id follows the 4+7-byte name
    push(&mut bytes, RecordKind::Tensor, "mystery", unknown, &[0; 4]);
    let tail = frame_footer(bytes.len() as u64, &index, &names);
    bytes.extend_from_slice(&tail);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bad_strides_and_unknown_dtypes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    hostile_trace(&d.join("hostile.tdump"));
    let (code, text) = run(d, &["inspect", "hostile.tdump"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("#3    bad_strides  ERROR")
            && text.contains("view covers bytes 0..112 but the storage has 64 bytes"),
        "{text}"
    );
    assert!(
        text.contains("#4    mystery  ERROR") && text.contains("unknown dtype id 777 at byte"),
        "{text}"
    );
    let (code, text) = run(d, &["show", "hostile.tdump", "bad_strides"]);
    assert_eq!(code, 2);
    assert!(
        text.contains("hostile.tdump") && text.contains("bad_strides") && text.contains("0..112"),
        "{text}"
    );
    let (code, text) = run(d, &["verify", "hostile.tdump"]);
    assert_eq!(code, 1);
    assert_eq!(text.matches("FAULT").count(), 2, "{text}");
    let (code, text) = run(d, &["diff", "hostile.tdump", "hostile.tdump"]);
    assert_eq!(code, 1, "an unreadable tensor fails the gate: {text}");
    assert!(
        text.contains("UNREADABLE") && text.contains("mystery"),
        "{text}"
    );
    let (code, text) = run(
        d,
        &[
            "export",
            "hostile.tdump",
            "--to",
            "safetensors",
            "h.safetensors",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("skipped bad_strides"), "{text}");
}

/// The reference Python (`make test` creates `.venv` with gguf and numpy).
fn reference_python() -> std::path::PathBuf {
    std::env::var_os("TRACEDUMP_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

#[test]
fn gguf_inspect_show_import() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/make_trace_gguf.py");
    let out = Command::new(reference_python())
        .arg(&script)
        .arg(d.join("kv.gguf"))
        .arg(d.join("ref"))
        .output()
        .expect("the reference Python: run `make test`, which creates .venv with gguf");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, text) = run(
        d,
        &[
            "inspect", "kv.gguf", "--layer", "1", "--step", "0", "--ggml",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("GGUF v3") && text.contains("trace.engine = \"my-engine\""),
        "{text}"
    );
    assert!(
        text.contains("K_quant.step0.layer1  q8_0 [64,4,32]  L1 S0"),
        "{text}"
    );
    assert!(text.contains("ne [32,4,64]"), "{text}");
    let (code, text) = run(d, &["show", "kv.gguf", "V_quant.step1.layer0", "--raw"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("256 blocks of 18") && text.contains("block      0 @         0"),
        "{text}"
    );
    let (code, text) = run(
        d,
        &[
            "show",
            "kv.gguf",
            "V_quant.step1.layer0",
            "--slice",
            "0, 0, :4",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("(q4_0 dequantized)"), "{text}");
    assert_eq!(run(d, &["verify", "kv.gguf"]).0, 0);

    // import into a trace: raw blocks and ggml layouts kept, values equal
    let (code, text) = run(d, &["import", "kv.gguf", "kv.tdump"]);
    assert_eq!(code, 0, "{text}");
    let (g, t) = (
        Trace::open(d.join("kv.gguf")).unwrap(),
        Trace::open(d.join("kv.tdump")).unwrap(),
    );
    assert!(t.verify().is_ok() && !t.is_gguf() && t.len() == g.len());
    assert_eq!(
        t.run_metadata().get("trace.engine"),
        g.run_metadata().get("trace.engine")
    );
    for (a, b) in g.tensors().zip(t.tensors()) {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            (&a.name, a.dtype, a.layout.shape(), &a.source_layout),
            (&b.name, b.dtype, b.layout.shape(), &b.source_layout)
        );
        assert_eq!((a.layer, a.step), (b.layer, b.step));
        assert_eq!(
            g.view(a.id).unwrap().contiguous_bytes(),
            t.view(b.id).unwrap().contiguous_bytes()
        );
    }
    // and straight to safetensors: dequantized f32
    let (code, text) = run(d, &["import", "kv.gguf", "kv.safetensors"]);
    assert_eq!(code, 0, "{text}");
    let st = Trace::open(d.join("kv.tdump")).unwrap();
    let (code, text) = run(d, &["import", "kv.safetensors", "back.tdump"]);
    assert_eq!(code, 0, "{text}");
    let back = Trace::open(d.join("back.tdump")).unwrap();
    let k = back.get("K_quant.step0.layer0").unwrap();
    assert_eq!(k.dtype, trace_reader::DType::F32);
    assert_eq!(
        back.view(k.id).unwrap().to_f32().unwrap(),
        st.view_by_name("K_quant.step0.layer0")
            .unwrap()
            .to_f32()
            .unwrap()
    );
    // hostile GGUF: a clear error, exit 2
    let mut bytes = std::fs::read(d.join("kv.gguf")).unwrap();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(d.join("bad.gguf"), &bytes).unwrap();
    let (code, text) = run(d, &["inspect", "bad.gguf"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("bad.gguf") && text.contains("GGUF at byte"),
        "{text}"
    );
}

/// `inspect --tree` on a 20,000-link view chain and on 30,000 sibling
/// views: it overflowed the stack on the first (a recursion a link) and
/// took time and output quadratic in the tensors on both. Now one pass
/// with an explicit stack, and output linear in the tensors.
#[test]
fn inspect_tree_is_linear_on_deep_chains_and_wide_fans() {
    use trace_format::{DType, Layout, Metadata};
    use trace_writer::{TensorMeta, Writer};

    let dir = tempfile::tempdir().unwrap();
    for (name, n, chain) in [
        ("chain.tdump", 20_000u64, true),
        ("fan.tdump", 30_000, false),
    ] {
        let w = Writer::create(dir.path().join(name), Metadata::new()).unwrap();
        let storage = w.add_storage("bytes", &[0u8; 16]).unwrap();
        let layout = Layout::contiguous(DType::F32, &[4], 0).unwrap();
        let root = w
            .add_view("v", DType::F32, storage, &layout, TensorMeta::new())
            .unwrap()
            .unwrap();
        let mut parent = root;
        for _ in 0..n {
            let mut meta = TensorMeta::new();
            meta.lineage.parents = vec![parent];
            let id = w
                .add_view("v", DType::F32, storage, &layout, meta)
                .unwrap()
                .unwrap();
            if chain {
                parent = id;
            }
        }
        w.finish().unwrap();
        let start = std::time::Instant::now();
        let (code, text) = run(dir.path(), &["inspect", name, "--tree"]);
        let took = start.elapsed();
        assert_eq!(code, 0, "{name}: {}", &text[..text.len().min(500)]);
        assert_eq!(text.matches("└─").count() as u64, n + 1, "{name}");
        // linear: about one line of at most 200 bytes a tensor (depth² was 1.2 GB for the chain)
        assert!(
            text.len() as u64 <= 200 * (n + 1) + 4096,
            "{name}: {} bytes",
            text.len()
        );
        assert!(took.as_secs() < 20, "{name}: {took:?}");
    }
}

/// A 1 KB file whose view names 2^40 values through zero strides: export
/// asked for 4 TiB of zeros once reading its values was refused, leaving a
/// 4 TiB sparse temp file behind. Now such a tensor is skipped with the
/// reason before anything is written; the rest is exported, nothing is
/// left behind.
#[test]
fn export_skips_what_it_cannot_read() {
    use trace_format::{DType, Layout, Metadata};
    use trace_writer::{TensorMeta, Writer};

    let dir = tempfile::tempdir().unwrap();
    let w = Writer::create(dir.path().join("broadcast.tdump"), Metadata::new()).unwrap();
    let storage = w.add_storage("one", &1f32.to_le_bytes()).unwrap();
    for (name, shape) in [("huge", [1u64 << 20, 1 << 20]), ("big", [1 << 16, 1 << 15])] {
        let layout = Layout::new(shape.to_vec(), vec![0, 0], 0).unwrap();
        w.add_view(name, DType::F32, storage, &layout, TensorMeta::new())
            .unwrap();
    }
    w.add_tensor("fine", DType::F32, &[2], &[0u8; 8], TensorMeta::new())
        .unwrap();
    w.finish().unwrap();
    for (to, out) in [("safetensors", "out.safetensors"), ("npz", "out.npz")] {
        let start = std::time::Instant::now();
        let (code, text) = run(dir.path(), &["export", "broadcast.tdump", "--to", to, out]);
        assert_eq!(code, 0, "{to}: {text}");
        assert!(
            start.elapsed().as_secs() < 20,
            "{to}: {:?}",
            start.elapsed()
        );
        for name in ["huge", "big"] {
            assert!(
                text.contains(&format!("skipped {name}: materializing")),
                "{to}: {text}"
            );
        }
        let size = std::fs::metadata(dir.path().join(out)).unwrap().len();
        assert!(size < 4096, "{to}: {size} bytes");
    }
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["broadcast.tdump", "out.npz", "out.safetensors"]);
}

/// `tracedump inspect run.tdump | head`: the reader closing the pipe is
/// not a crash (it panicked, exit 101), and `diff` keeps its verdict.
#[test]
fn a_closed_pipe_is_not_a_crash() {
    let dir = demo_dir();
    for (args, code) in [
        (&["inspect", "demo.tdump"][..], 0),
        (&["inspect", "demo.tdump", "--json"][..], 0),
        (&["show", "demo.tdump", "k-0", "--full"][..], 0),
        (&["verify", "demo.tdump"][..], 0),
        (
            &["diff", "demo.tdump", "demo.reference.tdump", "--all"][..],
            1,
        ),
        (&["diff", "demo.tdump", "demo.tdump"][..], 0),
    ] {
        let mut child = tracedump(dir.path())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // the reading end closes before anything is written
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A few KB of broadcast views, each under the value limit, made the
/// reading verbs expand them all (minutes for hundreds of views). The
/// verbs now spend at most 4 × the value limit on values beyond the bytes
/// views span, and say which tensors they refused.
#[test]
fn verbs_bound_the_broadcast_values_they_expand() {
    use trace_format::{DType, Layout, Metadata};
    use trace_writer::{TensorMeta, Writer, WriterOptions};

    let dir = tempfile::tempdir().unwrap();
    let w = Writer::with_options(
        dir.path().join("views.tdump"),
        Metadata::new(),
        WriterOptions {
            allocate_ahead: false,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let s = w.add_storage("one", &1f32.to_le_bytes()).unwrap();
    let view = Layout::new(vec![1 << 13, 1 << 10], vec![0, 0], 0).unwrap(); // 2^23 values
    for i in 0..64 {
        w.add_view(&format!("v{i}"), DType::F32, s, &view, TensorMeta::new())
            .unwrap();
    }
    w.finish().unwrap();
    // inspect shows the refusal per tensor; diff cannot compare what it
    // could not read (exit 1); export skips those tensors and says so
    for (args, want) in [
        (&["inspect", "views.tdump", "--stats"][..], 0),
        (&["diff", "views.tdump", "views.tdump"][..], 1),
        (&["export", "views.tdump", "--to", "npz", "out.npz"][..], 0),
    ] {
        let start = std::time::Instant::now();
        let (code, text) = run(dir.path(), args);
        let took = start.elapsed();
        assert!(took.as_secs() < 60, "{args:?}: {took:?}");
        assert_eq!(code, want, "{args:?}: {}", &text[..text.len().min(2000)]);
        assert!(
            text.contains("past the budget left for this trace's broadcast views"),
            "{args:?}: {}",
            &text[..text.len().min(2000)]
        );
        assert!(!text.contains("panicked"), "{args:?}");
    }
}

/// The data a report page draws itself from (its `<script id="data">`).
fn report_data(html: &str) -> serde_json::Value {
    let start = html
        .find(r#"<script id="data" type="application/json">"#)
        .unwrap();
    let body = &html[start..];
    let body = &body[body.find('>').unwrap() + 1..body.find("</script>").unwrap()];
    serde_json::from_str(body).unwrap()
}

#[test]
fn stats_only_pairs_have_no_made_up_metrics() {
    let dir = demo_dir();
    let d = dir.path();
    // the demo records kq_soft_max-N as statistics only in B
    let (code, text) = run(d, &["diff", "demo.tdump", "demo.reference.tdump", "--json"]);
    assert_eq!(code, 1, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pair = |key: &str| {
        json["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["key"] == key)
            .unwrap()
            .clone()
    };
    let stats = pair("kq_soft_max-0");
    assert_eq!(stats["verdict"]["kind"], "stats_only");
    let m = &stats["metrics"];
    for k in [
        "numel",
        "max_abs",
        "max_abs_index",
        "max_rel",
        "mean_abs",
        "rmse",
        "cosine",
        "nan_mismatch",
        "outside_tolerance",
    ] {
        assert!(m[k].is_null(), "{k}: {}", m[k]);
    }
    assert!(m["a"]["std"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["b"]["std"].as_f64().unwrap() > 0.0, "{m}");
    // a compared pair keeps its numbers
    assert_eq!(pair("k-0")["metrics"]["cosine"], 1.0);

    let (code, text) = run(
        d,
        &[
            "report",
            "demo.tdump",
            "demo.reference.tdump",
            "-o",
            "r.html",
        ],
    );
    assert_eq!(code, 1, "{text}");
    let data = report_data(&std::fs::read_to_string(d.join("r.html")).unwrap());
    let row = data["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "kq_soft_max-0")
        .unwrap();
    for k in ["max_abs", "max_rel", "cosine"] {
        assert!(row[k].is_null(), "{k}: {row}");
    }
    assert!(row["std_a"].as_f64().is_some(), "{row}");
}

#[test]
fn one_vocabulary_for_verdicts_one_numbering_for_pairs() {
    let dir = demo_dir();
    let d = dir.path();
    let (_, json) = run(d, &["diff", "demo.tdump", "demo.reference.tdump", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let (_, text) = run(d, &["diff", "demo.tdump", "demo.reference.tdump", "--all"]);
    let (_, summary) = run(
        d,
        &[
            "report",
            "demo.tdump",
            "demo.reference.tdump",
            "-o",
            "r.html",
        ],
    );
    let data = report_data(&std::fs::read_to_string(d.join("r.html")).unwrap());
    // numbering: pair 38 of 59 for people, index 37 in JSON
    assert_eq!(json["first_divergence"], 37);
    assert!(
        text.contains("(pair 38 of 59, in A's execution order)"),
        "{text}"
    );
    assert!(
        summary.contains("first divergence ffn_norm-2 (pair 38 of 59)"),
        "{summary}"
    );
    assert_eq!(data["first"]["index"], 37);
    assert_eq!(data["first"]["pair"], 38);
    assert_eq!(data["pairs"][37]["pair"], 38);
    // the text table's pair column says the same
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("38  #47 ") && l.contains("ffn_norm-2")),
        "{text}"
    );
    // vocabulary: each pair's verdict has the same name everywhere
    let names = [
        "agree",
        "diverge",
        "shape_mismatch",
        "stats_only",
        "skipped",
    ];
    for (i, p) in json["pairs"].as_array().unwrap().iter().enumerate() {
        let kind = p["verdict"]["kind"].as_str().unwrap();
        assert!(names.contains(&kind), "{kind}");
        let shown = if kind == "diverge" || kind == "shape_mismatch" {
            kind.to_ascii_uppercase()
        } else {
            kind.to_string()
        };
        let row = data["pairs"][i]["verdict"].as_str().unwrap();
        assert!(
            row == shown || row.starts_with(&format!("{shown}: ")),
            "{row} vs {kind}"
        );
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{}  #", i + 1)))
            .unwrap_or_else(|| panic!("pair {} not in\n{text}", i + 1));
        assert!(line.trim_end().ends_with(&shown), "{line} vs {kind}");
    }
    assert!(!text.contains(" ok\n") && !text.contains("(ok)"), "{text}");
}

#[test]
fn verify_show_report_print_json() {
    let dir = demo_dir();
    let d = dir.path();
    let json = |args: &[&str], code: i32| -> serde_json::Value {
        let out = tracedump(d).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let v = json(&["verify", "demo.tdump", "--json"], 0);
    assert_eq!(v["ok"], true);
    assert_eq!(v["files"][0]["file"], "demo.tdump");
    assert_eq!(v["files"][0]["records"], 72);
    assert_eq!(v["files"][0]["faults"], serde_json::json!([]));

    // values as nested lists of the slice's shape, f32 digits kept short
    let v = json(
        &[
            "show",
            "demo.tdump",
            "k-0",
            "--slice",
            "0, 0, 0:2, 0:3",
            "--json",
        ],
        0,
    );
    assert_eq!(v["name"], "k-0");
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["shape"], serde_json::json!([1, 4, 8, 16]));
    assert_eq!(v["sliced_shape"], serde_json::json!([2, 3]));
    let rows = v["values"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].as_array().unwrap().len(), 3);
    let trace = Trace::open(d.join("demo.tdump")).unwrap();
    let all = trace
        .view(trace.resolve("k-0").unwrap())
        .unwrap()
        .to_f32()
        .unwrap();
    assert_eq!(rows[1][2].as_f64().unwrap() as f32, all[16 + 2]);
    // every value, without a slice
    let v = json(&["show", "demo.tdump", "k-0", "--json"], 0);
    assert_eq!(v["values"][0][3][7].as_array().unwrap().len(), 16);

    let v = json(
        &[
            "report",
            "demo.tdump",
            "demo.reference.tdump",
            "-o",
            "r.html",
            "--json",
        ],
        1,
    );
    assert_eq!(v["agrees"], false);
    assert_eq!(v["pairs"], 59);
    assert_eq!(v["first_divergence"]["pair"], 38);
    assert_eq!(v["first_divergence"]["index"], 37);
    assert_eq!(v["first_divergence"]["key"], "ffn_norm-2");
    assert_eq!(v["first_divergence"]["verdict"], "diverge");
    assert!(d.join("r.html").exists());
}

#[test]
fn every_verb_that_writes_a_file_takes_dash_o() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |args: &[&str]| {
        let (code, text) = run(d, args);
        assert_eq!(code, 0, "{args:?}: {text}");
    };
    ok(&["demo", "-o", "demo.tdump"]);
    assert!(d.join("demo.reference.tdump").exists());
    ok(&["demo", "--output", "d2.tdump", "d2.tdump"]);
    ok(&["recover", "demo.tdump", "-o", "rec.tdump"]);
    ok(&[
        "export",
        "demo.tdump",
        "--to",
        "safetensors",
        "-o",
        "x.safetensors",
    ]);
    ok(&["export", "demo.tdump", "--to", "npz", "--output", "x.npz"]);
    ok(&["import", "x.safetensors", "-o", "back.tdump"]);
    ok(&["report", "demo.tdump", "demo.tdump", "--output", "r.html"]);
    for f in [
        "rec.tdump",
        "x.safetensors",
        "x.npz",
        "back.tdump",
        "r.html",
    ] {
        assert!(d.join(f).exists(), "{f}");
    }
    // the positional form still works; two different files are refused
    ok(&["recover", "demo.tdump", "rec2.tdump"]);
    for args in [
        &["recover", "demo.tdump", "a.tdump", "-o", "b.tdump"][..],
        &["demo", "a.tdump", "-o", "b.tdump"],
        &[
            "export",
            "demo.tdump",
            "--to",
            "npz",
            "a.npz",
            "-o",
            "b.npz",
        ],
        &["import", "x.safetensors", "a.tdump", "-o", "b.tdump"],
    ] {
        let (code, text) = run(d, args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains("two output files"), "{args:?}: {text}");
        assert!(!d.join("a.tdump").exists() && !d.join("b.tdump").exists());
    }
    let (code, text) = run(d, &["recover", "demo.tdump"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--output <FILE>"), "{text}");
}

#[test]
fn a_file_that_is_not_a_trace_is_named() {
    let dir = demo_dir();
    let d = dir.path();
    for (to, file) in [("safetensors", "w.safetensors"), ("npz", "w.npz")] {
        let (code, text) = run(d, &["export", "demo.tdump", "--to", to, "-o", file]);
        assert_eq!(code, 0, "{text}");
    }
    // torch.save's zip layout, as far as its first bytes go
    std::fs::write(
        d.join("model.pt"),
        b"PK\x03\x04\0\0\0\0archive/data.pkl\0\0\0\0",
    )
    .unwrap();
    let (code, text) = run(d, &["inspect", "w.safetensors"]);
    assert_eq!(code, 2);
    assert_eq!(
        text.trim(),
        "error: w.safetensors is a safetensors file, not a trace: \
         `tracedump import w.safetensors -o OUT.tdump` converts it"
    );
    for verb in [&["verify"][..], &["show"], &["diff", "demo.tdump"]] {
        let mut args = verb.to_vec();
        args.insert(1, "w.safetensors");
        if verb[0] == "show" {
            args.push("k-0");
        }
        if verb[0] == "diff" {
            args.swap(1, 2);
        }
        let (code, text) = run(d, &args);
        assert_eq!(code, 2, "{args:?}");
        assert!(
            text.contains("is a safetensors file, not a trace"),
            "{args:?}: {text}"
        );
    }
    let (_, text) = run(d, &["inspect", "w.npz"]);
    assert!(
        text.contains("w.npz is a numpy .npz archive, not a trace"),
        "{text}"
    );
    let (_, text) = run(d, &["inspect", "model.pt"]);
    assert!(text.contains("model.pt is a PyTorch checkpoint"), "{text}");
    assert!(!text.contains("bad magic"), "{text}");
    // import names what it cannot convert
    let (code, text) = run(d, &["import", "w.npz", "-o", "x.tdump"]);
    assert_eq!(code, 2);
    assert!(
        text.contains("w.npz is a numpy .npz archive: import converts"),
        "{text}"
    );
    let (_, text) = run(d, &["import", "demo.tdump", "-o", "x.tdump"]);
    assert!(
        text.contains("demo.tdump is already a tracedump trace"),
        "{text}"
    );
    // and converts what it can
    let (code, text) = run(d, &["import", "w.safetensors", "-o", "w.tdump"]);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn directories_and_globs_are_taken_or_refused_by_name() {
    let dir = demo_dir();
    let d = dir.path();
    std::fs::create_dir(d.join("run")).unwrap();
    for r in 0..2 {
        std::fs::copy(d.join("demo.tdump"), d.join(format!("run/rank{r}.tdump"))).unwrap();
    }
    let refused = |args: &[&str], want: &str| {
        let (code, text) = run(d, args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(want), "{args:?}: {text}");
        assert!(!text.contains("os error"), "{args:?}: {text}");
    };
    for input in ["run", "run/rank*.tdump"] {
        refused(
            &["recover", input, "-o", "r.tdump"],
            &format!("{input}: recover takes one trace file, not a directory or glob of shards (2 shards here)"),
        );
        refused(
            &["import", input, "-o", "r.tdump"],
            &format!("{input}: import takes one safetensors or GGUF file, not a directory or glob"),
        );
        refused(
            &["report", input, "demo.tdump", "-o", "r.html"],
            &format!("{input}: report takes one trace file, not a directory or glob of shards (2 shards here)"),
        );
        refused(
            &["report", "demo.tdump", input, "-o", "r.html"],
            "report takes one trace file",
        );
    }
    // the reading verbs take them
    for args in [
        &["inspect", "run"][..],
        &["verify", "run/rank*.tdump"],
        &["show", "run", "k-0"],
        &["export", "run", "--to", "npz", "-o", "x.npz"],
    ] {
        let (code, text) = run(d, args);
        if args[0] == "export" {
            // npz holds one trace: it says so (parquet takes shards)
            assert!(
                text.contains("a sharded trace exports to parquet"),
                "{text}"
            );
        } else {
            assert_eq!(code, 0, "{args:?}: {text}");
        }
    }
    // a directory where a file is written is named, not an OS error
    for args in [
        &["recover", "demo.tdump", "-o", "run"][..],
        &["export", "demo.tdump", "--to", "npz", "-o", "run"],
        &["demo", "-o", "run"],
        &["report", "demo.tdump", "demo.tdump", "-o", "run"],
    ] {
        refused(args, "run: the output is a directory; give a file name");
    }
}

/// A small GGUF (v3) file: f32 tensors `(name, ne)` filled with 0.5, 1.5, …
fn write_gguf(path: &Path, tensors: &[(&str, &[u64])]) {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    // one key-value: general.name = "tiny"
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend_from_slice(&(x.len() as u64).to_le_bytes());
        b.extend_from_slice(x.as_bytes());
    };
    s(&mut b, "general.name");
    b.extend_from_slice(&8u32.to_le_bytes());
    s(&mut b, "tiny");
    let mut offset = 0u64;
    let mut data = Vec::new();
    for (name, ne) in tensors {
        s(&mut b, name);
        b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        ne.iter()
            .for_each(|n| b.extend_from_slice(&n.to_le_bytes()));
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&offset.to_le_bytes());
        let n: u64 = ne.iter().product();
        for i in 0..n {
            data.extend_from_slice(&(i as f32 + 0.5).to_le_bytes());
        }
        while data.len() % 32 != 0 {
            data.push(0);
        }
        offset = data.len() as u64;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend_from_slice(&data);
    std::fs::write(path, b).unwrap();
}

/// Split an example line as a shell would: words, '…' and "…" quoting,
/// `&&` between commands.
fn shell_words(line: &str) -> Vec<Vec<String>> {
    let (mut cmds, mut words, mut word, mut in_word) = (vec![], vec![], String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            '&' if chars.peek() == Some(&'&') => {
                chars.next();
                cmds.push(std::mem::take(&mut words));
            }
            ' ' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    cmds.push(words);
    cmds.retain(|c| !c.is_empty());
    cmds
}

/// Every example in every `--help` runs: on the demo traces (under the
/// names the examples use) in a temporary directory, it exits 0, or 1
/// where the verb's help documents 1 (diff, report, verify).
#[test]
fn every_help_example_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(run(d, &["demo", "-o", "run.tdump"]).0, 0);
    for (from, to) in [
        ("run.tdump", "mine.tdump"),
        ("run.tdump", "a.tdump"),
        ("run.reference.tdump", "llama.tdump"),
        ("run.reference.tdump", "hf.tdump"),
        ("run.reference.tdump", "b.tdump"),
    ] {
        std::fs::copy(d.join(from), d.join(to)).unwrap();
    }
    // a torn trace: the writer killed mid-record
    let bytes = std::fs::read(d.join("run.tdump")).unwrap();
    std::fs::write(d.join("crashed.tdump"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    let (code, text) = run(
        d,
        &[
            "export",
            "run.tdump",
            "--to",
            "safetensors",
            "-o",
            "weights.safetensors",
        ],
    );
    assert_eq!(code, 0, "{text}");
    write_gguf(
        &d.join("model.gguf"),
        &[
            ("token_embd.weight", &[8, 4]),
            ("blk.0.attn_q.weight", &[8, 8]),
        ],
    );
    write_gguf(
        &d.join("kv-trace.gguf"),
        &[
            ("K_quant.step0.layer0", &[16, 4]),
            ("K_quant.step1.layer0", &[16, 4]),
        ],
    );

    let help = |args: &[&str]| {
        let out = tracedump(d).args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?} --help");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&[]);
    let verbs: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|v| v != "help")
        .collect();
    assert!(verbs.len() >= 9, "{verbs:?}");
    let mut examples: Vec<String> = top
        .lines()
        .filter_map(|l| l.strip_prefix("Start with: "))
        .map(str::to_owned)
        .collect();
    for verb in &verbs {
        let text = help(&[verb]);
        let before = examples.len();
        examples.extend(
            text.lines()
                .skip_while(|l| !l.starts_with("Example"))
                .skip(1)
                .take_while(|l| l.starts_with("  tracedump "))
                .map(|l| l.trim().to_owned()),
        );
        assert!(
            examples.len() > before,
            "`tracedump {verb} --help` has no example"
        );
    }
    for example in &examples {
        let cmds = shell_words(example);
        for (k, words) in cmds.iter().enumerate() {
            assert_eq!(words[0], "tracedump", "{example}");
            let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
            let (code, text) = run(d, &args);
            let documented: &[i32] =
                if k + 1 == cmds.len() && matches!(args[0], "diff" | "report" | "verify") {
                    &[0, 1]
                } else {
                    &[0]
                };
            assert!(
                documented.contains(&code),
                "`{example}` exited {code}:\n{text}"
            );
        }
    }
    // import's help says safetensors become a trace: another extension is refused
    let (code, text) = run(d, &["import", "weights.safetensors", "-o", "w.npz"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("from safetensors, import writes a trace"),
        "{text}"
    );
    assert!(!d.join("w.npz").exists());
}
