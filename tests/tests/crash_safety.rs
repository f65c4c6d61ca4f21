//! Crash safety: a writer process killed with SIGKILL at random moments
//! while it writes leaves a file the reader opens, with every record that
//! was flushed before the kill, byte for byte, and the torn tail reported;
//! `tracedump recover` turns it into a clean, finished file with the same
//! records.
//!
//! The child is `src/bin/crash_writer.rs`: it records a seeded plan
//! (`tracedump_tests::crash::Plan`: tensors of 4 bytes to 3 MiB, storages
//! with transposed, sliced and reversed views over them, statistics-only
//! records) and logs each id whose `add_*` returned and each id it has
//! flushed. In sync mode the writer writes through: every record whose
//! `add_*` returned must be in the file. In background mode `flush()` is
//! the promise (trace-writer README, "Crash safety"): records still queued
//! may be lost. Every record the reader returns, flushed or not, must hold
//! exactly the planned bytes.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trace_format::record::{RecordKind, RECORD_HEADER_BYTES};
use trace_reader::{Metadata, Trace, Value};
use trace_writer::{Mode, WhenFull, Writer, WriterOptions};
use tracedump_tests::crash::{check_unfinished, Plan};
use tracedump_tests::Rng;

/// Kill trials per mode.
const TRIALS: usize = 100;
/// Kill trials per mode at most: on a loaded machine (tests running beside
/// this one on 2 cores) the timing of the first `TRIALS` can put too few
/// kills inside a write; more trials are run until enough have landed
/// there (every trial's file is checked all the same).
const MAX_TRIALS: usize = 3 * TRIALS;
/// Records per plan.
const COUNT: usize = 24;
/// The largest payloads (log-uniform from 4 bytes).
const MAX_BYTES: usize = 3 << 20;
/// Unkilled runs that measure how fast the child writes; each kill lands
/// anywhere in the time its plan takes to write, or a little after.
const CALIBRATION_RUNS: usize = 3;

const CHILD: &str = env!("CARGO_BIN_EXE_crash_writer");

#[test]
fn sigkill_while_writing_sync() {
    kill_trials("sync", 0x5EED_0001);
}

#[test]
fn sigkill_while_writing_background() {
    kill_trials("background", 0x5EED_0002);
}

/// A writer that exists has put a readable trace on disk: the file header
/// and run metadata reach the file at once, so a process killed right after
/// `create` leaves a trace, not an empty file the reader refuses.
#[test]
fn a_writer_killed_right_after_create_leaves_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    for (i, mode) in [
        Mode::Sync,
        Mode::Background {
            budget_bytes: 1 << 20,
            when_full: WhenFull::Block,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("{i}.tdump"));
        let options = WriterOptions {
            mode,
            ..WriterOptions::default()
        };
        let w = Writer::with_options(&path, Metadata::new().with("k", "v"), options).unwrap();
        // the writer is alive: what a kill now would leave is on disk
        let t = Trace::open(&path).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(!t.is_finished());
        assert_eq!(t.records().len(), 1, "{mode:?}: the run metadata record");
        assert_eq!(t.run_metadata().get("k"), Some(&Value::Str("v".into())));
        drop(w);
    }
}

/// What the trials saw, to show the kills landed all over the writing.
#[derive(Debug, Default)]
struct Tally {
    trials: usize,
    /// The child finished the file before the kill.
    finished: usize,
    /// Unfinished, ending exactly after a record.
    clean_cut: usize,
    /// Unfinished, with a torn tail.
    torn: usize,
    /// Torn while a payload of 1 MiB or more was being written.
    torn_in_large: usize,
    /// Records whose `add_*` had returned but which were not flushed and
    /// not in the file (allowed: not yet flushed).
    added_not_in_file: usize,
    /// Records in the file beyond the last one flushed.
    unflushed_in_file: usize,
    /// Time spent running children, checking their files, recovering them.
    time_children: Duration,
    time_checks: Duration,
    time_recover: Duration,
}

