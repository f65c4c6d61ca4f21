//! The child writer of the crash-safety and disk-full tests
//! (`tests/tests/crash_safety.rs`, `tests/tests/disk_full.rs`).
//!
//! ```text
//! crash_writer kill MODE SEED COUNT MAX_BYTES TRACE LOG
//! crash_writer fill MODE SEED COUNT MAX_BYTES TRACE COPY_TO
//! crash_writer footer MODE SEED COUNT MAX_BYTES TRACE COPY_TO
//! ```
//!
//! `kill` records the plan (`tracedump_tests::crash::Plan`) into TRACE and
//! appends to LOG, one write per line, `added ID` after each `add_*`
//! returns, `flushed ID` after each `flush()` returns (every record up to
//! ID is then in the operating system's hands) and `finished N` after
//! `finish()`. It prints `ready` on stdout once the writer exists and every
//! payload is generated, so a kill lands while it writes. The test kills it.
//!
//! `fill` records the plan until the writer reports an error (on a small
//! filesystem), then tries one more add, a flush and `finish()`, prints
//! what each returned as tab-separated lines on stdout, and copies TRACE to
//! COPY_TO (the filesystem it is on may vanish with this process).
//!
//! `footer` records and flushes the whole plan, fills the rest of the
//! filesystem with another file, then calls `finish()`, whose footer no
//! longer fits; it prints and copies as `fill` does.
//!
//! MODE is `sync` or `background` (a 4 MiB queue that blocks when full).

#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::process::ExitCode;

