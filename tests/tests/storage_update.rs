//! STORAGE_UPDATE records (format 1.2, SPEC.md §5.7): a cache recorded
//! once and then only where it changed reads back, at every step, as it
//! was at that step; a reader that does not know the record (1.1) skips it
//! and refuses only the views of it; hostile updates are refused with
//! errors that name the record and the byte.

use trace_format::codec::{encode_storage, DataRef, StorageDesc};
use trace_format::record::RecordKind;
use trace_format::update::{encode_storage_update, StorageUpdateDesc};
use trace_format::{DType, Layout, Metadata};
use trace_reader::Trace;
use trace_writer::{TensorMeta, Writer, WriterOptions};
use tracedump_tests::raw::{tensor_desc, RawTrace};

const ROWS: usize = 16;
const ROW: usize = 8; // f32 values per row

/// The cache after `step`: rows `0..=2 + step` written, row r holding
/// `100·r + step-of-write + i/10` — and at step 2, row 1 rewritten.
fn cache_at(step: usize) -> Vec<f32> {
    let mut c = vec![0f32; ROWS * ROW];
    for s in 0..=step {
        let rows: Vec<usize> = match s {
            0 => vec![0, 1, 2],
            2 => vec![1, 4],
            s => vec![2 + s],
        };
        for r in rows {
            for i in 0..ROW {
                c[r * ROW + i] = (100 * r + s) as f32 + i as f32 / 10.0;
            }
        }
    }
    c
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A view of the first `rows` rows of storage `storage`.
fn rows_view(w: &Writer, storage: u64, rows: usize, step: i64) -> u64 {
    let layout = Layout::contiguous(DType::F32, &[rows as u64, ROW as u64], 0).unwrap();
    w.add_view(
        "cache_k_l0 (view)",
        DType::F32,
        storage,
        &layout,
        TensorMeta::new().step(step).role("k"),
    )
    .unwrap()
    .unwrap()
}

/// A cache written at 3 steps: in full at step 0, then only the rows each
/// step wrote (found by diffing, as the ggml recorder does).
fn three_steps() -> (Vec<u8>, Vec<u64>) {
    let w = Writer::in_memory(Metadata::new(), WriterOptions::default()).unwrap();
    let mut views = Vec::new();
    let mut prev = bytes_of(&cache_at(0));
    let mut storage = w.add_storage("cache_k_l0", &prev).unwrap();
    views.push(rows_view(&w, storage, 3, 0));
    for step in 1..3 {
        let now = bytes_of(&cache_at(step));
        let ranges = trace_format::update::diff_ranges(&prev, &now, 16);
        let payload: Vec<u8> = ranges
            .iter()
            .flat_map(|&(o, n)| now[o as usize..(o + n) as usize].to_vec())
            .collect();
        // only the rows written: one row at step 1, two at step 2 (less
        // the bytes that happen to be equal, as 0 and 300.0's low bytes)
        let rows_written = if step == 1 { 1 } else { 2 };
        assert!(payload.len() <= rows_written * ROW * 4, "step {step}");
        assert!(payload.len() > (rows_written * ROW * 4) / 2, "step {step}");
        storage = w
            .add_storage_update(
                "cache_k_l0",
                storage,
                now.len() as u64,
                ranges,
                &payload,
                Metadata::new(),
            )
            .unwrap();
        views.push(rows_view(&w, storage, 3 + step, step as i64));
        prev = now;
    }
    let (_, bytes) = w.finish_into_bytes().unwrap();
    (bytes, views)
}

#[test]
fn a_cache_updated_at_three_steps_reads_back_as_it_was_at_each() {
    let (bytes, views) = three_steps();
    let trace = Trace::from_bytes("three_steps.tdump", bytes).unwrap();
    assert_eq!(trace.version(), (1, 2));
    assert!(trace.warnings().is_empty(), "{:?}", trace.warnings());
    // out of order, and twice: the cache must not leak one step into another
    for &step in &[2usize, 0, 1, 2, 1, 0] {
        let v = trace.view(views[step]).unwrap();
        let want: Vec<f32> = cache_at(step)[..(3 + step) * ROW].to_vec();
        assert_eq!(v.to_f32().unwrap(), want, "step {step}");
        assert_eq!(v.as_slice::<f32>().unwrap(), &want[..], "step {step}");
        let info = v.info();
        assert_eq!(info.storage_in_file(), step == 0, "step {step}");
        assert_eq!(info.storage_len(), (ROWS * ROW * 4) as u64);
        let (source, at) = trace.storage_source(info).unwrap();
        assert_eq!(
            &source.bytes()[at as usize..at as usize + ROWS * ROW * 4],
            &bytes_of(&cache_at(step))[..],
            "step {step}"
        );
    }
    // step 1 still sees row 1 as step 0 wrote it, step 2 as rewritten
    assert_eq!(trace.view(views[1]).unwrap().to_f32().unwrap()[ROW], 100.0);
    assert_eq!(trace.view(views[2]).unwrap().to_f32().unwrap()[ROW], 102.0);
    let report = trace.verify();
    assert!(report.is_ok(), "{:?}", report.faults);
    assert_eq!(report.tensors, 3);
    // inspect counts the updates as storages and roots their views there
    let opts = trace_tools::inspect::InspectOptions {
        ggml: false,
        tree: true,
        stats: true,
        filter: Default::default(),
    };
    let text = trace_tools::inspect::inspect_text(&trace, &opts, |_, _| {}).unwrap();
    assert!(text.contains("(3 tensors, 3 storages)"), "{text}");
    assert!(
        text.contains("storage #3 cache_k_l0 (512 bytes, an update of an earlier storage)\n└─ #4 cache_k_l0 (view) f32 [4,8]"),
        "{text}"
    );
    // diff of the trace against itself: every step's view agrees
    let mapping = trace_tools::mapping::Mapping::none();
    let tol = trace_tools::compare::Tolerance::default();
    let d = trace_tools::compare::diff(&trace, &trace, &mapping, &tol, |_, _| {}).unwrap();
    assert_eq!(d.pairs.len(), 3);
}

#[test]
fn the_writer_refuses_an_update_that_does_not_fit_its_base() {
    let w = Writer::in_memory(Metadata::new(), WriterOptions::default()).unwrap();
    let s = w.add_storage("c", &[0u8; 32]).unwrap();
    let e = w
        .add_storage_update("c", s, 32, vec![(30, 4)], &[1; 4], Metadata::new())
        .unwrap_err();
    assert!(
        e.to_string().contains("ends past the storage's 32 bytes"),
        "{e}"
    );
    let e = w
        .add_storage_update("c", s, 40, vec![(0, 4)], &[1; 4], Metadata::new())
        .unwrap_err();
    assert!(e.to_string().contains("bytes 32..40"), "{e}");
    let e = w
        .add_storage_update("c", 99, 32, vec![], &[], Metadata::new())
        .unwrap_err();
    assert!(e.to_string().contains("not recorded by this writer"), "{e}");
    // growing with the new bytes given is fine, and views see the length
    let u = w
        .add_storage_update("c", s, 40, vec![(32, 8)], &[5; 8], Metadata::new())
        .unwrap();
    let layout = Layout::contiguous(DType::U8, &[40], 0).unwrap();
    w.add_view("all", DType::U8, u, &layout, TensorMeta::new())
        .unwrap()
        .unwrap();
    let (_, bytes) = w.finish_into_bytes().unwrap();
    let t = Trace::from_bytes("grow.tdump", bytes).unwrap();
    let mut want = vec![0u8; 32];
    want.extend([5u8; 8]);
    assert_eq!(
        t.view_by_name("all").unwrap().as_slice::<u8>().unwrap(),
        &want[..]
    );
}

fn storage(r: &mut RawTrace, bytes: &[u8]) -> u64 {
    r.push(
        RecordKind::Storage,
        "cache",
        &encode_storage(&StorageDesc {
            name: "cache".into(),
            metadata: Metadata::new(),
        }),
        bytes,
    )
}

fn update(base: u64, len: u64, ranges: Vec<(u64, u64)>) -> Vec<u8> {
    encode_storage_update(&StorageUpdateDesc {
        name: "cache".into(),
        base,
        len,
        ranges,
        metadata: Metadata::new(),
    })
}

fn view_of(r: &mut RawTrace, name: &str, storage: u64, n: u64) -> u64 {
    r.tensor(
        &tensor_desc(
            name,
            DType::U8,
            DataRef::Storage { storage, offset: 0 },
            &[n],
            &[1],
        ),
        &[],
    )
}

/// A 1.2 file read under 1.1's rules: a reader that does not know the
/// record kind skips it (a warning), refuses the views of it with an
/// error naming the tensor, and reads everything else. Modelled by giving
/// the update a kind code this reader does not know either: 1.1 treats
/// kind 5 exactly so.
#[test]
fn a_reader_that_does_not_know_updates_skips_them_and_refuses_only_their_views() {
    for code in [5u16, 0x7ff5] {
        let mut r = RawTrace::new();
        let s = storage(&mut r, &[1u8; 16]);
        let old = view_of(&mut r, "before", s, 16);
        let desc = update(s, 16, vec![(4, 2)]);
        let u = if code == 5 {
            r.push(RecordKind::StorageUpdate, "cache", &desc, &[9, 9])
        } else {
            r.push_unknown(code, "cache", &desc, &[9, 9])
        };
        let new = view_of(&mut r, "after", u, 16);
        let other = r.tensor(
            &tensor_desc(
                "inline",
                DType::U8,
                DataRef::Inline { offset: 0 },
                &[3],
                &[1],
            ),
            &[4, 5, 6],
        );
        let t = Trace::from_bytes("compat.tdump", r.finish()).unwrap();
        assert_eq!(t.view(old).unwrap().as_slice::<u8>().unwrap(), &[1u8; 16]);
        assert_eq!(t.view(other).unwrap().as_slice::<u8>().unwrap(), &[4, 5, 6]);
        if code == 5 {
            let mut want = [1u8; 16];
            want[4..6].fill(9);
            assert_eq!(t.view(new).unwrap().as_slice::<u8>().unwrap(), &want);
            assert!(t.verify().is_ok(), "{:?}", t.verify().faults);
            continue;
        }
        assert_eq!(
            t.warnings(),
            [format!(
                "record {u} at byte {} has unknown kind {code}; skipped",
                t.records()[u as usize].offset
            )]
        );
        let e = t.view(new).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "compat.tdump: tensor `after` (record {new}, at byte {}): record {u} is not a storage (kind {code})",
                t.records()[new as usize].offset
            )
        );
        // verify reports the skipped record and the refused view, nothing else
        let faults = t.verify().faults;
        assert_eq!(faults.len(), 2, "{faults:?}");
        assert_eq!(faults[1].record, Some(new));
    }
}

