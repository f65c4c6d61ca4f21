//! `tracedump-bench sweeps`: how cost grows with work. Three sweeps, each a
//! set of series of (x, median, [min, max]) points, written to
//! `bench/results-sweeps.json` for `bench/plot.py`:
//!
//! - tensor count (1k, 10k, 100k, 1M tensors of 64 B): `Trace::open`,
//!   `tracedump inspect --json`, `tracedump diff` of the trace against a
//!   copy with small noise, and Python `tracedump.open` + every tensor's
//!   `.numpy()`;
//! - tensor size, across the writer's paths (sync: records up to 64 KiB go
//!   through a mapped window, larger ones through `write()`, from 1 MiB on
//!   with the checksum on a second thread; background: payloads from 64 KiB
//!   on are staged in 1 MiB chunks): write throughput of the sync and the
//!   background writer against a plain buffered `write()`;
//! - recording threads (1, 2, 4, 8) adding concurrently to one `Writer`.
//!
//! Within every point the series run in a random order each round.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use trace_reader::Trace;
use trace_writer::{DType, Metadata, Mode, TensorMeta, WhenFull, Writer, WriterOptions};

use crate::write::{write_trace, DEFAULT_BUDGET};
use crate::{gbps, interleaved, pattern, progress, python, tensor_names, Res, Stat, MIB};

/// One point of a series.
#[derive(Serialize)]
struct Point {
    x: f64,
    median: f64,
    spread: [f64; 2],
    rounds: usize,
}

#[derive(Serialize)]
struct Series {
    label: String,
    points: Vec<Point>,
}

#[derive(Serialize)]
pub(crate) struct Sweep {
    name: &'static str,
    title: String,
    x_label: &'static str,
    y_label: &'static str,
    log_x: bool,
    log_y: bool,
    series: Vec<Series>,
}

impl Sweep {
    fn push(&mut self, label: &str, x: f64, s: Stat) {
        let point = Point {
            x,
            median: s.median,
            spread: [s.min, s.max],
            rounds: s.rounds,
        };
        match self.series.iter_mut().find(|s| s.label == label) {
            Some(series) => series.points.push(point),
            None => self.series.push(Series {
                label: label.to_owned(),
                points: vec![point],
            }),
        }
    }
}

/// The tracedump CLI, built by `make bench` (`TRACEDUMP_CLI` overrides).
fn cli() -> PathBuf {
    std::env::var_os("TRACEDUMP_CLI")
        .map(Into::into)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tracedump")
        })
}

/// Every sweep, scaled.
pub(crate) fn sweeps(scale: f64, rounds: usize, dir: &Path) -> Res<Vec<Sweep>> {
    let scaled = |n: usize| ((n as f64 * scale).round() as usize).max(1);
    Ok(vec![
        count_sweep(
            &[1_000, 10_000, 100_000, 1_000_000].map(scaled),
            rounds,
            dir,
        )?,
        size_sweep(scaled(256 * MIB), rounds, dir)?,
        thread_sweep(scaled(256 * MIB), scaled(200_000), rounds, dir)?,
    ])
}

const COUNT_BYTES: usize = 64;

/// A trace of `n` tensors of 16 f32; `noise` scales every value by 1 + 1e-6
/// (a copy that `diff` finds close but not equal).
fn count_trace(path: &Path, names: &[String], noise: bool) -> Res<()> {
    let mut data = pattern(names.len() * COUNT_BYTES);
    if noise {
        for c in data.chunks_exact_mut(4) {
            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * (1.0 + 1e-6);
            c.copy_from_slice(&v.to_le_bytes());
        }
    }
    write_trace(path, Mode::Sync, names, &data, COUNT_BYTES)?;
    Ok(())
}

/// A CLI run, timed from spawn to exit; its stdout goes to /dev/null.
/// `ok` lists the exit codes that count as success.
fn run_cli(args: &[&Path], verb: &str, flags: &[&str], ok: &[i32]) -> Res<Duration> {
    let start = Instant::now();
    let status = Command::new(cli())
        .arg(verb)
        .args(args)
        .args(flags)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); `make bench` builds it",
                cli().display()
            )
        })?;
    let took = start.elapsed();
    if !status.code().is_some_and(|c| ok.contains(&c)) {
        return Err(format!("tracedump {verb} failed: {status}").into());
    }
    Ok(took)
}

/// `python_bench.py open-iterate`: a Python process that, for every path
/// it reads, times `tracedump.open` and `.numpy()` of every tensor.
struct PyOpen {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl PyOpen {
    fn spawn() -> Res<PyOpen> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_bench.py");
        let mut child = Command::new(python())
            .arg(&script)
            .arg("open-iterate")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {} ({e})", python().display()))?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(PyOpen { child, out })
    }

