//! Disk full: on a 4 MiB tmpfs the writer reports "No space left on device"
//! naming the file, refuses everything after it with "an earlier write
//! failed", and the file stays readable up to its last complete record,
//! with every record it had flushed, byte for byte, and the torn tail
//! reported.
//!
//! The filesystem is mounted in a private mount namespace (`unshare -rm`:
//! a user namespace, so no root is needed; or `unshare -m` as root), which
//! takes the mount away with it when the child writer
//! (`src/bin/crash_writer.rs fill`) exits; the child copies the trace out
//! first. Where neither works the test fails and says why.

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use trace_reader::Trace;
use tracedump_tests::crash::{check_unfinished, Plan};

const CHILD: &str = env!("CARGO_BIN_EXE_crash_writer");
const FS_SIZE: &str = "4m";

#[test]
fn disk_full_sync_small_records() {
    disk_full("sync", 1, 3000, 64 << 10);
}

#[test]
fn disk_full_sync_large_records() {
    disk_full("sync", 2, 300, 3 << 20);
}

#[test]
fn disk_full_background_small_records() {
    disk_full("background", 3, 3000, 64 << 10);
}

#[test]
fn disk_full_background_large_records() {
    disk_full("background", 4, 300, 3 << 20);
}

/// The records fit, the footer does not: `finish()` says so, naming the
/// file, and the file keeps every record.
///
/// The sync writer allocates the file up to 4 MiB ahead of its records
/// (its mapped window, cut off at `finish`), so its footer must be larger
/// than that to meet a full disk: 100,000 tiny records on a 24 MiB tmpfs.
#[test]
fn disk_full_at_finish_sync() {
    footer_does_not_fit("sync", 5, 100_000, 8, "24m");
}

#[test]
fn disk_full_at_finish_background() {
    // 3000 small records: a footer index of well over a page
    footer_does_not_fit("background", 6, 3000, 256, FS_SIZE);
}

