//! Writer → file → reader round trips over random dtypes, shapes, strides,
//! offsets and permutations, non-contiguous included.

// deny, not forbid: ndarray's `s!` macro allows unsafe_code inside itself
#![deny(unsafe_code)]

use proptest::prelude::*;
use trace_format::{DType, Layout, Metadata, Op, Value};
use trace_reader::Trace;
use trace_writer::{TensorMeta, Writer};

/// The row-major gather a reader must perform, written out naively.
fn reference_gather(storage: &[u8], layout: &Layout, size: usize) -> Vec<u8> {
    let n = layout.numel() as usize;
    let mut out = Vec::with_capacity(n * size);
    for flat in 0..n {
        let mut rem = flat;
        let mut off = layout.storage_offset() as i64;
        for d in (0..layout.ndim()).rev() {
            let ext = layout.shape()[d] as usize;
            off += (rem % ext) as i64 * layout.byte_strides()[d];
            rem /= ext;
        }
        out.extend_from_slice(&storage[off as usize..off as usize + size]);
    }
    out
}

const SCALARS: &[DType] = &[
    DType::Bool,
    DType::U8,
    DType::I8,
    DType::U16,
    DType::I16,
    DType::U32,
    DType::I32,
    DType::U64,
    DType::I64,
    DType::F16,
    DType::BF16,
    DType::F32,
    DType::F64,
    DType::F8_E4M3,
    DType::F8_E5M2,
];

