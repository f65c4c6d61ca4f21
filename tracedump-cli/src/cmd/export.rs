//! `tracedump export`, and the Parquet output `diff --parquet` shares.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use trace_reader::Trace;
use trace_tools::compare::DiffReport;
use trace_tools::export::{export, ExportFormat};

use crate::args::{open_run, Filters, Output};

#[derive(clap::Args)]
pub struct Args {
    /// The trace file (or, to parquet, a directory or glob of shards).
    file: PathBuf,
    /// `safetensors`, `npz` or `parquet` (one row per tensor: layout,
    /// lineage, role, layer, step, every stat).
    #[arg(long, value_name = "FORMAT")]
    to: String,
    /// The output file.
    #[command(flatten)]
    output: Output,
    /// With `--to parquet`: also write OUT's stem + `.values.parquet`,
    /// one row per value of every tensor of at most N elements.
    #[arg(long, value_name = "N")]
    values_max: Option<u64>,
    #[command(flatten)]
    filters: Filters,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let out = args.output.path()?;
    let run = open_run(&args.file)?;
    let filter = args.filters.build()?;
    let format = match args.to.to_ascii_lowercase().as_str() {
        "safetensors" => ExportFormat::Safetensors,
        "npz" => ExportFormat::Npz,
        "parquet" => {
            let ids: Vec<Vec<u64>> = run
                .shards()
                .iter()
                .map(|s| s.trace.filter(&filter))
                .collect::<Result<_, _>>()?;
            let parts: Vec<(Option<i64>, &Trace, &[u64])> = run
                .shards()
                .iter()
                .zip(&ids)
                .map(|(s, i)| (run.is_sharded().then_some(s.rank), &s.trace, i.as_slice()))
                .collect();
            return export_parquet(&parts, out, args.values_max, args.json);
        }
        other => bail!("--to {other}: choose safetensors, npz or parquet"),
    };
    if run.is_sharded() {
        bail!(
            "--to {}: a sharded trace exports to parquet (one table, a rank column)",
            args.to
        );
    }
    if args.values_max.is_some() {
        bail!("--values-max goes with --to parquet");
    }
    let trace = run.only("export")?;
    let ids = trace.filter(&filter)?;
    let sum = export(trace, format, out, Some(&ids))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&sum)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "wrote {}: {} tensors, {} bytes",
        out.display(),
        sum.exported.len(),
        sum.bytes
    );
    for (name, why) in &sum.converted {
        outln!("  converted {name}: {why}");
    }
    for (name, why) in &sum.skipped {
        outln!("  skipped {name}: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "parquet")]
fn export_parquet(
    parts: &[(Option<i64>, &Trace, &[u64])],
    out: &Path,
    values_max: Option<u64>,
    json: bool,
) -> Result<ExitCode> {
    let sum = trace_tools::parquet::export_shards(parts, out, values_max)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&sum)?);
    } else {
        outln!("{}: {} tensors", sum.tensors_file, sum.tensors);
        if let Some(v) = &sum.values_file {
            outln!("{v}: {} values", sum.values);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "parquet"))]
fn export_parquet(
    _parts: &[(Option<i64>, &Trace, &[u64])],
    _out: &Path,
    _values_max: Option<u64>,
    _json: bool,
) -> Result<ExitCode> {
    bail!(NO_PARQUET)
}

/// `diff --parquet`: one row per pair.
#[cfg(feature = "parquet")]
pub fn write_diff_parquet(a: &Trace, b: &Trace, r: &DiffReport, out: &Path) -> Result<()> {
    Ok(trace_tools::parquet::export_diff(a, b, r, out)?)
}

/// `diff --parquet`: one row per pair.
#[cfg(not(feature = "parquet"))]
pub fn write_diff_parquet(_a: &Trace, _b: &Trace, _r: &DiffReport, _out: &Path) -> Result<()> {
    bail!(NO_PARQUET)
}

#[cfg(not(feature = "parquet"))]
const NO_PARQUET: &str =
    "this tracedump was built without Parquet (--no-default-features): build tracedump-cli with its default features";
