//! `tracedump-bench`: the Rust half of `make bench`. Every figure of ours is
//! measured in the same run as what a user would use instead (plain
//! `write()`, the `safetensors` crate, a memcpy, torch, gguf-py), in N
//! rounds with the contenders in a random order each round, the median and
//! the spread kept, and written as rows of the one
//! schema `bench/table.py` merges with `bench/python_bench.py`'s.
//! See README.md for what each row measures.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod dequant;
mod diagnose;
mod layout;
mod read;
mod sweeps;
mod write;

use serde::Serialize;

pub(crate) type Res<T> = Result<T, Box<dyn Error>>;

pub(crate) const MIB: usize = 1 << 20;
const USAGE: &str = "usage: tracedump-bench [--scale F] [--repeat N] [--only PARTS] [--json PATH] [--quiet]
       tracedump-bench sweeps [--scale F] [--repeat N] [--json PATH]
  sweeps      tensor count, tensor size and recording threads, as points for bench/plot.py
              (default --repeat 3, --json bench/results-sweeps.json)
  --scale F   fraction of every tensor count, in (0, 1] (default 1: the full 1 GiB run)
  --only PARTS comma-separated parts to run: write (with its checksum rows), read, layout, dequantize, diagnose
              (default all); `sweeps` runs the sweeps, and only they read it
  --repeat N  rounds per figure, the median is kept (default 5; writes and opens: 2N+1)
  --json PATH where to write the rows (default bench/results-rust.json)
  --quiet     no table at the end (`make bench` prints the merged one)";

pub(crate) struct Args {
    /// `tracedump-bench sweeps`.
    sweeps: bool,
    pub(crate) scale: f64,
    pub(crate) repeat: usize,
    json: PathBuf,
    quiet: bool,
    only: Option<Vec<String>>,
}

impl Args {
    /// `n` scaled, at least 1.
    pub(crate) fn scaled(&self, n: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(1)
    }

    /// Whether the part `name` runs (`--only`).
    fn runs(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|parts| parts.iter().any(|p| p == name))
    }
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1).peekable();
    let sweeps = it.next_if(|a| a == "sweeps").is_some();
    let mut args = Args {
        sweeps,
        scale: 1.0,
        repeat: if sweeps { 3 } else { 5 },
        json: Path::new(env!("CARGO_MANIFEST_DIR")).join(if sweeps {
            "results-sweeps.json"
        } else {
            "results-rust.json"
        }),
        quiet: false,
        only: None,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--scale" => args.scale = value()?.parse().map_err(|e| format!("--scale: {e}"))?,
            "--repeat" => args.repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--json" => args.json = value()?.into(),
            "--quiet" => args.quiet = true,
            "--only" => {
                let parts: Vec<String> = value()?.split(',').map(str::to_owned).collect();
                if let Some(p) = parts.iter().find(|p| {
                    ![
                        "write",
                        "read",
                        "layout",
                        "dequantize",
                        "diagnose",
                        "sweeps",
                    ]
                    .contains(&p.as_str())
                }) {
                    return Err(format!("--only: unknown part {p:?}\n{USAGE}"));
                }
                args.only = Some(parts);
            }
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

/// A figure beside ours, or the baseline: its median, and for the
/// baseline the spread of its rounds.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Figure {
    pub(crate) label: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    /// `[min, max]` over the rounds (the baseline only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) spread: Option<[f64; 2]>,
}

/// The rounds of one contender, in a row's unit: median, min, max.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stat {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) rounds: usize,
}

impl Stat {
    /// The figures of `samples` in a unit (`to` maps one round's time to it).
    pub(crate) fn of(samples: &[Duration], to: impl Fn(Duration) -> f64) -> Stat {
        Stat::values(samples.iter().map(|&d| to(d)).collect())
    }

    /// Median, min and max of some figures (at least one).
    pub(crate) fn values(mut v: Vec<f64>) -> Stat {
        assert!(!v.is_empty(), "a figure needs at least one round");
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stat {
            median,
            min: v[0],
            max: v[n - 1],
            rounds: n,
        }
    }
}

