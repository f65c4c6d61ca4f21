//! The in-memory writer (`Writer::in_memory`) hands back the bytes a file
//! writer writes, record for record.

use trace_writer::{
    DType, FinishSummary, Layout, Metadata, Mode, TensorMeta, WhenFull, Writer, WriterOptions,
};

/// Storages, tensors (one of 2 MiB: the streamed path whose header is
/// written last, in place), a view and statistics, then the bytes.
fn record(w: Writer) -> (FinishSummary, Vec<u8>) {
    let small: Vec<u8> = (0..6u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let large: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
    let s = w.add_storage("cache", &small).unwrap();
    let full = Layout::contiguous(DType::F32, &[2, 3], 0).unwrap();
    w.add_view(
        "k",
        DType::F32,
        s,
        &full.permute(&[1, 0]).unwrap(),
        TensorMeta::new().layer(1),
    )
    .unwrap()
    .unwrap();
    w.add_tensor("x", DType::F32, &[6], &small, TensorMeta::new().step(2))
        .unwrap()
        .unwrap();
    w.add_tensor(
        "big",
        DType::U8,
        &[large.len() as u64],
        &large,
        TensorMeta::new(),
    )
    .unwrap()
    .unwrap();
    w.add_stats_of("x.stats", DType::F32, &[6], &small, TensorMeta::new())
        .unwrap()
        .unwrap();
    w.finish_into_bytes().unwrap()
}

fn options(mode: Mode) -> WriterOptions {
    WriterOptions {
        mode,
        // a file as long as its records, as memory is
        allocate_ahead: false,
        ..WriterOptions::default()
    }
}

#[test]
fn memory_and_file_hold_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let background = Mode::Background {
        budget_bytes: 4 << 20,
        when_full: WhenFull::Block,
    };
    for (i, mode) in [Mode::Sync, background].into_iter().enumerate() {
        let run = || Metadata::new().with("engine", "memory-test");
        let path = dir.path().join(format!("{i}.tdump"));
        let file = Writer::with_options(&path, run(), options(mode)).unwrap();
        let (file_summary, file_bytes) = record(file);
        assert_eq!(file_bytes, std::fs::read(&path).unwrap(), "{mode:?}");

        let memory = Writer::in_memory(run(), options(mode)).unwrap();
        assert_eq!(memory.path().to_str(), Some("<memory>"));
        let (summary, bytes) = record(memory);
        assert_eq!(summary, file_summary, "{mode:?}");
        assert_eq!(summary.records, 6, "{mode:?}");
        assert_eq!(summary.bytes, bytes.len() as u64, "{mode:?}");
        assert!(bytes.len() > 2 << 20, "{mode:?}");
        assert!(
            bytes == file_bytes,
            "{mode:?}: memory and file bytes differ"
        );
    }
}

#[test]
fn memory_ignores_allocate_ahead() {
    let ahead = WriterOptions::default();
    assert!(ahead.allocate_ahead);
    let (_, a) = record(Writer::in_memory(Metadata::new(), ahead).unwrap());
    let (_, b) = record(Writer::in_memory(Metadata::new(), options(Mode::Sync)).unwrap());
    assert!(a == b);
}

#[test]
fn the_checksum_thread_changes_no_byte() {
    // the 2 MiB tensor is checksummed on a second thread, or on the
    // recording thread after each write: the same file either way
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for checksum_thread in [true, false] {
        let path = dir.path().join(format!("{checksum_thread}.tdump"));
        let o = WriterOptions {
            checksum_thread,
            ..options(Mode::Sync)
        };
        let (_, bytes) = record(Writer::with_options(&path, Metadata::new(), o).unwrap());
        assert_eq!(bytes, std::fs::read(&path).unwrap());
        files.push(bytes);
    }
    assert!(files[0] == files[1]);
    assert!(WriterOptions::default().checksum_thread);
}