#[derive(Debug, Clone)]
struct Case {
    dtype: DType,
    shape: Vec<u64>,
    strides_el: Vec<i64>,
    perm: Vec<u32>,
    slack: u64,
    as_view: bool,
    seed: u8,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..SCALARS.len(),
        prop::collection::vec(0u64..5, 0..5),
        any::<bool>(),
        0u64..16,
        any::<u8>(),
    )
        .prop_flat_map(|(di, shape, as_view, slack, seed)| {
            let nd = shape.len();
            let perm = Just((0..nd as u32).collect::<Vec<_>>()).prop_shuffle();
            let strides = prop::collection::vec(-40i64..40, nd);
            (
                Just(SCALARS[di]),
                Just(shape),
                strides,
                perm,
                Just(slack),
                Just(as_view),
                Just(seed),
            )
        })
        .prop_map(
            |(dtype, shape, strides_el, perm, slack, as_view, seed)| Case {
                dtype,
                shape,
                strides_el,
                perm,
                slack,
                as_view,
                seed,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_layout_round_trips(c in case()) {
        let size = c.dtype.element_bytes().unwrap() as i64;
        let strides: Vec<i64> = c.strides_el.iter().map(|s| s * size).collect();
        // place element (0,..,0) so that the lowest touched byte is `slack`
        let mut low = 0i64;
        let mut high = 0i64;
        for (&n, &s) in c.shape.iter().zip(&strides) {
            if n > 0 {
                let r = (n as i64 - 1) * s;
                if r < 0 { low += r } else { high += r }
            }
        }
        let offset = (c.slack as i64 - low) as u64;
        let storage_len = (offset as i64 + high + size) as usize + c.slack as usize;
        let storage: Vec<u8> = (0..storage_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(c.seed)).collect();
        let base = Layout::new(c.shape.clone(), strides, offset).unwrap();
        let layout = base.permute(&c.perm).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tdump");
        let w = Writer::create(&path, Metadata::new().with("case", format!("{c:?}"))).unwrap();
        let meta = TensorMeta::new().layer(3).step(-1).role("x").meta("k", Value::List(vec![1i64.into()]));
        let id = if c.as_view {
            let s = w.add_storage("buf", &storage).unwrap();
            let base_id = w.add_view("base", c.dtype, s, &base, TensorMeta::new()).unwrap().unwrap();
            let meta = meta.parent(base_id).op(Op::Permute { axes: c.perm.clone() });
            w.add_view("t", c.dtype, s, &layout, meta).unwrap().unwrap()
        } else {
            w.add_strided("t", c.dtype, &layout, &storage, meta).unwrap().unwrap()
        };
        w.finish().unwrap();

        let trace = Trace::open(&path).unwrap();
        let rep = trace.verify();
        prop_assert!(rep.is_ok(), "{:?}", rep.faults);
        let t = trace.get("t").unwrap();
        prop_assert_eq!(t.id, id);
        prop_assert_eq!(&t.layout, &layout);
        prop_assert_eq!(t.dtype, c.dtype);
        prop_assert_eq!((t.layer, t.step, t.role.as_deref()), (Some(3), Some(-1), Some("x")));
        let v = trace.view(id).unwrap();
        prop_assert_eq!(v.storage_bytes(), &storage[..]);
        let expect = reference_gather(&storage, &layout, size as usize);
        prop_assert_eq!(v.materialize().unwrap(), expect.clone());
        // converted values agree with the dtype's decoding of the same bytes
        let f64s = v.to_f64().unwrap();
        let want: Vec<f64> = expect.chunks(size as usize).map(|b| c.dtype.decode_f64(b).unwrap()).collect();
        prop_assert_eq!(f64s.len(), want.len());
        for (a, b) in f64s.iter().zip(&want) {
            prop_assert!(a == b || (a.is_nan() && b.is_nan()));
        }
        if c.dtype == DType::F32 && c.slack % 4 != 0 && layout.numel() > 0 {
            // a misaligned start cannot be an &[f32]: a clear error, values still readable above
            prop_assert!(v.array::<f32>().is_err());
        } else if c.dtype == DType::F32 {
            let a = v.array::<f32>().unwrap();
            let flat: Vec<f32> = a.iter().copied().collect();
            let want: Vec<f32> = expect.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            prop_assert_eq!(flat.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            let strides_el: Vec<isize> = layout.shape().iter().zip(layout.byte_strides()).map(|(&n, &s)| if n > 1 { (s / 4) as isize } else { 0 }).collect();
            let got: Vec<isize> = layout.shape().iter().zip(a.strides()).map(|(&n, &s)| if n > 1 { s } else { 0 }).collect();
            if layout.numel() > 0 {
                prop_assert_eq!(got, strides_el);
            }
        }
    }

    #[test]
    fn contiguous_tensors_round_trip(di in 0..SCALARS.len(), shape in prop::collection::vec(0u64..6, 0..4), seed in any::<u8>(), background in any::<bool>()) {
        let dtype = SCALARS[di];
        let n = trace_format::layout::numel(&shape).unwrap();
        let bytes: Vec<u8> = (0..dtype.bytes_for(n).unwrap()).map(|i| (i as u8) ^ seed).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.tdump");
        let opts = trace_writer::WriterOptions {
            mode: if background { trace_writer::Mode::Background { budget_bytes: 1 << 16, when_full: trace_writer::WhenFull::Block } } else { trace_writer::Mode::Sync },
            ..Default::default()
        };
        let w = Writer::with_options(&path, Metadata::new(), opts).unwrap();
        w.add_tensor("c", dtype, &shape, &bytes, TensorMeta::new()).unwrap();
        w.finish().unwrap();
        let trace = Trace::open(&path).unwrap();
        prop_assert!(trace.verify().is_ok());
        let v = trace.view_by_name("c").unwrap();
        prop_assert!(v.info().is_contiguous());
        prop_assert_eq!(v.contiguous_bytes().unwrap(), &bytes[..]);
    }
}

#[test]
fn ndarray_views_keep_their_strides() {
    use ndarray::{s, Array2, Array3};
    let a = Array3::from_shape_fn((3, 4, 5), |(i, j, k)| (i * 100 + j * 10 + k) as f32);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nd.tdump");
    let w = Writer::create(&path, Metadata::new()).unwrap();
    let rev = a.slice(s![..;-1, 1..;2, ..]);
    let perm = a.view().permuted_axes([2, 0, 1]);
    let row = Array2::from_shape_fn((1, 5), |(_, k)| k as f32);
    let bcast = row.broadcast((4, 5)).unwrap();
    w.add_ndarray("rev", &rev, TensorMeta::new()).unwrap();
    w.add_ndarray("perm", &perm, TensorMeta::new()).unwrap();
    w.add_ndarray("bcast", &bcast, TensorMeta::new()).unwrap();
    w.finish().unwrap();
    let trace = Trace::open(&path).unwrap();
    for (name, want) in [
        ("rev", rev.to_owned().into_dyn()),
        ("perm", perm.to_owned().into_dyn()),
        ("bcast", bcast.to_owned().into_dyn()),
    ] {
        let v = trace.view_by_name(name).unwrap();
        assert_eq!(v.array::<f32>().unwrap(), want.view(), "{name}");
        assert_eq!(
            v.to_f32().unwrap(),
            want.iter().copied().collect::<Vec<_>>(),
            "{name}"
        );
    }
    let rev_info = trace.get("rev").unwrap();
    assert_eq!(rev_info.layout.byte_strides(), vec![-80, 40, 4]);
    assert!(!rev_info.is_contiguous());
    // the broadcast view keeps its zero stride over one row of bytes
    let b = trace.get("bcast").unwrap();
    assert_eq!(b.layout.byte_strides()[0], 0);
    assert_eq!(b.storage_len(), 20);
}

/// The checksum handed back is the crc32c of the tensor's bytes, whether it
/// came from the streamed write (large) or was computed apart (small), in both
/// modes, and the records it came with verify.
#[test]
fn checksummed_adds_return_the_bytes_crc() {
    for background in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crc.tdump");
        let opts = trace_writer::WriterOptions {
            mode: if background {
                trace_writer::Mode::Background {
                    budget_bytes: 1 << 24,
                    when_full: trace_writer::WhenFull::Block,
                }
            } else {
                trace_writer::Mode::Sync
            },
            ..Default::default()
        };
        let w = Writer::with_options(&path, Metadata::new(), opts).unwrap();
        let mut rng = tracedump_tests::Rng::new(7);
        for (i, n) in [3usize, 1000, (1 << 20) / 4, (3 << 20) / 4 + 5]
            .into_iter()
            .enumerate()
        {
            let bytes: Vec<u8> = (0..n * 4).map(|_| rng.next_u64() as u8).collect();
            let (_, crc) = w
                .add_tensor_checksummed(
                    &format!("t{i}"),
                    DType::F32,
                    &[n as u64],
                    &bytes,
                    TensorMeta::new(),
                )
                .unwrap()
                .unwrap();
            assert_eq!(
                crc,
                trace_format::record::crc32c(&bytes),
                "t{i} background={background}"
            );
        }
        // wrong lengths fail as add_tensor does
        assert!(w
            .add_tensor_checksummed("bad", DType::F32, &[4], &[0; 15], TensorMeta::new())
            .is_err());
        w.finish().unwrap();
        let trace = Trace::open(&path).unwrap();
        assert!(trace.verify().is_ok());
        assert_eq!(trace.len(), 4);
    }
}

/// Background mode stages large payloads in reused 1 MiB chunks: payloads
/// of every size around the chunk and staging boundaries come back whole,
/// with or without `preallocate`, through a queue small enough that chunks
/// are reused many times over.
#[test]
fn staged_payloads_come_back_whole() {
    for preallocate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staged.tdump");
        let opts = trace_writer::WriterOptions {
            mode: trace_writer::Mode::Background {
                budget_bytes: 3 << 20,
                when_full: trace_writer::WhenFull::Block,
            },
            ..Default::default()
        };
        let w = Writer::with_options(&path, Metadata::new(), opts).unwrap();
        if preallocate {
            w.preallocate().unwrap();
            // twice is the same as once
            w.preallocate().unwrap();
        }
        let mut rng = tracedump_tests::Rng::new(11);
        let sizes = [
            (64 << 10) - 4,
            64 << 10,
            (1 << 20) - 4,
            1 << 20,
            (1 << 20) + 4,
            (2 << 20) + 12,
            (3 << 20) + 4, // more than the whole budget: waits for an empty queue
            100,
        ];
        let mut written = Vec::new();
        for round in 0..4 {
            for (i, &n) in sizes.iter().enumerate() {
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                let name = format!("t{round}.{i}");
                w.add_tensor(&name, DType::U8, &[n as u64], &bytes, TensorMeta::new())
                    .unwrap()
                    .unwrap();
                written.push((name, bytes));
            }
        }
        w.finish().unwrap();
        let trace = Trace::open(&path).unwrap();
        assert!(trace.verify().is_ok(), "preallocate={preallocate}");
        for (name, bytes) in &written {
            let v = trace.view_by_name(name).unwrap();
            assert!(
                v.contiguous_bytes().unwrap() == &bytes[..],
                "{name} preallocate={preallocate}"
            );
        }
    }
}

