//! `tracedump diff`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use trace_reader::Trace;
use trace_tools::compare::diff;
use trace_tools::diff_text::{diff_text, explain_pairing};
use trace_tools::shards::{diff_by_rank, RankDiff, Shards};

use crate::args::{open_run, Pairing};
use crate::output::{progress, verdict};

#[derive(clap::Args)]
pub struct Args {
    /// The run under test (a trace file, or a directory or glob of shards).
    a: PathBuf,
    /// The reference run.
    b: PathBuf,
    #[command(flatten)]
    pairing: Pairing,
    /// List every pair, not only the divergent ones.
    #[arg(long)]
    all: bool,
    /// Say how each tensor was paired (the rule, its transforms) and why each of A's unpaired tensors has no partner.
    #[arg(long)]
    explain_pairing: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// Also write one row per pair (metrics, moments, verdict) to this Parquet file.
    #[arg(long, value_name = "FILE")]
    parquet: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (mapping, tol) = (args.pairing.mapping()?, args.pairing.tolerance());
    let (ra, rb) = (open_run(&args.a)?, open_run(&args.b)?);
    if ra.is_sharded() || rb.is_sharded() {
        if args.parquet.is_some() {
            bail!(
                "--parquet compares one trace with one trace; for shards, diff them rank by rank"
            );
        }
        let per_rank = diff_by_rank(&ra, &rb, &mapping, &tol)?;
        return by_rank(&ra, &rb, &per_rank, &args);
    }
    let (ta, tb) = (ra.only("diff")?, rb.only("diff")?);
    let bar = progress(ta.len() as u64, true, "comparing");
    let report = diff(ta, tb, &mapping, &tol, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    if let Some(out) = &args.parquet {
        super::export::write_diff_parquet(ta, tb, &report, out)?;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", diff_text(ta, tb, &report, args.all)?);
        if args.explain_pairing {
            out!("{}", explain_pairing(&report)?);
        }
    }
    Ok(verdict(report.agrees()))
}

/// Two sharded runs, rank by rank: a line per rank, then each divergent
/// rank's diff.
fn by_rank(sa: &Shards, sb: &Shards, per_rank: &[RankDiff], args: &Args) -> Result<ExitCode> {
    let agrees = per_rank
        .iter()
        .all(|r| r.report.as_ref().is_some_and(|x| x.agrees()));
    if args.json {
        let v: Vec<serde_json::Value> = per_rank
            .iter()
            .map(|r| {
                serde_json::json!({
                    "rank": r.rank,
                    "a": r.files.0.as_ref().map(|p| p.display().to_string()),
                    "b": r.files.1.as_ref().map(|p| p.display().to_string()),
                    "report": r.report,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(verdict(agrees));
    }
    outln!(
        "A {} vs B {}, rank by rank",
        sa.path().display(),
        sb.path().display()
    );
    for r in per_rank {
        match &r.report {
            None => outln!(
                "rank {:<4} only in {}",
                r.rank,
                if r.files.0.is_some() { "A" } else { "B" }
            ),
            Some(rep) => outln!(
                "rank {:<4} {} pairs, {} divergent, first divergence: {}",
                r.rank,
                rep.pairs.len(),
                rep.pairs
                    .iter()
                    .filter(|p| p.verdict.is_divergent())
                    .count(),
                rep.first_divergence
                    .and_then(|i| rep.pairs.get(i).map(|p| format!(
                        "{} (pair {} of {})",
                        p.key,
                        i + 1,
                        rep.pairs.len()
                    )))
                    .unwrap_or_else(|| "none".into())
            ),
        }
    }
    for r in per_rank {
        if let (Some(rep), (Some(fa), Some(fb))) = (&r.report, &r.files) {
            if !rep.agrees() || args.all {
                outln!("\n== rank {} ==", r.rank);
                out!(
                    "{}",
                    diff_text(shard_of(sa, fa)?, shard_of(sb, fb)?, rep, args.all)?
                );
            }
        }
    }
    Ok(verdict(agrees))
}

/// The open trace of a shard file.
fn shard_of<'s>(run: &'s Shards, file: &Path) -> Result<&'s Trace> {
    match run.shards().iter().find(|s| s.trace.path() == file) {
        Some(s) => Ok(&s.trace),
        None => bail!(
            "{}: not a shard of {}",
            file.display(),
            run.path().display()
        ),
    }
}
