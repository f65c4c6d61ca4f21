//! A GGUF file written by a trace tool (Q/K/V and K_quant/V_quant per step
//! and layer, by gguf-py's writer) opened directly as a trace: every tensor
//! readable, values equal to gguf-py's dequantization bit for bit.

#![forbid(unsafe_code)]

use trace_format::{DType, SourceLayout, Value};
use trace_reader::Trace;
use tracedump_tests::run_python;

#[test]
fn trace_tool_gguf_reads_as_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("kv.gguf");
    let refs = dir.path().join("ref");
    run_python("make_trace_gguf.py", &[&gguf, &refs]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(refs.join("index.json")).unwrap()).unwrap();
    let index = index.as_array().unwrap();

    let trace = Trace::open(&gguf).unwrap();
    assert!(trace.is_gguf());
    assert_eq!(trace.len(), index.len());
    assert_eq!(
        trace.run_metadata().get("trace.engine"),
        Some(&Value::Str("my-engine".into()))
    );
    assert_eq!(
        trace.run_metadata().get("general.architecture"),
        Some(&Value::Str("tracedump-test".into()))
    );
    let report = trace.verify();
    assert!(
        report.is_ok() && report.tensors == index.len() as u64,
        "{:?}",
        report.faults
    );
    let mut kinds = std::collections::BTreeSet::new();
    for (i, entry) in index.iter().enumerate() {
        let name = entry["name"].as_str().unwrap();
        let t = trace.get(name).unwrap();
        assert_eq!(t.id, i as u64);
        let shape: Vec<u64> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(t.layout.shape(), shape, "{name}");
        assert_eq!(
            u64::from(t.dtype.id()),
            entry["type"].as_u64().unwrap(),
            "{name}"
        );
        kinds.insert(t.dtype);
        // ggml order kept for display: ne = reversed shape
        let Some(SourceLayout::Ggml { ne, nb }) = &t.source_layout else {
            panic!("{name}: no ggml layout")
        };
        assert_eq!(
            ne.iter().rev().map(|&n| n as u64).collect::<Vec<_>>(),
            shape
        );
        assert_eq!(nb[0], t.dtype.block_bytes());
        // names carry step and layer
        let (step, layer) = (
            name.contains("step1") as i64,
            name.contains("layer1") as i64,
        );
        assert_eq!((t.step, t.layer), (Some(step), Some(layer)), "{name}");
        let want: Vec<u32> = std::fs::read(refs.join(format!("{i}.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let got: Vec<u32> = trace
            .view(t.id)
            .unwrap()
            .to_f32()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert!(got == want, "{name}: values differ from gguf-py");
        // raw blocks, untouched
        assert_eq!(
            trace.view(t.id).unwrap().contiguous_bytes().unwrap().len() as u64,
            t.dtype.bytes_for(t.layout.numel()).unwrap()
        );
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [DType::F32, DType::F16, DType::Q4_0, DType::Q8_0]
    );
    // the filter works on parsed layers and steps
    let f = trace_reader::TensorFilter {
        layer: Some(1),
        step: Some(0),
        ..Default::default()
    };
    assert_eq!(trace.filter(&f).unwrap().len(), 5);

    // a truncated GGUF is an error naming the file and the tensor whose data is cut
    let bytes = std::fs::read(&gguf).unwrap();
    let cut = dir.path().join("cut.gguf");
    let last = trace.tensor(index.len() as u64 - 1).unwrap();
    std::fs::write(&cut, &bytes[..last.storage_file_offset() as usize + 10]).unwrap();
    let e = Trace::open(&cut).unwrap_err().to_string();
    assert!(e.contains("cut.gguf") && e.contains(&last.name), "{e}");
}
