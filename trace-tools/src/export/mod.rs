//! `tracedump export` / `import`: tensors to and from safetensors and numpy `.npz`.
//!
//! Export writes every tensor's *logical* value, contiguous and row-major,
//! whatever its layout in the trace (a permuted view comes out as the
//! permuted array). Names repeat in traces: the first occurrence keeps its
//! name and the k-th later one (k ≥ 1) is exported as `name#k`, the
//! convention of [`Trace::get`]. Block-quantized and statistics-only tensors
//! are skipped and listed with the reason.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use ::safetensors::tensor::{Dtype, View};
use serde::Serialize;
use serde_json::json;
use trace_reader::{DType, TensorInfo, TensorView, Trace, Value};

use crate::error::{bail, invalid};
use crate::recover::{same_file, temp_path};

#[cfg(test)]
mod tests;
mod to_npz;
mod to_safetensors;

pub use crate::import::{import_gguf, import_safetensors, ImportSummary};
use crate::{ResultExt, ToolsError};
use to_npz::write_npz;
use to_safetensors::write_safetensors;

type Result<T, E = ToolsError> = std::result::Result<T, E>;

/// The output format of [`export`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// A `.safetensors` file; run metadata and the tensors' source layouts
    /// go into its `__metadata__`.
    Safetensors,
    /// A numpy `.npz` archive (stored, uncompressed) of `.npy` arrays.
    Npz,
}

/// What [`export`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// Names of the tensors written, in trace order.
    pub exported: Vec<String>,
    /// Tensors not written: (name, why).
    pub skipped: Vec<(String, String)>,
    /// Tensors written in another dtype than the trace's, or under another
    /// name than the usual `name` / `name#k`: (name, what was done).
    pub converted: Vec<(String, String)>,
    /// Size of the output file.
    pub bytes: u64,
}

/// The key of `__metadata__` that describes the source tensors.
pub use crate::import::TENSORS_KEY;

/// A tensor chosen for export.
struct Planned<'t> {
    name: String,
    view: TensorView<'t>,
}

/// The tensors to export, by export name, plus what was skipped or renamed.
struct Plan<'t> {
    tensors: Vec<Planned<'t>>,
    /// JSON description of every selected tensor, by export name.
    described: BTreeMap<String, serde_json::Value>,
    skipped: Vec<(String, String)>,
    renamed: Vec<(String, String)>,
}

/// The export name of every tensor of the trace, by record id: `name` for the
/// first occurrence, `name#k` for the k-th later one. A `name#k` that is also
/// some tensor's literal name (or a name `reserved` refuses) gets the record
/// id appended, `name#k@id`, and is reported as renamed.
fn export_names(
    trace: &Trace,
    reserved: &dyn Fn(&str) -> bool,
) -> (HashMap<u64, String>, Vec<(u64, String)>) {
    let literal: HashSet<&str> = trace
        .tensor_ids()
        .iter()
        .filter_map(|&id| trace.record_name(id))
        .collect();
    let mut used = HashSet::new();
    let mut names = HashMap::new();
    let mut renamed = Vec::new();
    for &id in trace.tensor_ids() {
        let base = trace.record_name(id).unwrap_or("");
        let k = trace.occurrence(id).map_or(0, |(k, _)| k);
        let plain = if k == 0 {
            base.to_owned()
        } else {
            format!("{base}#{k}")
        };
        let clash = |n: &str| used.contains(n) || reserved(n) || (k > 0 && literal.contains(n));
        let mut name = plain.clone();
        if clash(&name) {
            name = format!("{plain}@{id}");
            while clash(&name) {
                name.push('_');
            }
            renamed.push((
                id,
                format!("exported as `{name}`: `{plain}` is another tensor's name or reserved"),
            ));
        }
        used.insert(name.clone());
        names.insert(id, name);
    }
    (names, renamed)
}

fn lineage_text(t: &TensorInfo, names: &HashMap<u64, String>) -> String {
    let mut parts = Vec::new();
    if !t.lineage.parents.is_empty() {
        let ps: Vec<String> = t
            .lineage
            .parents
            .iter()
            .map(|p| {
                names
                    .get(p)
                    .cloned()
                    .unwrap_or_else(|| format!("record {p}"))
            })
            .collect();
        parts.push(ps.join(" + "));
    }
    parts.extend(t.lineage.ops.iter().map(|o| o.to_string()));
    if let Some(op) = &t.lineage.engine_op {
        parts.push(format!("[{} {}]", op.engine, op.op));
    }
    parts.join(" → ")
}

fn describe(t: &TensorInfo, names: &HashMap<u64, String>) -> serde_json::Value {
    json!({
        "record": t.id,
        "name": t.name,
        "dtype": t.dtype.name(),
        "shape": t.layout.shape(),
        "byte_strides": t.layout.byte_strides(),
        "storage_offset": t.layout.storage_offset(),
        "storage": t.storage,
        "layer": t.layer,
        "step": t.step,
        "role": t.role,
        "parents": t.lineage.parents,
        "lineage": lineage_text(t, names),
    })
}

