//! Every input the fuzzers kept (`fuzz/corpus/<target>/`) and every crash
//! they found and that was fixed (`fuzz/regressions/<target>/`), run through
//! the same bodies the fuzz targets run (`tracedump_tests::fuzzing`), so
//! `make test` replays them without nightly or libFuzzer.

#![forbid(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use tracedump_tests::{fuzzing, workspace_root};

/// The files of `dir`, sorted; empty when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Run `body` over the corpus and regressions of `target`; fail naming every
/// input that panics, or when the corpus is missing or empty.
fn replay(target: &str, body: fn(&[u8])) {
    let fuzz = workspace_root().join("fuzz");
    let corpus = files(&fuzz.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is missing or empty: the committed corpus of the `{target}` fuzz target is gone"
    );
    let regressions = files(&fuzz.join("regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} `{target}` inputs panic (messages above):\n{}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n")
    );
}

#[test]
fn trace_bytes_corpus() {
    replay("trace_bytes", fuzzing::trace_bytes);
}

#[test]
fn verbs_corpus() {
    replay("verbs", tracedump_tests::fuzzing_verbs::verbs);
}

#[test]
fn gguf_bytes_corpus() {
    replay("gguf_bytes", fuzzing::gguf_bytes);
}

#[test]
fn safetensors_import_corpus() {
    replay("safetensors_import", fuzzing::safetensors_import);
}

#[test]
fn capi_corpus() {
    replay("capi", fuzzing::capi);
}

/// The fuzzer writes most traces into memory; the corpus goes through a
/// file as well, every input.
#[test]
fn capi_corpus_to_file() {
    replay("capi", fuzzing::capi_to_file);
}
