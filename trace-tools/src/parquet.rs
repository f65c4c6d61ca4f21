//! Parquet tables (the `parquet` feature): one row per tensor
//! (`export --to parquet`), optionally a long table of the values of small
//! tensors, and one row per compared pair (`diff --parquet`). Written with
//! arrow-rs `arrow` + `parquet`, snappy-compressed; readable by pyarrow,
//! DuckDB, Spark, pandas (`make test` reads them with all four but pandas).
//!
//! The columns are plain types that every reader maps to its own: UTF-8
//! strings, booleans, float64, signed int64 and lists of int64. No column
//! is unsigned, though ids, counts and offsets are `u64` here: JVM readers
//! have no unsigned 64-bit type (Spark 4 reads UINT_64 as `decimal(20,0)`,
//! older Spark refuses it). No timestamps, no dictionary-typed columns.

use std::path::Path;
use std::sync::Arc;

use crate::compare::DiffReport;
use crate::{ResultExt, ToolsError};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use trace_reader::{SourceLayout, Stats, Trace};

type Result<T, E = ToolsError> = std::result::Result<T, E>;

fn write(batch: &RecordBatch, out: &Path) -> Result<()> {
    let tmp = out.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).context_with(|| format!("{}", tmp.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("tracedump {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    std::fs::rename(&tmp, out).context_with(|| format!("{}", out.display()))?;
    Ok(())
}

/// A list column: one list per row (None: a null row).
fn list<B, T>(values: B, rows: &[Option<Vec<T>>], push: impl Fn(&mut B, &[T])) -> ArrayRef
where
    B: arrow::array::ArrayBuilder,
{
    let mut b = ListBuilder::new(values);
    for r in rows {
        match r {
            Some(v) => {
                push(b.values(), v);
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

/// A value of an unsigned quantity (id, count, offset, size) as Parquet's
/// signed INT64: JVM readers have no unsigned 64-bit type (Spark 4 reads
/// UINT_64 as `decimal(20,0)`, older Spark refuses it), so no column of ours
/// is unsigned. No valid trace holds a value past 2^63 − 1; one that does is
/// an error naming the column and row, not a wrapped number.
fn signed(column: &str, row: usize, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| {
        ToolsError::Invalid(format!(
            "Parquet column `{column}`, row {row}: {v} is past INT64's 2^63 - 1"
        ))
    })
}

/// A list column of unsigned quantities, as INT64 (see [`signed`]).
fn u64_list(column: &str, rows: &[Option<Vec<u64>>]) -> Result<ArrayRef> {
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.as_ref()
                .map(|v| v.iter().map(|&x| signed(column, i, x)).collect())
                .transpose()
        })
        .collect::<Result<Vec<Option<Vec<i64>>>>>()?;
    Ok(i64_list(&rows))
}

fn i64_list(rows: &[Option<Vec<i64>>]) -> ArrayRef {
    list(Int64Builder::new(), rows, |b, v| b.append_slice(v))
}

fn strings<'a>(rows: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for r in rows {
        b.append_option(r);
    }
    Arc::new(b.finish())
}

/// A column of unsigned quantities, as INT64 (see [`signed`]).
fn u64s(column: &str, rows: impl IntoIterator<Item = Option<u64>>) -> Result<ArrayRef> {
    let mut b = Int64Builder::new();
    for (i, r) in rows.into_iter().enumerate() {
        b.append_option(r.map(|v| signed(column, i, v)).transpose()?);
    }
    Ok(Arc::new(b.finish()))
}

fn i64s(rows: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    let mut b = Int64Builder::new();
    for r in rows {
        b.append_option(r);
    }
    Arc::new(b.finish())
}

fn f64s(rows: impl IntoIterator<Item = Option<f64>>) -> ArrayRef {
    let mut b = Float64Builder::new();
    for r in rows {
        b.append_option(r);
    }
    Arc::new(b.finish())
}

fn bools(rows: impl IntoIterator<Item = Option<bool>>) -> ArrayRef {
    let mut b = BooleanBuilder::new();
    for r in rows {
        b.append_option(r);
    }
    Arc::new(b.finish())
}

/// Statistics of values, as the writer computes them (SPEC.md §5.5).
fn stats_of(values: &[f64]) -> Stats {
    let mut acc = trace_format::stats::StatsAccumulator::new();
    for &v in values {
        acc.push(v);
    }
    acc.finish(None)
}

/// What `export --to parquet` wrote.
#[derive(Debug, serde::Serialize)]
pub struct ParquetSummary {
    /// The tensors table.
    pub tensors_file: String,
    /// Rows in it.
    pub tensors: usize,
    /// The values table, when asked for.
    pub values_file: Option<String>,
    /// Rows in it.
    pub values: usize,
}

/// One row per tensor of each part's `ids` (a trace, or the shards of a
/// run, with their `rank`, null for an unsharded trace, and `file`); with
/// `values_max`, also `OUT.values.parquet` with one row per value of every
/// tensor of at most that many elements.
pub fn export_shards(
    parts: &[(Option<i64>, &Trace, &[u64])],
    out: &Path,
    values_max: Option<u64>,
) -> Result<ParquetSummary> {
    #[derive(Default)]
    struct Row {
        file: usize,
        rank: Option<i64>,
        id: u64,
        name: String,
        dtype: String,
        shape: Vec<u64>,
        byte_strides: Vec<i64>,
        element_strides: Option<Vec<i64>>,
        storage: Option<u64>,
        storage_offset: u64,
        contiguous: bool,
        derived: bool,
        parents: Vec<u64>,
        lineage: String,
        engine_op: Option<String>,
        role: Option<String>,
        layer: Option<i64>,
        step: Option<i64>,
        ggml: Option<(Vec<i64>, Vec<u64>)>,
        stats: Option<Stats>,
        stats_source: Option<&'static str>,
        error: Option<String>,
    }
    let mut rows = Vec::new();
    let (mut v_id, mut v_name, mut v_index, mut v_value) = (vec![], vec![], vec![], vec![]);
    let (mut v_file, mut v_rank) = (vec![], vec![]);
    let files: Vec<String> = parts
        .iter()
        .map(|(_, t, _)| t.path().display().to_string())
        .collect();
    for (file, &(rank, trace, ids)) in parts.iter().enumerate() {
        for &id in ids {
            let t = match trace.tensor(id) {
                Ok(t) => t,
                Err(e) => {
                    rows.push(Row {
                        file,
                        rank,
                        id,
                        name: trace.record_name(id).unwrap_or("").to_owned(),
                        error: Some(e.to_string()),
                        ..Default::default()
                    });
                    continue;
                }
            };
            let mut error = None;
            let numel = t.layout.numel();
            let values = if t.has_values() {
                match trace.view(id).and_then(|v| v.to_f64()) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        error = Some(e.to_string());
                        None
                    }
                }
            } else {
                None
            };
            let (stats, stats_source) = match (&t.stats, &values) {
                (Some(s), _) => (Some(s.clone()), Some("stored")),
                (None, Some(v)) => (Some(stats_of(v)), Some("computed")),
                (None, None) => (None, None),
            };
            if let (Some(max), Some(v)) = (values_max, &values) {
                if numel <= max {
                    for (i, &x) in v.iter().enumerate() {
                        v_file.push(file);
                        v_rank.push(rank);
                        v_id.push(id);
                        v_name.push(t.name.clone());
                        v_index.push(i as u64);
                        v_value.push(x);
                    }
                }
            }
            rows.push(Row {
                file,
                rank,
                id,
                name: t.name.clone(),
                dtype: t.dtype.to_string(),
                shape: t.layout.shape().to_vec(),
                byte_strides: t.layout.byte_strides().to_vec(),
                element_strides: t.element_strides(),
                storage: t.storage,
                storage_offset: t.layout.storage_offset(),
                contiguous: t.is_contiguous(),
                derived: t.derived,
                parents: t.lineage.parents.clone(),
                lineage: trace.lineage_text(id),
                engine_op: t
                    .lineage
                    .engine_op
                    .as_ref()
                    .map(|e| format!("{} {}", e.engine, e.op)),
                role: t.role.clone(),
                layer: t.layer,
                step: t.step,
                ggml: t.source_layout.as_ref().map(|s| match s {
                    SourceLayout::Ggml { ne, nb } => (ne.clone(), nb.clone()),
                }),
                stats,
                stats_source,
                error,
            });
        }
    }
    let st = |f: fn(&Stats) -> f64| f64s(rows.iter().map(|r| r.stats.as_ref().map(f)));
    let stu = |c: &str, f: fn(&Stats) -> u64| u64s(c, rows.iter().map(|r| r.stats.as_ref().map(f)));
    let batch = RecordBatch::try_from_iter(vec![
        (
            "file",
            strings(rows.iter().map(|r| Some(files[r.file].as_str()))),
        ),
        ("rank", i64s(rows.iter().map(|r| r.rank))),
        ("id", u64s("id", rows.iter().map(|r| Some(r.id)))?),
        ("name", strings(rows.iter().map(|r| Some(r.name.as_str())))),
        (
            "dtype",
            strings(rows.iter().map(|r| Some(r.dtype.as_str()))),
        ),
        (
            "shape",
            u64_list(
                "shape",
                &rows
                    .iter()
                    .map(|r| Some(r.shape.clone()))
                    .collect::<Vec<_>>(),
            )?,
        ),
        (
            "byte_strides",
            i64_list(
                &rows
                    .iter()
                    .map(|r| Some(r.byte_strides.clone()))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "element_strides",
            i64_list(
                &rows
                    .iter()
                    .map(|r| r.element_strides.clone())
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "numel",
            u64s("numel", rows.iter().map(|r| Some(r.shape.iter().product())))?,
        ),
        ("storage", u64s("storage", rows.iter().map(|r| r.storage))?),
        (
            "storage_offset",
            u64s(
                "storage_offset",
                rows.iter().map(|r| Some(r.storage_offset)),
            )?,
        ),
        ("contiguous", bools(rows.iter().map(|r| Some(r.contiguous)))),
        ("derived", bools(rows.iter().map(|r| Some(r.derived)))),
        (
            "parents",
            u64_list(
                "parents",
                &rows
                    .iter()
                    .map(|r| Some(r.parents.clone()))
                    .collect::<Vec<_>>(),
            )?,
        ),
        (
            "lineage",
            strings(rows.iter().map(|r| Some(r.lineage.as_str()))),
        ),
        (
            "engine_op",
            strings(rows.iter().map(|r| r.engine_op.as_deref())),
        ),
        ("role", strings(rows.iter().map(|r| r.role.as_deref()))),
        ("layer", i64s(rows.iter().map(|r| r.layer))),
        ("step", i64s(rows.iter().map(|r| r.step))),
        (
            "ggml_ne",
            i64_list(
                &rows
                    .iter()
                    .map(|r| r.ggml.as_ref().map(|g| g.0.clone()))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "ggml_nb",
            u64_list(
                "ggml_nb",
                &rows
                    .iter()
                    .map(|r| r.ggml.as_ref().map(|g| g.1.clone()))
                    .collect::<Vec<_>>(),
            )?,
        ),
        ("stats_source", strings(rows.iter().map(|r| r.stats_source))),
        ("count", stu("count", |s| s.count)?),
        ("nan_count", stu("nan_count", |s| s.nan_count)?),
        ("inf_count", stu("inf_count", |s| s.inf_count)?),
        ("min", st(|s| s.min)),
        ("max", st(|s| s.max)),
        ("mean", st(|s| s.mean)),
        ("std", st(|s| s.std)),
        ("abs_max", st(|s| s.abs_max)),
        ("l2_norm", st(|s| s.l2_norm)),
        ("error", strings(rows.iter().map(|r| r.error.as_deref()))),
    ])?;
    write(&batch, out)?;
    let mut summary = ParquetSummary {
        tensors_file: out.display().to_string(),
        tensors: rows.len(),
        values_file: None,
        values: 0,
    };
    if values_max.is_some() {
        let vout = values_path(out);
        let n = v_value.len();
        let batch = RecordBatch::try_from_iter(vec![
            (
                "file",
                strings(v_file.iter().map(|&f| Some(files[f].as_str()))),
            ),
            ("rank", i64s(v_rank.into_iter())),
            ("id", u64s("id", v_id.into_iter().map(Some))?),
            ("name", strings(v_name.iter().map(|s| Some(s.as_str())))),
            (
                "flat_index",
                u64s("flat_index", v_index.into_iter().map(Some))?,
            ),
            ("value", f64s(v_value.into_iter().map(Some))),
        ])?;
        write(&batch, &vout)?;
        summary.values_file = Some(vout.display().to_string());
        summary.values = n;
    }
    Ok(summary)
}

/// `tensors.parquet` → `tensors.values.parquet`.
pub fn values_path(out: &Path) -> std::path::PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.values.parquet"))
}

/// One row per compared pair of a `diff`, with A's `rank` (its run
/// metadata's; null when it has none) so that the tables of every rank of a
/// run read as one.
pub fn export_diff(a: &Trace, b: &Trace, r: &DiffReport, out: &Path) -> Result<()> {
    let p = &r.pairs;
    let rank = crate::shards::metadata_rank(a);
    let m = |f: fn(&crate::compare::Metrics) -> f64| f64s(p.iter().map(|x| x.measured().map(f)));
    let mu = |c: &str, f: fn(&crate::compare::Metrics) -> u64| {
        u64s(c, p.iter().map(|x| x.measured().map(f)))
    };
    let reasons: Vec<String> = p.iter().map(|x| x.verdict.reasons().join("; ")).collect();
    let (fa, fb) = (
        a.path().display().to_string(),
        b.path().display().to_string(),
    );
    let blame_of = |i: usize| r.blamed.iter().find(|bl| bl.pair == i);
    let top = |i: usize| blame_of(i).and_then(|bl| bl.diagnosis.first());
    let kinds: Vec<Option<String>> = (0..p.len())
        .map(|i| {
            top(i).map(|f| {
                serde_json::to_value(&f.cause)
                    .ok()
                    .and_then(|v| v["kind"].as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
        })
        .collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("file_a", strings(p.iter().map(|_| Some(fa.as_str())))),
        ("file_b", strings(p.iter().map(|_| Some(fb.as_str())))),
        ("rank", i64s(p.iter().map(|_| rank))),
        ("index", u64s("index", (0..p.len() as u64).map(Some))?),
        ("key", strings(p.iter().map(|x| Some(x.key.as_str())))),
        ("name_a", strings(p.iter().map(|x| Some(x.a.name.as_str())))),
        ("name_b", strings(p.iter().map(|x| Some(x.b.name.as_str())))),
        ("id_a", u64s("id_a", p.iter().map(|x| Some(x.a.id)))?),
        ("id_b", u64s("id_b", p.iter().map(|x| Some(x.b.id)))?),
        ("layer", i64s(p.iter().map(|x| x.a.layer.or(x.b.layer)))),
        (
            "dtype_a",
            strings(p.iter().map(|x| Some(x.a.dtype.as_str()))),
        ),
        (
            "dtype_b",
            strings(p.iter().map(|x| Some(x.b.dtype.as_str()))),
        ),
        (
            "shape_a",
            u64_list(
                "shape_a",
                &p.iter()
                    .map(|x| Some(x.a.shape.clone()))
                    .collect::<Vec<_>>(),
            )?,
        ),
        (
            "shape_b",
            u64_list(
                "shape_b",
                &p.iter()
                    .map(|x| Some(x.b.shape.clone()))
                    .collect::<Vec<_>>(),
            )?,
        ),
        ("verdict", strings(p.iter().map(|x| Some(x.verdict.name())))),
        (
            "divergent",
            bools(p.iter().map(|x| Some(x.verdict.is_divergent()))),
        ),
        (
            "first_divergence",
            bools((0..p.len()).map(|i| Some(r.first_divergence == Some(i)))),
        ),
        ("reasons", strings(reasons.iter().map(|s| Some(s.as_str())))),
        (
            "inputs",
            u64_list(
                "inputs",
                &p.iter()
                    .map(|x| Some(x.inputs.iter().map(|&i| i as u64).collect()))
                    .collect::<Vec<_>>(),
            )?,
        ),
        ("amplification", f64s(p.iter().map(|x| x.amplification))),
        (
            "blamed",
            bools((0..p.len()).map(|i| Some(blame_of(i).is_some()))),
        ),
        ("likely_cause", strings(kinds.iter().map(|k| k.as_deref()))),
        (
            "likely_cause_evidence",
            strings((0..p.len()).map(|i| top(i).map(|f| f.evidence.as_str()))),
        ),
        ("numel", mu("numel", |m| m.numel)?),
        ("max_abs", m(|m| m.max_abs)),
        ("max_rel", m(|m| m.max_rel)),
        ("mean_abs", m(|m| m.mean_abs)),
        ("rmse", m(|m| m.rmse)),
        ("cosine", m(|m| m.cosine)),
        (
            "max_ulp",
            u64s(
                "max_ulp",
                p.iter().map(|x| x.metrics.as_ref().and_then(|m| m.max_ulp)),
            )?,
        ),
        ("nan_mismatch", mu("nan_mismatch", |m| m.nan_mismatch)?),
        ("inf_mismatch", mu("inf_mismatch", |m| m.inf_mismatch)?),
        (
            "outside_tolerance",
            mu("outside_tolerance", |m| m.outside_tolerance)?,
        ),
        (
            "mean_a",
            f64s(p.iter().map(|x| x.metrics.as_ref().map(|m| m.a.mean))),
        ),
        (
            "std_a",
            f64s(p.iter().map(|x| x.metrics.as_ref().map(|m| m.a.std))),
        ),
        (
            "min_a",
            f64s(p.iter().map(|x| x.metrics.as_ref().map(|m| m.a.min))),
        ),
        (
            "max_a",
            f64s(p.iter().map(|x| x.metrics.as_ref().map(|m| m.a.max))),
        ),
        (
            "mean_b",
            f64s(p.iter().map(|x| x.metrics.as_ref().map(|m| m.b.mean))),
        ),
        (
            "std_b",
            f64s(p.iter().map(|x| x.metrics.as_ref().map(|m| m.b.std))),
        ),
        (
            "min_b",
            f64s(p.iter().map(|x| x.metrics.as_ref().map(|m| m.b.min))),
        ),
        (
            "max_b",
            f64s(p.iter().map(|x| x.metrics.as_ref().map(|m| m.b.max))),
        ),
    ])?;
    write(&batch, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, ListArray};
    use arrow::datatypes::DataType;

    #[test]
    fn unsigned_quantities_are_signed_int64() {
        let a = u64s("numel", [Some(3), None, Some(i64::MAX as u64)]).unwrap();
        assert_eq!(a.data_type(), &DataType::Int64);
        let a = a.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!((a.value(0), a.is_null(1), a.value(2)), (3, true, i64::MAX));
        let l = u64_list("shape", &[Some(vec![2, 3]), None]).unwrap();
        let l = l.as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!(l.value_type(), DataType::Int64);
        let v = l.value(0);
        let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!((v.values().to_vec(), l.is_null(1)), (vec![2, 3], true));
    }

    #[test]
    fn a_value_past_int64_is_an_error_naming_column_and_row() {
        let e = u64s("storage_offset", [Some(1), Some(1 << 63)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Parquet column `storage_offset`, row 1: 9223372036854775808 is past INT64's 2^63 - 1"
        );
        let e = u64_list("shape", &[None, None, Some(vec![1, u64::MAX])]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Parquet column `shape`, row 2: 18446744073709551615"));
    }
}
