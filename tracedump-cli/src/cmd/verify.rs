//! `tracedump verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::args::open_run;
use crate::output::verdict;

#[derive(clap::Args)]
pub struct Args {
    /// The trace file (or a directory or glob of shards).
    file: PathBuf,
    /// Print JSON for scripts, see below.
    #[arg(long)]
    json: bool,
}

/// `verify --json`.
#[derive(Serialize)]
struct VerifyJson {
    /// Whether every file is sound.
    ok: bool,
    /// One entry per file (per shard).
    files: Vec<FileJson>,
    /// Warnings about the shards as a whole.
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct FileJson {
    file: String,
    rank: Option<i64>,
    ok: bool,
    records: u64,
    bytes: u64,
    tensors: u64,
    lineages_replayed: u64,
    value_checksums: u64,
    values_unchecked: u64,
    faults: Vec<FaultJson>,
}

#[derive(Serialize)]
struct FaultJson {
    record: Option<u64>,
    tensor: Option<String>,
    offset: u64,
    message: String,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let run = open_run(&args.file)?;
    let mut bad = 0;
    let mut files = Vec::new();
    for s in run.shards() {
        let rep = s.trace.verify();
        bad += usize::from(!rep.is_ok());
        if args.json {
            files.push(FileJson {
                file: s.trace.path().display().to_string(),
                rank: run.is_sharded().then_some(s.rank),
                ok: rep.is_ok(),
                records: rep.records,
                bytes: rep.bytes,
                tensors: rep.tensors,
                lineages_replayed: rep.lineages_replayed,
                value_checksums: rep.value_checksums,
                values_unchecked: rep.values_unchecked,
                faults: rep
                    .faults
                    .into_iter()
                    .map(|f| FaultJson {
                        record: f.record,
                        tensor: f.tensor,
                        offset: f.offset,
                        message: f.message,
                    })
                    .collect(),
            });
            continue;
        }
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
    if args.json {
        let doc = VerifyJson {
            ok: bad == 0,
            files,
            warnings: run.warnings().to_vec(),
        };
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(verdict(bad == 0));
    }
    for w in run.warnings() {
        outln!("WARNING {w}");
    }
    Ok(verdict(bad == 0))
}
