//! The `tracedump` binary on the demo trace and on a torn copy of it.

use std::process::Command;

use trace_reader::Trace;

fn tracedump(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tracedump")).args(args).output().expect("run tracedump");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn demo_inspect_verify() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo.tdump");
    let demo_s = demo.to_str().unwrap();
    assert_eq!(tracedump(&["demo", demo_s]).0, 0);

    let (code, text) = tracedump(&["inspect", demo_s]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("status   finished"), "{text}");
    assert!(text.contains("lineage cache_k_l0#2 → view(+0, [1,8,4,16]) → permute(0,2,1,3) → [ggml PERMUTE]"), "{text}");
    assert!(text.contains("k-0  f32 [1,4,8,16] bytes[2048,64,256,4] elems[512,16,64,1] strided"), "{text}");
    assert_eq!(tracedump(&["verify", demo_s]).0, 0);

    // the f16 copy holds exactly the permuted view's values, rounded to f16
    let trace = Trace::open(&demo).unwrap();
    let view = trace.view_by_name("k-0").unwrap().to_f32().unwrap();
    let copy = trace.view_by_name("k-0 (copy)").unwrap().to_f32().unwrap();
    assert_eq!(view.len(), 512);
    let rounded: Vec<f32> = view.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    assert_eq!(rounded, copy);
    // and the view is not the storage read contiguously (the misread of the user reports)
    let cache = trace.view_by_name("cache_k_l0").unwrap().to_f32().unwrap();
    assert_ne!(&cache[..512], &view[..]);

    // a torn copy: inspect says so, verify fails, both name the offset
    let bytes = std::fs::read(&demo).unwrap();
    let torn = dir.path().join("torn.tdump");
    std::fs::write(&torn, &bytes[..bytes.len() - 700]).unwrap();
    let (code, text) = tracedump(&["inspect", torn.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("UNFINISHED: torn tail"), "{text}");
    let (code, text) = tracedump(&["verify", torn.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAULT") && text.contains("unfinished trace"), "{text}");

    // not a trace at all: exit 2 with the file named
    let junk = dir.path().join("junk.tdump");
    std::fs::write(&junk, b"hello").unwrap();
    let (code, text) = tracedump(&["inspect", junk.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(text.contains("junk.tdump"), "{text}");
}