/// Hostile updates: each refused for the views of it, with the record and
/// byte named; nothing else in the file is affected, nothing panics.
#[test]
fn hostile_updates_are_refused_naming_record_and_byte() {
    type Build = fn(&mut RawTrace, u64) -> u64;
    let cases: Vec<(&str, Build, &str)> = vec![
        (
            "range out of bounds",
            |r, s| {
                r.push(
                    RecordKind::StorageUpdate,
                    "cache",
                    &update(s, 16, vec![(15, 2)]),
                    &[1, 2],
                )
            },
            "range 0 (bytes 15..15+2) ends past the storage's 16 bytes",
        ),
        (
            "huge length, tail not in ranges",
            |r, s| {
                r.push(
                    RecordKind::StorageUpdate,
                    "cache",
                    &update(s, 1 << 62, vec![]),
                    &[],
                )
            },
            "bytes 16..4611686018427387904 are past the base's 16 bytes and no range holds them",
        ),
        (
            "huge range",
            |r, s| {
                r.push(
                    RecordKind::StorageUpdate,
                    "cache",
                    &update(s, u64::MAX, vec![(16, u64::MAX - 16)]),
                    &[1],
                )
            },
            "the ranges hold 18446744073709551599 bytes but the payload has 1",
        ),
        (
            "overlapping ranges",
            |r, s| {
                r.push(
                    RecordKind::StorageUpdate,
                    "cache",
                    &update(s, 16, vec![(0, 4), (2, 2)]),
                    &[0; 6],
                )
            },
            "range 1 starts at byte 2, before the end of range 0 (byte 4)",
        ),
        (
            "base is a tensor view",
            |r, s| {
                let v = view_of(r, "v", s, 4);
                r.push(
                    RecordKind::StorageUpdate,
                    "cache",
                    &update(v, 16, vec![]),
                    &[],
                )
            },
            "is a tensor without its own bytes, not a storage an update can start from",
        ),
        (
            "base is the run metadata",
            |r, _| {
                r.push(
                    RecordKind::StorageUpdate,
                    "cache",
                    &update(0, 16, vec![]),
                    &[],
                )
            },
            "record 0 (at byte 64) is not a storage (kind 1)",
        ),
        (
            "base comes later",
            |r, _| {
                r.push(
                    RecordKind::StorageUpdate,
                    "cache",
                    &update(99, 16, vec![]),
                    &[],
                )
            },
            "updates record 99, which does not come before it",
        ),
        (
            "range count past the descriptor",
            |r, s| {
                let mut d = update(s, 16, vec![(0, 1)]);
                d[25..29].copy_from_slice(&u32::MAX.to_le_bytes());
                r.push(RecordKind::StorageUpdate, "cache", &d, &[1])
            },
            "count 4294967295 needs more than",
        ),
    ];
    for (label, build, want) in cases {
        let mut r = RawTrace::new();
        let s = storage(&mut r, &[1u8; 16]);
        let u = build(&mut r, s);
        let v = view_of(&mut r, "after", u, 4);
        let t = Trace::from_bytes("hostile.tdump", r.finish()).unwrap();
        let e = t.view(v).unwrap_err().to_string();
        assert!(e.contains(want), "{label}: {e}");
        assert!(
            e.starts_with("hostile.tdump: tensor `after`"),
            "{label}: {e}"
        );
        assert!(e.contains("at byte"), "{label}: {e}");
        let faults = t.verify().faults;
        assert!(
            faults
                .iter()
                .any(|f| f.record == Some(u) && f.message.contains(want)),
            "{label}: {faults:?}"
        );
    }
}

