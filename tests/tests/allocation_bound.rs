//! Hostile input never makes the reader ask for more memory than the file
//! holds: counts, lengths and shapes that claim gigabytes (with valid
//! checksums, so the decoders do see them) are refused before anything is
//! allocated. A counting global allocator records the largest single request
//! while a hostile file is opened, fully read and verified.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use trace_format::codec::{encode_storage, encode_tensor, DataRef, StorageDesc, TensorDesc};
use trace_format::record::{RecordHeader, RecordKind, Trailer};
use trace_format::update::{encode_storage_update, StorageUpdateDesc};
use trace_format::{DType, Metadata};
use trace_reader::Trace;
use tracedump_tests::raw::{tensor_desc as desc, RawTrace};

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Bytes allocated and not yet freed, and the most of them at once.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
    if ARMED.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

fn freed(size: usize) {
    LIVE.fetch_sub(size, Ordering::Relaxed);
}

/// The counters are the process's: tests that read them run one at a time
/// (`cargo test` runs a file's tests on threads of one process).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counting has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        freed(layout.size());
        // SAFETY: ptr came from System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        freed(layout.size());
        note(new_size);
        // SAFETY: as dealloc; new_size is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Open, read every tensor every way (inspect --stats included), verify;
/// then diff and report the file against itself, and run the library calls
/// behind the other verbs (inspect's table, tree and JSON, show, export to
/// npz and safetensors: the `verbs` fuzz body). The largest allocation asked
/// for while reading and while running the verbs, and whether anything
/// panicked.
fn exercise(path: &Path) -> (usize, usize, bool) {
    // rayon's global pool (the verbs' diff runs on it) starts its workers
    // lazily and they allocate as they come up, on their own threads: let
    // every one of them start before counting, or a worker starting late
    // is charged to the file after the one that started the pool
    rayon::broadcast(|_| ());
    LARGEST.store(0, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    let mut reading = 0;
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(t) = Trace::open(path) {
            for &id in t.tensor_ids() {
                let _ = t.tensor(id);
                if let Ok(v) = t.view(id) {
                    let _ = v.to_f32();
                    let _ = v.materialize();
                    let _ = v.compute_stats();
                }
            }
            let _ = t.verify();
            reading = LARGEST.swap(0, Ordering::Relaxed);
            let mapping = trace_tools::mapping::Mapping::none();
            let tol = trace_tools::compare::Tolerance::default();
            if let Ok(r) = trace_tools::compare::diff(&t, &t, &mapping, &tol, |_, _| {}) {
                let _ = trace_tools::report::html(&t, &t, &r);
            }
            if let Ok(bytes) = std::fs::read(path) {
                tracedump_tests::fuzzing_verbs::verbs(&bytes);
            }
        } else {
            // refused at open: what opening asked for is the reading
            reading = LARGEST.swap(0, Ordering::Relaxed);
        }
    }))
    .is_err();
    ARMED.store(false, Ordering::Relaxed);
    let reporting = LARGEST.load(Ordering::Relaxed);
    (
        reading.max(if reading == 0 { reporting } else { 0 }),
        reporting,
        panicked,
    )
}

/// A storage of 64 bytes and one tensor whose descriptor is `patch`ed.
fn with_tensor(d: &TensorDesc, patch: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut r = RawTrace::new();
    r.push(
        RecordKind::Storage,
        "buf",
        &encode_storage(&StorageDesc {
            name: "buf".into(),
            metadata: Metadata::new(),
        }),
        &[7u8; 64],
    );
    let mut bytes = encode_tensor(d);
    patch(&mut bytes);
    r.push(RecordKind::Tensor, &d.name, &bytes, &[]);
    r.finish()
}

