//! `tracedump-bench`: writer throughput, per-tensor overhead and open time
//! against plain file I/O, in one run. See README.md for what each row measures.

use std::error::Error;
use std::fs::{self, File};
use std::hint::black_box;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod dequant;

use serde::Serialize;
use trace_reader::Trace;
use trace_writer::{DType, Metadata, Mode, TensorMeta, WhenFull, Writer, WriterOptions};

pub(crate) type Res<T> = Result<T, Box<dyn Error>>;

const MIB: usize = 1 << 20;
const LARGE_COUNT: usize = 256;
const LARGE_BYTES: usize = 4 * MIB;
const SMALL_COUNT: usize = 20_000;
const OPEN_COUNT: usize = 100_000;
const SMALL_BYTES: usize = 256;
const BACKGROUND: Mode = Mode::Background {
    budget_bytes: 256 * MIB as u64,
    when_full: WhenFull::Block,
};
const USAGE: &str = "usage: tracedump-bench [--scale F] [--repeat N] [--json PATH]
  --scale F   fraction of every tensor count, in (0, 1] (default 1: the full 1 GiB run)
  --repeat N  runs per figure; best of N is kept, medians of 2N+1 for open (default 3)
  --json PATH where to write the results (default bench/results.json)";

struct Args {
    scale: f64,
    repeat: usize,
    json: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        scale: 1.0,
        repeat: 3,
        json: Path::new(env!("CARGO_MANIFEST_DIR")).join("results.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--scale" => args.scale = value()?.parse().map_err(|e| format!("--scale: {e}"))?,
            "--repeat" => args.repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--json" => args.json = value()?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    if !(args.scale > 0.0 && args.scale <= 1.0) || args.repeat == 0 {
        return Err(format!(
            "--scale must be in (0, 1] and --repeat at least 1\n{USAGE}"
        ));
    }
    Ok(args)
}

#[derive(Serialize)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) unit: &'static str,
    pub(crate) ours: f64,
    pub(crate) baseline: Option<f64>,
    /// ours / baseline
    pub(crate) ratio: Option<f64>,
    pub(crate) goal: Option<String>,
    pub(crate) pass: Option<bool>,
}

impl Row {
    /// A throughput row: the goal is on the ratio to the plain write.
    fn throughput(name: &str, bytes: usize, ours: Duration, plain: Duration) -> Row {
        let (ours, base) = (gbps(bytes, ours), gbps(bytes, plain));
        let ratio = ours / base;
        Row {
            name: name.into(),
            unit: "GB/s",
            ours,
            baseline: Some(base),
            ratio: Some(ratio),
            goal: Some("ratio >= 0.90".into()),
            pass: Some(ratio >= 0.9),
        }
    }

    /// A time row (lower is better), with an optional upper bound on `ours`.
    fn time(
        name: &str,
        unit: &'static str,
        ours: f64,
        baseline: Option<f64>,
        max: Option<f64>,
    ) -> Row {
        Row {
            name: name.into(),
            unit,
            ours,
            baseline,
            ratio: baseline.map(|b| ours / b),
            goal: max.map(|m| format!("<= {m} {unit}")),
            pass: max.map(|m| ours <= m),
        }
    }
}

#[derive(Serialize)]
struct Machine {
    nproc: usize,
    mem_total_kib: u64,
    cpu: String,
}

#[derive(Serialize)]
struct Report {
    date: String,
    machine: Machine,
    scale: f64,
    repeat: usize,
    rows: Vec<Row>,
}

