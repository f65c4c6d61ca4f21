//! A trace can be opened, read and verified while it is written and
//! finished: the writer never shrinks the file (SPEC.md §2, §9). Before,
//! `finish()` cut the space allocated ahead off the file, and a reader that
//! had mapped the longer file faulted (SIGBUS) reading its old end; in this
//! test that kills the test process.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use trace_format::{DType, Metadata};
use trace_reader::Trace;
use trace_writer::{Mode, TensorMeta, WhenFull, Writer, WriterOptions};

fn dirs() -> Vec<tempfile::TempDir> {
    let mut d = vec![tempfile::tempdir().unwrap()];
    // tmpfs, where the sync writer maps small records into space allocated ahead
    if std::path::Path::new("/dev/shm").is_dir() {
        d.push(tempfile::tempdir_in("/dev/shm").unwrap());
    }
    d
}

#[test]
fn read_and_verify_while_writers_finish() {
    const ROUNDS: usize = 100;
    let mut seen = (0usize, 0usize); // (unfinished, finished) opens
    for dir in dirs() {
        for background in [false, true] {
            for round in 0..ROUNDS {
                let path = dir.path().join(format!("live-{background}-{round}.tdump"));
                let options = WriterOptions {
                    mode: if background {
                        Mode::Background {
                            budget_bytes: 1 << 20,
                            when_full: WhenFull::Block,
                        }
                    } else {
                        Mode::Sync
                    },
                    ..WriterOptions::default()
                };
                let w = Writer::with_options(&path, Metadata::new(), options).unwrap();
                let done = Arc::new(AtomicBool::new(false));
                let reader = {
                    let (path, done) = (path.clone(), done.clone());
                    std::thread::spawn(move || {
                        let mut seen = (0usize, 0usize);
                        loop {
                            let last = done.load(Ordering::Acquire);
                            if let Ok(t) = Trace::open(&path) {
                                let report = t.verify();
                                if t.is_finished() {
                                    assert!(
                                        report.is_ok(),
                                        "{}: {:?}",
                                        path.display(),
                                        report.faults
                                    );
                                    seen.1 += 1;
                                } else {
                                    assert!(t.torn_tail().is_none() || !last);
                                    seen.0 += 1;
                                }
                                for id in t.tensor_ids().iter().rev().take(4) {
                                    let v = t.view(*id).unwrap().to_f64().unwrap();
                                    assert_eq!(v.len(), 16);
                                }
                            }
                            if last {
                                return seen;
                            }
                        }
                    })
                };
                for i in 0..64 {
                    let values: Vec<f32> = (0..16).map(|j| (i * 16 + j) as f32).collect();
                    w.add_tensor(
                        &format!("t{i}"),
                        DType::F32,
                        &[16],
                        bytemuck::cast_slice(&values),
                        TensorMeta::new().step(i),
                    )
                    .unwrap();
                }
                let summary = w.finish().unwrap();
                done.store(true, Ordering::Release);
                let s = reader.join().expect("the reader thread");
                seen = (seen.0 + s.0, seen.1 + s.1);
                assert_eq!(std::fs::metadata(&path).unwrap().len(), summary.bytes);
                let t = Trace::open(&path).unwrap();
                assert!(t.is_finished() && t.verify().is_ok() && t.len() == 64);
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
    // both sides of the race were seen
    assert!(seen.0 > 0 && seen.1 > 0, "{seen:?}");
}