fn u32_at(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// GGUF v3 bytes: header counts, then `rest`.
fn gguf(tensors: u64, kvs: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&tensors.to_le_bytes());
    b.extend_from_slice(&kvs.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

fn gguf_str(s: &[u8], claimed: u64) -> Vec<u8> {
    let mut b = claimed.to_le_bytes().to_vec();
    b.extend_from_slice(s);
    b
}

#[test]
fn hostile_counts_lengths_and_shapes_allocate_no_more_than_the_file() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let view = DataRef::Storage {
        storage: 1,
        offset: 0,
    };
    let plain = desc("t", DType::F32, view, &[4, 4], &[16, 4]);
    // "t": name 4+1 bytes, dtype 2, data kind 1 + storage id 8 + offset 8: shape count at 24
    let shape_count_at = 5 + 2 + 1 + 16;

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("baseline", with_tensor(&plain, |_| {})),
        (
            "shape count 2^32-1",
            with_tensor(&plain, |b| u32_at(b, shape_count_at, u32::MAX)),
        ),
        (
            "name length 2^32-1",
            with_tensor(&plain, |b| u32_at(b, 0, u32::MAX)),
        ),
        (
            "metadata entry count 2^31",
            with_tensor(&plain, |b| {
                let n = b.len();
                u32_at(b, n - 4, 1 << 31)
            }),
        ),
        (
            "empty tensor with an extent of 2^62",
            with_tensor(
                &desc("empty", DType::F32, view, &[0, 1 << 62], &[0, 4]),
                |_| {},
            ),
        ),
        (
            "2^40 broadcast elements over 4 bytes",
            with_tensor(
                &desc("bcast", DType::F32, view, &[1 << 20, 1 << 20], &[0, 0]),
                |_| {},
            ),
        ),
        (
            "shape product overflows u64",
            with_tensor(
                &desc("ovf", DType::F32, view, &[1 << 40, 1 << 40], &[0, 0]),
                |_| {},
            ),
        ),
        (
            "q8_0 view of 2^36 blocks, stride 0",
            with_tensor(
                &desc("q", DType::Q8_0, view, &[1 << 31, 32], &[0, 34]),
                |_| {},
            ),
        ),
    ];

    // storage updates (format 1.2) claiming huge storages, ranges or
    // counts, or updating what is not a storage, and a long chain
    let updated =
        |len: u64, ranges: Vec<(u64, u64)>, patch: &dyn Fn(&mut Vec<u8>), base: Option<u64>| {
            let mut r = RawTrace::new();
            let s = r.push(
                RecordKind::Storage,
                "cache",
                &encode_storage(&StorageDesc {
                    name: "cache".into(),
                    metadata: Metadata::new(),
                }),
                &[7u8; 64],
            );
            let v = r.tensor(
                &desc(
                    "v",
                    DType::U8,
                    DataRef::Storage {
                        storage: s,
                        offset: 0,
                    },
                    &[4],
                    &[1],
                ),
                &[],
            );
            let mut d = encode_storage_update(&StorageUpdateDesc {
                name: "cache".into(),
                base: base.map_or(s, |_| v),
                len,
                ranges,
                metadata: Metadata::new(),
            });
            patch(&mut d);
            let u = r.push(RecordKind::StorageUpdate, "cache", &d, &[1u8; 8]);
            r.tensor(
                &desc(
                    "k",
                    DType::F32,
                    DataRef::Storage {
                        storage: u,
                        offset: 0,
                    },
                    &[1 << 20, 1 << 20],
                    &[0, 0],
                ),
                &[],
            );
            r.finish()
        };
    cases.push((
        "update to 2^62 bytes",
        updated(1 << 62, vec![(0, 8)], &|_| {}, None),
    ));
    cases.push((
        "update range of 2^63 bytes",
        updated(1 << 63, vec![(64, 1 << 62), (1 << 62, 8)], &|_| {}, None),
    ));
    // name 4 + 5, base 8, len 8: the range count at 25
    cases.push((
        "update range count 2^32-1",
        updated(64, vec![(0, 8)], &|b| u32_at(b, 25, u32::MAX), None),
    ));
    cases.push((
        "update of a tensor view",
        updated(64, vec![(0, 8)], &|_| {}, Some(0)),
    ));
    let mut chain = RawTrace::new();
    let mut base = chain.push(
        RecordKind::Storage,
        "cache",
        &encode_storage(&StorageDesc {
            name: "cache".into(),
            metadata: Metadata::new(),
        }),
        &[7u8; 64],
    );
    for i in 0..500u64 {
        base = chain.push(
            RecordKind::StorageUpdate,
            "cache",
            &encode_storage_update(&StorageUpdateDesc {
                name: "cache".into(),
                base,
                len: 64,
                ranges: vec![(i % 64, 1)],
                metadata: Metadata::new(),
            }),
            &[i as u8],
        );
        chain.tensor(
            &desc(
                "k",
                DType::U8,
                DataRef::Storage {
                    storage: base,
                    offset: 0,
                },
                &[64],
                &[1],
            ),
            &[],
        );
    }
    // ending in an update whose range runs past the storage
    let bad = chain.push(
        RecordKind::StorageUpdate,
        "cache",
        &encode_storage_update(&StorageUpdateDesc {
            name: "cache".into(),
            base,
            len: 64,
            ranges: vec![(60, 8)],
            metadata: Metadata::new(),
        }),
        &[1; 8],
    );
    chain.tensor(
        &desc(
            "k",
            DType::U8,
            DataRef::Storage {
                storage: bad,
                offset: 0,
            },
            &[64],
            &[1],
        ),
        &[],
    );
    cases.push(("update chain of 500", chain.finish()));

    // a record header claiming a body of 4 GiB (header checksum valid)
    let mut big = RawTrace::new();
    big.push(
        RecordKind::Storage,
        "s",
        &encode_storage(&StorageDesc {
            name: "s".into(),
            metadata: Metadata::new(),
        }),
        &[1; 64],
    );
    let mut b = big.unfinished();
    let at = 64 + 64; // the second record: file header 64, run metadata record padded to 64
    let h = RecordHeader::decode(&b[at..at + 32], at as u64).expect("a record header at 128");
    let huge = RecordHeader {
        body_len: 4 << 30,
        ..h
    };
    b[at..at + 32].copy_from_slice(&huge.encode());
    cases.push(("record body of 4 GiB", b));

    // a footer claiming 2^40 index entries, and a trailer pointing at it
    let mut f = RawTrace::new();
    f.push(
        RecordKind::Storage,
        "s",
        &encode_storage(&StorageDesc {
            name: "s".into(),
            metadata: Metadata::new(),
        }),
        &[1; 8],
    );
    let mut b = f.unfinished();
    let footer_at = b.len() as u64;
    let mut footer_desc = (1u64 << 40).to_le_bytes().to_vec();
    footer_desc.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&trace_format::record::frame_record(
        footer_at,
        2,
        RecordKind::Footer,
        &footer_desc,
        &[],
    ));
    b.extend_from_slice(
        &Trailer {
            footer_offset: footer_at,
            record_count: 2,
        }
        .encode(),
    );
    cases.push(("footer with 2^40 entries", b));

    // GGUF: counts and lengths of 2^60
    cases.push(("gguf 2^60 tensors", gguf(1 << 60, 0, &[])));
    cases.push(("gguf 2^60 key-values", gguf(0, 1 << 60, &[])));
    cases.push((
        "gguf key of 2^60 bytes",
        gguf(0, 1, &gguf_str(b"k", 1 << 60)),
    ));
    let mut arr = gguf_str(b"k", 1);
    arr.extend_from_slice(&9u32.to_le_bytes()); // ARRAY
    arr.extend_from_slice(&10u32.to_le_bytes()); // of u64
    arr.extend_from_slice(&(1u64 << 60).to_le_bytes());
    cases.push(("gguf array of 2^60 u64", gguf(0, 1, &arr)));
    let mut t = gguf_str(b"w", 1);
    t.extend_from_slice(&u32::MAX.to_le_bytes()); // n_dims
    cases.push(("gguf tensor of 2^32-1 dims", gguf(1, 0, &t)));
    let mut t = gguf_str(b"w", 1);
    t.extend_from_slice(&2u32.to_le_bytes());
    t.extend_from_slice(&(1u64 << 40).to_le_bytes());
    t.extend_from_slice(&(1u64 << 40).to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // f32
    t.extend_from_slice(&0u64.to_le_bytes());
    cases.push(("gguf tensor of 2^80 elements", gguf(1, 0, &t)));

    // the same files, committed for the Python hostile-input test
    // (python/tests/test_hostile.py); TRACEDUMP_BLESS=1 rewrites them
    let committed = tracedump_tests::workspace_root().join("tests/hostile");
    for (label, bytes) in &cases {
        let ext = if bytes.starts_with(b"GGUF") {
            "gguf"
        } else {
            "tdump"
        };
        let file = committed.join(format!("{}.{ext}", label.replace([' ', '^', ','], "_")));
        if std::env::var_os("TRACEDUMP_BLESS").is_some() {
            std::fs::create_dir_all(&committed).unwrap();
            std::fs::write(&file, bytes).unwrap();
        }
        assert!(
            std::fs::read(&file).is_ok_and(|b| &b == bytes),
            "{} is stale or missing: TRACEDUMP_BLESS=1 cargo test -p tracedump-tests --test allocation_bound",
            file.display()
        );
    }

    let (mut baseline, mut baseline_report) = (0, 0);
    for (label, bytes) in &cases {
        let ext = if bytes.starts_with(b"GGUF") {
            "gguf"
        } else {
            "tdump"
        };
        let path = dir
            .path()
            .join(format!("{}.{ext}", label.replace([' ', '^', ','], "_")));
        std::fs::write(&path, bytes).unwrap();
        let (largest, report, panicked) = exercise(&path);
        assert!(!panicked, "{label}: the reader panicked");
        if *label == "baseline" {
            (baseline, baseline_report) = (largest, report);
            continue;
        }
        // the report page and inspect's table grow with the error messages
        // they quote, which name what the file holds; the verbs hold the
        // file's bytes once more (`verbs` reads it into memory): at most
        // twice the file's size more
        let report_bound = baseline_report + 2 * bytes.len() + 4096;
        assert!(
            report <= report_bound,
            "{label}: the verbs asked for {report} bytes at once ({} byte file, baseline {baseline_report})",
            bytes.len()
        );
        // what a well-formed file of this size costs, or the file itself
        let bound = baseline.max(bytes.len());
        assert!(
            largest <= bound,
            "{label}: an allocation of {largest} bytes was asked for ({} byte file, baseline {baseline})",
            bytes.len()
        );
    }
    assert!(baseline > 0 && baseline < 1 << 20, "baseline {baseline}");
}

