//! `tracedump demo`.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::args::Output;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the run under test.
    #[command(flatten)]
    output: Output,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let out = args.output.path()?;
    for (path, n) in
        trace_tools::demo::write_demo(out).with_context(|| format!("writing {}", out.display()))?
    {
        outln!("wrote {} ({n} records)", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