/// `payload_crc32c(id)` is the crc32c of what record `id` holds, in both
/// modes, whether the record is still queued, being written or written,
/// and `None` for ids never recorded.
#[test]
fn payload_crc_of_every_record() {
    for background in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pcrc.tdump");
        let opts = trace_writer::WriterOptions {
            mode: if background {
                trace_writer::Mode::Background {
                    budget_bytes: 4 << 20,
                    when_full: trace_writer::WhenFull::Block,
                }
            } else {
                trace_writer::Mode::Sync
            },
            ..Default::default()
        };
        let w = Writer::with_options(&path, Metadata::new(), opts).unwrap();
        let mut rng = tracedump_tests::Rng::new(5);
        let mut want = Vec::new();
        for (i, n) in [0usize, 7, 4096, 70_000, 1 << 20, (3 << 20) + 1]
            .into_iter()
            .cycle()
            .take(24)
            .enumerate()
        {
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let id = if i % 5 == 4 {
                w.add_storage(&format!("s{i}"), &bytes).unwrap()
            } else {
                w.add_tensor(
                    &format!("t{i}"),
                    DType::U8,
                    &[n as u64],
                    &bytes,
                    TensorMeta::new(),
                )
                .unwrap()
                .unwrap()
            };
            // asked at once: usually still queued in background mode
            assert_eq!(
                w.payload_crc32c(id).unwrap(),
                Some(trace_format::record::crc32c(&bytes)),
                "record {id} background={background}"
            );
            want.push((id, trace_format::record::crc32c(&bytes)));
        }
        w.flush().unwrap();
        for &(id, crc) in &want {
            assert_eq!(
                w.payload_crc32c(id).unwrap(),
                Some(crc),
                "record {id} after flush"
            );
        }
        assert_eq!(w.payload_crc32c(10_000).unwrap(), None);
        w.finish().unwrap();
        assert!(Trace::open(&path).unwrap().verify().is_ok());
    }
}