/// Open and read every tensor every way (values, bytes, statistics), then
/// verify, as `inspect --stats`, `diff`, `report` and `verify` do; the most
/// bytes live at once on the way above what was live before, and the time.
fn work(path: &Path, every_way: bool) -> (usize, std::time::Duration, trace_reader::VerifyReport) {
    let start = std::time::Instant::now();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let t = Trace::open(path).unwrap();
    for &id in t.tensor_ids() {
        if let Ok(v) = t.view(id) {
            let _ = v.to_f32();
            if every_way {
                let _ = v.to_f64();
                let _ = v.materialize();
                let _ = v.compute_stats();
            }
        }
    }
    let report = t.verify();
    drop(t);
    (
        PEAK.load(Ordering::Relaxed) - before,
        start.elapsed(),
        report,
    )
}

/// The value work of every verb is bounded by the file, not by what it
/// claims (SPEC.md §9: 64 MiB + 64 bytes a byte of file per materialization,
/// a derived tensor rebuilt once per trace, verify's value checks within a
/// budget). Three files of a few KB that made verify, `inspect --stats`,
/// `diff` and `report` take 1-1.5 GB, or run for minutes: a broadcast view
/// of 2^26 values (now refused: over the value limit) and one just under
/// the limit; 64 derived tensors each rebuilt from the one before (every
/// one was rebuilt from the root, with a fresh cache, several times over);
/// broadcast views with stored value checksums (verify materialized them
/// all: 200 of 2^26 values kept it busy for minutes).
#[test]
fn value_work_stays_within_the_budget() {
    let _serial = serial();
    use trace_format::{Layout as View, Op, Stats};
    use trace_writer::{TensorMeta, Writer, WriterOptions};

    let dir = tempfile::tempdir().unwrap();
    let create = |name: &str| {
        Writer::with_options(
            dir.path().join(name),
            Metadata::new(),
            WriterOptions {
                allocate_ahead: false,
                ..WriterOptions::default()
            },
        )
        .unwrap()
    };
    let limit = trace_reader::values::value_limit(4096);
    // [rows, cols] of about `n` values, broadcast from one f32
    let broadcast = |n: u64| View::new(vec![n / 1024, 1024], vec![0, 0], 0).unwrap();
    let crc = |n: u64| {
        let one = 1f32.to_le_bytes();
        let bytes: Vec<u8> = (0..n).flat_map(|_| one).collect();
        Some(trace_format::record::crc32c(&bytes))
    };

    let w = create("broadcast.tdump");
    let s = w.add_storage("one", &1f32.to_le_bytes()).unwrap();
    w.add_view(
        "huge",
        DType::F32,
        s,
        &broadcast(1 << 26),
        TensorMeta::new(),
    )
    .unwrap();
    w.add_view(
        "at_limit",
        DType::F32,
        s,
        &broadcast(limit / 2048 * 1024),
        TensorMeta::new(),
    )
    .unwrap();
    w.finish().unwrap();

    let w = create("derived.tdump");
    let s = w.add_storage("one", &1f32.to_le_bytes()).unwrap();
    let side = 1u64 << 10; // 2^20 values a tensor
    let mut prev = w
        .add_view(
            "root",
            DType::F32,
            s,
            &View::new(vec![side, side], vec![0, 0], 0).unwrap(),
            TensorMeta::new(),
        )
        .unwrap()
        .unwrap();
    for i in 0..64 {
        let meta = TensorMeta::new()
            .parent(prev)
            .op(Op::Permute { axes: vec![1, 0] })
            .op(Op::Cont);
        prev = w
            .add_derived(&format!("d{i}"), DType::F32, &[side, side], meta)
            .unwrap()
            .unwrap();
    }
    w.finish().unwrap();

    let w = create("checksums.tdump");
    let s = w.add_storage("one", &1f32.to_le_bytes()).unwrap();
    let n = 1u64 << 21;
    let stats = Stats {
        bytes_crc32c: crc(n),
        ..Stats::default()
    };
    for i in 0..40 {
        let mut meta = TensorMeta::new();
        meta.stats = Some(stats.clone());
        w.add_view(&format!("v{i}"), DType::F32, s, &broadcast(n), meta)
            .unwrap();
    }
    w.finish().unwrap();

    // (every way for the first: the test runs unoptimized)
    for (name, every_way) in [
        ("broadcast.tdump", true),
        ("derived.tdump", false),
        ("checksums.tdump", false),
    ] {
        let path = dir.path().join(name);
        let file = std::fs::metadata(&path).unwrap().len() as usize;
        let (peak, took, report) = work(&path, every_way);
        let budget = 64 * file + (256 << 20);
        eprintln!(
            "{name}: {file} bytes, peak {} MiB (budget {} MiB), {took:?}, {} values unchecked",
            peak >> 20,
            budget >> 20,
            report.values_unchecked
        );
        assert!(
            peak <= budget,
            "{name}: {peak} bytes live at once, budget {budget}"
        );
        assert!(took.as_secs() < 60, "{name}: {took:?}");
        assert!(report.is_ok(), "{name}: {:?}", report.faults);
    }
    // the view over the limit is refused, naming it; the one under it is read
    let t = Trace::open(dir.path().join("broadcast.tdump")).unwrap();
    let e = t
        .view_by_name("huge")
        .unwrap()
        .to_f32()
        .unwrap_err()
        .to_string();
    assert!(e.contains("`huge`") && e.contains("refused"), "{e}");
    assert_eq!(
        t.view_by_name("at_limit").unwrap().to_f32().unwrap().len() as u64,
        limit / 2048 * 1024
    );
    // the checks past verify's budget are counted, not faults
    let t = Trace::open(dir.path().join("checksums.tdump")).unwrap();
    let r = t.verify();
    assert!(r.value_checksums > 0 && r.values_unchecked > 0, "{r:?}");
    assert_eq!(r.value_checksums + r.values_unchecked, 40);
}