fn footer_does_not_fit(mode: &str, seed: u64, count: usize, max_bytes: usize, fs_size: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("fs");
    std::fs::create_dir(&mnt).unwrap();
    let trace = mnt.join("trace.tdump");
    let copy = dir.path().join("copy.tdump");
    let out = run_on_small_fs(
        &mnt, fs_size, "footer", mode, seed, count, max_bytes, &trace, &copy,
    );
    let what = format!("{mode}, footer, plan seed {seed}");
    let f = parse(&out);
    assert!(f.error.is_none(), "{what}: {out}");
    assert_eq!(f.flushed, Some(count as u64), "{what}");
    let finish = f.finish.as_ref().unwrap();
    assert!(
        finish.variant == "Io"
            && finish.os == Some(28)
            && finish.message.contains(&trace.display().to_string())
            && finish.message.contains("No space left on device"),
        "{what}: finish: {finish:?}"
    );
    let t =
        Trace::open(&copy).unwrap_or_else(|e| panic!("{what}: the reader refuses the file: {e}"));
    assert_eq!(t.records().len(), count + 1, "{what}");
    let plan = Plan::new(seed, count, max_bytes);
    for id in 1..=count as u64 {
        plan.check_record(&t, id)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let torn = check_unfinished(&t).unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!(
        "{what}: finish: {:?}; {} records in the file, torn tail {torn} bytes: {:?}",
        finish.message,
        t.records().len(),
        t.torn_tail().map(|t| &t.reason)
    );
}

/// One answer of the writer, as the child printed it.
#[derive(Debug)]
struct Answer {
    /// `Ok`, `Io`, `Failed` or `Other`.
    variant: String,
    /// The OS error code of an `Io` error.
    os: Option<i32>,
    /// The error's text (or what an `Ok` returned).
    message: String,
}

impl Answer {
    fn parse(fields: &[&str]) -> Answer {
        Answer {
            variant: fields[0].to_owned(),
            os: fields[1].parse().ok(),
            message: fields[2..].join("\t"),
        }
    }
}

/// What the child saw.
#[derive(Debug, Default)]
struct Filled {
    added: Vec<u64>,
    flushed: Option<u64>,
    /// The first error: what failed (`add` or `flush`) and the answer.
    error: Option<(String, Answer)>,
    again_add: Option<Answer>,
    again_flush: Option<Answer>,
    finish: Option<Answer>,
}

fn disk_full(mode: &str, seed: u64, count: usize, max_bytes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("fs");
    std::fs::create_dir(&mnt).unwrap();
    let trace = mnt.join("trace.tdump");
    let copy = dir.path().join("copy.tdump");
    let out = run_on_small_fs(
        &mnt, FS_SIZE, "fill", mode, seed, count, max_bytes, &trace, &copy,
    );
    let what = format!("{mode}, plan seed {seed}, payloads up to {max_bytes} bytes");
    let f = parse(&out);
    let path = trace.display().to_string();
    let nospace = "No space left on device";

    // the first error names the file and says the disk is full
    let (op, first) = f.error.as_ref().unwrap_or_else(|| {
        panic!("{what}: the writer never failed on a {FS_SIZE} filesystem:\n{out}")
    });
    assert!(
        first.message.contains(&path) && first.message.contains(nospace),
        "{what}: unclear first error from {op}: {first:?}"
    );
    match mode {
        // the recording thread wrote: the OS error itself
        "sync" => assert!(
            first.variant == "Io" && first.os == Some(28),
            "{what}: {op}: {first:?}"
        ),
        // the writer thread wrote: its error, or the flush's own
        _ => assert!(
            first.variant == "Failed" || (first.variant == "Io" && first.os == Some(28)),
            "{what}: {op}: {first:?}"
        ),
    }
    // everything after it is refused, saying why
    for (call, a) in [
        ("add after the error", &f.again_add),
        ("flush after the error", &f.again_flush),
        ("finish", &f.finish),
    ] {
        let a = a
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no answer to {call}:\n{out}"));
        assert!(
            a.variant == "Failed"
                && a.message.contains(&path)
                && a.message.contains("an earlier write failed")
                && a.message.contains(nospace),
            "{what}: {call}: {a:?}"
        );
    }

    // the file: every record flushed is there, every record there is whole
    let t =
        Trace::open(&copy).unwrap_or_else(|e| panic!("{what}: the reader refuses the file: {e}"));
    let n = t.records().len() as u64;
    if let Some(last) = f.flushed {
        assert!(
            last < n,
            "{what}: record {last} was flushed, the reader found records 0..{n}"
        );
    }
    // sync mode writes through: every add that returned Ok is in the file
    if mode == "sync" {
        if let Some(&last) = f.added.iter().max() {
            assert!(
                last < n,
                "{what}: record {last} was added, the reader found records 0..{n}"
            );
        }
    }
    let plan = Plan::new(seed, count, max_bytes);
    for id in 1..n {
        plan.check_record(&t, id)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let torn = check_unfinished(&t).unwrap_or_else(|e| panic!("{what}: {e}"));
    let acknowledged = f.added.last().copied().unwrap_or(0);
    eprintln!(
        "{what}: first error from {op}: {:?}; {} records added, last flushed {:?}, {} in the file \
         ({} bytes, torn tail {torn} bytes: {:?})",
        first.message,
        f.added.len(),
        f.flushed,
        n - 1,
        t.file_len(),
        t.torn_tail().map(|t| &t.reason)
    );
    assert!(
        n - 1 <= acknowledged + 1,
        "{what}: {} records in the file, {acknowledged} acknowledged",
        n - 1
    );
}

fn parse(out: &str) -> Filled {
    let mut f = Filled::default();
    for line in out.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields[..] {
            ["start"] | ["copied"] | ["filled"] => {}
            ["added", id] => f.added.push(id.parse().unwrap()),
            ["flushed", id] => f.flushed = Some(id.parse().unwrap()),
            ["error", op, ref rest @ ..] if rest.len() >= 3 => {
                f.error = Some((op.to_owned(), Answer::parse(rest)))
            }
            ["again", "add", ref rest @ ..] if rest.len() >= 3 => {
                f.again_add = Some(Answer::parse(rest))
            }
            ["again", "flush", ref rest @ ..] if rest.len() >= 3 => {
                f.again_flush = Some(Answer::parse(rest))
            }
            ["finish", ref rest @ ..] if rest.len() >= 3 => f.finish = Some(Answer::parse(rest)),
            _ => panic!("unexpected line from the child: {line:?}"),
        }
    }
    f
}

/// Run the child writer's `task` with `trace` on a fresh tmpfs of
/// `fs_size` ([`FS_SIZE`] mostly) mounted at `mnt`, in a mount namespace of
/// its own; returns its stdout.
#[allow(clippy::too_many_arguments)]
fn run_on_small_fs(
    mnt: &Path,
    fs_size: &str,
    task: &str,
    mode: &str,
    seed: u64,
    count: usize,
    max_bytes: usize,
    trace: &Path,
    copy: &Path,
) -> String {
    // exit 97: the mount failed; the child prints `start` first thing
    let script = format!(
        "mount -t tmpfs -o size={fs_size} tracedump-test \"$1\" || exit 97; shift; exec \"$@\""
    );
    let mut tried = Vec::new();
    for launcher in [&["unshare", "-rm"][..], &["unshare", "-m"][..]] {
        let out = Command::new(launcher[0])
            .args(&launcher[1..])
            .args(["sh", "-c", &script, "sh"])
            .arg(mnt)
            .arg(CHILD)
            .args([task, mode, &seed.to_string(), &count.to_string()])
            .arg(max_bytes.to_string())
            .args([trace, copy])
            .stdin(Stdio::null())
            .output();
        let cmd = launcher.join(" ");
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                tried.push(format!("`{cmd}`: cannot run it: {e}"));
                continue;
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stdout.starts_with("start\n") {
            tried.push(format!("`{cmd}`: {} {}", out.status, stderr.trim()));
            continue;
        }
        assert!(
            out.status.success() && stdout.ends_with("copied\n"),
            "the child writer failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        return stdout;
    }
    panic!(
        "cannot mount a {fs_size} tmpfs for the writer: this test needs unprivileged user \
         namespaces (`unshare -rm`) or root (`unshare -m`), and util-linux's unshare:\n  {}",
        tried.join("\n  ")
    );
}
