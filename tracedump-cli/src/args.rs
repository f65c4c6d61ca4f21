//! Arguments several verbs share, and how a verb opens what it is given.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use regex::Regex;
use trace_reader::{TensorFilter, Trace};
use trace_tools::compare::Tolerance;
use trace_tools::mapping::{preset_names, Mapping};
use trace_tools::shards::Shards;
use trace_tools::sniff::sniff;

/// Which tensors a verb looks at.
#[derive(clap::Args)]
pub struct Filters {
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
    pub fn build(&self) -> Result<TensorFilter> {
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

/// How `diff` and `report` pair and judge tensors.
#[derive(clap::Args, Debug)]
pub struct Pairing {
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
    /// The mapping: --rename rules first, then --map's, then the preset's.
    pub fn mapping(&self) -> Result<Mapping> {
        let mut mapping = Mapping::none();
        for rule in &self.rename {
            mapping
                .push_rule(rule)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--rename {rule}"))?;
        }
        if let Some(m) = &self.map {
            let text = std::fs::read_to_string(m).with_context(|| format!("{}", m.display()))?;
            mapping.extend(
                Mapping::from_map(&text)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("{}", m.display()))?,
            );
        }
        if let Some(p) = &self.preset {
            mapping.extend(
                Mapping::preset(p).with_context(|| {
                    format!("--preset {p}: the presets are: {}", preset_names())
                })?,
            );
        }
        Ok(mapping)
    }

    pub fn tolerance(&self) -> Tolerance {
        Tolerance {
            atol: self.atol,
            rtol: self.rtol,
            min_cosine: self.min_cosine,
        }
    }
}

/// A verb's reads of broadcast views may expand at most 4 × the file's
/// value limit of values beyond their bytes (SPEC.md §9), so that a small
/// file cannot make a verb work for minutes.
fn broadcast_budget(t: &Trace) -> u64 {
    trace_reader::values::value_limit(t.file_len()).saturating_mul(4)
}

/// A file that did not open as a trace: when its first bytes say it is
/// something else (safetensors, npz, a PyTorch checkpoint), say so and
/// what to do instead of the reader's "bad magic".
fn not_a_trace(path: &Path, e: impl Into<anyhow::Error>) -> anyhow::Error {
    match sniff(path).and_then(|k| k.hint(path)) {
        Some(hint) => anyhow::anyhow!(hint),
        None => e.into(),
    }
}

/// The one file a verb that cannot take shards (`recover`, `import`) is
/// given: a directory or glob is refused with the verb's name, not an OS
/// error from opening it.
pub fn one_file<'p>(path: &'p Path, verb: &str, what: &str) -> Result<&'p Path> {
    if trace_tools::shards::is_sharded(path) {
        let n = trace_tools::shards::shard_files(path).map_or(0, |f| f.len());
        bail!(
            "{}: {verb} takes {what}, not a directory or glob of shards ({n} shards here)",
            path.display()
        );
    }
    Ok(path)
}

/// Open one trace file for a verb.
pub fn open(path: &Path) -> Result<Trace> {
    let t = Trace::open(path).map_err(|e| not_a_trace(path, e))?;
    t.set_broadcast_budget(broadcast_budget(&t));
    Ok(t)
}

/// Open what a verb is given: a trace file (a run of one shard) or a
/// directory or glob of shards.
pub fn open_run(path: &Path) -> Result<Shards> {
    let run = Shards::open_any(path).map_err(|e| not_a_trace(path, e))?;
    for s in run.shards() {
        s.trace.set_broadcast_budget(broadcast_budget(&s.trace));
    }
    Ok(run)
}

/// The file a verb writes: `-o/--output FILE`, as every verb that writes a
/// file takes it. Verbs that took it positionally still do (`OUT`); both
/// may be given only when they name the same file.
#[derive(clap::Args)]
pub struct Output {
    /// The file to write (OUT, the positional form, says the same).
    #[arg(short, long, value_name = "FILE", required_unless_present = "out")]
    output: Option<PathBuf>,
    /// The file to write: the same as -o/--output.
    #[arg(value_name = "OUT")]
    out: Option<PathBuf>,
}

impl Output {
    /// The file to write.
    pub fn path(&self) -> Result<&Path> {
        match (&self.output, &self.out) {
            (Some(o), Some(p)) if o != p => bail!(
                "two output files: {} (-o) and {} (OUT); give one",
                o.display(),
                p.display()
            ),
            (Some(o), _) | (None, Some(o)) if o.is_dir() => bail!(
                "{}: the output is a directory; give a file name (e.g. {})",
                o.display(),
                o.join("out").display()
            ),
            (Some(o), _) | (None, Some(o)) => Ok(o),
            (None, None) => bail!("no output file: give -o FILE"),
        }
    }
}
