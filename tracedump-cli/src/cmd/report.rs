//! `tracedump report`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use trace_tools::compare::diff;

use crate::args::{open_run, Pairing};
use crate::output::{progress, verdict};

#[derive(clap::Args)]
pub struct Args {
    /// The run under test.
    a: PathBuf,
    /// The reference run.
    b: PathBuf,
    /// The HTML file to write.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    pairing: Pairing,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (mapping, tol) = (args.pairing.mapping()?, args.pairing.tolerance());
    let (ra, rb) = (open_run(&args.a)?, open_run(&args.b)?);
    let (ta, tb) = (ra.only("report")?, rb.only("report")?);
    let bar = progress(ta.len() as u64, true, "comparing");
    let report = diff(ta, tb, &mapping, &tol, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let page = trace_tools::report::html(ta, tb, &report)?;
    let output = &args.output;
    std::fs::write(output, page).with_context(|| format!("{}", output.display()))?;
    outln!(
        "{}: {} pairs, {}",
        output.display(),
        report.pairs.len(),
        match report
            .first_divergence
            .and_then(|i| Some((i, report.pairs.get(i)?)))
        {
            Some((i, p)) => format!(
                "first divergence {} (pair {} of {})",
                if p.a.name == p.b.name {
                    p.a.name.clone()
                } else {
                    format!("{} (A) = {} (B)", p.a.name, p.b.name)
                },
                i + 1,
                report.pairs.len()
            ),
            None if report.pairs.is_empty() => {
                "nothing compared: no tensor of A pairs with one of B".to_string()
            }
            None => "the runs agree".to_string(),
        }
    );
    Ok(verdict(report.agrees()))
}