/// One row of the table; the schema `bench/python_bench.py` writes too
/// (bench/README.md, "Row schema").
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// "rust" or "python": which API "ours" is.
    pub(crate) part: &'static str,
    /// "write", "read", "layout", "dequantize", "diagnose", "checksum".
    pub(crate) group: &'static str,
    pub(crate) name: String,
    /// Unit of `ours` and of `baseline.value`.
    pub(crate) unit: &'static str,
    /// GB/s: true; times: false.
    pub(crate) higher_is_better: bool,
    /// The median of the rounds.
    pub(crate) ours: f64,
    /// `[min, max]` of the rounds.
    pub(crate) ours_spread: [f64; 2],
    pub(crate) rounds: usize,
    /// What the ratio and a ratio goal are taken against.
    pub(crate) baseline: Option<Figure>,
    /// More figures measured in the same rounds (medians), shown beside.
    pub(crate) others: Vec<Figure>,
    /// Ours against the baseline as a speed, from the medians: > 1 means
    /// ours is faster (GB/s: ours / baseline; times: baseline / ours).
    pub(crate) ratio: Option<f64>,
    pub(crate) goal: Option<String>,
    /// The verdict, taken on the medians.
    pub(crate) ok: Option<bool>,
}

impl Row {
    pub(crate) fn new(group: &'static str, name: String, unit: &'static str, ours: Stat) -> Row {
        Row {
            part: "rust",
            group,
            name,
            unit,
            higher_is_better: unit == "GB/s" || unit == "x",
            ours: ours.median,
            ours_spread: [ours.min, ours.max],
            rounds: ours.rounds,
            baseline: None,
            others: Vec::new(),
            ratio: None,
            goal: None,
            ok: None,
        }
    }

    /// GB/s of `bytes` moved in each round of `ours`.
    pub(crate) fn rate(group: &'static str, name: String, bytes: usize, ours: &[Duration]) -> Row {
        Row::new(group, name, "GB/s", Stat::of(ours, |d| gbps(bytes, d)))
    }

    /// The baseline, in the row's unit; sets the ratio (from the medians).
    pub(crate) fn vs(mut self, label: impl Into<String>, theirs: Stat) -> Row {
        let value = theirs.median;
        self.ratio = Some(if self.higher_is_better {
            self.ours / value
        } else {
            value / self.ours
        });
        self.baseline = Some(Figure {
            label: label.into(),
            value,
            unit: self.unit,
            spread: Some([theirs.min, theirs.max]),
        });
        self
    }

    /// Another figure (a median) shown beside.
    pub(crate) fn also(mut self, label: impl Into<String>, value: f64, unit: &'static str) -> Row {
        self.others.push(Figure {
            label: label.into(),
            value,
            unit,
            spread: None,
        });
        self
    }

    /// Goal: ratio ≥ `min` (`text` overrides the goal's wording).
    pub(crate) fn goal_ratio(mut self, min: f64, text: Option<&str>) -> Row {
        self.goal = Some(text.map_or_else(|| format!(">= {min}x"), str::to_owned));
        self.ok = self.ratio.map(|r| r >= min);
        self
    }

    /// Marks the goal as our own (not one the benchmark issue set): the
    /// goal text ends in "(ours)".
    pub(crate) fn ours(mut self) -> Row {
        if let Some(goal) = &mut self.goal {
            goal.push_str(" (ours)");
        }
        self
    }

    /// Goal: ours ≤ `max` (a time).
    pub(crate) fn goal_max(mut self, max: f64) -> Row {
        self.goal = Some(format!("<= {max} {}", self.unit));
        self.ok = Some(self.ours <= max);
        self
    }
}

#[derive(Serialize)]
struct Machine {
    nproc: usize,
    mem_total_kib: u64,
    cpu: String,
    kernel: String,
    /// Filesystem type of the scratch directory (`/proc/mounts`).
    scratch_fs: String,
}

#[derive(Serialize)]
struct SweepReport {
    part: &'static str,
    date: String,
    machine: Machine,
    scale: f64,
    rounds: usize,
    sweeps: Vec<sweeps::Sweep>,
}

#[derive(Serialize)]
struct Report {
    part: &'static str,
    date: String,
    machine: Machine,
    scale: f64,
    repeat: usize,
    rows: Vec<Row>,
}

