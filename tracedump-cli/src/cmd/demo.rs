//! `tracedump demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the run under test.
    out: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let out = &args.out;
    for (path, n) in
        trace_tools::demo::write_demo(out).with_context(|| format!("writing {}", out.display()))?
    {
        outln!("wrote {} ({n} records)", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
