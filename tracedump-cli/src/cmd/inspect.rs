//! `tracedump inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use trace_tools::inspect::{inspect_json, inspect_text, value_json, InspectOptions};
use trace_tools::shards::Shards;

use crate::args::{open_run, Filters};
use crate::output::progress;

#[derive(clap::Args)]
pub struct Args {
    /// The trace file (or a directory or glob of shards).
    file: PathBuf,
    /// Also show ggml's ne/nb (fastest dimension first) where recorded.
    #[arg(long)]
    ggml: bool,
    /// Group views under their storages and parents.
    #[arg(long)]
    tree: bool,
    /// Add min/max/mean/std/abs-max/NaN/Inf of every tensor.
    #[arg(long)]
    stats: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filters: Filters,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let opts = InspectOptions {
        ggml: args.ggml,
        tree: args.tree,
        stats: args.stats,
        filter: args.filters.build()?,
    };
    let run = open_run(&args.file)?;
    let sharded = run.is_sharded();
    let mut docs = Vec::new();
    if sharded && !args.json {
        out!("{}", shards_summary(&run));
    }
    for s in run.shards() {
        let bar = progress(0, opts.stats, "stats");
        let tick = |done: usize, total: usize| {
            if total > 200 {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
        };
        if args.json {
            let doc = inspect_json(&s.trace, &opts, tick)?;
            bar.finish_and_clear();
            if !sharded {
                outln!("{doc}");
                break;
            }
            docs.push(serde_json::json!({
                "rank": s.rank,
                "file": s.trace.path().display().to_string(),
                "inspect": serde_json::from_str::<serde_json::Value>(&doc)?,
            }));
        } else {
            let text = inspect_text(&s.trace, &opts, tick)?;
            bar.finish_and_clear();
            if sharded {
                outln!("\n== rank {}: {} ==", s.rank, s.trace.path().display());
            }
            out!("{text}");
        }
    }
    if sharded && args.json {
        outln!("{}", serde_json::to_string_pretty(&docs)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The shards of a sharded trace, one line each.
fn shards_summary(shards: &Shards) -> String {
    let mut out = format!(
        "shards    {} ({} files)\n",
        shards.path().display(),
        shards.shards().len()
    );
    for s in shards.shards() {
        let t = &s.trace;
        out.push_str(&format!(
            "rank {:<4} {}  {} tensors, {} records, world_size {}, {}\n",
            s.rank,
            t.path().display(),
            t.tensor_ids().len(),
            t.len(),
            t.run_metadata()
                .get("world_size")
                .map(value_json)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            if t.is_finished() {
                "finished"
            } else {
                "unfinished"
            }
        ));
    }
    for w in shards.warnings() {
        out.push_str(&format!("warning   {w}\n"));
    }
    out
}
