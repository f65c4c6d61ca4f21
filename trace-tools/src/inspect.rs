//! `tracedump inspect`: what is in a trace and how each tensor is laid out.

use std::fmt::Write;

use serde::Serialize;
use trace_format::record::RecordKind;
use trace_reader::{SourceLayout, TensorFilter, Trace};

use crate::table::{join, Grid};
use crate::ToolsError;

type Result<T, E = ToolsError> = std::result::Result<T, E>;

/// What `inspect` shows.
#[derive(Debug, Default)]
pub struct InspectOptions {
    /// Also ggml's ne/nb where recorded.
    pub ggml: bool,
    /// Views grouped under their storages and parents.
    pub tree: bool,
    /// Every tensor's statistics.
    pub stats: bool,
    /// Which tensors.
    pub filter: TensorFilter,
}

#[derive(Serialize)]
struct Header {
    file: String,
    /// `tracedump` or `gguf`.
    container: &'static str,
    format_version: String,
    bytes: u64,
    finished: bool,
    torn_tail: Option<TornJson>,
    records: usize,
    tensors: usize,
    storages: usize,
    run_metadata: serde_json::Map<String, serde_json::Value>,
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct TornJson {
    offset: u64,
    bytes: u64,
    reason: String,
}

#[derive(Serialize)]
struct StatsJson {
    min: f64,
    max: f64,
    mean: f64,
    std: f64,
    abs_max: f64,
    nan: u64,
    inf: u64,
    stored: bool,
}

#[derive(Serialize)]
struct Row {
    id: u64,
    name: String,
    occurrence: Option<(usize, usize)>,
    dtype: String,
    shape: Vec<u64>,
    byte_strides: Vec<i64>,
    element_strides: Option<Vec<i64>>,
    contiguous: bool,
    storage: Option<u64>,
    storage_offset: u64,
    /// Values rebuilt from the parents (data kind 3).
    derived: bool,
    layer: Option<i64>,
    step: Option<i64>,
    role: Option<String>,
    ggml_ne: Option<Vec<i64>>,
    ggml_nb: Option<Vec<u64>>,
    parents: Vec<u64>,
    lineage: String,
    stats: Option<StatsJson>,
    error: Option<String>,
}

/// A metadata value for one line: long lists (a GGUF vocabulary) shortened.
fn short_value(v: &trace_reader::Value) -> String {
    match v {
        trace_reader::Value::List(items) if items.len() > 16 => {
            let head: Vec<String> = items[..8].iter().map(short_value).collect();
            format!("[{}, … {} items]", head.join(", "), items.len())
        }
        other => {
            let s = other.to_string();
            if s.chars().count() > 200 {
                format!(
                    "{}… ({} chars)",
                    s.chars().take(160).collect::<String>(),
                    s.chars().count()
                )
            } else {
                s
            }
        }
    }
}

/// A metadata value as JSON.
pub fn value_json(v: &trace_reader::Value) -> serde_json::Value {
    use trace_reader::Value as V;
    match v {
        V::Bool(b) => (*b).into(),
        V::I64(x) => (*x).into(),
        V::U64(x) => (*x).into(),
        V::F64(x) => serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, Into::into),
        V::Str(s) => s.clone().into(),
        V::Bytes(b) => b
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into(),
        V::List(items) => items.iter().map(value_json).collect::<Vec<_>>().into(),
        V::Map(items) => items
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

fn row(trace: &Trace, id: u64, stats: bool) -> Row {
    let t = match trace.tensor(id) {
        Ok(t) => t,
        Err(e) => {
            return Row {
                id,
                name: trace.record_name(id).unwrap_or("?").to_owned(),
                occurrence: None,
                dtype: String::new(),
                shape: vec![],
                byte_strides: vec![],
                element_strides: None,
                contiguous: false,
                storage: None,
                storage_offset: 0,
                derived: false,
                layer: None,
                step: None,
                role: None,
                ggml_ne: None,
                ggml_nb: None,
                parents: vec![],
                lineage: String::new(),
                stats: None,
                error: Some(e.to_string()),
            }
        }
    };
    let (ggml_ne, ggml_nb) = match &t.source_layout {
        Some(SourceLayout::Ggml { ne, nb }) => (Some(ne.clone()), Some(nb.clone())),
        None => (None, None),
    };
    let mut error = None;
    let stats = if let (true, Some(s)) = (t.is_stats_only(), &t.stats) {
        Some(StatsJson {
            min: s.min,
            max: s.max,
            mean: s.mean,
            std: s.std,
            abs_max: s.abs_max,
            nan: s.nan_count,
            inf: s.inf_count,
            stored: true,
        })
    } else if stats {
        // a chunk at a time: memory stays bounded whatever the tensor's size
        let streamed = trace
            .view(id)
            .map_err(crate::ToolsError::from)
            .and_then(|v| crate::stream::Source::of(trace, v))
            .and_then(|src| {
                crate::stream::moments(&src)
                    .map_err(|e| crate::ToolsError::Invalid(format!("tensor `{}`: {e}", t.name)))
            });
        match streamed {
            Ok(s) => {
                let m = s.moments();
                Some(StatsJson {
                    min: m.min,
                    max: m.max,
                    mean: m.mean,
                    std: m.std,
                    abs_max: s.abs_max(),
                    nan: s.nan,
                    inf: s.inf,
                    stored: false,
                })
            }
            Err(e) => {
                error = Some(format!("stats: {e}"));
                None
            }
        }
    } else {
        None
    };
    Row {
        id,
        name: t.name.clone(),
        occurrence: trace.occurrence(id).filter(|&(_, n)| n > 1),
        dtype: t.dtype.to_string(),
        shape: t.layout.shape().to_vec(),
        byte_strides: t.layout.byte_strides().to_vec(),
        element_strides: t.element_strides(),
        contiguous: t.is_contiguous(),
        storage: t.storage,
        storage_offset: t.layout.storage_offset(),
        derived: t.derived,
        layer: t.layer,
        step: t.step,
        role: t.role.clone(),
        ggml_ne,
        ggml_nb,
        parents: t.lineage.parents.clone(),
        lineage: trace.lineage_text(t.id),
        stats,
        error,
    }
}

fn header(trace: &Trace) -> Header {
    let (major, minor) = trace.version();
    let gguf_version = trace
        .run_metadata()
        .get("gguf_version")
        .map(ToString::to_string);
    Header {
        file: trace.path().display().to_string(),
        container: if trace.is_gguf() { "gguf" } else { "tracedump" },
        format_version: match gguf_version {
            Some(v) if trace.is_gguf() => v,
            _ => format!("{major}.{minor}"),
        },
        bytes: trace.file_len(),
        finished: trace.is_finished(),
        torn_tail: trace.torn_tail().map(|t| TornJson {
            offset: t.offset,
            bytes: t.bytes,
            reason: t.reason.clone(),
        }),
        records: trace.records().len(),
        tensors: trace.len(),
        // STORAGE records and (format 1.2) STORAGE_UPDATE records: each a storage
        storages: trace
            .records()
            .iter()
            .filter(|r| {
                r.kind == RecordKind::Storage as u16 || r.kind == RecordKind::StorageUpdate as u16
            })
            .count(),
        run_metadata: trace
            .run_metadata()
            .iter()
            .map(|(k, v)| (k.to_owned(), value_json(v)))
            .collect(),
        warnings: trace.warnings().to_vec(),
    }
}

fn rows(
    trace: &Trace,
    opts: &InspectOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Row>> {
    let ids = trace.filter(&opts.filter)?;
    if !opts.stats {
        let out = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                progress(i + 1, ids.len());
                row(trace, id, false)
            })
            .collect();
        return Ok(out);
    }
    // statistics read every value: a batch of tensors at a time on every
    // core (and a large tensor's chunks too), progress after each batch
    use rayon::prelude::*;
    let batch = rayon::current_num_threads().max(1) * 4;
    let mut out = Vec::with_capacity(ids.len());
    for group in ids.chunks(batch) {
        let rows: Vec<Row> = group.par_iter().map(|&id| row(trace, id, true)).collect();
        out.extend(rows);
        progress(out.len(), ids.len());
    }
    Ok(out)
}

/// `inspect --json`: the header and one object per tensor. `progress` is
/// called with (tensors done, tensors) as each row is made.
pub fn inspect_json(
    trace: &Trace,
    opts: &InspectOptions,
    progress: impl FnMut(usize, usize),
) -> Result<String> {
    #[derive(Serialize)]
    struct Doc {
        header: Header,
        tensors: Vec<Row>,
    }
    Ok(serde_json::to_string_pretty(&Doc {
        header: header(trace),
        tensors: rows(trace, opts, progress)?,
    })?)
}

fn where_(r: &Row) -> String {
    match r.storage {
        None if r.derived => "derived (rebuilt from its parents)".into(),
        None if r.error.is_none() => "stats only".into(),
        None => String::new(),
        Some(s) if s == r.id => format!("own bytes +{}", r.storage_offset),
        Some(s) => format!("storage #{s} +{}", r.storage_offset),
    }
}

fn labels(r: &Row) -> String {
    let mut l = Vec::new();
    if let Some(x) = r.layer {
        l.push(format!("L{x}"));
    }
    if let Some(x) = r.step {
        l.push(format!("S{x}"));
    }
    if let Some(x) = &r.role {
        l.push(x.clone());
    }
    l.join(" ")
}

/// `inspect`'s table (or `--tree`); `progress` as for [`inspect_json`].
pub fn inspect_text(
    trace: &Trace,
    opts: &InspectOptions,
    progress: impl FnMut(usize, usize),
) -> Result<String> {
    let mut s = String::new();
    let h = header(trace);
    writeln!(s, "file      {}", h.file)?;
    let container = if h.container == "gguf" {
        "GGUF"
    } else {
        "tracedump"
    };
    writeln!(
        s,
        "format    {container} v{}, {} bytes",
        h.format_version, h.bytes
    )?;
    let status = match &h.torn_tail {
        _ if h.container == "gguf" => {
            "GGUF file read as a trace (tensors and metadata; GGUF has no checksums)".to_string()
        }
        _ if h.finished => "finished (footer index present)".to_string(),
        Some(t) => format!(
            "UNFINISHED: torn tail of {} bytes at byte {} ({})",
            t.bytes, t.offset, t.reason
        ),
        None => "UNFINISHED: no footer (read by scanning)".to_string(),
    };
    writeln!(s, "status    {status}")?;
    writeln!(
        s,
        "records   {} ({} tensors, {} storages)",
        h.records, h.tensors, h.storages
    )?;
    for (k, v) in trace.run_metadata().iter() {
        writeln!(s, "run       {k} = {}", short_value(v))?;
    }
    for w in &h.warnings {
        writeln!(s, "warning   {w}")?;
    }
    let rows = rows(trace, opts, progress)?;
    if opts.tree {
        writeln!(s)?;
        s.push_str(&tree(trace, &rows));
        return Ok(s);
    }
    writeln!(s)?;
    for r in &rows {
        if let (Some(e), true) = (&r.error, r.dtype.is_empty()) {
            writeln!(s, "#{:<4} {}  ERROR {e}", r.id, r.name)?;
            continue;
        }
        let name = match r.occurrence {
            Some((k, n)) => format!("{} ({} of {n})", r.name, k + 1),
            None => r.name.clone(),
        };
        writeln!(
            s,
            "#{:<4} {name}  {} [{}]  {}",
            r.id,
            r.dtype,
            join(&r.shape),
            labels(r)
        )?;
        let elems = match &r.element_strides {
            Some(e) if !r.contiguous => format!("  elems [{}]", join(e)),
            _ => String::new(),
        };
        let layout = if r.storage.is_none() {
            "-"
        } else if r.contiguous {
            "contiguous"
        } else {
            "strided"
        };
        writeln!(
            s,
            "      {layout}  bytes [{}]{elems}  {}",
            join(&r.byte_strides),
            where_(r)
        )?;
        if !r.lineage.is_empty() {
            writeln!(s, "      lineage  {}", r.lineage)?;
        }
        if let (true, Some(ne), Some(nb)) = (opts.ggml, &r.ggml_ne, &r.ggml_nb) {
            writeln!(s, "      ggml  ne [{}]  nb [{}]", join(ne), join(nb))?;
        }
        if let Some(e) = &r.error {
            writeln!(s, "      error  {e}")?;
        }
    }
    if opts.stats {
        let mut st = Grid::new(&[
            "#", "name", "min", "max", "mean", "std", "abs max", "NaN", "Inf",
        ]);
        for r in &rows {
            match (&r.stats, &r.error) {
                (Some(x), _) => {
                    st.row(vec![
                        r.id.to_string(),
                        format!("{}{}", r.name, if x.stored { " (stored)" } else { "" }),
                        num(x.min),
                        num(x.max),
                        num(x.mean),
                        num(x.std),
                        num(x.abs_max),
                        x.nan.to_string(),
                        x.inf.to_string(),
                    ]);
                }
                (None, Some(e)) => {
                    st.row(vec![r.id.to_string(), r.name.clone(), e.clone()]);
                }
                _ => {}
            }
        }
        writeln!(s, "\n{st}")?;
    }
    Ok(s)
}

/// A number in at most 10 characters: fixed for ordinary magnitudes, else scientific.
pub fn num(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1e4 || x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.5}")
    }
}

