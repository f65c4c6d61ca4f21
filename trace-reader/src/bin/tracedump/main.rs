//! `tracedump`: look inside tensor traces and find where two runs part ways.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use regex::Regex;
use trace_reader::compare::{diff, Tolerance};
use trace_reader::mapping::{preset_names, Mapping};
use trace_reader::shards::{diff_by_rank, is_sharded, Shards};
use trace_reader::{DType, TensorFilter, Trace};

mod demo;
mod diffcmd;
mod export;
mod import;
mod inspect;
mod output;
#[cfg(feature = "parquet")]
mod parquet_out;
mod recover;
mod show;

#[derive(Parser)]
#[command(
    name = "tracedump",
    version,
    about = "Capture and inspect named tensors from ML inference engines; find where two runs part ways",
    after_help = "Exit status: 0 success (diff: the runs agree), 1 diff found a divergence or verify a fault, 2 error.\nEnvironment: TRACEDUMP_THREADS=N lets at most N threads share a large conversion to f32 (default: the cores, up to 4; 1: the calling thread only).\nStart with: tracedump demo demo.tdump && tracedump diff demo.tdump demo.reference.tdump"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Filters {
    /// Only tensors whose name matches this regex.
    #[arg(long, value_name = "REGEX")]
    filter: Option<String>,
    /// Only tensors of this layer.
    #[arg(long, value_name = "N")]
    layer: Option<i64>,
    /// Only tensors of this step.
    #[arg(long, value_name = "N")]
    step: Option<i64>,
    /// Only tensors with this role (q, k, v, kq, kqv_out, k_cache, ...).
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
}

