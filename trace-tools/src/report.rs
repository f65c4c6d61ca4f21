//! The divergence report: one self-contained HTML page (no network fetches)
//! built from a [`DiffReport`]: per-layer error growth, the first divergent
//! tensor with its lineage and layout for both runs, an error histogram, a
//! heat map of where in that tensor the error sits, and the full sortable
//! table. The page draws itself with inline JavaScript from the data
//! embedded in it; when it has drawn, `<body data-rendered="1">`.

#![forbid(unsafe_code)]

use serde_json::{json, Value};

use crate::compare::{DiffReport, Verdict};
use crate::stream::{self, Source};
use trace_reader::Trace;

use crate::ToolsError;

/// Rows and columns of the heat map, at most.
const HEAT_ROWS: usize = 64;
const HEAT_COLS: usize = 128;
/// Histogram bins (log10 of |a − b|).
const BINS: usize = 40;

fn side_json(trace: &Trace, id: u64) -> Value {
    match trace.tensor(id) {
        Ok(t) => json!({
            "file": trace.path().display().to_string(),
            "id": id,
            "name": t.name,
            "dtype": t.dtype.to_string(),
            "shape": t.layout.shape(),
            "byte_strides": t.layout.byte_strides(),
            "element_strides": t.element_strides(),
            "storage_offset": t.layout.storage_offset(),
            "contiguous": t.is_contiguous(),
            "storage": match t.storage {
                None if t.derived => "derived (rebuilt from its parents)".to_string(),
                None => "stats only".to_string(),
                Some(s) if s == id => "own bytes".to_string(),
                Some(s) => format!("storage #{s} ({})", trace.record_name(s).unwrap_or("?")),
            },
            "ggml": t.source_layout.as_ref().map(|s| match s {
                trace_reader::SourceLayout::Ggml { ne, nb } => format!("ne {ne:?} nb {nb:?}"),
            }),
            "layer": t.layer,
            "step": t.step,
            "role": t.role,
            "lineage": trace.lineage_text(id),
        }),
        Err(e) => json!({ "id": id, "error": e.to_string() }),
    }
}

/// What one pass over |a − b| gathers, a range of values at a time.
struct ErrorPass {
    /// Smallest and largest finite non-zero error.
    lo: f64,
    hi: f64,
    zeros: u64,
    nonfinite: u64,
    /// The heat map's cells (max-pooled; `f64::MAX` for a non-finite error).
    cells: Vec<f64>,
    /// The largest error, its flat index and the values there (the first
    /// such; `None`: no error above 0).
    worst: Option<(f64, u64, f64, f64)>,
    /// Histogram counts (the second pass).
    counts: Vec<u64>,
}

impl ErrorPass {
    fn new(cells: usize) -> Self {
        ErrorPass {
            lo: f64::INFINITY,
            hi: 0.0,
            zeros: 0,
            nonfinite: 0,
            cells: vec![0.0; cells],
            worst: None,
            counts: vec![0; BINS],
        }
    }

    fn merge(&mut self, o: ErrorPass) {
        self.lo = self.lo.min(o.lo);
        self.hi = self.hi.max(o.hi);
        self.zeros += o.zeros;
        self.nonfinite += o.nonfinite;
        for (c, x) in self.cells.iter_mut().zip(o.cells) {
            *c = c.max(x);
        }
        if let Some(w) = o.worst {
            if self.worst.is_none_or(|s| w.0 > s.0) {
                self.worst = Some(w);
            }
        }
        for (c, x) in self.counts.iter_mut().zip(o.counts) {
            *c += x;
        }
    }
}

/// The values of a chunk as f64 (into `wide` unless they already are).
fn wide<'w>(v: stream::Vals<'w>, wide: &'w mut Vec<f64>) -> &'w [f64] {
    match v {
        stream::Vals::F64(x) => x,
        stream::Vals::F32(x) => {
            wide.clear();
            wide.extend(x.iter().map(|&v| f64::from(v)));
            wide
        }
    }
}

