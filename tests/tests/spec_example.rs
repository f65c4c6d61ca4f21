//! The worked example of `trace-format/SPEC.md` §10, kept as a golden file.
//!
//! `build_spec_example` writes the example trace; the test checks that the
//! writer still produces `tests/golden/spec_example.tdump` byte for byte.
//! Regenerate with `TRACEDUMP_BLESS=1 cargo test -p tracedump-tests --test spec_example`
//! (and update the hex dump in SPEC.md §10 to match).

#![forbid(unsafe_code)]

use std::path::Path;

use trace_writer::{
    DType, FinishSummary, Layout, Metadata, Op, TensorMeta, Writer, WriterError, WriterOptions,
};

/// Write the SPEC.md §10 example trace to `path`:
///
/// | id | kind         | content                                                        |
/// |----|--------------|----------------------------------------------------------------|
/// | 0  | RUN_METADATA | `{"engine": "spec-example"}`                                   |
/// | 1  | STORAGE      | `cache`: 8 f32 values 0.0 … 7.0 (32 bytes)                     |
/// | 2  | TENSOR       | `cache`: f32 [2,4] strides [16,4] over record 1, layer 0       |
/// | 3  | TENSOR       | `k-0`: f32 [4,2] strides [4,16] over record 1, role `k`, parent 2, transpose(0,1) |
/// | 4  | TENSOR       | `logits`: f32 [3], stats only, of [1.0, -2.0, 0.5]             |
/// | 5  | FOOTER       | index of records 0–4, then the trailer                         |
pub fn build_spec_example(path: &Path) -> Result<FinishSummary, WriterError> {
    // every record written, none mapped into space allocated ahead: the
    // file is exactly its records, as SPEC.md §10 dumps it
    let w = Writer::with_options(
        path,
        Metadata::new().with("engine", "spec-example"),
        WriterOptions {
            allocate_ahead: false,
            ..WriterOptions::default()
        },
    )?;
    let values: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let storage = w.add_storage("cache", &values)?;
    let full = Layout::contiguous(DType::F32, &[2, 4], 0).expect("contiguous [2,4]");
    let cache = w
        .add_view(
            "cache",
            DType::F32,
            storage,
            &full,
            TensorMeta::new().layer(0),
        )?
        .expect("not filtered");
    let transposed = Layout::new(vec![4, 2], vec![4, 16], 0).expect("transposed [4,2]");
    let k_meta = TensorMeta::new()
        .role("k")
        .parent(cache)
        .op(Op::Transpose { a: 0, b: 1 });
    w.add_view("k-0", DType::F32, storage, &transposed, k_meta)?;
    let logits: Vec<u8> = [1.0f32, -2.0, 0.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    w.add_stats_of("logits", DType::F32, &[3], &logits, TensorMeta::new())?;
    w.finish()
}

#[test]
fn golden_file_is_byte_identical() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join("spec_example.tdump");
    if std::env::var("TRACEDUMP_BLESS").as_deref() == Ok("1") {
        build_spec_example(&golden).expect("write the golden file");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("spec_example.tdump");
    let summary = build_spec_example(&path).expect("write the example");
    assert_eq!(summary.records, 5);
    let built = std::fs::read(&path).expect("read the example");
    let expected = std::fs::read(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with TRACEDUMP_BLESS=1)", golden.display()));
    if let Some(i) = built.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "byte {i:#x} differs from {}: built {:#04x}, golden {:#04x} (bless with TRACEDUMP_BLESS=1 if the format changed on purpose, and update SPEC.md §10)",
            golden.display(),
            built[i],
            expected[i]
        );
    }
    assert_eq!(
        built.len(),
        expected.len(),
        "file length differs from {}",
        golden.display()
    );
}

/// The committed golden file reads back as SPEC.md §10 describes it.
#[test]
fn golden_file_reads_back() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join("spec_example.tdump");
    let t = trace_reader::Trace::open(&golden).expect("open the golden file");
    assert!(t.is_finished());
    let rep = t.verify();
    assert!(rep.is_ok(), "{:?}", rep.faults);
    assert_eq!(rep.lineages_replayed, 1);
    assert_eq!(t.tensor_ids(), &[2, 3, 4]);
    assert_eq!(
        t.run_metadata().get("engine"),
        Some(&trace_format::Value::Str("spec-example".into()))
    );
    let k = t.view_by_name("k-0").expect("k-0");
    assert_eq!(k.info().layout.byte_strides(), vec![4, 16]);
    assert_eq!(
        k.to_f32().expect("values"),
        vec![0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]
    );
    let logits = t.get("logits").expect("logits");
    let s = logits.stats.as_ref().expect("stats");
    assert_eq!((s.count, s.min, s.max, s.abs_max), (3, -2.0, 1.0, 2.0));
    assert_eq!(s.bytes_crc32c, Some(0x86739cf2));
}