impl Filters {
    fn build(&self) -> Result<TensorFilter> {
        Ok(TensorFilter {
            name: self
                .filter
                .as_deref()
                .map(Regex::new)
                .transpose()
                .context("--filter")?,
            layer: self.layer,
            step: self.step,
            role: self.role.clone(),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// What is in a trace and how each tensor is laid out.
    ///
    /// One row per tensor in record (= execution) order: name, dtype, shape,
    /// byte strides (element strides where they differ), contiguous or not,
    /// storage and offset, layer/step/role, and the lineage as one chain.
    #[command(
        after_help = "Examples:\n  tracedump inspect run.tdump\n  tracedump inspect run.tdump --ggml --layer 0\n  tracedump inspect run.tdump --tree\n  tracedump inspect run.tdump --filter '^k-' --stats --json"
    )]
    Inspect {
        /// The trace file.
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
    },
    /// The values of a tensor, printed as numpy and ggml's eval callback do.
    #[command(
        after_help = "Examples:\n  tracedump show run.tdump k-0\n  tracedump show run.tdump 'Qcur-0#2' --slice '0, :, 0:4'\n  tracedump show run.tdump logits --as f16 --full"
    )]
    Show {
        /// The trace file.
        file: PathBuf,
        /// Tensor name: its first occurrence; `name#k` for the k-th (from 0).
        name: String,
        /// A numpy slice, e.g. `0, :, 1:8:2` or `-1, ::-1` (no `...`; trailing dimensions may be left out).
        #[arg(long, value_name = "SLICE")]
        slice: Option<String>,
        /// Convert the values to this dtype before printing (f32, f16, bf16).
        #[arg(long = "as", value_name = "DTYPE")]
        as_dtype: Option<String>,
        /// Print every value, not the first and last three of each dimension longer than six.
        #[arg(long)]
        full: bool,
        /// Print the stored bytes the view spans in hex instead of values
        /// (for block types the raw ggml blocks, one per line).
        #[arg(long, conflicts_with_all = ["slice", "as_dtype"])]
        raw: bool,
    },
    /// Where two runs part ways: pair tensors by name, compare values, name the first divergence.
    ///
    /// A is the run under test, B the reference. Layouts may differ (a
    /// permuted f16 view against a contiguous f32 tensor is compared by
    /// value). An element agrees when |a - b| <= atol + rtol*|b|; a pair
    /// diverges when any element does not, when its cosine is below
    /// --min-cosine, on NaN/Inf mismatches, or when its shapes differ.
    #[command(
        after_help = "Examples:\n  tracedump diff mine.tdump llama.tdump\n  tracedump diff llama.tdump hf.tdump --preset llama-hf --atol 1e-2\n  tracedump diff a.tdump b.tdump --rename '^blk\\.(\\d+)\\.=>layers.$1.' --json\n\nExit status: 0 the runs agree, 1 they diverge, 2 error."
    )]
    Diff {
        /// The run under test.
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
    },
    /// Write the divergence report of A against B as one self-contained HTML page.
    ///
    /// Per-layer error growth (max abs error, cosine, each run's std and their
    /// ratio), the first divergent tensor with its lineage and layout for both
    /// runs, an error histogram and a heat map of where in that tensor the
    /// error sits, and the full sortable table. No network fetches. Exit
    /// status as `diff`: 0 agree, 1 diverge.
    #[command(
        after_help = "Example:\n  tracedump report mine.tdump llama.tdump -o report.html --preset llama-hf"
    )]
    Report {
        /// The run under test.
        a: PathBuf,
        /// The reference run.
        b: PathBuf,
        /// The HTML file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        pairing: Pairing,
    },
    /// Check every checksum, padding byte and lineage replay; exit 1 on any fault.
    #[command(after_help = "Example:\n  tracedump verify run.tdump")]
    Verify {
        /// The trace file.
        file: PathBuf,
    },
    /// Turn a torn trace (writer killed) into a clean, finished one holding every complete record.
    ///
    /// Records are copied byte for byte with their ids; a footer index is
    /// added. Recovery stops at the first record whose checksum fails.
    #[command(after_help = "Example:\n  tracedump recover crashed.tdump recovered.tdump")]
    Recover {
        /// The torn (or any) trace.
        input: PathBuf,
        /// Where to write the clean trace (not the input).
        output: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write logical tensors (contiguous, row-major) to safetensors or npz.
    ///
    /// Repeated names get `#k` for their k-th occurrence. Quantized tensors
    /// are written dequantized, as f32. Skipped and listed: stats-only
    /// tensors, block types this version cannot dequantize, and views whose
    /// values would exceed the file's value limit (a broadcast naming more
    /// values than the file holds); nothing made up is written. safetensors keeps the
    /// run metadata and every source layout in `__metadata__`; npz (numpy)
    /// gets bf16/fp8 as float32.
    #[command(
        after_help = "Examples:\n  tracedump export run.tdump --to safetensors run.safetensors\n  tracedump export run.tdump --to npz layer0.npz --layer 0"
    )]
    Export {
        /// The trace file.
        file: PathBuf,
        /// `safetensors`, `npz` or `parquet` (one row per tensor: layout,
        /// lineage, role, layer, step, every stat).
        #[arg(long, value_name = "FORMAT")]
        to: String,
        /// The output file.
        out: PathBuf,
        /// With `--to parquet`: also write OUT's stem + `.values.parquet`,
        /// one row per value of every tensor of at most N elements.
        #[arg(long, value_name = "N")]
        values_max: Option<u64>,
        #[command(flatten)]
        filters: Filters,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Convert a safetensors or GGUF file into a trace (or, from GGUF, into
    /// safetensors/npz by OUT's extension, block types dequantized to f32).
    ///
    /// GGUF tensors keep their raw blocks and ggml `ne`/`nb`; layer and step
    /// come from the names (`blk.3.attn_q.weight`, `K_quant.step2.layer0`);
    /// the key-value metadata becomes run metadata. Every reading verb also
    /// opens a `.gguf` directly (`tracedump inspect model.gguf`).
    #[command(
        after_help = "Examples:\n  tracedump import weights.safetensors weights.tdump\n  tracedump import model.gguf model.tdump\n  tracedump import kv-trace.gguf kv.npz"
    )]
    Import {
        /// The safetensors or GGUF file.
        file: PathBuf,
        /// The file to write: a trace (`.tdump`), or from GGUF also `.safetensors` / `.npz`.
        out: PathBuf,
    },
    /// Write the built-in example: a 4-layer model run twice, with a planted divergence.
    ///
    /// OUT is the run under test; OUT's stem + `.reference.tdump` is the reference.
    #[command(
        after_help = "Example:\n  tracedump demo demo.tdump && tracedump diff demo.tdump demo.reference.tdump"
    )]
    Demo {
        /// Where to write the run under test.
        out: PathBuf,
    },
}