/// Removes the scratch directory on every exit path, panics included.
pub(crate) struct Scratch(pub(crate) PathBuf);

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
    let dir = Scratch(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"));
    let _ = fs::remove_dir_all(&dir.0);
    fs::create_dir_all(&dir.0)?;
    let machine = machine(&dir.0);
    let date = utc_now();
    eprintln!(
        "tracedump-bench {date}: {} CPUs ({}), {:.1} GiB RAM, Linux {}, scratch on {}; \
         scale {}, median of {} rounds",
        machine.nproc,
        machine.cpu,
        machine.mem_total_kib as f64 / MIB as f64,
        machine.kernel,
        machine.scratch_fs,
        args.scale,
        args.repeat,
    );

    if args.sweeps {
        if !args.runs("sweeps") {
            eprintln!("tracedump-bench sweeps: not among --only's parts, nothing to do");
            return Ok(());
        }
        let report = SweepReport {
            part: "sweeps",
            sweeps: sweeps::sweeps(args.scale, args.repeat, &dir.0)?,
            date,
            machine,
            scale: args.scale,
            rounds: args.repeat,
        };
        return write_json(&args.json, &report);
    }
    let mut rows = Vec::new();
    if args.runs("write") {
        rows.extend(write::rows(args, &dir.0)?);
    }
    if args.runs("read") {
        rows.extend(read::rows(args, &dir.0)?);
    }
    if args.runs("layout") {
        rows.extend(layout::rows(&dir.0)?);
    }
    if args.runs("dequantize") {
        progress("dequantize: 13 ggml types, ours vs gguf-py (one Python process)");
        rows.extend(dequant::rows(
            &dir.0,
            args.scaled(1 << 22).next_multiple_of(4096),
            args.repeat,
        )?);
    }
    if args.runs("diagnose") {
        rows.extend(diagnose::rows(args, &dir.0)?);
    }
    // the checksum rows go last, as in the merged table
    rows.sort_by_key(|r| r.group == "checksum");

    if !args.quiet {
        print_table(&rows);
    }
    let report = Report {
        part: "rust",
        date,
        machine,
        scale: args.scale,
        repeat: args.repeat,
        rows,
    };
    write_json(&args.json, &report)
}

fn write_json(path: &Path, report: &impl Serialize) -> Res<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, serde_json::to_string_pretty(report)? + "\n")?;
    eprintln!("written to {}", path.display());
    Ok(())
}

/// One line on stderr saying what is being measured.
pub(crate) fn progress(what: &str) {
    eprintln!("  [rust] {what}");
}

/// Every round of every contender, in a random order within each round,
/// so that neither a drift in machine load nor what one contender leaves
/// behind (dirty pages, a warm cache, spinning threads) always falls on the
/// same one. Each contender times itself (set-up and clean-up stay outside
/// its figure) and gets the round number.
pub(crate) fn interleaved<const N: usize>(
    rounds: usize,
    contenders: &mut [&mut dyn FnMut(usize) -> Res<Duration>; N],
) -> Res<[Vec<Duration>; N]> {
    let mut times: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::with_capacity(rounds));
    let mut order: [usize; N] = std::array::from_fn(|i| i);
    for round in 0..rounds {
        shuffle(&mut order);
        for &i in &order {
            times[i].push(contenders[i](round)?);
        }
    }
    Ok(times)
}

/// Fisher-Yates with a xorshift seeded from the clock: the order only has
/// to differ from round to round, not be unpredictable.
pub(crate) fn shuffle<T>(v: &mut [T]) {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
                | 1,
        );
    }
    for i in (1..v.len()).rev() {
        let r = STATE.with(|s| {
            let mut x = s.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        });
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
}

pub(crate) fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Names shaped like an engine's (`blk.7.attn_q-123`), all distinct.
pub(crate) fn tensor_names(n: usize) -> Vec<String> {
    const ROLES: [&str; 4] = ["attn_q", "attn_k", "attn_v", "ffn_out"];
    (0..n)
        .map(|i| format!("blk.{}.{}-{i}", i % 32, ROLES[i / 32 % 4]))
        .collect()
}

/// Cheap deterministic f32 data (not zeros, not constant).
pub(crate) fn pattern(bytes: usize) -> Vec<u8> {
    let mut v = vec![0u8; bytes];
    for (i, c) in v.chunks_exact_mut(4).enumerate() {
        c.copy_from_slice(&((i % 4093) as f32 * 0.25 - 511.0).to_le_bytes());
    }
    v
}