/// Removes the scratch directory on every exit path, panics included.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    if let Err(e) = run(&args) {
        eprintln!("tracedump-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Res<()> {
    let scaled = |n: usize| ((n as f64 * args.scale).round() as usize).max(1);
    let (n_large, n_small, n_open) = (scaled(LARGE_COUNT), scaled(SMALL_COUNT), scaled(OPEN_COUNT));
    let machine = machine();
    let date = utc_now();
    println!("tracedump-bench  {date}");
    println!(
        "machine: {} CPUs ({}), {:.1} GiB RAM; scale {}, best of {} (open: median of {})",
        machine.nproc,
        machine.cpu,
        machine.mem_total_kib as f64 / MIB as f64,
        args.scale,
        args.repeat,
        2 * args.repeat + 1
    );

    let dir = Scratch(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"));
    let _ = fs::remove_dir_all(&dir.0);
    fs::create_dir_all(&dir.0)?;
    let data = pattern((n_large * LARGE_BYTES).max(n_open * SMALL_BYTES));
    let mut rows = Vec::new();

    // 1. Large tensors: page-cache throughput (no fsync).
    let large = &data[..n_large * LARGE_BYTES];
    let names = tensor_names(n_large);
    let [plain, sync, bg] = best_of_three(args.repeat, &dir.0, &names, large, LARGE_BYTES, false)?;
    let label = format!("{n_large} x 4 MiB f32");
    rows.push(Row::throughput(
        &format!("write {label}, sync"),
        large.len(),
        sync,
        plain,
    ));
    rows.push(Row::throughput(
        &format!("write {label}, background"),
        large.len(),
        bg,
        plain,
    ));

    // 2. Small tensors: per-tensor cost.
    let small = &data[..n_small * SMALL_BYTES];
    let names = tensor_names(n_small);
    let [plain, sync, bg] = best_of_three(args.repeat, &dir.0, &names, small, SMALL_BYTES, true)?;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n_small as f64;
    rows.push(Row::time(
        &format!("{n_small} x 256 B, sync, per tensor"),
        "µs",
        per(sync),
        Some(per(plain)),
        Some(2.0),
    ));
    rows.push(Row::time(
        &format!("{n_small} x 256 B, background, per tensor"),
        "µs",
        per(bg),
        Some(per(plain)),
        Some(2.0),
    ));

    // 3. Opening a trace of many small tensors (file in the page cache).
    let path = dir.0.join("open.tdump");
    let names = tensor_names(n_open);
    write_trace(
        &path,
        Mode::Sync,
        &names,
        &data[..n_open * SMALL_BYTES],
        SMALL_BYTES,
    )?;
    let (footer_offset, file_len) = {
        let t = Trace::open(&path)?;
        check(&t, n_open)?;
        (
            t.footer_offset().ok_or("the trace has no footer")?,
            t.file_len(),
        )
    };
    let (mut open, mut listed, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 * args.repeat + 1 {
        floor.push(read_tail(&path, footer_offset, file_len)?);
        let start = Instant::now();
        let t = Trace::open(&path)?;
        open.push(start.elapsed());
        drop(t);
        let start = Instant::now();
        let t = Trace::open(&path)?;
        let chars: usize = t
            .tensor_ids()
            .iter()
            .map(|&id| t.record_name(id).map_or(0, str::len))
            .sum();
        black_box(chars);
        listed.push(start.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (open, listed, floor) = (ms(median(open)), ms(median(listed)), ms(median(floor)));
    rows.push(Row::time(
        &format!("open {n_open}-tensor trace"),
        "ms",
        open,
        Some(floor),
        Some(50.0),
    ));
    rows.push(Row::time(
        &format!("open {n_open}-tensor trace + list names"),
        "ms",
        listed,
        Some(floor),
        None,
    ));

    let (mut first, mut warm) = (Duration::MAX, Duration::MAX);
    for _ in 0..args.repeat {
        let t = Trace::open(&path)?;
        first = first.min(view_all(&t)?);
        warm = warm.min(view_all(&t)?);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n_open as f64;
    rows.push(Row::time(
        "first view(id) + as_slice, per tensor",
        "µs",
        per(first),
        Some(per(warm)),
        None,
    ));

    // 4. Dequantization per ggml type against gguf-py's numpy.
    rows.extend(dequant::rows(
        &dir.0,
        scaled(1 << 22).next_multiple_of(256),
        args.repeat,
    )?);

    print_table(&rows);
    let report = Report {
        date,
        machine,
        scale: args.scale,
        repeat: args.repeat,
        rows,
    };
    if let Some(parent) = args.json.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nresults written to {}", args.json.display());
    Ok(())
}

/// Best-of-`repeat` times of [plain, sync writer, background writer] over the
/// same tensors, interleaved so that drifts in machine load hit all three.
fn best_of_three(
    repeat: usize,
    dir: &Path,
    names: &[String],
    data: &[u8],
    tensor: usize,
    buffered: bool,
) -> Res<[Duration; 3]> {
    let mut best = [Duration::MAX; 3];
    for round in 0..repeat {
        let path = dir.join("plain.bin");
        best[0] = best[0].min(write_plain(&path, data, tensor, buffered)?);
        fs::remove_file(&path)?;
        for (k, mode) in [(1, Mode::Sync), (2, BACKGROUND)] {
            let path = dir.join("bench.tdump");
            best[k] = best[k].min(write_trace(&path, mode, names, data, tensor)?);
            if round == 0 {
                let t = Trace::open(&path)?;
                check(&t, names.len())?;
                let last = t.view(*t.tensor_ids().last().ok_or("empty trace")?)?;
                if last.contiguous_bytes() != Some(&data[data.len() - tensor..]) {
                    return Err("the last tensor read back differs from what was written".into());
                }
            }
            fs::remove_file(&path)?;
        }
    }
    Ok(best)
}

/// Plain sequential write of `data` in `chunk`-byte pieces, no fsync.
/// `buffered` puts a 1 MiB `BufWriter` (the writer's own buffer size) in front.
fn write_plain(path: &Path, data: &[u8], chunk: usize, buffered: bool) -> Res<Duration> {
    fn all(w: &mut impl Write, data: &[u8], chunk: usize) -> std::io::Result<()> {
        data.chunks_exact(chunk).try_for_each(|c| w.write_all(c))?;
        w.flush()
    }
    let start = Instant::now();
    let file = File::create(path)?;
    if buffered {
        all(&mut BufWriter::with_capacity(MIB, file), data, chunk)?;
    } else {
        all(&mut &file, data, chunk)?;
    }
    Ok(start.elapsed())
}

/// Create a trace, add every tensor (1-D f32), finish; no fsync.
fn write_trace(
    path: &Path,
    mode: Mode,
    names: &[String],
    data: &[u8],
    tensor: usize,
) -> Res<Duration> {
    let shape = [(tensor / 4) as u64];
    let start = Instant::now();
    let w = Writer::with_options(
        path,
        Metadata::new(),
        WriterOptions {
            mode,
            ..Default::default()
        },
    )?;
    for (i, (name, bytes)) in names.iter().zip(data.chunks_exact(tensor)).enumerate() {
        let meta = TensorMeta::new()
            .layer((i % 32) as i64)
            .step((i / 32) as i64);
        w.add_tensor(name, DType::F32, &shape, bytes, meta)?
            .ok_or("a tensor was not recorded")?;
    }
    let summary = w.finish()?;
    let elapsed = start.elapsed();
    if summary.dropped != 0 {
        return Err("the writer dropped tensors".into());
    }
    Ok(elapsed)
}

fn check(t: &Trace, expected: usize) -> Res<()> {
    if !t.is_finished() || t.len() != expected {
        return Err(format!(
            "trace {} has {} tensors, expected {expected}",
            t.path().display(),
            t.len()
        )
        .into());
    }
    Ok(())
}

/// The I/O floor of an open: read the footer index and trailer, no decoding.
fn read_tail(path: &Path, footer_offset: u64, file_len: u64) -> Res<Duration> {
    let start = Instant::now();
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(footer_offset))?;
    let mut buf = Vec::with_capacity((file_len - footer_offset) as usize);
    f.read_to_end(&mut buf)?;
    black_box(&buf);
    Ok(start.elapsed())
}

/// `view(id)` and `as_slice::<f32>()` of every tensor (the values are not read).
fn view_all(t: &Trace) -> Res<Duration> {
    let start = Instant::now();
    let mut elems = 0;
    for &id in t.tensor_ids() {
        elems += t.view(id)?.as_slice::<f32>()?.len();
    }
    black_box(elems);
    Ok(start.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Names shaped like an engine's (`blk.7.attn_q-123`), all distinct.
fn tensor_names(n: usize) -> Vec<String> {
    const ROLES: [&str; 4] = ["attn_q", "attn_k", "attn_v", "ffn_out"];
    (0..n)
        .map(|i| format!("blk.{}.{}-{i}", i % 32, ROLES[i / 32 % 4]))
        .collect()
}

/// Cheap deterministic f32 data (not zeros, not constant).
fn pattern(bytes: usize) -> Vec<u8> {
    let mut v = vec![0u8; bytes];
    for (i, c) in v.chunks_exact_mut(4).enumerate() {
        c.copy_from_slice(&((i % 4093) as f32 * 0.25 - 511.0).to_le_bytes());
    }
    v
}

fn print_table(rows: &[Row]) {
    let num = |v: f64, unit: &str| match unit {
        "GB/s" | "ms" => format!("{v:.2} {unit}"),
        _ => format!("{v:.3} {unit}"),
    };
    println!(
        "\n{:<50} {:>12} {:>12} {:>7}  {:<14} result",
        "benchmark", "ours", "baseline", "ratio", "goal"
    );
    for r in rows {
        println!(
            "{:<50} {:>12} {:>12} {:>7}  {:<14} {}",
            r.name,
            num(r.ours, r.unit),
            r.baseline.map_or("-".into(), |b| num(b, r.unit)),
            r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            r.goal.as_deref().unwrap_or("-"),
            r.pass.map_or("-", |p| if p { "PASS" } else { "MISS" }),
        );
    }
}

fn machine() -> Machine {
    let read = |p| fs::read_to_string(p).unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let meminfo = read("/proc/meminfo");
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total_kib: field(&meminfo, "MemTotal")
            .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0),
        cpu: field(&read("/proc/cpuinfo"), "model name").unwrap_or_else(|| "unknown CPU".into()),
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC` (days-to-civil, H. Hinnant).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (z, rem) = ((secs / 86_400) as i64 + 719_468, secs % 86_400);
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