/// `print!` that does not panic when stdout is a closed pipe
/// ([`output::stdout`]); other write errors are errors.
macro_rules! out {
    ($($arg:tt)*) => {
        output::stdout(format_args!($($arg)*))?
    };
}

/// `println!`, as [`out!`].
macro_rules! outln {
    () => { out!("\n") };
    ($($arg:tt)*) => {{
        out!($($arg)*);
        out!("\n");
    }};
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // a closed pipe met outside `out!` (a library writing to stdout)
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// How `diff` and `report` pair and judge tensors.
#[derive(clap::Args, Debug)]
struct Pairing {
    /// A mapping rule: `PATTERN [@OP] => NAME [| TRANSFORM]...` (regex on A's names, `$1` for groups); repeatable, first match wins.
    #[arg(long, value_name = "RULE")]
    rename: Vec<String>,
    /// A mapping file: one rule per line (as --rename), `#` comments.
    #[arg(long, value_name = "FILE")]
    map: Option<PathBuf>,
    /// A built-in mapping, llama.cpp (A) to HF transformers (B): llama-hf, qwen2-hf, qwen3-hf, gemma2-hf.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Absolute tolerance.
    #[arg(long, default_value_t = Tolerance::default().atol)]
    atol: f64,
    /// Relative tolerance (against B).
    #[arg(long, default_value_t = Tolerance::default().rtol)]
    rtol: f64,
    /// Smallest cosine similarity that agrees.
    #[arg(long, default_value_t = Tolerance::default().min_cosine)]
    min_cosine: f64,
}

impl Pairing {
    fn mapping(&self) -> Result<Mapping> {
        mapping_from(&self.rename, self.map.as_deref(), self.preset.as_deref())
    }

    fn tolerance(&self) -> Tolerance {
        Tolerance {
            atol: self.atol,
            rtol: self.rtol,
            min_cosine: self.min_cosine,
        }
    }
}

/// Open a trace for a verb: its reads of broadcast views may expand at most
/// 4 × the file's value limit of values beyond their bytes (SPEC.md §9), so
/// that a small file cannot make a verb work for minutes.
fn open(path: &PathBuf) -> Result<Trace> {
    let t = Trace::open(path)?;
    t.set_broadcast_budget(trace_reader::values::value_limit(t.file_len()).saturating_mul(4));
    Ok(t)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Inspect {
            file,
            ggml,
            tree,
            stats,
            json,
            filters,
        } => {
            let opts = inspect::InspectOptions {
                ggml,
                tree,
                stats,
                filter: filters.build()?,
            };
            if is_sharded(&file) {
                let shards = Shards::open(&file)?;
                if json {
                    let all: Vec<serde_json::Value> = shards
                        .shards()
                        .iter()
                        .map(|s| -> Result<serde_json::Value> {
                            Ok(serde_json::json!({
                                "rank": s.rank,
                                "file": s.trace.path().display().to_string(),
                                "inspect": serde_json::from_str::<serde_json::Value>(&inspect::inspect_json(&s.trace, &opts)?)?,
                            }))
                        })
                        .collect::<Result<_>>()?;
                    outln!("{}", serde_json::to_string_pretty(&all)?);
                } else {
                    out!("{}", shards_summary(&shards));
                    for s in shards.shards() {
                        outln!("\n== rank {}: {} ==", s.rank, s.trace.path().display());
                        out!("{}", inspect::inspect_text(&s.trace, &opts)?);
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let trace = open(&file)?;
            if json {
                outln!("{}", inspect::inspect_json(&trace, &opts)?);
            } else {
                out!("{}", inspect::inspect_text(&trace, &opts)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show {
            file,
            name,
            slice,
            as_dtype,
            full,
            raw,
        } => {
            let trace = open(&file)?;
            if raw {
                out!("{}", show::show_raw(&trace, &name, full)?);
                return Ok(ExitCode::SUCCESS);
            }
            let as_dtype = match as_dtype {
                Some(d) => match DType::from_name(&d) {
                    Some(x @ (DType::F32 | DType::F16 | DType::BF16 | DType::F64)) => Some(x),
                    _ => bail!("--as {d}: choose f32, f16, bf16 or f64"),
                },
                None => None,
            };
            out!(
                "{}",
                show::show(&trace, &name, slice.as_deref(), as_dtype, full)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff {
            a,
            b,
            pairing,
            all,
            explain_pairing,
            json,
            parquet,
        } => {
            let (mapping, tol) = (pairing.mapping()?, pairing.tolerance());
            if is_sharded(&a) || is_sharded(&b) {
                if parquet.is_some() {
                    bail!("--parquet compares one trace with one trace; for shards, diff them rank by rank");
                }
                return diff_shards(&a, &b, &mapping, &tol, all, json);
            }
            let (ta, tb) = (open(&a)?, open(&b)?);
            let bar = output::progress(ta.len() as u64, true, "comparing");
            let report = diff(&ta, &tb, &mapping, &tol, |done, _| {
                bar.set_position(done as u64)
            })?;
            bar.finish_and_clear();
            if let Some(out) = &parquet {
                write_diff_parquet(&ta, &tb, &report, out)?;
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}", diffcmd::diff_text(&ta, &tb, &report, all)?);
                if explain_pairing {
                    out!("{}", diffcmd::explain_pairing(&report)?);
                }
            }
            Ok(if report.agrees() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Report {
            a,
            b,
            output,
            pairing,
        } => {
            let (mapping, tol) = (pairing.mapping()?, pairing.tolerance());
            let (ta, tb) = (open(&a)?, open(&b)?);

            let bar = output::progress(ta.len() as u64, true, "comparing");
            let report = diff(&ta, &tb, &mapping, &tol, |done, _| {
                bar.set_position(done as u64)
            })?;
            bar.finish_and_clear();
            let page = trace_reader::report::html(&ta, &tb, &report)?;
            std::fs::write(&output, page).with_context(|| format!("{}", output.display()))?;
            outln!(
                "{}: {} pairs, {}",
                output.display(),
                report.pairs.len(),
                match report.first_divergence.and_then(|i| report.pairs.get(i)) {
                    Some(p) if p.a.name == p.b.name => format!("first divergence {}", p.a.name),
                    Some(p) => format!("first divergence {} (A) = {} (B)", p.a.name, p.b.name),
                    None if report.pairs.is_empty() => {
                        "nothing compared: no tensor of A pairs with one of B".to_string()
                    }
                    None => "the runs agree".to_string(),
                }
            );
            Ok(if report.agrees() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Verify { file } if is_sharded(&file) => {
            let shards = Shards::open(&file)?;
            let mut bad = 0;
            for s in shards.shards() {
                let rep = s.trace.verify();
                for f in &rep.faults {
                    outln!("FAULT rank {}: {f}", s.rank);
                }
                bad += usize::from(!rep.is_ok());
                outln!(
                    "rank {} {}: {} records, {} tensors, {} lineages replayed: {}",
                    s.rank,
                    s.trace.path().display(),
                    rep.records,
                    rep.tensors,
                    rep.lineages_replayed,
                    if rep.is_ok() {
                        "OK".to_string()
                    } else {
                        format!("{} faults", rep.faults.len())
                    }
                );
            }
            for w in shards.warnings() {
                outln!("WARNING {w}");
            }
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Verify { file } => {
            let trace = open(&file)?;
            let rep = trace.verify();
            for f in &rep.faults {
                outln!("FAULT {f}");
            }
            if rep.values_unchecked > 0 {
                outln!(
                    "note: {} value checks left out: past verify's budget of values for a file this size (SPEC.md §9)",
                    rep.values_unchecked
                );
            }
            outln!(
                "{}: {} records, {} bytes checksummed, {} tensors, {} lineages replayed, {} value checksums: {}",
                file.display(),
                rep.records,
                rep.bytes,
                rep.tensors,
                rep.lineages_replayed,
                rep.value_checksums,
                if rep.is_ok() { "OK".to_string() } else { format!("{} faults", rep.faults.len()) }
            );
            Ok(if rep.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Recover {
            input,
            output,
            json,
        } => {
            let sum = recover::recover(&input, &output)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&sum)?);
            } else {
                outln!(
                    "wrote {}: {} records, {} bytes",
                    output.display(),
                    sum.records,
                    sum.bytes_written
                );
                match &sum.stopped_at {
                    Some((offset, why)) => {
                        outln!("stopped at byte {offset}: {why}; {} bytes of the input were not carried over", sum.dropped_tail_bytes)
                    }
                    None => outln!("every record of the input was carried over"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            file,
            to,
            out,
            values_max,
            filters,
            json,
        } => {
            if is_sharded(&file) {
                if !to.eq_ignore_ascii_case("parquet") {
                    bail!(
                        "--to {to}: a sharded trace exports to parquet (one table, a rank column)"
                    );
                }
                let shards = Shards::open(&file)?;
                let filter = filters.build()?;
                let ids: Vec<Vec<u64>> = shards
                    .shards()
                    .iter()
                    .map(|s| s.trace.filter(&filter))
                    .collect::<Result<_, _>>()?;
                let parts: Vec<(Option<i64>, &Trace, &[u64])> = shards
                    .shards()
                    .iter()
                    .zip(&ids)
                    .map(|(s, i)| (Some(s.rank), &s.trace, i.as_slice()))
                    .collect();
                return export_parquet_shards(&parts, &out, values_max, json);
            }
            let trace = open(&file)?;
            let filter = filters.build()?;
            let ids = trace.filter(&filter)?;
            let format = match to.to_ascii_lowercase().as_str() {
                "safetensors" => export::ExportFormat::Safetensors,
                "npz" => export::ExportFormat::Npz,
                "parquet" => return export_parquet(&trace, &ids, &out, values_max, json),
                other => bail!("--to {other}: choose safetensors, npz or parquet"),
            };
            if values_max.is_some() {
                bail!("--values-max goes with --to parquet");
            }
            let sum = export::export(&trace, format, &out, Some(&ids))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&sum)?);
            } else {
                outln!(
                    "wrote {}: {} tensors, {} bytes",
                    out.display(),
                    sum.exported.len(),
                    sum.bytes
                );
                for (name, why) in &sum.converted {
                    outln!("  converted {name}: {why}");
                }
                for (name, why) in &sum.skipped {
                    outln!("  skipped {name}: {why}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { file, out } => {
            let is_gguf = std::fs::File::open(&file)
                .and_then(|mut f| {
                    let mut magic = [0u8; 4];
                    std::io::Read::read_exact(&mut f, &mut magic).map(|()| magic)
                })
                .is_ok_and(|m| &m == trace_reader::gguf::GGUF_MAGIC);
            let ext = out
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            let sum = match (is_gguf, ext.as_str()) {
                (true, "safetensors" | "npz") => {
                    let format = if ext == "npz" {
                        export::ExportFormat::Npz
                    } else {
                        export::ExportFormat::Safetensors
                    };
                    let trace = open(&file)?;
                    let s = export::export(&trace, format, &out, None)?;
                    for (name, why) in &s.skipped {
                        eprintln!("skipped `{name}`: {why}");
                    }
                    export::ImportSummary {
                        tensors: s.exported.len() as u64,
                        bytes: s.bytes,
                    }
                }
                (true, _) => export::import_gguf(&file, &out)?,
                (false, _) => export::import_safetensors(&file, &out)?,
            };
            outln!(
                "wrote {}: {} tensors, {} bytes",
                out.display(),
                sum.tensors,
                sum.bytes
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { out } => {
            for (path, n) in
                demo::write_demo(&out).with_context(|| format!("writing {}", out.display()))?
            {
                outln!("wrote {} ({n} records)", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The mapping `diff` and `report` pair tensors by.
fn mapping_from(
    rename: &[String],
    map: Option<&std::path::Path>,
    preset: Option<&str>,
) -> Result<Mapping> {
    let mut mapping = Mapping::none();
    for rule in rename {
        mapping
            .push_rule(rule)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("--rename {rule}"))?;
    }
    if let Some(m) = map {
        let text = std::fs::read_to_string(m).with_context(|| format!("{}", m.display()))?;
        mapping.extend(
            Mapping::from_map(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}", m.display()))?,
        );
    }
    if let Some(p) = preset {
        mapping.extend(
            Mapping::preset(p)
                .with_context(|| format!("--preset {p}: the presets are: {}", preset_names()))?,
        );
    }
    Ok(mapping)
}

fn export_parquet(
    trace: &Trace,
    ids: &[u64],
    out: &std::path::Path,
    values_max: Option<u64>,
    json: bool,
) -> Result<ExitCode> {
    export_parquet_shards(&[(None, trace, ids)], out, values_max, json)
}

#[cfg(feature = "parquet")]
fn export_parquet_shards(
    parts: &[(Option<i64>, &Trace, &[u64])],
    out: &std::path::Path,
    values_max: Option<u64>,
    json: bool,
) -> Result<ExitCode> {
    let sum = parquet_out::export_shards(parts, out, values_max)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&sum)?);
    } else {
        outln!("{}: {} tensors", sum.tensors_file, sum.tensors);
        if let Some(v) = &sum.values_file {
            outln!("{v}: {} values", sum.values);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "parquet"))]
fn export_parquet_shards(
    _parts: &[(Option<i64>, &Trace, &[u64])],
    _out: &std::path::Path,
    _values_max: Option<u64>,
    _json: bool,
) -> Result<ExitCode> {
    bail!(NO_PARQUET)
}

#[cfg(feature = "parquet")]
fn write_diff_parquet(
    a: &Trace,
    b: &Trace,
    r: &trace_reader::compare::DiffReport,
    out: &std::path::Path,
) -> Result<()> {
    parquet_out::export_diff(a, b, r, out)
}

#[cfg(not(feature = "parquet"))]
fn write_diff_parquet(
    _a: &Trace,
    _b: &Trace,
    _r: &trace_reader::compare::DiffReport,
    _out: &std::path::Path,
) -> Result<()> {
    bail!(NO_PARQUET)
}

#[cfg(not(feature = "parquet"))]
const NO_PARQUET: &str =
    "this tracedump was built without Parquet: cargo install/build trace-reader --features parquet";

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
                .map(inspect::value_json)
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

/// `diff` of two sharded runs, rank by rank.
fn diff_shards(
    a: &std::path::Path,
    b: &std::path::Path,
    mapping: &Mapping,
    tol: &Tolerance,
    all: bool,
    json: bool,
) -> Result<ExitCode> {
    let (sa, sb) = (Shards::open(a)?, Shards::open(b)?);
    let per_rank = diff_by_rank(&sa, &sb, mapping, tol)?;
    let agrees = per_rank
        .iter()
        .all(|r| r.report.as_ref().is_some_and(|x| x.agrees()));
    if json {
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
    } else {
        outln!("A {} vs B {}, rank by rank", a.display(), b.display());
        for r in &per_rank {
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
                        .and_then(|i| rep.pairs.get(i))
                        .map(|p| p.key.clone())
                        .unwrap_or_else(|| "none".into())
                ),
            }
        }
        for r in &per_rank {
            if let (Some(rep), (Some(fa), Some(fb))) = (&r.report, &r.files) {
                if !rep.agrees() || all {
                    outln!("\n== rank {} ==", r.rank);
                    let (ta, tb) = (open(fa)?, open(fb)?);
                    out!("{}", diffcmd::diff_text(&ta, &tb, rep, all)?);
                }
            }
        }
    }
    Ok(if agrees {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