/// A chain of 5000 updates, each one byte: read at its end and in the
/// middle without recursion, and the bytes are every update applied.
#[test]
fn a_long_chain_reads_back_without_recursion() {
    let mut r = RawTrace::new();
    let s = storage(&mut r, &[0u8; 64]);
    let mut base = s;
    let mut mid = 0;
    for i in 0..5000u64 {
        base = r.push(
            RecordKind::StorageUpdate,
            "cache",
            &update(base, 64, vec![(i % 64, 1)]),
            &[(i % 251) as u8 + 1],
        );
        if i == 2500 {
            mid = view_of(&mut r, "mid", base, 64);
        }
    }
    let end = view_of(&mut r, "end", base, 64);
    let t = Trace::from_bytes("chain.tdump", r.finish()).unwrap();
    let expect = |upto: u64| {
        let mut b = [0u8; 64];
        for i in 0..=upto {
            b[(i % 64) as usize] = (i % 251) as u8 + 1;
        }
        b
    };
    assert_eq!(
        t.view(end).unwrap().as_slice::<u8>().unwrap(),
        &expect(4999)
    );
    assert_eq!(
        t.view(mid).unwrap().as_slice::<u8>().unwrap(),
        &expect(2500)
    );
    assert!(t.verify().is_ok());
}