/// |a − b| of the first divergence, as a histogram and a heat map: two
/// passes over the values, a chunk at a time (memory stays bounded).
fn error_map(a: &Trace, b: &Trace, ida: u64, idb: u64) -> Result<Value, ToolsError> {
    let sa = Source::of(a, a.view(ida)?)?;
    let sb = Source::of(b, b.view(idb)?)?;
    let shape = a.tensor(ida)?.layout.shape().to_vec();
    let numel = sa.numel();
    if numel != sb.numel() || numel == 0 {
        return Ok(Value::Null);
    }
    // heat map: the tensor as rows × the last dimension, max-pooled
    let cols = (*shape.last().unwrap_or(&1)).max(1);
    let rows = numel / cols;
    let (hr, hc) = (
        rows.clamp(1, HEAT_ROWS as u64),
        cols.clamp(1, HEAT_COLS as u64),
    );
    #[derive(Default)]
    struct Scratch {
        a: stream::Buf,
        b: stream::Buf,
        wa: Vec<f64>,
        wb: Vec<f64>,
        err: Vec<f64>,
    }
    let read = |s: &mut Scratch, start: u64, n: usize| -> Result<(), String> {
        let va = sa.read(start, n, &mut s.a)?;
        let va = wide(va, &mut s.wa);
        let vb = sb.read(start, n, &mut s.b)?;
        let vb = wide(vb, &mut s.wb);
        s.err.clear();
        s.err.extend(va.iter().zip(vb).map(|(x, y)| (x - y).abs()));
        Ok(())
    };
    let sizes = (stream::CHUNK, stream::GROUP);
    let cells = (hr * hc) as usize;
    let first = stream::fold_chunks(
        numel,
        sizes,
        || ErrorPass::new(cells),
        Scratch::default,
        |p, s, start, n| {
            read(s, start, n)?;
            for (i, &e) in s.err.iter().enumerate() {
                if e.is_finite() {
                    if e > 0.0 {
                        p.lo = p.lo.min(e);
                        p.hi = p.hi.max(e);
                    } else {
                        p.zeros += 1;
                    }
                } else {
                    p.nonfinite += 1;
                }
                if e > p.worst.map_or(0.0, |w| w.0) {
                    p.worst = Some((e, start + i as u64, 0.0, 0.0));
                }
            }
            // the values there, when this chunk has the largest so far
            if let Some((e, at, _, _)) = p.worst.filter(|w| w.1 >= start) {
                let va = wide(sa.read(at, 1, &mut s.a)?, &mut s.wa)[0];
                let vb = wide(sb.read(at, 1, &mut s.b)?, &mut s.wb)[0];
                p.worst = Some((e, at, va, vb));
            }
            // the cells, a row's run of columns per heat map column
            let mut i = 0usize;
            while i < n {
                let flat = start + i as u64;
                let (r, c) = (flat / cols, flat % cols);
                let cr = r * hr / rows.max(1);
                let cc = c * hc / cols;
                // the columns of this cell on this row, within the chunk
                let next_c = ((cc + 1) * cols).div_ceil(hc).min(cols);
                let run = ((next_c - c) as usize).min(n - i);
                let cell = &mut p.cells[(cr * hc + cc) as usize];
                for &e in &s.err[i..i + run] {
                    if e.is_nan() || e > *cell {
                        *cell = if e.is_finite() { e } else { f64::MAX };
                    }
                }
                i += run;
            }
            Ok(())
        },
        |total, p| total.merge(p),
    )
    .map_err(ToolsError::Invalid)?;
    // histogram of log10 |a - b| over the finite non-zero errors
    let mut hist = json!(null);
    if first.lo.is_finite() {
        let lo = first.lo.log10().floor();
        let hi = first.hi.log10().ceil().max(lo + 1.0);
        let width = (hi - lo) / BINS as f64;
        let counted = stream::fold_chunks(
            numel,
            sizes,
            || ErrorPass::new(0),
            Scratch::default,
            |p, s, start, n| {
                read(s, start, n)?;
                for &e in &s.err {
                    if e.is_finite() && e > 0.0 {
                        let k = (((e.log10() - lo) / width) as usize).min(BINS - 1);
                        p.counts[k] += 1;
                    }
                }
                Ok(())
            },
            |total, p| total.merge(p),
        )
        .map_err(ToolsError::Invalid)?;
        hist = json!({ "log10_lo": lo, "log10_hi": hi, "counts": counted.counts });
    }
    let (worst, at, wa, wb) = match first.worst {
        Some(w) => w,
        None => {
            let mut s = Scratch::default();
            let va = wide(
                sa.read(0, 1, &mut s.a).map_err(ToolsError::Invalid)?,
                &mut s.wa,
            )[0];
            let vb = wide(
                sb.read(0, 1, &mut s.b).map_err(ToolsError::Invalid)?,
                &mut s.wb,
            )[0];
            (0.0, 0, va, vb)
        }
    };
    Ok(json!({
        "numel": numel,
        "zeros": first.zeros,
        "nonfinite": first.nonfinite,
        "histogram": hist,
        "heatmap": { "rows": hr, "cols": hc, "tensor_rows": rows, "tensor_cols": cols, "cells": first.cells },
        "shape": shape,
        "worst": { "abs": worst, "flat_index": at, "a": wa, "b": wb },
    }))
}

/// The verdict as the page shows it: its name (upper case when divergent),
/// then the reasons.
fn verdict_text(v: &Verdict) -> String {
    match v.reasons() {
        [] => v.label(),
        why => format!("{}: {}", v.label(), why.join("; ")),
    }
}

