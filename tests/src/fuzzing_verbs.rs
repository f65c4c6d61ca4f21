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
use trace_tools::compare::{diff, Tolerance};
use trace_tools::export::{export, ExportFormat};
use trace_tools::inspect::{inspect_json, inspect_text, InspectOptions};
use trace_tools::mapping::Mapping;

use crate::fuzzing::Scratch;

/// A trace file's bytes through `inspect` (table, `--tree`, `--stats`,
/// `--json`), `show` of its first tensors, `verify`, `diff` and `report` of
/// the trace against itself, and `export` to npz and safetensors. Only a
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
    for format in [ExportFormat::Npz, ExportFormat::Safetensors] {
        let out = Scratch::new();
        let _ = export(&trace, format, &out.0, None);
    }
}
