//! `tracedump show`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use trace_reader::DType;

use crate::args::open_run;

#[derive(clap::Args)]
pub struct Args {
    /// The trace file (or a directory or glob of shards: `rank1/name` where names collide).
    file: PathBuf,
    /// Tensor name: its first occurrence; `name#k` for the k-th (from 0).
    name: String,
    /// A numpy slice, e.g. `0, :, 1:8:2` or `-1, ::-1` (no `...`; trailing dimensions may be left out).
    #[arg(long, value_name = "SLICE")]
    slice: Option<String>,
    /// Convert the values to this dtype before printing (f32, f16, bf16, f64).
    #[arg(long = "as", value_name = "DTYPE")]
    as_dtype: Option<String>,
    /// Print every value, not the first and last three of each dimension longer than six.
    #[arg(long)]
    full: bool,
    /// Print the stored bytes the view spans in hex instead of values
    /// (for block types the raw ggml blocks, one per line).
    #[arg(long, conflicts_with_all = ["slice", "as_dtype"])]
    raw: bool,
    /// Print JSON for scripts: every value (as --full), see below.
    #[arg(long, conflicts_with_all = ["raw", "full"])]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let run = open_run(&args.file)?;
    // in a sharded run, `rank1/name` names the tensor of one rank; a name
    // without a rank is the first rank's that has it
    let rank_name = args
        .name
        .strip_prefix("rank")
        .and_then(|x| x.split_once('/'));
    let (trace, name) = match rank_name.and_then(|(r, n)| Some((r.parse::<i64>().ok()?, n))) {
        Some((r, n)) if run.is_sharded() => match run.shards().iter().find(|s| s.rank == r) {
            Some(s) => (&s.trace, n),
            None => bail!("{}: no rank {r}", args.file.display()),
        },
        _ => {
            let shards = run.shards();
            let s = shards
                .iter()
                .find(|s| s.trace.resolve(&args.name).is_ok())
                .unwrap_or(&shards[0]);
            (&s.trace, args.name.as_str())
        }
    };
    if args.raw {
        out!("{}", trace_tools::show::show_raw(trace, name, args.full)?);
        return Ok(ExitCode::SUCCESS);
    }
    let as_dtype = match &args.as_dtype {
        Some(d) => match DType::from_name(d) {
            Some(x @ (DType::F32 | DType::F16 | DType::BF16 | DType::F64)) => Some(x),
            _ => bail!("--as {d}: choose f32, f16, bf16 or f64"),
        },
        None => None,
    };
    if args.json {
        let shown = trace_tools::show::shown(trace, name, args.slice.as_deref(), as_dtype)?;
        outln!("{}", serde_json::to_string(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{}",
        trace_tools::show::show(trace, name, args.slice.as_deref(), as_dtype, args.full)?
    );
    Ok(ExitCode::SUCCESS)
}