/// The interpreter of `.venv` (`make bench` exports TRACEDUMP_PYTHON).
pub(crate) fn python() -> PathBuf {
    std::env::var_os("TRACEDUMP_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

/// The table of this part alone (`bench/table.py` prints the merged one).
fn print_table(rows: &[Row]) {
    let num = |v: f64, unit: &str| match unit {
        "GB/s" | "ms" | "%" => format!("{v:.2} {unit}"),
        _ => format!("{v:.3} {unit}"),
    };
    let spread = |s: [f64; 2]| format!("[{:.3}, {:.3}]", s[0], s[1]);
    println!(
        "\n{:<56} {:>11} {:<18}  {:<34} {:>7}  {:<16} {:<6} also",
        "benchmark (medians)", "ours", "[min, max]", "baseline", "ratio", "goal", "result"
    );
    for r in rows {
        let base = r.baseline.as_ref().map_or("-".into(), |b| {
            format!(
                "{} {} {}",
                b.label,
                num(b.value, b.unit),
                b.spread.map_or(String::new(), spread)
            )
        });
        let also: Vec<String> = r
            .others
            .iter()
            .map(|f| format!("{} {}", f.label, num(f.value, f.unit)))
            .collect();
        println!(
            "{:<56} {:>11} {:<18}  {:<34} {:>7}  {:<16} {:<6} {}",
            r.name,
            num(r.ours, r.unit),
            spread(r.ours_spread),
            base,
            r.ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            r.goal.as_deref().unwrap_or("-"),
            r.ok.map_or("-", |p| if p { "PASS" } else { "MISS" }),
            also.join("; "),
        );
    }
}

fn machine(scratch: &Path) -> Machine {
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
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        scratch_fs: fs_type(&read("/proc/mounts"), scratch),
    }
}

/// The type of the filesystem `path` is on: the longest mount point of
/// `/proc/mounts` that is a prefix of it.
fn fs_type(mounts: &str, path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            // mount points escape spaces as \040
            let point = point.replace("\\040", " ");
            path.starts_with(&point)
                .then(|| (point.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, kind)| kind)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_median_and_spread() {
        let s = Stat::values(vec![3.0, 1.0, 2.0, 10.0, 4.0]);
        assert_eq!((s.median, s.min, s.max, s.rounds), (3.0, 1.0, 10.0, 5));
        let s = Stat::values(vec![4.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 10.0));
        // GB/s of 1 GB: the fastest round is the highest figure
        let d = [2.0, 1.0, 4.0].map(Duration::from_secs_f64);
        let s = Stat::of(&d, |d| gbps(1_000_000_000, d));
        assert_eq!((s.median, s.min, s.max), (0.5, 0.25, 1.0));
    }

    #[test]
    fn ratio_and_verdict_come_from_the_medians() {
        let ours = Stat::values(vec![2.0, 2.0, 100.0]);
        let theirs = Stat::values(vec![1.0, 5.0, 5.0]);
        let row = Row::new("read", "t".into(), "ms", ours)
            .vs("b", theirs)
            .goal_ratio(2.5, None);
        assert_eq!(row.ratio, Some(2.5));
        assert_eq!(row.ok, Some(true));
        assert_eq!(row.ours_spread, [2.0, 100.0]);
        let b = row.baseline.as_ref().unwrap();
        assert_eq!((b.value, b.spread), (5.0, Some([1.0, 5.0])));
        let row = Row::new("write", "t".into(), "GB/s", ours)
            .vs("b", theirs)
            .goal_ratio(0.5, None);
        assert_eq!((row.ratio, row.ok), (Some(0.4), Some(false)));
    }

    #[test]
    fn every_order_comes_up() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut v = [0, 1, 2];
            shuffle(&mut v);
            let mut sorted = v;
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2]);
            seen.insert(v);
        }
        assert_eq!(seen.len(), 6);
    }

    #[test]
    fn scratch_fs_is_the_longest_mount_point() {
        let mounts = "/dev/vda / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n\
                      /dev/vdb /tmp/my\\040disk xfs rw 0 0\n";
        let fs = |p: &str| fs_type(mounts, Path::new(p));
        assert_eq!(fs("/no/such/dir/below/root"), "ext4");
        assert_eq!(fs("/tmp/no-such-scratch"), "tmpfs");
        assert_eq!(fs("/tmp/my disk/x"), "xfs");
        // a prefix of a component is not that mount point
        assert_eq!(fs("/tmpx/y"), "ext4");
    }
}
