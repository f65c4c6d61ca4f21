//! Torn files, flipped bits, hostile records, repeated names, quantized views,
//! concurrency: the reader never lies and never crashes.

#![forbid(unsafe_code)]

use std::sync::Arc;

use trace_format::codec::{encode_storage, encode_tensor, DataRef, StorageDesc};
use trace_format::layout::ggml;
use trace_format::record::{RecordKind, Trailer};
use trace_format::{DType, Layout, Metadata, Op};
use trace_reader::{ReaderError, Trace};
use trace_writer::{Mode, TensorMeta, WhenFull, Writer, WriterOptions};

/// A small trace with every record kind: storage, views, own bytes, stats only.
fn small_trace() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.tdump");
    let w = Writer::create(&path, Metadata::new().with("engine", "test")).unwrap();
    let data: Vec<u8> = (0..96u32)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let s = w.add_storage("cache", &data).unwrap();
    let full = Layout::contiguous(DType::F32, &[4, 2, 3, 4], 0).unwrap();
    let c = w
        .add_view("cache", DType::F32, s, &full, TensorMeta::new().layer(0))
        .unwrap()
        .unwrap();
    let p = full.permute(&[0, 2, 1, 3]).unwrap();
    w.add_view(
        "k-0",
        DType::F32,
        s,
        &p,
        TensorMeta::new().layer(0).parent(c).op(Op::Permute {
            axes: vec![0, 2, 1, 3],
        }),
    )
    .unwrap();
    w.add_tensor(
        "q-0",
        DType::F16,
        &[2, 3],
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        TensorMeta::new().step(1),
    )
    .unwrap();
    w.add_stats_of(
        "logits",
        DType::F32,
        &[2],
        &[0, 0, 128, 63, 0, 0, 0, 192],
        TensorMeta::new(),
    )
    .unwrap();
    w.finish().unwrap();
    std::fs::read(&path).unwrap()
}

/// Every tensor's name and materialized bytes, in order.
fn contents(t: &Trace) -> Vec<(u64, String, Vec<u8>)> {
    t.tensor_ids()
        .iter()
        .map(|&id| {
            let v = t.view(id).unwrap();
            let bytes = if v.info().is_stats_only() {
                vec![]
            } else {
                v.materialize().unwrap()
            };
            (id, v.info().name.clone(), bytes)
        })
        .collect()
}

#[test]
fn truncated_at_every_byte_yields_exactly_the_complete_records() {
    let full = small_trace();
    let whole = Trace::from_bytes("full", full.clone()).unwrap();
    assert!(whole.is_finished());
    assert!(whole.verify().is_ok(), "{:?}", whole.verify().faults);
    let all = contents(&whole);
    let ends: Vec<u64> = whole
        .records()
        .iter()
        .map(|r| r.offset + 32 + r.body_len)
        .collect();
    for cut in 0..full.len() {
        let res = Trace::from_bytes(format!("cut{cut}"), full[..cut].to_vec());
        if cut < 64 {
            assert!(
                matches!(res, Err(ReaderError::NotATrace { .. })),
                "cut {cut}"
            );
            continue;
        }
        let t = res.unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert!(!t.is_finished(), "cut {cut}");
        let complete = ends.iter().filter(|&&e| e <= cut as u64).count();
        assert_eq!(t.records().len(), complete, "cut {cut}");
        let expect: Vec<_> = all
            .iter()
            .filter(|(id, _, _)| (*id as usize) < complete)
            .cloned()
            .collect();
        assert_eq!(contents(&t), expect, "cut {cut}");
        // a torn file is a fault for verify, and says where
        let rep = t.verify();
        assert!(!rep.is_ok());
        if let Some(tail) = t.torn_tail() {
            assert!(
                tail.offset <= cut as u64 && tail.offset + tail.bytes == cut as u64,
                "cut {cut}: {tail:?}"
            );
        }
    }
}

#[test]
fn every_flipped_bit_is_caught() {
    let full = small_trace();
    let mut missed = Vec::new();
    for pos in 0..full.len() {
        for bit in [0u8, 3, 7] {
            let mut b = full.clone();
            b[pos] ^= 1 << bit;
            match Trace::from_bytes("flip", b) {
                Err(_) => {}
                Ok(t) => {
                    // reading must never panic, whatever verify says
                    for &id in t.tensor_ids() {
                        if let Ok(v) = t.view(id) {
                            let _ = v.materialize();
                            let _ = v.to_f64();
                        }
                    }
                    if t.verify().is_ok() {
                        missed.push((pos, bit));
                    }
                }
            }
        }
    }
    assert!(missed.is_empty(), "undetected flips at {missed:?}");
}