/// Files with updates in the fuzz corpus (`fuzz/corpus/trace_bytes` and
/// `verbs`, replayed by `fuzz_corpus.rs` in `make test`): a cache updated
/// at three steps, a chain, and each hostile update above. Written by
/// `TRACEDUMP_BLESS=1`; otherwise checked to be what this test builds.
#[test]
fn the_fuzz_corpus_holds_files_with_updates() {
    let mut files: Vec<(String, Vec<u8>)> = vec![("three_steps".into(), three_steps().0)];
    let mut r = RawTrace::new();
    let s = storage(&mut r, &[0u8; 64]);
    let mut base = s;
    for i in 0..8u64 {
        base = r.push(
            RecordKind::StorageUpdate,
            "cache",
            &update(
                base,
                64 + 8 * (i % 2),
                vec![(i * 3, 2), (64, 8 * (i % 2))]
                    .into_iter()
                    .filter(|r| r.1 > 0)
                    .collect(),
            ),
            &vec![i as u8 + 1; 2 + 8 * (i % 2) as usize],
        );
        view_of(&mut r, "cache (view)", base, 64);
    }
    files.push(("chain".into(), r.finish()));
    for (i, ranges) in [
        vec![(15u64, 2u64)],
        vec![(0, 4), (2, 2)],
        vec![(u64::MAX, 2)],
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = RawTrace::new();
        let s = storage(&mut r, &[1u8; 16]);
        let n: u64 = ranges.iter().map(|x| x.1).sum();
        let u = r.push(
            RecordKind::StorageUpdate,
            "cache",
            &update(s, 16, ranges),
            &vec![2u8; n as usize],
        );
        view_of(&mut r, "after", u, 4);
        files.push((format!("hostile_{i}"), r.finish()));
    }
    let root = tracedump_tests::workspace_root().join("fuzz/corpus");
    for target in ["trace_bytes", "verbs"] {
        for (label, bytes) in &files {
            let path = root.join(target).join(format!("storage_update_{label}"));
            if std::env::var_os("TRACEDUMP_BLESS").is_some() {
                std::fs::write(&path, bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (TRACEDUMP_BLESS=1 writes it)", path.display())
            });
            assert!(
                committed == *bytes,
                "{} differs from what this test builds",
                path.display()
            );
            tracedump_tests::fuzzing::trace_bytes(bytes);
        }
    }
}