/// Everything the page shows, as JSON.
pub fn report_data(a: &Trace, b: &Trace, r: &DiffReport) -> Result<Value, ToolsError> {
    let pairs: Vec<Value> = r
        .pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let m = p.metrics.as_ref();
            // stats-only pairs have moments but no element-wise metrics: null ("—")
            let measured = p.measured();
            json!({
                // 0-based, as in diff --json; people read `pair` (1-based)
                "index": i,
                "pair": i + 1,
                "key": p.key,
                "name_a": p.a.name,
                "name_b": p.b.name,
                "layer": p.a.layer.or(p.b.layer),
                "dtype": if p.a.dtype == p.b.dtype { p.a.dtype.clone() } else { format!("{} / {}", p.a.dtype, p.b.dtype) },
                "shape": p.a.shape,
                "verdict": verdict_text(&p.verdict),
                "divergent": p.verdict.is_divergent(),
                "max_abs": measured.map(|m| m.max_abs),
                "max_rel": measured.map(|m| m.max_rel),
                "cosine": measured.map(|m| m.cosine),
                "mean_a": m.map(|m| m.a.mean),
                "mean_b": m.map(|m| m.b.mean),
                "std_a": m.map(|m| m.a.std),
                "std_b": m.map(|m| m.b.std),
            })
        })
        .collect();
    let layers: Vec<Value> = r
        .layers
        .iter()
        .map(|l| {
            json!({
                "layer": l.layer, "pairs": l.pairs, "divergent": l.divergent,
                "max_abs": l.max_abs, "min_cosine": l.min_cosine, "last": l.last,
                "std_a": l.a.std, "std_b": l.b.std, "mean_a": l.a.mean, "mean_b": l.b.mean,
                "std_ratio": l.std_ratio,
            })
        })
        .collect();
    let first = match r
        .first_divergence
        .and_then(|i| r.pairs.get(i).map(|p| (i, p)))
    {
        Some((i, p)) => json!({
            "index": i,
            "pair": i + 1,
            "key": p.key,
            // what the user calls it: A's name, and B's where it differs
            "names": if p.a.name == p.b.name {
                p.a.name.clone()
            } else {
                format!("{} = {}", p.a.name, p.b.name)
            },
            "step": p.step,
            "verdict": verdict_text(&p.verdict),
            "metrics": p.measured().map(|m| json!({
                "max_abs": m.max_abs, "max_rel": m.max_rel, "mean_abs": m.mean_abs,
                "rmse": m.rmse, "cosine": m.cosine, "max_abs_index": m.max_abs_index,
                "nan_mismatch": m.nan_mismatch, "inf_mismatch": m.inf_mismatch,
            })),
            "a": side_json(a, p.a.id),
            "b": side_json(b, p.b.id),
            "errors": error_map(a, b, p.a.id, p.b.id).unwrap_or(Value::Null),
        }),
        None => Value::Null,
    };
    let blamed: Vec<Value> = r
        .blamed
        .iter()
        .map(|bl| {
            let p = &r.pairs[bl.pair];
            json!({
                "index": bl.pair,
                "pair": bl.pair + 1,
                "key": p.key,
                "names": if p.a.name == p.b.name { p.a.name.clone() } else { format!("{} = {}", p.a.name, p.b.name) },
                "shape": p.a.shape,
                "by_graph": bl.by_graph,
                "amplification": bl.amplification,
                "inputs": bl.inputs.iter().map(|&i| json!({
                    "pair": i + 1,
                    "key": r.pairs[i].key,
                    "verdict": verdict_text(&r.pairs[i].verdict),
                })).collect::<Vec<_>>(),
                "diagnosis": bl.diagnosis,
                "diagnosed": bl.diagnosed,
                "same_op_as": bl.same_op_as.map(|i| i + 1),
                "step": p.step,
            })
        })
        .collect();
    Ok(json!({
        "blamed": blamed,
        "max_diagnosed": crate::blame::MAX_DIAGNOSED,
        "a": a.path().display().to_string(),
        "b": b.path().display().to_string(),
        "tolerance": { "atol": r.tolerance.atol, "rtol": r.tolerance.rtol, "min_cosine": r.tolerance.min_cosine },
        "agrees": r.agrees(),
        "pairs": pairs,
        "layers": layers,
        "first": first,
        "only_in_a": r.only_in_a,
        "only_in_b": r.only_in_b,
        "unreadable": r.unreadable,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// The report page: `TEMPLATE` with the data embedded.
pub fn html(a: &Trace, b: &Trace, r: &DiffReport) -> Result<String, ToolsError> {
    let data = report_data(a, b, r)?;
    // JSON inside <script>: no "</script" or "<!--" may end it early; '<'
    // only occurs inside JSON strings, where \u003c means the same
    let json = serde_json::to_string(&data)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c");
    let title = format!(
        "tracedump report: {} vs {}",
        a.path()
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        b.path()
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    Ok(TEMPLATE
        .replace("{{TITLE}}", &escape(&title))
        .replace("{{DATA}}", &json))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const TEMPLATE: &str = include_str!("report.html");

#[cfg(test)]
mod tests {
    use super::*;

    /// The error map as it was computed before it streamed: every value in memory.
    fn error_map_whole(a: &Trace, b: &Trace, ida: u64, idb: u64) -> Result<Value, ToolsError> {
        let va = a.view(ida)?.to_f64()?;
        let vb = b.view(idb)?.to_f64()?;
        let shape = a.tensor(ida)?.layout.shape().to_vec();
        if va.len() != vb.len() || va.is_empty() {
            return Ok(Value::Null);
        }
        let err: Vec<f64> = va.iter().zip(&vb).map(|(x, y)| (x - y).abs()).collect();
        // histogram of log10 |a - b| over the finite non-zero errors
        let finite: Vec<f64> = err
            .iter()
            .copied()
            .filter(|e| e.is_finite() && *e > 0.0)
            .collect();
        let zeros = err.iter().filter(|&&e| e == 0.0).count();
        let nonfinite = err.iter().filter(|e| !e.is_finite()).count();
        let mut hist = json!(null);
        if !finite.is_empty() {
            let lo = finite
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
                .log10()
                .floor();
            let hi = finite
                .iter()
                .copied()
                .fold(0.0, f64::max)
                .log10()
                .ceil()
                .max(lo + 1.0);
            let width = (hi - lo) / BINS as f64;
            let mut counts = vec![0u64; BINS];
            for e in &finite {
                let k = (((e.log10() - lo) / width) as usize).min(BINS - 1);
                counts[k] += 1;
            }
            hist = json!({ "log10_lo": lo, "log10_hi": hi, "counts": counts });
        }
        // heat map: the tensor as rows × the last dimension, max-pooled
        let cols = *shape.last().unwrap_or(&1) as usize;
        let cols = cols.max(1);
        let rows = err.len() / cols;
        let (hr, hc) = (rows.clamp(1, HEAT_ROWS), cols.clamp(1, HEAT_COLS));
        let mut cells = vec![0f64; hr * hc];
        for r in 0..rows {
            let cr = r * hr / rows.max(1);
            for c in 0..cols {
                let e = err[r * cols + c];
                let cell = &mut cells[cr * hc + c * hc / cols];
                if e.is_nan() || e > *cell {
                    *cell = if e.is_finite() { e } else { f64::MAX };
                }
            }
        }
        let (worst, at) =
            err.iter().enumerate().fold(
                (0.0f64, 0usize),
                |(m, i), (j, &e)| if e > m { (e, j) } else { (m, i) },
            );
        Ok(json!({
            "numel": err.len(),
            "zeros": zeros,
            "nonfinite": nonfinite,
            "histogram": hist,
            "heatmap": { "rows": hr, "cols": hc, "tensor_rows": rows, "tensor_cols": cols, "cells": cells },
            "shape": shape,
            "worst": { "abs": worst, "flat_index": at, "a": va[at], "b": vb[at] },
        }))
    }

    /// Streamed (two passes, chunk by chunk, on several threads) it is the
    /// same map: NaN and infinities, pooled cells, a tensor of several chunks.
    #[test]
    fn streamed_error_map_equals_whole() {
        use trace_writer::{Metadata, TensorMeta, Writer, WriterOptions};
        for (rows, cols) in [(300u64, 301u64), (3, 5), (1, 1), (2000, 70)] {
            let n = (rows * cols) as usize;
            let a: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 7.0).collect();
            let mut b: Vec<f32> = a
                .iter()
                .enumerate()
                .map(|(i, x)| x + (i % 13) as f32 * 1e-3)
                .collect();
            if n > 10 {
                b[3] = f32::NAN;
                b[n - 2] = f32::INFINITY;
                b[n / 2] += 100.0;
            }
            let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            let w = Writer::in_memory(Metadata::new(), WriterOptions::default()).unwrap();
            let shape = [rows, cols];
            w.add_tensor(
                "a",
                trace_format::DType::F32,
                &shape,
                &bytes(&a),
                TensorMeta::new(),
            )
            .unwrap();
            w.add_tensor(
                "b",
                trace_format::DType::F32,
                &shape,
                &bytes(&b),
                TensorMeta::new(),
            )
            .unwrap();
            let (_, file) = w.finish_into_bytes().unwrap();
            let t = Trace::from_bytes("e.tdump", file).unwrap();
            let (ia, ib) = (t.resolve("a").unwrap(), t.resolve("b").unwrap());
            assert_eq!(
                error_map(&t, &t, ia, ib).unwrap(),
                error_map_whole(&t, &t, ia, ib).unwrap(),
                "{rows}x{cols}"
            );
        }
    }
}
