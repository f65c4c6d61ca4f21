//! Layout work: a llama.cpp-style permuted f16 KV-cache view materialized
//! as contiguous f32, ours (`TensorView::to_f32`) against torch's
//! `permute(1, 0, 2).contiguous().float()` of the same bytes (a Python
//! subprocess of the same run).

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use half::f16;
use trace_format::Layout;
use trace_reader::Trace;
use trace_writer::{DType, Metadata, TensorMeta, Writer};

use crate::{progress, python, Res, Row};

/// The storage: [positions, heads, head dim], as the cache holds it.
const STORAGE: [u64; 3] = [256, 8, 128];
/// The view: [heads, positions, head dim] (ggml ne = [128, 256, 8, 1]).
const AXES: [u32; 3] = [1, 0, 2];
/// Calls per side (each well under a millisecond to a few).
const CALLS: usize = 30;

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

    let mut ours = Duration::MAX;
    let time_ours = |ours: &mut Duration| -> Res<()> {
        for _ in 0..CALLS {
            let start = Instant::now();
            let v = view.to_f32()?;
            *ours = (*ours).min(start.elapsed());
            std::hint::black_box(v);
        }
        Ok(())
    };
    // ours, torch, ours again: a drift in load hits both
    time_ours(&mut ours)?;
    let torch = torch_figures(&raw)?;
    time_ours(&mut ours)?;

    let mut row = Row::time(
        "layout",
        "Rust TensorView::to_f32(), permuted f16 KV view [8,256,128]".into(),
        "µs",
        ours.as_secs_f64() * 1e6,
    )
    .vs(torch[0].0.clone(), torch[0].1)
    .goal_ratio(1.0, None);
    for (label, us) in &torch[1..] {
        row = row.also(label.clone(), *us, "µs");
    }
    Ok(vec![row])
}

/// torch's figures (µs, best of CALLS) from `python_bench.py torch-permute`:
/// the baseline (the faster of its default thread count and one thread)
/// first, then the other.
fn torch_figures(raw: &Path) -> Res<Vec<(String, f64)>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_bench.py");
    let o = std::process::Command::new(python())
        .arg(&script)
        .arg("torch-permute")
        .arg(raw)
        .arg(CALLS.to_string())
        .output()
        .map_err(|e| format!("cannot run {} ({e})", python().display()))?;
    if !o.status.success() {
        return Err(format!(
            "{} torch-permute failed: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr)
        )
        .into());
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let fields: Vec<&str> = text.trim().split('\t').collect();
    let figures = fields
        .chunks_exact(2)
        .map(|c| Ok((c[0].to_owned(), c[1].parse::<f64>()?)))
        .collect::<Res<Vec<_>>>()?;
    if figures.is_empty() || fields.len() % 2 != 0 {
        return Err(format!("torch-permute printed {text:?}").into());
    }
    Ok(figures)
}