use tracedump_tests::raw::{tensor_desc as desc, RawTrace};

#[test]
fn hostile_views_are_clear_errors() {
    let mut r = RawTrace::new();
    let s = r.push(
        RecordKind::Storage,
        "buf",
        &encode_storage(&StorageDesc {
            name: "buf".into(),
            metadata: Metadata::new(),
        }),
        &[7u8; 64],
    );
    let ok = r.tensor(
        &desc(
            "ok",
            DType::F32,
            DataRef::Storage {
                storage: s,
                offset: 0,
            },
            &[4, 4],
            &[16, 4],
        ),
        &[],
    );
    let past_end = r.tensor(
        &desc(
            "past_end",
            DType::F32,
            DataRef::Storage {
                storage: s,
                offset: 4,
            },
            &[4, 4],
            &[16, 4],
        ),
        &[],
    );
    let negative = r.tensor(
        &desc(
            "negative",
            DType::F32,
            DataRef::Storage {
                storage: s,
                offset: 0,
            },
            &[2, 4],
            &[-16, 4],
        ),
        &[],
    );
    let overflow = r.tensor(
        &desc(
            "overflow",
            DType::F32,
            DataRef::Storage {
                storage: s,
                offset: 0,
            },
            &[1 << 40, 1 << 40],
            &[4, 4],
        ),
        &[],
    );
    let huge_stride = r.tensor(
        &desc(
            "huge_stride",
            DType::F32,
            DataRef::Storage {
                storage: s,
                offset: u64::MAX,
            },
            &[3],
            &[i64::MAX],
        ),
        &[],
    );
    let forward = r.tensor(
        &desc(
            "forward_ref",
            DType::F32,
            DataRef::Storage {
                storage: 99,
                offset: 0,
            },
            &[1],
            &[4],
        ),
        &[],
    );
    let not_storage = r.tensor(
        &desc(
            "not_storage",
            DType::F32,
            DataRef::Storage {
                storage: ok,
                offset: 0,
            },
            &[1],
            &[4],
        ),
        &[],
    );
    let mut unknown = encode_tensor(&desc(
        "unknown_dtype",
        DType::F32,
        DataRef::Inline { offset: 0 },
        &[1],
        &[4],
    ));
    // the dtype id follows the name (4-byte length + 13 bytes)
    unknown[17..19].copy_from_slice(&999u16.to_le_bytes());
    let unknown_id = r.push(RecordKind::Tensor, "", &unknown, &[0; 4]);
    let bytes = r.finish();
    let t = Trace::from_bytes("hostile.tdump", bytes).unwrap();
    assert!(t.view(ok).is_ok());
    let err = |id: u64| {
        t.view(id)
            .err()
            .unwrap_or_else(|| panic!("record {id} accepted"))
            .to_string()
    };
    let e = err(past_end);
    assert!(
        e.contains("hostile.tdump")
            && e.contains("past_end")
            && e.contains("4..68")
            && e.contains("64 bytes"),
        "{e}"
    );
    let e = err(negative);
    assert!(e.contains("negative") && e.contains("-16..16"), "{e}");
    assert!(err(overflow).contains("overflows 64 bits"));
    assert!(err(huge_stride).contains("huge_stride"));
    assert!(err(forward).contains("does not come before it"));
    assert!(err(not_storage).contains("not a storage"));
    let e = err(unknown_id);
    assert!(
        e.contains("unknown dtype id 999") && e.contains("unknown_dtype") && e.contains("byte"),
        "{e}"
    );
    let rep = t.verify();
    assert_eq!(rep.faults.len(), 7, "{:#?}", rep.faults);
}

#[test]
fn hostile_footers_fall_back_to_scanning() {
    let good = small_trace();
    let n = good.len();
    // a trailer that points past the end, with a valid checksum
    let mut b = good.clone();
    let t = Trailer {
        footer_offset: 1 << 40,
        record_count: u64::MAX,
    };
    b[n - 32..].copy_from_slice(&t.encode());
    let tr = Trace::from_bytes("bad-trailer", b).unwrap();
    assert!(!tr.is_finished() && !tr.warnings().is_empty());
    assert_eq!(tr.len(), 4);
    assert!(!tr.verify().is_ok());
    // garbage, and an empty file
    assert!(Trace::from_bytes("junk", vec![0xff; 4096]).is_err());
    assert!(Trace::from_bytes("empty", vec![]).is_err());
}