/// The indentation of a tree line at `depth`: three spaces a level up to
/// 16, then the depth as a number, so that output stays linear in the
/// number of tensors however deep a view chain goes.
fn indent(depth: usize) -> String {
    const SHOWN: usize = 16;
    if depth <= SHOWN {
        "   ".repeat(depth)
    } else {
        format!("{}[depth {depth}] ", "   ".repeat(SHOWN))
    }
}

/// Views grouped under their storages, children under their parents.
fn tree(trace: &Trace, rows: &[Row]) -> String {
    let mut s = String::new();
    let shown: std::collections::HashSet<u64> = rows.iter().map(|r| r.id).collect();
    let by_id: std::collections::HashMap<u64, &Row> = rows.iter().map(|r| (r.id, r)).collect();
    let line = |r: &Row| {
        format!(
            "#{} {} {} [{}] bytes[{}] {}",
            r.id,
            r.name,
            r.dtype,
            join(&r.shape),
            join(&r.byte_strides),
            labels(r)
        )
    };
    // a tensor's tree parent: its first parent that is shown and shares its storage
    let parent_of = |r: &Row| {
        r.parents
            .iter()
            .copied()
            .find(|p| shown.contains(p) && by_id.get(p).is_some_and(|pr| pr.storage == r.storage))
    };
    // children by parent, in row order: one pass, not one scan per node
    let mut children: std::collections::HashMap<u64, Vec<&Row>> = std::collections::HashMap::new();
    let mut roots = Vec::new();
    for r in rows {
        match parent_of(r) {
            Some(p) => children.entry(p).or_default().push(r),
            None => roots.push(r),
        }
    }
    // depth-first with an explicit stack: a view chain can be as deep as the file is long
    let walk = |s: &mut String, root: &Row| {
        let mut stack: Vec<(&Row, usize)> = children
            .get(&root.id)
            .map_or(Vec::new(), |c| c.iter().rev().map(|r| (*r, 1)).collect());
        while let Some((r, depth)) = stack.pop() {
            let _ = writeln!(
                s,
                "{}└─ {}  {}",
                indent(depth),
                line(r),
                r.lineage.rsplit(" → ").next().unwrap_or("")
            );
            if let Some(c) = children.get(&r.id) {
                stack.extend(c.iter().rev().map(|r| (*r, depth + 1)));
            }
        }
    };
    let mut seen = std::collections::HashSet::new();
    let storages: Vec<Option<u64>> = rows
        .iter()
        .map(|r| r.storage)
        .filter(|st| seen.insert(*st))
        .collect();
    let mut roots_of: std::collections::HashMap<Option<u64>, Vec<&Row>> =
        std::collections::HashMap::new();
    for r in roots {
        roots_of.entry(r.storage).or_default().push(r);
    }
    for st in storages {
        let roots = roots_of.get(&st).map_or(&[][..], |v| v.as_slice());
        match st {
            Some(sid)
                if trace
                    .records()
                    .get(sid as usize)
                    .is_some_and(|e| e.kind == 2) =>
            {
                let len = trace.storage(sid).map(|x| x.len).unwrap_or(0);
                let _ = writeln!(
                    s,
                    "storage #{sid} {} ({len} bytes)",
                    trace.record_name(sid).unwrap_or("")
                );
                for r in roots {
                    let _ = writeln!(s, "└─ {}", line(r));
                    walk(&mut s, r);
                }
            }
            Some(sid)
                if trace
                    .records()
                    .get(sid as usize)
                    .is_some_and(|e| e.kind == RecordKind::StorageUpdate as u16) =>
            {
                // format 1.2: a storage as an earlier one updated (SPEC.md §5.7)
                let len = roots
                    .first()
                    .and_then(|r| trace.tensor(r.id).ok())
                    .map_or(0, |t| t.storage_len());
                let _ = writeln!(
                    s,
                    "storage #{sid} {} ({len} bytes, an update of an earlier storage)",
                    trace.record_name(sid).unwrap_or("")
                );
                for r in roots {
                    let _ = writeln!(s, "└─ {}", line(r));
                    walk(&mut s, r);
                }
            }
            None => {
                for r in rows.iter().filter(|r| r.storage.is_none()) {
                    let _ = writeln!(s, "(stats only) {}", line(r));
                }
            }
            Some(_) => {
                for r in roots {
                    let _ = writeln!(s, "own bytes {}", line(r));
                    walk(&mut s, r);
                }
            }
        }
    }
    s
}
