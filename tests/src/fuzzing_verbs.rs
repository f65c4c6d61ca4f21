//! The fuzz body of the `verbs` target: a trace file's bytes through the
//! library calls behind the `tracedump` verbs, as the CLI makes them.
//!
//! Where `trace_bytes` checks that every read is safe, this checks that the
//! verbs' own work stays bounded: libFuzzer runs it with a memory and a time
//! limit (`make fuzz`: `-rss_limit_mb`, `-timeout`), so a small file that
//! makes `inspect --tree`, `verify`, `export` or `diff` allocate or loop
//! far beyond its size is a finding, not a hang.

use trace_reader::values::value_limit;
use trace_reader::Trace;
use trace_tools::compare::{diff, Pair, Side, Tolerance, Verdict};
use trace_tools::export::{export, ExportFormat};
use trace_tools::inspect::{inspect_json, inspect_text, InspectOptions};
use trace_tools::mapping::Mapping;

use crate::fuzzing::Scratch;

/// A trace file's bytes through `inspect` (table, `--tree`, `--stats`,
/// `--json`), `show` of its first tensors, `verify`, `diff` and `report` of
/// the trace against itself, the blame's diagnosis of its first tensors
/// paired with each other, and `export` to npz and safetensors. Only a
/// panic, a crash or a limit is a finding: hostile files give errors.
pub fn verbs(data: &[u8]) {
    let Ok(trace) = Trace::from_bytes("fuzz.tdump", data.to_vec()) else {
        return;
    };
    // the budget the CLI's verbs set (tracedump-cli/src/args.rs)
    trace.set_broadcast_budget(value_limit(trace.file_len()).saturating_mul(4));
    for tree in [false, true] {
        let opts = InspectOptions {
            ggml: true,
            tree,
            stats: true,
            filter: Default::default(),
        };
        let _ = inspect_text(&trace, &opts, |_, _| {});
        if !tree {
            let _ = inspect_json(&trace, &opts, |_, _| {});
        }
    }
    for &id in trace.tensor_ids().iter().take(4) {
        if let Some(name) = trace.record_name(id) {
            let _ = trace_tools::show::show(&trace, name, None, None, false);
            let _ = trace_tools::show::show_raw(&trace, name, false);
        }
    }
    let _ = trace.verify();
    if let Ok(report) = diff(
        &trace,
        &trace,
        &Mapping::none(),
        &Tolerance::default(),
        |_, _| {},
    ) {
        let _ = trace_tools::report::html(&trace, &trace, &report);
    }
    diagnose_mismatched(&trace);
    for format in [ExportFormat::Npz, ExportFormat::Safetensors] {
        let out = Scratch::new();
        let _ = export(&trace, format, &out.0, None);
    }
}

/// The diagnosis of divergent pairs on hostile records: a diff of a trace
/// against itself diverges nowhere, so its first tensors are paired with
/// each other (each as A against each other as B, as a shape mismatch and
/// as a divergence) and each pair diagnosed: values, RoPE, stale buffers,
/// the graph paths.
fn diagnose_mismatched(trace: &Trace) {
    let side = |id: u64| trace.tensor(id).ok().map(Side::of);
    // (small tensors only: the diagnosis reads each pair several times)
    let small = |id: &u64| {
        trace.tensor(*id).is_ok_and(|t| {
            t.layout
                .shape()
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .is_some_and(|n| n <= 1 << 16)
        })
    };
    let ids: Vec<u64> = trace
        .tensor_ids()
        .iter()
        .filter(|id| small(id))
        .take(4)
        .copied()
        .collect();
    let mut pairs = Vec::new();
    for &a in &ids {
        for &b in ids.iter().filter(|&&b| b != a) {
            let (Some(sa), Some(sb)) = (side(a), side(b)) else {
                continue;
            };
            for verdict in [Verdict::ShapeMismatch, Verdict::Diverge(Vec::new())] {
                pairs.push(Pair {
                    key: sb.name.clone(),
                    step: None,
                    rule: None,
                    transforms: Vec::new(),
                    a: sa.clone(),
                    b: sb.clone(),
                    verdict,
                    metrics: None,
                    parents: Vec::new(),
                    inputs: Vec::new(),
                    amplification: None,
                });
            }
        }
    }
    for i in 0..pairs.len() {
        let _ = trace_tools::blame::diagnose_in(trace, trace, &pairs, i, &[], &Default::default());
    }
}