    fn time(&mut self, path: &Path, expected: usize) -> Res<Duration> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "{}", path.display())?;
        stdin.flush()?;
        let mut line = String::new();
        if self.out.read_line(&mut line)? == 0 {
            return Err("python_bench.py open-iterate exited early".into());
        }
        let (secs, count) = line
            .trim()
            .split_once('\t')
            .ok_or("bad open-iterate line")?;
        if count.parse::<usize>()? != expected {
            return Err(format!("Python iterated {count} tensors, not {expected}").into());
        }
        Ok(Duration::from_secs_f64(secs.parse()?))
    }

    fn close(mut self) -> Res<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("python_bench.py open-iterate failed: {status}").into());
        }
        Ok(())
    }
}

fn count_sweep(counts: &[usize], rounds: usize, dir: &Path) -> Res<Sweep> {
    let mut sweep = Sweep {
        name: "count",
        title: format!("Tensor count ({COUNT_BYTES} B tensors)"),
        x_label: "tensors",
        y_label: "seconds",
        log_x: true,
        log_y: true,
        series: Vec::new(),
    };
    let mut py = PyOpen::spawn()?;
    for &n in counts {
        progress(&format!(
            "sweep: {n} tensors: open, inspect --json, diff, Python open + iterate ({rounds} rounds)"
        ));
        let names = tensor_names(n);
        let (a, b) = (dir.join("count-a.tdump"), dir.join("count-b.tdump"));
        count_trace(&a, &names, false)?;
        count_trace(&b, &names, true)?;
        let [open, inspect, diff, python] = interleaved(
            rounds,
            &mut [
                &mut |_: usize| {
                    let start = Instant::now();
                    let t = Trace::open(&a)?;
                    let took = start.elapsed();
                    crate::read::check(&t, n)?;
                    Ok(took)
                },
                &mut |_: usize| run_cli(&[&a], "inspect", &["--json"], &[0]),
                // 0: the runs agree, 1: they diverge; both did the whole diff
                &mut |_: usize| run_cli(&[&a, &b], "diff", &[], &[0, 1]),
                &mut |_: usize| py.time(&a, n),
            ],
        )?;
        let secs = |d: Duration| d.as_secs_f64();
        let x = n as f64;
        sweep.push("Rust Trace::open", x, Stat::of(&open, secs));
        sweep.push("tracedump inspect --json", x, Stat::of(&inspect, secs));
        sweep.push(
            "tracedump diff (a copy with noise)",
            x,
            Stat::of(&diff, secs),
        );
        sweep.push(
            "Python tracedump.open + .numpy() of every tensor",
            x,
            Stat::of(&python, secs),
        );
        // 1M tensors are a few hundred MB: gone before the next point
        fs::remove_file(&a)?;
        fs::remove_file(&b)?;
    }
    py.close()?;
    Ok(sweep)
}

/// Tensor sizes across the writer's paths (see the module doc).
const SIZES: [usize; 8] = [
    1 << 10,
    4 << 10,
    16 << 10,
    48 << 10,
    256 << 10,
    768 << 10,
    4 << 20,
    16 << 20,
];

fn size_sweep(total: usize, rounds: usize, dir: &Path) -> Res<Sweep> {
    let mut sweep = Sweep {
        name: "size",
        title: format!("Tensor size ({} MiB per point)", total / MIB),
        x_label: "bytes per tensor",
        y_label: "GB/s",
        log_x: true,
        log_y: false,
        series: Vec::new(),
    };
    let background = Mode::Background {
        budget_bytes: DEFAULT_BUDGET,
        when_full: WhenFull::Block,
    };
    let path = dir.join("size.tdump");
    let plain = dir.join("size.bin");
    for size in SIZES {
        let n = (total / size).max(1);
        progress(&format!(
            "sweep: {n} x {} KiB: sync, background, plain write() ({rounds} rounds)",
            size >> 10
        ));
        let names = tensor_names(n);
        let data = pattern(n * size);
        let [sync, bg, base] = interleaved(
            rounds,
            &mut [
                &mut |_: usize| {
                    let (_, t) = write_trace(&path, Mode::Sync, &names, &data, size)?;
                    settle(&path)?;
                    Ok(t)
                },
                &mut |_: usize| {
                    let (_, t) = write_trace(&path, background, &names, &data, size)?;
                    settle(&path)?;
                    Ok(t)
                },
                &mut |_: usize| {
                    let start = Instant::now();
                    let mut f = std::io::BufWriter::with_capacity(MIB, fs::File::create(&plain)?);
                    f.write_all(&[0; 64])?;
                    data.chunks_exact(size).try_for_each(|c| f.write_all(c))?;
                    f.flush()?;
                    drop(f);
                    let t = start.elapsed();
                    settle(&plain)?;
                    Ok(t)
                },
            ],
        )?;
        let gb = |d: Duration| gbps(data.len(), d);
        let x = size as f64;
        sweep.push("Rust sync writer", x, Stat::of(&sync, gb));
        sweep.push(
            "Rust background writer, create..finish",
            x,
            Stat::of(&bg, gb),
        );
        sweep.push(
            "plain write() via a 1 MiB BufWriter",
            x,
            Stat::of(&base, gb),
        );
    }
    Ok(sweep)
}