/// The sync writer copies small records into a mapped, allocated stretch of
/// the file (ext4, XFS, tmpfs) and writes large ones. Mixed in any order,
/// every record reads back; a reader opening the file while it is written
/// sees exactly the records added so far (the allocated bytes beyond them
/// are zero: a torn tail, not records); `finish` cuts the file to its
/// records and footer; and the writer's file is longer than its records
/// while it writes (the window is in use) on tmpfs.
#[test]
fn sync_small_records_through_the_mapped_window() {
    let tmp = tempfile::tempdir().unwrap();
    let shm = std::path::Path::new("/dev/shm");
    let shm = shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap());
    let dirs: Vec<&std::path::Path> = std::iter::once(tmp.path())
        .chain(shm.as_ref().map(|d| d.path()))
        .collect();
    assert!(
        cfg!(not(target_os = "linux")) || dirs.len() == 2,
        "Linux has /dev/shm"
    );
    for dir in dirs {
        let path = dir.join("window.tdump");
        let w = Writer::create(&path, Metadata::new()).unwrap();
        let mut rng = tracedump_tests::Rng::new(5);
        let sizes = [0usize, 17, 256, 4000, (64 << 10) - 100, 70 << 10, 2 << 20];
        let mut written = Vec::new();
        let mut ahead = false;
        for i in 0..400 {
            let n = sizes[(rng.next_u64() % sizes.len() as u64) as usize];
            let n = if n == 2 << 20 && i % 7 != 0 { 300 } else { n };
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let name = format!("t{i}");
            w.add_tensor(&name, DType::U8, &[n as u64], &bytes, TensorMeta::new())
                .unwrap()
                .unwrap();
            written.push((name, bytes));
            if i % 50 == 49 {
                let live = Trace::open(&path).unwrap();
                assert!(!live.is_finished());
                assert_eq!(live.len(), written.len(), "{} after {i}", dir.display());
                let (name, bytes) = written.last().unwrap();
                assert!(live.view_by_name(name).unwrap().contiguous_bytes().unwrap() == &bytes[..]);
                // the file runs past its records (zeros allocated ahead,
                // where the scan ends cleanly: SPEC.md §2)
                let file_len = std::fs::metadata(&path).unwrap().len();
                let last = live.records().last().unwrap();
                assert!(live.torn_tail().is_none(), "{} after {i}", dir.display());
                ahead |= last.offset + 32 + last.body_len < file_len;
            }
        }
        let summary = w.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), summary.bytes);
        if cfg!(target_os = "linux") && dir.starts_with("/dev/shm") {
            assert!(ahead, "the window is used on tmpfs");
        }
        let trace = Trace::open(&path).unwrap();
        assert!(trace.is_finished() && trace.verify().is_ok());
        for (name, bytes) in &written {
            let v = trace.view_by_name(name).unwrap();
            assert!(v.contiguous_bytes().unwrap() == &bytes[..], "{name}");
        }
    }
}