#[test]
fn names_are_not_identities() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.tdump");
    let w = Writer::create(&path, Metadata::new()).unwrap();
    let mut ids = vec![];
    for (i, op) in ["MUL_MAT", "RESHAPE", "ROPE"].iter().enumerate() {
        let v = [i as u8; 4];
        ids.push(
            w.add_tensor(
                "Qcur-0",
                DType::F32,
                &[1],
                &v,
                TensorMeta::new().engine_op("ggml", op, &[]),
            )
            .unwrap()
            .unwrap(),
        );
    }
    w.add_tensor("node_21", DType::F32, &[1], &[0; 4], TensorMeta::new())
        .unwrap();
    w.finish().unwrap();
    let t = Trace::open(&path).unwrap();
    assert_eq!(t.find("Qcur-0"), &ids[..]);
    assert_eq!(t.get("Qcur-0").unwrap().id, ids[0]);
    assert_eq!(t.get("Qcur-0#2").unwrap().id, ids[2]);
    assert_eq!(
        t.get("Qcur-0#2")
            .unwrap()
            .lineage
            .engine_op
            .as_ref()
            .unwrap()
            .op,
        "ROPE"
    );
    assert_eq!(t.occurrence(ids[1]), Some((1, 3)));
    assert!(t.get("Qcur-0#3").is_err());
    assert!(matches!(
        t.get("missing"),
        Err(ReaderError::NotFound { .. })
    ));
}

