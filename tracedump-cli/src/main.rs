//! `tracedump`: look inside tensor traces and find where two runs part ways.
//!
//! A thin layer over `trace-tools`: each subcommand (one module in `cmd/`)
//! parses its arguments, calls the library and prints.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `print!` that does not panic when stdout is a closed pipe
/// ([`output::stdout`]); other write errors are errors.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!($($arg)*))?
    };
}

/// `println!`, as [`out!`].
macro_rules! outln {
    () => { out!("\n") };
    ($($arg:tt)*) => {{
        out!($($arg)*);
        out!("\n");
    }};
}

mod args;
mod cmd;
mod output;

#[derive(Parser)]
#[command(
    name = "tracedump",
    version,
    about = "Capture and inspect named tensors from ML inference engines; find where two runs part ways",
    after_help = "Exit status: 0 success (diff: the runs agree), 1 diff or report found a divergence, or verify a fault; 2 error.\nEnvironment: TRACEDUMP_THREADS=N lets at most N threads share a large conversion to f32 (default: the cores, up to 4; 1: the calling thread only).\nEvery verb that writes a file takes -o/--output FILE (export, import, recover and demo also take it as their last argument).\nStart with: tracedump demo -o demo.tdump && tracedump diff demo.tdump demo.reference.tdump"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What is in a trace and how each tensor is laid out.
    ///
    /// One row per tensor in record (= execution) order: name, dtype, shape,
    /// byte strides (element strides where they differ), contiguous or not,
    /// storage and offset, layer/step/role, and the lineage as one chain.
    #[command(
        after_help = "Examples:\n  tracedump inspect run.tdump\n  tracedump inspect run.tdump --ggml --layer 0\n  tracedump inspect run.tdump --tree\n  tracedump inspect run.tdump --filter '^k-' --stats --json"
    )]
    Inspect(cmd::inspect::Args),
    /// The values of a tensor, printed as numpy and ggml's eval callback do.
    #[command(
        after_help = "Examples:\n  tracedump show run.tdump k-0\n  tracedump show run.tdump 'Qcur-0#0' --slice '0:2, 0:4'\n  tracedump show run.tdump result_output --as f16 --full\n  tracedump show run.tdump k-0 --slice '0, 0' --json\n\nJSON (--json): {name, id, occurrence: [k, n] (k from 0) or null, dtype, as_dtype, shape, byte_strides, slice, sliced_shape, values}; values are nested lists of the slice's shape (the tensor's without one), every value: integers for integer dtypes, NaN and infinities as the strings \"NaN\", \"Infinity\", \"-Infinity\"."
    )]
    Show(cmd::show::Args),
    /// Where two runs part ways: pair tensors by name, compare values, name the first divergence.
    ///
    /// A is the run under test, B the reference. Layouts may differ (a
    /// permuted f16 view against a contiguous f32 tensor is compared by
    /// value). An element agrees when |a - b| <= atol + rtol*|b|; a pair
    /// diverges when any element does not, when its cosine is below
    /// --min-cosine, on NaN/Inf mismatches, or when its shapes differ.
    #[command(
        after_help = "Examples:\n  tracedump diff mine.tdump llama.tdump\n  tracedump diff llama.tdump hf.tdump --preset llama-hf --atol 1e-2\n  tracedump diff a.tdump b.tdump --rename '^blk\\.(\\d+)\\.=>layers.$1.' --json\n\nExit status: 0 the runs agree, 1 they diverge, 2 error."
    )]
    Diff(cmd::diff::Args),
    /// Write the divergence report of A against B as one self-contained HTML page.
    ///
    /// Per-layer error growth (max abs error, cosine, each run's std and their
    /// ratio), the first divergent tensor with its lineage and layout for both
    /// runs, an error histogram and a heat map of where in that tensor the
    /// error sits, and the full sortable table. No network fetches. Exit
    /// status as `diff`: 0 agree, 1 diverge.
    #[command(
        after_help = "Example:\n  tracedump report mine.tdump llama.tdump -o report.html --preset llama-hf\n\nJSON (--json): the summary line as {output, agrees, pairs, divergent, first_divergence: null or {pair (from 1), index (from 0, as diff --json), key, name_a, name_b, step, verdict, reasons}}."
    )]
    Report(cmd::report::Args),
    /// Check every checksum, padding byte and lineage replay; exit 1 on any fault.
    #[command(
        after_help = "Examples:\n  tracedump verify run.tdump\n  tracedump verify run.tdump --json\n\nJSON (--json): {ok, files: [{file, rank (sharded runs) or null, ok, records, bytes, tensors, lineages_replayed, value_checksums, values_unchecked, faults: [{record, tensor, offset, message}]}], warnings}. Exit status: 0 sound, 1 a fault, 2 error."
    )]
    Verify(cmd::verify::Args),
    /// Turn a torn trace (writer killed) into a clean, finished one holding every complete record.
    ///
    /// The output (-o FILE, or OUT) may not be the input. Records are copied byte for byte with their ids; a footer index is
    /// added. Recovery stops at the first record whose checksum fails.
    #[command(
        after_help = "Examples:\n  tracedump recover crashed.tdump -o recovered.tdump\n  tracedump recover crashed.tdump recovered.tdump --json\n\nJSON (--json): {records, dropped_tail_bytes, stopped_at: null or [byte offset, why], bytes_written}."
    )]
    Recover(cmd::recover::Args),
    /// Write logical tensors (contiguous, row-major) to safetensors or npz, or a table of them to Parquet.
    ///
    /// Repeated names get `#k` for their k-th occurrence. Quantized tensors
    /// are written dequantized, as f32. Skipped and listed: stats-only
    /// tensors, block types this version cannot dequantize, and views whose
    /// values would exceed the file's value limit (a broadcast naming more
    /// values than the file holds); nothing made up is written. safetensors keeps the
    /// run metadata and every source layout in `__metadata__`; npz (numpy)
    /// gets bf16/fp8 as float32. Parquet (a build with `--features parquet`)
    /// gets one row per tensor (layout, lineage, every statistic) and, with
    /// --values-max, a table of values; it alone takes a directory or glob
    /// of shards.
    #[command(
        after_help = "Examples:\n  tracedump export run.tdump --to safetensors -o run.safetensors\n  tracedump export run.tdump --to npz -o layer0.npz --layer 0"
    )]
    Export(cmd::export::Args),
    /// Convert a safetensors or GGUF file into a trace (or, from GGUF, into
    /// safetensors/npz by OUT's extension, block types dequantized to f32).
    ///
    /// GGUF tensors keep their raw blocks and ggml `ne`/`nb`; layer and step
    /// come from the names (`blk.3.attn_q.weight`, `K_quant.step2.layer0`);
    /// the key-value metadata becomes run metadata. Every reading verb also
    /// opens a `.gguf` directly (`tracedump inspect model.gguf`).
    #[command(
        after_help = "Examples:\n  tracedump import weights.safetensors -o weights.tdump\n  tracedump import model.gguf -o model.tdump\n  tracedump import kv-trace.gguf -o kv.npz"
    )]
    Import(cmd::import::Args),
    /// Write the built-in example: a 4-layer model run twice, with a planted divergence.
    ///
    /// -o FILE (or OUT) is the run under test; its stem + `.reference.tdump`
    /// is the reference.
    #[command(
        after_help = "Example:\n  tracedump demo -o demo.tdump && tracedump diff demo.tdump demo.reference.tdump"
    )]
    Demo(cmd::demo::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Show(a) => cmd::show::run(a),
        Command::Diff(a) => cmd::diff::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Recover(a) => cmd::recover::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Import(a) => cmd::import::run(a),
        Command::Demo(a) => cmd::demo::run(a),
    };
    match result {
        Ok(code) => code,
        // a closed pipe met outside `out!` (a library writing to stdout)
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
