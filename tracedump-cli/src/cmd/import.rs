//! `tracedump import`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use trace_tools::export::{export, ExportFormat};
use trace_tools::import::{import_gguf, import_safetensors, ImportSummary};

use crate::args::{open, Output};

#[derive(clap::Args)]
pub struct Args {
    /// The safetensors or GGUF file.
    file: PathBuf,
    /// The file to write: a trace (`.tdump`), or from GGUF also `.safetensors` / `.npz`.
    #[command(flatten)]
    output: Output,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (file, out) = (&args.file, args.output.path()?);
    let is_gguf = std::fs::File::open(file)
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