#[test]
fn q8_0_view_with_half_block_heads() {
    // llama.cpp q8_0 K cache, head_dim 16: ne=[16,2,256,1], nb=[34,17,34,8704]
    let blocks: Vec<u8> = (0..8704u32).map(|i| (i % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.tdump");
    let w = Writer::create(&path, Metadata::new()).unwrap();
    let s = w.add_storage("cache_k_l0", &blocks).unwrap();
    let k = ggml::to_canonical(&[16, 2, 256, 1], &[34, 17, 34, 8704], 0).unwrap();
    let meta = TensorMeta::new()
        .role("k_quant")
        .ggml_layout(&[16, 2, 256, 1], &[34, 17, 34, 8704]);
    let id = w
        .add_view("k-0", DType::Q8_0, s, &k, meta)
        .unwrap()
        .unwrap();
    let head1 = k.view(17, &[1, 256, 1, 16], &[8704, 34, 17, 34]).unwrap();
    w.add_view("k-0-head1", DType::Q8_0, s, &head1, TensorMeta::new())
        .unwrap()
        .unwrap();
    let bad = k.view(3, &[1, 256, 1, 16], &[8704, 34, 17, 34]).unwrap();
    let e = w
        .add_view("bad", DType::Q8_0, s, &bad, TensorMeta::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad") && e.contains("whole number of elements"),
        "{e}"
    );
    w.finish().unwrap();
    let t = Trace::open(&path).unwrap();
    let info = t.tensor(id).unwrap();
    assert_eq!(info.element_strides(), Some(vec![8192, 32, 16, 1]));
    assert!(info.is_contiguous());
    assert_eq!(t.view(id).unwrap().contiguous_bytes().unwrap(), &blocks[..]);
    let h1 = t.get("k-0-head1").unwrap();
    assert_eq!(h1.layout.element_layout(DType::Q8_0).unwrap().offset, 16);
    assert!(!h1.is_contiguous());
    // values: the blocks dequantized, then indexed in elements; head 1 of
    // every position is the second half of that position's block
    // (compared as bits: some of these arbitrary scales are NaN)
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let all = trace_quant::dequantize_to_vec(DType::Q8_0, &blocks).unwrap();
    assert!(bits(&t.view(id).unwrap().to_f32().unwrap()) == bits(&all));
    let want: Vec<f32> = (0..256)
        .flat_map(|p| all[p * 32 + 16..p * 32 + 32].to_vec())
        .collect();
    assert!(bits(&t.view(h1.id).unwrap().to_f32().unwrap()) == bits(&want));
    // raw blocks of a half-block view cannot be copied as blocks: a clear error
    let e = t
        .view(h1.id)
        .unwrap()
        .materialize()
        .unwrap_err()
        .to_string();
    assert!(e.contains("q8_0"), "{e}");
}

/// The values thread `t` records as its `i`-th tensor: 16 u32, or every
/// 2500th a 1.5 MiB tensor (streamed by the sink while it is checksummed).
fn thread_tensor(t: u32, i: u32) -> Vec<u32> {
    let n = if i % 2500 == 1234 { 3 << 17 } else { 16 };
    (0..n)
        .map(|k| t.wrapping_mul(1_000_003) ^ i.wrapping_mul(65_537) ^ k)
        .collect()
}

#[test]
fn eight_threads_share_one_writer() {
    const THREADS: u32 = 8;
    const EACH: u32 = 10_000;
    for mode in [
        Mode::Sync,
        Mode::Background {
            budget_bytes: 1 << 20,
            when_full: WhenFull::Block,
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mt.tdump");
        let w = Arc::new(
            Writer::with_options(
                &path,
                Metadata::new(),
                WriterOptions {
                    mode,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let v = thread_tensor(t, i);
                        w.add_tensor(
                            &format!("t{t}-{i}"),
                            DType::U32,
                            &[v.len() as u64],
                            bytemuck_bytes(&v),
                            TensorMeta::new().step(i64::from(i)).layer(i64::from(t)),
                        )
                        .unwrap()
                        .unwrap();
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        Arc::try_unwrap(w).unwrap().finish().unwrap();
        let t = Trace::open(&path).unwrap();
        assert_eq!(t.len(), (THREADS * EACH) as usize, "{mode:?}");
        let rep = t.verify();
        assert!(rep.is_ok(), "{:?}", rep.faults);
        // every tensor once, whole, with its own values: none interleaved or torn
        let mut seen = vec![false; (THREADS * EACH) as usize];
        for &id in t.tensor_ids() {
            let info = t.tensor(id).unwrap();
            let (tt, i) = info.name[1..].split_once('-').unwrap();
            let (tt, i): (u32, u32) = (tt.parse().unwrap(), i.parse().unwrap());
            assert_eq!(
                (info.layer, info.step),
                (Some(i64::from(tt)), Some(i64::from(i)))
            );
            let slot = &mut seen[(tt * EACH + i) as usize];
            assert!(!*slot, "{} twice", info.name);
            *slot = true;
            let v = t.view(id).unwrap();
            assert_eq!(
                v.as_slice::<u32>().unwrap(),
                &thread_tensor(tt, i)[..],
                "{}",
                info.name
            );
        }
        assert!(seen.iter().all(|&x| x));
    }
}

fn bytemuck_bytes(v: &[u32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// The child's part: write the shard `TRACEDUMP_SHARD` as rank `TRACEDUMP_RANK`.
fn write_shard(path: &std::ffi::OsStr) {
    let rank: u32 = std::env::var("TRACEDUMP_RANK").unwrap().parse().unwrap();
    let w = Writer::create(
        path,
        Metadata::new()
            .with("rank", i64::from(rank))
            .with("world_size", 2i64),
    )
    .unwrap();
    for i in 0..5000 {
        let v = thread_tensor(rank, i);
        w.add_tensor(
            &format!("t{rank}-{i}"),
            DType::U32,
            &[v.len() as u64],
            bytemuck_bytes(&v),
            TensorMeta::new().step(i64::from(i)),
        )
        .unwrap();
    }
    w.finish().unwrap();
}

/// Two processes (this test binary, run again as the child) write two
/// shards at the same time; each file holds exactly its own records.
#[test]
fn two_processes_write_two_shards_at_once() {
    if let Some(path) = std::env::var_os("TRACEDUMP_SHARD") {
        return write_shard(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2u32)
        .map(|rank| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "two_processes_write_two_shards_at_once",
                    "--nocapture",
                ])
                .env(
                    "TRACEDUMP_SHARD",
                    dir.path().join(format!("rank{rank}.tdump")),
                )
                .env("TRACEDUMP_RANK", rank.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    for rank in 0..2u32 {
        let t = Trace::open(dir.path().join(format!("rank{rank}.tdump"))).unwrap();
        assert!(t.verify().is_ok());
        assert_eq!(t.len(), 5000);
        assert_eq!(
            t.run_metadata().get("rank"),
            Some(&trace_format::Value::I64(i64::from(rank)))
        );
        for &id in t.tensor_ids() {
            let info = t.tensor(id).unwrap();
            let i: u32 = info.name.split_once('-').unwrap().1.parse().unwrap();
            assert!(info.name.starts_with(&format!("t{rank}-")));
            assert_eq!(
                t.view(id).unwrap().as_slice::<u32>().unwrap(),
                &thread_tensor(rank, i)[..]
            );
        }
    }
}

#[test]
fn background_drop_mode_counts_and_never_grows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drop.tdump");
    let opts = WriterOptions {
        mode: Mode::Background {
            budget_bytes: 64 << 10,
            when_full: WhenFull::Drop,
        },
        ..Default::default()
    };
    let w = Writer::with_options(&path, Metadata::new(), opts).unwrap();
    let big = vec![1u8; 32 << 10];
    let mut kept = vec![];
    for i in 0..500 {
        if let Some(id) = w
            .add_tensor(
                &format!("x{i}"),
                DType::U8,
                &[big.len() as u64],
                &big,
                TensorMeta::new(),
            )
            .unwrap()
        {
            kept.push(id);
        }
    }
    let s = w.finish().unwrap();
    assert_eq!(s.records as usize, kept.len() + 1);
    assert_eq!(s.dropped as usize, 500 - kept.len());
    let t = Trace::open(&path).unwrap();
    assert_eq!(t.tensor_ids(), &kept[..]);
    assert!(t.verify().is_ok());
}

#[test]
fn dropped_without_finish_is_readable() {
    for mode in [
        Mode::Sync,
        Mode::Background {
            budget_bytes: 1 << 20,
            when_full: WhenFull::Block,
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nofinish.tdump");
        {
            let w = Writer::with_options(
                &path,
                Metadata::new(),
                WriterOptions {
                    mode,
                    ..Default::default()
                },
            )
            .unwrap();
            for i in 0..100u8 {
                w.add_tensor(
                    &format!("x{i}"),
                    DType::U8,
                    &[3],
                    &[i, i, i],
                    TensorMeta::new(),
                )
                .unwrap();
            }
        }
        let t = Trace::open(&path).unwrap();
        assert!(!t.is_finished());
        assert_eq!(t.torn_tail(), None);
        assert_eq!(t.len(), 100);
        assert_eq!(
            t.view_by_name("x42").unwrap().contiguous_bytes().unwrap(),
            &[42, 42, 42]
        );
    }
}

#[test]
fn lineage_replay_catches_a_lie() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lie.tdump");
    let w = Writer::create(&path, Metadata::new()).unwrap();
    let s = w.add_storage("buf", &[0u8; 96]).unwrap();
    let full = Layout::contiguous(DType::F32, &[4, 6], 0).unwrap();
    let c = w
        .add_view("full", DType::F32, s, &full, TensorMeta::new())
        .unwrap()
        .unwrap();
    // recorded as transpose(0,1) but laid out as the untransposed reshape
    let wrong = full.reshape(DType::F32, &[6, 4]).unwrap();
    w.add_view(
        "t",
        DType::F32,
        s,
        &wrong,
        TensorMeta::new().parent(c).op(Op::Transpose { a: 0, b: 1 }),
    )
    .unwrap();
    w.finish().unwrap();
    let rep = Trace::open(&path).unwrap().verify();
    assert_eq!(rep.faults.len(), 1, "{:?}", rep.faults);
    assert!(
        rep.faults[0].message.contains("byte strides [4, 24]"),
        "{}",
        rep.faults[0]
    );
}

#[test]
fn large_payloads_are_streamed_and_checked() {
    for mode in [
        Mode::Sync,
        Mode::Background {
            budget_bytes: 16 << 20,
            when_full: WhenFull::Block,
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large.tdump");
        let w = Writer::with_options(
            &path,
            Metadata::new(),
            WriterOptions {
                mode,
                ..Default::default()
            },
        )
        .unwrap();
        let big: Vec<u8> = (0..(3u32 << 20) + 12)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for i in 0..4 {
            w.add_tensor(
                &format!("big{i}"),
                DType::U8,
                &[big.len() as u64],
                &big,
                TensorMeta::new(),
            )
            .unwrap();
            w.add_tensor(
                &format!("small{i}"),
                DType::U8,
                &[3],
                &[1, 2, 3],
                TensorMeta::new(),
            )
            .unwrap();
        }
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let t = Trace::from_bytes("large", bytes.clone()).unwrap();
        assert!(t.verify().is_ok(), "{:?}", t.verify().faults);
        assert_eq!(
            t.view_by_name("big3").unwrap().contiguous_bytes().unwrap(),
            &big[..]
        );
        // a writer killed after the payload but before the header went in place:
        // the record's header is still zero, so the scan ends there
        let big2 = t.records()[t.find("big2")[0] as usize];
        let mut torn = bytes[..(big2.offset + 32 + big2.body_len) as usize].to_vec();
        torn[big2.offset as usize..big2.offset as usize + 32].fill(0);
        let t = Trace::from_bytes("torn", torn).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t.torn_tail().unwrap().offset, big2.offset);
    }
}

/// Thousands of single-bit flips at sampled positions of real traces (the
/// golden files written by the Python writer from torch, and the spec
/// example): each is caught by `verify()` — headers, descriptors, data,
/// padding and footer alike — and reading never panics.
#[test]
fn sampled_bit_flips_in_real_traces_are_caught() {
    let root = tracedump_tests::workspace_root().join("tests/golden");
    let mut rng = tracedump_tests::Rng::new(2026);
    let mut flips = 0;
    for name in [
        "py/attention.tdump",
        "py/mixed_kv.tdump",
        "py/tensors.tdump",
        "spec_example.tdump",
    ] {
        let full = std::fs::read(root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(Trace::from_bytes(name, full.clone())
            .unwrap()
            .verify()
            .is_ok());
        let mut missed = Vec::new();
        for _ in 0..1500 {
            let pos = (rng.next_u64() % full.len() as u64) as usize;
            let bit = (rng.next_u64() % 8) as u8;
            let mut b = full.clone();
            b[pos] ^= 1 << bit;
            flips += 1;
            if let Ok(t) = Trace::from_bytes(name, b) {
                for &id in t.tensor_ids() {
                    if let Ok(v) = t.view(id) {
                        let _ = v.to_f64();
                    }
                }
                if t.verify().is_ok() {
                    missed.push((pos, bit));
                }
            }
        }
        assert!(missed.is_empty(), "{name}: undetected flips at {missed:?}");
    }
    assert_eq!(flips, 6000);
}

/// Metadata nested deeper than a reader accepts (SPEC.md §4) is refused by
/// the writer, naming the key path, for run, storage and tensor metadata;
/// at the limit it is written and read back.
#[test]
fn writer_refuses_metadata_a_reader_would_refuse() {
    use trace_format::codec::MAX_VALUE_DEPTH;
    use trace_format::Value;
    let nest = |levels: usize| {
        let mut v = Value::I64(7);
        for _ in 0..levels {
            v = Value::Map(vec![("in".into(), v)]);
        }
        v
    };
    let dir = tempfile::tempdir().unwrap();
    let e = Writer::create(
        dir.path().join("run.tdump"),
        Metadata::new().with("deep", nest(MAX_VALUE_DEPTH + 1)),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(&format!("deep{}", ".in".repeat(MAX_VALUE_DEPTH + 1))),
        "{e}"
    );
    let path = dir.path().join("t.tdump");
    let w = Writer::create(&path, Metadata::new()).unwrap();
    let mut meta = TensorMeta::new();
    meta.metadata = Metadata::new().with("m", nest(MAX_VALUE_DEPTH + 1));
    let e = w
        .add_tensor("x", DType::F32, &[1], &[0; 4], meta)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("`x`: metadata `m.in"), "{e}");
    let e = w
        .add_storage_with("s", &[0; 4], Metadata::new().with("m", nest(100)))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("`s`: metadata `m.in"), "{e}");
    // at the limit: written, and read back
    let mut meta = TensorMeta::new();
    meta.metadata = Metadata::new().with("m", nest(MAX_VALUE_DEPTH));
    w.add_tensor("y", DType::F32, &[1], &[0; 4], meta).unwrap();
    w.finish().unwrap();
    let t = Trace::open(&path).unwrap();
    assert_eq!(
        t.get("y").unwrap().metadata.get("m"),
        Some(&nest(MAX_VALUE_DEPTH))
    );
}