/// Remove a file and `sync`, outside the timing (as the write rows do).
fn settle(path: &Path) -> Res<()> {
    fs::remove_file(path)?;
    Command::new("sync").status()?;
    Ok(())
}

const THREADS: [usize; 4] = [1, 2, 4, 8];

/// `threads` recording threads adding `n` tensors of `size` bytes, their
/// share each, to one writer; create to finish.
fn write_threaded(
    path: &Path,
    mode: Mode,
    threads: usize,
    data: &[u8],
    size: usize,
) -> Res<Duration> {
    let n = data.len() / size;
    let names = tensor_names(n);
    let shape = [(size / 4) as u64];
    let start = Instant::now();
    let w = Writer::with_options(
        path,
        Metadata::new(),
        WriterOptions {
            mode,
            ..Default::default()
        },
    )?;
    std::thread::scope(|s| -> Res<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (w, names) = (&w, &names);
                s.spawn(move || -> Result<(), String> {
                    for i in (t..n).step_by(threads) {
                        let bytes = &data[i * size..(i + 1) * size];
                        let meta = TensorMeta::new().layer(t as i64).step(i as i64);
                        w.add_tensor(&names[i], DType::F32, &shape, bytes, meta)
                            .map_err(|e| e.to_string())?
                            .ok_or("a tensor was not recorded")?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a recording thread panicked")??;
        }
        Ok(())
    })?;
    let summary = w.finish()?;
    let took = start.elapsed();
    if summary.dropped != 0 {
        return Err("the writer dropped tensors".into());
    }
    Ok(took)
}

fn thread_sweep(total: usize, small: usize, rounds: usize, dir: &Path) -> Res<Sweep> {
    let mut sweep = Sweep {
        name: "threads",
        title: format!(
            "Recording threads, one Writer ({} MiB of 1 MiB tensors; {small} tensors of 256 B)",
            total / MIB
        ),
        x_label: "recording threads",
        y_label: "GB/s (1 MiB tensors); M tensors/s (256 B)",
        log_x: true,
        log_y: false,
        series: Vec::new(),
    };
    let background = Mode::Background {
        budget_bytes: DEFAULT_BUDGET,
        when_full: WhenFull::Block,
    };
    let large = pattern(total.next_multiple_of(MIB).max(MIB));
    let tiny = pattern(small * 256);
    let path = dir.join("threads.tdump");
    for threads in THREADS {
        progress(&format!(
            "sweep: {threads} recording threads: sync and background, 1 MiB and 256 B ({rounds} rounds)"
        ));
        let [sync, bg, sync_small, bg_small] = interleaved(
            rounds,
            &mut [
                &mut |_: usize| {
                    let t = write_threaded(&path, Mode::Sync, threads, &large, MIB)?;
                    settle(&path)?;
                    Ok(t)
                },
                &mut |_: usize| {
                    let t = write_threaded(&path, background, threads, &large, MIB)?;
                    settle(&path)?;
                    Ok(t)
                },
                &mut |_: usize| {
                    let t = write_threaded(&path, Mode::Sync, threads, &tiny, 256)?;
                    settle(&path)?;
                    Ok(t)
                },
                &mut |_: usize| {
                    let t = write_threaded(&path, background, threads, &tiny, 256)?;
                    settle(&path)?;
                    Ok(t)
                },
            ],
        )?;
        let gb = |d: Duration| gbps(large.len(), d);
        let mps = |d: Duration| small as f64 / d.as_secs_f64() / 1e6;
        let x = threads as f64;
        sweep.push("sync, 1 MiB tensors (GB/s)", x, Stat::of(&sync, gb));
        sweep.push("background, 1 MiB tensors (GB/s)", x, Stat::of(&bg, gb));
        sweep.push(
            "sync, 256 B tensors (M tensors/s)",
            x,
            Stat::of(&sync_small, mps),
        );
        sweep.push(
            "background, 256 B tensors (M tensors/s)",
            x,
            Stat::of(&bg_small, mps),
        );
    }
    Ok(sweep)
}
