//! Layout work: a llama.cpp-style permuted f16 KV-cache view materialized
//! as contiguous f32, ours (`TensorView::to_f32`) against torch's one-pass
//! `permute(1, 0, 2).to(torch.float32, memory_format=torch.contiguous_format)`
//! of the same bytes (a Python subprocess of the same run, its rounds
//! interleaved with ours).

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use half::f16;
use trace_format::Layout;
use trace_reader::Trace;
use trace_writer::{DType, Metadata, TensorMeta, Writer};

use half::slice::HalfFloatSliceExt;

use crate::{interleaved, progress, python, shuffle, Res, Row, Stat};

/// The storage: [positions, heads, head dim], as the cache holds it.
const STORAGE: [u64; 3] = [256, 8, 128];
/// The view: [heads, positions, head dim] (ggml ne = [128, 256, 8, 1]).
const AXES: [u32; 3] = [1, 0, 2];
/// Rounds per side (each a block of calls well under a millisecond).
const ROUNDS: usize = 30;
/// Calls in a row per round, the fastest kept.
const BLOCK: usize = 5;

pub(crate) fn rows(dir: &Path) -> Res<Vec<Row>> {
    progress("layout: permuted f16 KV view -> contiguous f32, ours vs torch (subprocess)");
    let numel = STORAGE.iter().product::<u64>() as usize;
    let values: Vec<f16> = (0..numel)
        .map(|i| f16::from_f32((i % 2039) as f32 / 64.0 - 16.0))
        .collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let raw = dir.join("kv.f16");
    std::fs::write(&raw, &bytes)?;

    let path = dir.join("kv.tdump");
    let layout = Layout::contiguous(DType::F16, &STORAGE, 0)?.permute(&AXES)?;
    let w = Writer::create(&path, Metadata::new())?;
    let storage = w.add_storage("cache_k_l0", &bytes)?;
    w.add_view(
        "k-0",
        DType::F16,
        storage,
        &layout,
        TensorMeta::new().ggml_layout(&[128, 256, 8, 1], &[2, 2048, 256, 524_288]),
    )?
    .ok_or("the view was not recorded")?;
    w.finish()?;

    let trace = Trace::open(&path)?;
    let view = trace.view_by_name("k-0")?;
    // the expected values, permuted by hand
    let [p, h, d] = STORAGE.map(|n| n as usize);
    let got = view.to_f32()?;
    for (hi, pi, di) in [(0, 0, 0), (3, 17, 5), (h - 1, p - 1, d - 1)] {
        let want = values[(pi * h + hi) * d + di].to_f32();
        if got[(hi * p + pi) * d + di] != want {
            return Err("to_f32 of the permuted view gives wrong values".into());
        }
    }

    // every round: a block of calls of ours (the fastest kept: the first
    // call after the other side's pays for what it left behind) and one of
    // torch's at each thread count, in a random order
    let mut torch = Torch::spawn(&raw)?;
    let mut ours = Vec::with_capacity(ROUNDS);
    let mut theirs: Vec<Vec<(String, f64)>> = Vec::with_capacity(ROUNDS);
    let mut order = [0, 1];
    for _ in 0..ROUNDS {
        shuffle(&mut order);
        for side in order {
            if side == 0 {
                let mut best = Duration::MAX;
                for _ in 0..BLOCK {
                    let start = Instant::now();
                    let v = view.to_f32()?;
                    best = best.min(start.elapsed());
                    std::hint::black_box(v);
                }
                ours.push(best);
            } else {
                theirs.push(torch.round()?);
            }
        }
    }
    torch.close()?;
    // the baseline: the thread count whose median is the faster
    let mut sides: Vec<(String, Stat)> = (0..theirs[0].len())
        .map(|i| {
            let label = theirs[0][i].0.clone();
            (label, Stat::values(theirs.iter().map(|r| r[i].1).collect()))
        })
        .collect();
    sides.sort_by(|a, b| a.1.median.total_cmp(&b.1.median));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (label, stat) = &sides[0];
    let label = if sides.len() > 1 {
        format!("{label} (the faster)")
    } else {
        label.clone()
    };
    let mut row = Row::new(
        "layout",
        "Rust TensorView::to_f32(), permuted f16 KV view [8,256,128]".into(),
        "µs",
        Stat::of(&ours, us),
    )
    .vs(label, *stat)
    .goal_ratio(1.0, None);
    for (label, stat) in &sides[1..] {
        row = row.also(label.clone(), stat.median, "µs");
    }
    Ok(vec![row, f16_row(dir)?])
}

