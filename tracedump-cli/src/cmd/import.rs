//! `tracedump import`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use trace_tools::export::{export, ExportFormat};
use trace_tools::import::{import_gguf, import_safetensors, ImportSummary};
use trace_tools::sniff::{sniff, Kind};

use crate::args::{one_file, open, Output};

#[derive(clap::Args)]
pub struct Args {
    /// The safetensors or GGUF file.
    file: PathBuf,
    /// The file to write: a trace (`.tdump`), or from GGUF also `.safetensors` / `.npz`.
    #[command(flatten)]
    output: Output,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (file, out) = (
        one_file(&args.file, "import", "one safetensors or GGUF file")?,
        args.output.path()?,
    );
    let kind = sniff(file);
    let is_gguf = kind == Some(Kind::Gguf);
    match kind {
        Some(Kind::Trace) => bail!(
            "{} is already a tracedump trace (to copy it clean: tracedump recover {} -o OUT)",
            file.display(),
            file.display()
        ),
        Some(k @ (Kind::Npz | Kind::Npy | Kind::PyTorch | Kind::Zip)) => bail!(
            "{} is {}: import converts safetensors and GGUF files (save the tensors with safetensors first)",
            file.display(),
            k.describe()
        ),
        _ => {}
    }
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !is_gguf && matches!(ext.as_str(), "safetensors" | "npz" | "parquet") {
        bail!(
            "{}: from safetensors, import writes a trace: name it OUT.tdump (export turns a trace into {ext})",
            out.display()
        );
    }
    let sum = match (is_gguf, ext.as_str()) {
        (true, "safetensors" | "npz") => {
            let format = if ext == "npz" {
                ExportFormat::Npz
            } else {
                ExportFormat::Safetensors
            };
            let s = export(&open(file)?, format, out, None)?;
            for (name, why) in &s.skipped {
                eprintln!("skipped `{name}`: {why}");
            }
            ImportSummary {
                tensors: s.exported.len() as u64,
                bytes: s.bytes,
            }
        }
        (true, _) => import_gguf(file, out)?,
        (false, _) => import_safetensors(file, out)?,
    };
    outln!(
        "wrote {}: {} tensors, {} bytes",
        out.display(),
        sum.tensors,
        sum.bytes
    );
    Ok(ExitCode::SUCCESS)
}
