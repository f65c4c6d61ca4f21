//! `tracedump verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::args::open_run;
use crate::output::verdict;

#[derive(clap::Args)]
pub struct Args {
    /// The trace file (or a directory or glob of shards).
    file: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let run = open_run(&args.file)?;
    let mut bad = 0;
    for s in run.shards() {
        let rep = s.trace.verify();
        let rank = if run.is_sharded() {
            format!(" rank {}", s.rank)
        } else {
            String::new()
        };
        for f in &rep.faults {
            outln!("FAULT{rank}: {f}");
        }
        if rep.values_unchecked > 0 {
            outln!(
                "note{rank}: {} value checks left out: past verify's budget of values for a file this size (SPEC.md §9)",
                rep.values_unchecked
            );
        }
        bad += usize::from(!rep.is_ok());
        outln!(
            "{}{}: {} records, {} bytes checksummed, {} tensors, {} lineages replayed, {} value checksums: {}",
            if run.is_sharded() { format!("rank {} ", s.rank) } else { String::new() },
            s.trace.path().display(),
            rep.records,
            rep.bytes,
            rep.tensors,
            rep.lineages_replayed,
            rep.value_checksums,
            if rep.is_ok() { "OK".to_string() } else { format!("{} faults", rep.faults.len()) }
        );
    }
    for w in run.warnings() {
        outln!("WARNING {w}");
    }
    Ok(verdict(bad == 0))
}