fn plan<'t>(
    trace: &'t Trace,
    filter: Option<&[u64]>,
    reserved: &dyn Fn(&str) -> bool,
) -> Result<Plan<'t>> {
    let selected: Vec<u64> = match filter {
        None => trace.tensor_ids().to_vec(),
        Some(ids) => {
            let want: HashSet<u64> = ids.iter().copied().collect();
            let all: HashSet<u64> = trace.tensor_ids().iter().copied().collect();
            if let Some(bad) = ids.iter().find(|id| !all.contains(id)) {
                bail!("{}: record {bad} is not a tensor", trace.path().display());
            }
            trace
                .tensor_ids()
                .iter()
                .copied()
                .filter(|id| want.contains(id))
                .collect()
        }
    };
    let (names, renamed_ids) = export_names(trace, reserved);
    let mut p = Plan {
        tensors: Vec::new(),
        described: BTreeMap::new(),
        skipped: Vec::new(),
        renamed: Vec::new(),
    };
    let selected_set: HashSet<u64> = selected.iter().copied().collect();
    for (id, what) in renamed_ids {
        if selected_set.contains(&id) {
            p.renamed.push((names[&id].clone(), what));
        }
    }
    let mut broadcast_left = trace_reader::values::value_limit(trace.file_len()).saturating_mul(4);
    for id in selected {
        let name = names[&id].clone();
        let t = match trace.tensor(id) {
            Ok(t) => t,
            Err(e) => {
                p.skipped.push((name, format!("unreadable: {e}")));
                continue;
            }
        };
        let mut d = describe(t, &names);
        let limit = trace_reader::values::value_limit(trace.file_len());
        let must_build = t.dtype.is_block() || t.derived || !t.is_contiguous();
        let beyond = t.values_beyond_bytes();
        let why = if t.is_stats_only() {
            Some("statistics only: the trace holds no values".to_string())
        } else if t.dtype.is_block() && !trace_quant::can_dequantize(t.dtype) {
            Some(format!(
                "{} blocks cannot be dequantized by this version",
                t.dtype
            ))
        } else if must_build && t.layout.numel() > limit {
            // a broadcast view can name far more values than the file holds:
            // refused before anything is allocated or written
            Some(format!(
                "materializing {} values is refused (limit {limit} for this file)",
                t.layout.numel()
            ))
        } else if beyond > broadcast_left {
            // the trace's broadcast budget (set by the verb), spent in plan
            // order as the writing will spend it
            Some(format!(
                "reading it expands {beyond} values beyond its bytes (zero strides), past the budget left for this trace's broadcast views"
            ))
        } else {
            broadcast_left -= beyond;
            None
        };
        if let Some(why) = why {
            d["skipped"] = json!(why);
            p.skipped.push((name.clone(), why));
        } else {
            p.tensors.push(Planned {
                name: name.clone(),
                view: trace.view(id).context_with(|| format!("tensor `{name}`"))?,
            });
        }
        p.described.insert(name, d);
    }
    Ok(p)
}

/// Write the tensors of `trace` (those in `filter`, by record id, or all) to
/// `out` as `format`.
pub fn export(
    trace: &Trace,
    format: ExportFormat,
    out: &Path,
    filter: Option<&[u64]>,
) -> Result<ExportSummary> {
    if same_file(trace.path(), out) {
        bail!(
            "{}: the output must be a different file from the trace",
            out.display()
        );
    }
    let reserved = |n: &str| format == ExportFormat::Safetensors && n == "__metadata__";
    let plan = plan(trace, filter, &reserved)?;
    let mut summary = ExportSummary {
        exported: plan.tensors.iter().map(|t| t.name.clone()).collect(),
        skipped: plan.skipped.clone(),
        converted: plan.renamed.clone(),
        bytes: 0,
    };
    match format {
        ExportFormat::Safetensors => {
            for p in plan
                .tensors
                .iter()
                .filter(|p| p.view.info().dtype.is_block())
            {
                let d = p.view.info().dtype;
                summary.converted.push((
                    p.name.clone(),
                    format!("{d} → f32 (dequantized; safetensors has no {d})"),
                ));
            }
            write_safetensors(trace, &plan, out)?
        }
        ExportFormat::Npz => {
            let tmp = temp_path(out);
            let result = write_npz(trace, &plan, &tmp, &mut summary.converted).and_then(|()| {
                fs::rename(&tmp, out)
                    .context_with(|| format!("cannot move {} to {}", tmp.display(), out.display()))
            });
            if let Err(e) = result {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
    }
    summary.bytes = fs::metadata(out)
        .context_with(|| format!("{}", out.display()))?
        .len();
    Ok(summary)
}
