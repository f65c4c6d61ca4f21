//! `tracedump report`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use trace_tools::compare::{diff, DiffReport};

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
    /// Print the summary line as JSON for scripts, see below.
    #[arg(long)]
    json: bool,
}

/// `report --json`: what the summary line says.
#[derive(Serialize)]
struct ReportJson<'a> {
    /// The page written.
    output: String,
    /// Whether the runs agree (exit status 0).
    agrees: bool,
    /// Pairs compared.
    pairs: usize,
    /// Pairs that diverge.
    divergent: usize,
    /// The first divergent pair.
    first_divergence: Option<FirstJson<'a>>,
}

#[derive(Serialize)]
struct FirstJson<'a> {
    /// 1-based, as people count ("pair 38 of 59").
    pair: usize,
    /// 0-based, as `diff --json`'s `first_divergence`.
    index: usize,
    key: &'a str,
    name_a: &'a str,
    name_b: &'a str,
    step: Option<i64>,
    verdict: &'static str,
    reasons: &'a [String],
}

impl<'a> ReportJson<'a> {
    fn of(output: &std::path::Path, r: &'a DiffReport) -> Self {
        ReportJson {
            output: output.display().to_string(),
            agrees: r.agrees(),
            pairs: r.pairs.len(),
            divergent: r.pairs.iter().filter(|p| p.verdict.is_divergent()).count(),
            first_divergence: r
                .first_divergence
                .and_then(|i| Some((i, r.pairs.get(i)?)))
                .map(|(i, p)| FirstJson {
                    pair: i + 1,
                    index: i,
                    key: &p.key,
                    name_a: &p.a.name,
                    name_b: &p.b.name,
                    step: p.step,
                    verdict: p.verdict.name(),
                    reasons: p.verdict.reasons(),
                }),
        }
    }
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
    if output.is_dir() {
        bail!(
            "{}: the output is a directory; give a file name (e.g. {})",
            output.display(),
            output.join("report.html").display()
        );
    }
    std::fs::write(output, page).with_context(|| format!("{}", output.display()))?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&ReportJson::of(output, &report))?
        );
        return Ok(verdict(report.agrees()));
    }
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