use trace_writer::{DType, Metadata, Mode, WhenFull, Writer, WriterError, WriterOptions};
use tracedump_tests::crash::Plan;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = match args.first().map(String::as_str) {
        Some("kill") if args.len() == 7 => kill(&args[1..]),
        Some("fill") if args.len() == 7 => fill(&args[1..]),
        Some("footer") if args.len() == 7 => footer(&args[1..]),
        _ => Err(
            "usage: crash_writer kill|fill|footer MODE SEED COUNT MAX_BYTES TRACE LOG|COPY_TO"
                .into(),
        ),
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash_writer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The mode, plan and trace path of the common arguments.
fn setup(args: &[String]) -> Result<(WriterOptions, Plan), String> {
    let mode = match args[0].as_str() {
        "sync" => Mode::Sync,
        "background" => Mode::Background {
            budget_bytes: 4 << 20,
            when_full: WhenFull::Block,
        },
        m => return Err(format!("unknown mode `{m}`")),
    };
    let num = |s: &String| s.parse::<u64>().map_err(|e| format!("`{s}`: {e}"));
    let plan = Plan::new(
        num(&args[1])?,
        num(&args[2])? as usize,
        num(&args[3])? as usize,
    );
    let options = WriterOptions {
        mode,
        ..WriterOptions::default()
    };
    Ok((options, plan))
}

fn kill(args: &[String]) -> Result<(), String> {
    let (options, plan) = setup(args)?;
    let (trace, log) = (&args[4], &args[5]);
    let payloads: Vec<Vec<u8>> = (0..plan.items.len()).map(|i| plan.payload(i)).collect();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{log}: {e}"))?;
    // one write(2) per line: a kill never leaves half a line
    let mut line = |text: String| log.write_all(text.as_bytes()).map_err(|e| e.to_string());
    let meta = Metadata::new().with("seed", plan.seed);
    let w = Writer::with_options(trace, meta, options).map_err(|e| e.to_string())?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut ids = Vec::with_capacity(plan.items.len());
    for (i, item) in plan.items.iter().enumerate() {
        let id = plan
            .record(&w, i, &payloads[i], &ids)
            .map_err(|e| e.to_string())?
            .ok_or("a record was filtered or dropped")?;
        ids.push(id);
        line(format!("added {id}\n"))?;
        if item.flush_after {
            w.flush().map_err(|e| e.to_string())?;
            line(format!("flushed {id}\n"))?;
        }
    }
    let summary = w.finish().map_err(|e| e.to_string())?;
    line(format!("finished {}\n", summary.records))
}

/// `Io\t<os error>\t<message>`, `Failed\t-\t<message>` or `Other\t-\t<message>`.
fn describe(e: &WriterError) -> String {
    let (variant, os) = match e {
        WriterError::Io { error, .. } => (
            "Io",
            error.raw_os_error().map_or("-".into(), |c| c.to_string()),
        ),
        WriterError::Failed { .. } => ("Failed", "-".into()),
        _ => ("Other", "-".into()),
    };
    format!("{variant}\t{os}\t{e}")
}

fn fill(args: &[String]) -> Result<(), String> {
    let (options, plan) = setup(args)?;
    let (trace, copy_to) = (&args[4], &args[5]);
    println!("start");
    let w = Writer::with_options(trace, Metadata::new().with("seed", plan.seed), options)
        .map_err(|e| format!("create: {e}"))?;
    let mut ids = Vec::new();
    let mut failed = false;
    for (i, item) in plan.items.iter().enumerate() {
        match plan.record(&w, i, &plan.payload(i), &ids) {
            Ok(Some(id)) => {
                ids.push(id);
                println!("added\t{id}");
            }
            Ok(None) => return Err("a record was filtered or dropped".into()),
            Err(e) => {
                println!("error\tadd\t{}", describe(&e));
                failed = true;
                break;
            }
        }
        if item.flush_after {
            match w.flush() {
                Ok(()) => println!("flushed\t{}", ids.last().copied().unwrap_or(0)),
                Err(e) => {
                    println!("error\tflush\t{}", describe(&e));
                    failed = true;
                    break;
                }
            }
        }
    }
    if failed {
        let meta = trace_writer::TensorMeta::new();
        match w.add_tensor("after-the-error", DType::U8, &[16], &[7; 16], meta) {
            Ok(id) => println!("again\tadd\tOk\t-\t{id:?}"),
            Err(e) => println!("again\tadd\t{}", describe(&e)),
        }
        match w.flush() {
            Ok(()) => println!("again\tflush\tOk\t-\t-"),
            Err(e) => println!("again\tflush\t{}", describe(&e)),
        }
    }
    finish_and_copy(w, trace, copy_to)
}

fn finish_and_copy(w: Writer, trace: &str, copy_to: &str) -> Result<(), String> {
    match w.finish() {
        Ok(s) => println!("finish\tOk\t-\t{} records, {} bytes", s.records, s.bytes),
        Err(e) => println!("finish\t{}", describe(&e)),
    }
    std::fs::copy(trace, copy_to).map_err(|e| format!("copying {trace} to {copy_to}: {e}"))?;
    println!("copied");
    Ok(())
}

fn footer(args: &[String]) -> Result<(), String> {
    let (options, plan) = setup(args)?;
    let (trace, copy_to) = (&args[4], &args[5]);
    println!("start");
    let w = Writer::with_options(trace, Metadata::new().with("seed", plan.seed), options)
        .map_err(|e| format!("create: {e}"))?;
    let mut ids = Vec::new();
    for i in 0..plan.items.len() {
        let id = plan
            .record(&w, i, &plan.payload(i), &ids)
            .map_err(|e| format!("add: {e}"))?
            .ok_or("a record was filtered or dropped")?;
        ids.push(id);
        println!("added\t{id}");
    }
    w.flush().map_err(|e| format!("flush: {e}"))?;
    println!("flushed\t{}", ids.last().copied().unwrap_or(0));
    // take every free block
    let filler = std::path::Path::new(trace).with_file_name("filler");
    let mut f = std::fs::File::create(&filler).map_err(|e| e.to_string())?;
    for chunk in [64 << 10, 4 << 10, 512, 64] {
        while f.write_all(&vec![0; chunk]).is_ok() {}
    }
    println!("filled");
    finish_and_copy(w, trace, copy_to)
}