fn kill_trials(mode: &str, seed: u64) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    // how fast the child writes: unkilled runs, in nanoseconds per KiB
    let (mut wrote, mut kib) = (Duration::ZERO, 0);
    for run in 0..CALIBRATION_RUNS {
        let plan = Plan::new(rng.next_u64(), COUNT, MAX_BYTES);
        wrote += trial(mode, run, &plan, None, dir.path(), &mut tally);
        kib += plan.payload_bytes() as u64 / 1024 + 1;
    }
    let ns_per_kib = wrote.as_nanos() as u64 / kib;
    // enough kills landed while the writer was writing: a quarter cut it
    // cleanly or tore it, a tenth tore a record
    let enough = |t: &Tally| t.clean_cut + t.torn >= TRIALS / 4 && t.torn >= TRIALS / 10;
    for run in CALIBRATION_RUNS.. {
        let done = run - CALIBRATION_RUNS;
        if done >= MAX_TRIALS || (done >= TRIALS && enough(&tally)) {
            break;
        }
        // the kill lands anywhere in the time this plan takes to write, or
        // a little after
        let plan = Plan::new(rng.next_u64(), COUNT, MAX_BYTES);
        let window_ns = 1_000_000 + ns_per_kib * (plan.payload_bytes() as u64 / 1024) * 5 / 4;
        let delay = Duration::from_nanos(rng.next_u64() % window_ns);
        trial(mode, run, &plan, Some(delay), dir.path(), &mut tally);
    }
    eprintln!(
        "{mode}: {} trials in {:.1?} (writing at {ns_per_kib} ns/KiB): {tally:?}",
        tally.trials,
        started.elapsed()
    );
    // the kills must have landed while the writer wrote, not only after it
    assert!(
        enough(&tally),
        "{mode}: too few kills landed while the writer was writing, in {MAX_TRIALS} trials: {tally:?}"
    );
}