/// f16 -> f32 of a contiguous tensor small enough to stay on one thread:
/// ours (the hand-written F16C loop, `trace-reader/src/halves.rs`) against
/// the `half` crate's slice conversion, which picks F16C at run time too.
/// halves.rs is kept only while ours is at least 1.3x as fast.
fn f16_row(dir: &Path) -> Res<Row> {
    const SHAPE: [u64; 2] = [128, 256];
    let n = 128 * 256; // 2^15 values: under trace-reader's shared size
    let values: Vec<f16> = (0..n)
        .map(|i| f16::from_f32((i % 2039) as f32 / 64.0 - 16.0))
        .collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = dir.join("f16.tdump");
    let w = Writer::create(&path, Metadata::new())?;
    w.add_tensor("x", DType::F16, &SHAPE, &bytes, TensorMeta::new())?
        .ok_or("the tensor was not recorded")?;
    w.finish()?;
    let trace = Trace::open(&path)?;
    let view = trace.view_by_name("x")?;
    let want: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
    if view.to_f32()? != want {
        return Err("to_f32 of the f16 tensor gives wrong values".into());
    }
    let mut ours = |_| -> Res<Duration> {
        let start = Instant::now();
        let v = view.to_f32()?;
        let took = start.elapsed();
        std::hint::black_box(v);
        Ok(took)
    };
    // what a caller of `half` writes: a zeroed Vec, then the conversion
    let mut theirs = |_| -> Res<Duration> {
        let start = Instant::now();
        let mut v = vec![0f32; n];
        values.convert_to_f32_slice(&mut v);
        let took = start.elapsed();
        std::hint::black_box(v);
        Ok(took)
    };
    let [ours, theirs] = interleaved(ROUNDS * 10, &mut [&mut ours, &mut theirs])?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(Row::new(
        "layout",
        "Rust TensorView::to_f32(), contiguous f16 [128,256], one thread".into(),
        "µs",
        Stat::of(&ours, us),
    )
    .vs(
        "half 2.x convert_to_f32_slice into a zeroed Vec",
        Stat::of(&theirs, us),
    )
    .goal_ratio(1.3, None)
    .ours())
}

/// torch's side of the KV row: `python_bench.py torch-permute FILE`, a
/// Python process that times one block of torch's conversion at each of its
/// thread counts for every line it reads, and prints
/// `label<TAB>µs[<TAB>label<TAB>µs]`.
struct Torch {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Torch {
    fn spawn(raw: &Path) -> Res<Torch> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_bench.py");
        let mut child = Command::new(python())
            .arg(&script)
            .arg("torch-permute")
            .arg(raw)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {} ({e})", python().display()))?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Torch { child, out })
    }

    /// One round: every thread count's fastest call of a block, in µs.
    fn round(&mut self) -> Res<Vec<(String, f64)>> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        stdin.write_all(b"round\n")?;
        stdin.flush()?;
        let mut line = String::new();
        if self.out.read_line(&mut line)? == 0 {
            return Err("python_bench.py torch-permute exited early".into());
        }
        let fields: Vec<&str> = line.trim().split('\t').collect();
        if fields.is_empty() || fields.len() % 2 != 0 {
            return Err(format!("torch-permute printed {line:?}").into());
        }
        fields
            .chunks_exact(2)
            .map(|c| Ok((c[0].to_owned(), c[1].parse::<f64>()?)))
            .collect()
    }

    fn close(mut self) -> Res<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("python_bench.py torch-permute failed: {status}").into());
        }
        Ok(())
    }
}
