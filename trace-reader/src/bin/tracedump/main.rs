//! `tracedump`: look inside tensor traces.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use trace_reader::{TensorInfo, Trace};

mod demo;

#[derive(Parser)]
#[command(name = "tracedump", version, about = "Capture and inspect named tensors from ML inference engines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What is in a trace and how each tensor is laid out.
    ///
    /// Example: tracedump inspect run.tdump
    Inspect {
        /// The trace file.
        file: PathBuf,
    },
    /// Check every checksum, padding byte and lineage replay; exit 1 on any fault.
    ///
    /// Example: tracedump verify run.tdump
    Verify {
        /// The trace file.
        file: PathBuf,
    },
    /// Write the built-in example trace (one attention block's KV cache).
    ///
    /// Example: tracedump demo demo.tdump
    Demo {
        /// Where to write it.
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Inspect { file } => {
            let trace = Trace::open(&file)?;
            print!("{}", inspect(&trace));
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { file } => {
            let trace = Trace::open(&file)?;
            let rep = trace.verify();
            for f in &rep.faults {
                println!("FAULT {f}");
            }
            println!(
                "{}: {} records, {} bytes checksummed, {} tensors, {} lineages replayed, {} value checksums: {}",
                file.display(),
                rep.records,
                rep.bytes,
                rep.tensors,
                rep.lineages_replayed,
                rep.value_checksums,
                if rep.is_ok() { "OK".to_string() } else { format!("{} faults", rep.faults.len()) }
            );
            Ok(if rep.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Demo { out } => {
            let n = demo::write_demo(&out).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({n} records)", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn join<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

fn lineage_chain(trace: &Trace, t: &TensorInfo) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !t.lineage.parents.is_empty() {
        let names: Vec<String> = t
            .lineage
            .parents
            .iter()
            .map(|&p| format!("{}#{p}", trace.record_name(p).unwrap_or("?")))
            .collect();
        parts.push(names.join(" + "));
    }
    parts.extend(t.lineage.ops.iter().map(|o| o.to_string()));
    if let Some(op) = &t.lineage.engine_op {
        parts.push(format!("[{} {}]", op.engine, op.op));
    }
    parts.join(" → ")
}

fn inspect(trace: &Trace) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let (major, minor) = trace.version();
    let _ = writeln!(s, "file     {}", trace.path().display());
    let _ = writeln!(s, "format   tracedump v{major}.{minor}, {} bytes", trace.file_len());
    let status = match trace.torn_tail() {
        _ if trace.is_finished() => "finished (footer index present)".to_string(),
        Some(t) => format!("UNFINISHED: torn tail of {} bytes at byte {} ({})", t.bytes, t.offset, t.reason),
        None => "UNFINISHED: no footer (read by scanning)".to_string(),
    };
    let _ = writeln!(s, "status   {status}");
    let storages = trace.records().iter().filter(|r| r.kind == 2).count();
    let _ = writeln!(s, "records  {} ({} tensors, {} storages)", trace.records().len(), trace.len(), storages);
    for (k, v) in trace.run_metadata().iter() {
        let _ = writeln!(s, "run      {k} = {v}");
    }
    for w in trace.warnings() {
        let _ = writeln!(s, "warning  {w}");
    }
    let _ = writeln!(s);
    for &id in trace.tensor_ids() {
        match trace.tensor(id) {
            Err(e) => {
                let _ = writeln!(s, "#{id:<4} {:<20} ERROR {e}", trace.record_name(id).unwrap_or("?"));
            }
            Ok(t) => {
                let occ = match trace.occurrence(id) {
                    Some((k, n)) if n > 1 => format!(" ({} of {n})", k + 1),
                    _ => String::new(),
                };
                let where_ = match t.storage {
                    None => "stats only".to_string(),
                    Some(sid) if sid == id => format!("own bytes +{}", t.layout.storage_offset),
                    Some(sid) => format!("storage #{sid} +{}", t.layout.storage_offset),
                };
                let estr = t.element_strides().map(|e| format!(" elems[{}]", join(&e))).unwrap_or_default();
                let mut labels = Vec::new();
                if let Some(l) = t.layer {
                    labels.push(format!("layer={l}"));
                }
                if let Some(st) = t.step {
                    labels.push(format!("step={st}"));
                }
                if let Some(r) = &t.role {
                    labels.push(format!("role={r}"));
                }
                let _ = writeln!(
                    s,
                    "#{id:<4} {}{occ}  {} [{}] bytes[{}]{estr} {}  {where_}  {}",
                    t.name,
                    t.dtype,
                    join(&t.layout.shape),
                    join(&t.layout.byte_strides),
                    if t.is_contiguous() { "contiguous" } else { "strided" },
                    labels.join(" "),
                );
                if let Some(trace_reader::SourceLayout::Ggml { ne, nb }) = &t.source_layout {
                    let _ = writeln!(s, "        ggml ne=[{}] nb=[{}]", join(ne), join(nb));
                }
                let chain = lineage_chain(trace, t);
                if !chain.is_empty() {
                    let _ = writeln!(s, "        lineage {chain}");
                }
                if let Some(st) = &t.stats {
                    let _ = writeln!(
                        s,
                        "        stats min={:.6} max={:.6} mean={:.6} std={:.6} absmax={:.6} nan={} inf={}",
                        st.min, st.max, st.mean, st.std, st.abs_max, st.nan_count, st.inf_count
                    );
                }
            }
        }
    }
    s
}
