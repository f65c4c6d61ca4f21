//! `tracedump recover`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::args::{one_file, Output};

#[derive(clap::Args)]
pub struct Args {
    /// The torn (or any) trace.
    input: PathBuf,
    /// Where to write the clean trace (not the input).
    #[command(flatten)]
    output: Output,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let output = args.output.path()?;
    let input = one_file(&args.input, "recover", "one trace file")?;
    let sum = trace_tools::recover::recover(input, output)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&sum)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "wrote {}: {} records, {} bytes",
        output.display(),
        sum.records,
        sum.bytes_written
    );
    match &sum.stopped_at {
        Some((offset, why)) => outln!(
            "stopped at byte {offset}: {why}; {} bytes of the input were not carried over",
            sum.dropped_tail_bytes
        ),
        None => outln!("every record of the input was carried over"),
    }
    Ok(ExitCode::SUCCESS)
}