/// One run of the child: killed after `delay` (or left to finish), then
/// checked. Returns how long the child wrote.
fn trial(
    mode: &str,
    run: usize,
    plan: &Plan,
    delay: Option<Duration>,
    dir: &Path,
    tally: &mut Tally,
) -> Duration {
    let trace = dir.join(format!("{mode}-{run}.tdump"));
    let log = dir.join(format!("{mode}-{run}.log"));
    let seed = plan.seed;
    let what = format!("{mode} trial {run} (plan seed {seed:#x}, kill after {delay:?})");
    let mut child = Command::new(CHILD)
        .args(["kill", mode, &seed.to_string(), &COUNT.to_string()])
        .arg(MAX_BYTES.to_string())
        .args([&trace, &log])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHILD}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready = Instant::now();
    if line != "ready\n" {
        let out = child.wait_with_output().unwrap();
        panic!(
            "{what}: the child did not get ready ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(d) = delay {
        std::thread::sleep(d);
        // SIGKILL; fails only when the child has already been reaped, which
        // it has not
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let wrote = ready.elapsed();
    let killed = out.status.signal() == Some(9);
    assert!(
        killed || out.status.success(),
        "{what}: the child failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    tally.time_children += wrote;
    let checked = Instant::now();
    check_killed_file(mode, &what, plan, &trace, &log, killed, tally);
    tally.time_checks += checked.elapsed();
    let recovered = Instant::now();
    recover_and_check(
        &what,
        &trace,
        &dir.join(format!("{mode}-{run}.recovered.tdump")),
    );
    tally.time_recover += recovered.elapsed();
    tally.trials += 1;
    for p in [&trace, &log] {
        let _ = std::fs::remove_file(p);
    }
    wrote
}

/// The child's log: the ids whose `add_*` returned, the last id flushed,
/// whether it finished.
struct Log {
    added: Vec<u64>,
    flushed: Option<u64>,
    finished: bool,
}

fn read_log(what: &str, path: &Path) -> Log {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut log = Log {
        added: Vec::new(),
        flushed: None,
        finished: false,
    };
    for line in text.lines() {
        let (word, n) = line
            .split_once(' ')
            .and_then(|(w, n)| Some((w, n.parse::<u64>().ok()?)))
            .unwrap_or_else(|| panic!("{what}: bad log line {line:?}"));
        match word {
            "added" => log.added.push(n),
            "flushed" => log.flushed = Some(n),
            "finished" => log.finished = true,
            _ => panic!("{what}: bad log line {line:?}"),
        }
    }
    log
}

fn check_killed_file(
    mode: &str,
    what: &str,
    plan: &Plan,
    trace: &Path,
    log: &Path,
    killed: bool,
    tally: &mut Tally,
) {
    let log = read_log(what, log);
    let t =
        Trace::open(trace).unwrap_or_else(|e| panic!("{what}: the reader refuses the file: {e}"));
    let records = t.records();
    let n = records.len() as u64;
    assert!(n >= 1, "{what}: no run metadata record");
    assert_eq!(records[0].kind, RecordKind::RunMetadata as u16, "{what}");
    assert_eq!(
        t.run_metadata().get("seed"),
        Some(&Value::U64(plan.seed)),
        "{what}: run metadata"
    );
    assert!(
        n - 1 <= plan.items.len() as u64,
        "{what}: {n} records, planned {}",
        plan.items.len() + 1
    );
    // sync mode writes through: every record whose add returned is there
    if mode == "sync" {
        if let Some(&last) = log.added.iter().max() {
            assert!(
                last < n,
                "{what}: record {last} was added (sync: written through) before the kill, the reader found records 0..{n}"
            );
        }
    }
    // every record flushed before the kill is there...
    if let Some(f) = log.flushed {
        assert!(
            f < n,
            "{what}: record {f} was flushed before the kill, the reader found records 0..{n}"
        );
    }
    // ...and every record there holds exactly the planned bytes
    for id in 1..n {
        plan.check_record(&t, id)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    tally.added_not_in_file += log.added.iter().filter(|&&id| id >= n).count();
    tally.unflushed_in_file += (n - 1 - log.flushed.unwrap_or(0)) as usize;

    if t.is_finished() {
        let report = t.verify();
        assert!(report.is_ok(), "{what}: {:?}", report.faults);
        assert!(t.torn_tail().is_none(), "{what}");
        assert_eq!(n - 1, plan.items.len() as u64, "{what}: finished early");
        tally.finished += 1;
        return;
    }
    assert!(
        !log.finished && killed,
        "{what}: the child finished, the file is not"
    );
    // the torn tail is reported, and verify finds nothing else wrong
    match check_unfinished(&t).unwrap_or_else(|e| panic!("{what}: {e}")) {
        0 => tally.clean_cut += 1,
        _ => {
            tally.torn += 1;
            // the record being written when the kill came
            if plan
                .items
                .get(n as usize - 1)
                .is_some_and(|i| i.payload_len >= 1 << 20)
            {
                tally.torn_in_large += 1;
            }
        }
    }
}

/// `tracedump recover TORN OUT` (its library call): OUT is finished,
/// verifies, and holds the same records with the same bytes at the same
/// offsets.
fn recover_and_check(what: &str, torn: &Path, out: &Path) {
    if let Err(e) = trace_tools::recover::recover(torn, out) {
        panic!("{what}: recover failed: {e}");
    }
    let a = Trace::open(torn).unwrap();
    let b = Trace::open(out).unwrap_or_else(|e| panic!("{what}: recovered file: {e}"));
    assert!(
        b.is_finished() && b.torn_tail().is_none(),
        "{what}: recovered file is unfinished"
    );
    let report = b.verify();
    assert!(
        report.is_ok(),
        "{what}: recovered file: {:?}",
        report.faults
    );
    assert_eq!(
        a.records().len(),
        b.records().len(),
        "{what}: recovered record count"
    );
    let (ab, bb) = (a.source().bytes(), b.source().bytes());
    for (id, (ra, rb)) in a.records().iter().zip(b.records()).enumerate() {
        let id = id as u64;
        assert_eq!(
            (ra.offset, ra.body_len, ra.kind, ra.step, ra.layer),
            (rb.offset, rb.body_len, rb.kind, rb.step, rb.layer),
            "{what}: recovered record {id}"
        );
        assert_eq!(a.record_name(id), b.record_name(id), "{what}: record {id}");
        let span = ra.offset as usize..(ra.offset + RECORD_HEADER_BYTES + ra.body_len) as usize;
        assert!(
            ab[span.clone()] == bb[span],
            "{what}: recovered record {id} has different bytes"
        );
    }
    let _ = std::fs::remove_file(out);
}
