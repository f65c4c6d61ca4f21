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

use safetensors::tensor::{Dtype, View};
use serde::Serialize;
use serde_json::json;
use trace_reader::{DType, Source, TensorInfo, TensorView, Trace, Value};
use trace_writer::{Metadata, Writer};

use crate::error::{bail, invalid};
use crate::import;
use crate::recover::{same_file, temp_path};
use crate::{ResultExt, ToolsError};

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

/// What [`import_safetensors`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Tensors recorded.
    pub tensors: u64,
    /// Size of the trace file.
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
        "shape": t.layout.shape,
        "byte_strides": t.layout.byte_strides,
        "storage_offset": t.layout.storage_offset,
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
            let result = write_npz(&plan, &tmp, &mut summary.converted).and_then(|()| {
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

// ---------------------------------------------------------------------------
// safetensors

fn st_dtype(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U64 => Dtype::U64,
        DType::U32 => Dtype::U32,
        DType::U16 => Dtype::U16,
        DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
        DType::F8_E4M3 => Dtype::F8_E4M3,
        DType::F8_E5M2 => Dtype::F8_E5M2,
        _ => return None,
    })
}

/// One tensor as safetensors sees it: the bytes are borrowed from the trace
/// when contiguous, else materialized when the file is written (one tensor
/// at a time).
struct StTensor<'a> {
    view: TensorView<'a>,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
    /// The first tensor that could not be materialized (checked after writing).
    failed: &'a RefCell<Option<String>>,
}

impl View for StTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let info = self.view.info();
        if info.dtype.is_block() {
            // safetensors has no ggml block types: the logical (dequantized) values
            let values = self
                .view
                .to_f32()
                .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
            return match values {
                Ok(v) if v.len() == self.len => Cow::Owned(v),
                other => {
                    let why = other
                        .err()
                        .map_or_else(|| "wrong length".to_string(), |e| e.to_string());
                    self.failed
                        .borrow_mut()
                        .get_or_insert(format!("tensor `{}`: {why}", info.name));
                    // nothing made up: the file is removed (`write_safetensors`)
                    Cow::Borrowed(&[])
                }
            };
        }
        if let Some(b) = self.view.contiguous_bytes() {
            return Cow::Borrowed(b);
        }
        match self.view.materialize() {
            Ok(v) if v.len() == self.len => Cow::Owned(v),
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(v) => format!("{} bytes materialized, {} expected", v.len(), self.len),
                };
                self.failed
                    .borrow_mut()
                    .get_or_insert(format!("tensor `{}`: {why}", self.view.info().name));
                Cow::Borrowed(&[])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

fn metadata_string(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

fn write_safetensors(trace: &Trace, plan: &Plan<'_>, out: &Path) -> Result<()> {
    let failed = RefCell::new(None);
    let mut tensors = Vec::with_capacity(plan.tensors.len());
    for p in &plan.tensors {
        let info = p.view.info();
        let ctx = || format!("tensor `{}`", p.name);
        // block types are written as their dequantized f32 values
        let stored = if info.dtype.is_block() {
            DType::F32
        } else {
            info.dtype
        };
        let dtype = st_dtype(stored)
            .ok_or_else(|| invalid!("{} has no safetensors dtype", info.dtype))
            .context_with(ctx)?;
        let shape = info
            .layout
            .shape
            .iter()
            .map(|&n| usize::try_from(n))
            .collect::<Result<Vec<_>, _>>()
            .context_with(ctx)?;
        let len = stored
            .bytes_for(info.layout.numel())
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| invalid!("too large"))
            .context_with(ctx)?;
        tensors.push((
            p.name.clone(),
            StTensor {
                view: p.view,
                dtype,
                shape,
                len,
                failed: &failed,
            },
        ));
    }
    let mut meta: HashMap<String, String> = trace
        .run_metadata()
        .iter()
        .map(|(k, v)| (k.to_owned(), metadata_string(v)))
        .collect();
    meta.insert(
        TENSORS_KEY.to_owned(),
        serde_json::to_string(&plan.described)?,
    );
    let permissions = usual_permissions(out);
    safetensors::serialize_to_file(tensors, Some(meta), out)
        .context_with(|| format!("writing {}", out.display()))?;
    if let Some(why) = failed.into_inner() {
        let _ = fs::remove_file(out);
        bail!("writing {}: {why}", out.display());
    }
    if let Some(p) = permissions {
        let _ = fs::set_permissions(out, p);
    }
    Ok(())
}

/// The permissions a file newly created beside `path` gets (the umask
/// applied). safetensors writes through a private temporary file, so its
/// output would otherwise be readable by its owner only.
fn usual_permissions(path: &Path) -> Option<fs::Permissions> {
    let probe = temp_path(path);
    let permissions = File::create(&probe)
        .and_then(|f| f.metadata())
        .map(|m| m.permissions())
        .ok();
    let _ = fs::remove_file(&probe);
    permissions
}

/// Write a trace at `output` through `record`, atomically: into a temporary
/// file beside it, renamed into place when complete, removed on failure.
/// Returns the size of the trace.
fn write_trace_atomically(
    output: &Path,
    run: Metadata,
    record: impl FnOnce(&Writer) -> Result<()>,
) -> Result<u64> {
    let tmp = temp_path(output);
    let result = (|| -> Result<u64> {
        let w = Writer::create(&tmp, run)
            .context_with(|| format!("cannot create {}", tmp.display()))?;
        record(&w)?;
        let s = w
            .finish()
            .context_with(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, output)
            .context_with(|| format!("cannot move {} to {}", tmp.display(), output.display()))?;
        Ok(s.bytes)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Convert a GGUF file into a trace: every tensor with its raw bytes (block
/// types stay blocks), ggml `ne`/`nb` kept as the source layout, layer and
/// step from the names, the key-value metadata as run metadata.
pub fn import_gguf(input: &Path, output: &Path) -> Result<ImportSummary> {
    if same_file(input, output) {
        bail!(
            "{}: the output must be a different file from the input",
            output.display()
        );
    }
    let trace = Trace::open(input)?;
    if !trace.is_gguf() {
        bail!("{}: not a GGUF file", input.display());
    }
    let label = input.display().to_string();
    let run = import::gguf_run_metadata(&trace, &label);
    let bytes = write_trace_atomically(output, run, |w| import::record_gguf(&trace, &label, w))?;
    Ok(ImportSummary {
        tensors: trace.len() as u64,
        bytes,
    })
}

/// Read a safetensors file and record its tensors, contiguous, in a new
/// trace (see [`import::SafetensorsImport`] for their order and metadata).
pub fn import_safetensors(input: &Path, output: &Path) -> Result<ImportSummary> {
    if same_file(input, output) {
        bail!(
            "{}: the output must be a different file from the input",
            output.display()
        );
    }
    let source = Source::map(input).context_with(|| format!("cannot read {}", input.display()))?;
    let st = import::SafetensorsImport::parse(source.bytes(), &input.display().to_string())?;
    let bytes = write_trace_atomically(output, st.run.clone(), |w| st.record(w))?;
    Ok(ImportSummary {
        tensors: st.tensor_count() as u64,
        bytes,
    })
}

// ---------------------------------------------------------------------------
// npz

/// numpy's type string for a dtype, and whether the values must be converted
/// to f32 first (numpy has no bf16 or fp8).
fn npy_descr(d: DType) -> Option<(&'static str, bool)> {
    Some(match d {
        DType::F64 => ("<f8", false),
        DType::F32 => ("<f4", false),
        DType::F16 => ("<f2", false),
        DType::I64 => ("<i8", false),
        DType::I32 => ("<i4", false),
        DType::I16 => ("<i2", false),
        DType::I8 => ("|i1", false),
        DType::U64 => ("<u8", false),
        DType::U32 => ("<u4", false),
        DType::U16 => ("<u2", false),
        DType::U8 => ("|u1", false),
        DType::Bool => ("|b1", false),
        DType::BF16 | DType::F8_E4M3 | DType::F8_E5M2 => ("<f4", true),
        d if d.is_block() && trace_quant::can_dequantize(d) => ("<f4", true),
        _ => return None,
    })
}

/// The header of a `.npy` v1.0 file whose data starts at a multiple of 64 bytes.
fn npy_header(descr: &str, shape: &[u64]) -> Result<Vec<u8>> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + header length (2) + dict + spaces + '\n'
    let total = (10 + dict.len() + 1).next_multiple_of(64);
    let header_len = u16::try_from(total - 10).context_with(|| "npy header too long")?;
    let mut h = Vec::with_capacity(total);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&header_len.to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(total - 1, b' ');
    h.push(b'\n');
    Ok(h)
}

fn write_npz(plan: &Plan<'_>, path: &Path, converted: &mut Vec<(String, String)>) -> Result<()> {
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;

    let file = File::create(path).context_with(|| format!("cannot create {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
    // 64-byte aligned entries: with the 64-byte npy header, the array data
    // is aligned in the archive (numpy can memory-map a stored npz member).
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64);
    let ctx = |name: &str| format!("writing {}: tensor `{name}`", path.display());
    for p in &plan.tensors {
        let info = p.view.info();
        let (descr, to_f32) = npy_descr(info.dtype)
            .ok_or_else(|| invalid!("{} has no numpy dtype", info.dtype))
            .context_with(|| ctx(&p.name))?;
        let data: Cow<'_, [u8]> = if to_f32 {
            let values = p.view.to_f32().context_with(|| ctx(&p.name))?;
            let how = if info.dtype.is_block() {
                "dequantized"
            } else {
                "exact"
            };
            converted.push((
                p.name.clone(),
                format!("{} → f32 ({how}; numpy has no {})", info.dtype, info.dtype),
            ));
            Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
        } else {
            match p.view.contiguous_bytes() {
                Some(b) => Cow::Borrowed(b),
                None => Cow::Owned(p.view.materialize().context_with(|| ctx(&p.name))?),
            }
        };
        let header = npy_header(descr, &info.layout.shape).context_with(|| ctx(&p.name))?;
        let size = (header.len() + data.len()) as u64;
        zip.start_file(
            format!("{}.npy", p.name),
            options.large_file(size >= u64::from(u32::MAX)),
        )
        .context_with(|| ctx(&p.name))?;
        zip.write_all(&header).context_with(|| ctx(&p.name))?;
        zip.write_all(&data).context_with(|| ctx(&p.name))?;
    }
    let out = zip
        .finish()
        .context_with(|| format!("writing {}", path.display()))?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .context_with(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .context_with(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;
    use std::io::Read;
    use trace_format::stats::compute_stats;
    use trace_writer::TensorMeta;
    use trace_writer::{Layout, Op};

    fn f16s(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
            .collect()
    }

    /// A trace with every exportable dtype, a permuted view of a storage, a
    /// negative-stride view, a repeated name, a stats-only and a q8_0 tensor.
    fn build(path: &Path) {
        let run = Metadata::new()
            .with("engine", "export-test")
            .with("rank", 3u64)
            .with("flag", true);
        let w = Writer::create(path, run).unwrap();
        let cache: Vec<f32> = (0..4 * 6).map(|i| i as f32 - 3.5).collect();
        let s = w
            .add_storage("cache", bytemuck::cast_slice(&cache))
            .unwrap();
        let full = Layout::contiguous(DType::F32, &[4, 6], 0).unwrap();
        let c = w
            .add_view("cache", DType::F32, s, &full, TensorMeta::new().layer(0))
            .unwrap()
            .unwrap();
        // permuted view [6, 4] over the [4, 6] cache, and a sliced one
        let k = full.permute(&[1, 0]).unwrap();
        let meta = TensorMeta::new()
            .layer(0)
            .step(1)
            .role("k")
            .parent(c)
            .op(Op::Permute { axes: vec![1, 0] });
        w.add_view("k", DType::F32, s, &k, meta).unwrap();
        let sliced = full.view(4 * 6 + 4, &[2, 3], &[48, 8]).unwrap();
        w.add_view("slice", DType::F32, s, &sliced, TensorMeta::new())
            .unwrap();
        w.add_tensor(
            "attn_out",
            DType::F16,
            &[2, 3],
            &f16s(&[1., 2., 3., 4., 5., 6.]),
            TensorMeta::new().step(0),
        )
        .unwrap();
        w.add_tensor(
            "attn_out",
            DType::F16,
            &[2, 3],
            &f16s(&[-1., -2., -3., -4., -5., -6.]),
            TensorMeta::new().step(1),
        )
        .unwrap();
        let bf: Vec<u8> = [0.5f32, -2.0, 3.25]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        w.add_tensor("bf", DType::BF16, &[3], &bf, TensorMeta::new())
            .unwrap();
        w.add_tensor(
            "fp8",
            DType::F8_E4M3,
            &[2, 2],
            &[0x38, 0xb8, 0x40, 0x00],
            TensorMeta::new(),
        )
        .unwrap();
        w.add_tensor(
            "fp8b",
            DType::F8_E5M2,
            &[2],
            &[0x3c, 0xc0],
            TensorMeta::new(),
        )
        .unwrap();
        let rev = Layout::new(vec![3], vec![-8], 16).unwrap();
        let i32s: Vec<i32> = (0..5).map(|i| i * 10 - 7).collect();
        w.add_strided(
            "rev_i32",
            DType::I32,
            &rev,
            bytemuck::cast_slice(&i32s),
            TensorMeta::new(),
        )
        .unwrap();
        let i64s: [i64; 2] = [i64::MIN, 42];
        w.add_tensor(
            "i64",
            DType::I64,
            &[2],
            bytemuck::cast_slice(&i64s),
            TensorMeta::new(),
        )
        .unwrap();
        let u64s: [u64; 1] = [u64::MAX];
        w.add_tensor(
            "scalar_u64",
            DType::U64,
            &[],
            bytemuck::cast_slice(&u64s),
            TensorMeta::new(),
        )
        .unwrap();
        let f64s: [f64; 2] = [std::f64::consts::PI, -0.0];
        w.add_tensor(
            "f64",
            DType::F64,
            &[1, 2],
            bytemuck::cast_slice(&f64s),
            TensorMeta::new(),
        )
        .unwrap();
        w.add_tensor(
            "i16",
            DType::I16,
            &[2],
            bytemuck::cast_slice(&[-5i16, 7]),
            TensorMeta::new(),
        )
        .unwrap();
        w.add_tensor(
            "u16",
            DType::U16,
            &[2],
            bytemuck::cast_slice(&[5u16, 65535]),
            TensorMeta::new(),
        )
        .unwrap();
        w.add_tensor(
            "u32",
            DType::U32,
            &[1],
            bytemuck::cast_slice(&[9u32]),
            TensorMeta::new(),
        )
        .unwrap();
        w.add_tensor("i8", DType::I8, &[2], &[0x80, 0x7f], TensorMeta::new())
            .unwrap();
        w.add_tensor("u8", DType::U8, &[2, 0], &[], TensorMeta::new())
            .unwrap();
        w.add_tensor(
            "mask",
            DType::Bool,
            &[3],
            &[1, 0, 1],
            TensorMeta::new().role("mask"),
        )
        .unwrap();
        let kq = [0.25f32, 0.75];
        let stats = compute_stats(DType::F32, bytemuck::cast_slice(&kq)).unwrap();
        w.add_stats("kq", DType::F32, &[2], stats, TensorMeta::new())
            .unwrap();
        // a q8_0 block: scale 0.5 (f16 0x3800), quants -16..16
        let q8: Vec<u8> = [0x00, 0x38]
            .into_iter()
            .chain((-16i8..16).map(|q| q as u8))
            .collect();
        w.add_tensor("w_q8", DType::Q8_0, &[32], &q8, TensorMeta::new())
            .unwrap();
        w.add_tensor("cache", DType::U8, &[1], &[9], TensorMeta::new())
            .unwrap();
        w.finish().unwrap();
    }

    /// Export name → record id, as the exporter names them.
    fn by_export_name(trace: &Trace) -> Vec<(String, u64)> {
        let (names, _) = export_names(trace, &|_| false);
        trace
            .tensor_ids()
            .iter()
            .map(|id| (names[id].clone(), *id))
            .collect()
    }

    #[test]
    fn safetensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.tdump");
        build(&src);
        let trace = Trace::open(&src).unwrap();
        let st = dir.path().join("out.safetensors");
        let s = export(&trace, ExportFormat::Safetensors, &st, None).unwrap();
        assert_eq!(s.bytes, fs::metadata(&st).unwrap().len());
        let probe = dir.path().join("probe");
        fs::write(&probe, b"").unwrap();
        assert_eq!(
            fs::metadata(&st).unwrap().permissions(),
            fs::metadata(&probe).unwrap().permissions()
        );
        let skipped: Vec<&str> = s.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["kq"]);
        let converted: Vec<&str> = s.converted.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(converted, ["w_q8"], "{:?}", s.converted);
        assert!(s.converted[0].1.contains("q8_0 → f32"), "{:?}", s.converted);
        assert!(
            s.exported.contains(&"attn_out#1".to_string())
                && s.exported.contains(&"cache#1".to_string())
        );
        assert_eq!(s.exported.len(), trace.len() - 1);

        // the file itself: metadata as plain strings, source layouts kept
        let raw = fs::read(&st).unwrap();
        let (_, header) = SafeTensors::read_metadata(&raw).unwrap();
        let meta = header.metadata().as_ref().unwrap();
        assert_eq!(meta["engine"], "export-test");
        assert_eq!(meta["rank"], "3");
        assert_eq!(meta["flag"], "true");
        let described: serde_json::Value = serde_json::from_str(&meta[TENSORS_KEY]).unwrap();
        let k = &described["k"];
        assert_eq!(k["shape"], json!([6, 4]));
        assert_eq!(k["byte_strides"], json!([4, 24]));
        assert_eq!(k["storage"], json!(1));
        assert_eq!(k["role"], json!("k"));
        assert_eq!(k["lineage"], json!("cache → permute(1,0)"));
        assert_eq!(
            described["kq"]["skipped"],
            json!("statistics only: the trace holds no values")
        );
        assert_eq!(described["cache#1"]["dtype"], json!("u8"));

        // back into a trace
        let back = dir.path().join("back.tdump");
        let imp = import_safetensors(&st, &back).unwrap();
        assert_eq!(imp.tensors as usize, s.exported.len());
        let t2 = Trace::open(&back).unwrap();
        assert!(
            t2.is_finished() && t2.verify().is_ok(),
            "{:?}",
            t2.verify().faults
        );
        assert_eq!(
            t2.run_metadata().get("engine"),
            Some(&Value::Str("export-test".into()))
        );
        assert_eq!(
            t2.run_metadata().get("imported_from"),
            Some(&Value::Str(st.display().to_string()))
        );
        // source order restored
        let imported: Vec<&str> = t2
            .tensor_ids()
            .iter()
            .map(|&id| t2.record_name(id).unwrap())
            .collect();
        assert_eq!(
            imported,
            s.exported.iter().map(String::as_str).collect::<Vec<_>>()
        );
        for (name, id) in by_export_name(&trace) {
            let orig = trace.tensor(id).unwrap();
            if orig.is_stats_only() {
                assert!(t2.get(&name).is_err(), "{name}");
                continue;
            }
            if orig.dtype.is_block() {
                // exported as its dequantized values
                let got = t2.get(&name).unwrap();
                assert_eq!(
                    (got.dtype, &got.layout.shape),
                    (DType::F32, &orig.layout.shape),
                    "{name}"
                );
                assert_eq!(
                    t2.view(got.id).unwrap().to_f32().unwrap(),
                    trace.view(id).unwrap().to_f32().unwrap(),
                    "{name}"
                );
                continue;
            }
            let got = t2.get(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.dtype, orig.dtype, "{name}");
            assert_eq!(got.layout.shape, orig.layout.shape, "{name}");
            assert!(got.is_contiguous(), "{name}");
            assert_eq!(
                (got.layer, got.step, &got.role),
                (orig.layer, orig.step, &orig.role),
                "{name}"
            );
            let want = trace.view(id).unwrap().materialize().unwrap();
            assert_eq!(
                t2.view(got.id).unwrap().materialize().unwrap(),
                want,
                "{name}"
            );
        }
        // the permuted view came out as the permuted array, row-major
        let k = t2.view_by_name("k").unwrap().to_f32().unwrap();
        let expect: Vec<f32> = (0..6)
            .flat_map(|j| (0..4).map(move |i| (i * 6 + j) as f32 - 3.5))
            .collect();
        assert_eq!(k, expect);
        assert_eq!(
            t2.view_by_name("rev_i32")
                .unwrap()
                .as_slice::<i32>()
                .unwrap(),
            &[33, 13, -7]
        );
        assert_eq!(
            t2.view_by_name("attn_out#1").unwrap().to_f32().unwrap(),
            [-1., -2., -3., -4., -5., -6.]
        );
    }

    #[test]
    fn export_filter_and_name_clashes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.tdump");
        build(&src);
        let trace = Trace::open(&src).unwrap();
        let second = trace.find("attn_out")[1];
        let st = dir.path().join("one.safetensors");
        let s = export(&trace, ExportFormat::Safetensors, &st, Some(&[second])).unwrap();
        assert_eq!(s.exported, ["attn_out#1"]);
        let raw = fs::read(&st).unwrap();
        let f = SafeTensors::deserialize(&raw).unwrap();
        assert_eq!(f.names(), ["attn_out#1"]);
        let err = export(&trace, ExportFormat::Npz, &st, Some(&[0])).unwrap_err();
        assert!(
            err.to_string().contains("record 0 is not a tensor"),
            "{err:#}"
        );
        assert!(export(&trace, ExportFormat::Npz, &src, None).is_err());

        // a tensor literally named `x#1` beside two `x`s, and one named __metadata__
        let p = dir.path().join("clash.tdump");
        let w = Writer::create(&p, Metadata::new()).unwrap();
        for (n, v) in [("x", 1u8), ("x#1", 2), ("x", 3), ("__metadata__", 4)] {
            w.add_tensor(n, DType::U8, &[1], &[v], TensorMeta::new())
                .unwrap();
        }
        w.finish().unwrap();
        let t = Trace::open(&p).unwrap();
        let out = dir.path().join("clash.safetensors");
        let s = export(&t, ExportFormat::Safetensors, &out, None).unwrap();
        assert_eq!(s.exported, ["x", "x#1", "x#1@3", "__metadata__@4"]);
        assert_eq!(s.converted.len(), 2, "{:?}", s.converted);
        let back = dir.path().join("clash.tdump2");
        import_safetensors(&out, &back).unwrap();
        let t2 = Trace::open(&back).unwrap();
        for (name, v) in [("x", 1u8), ("x#1", 2), ("x#1@3", 3), ("__metadata__@4", 4)] {
            assert_eq!(
                t2.view_by_name(name).unwrap().as_slice::<u8>().unwrap(),
                &[v],
                "{name}"
            );
        }
    }

    #[test]
    fn import_errors_name_the_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.safetensors");
        fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
        let out = dir.path().join("o.tdump");
        let err = import_safetensors(&junk, &out).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("junk.safetensors") && msg.contains("not a valid safetensors"),
            "{msg}"
        );
        assert!(!out.exists());
        let missing = dir.path().join("missing.safetensors");
        assert!(
            format!("{:#}", import_safetensors(&missing, &out).unwrap_err())
                .contains("missing.safetensors")
        );

        struct Raw(Dtype, Vec<usize>, Vec<u8>);
        impl View for &Raw {
            fn dtype(&self) -> Dtype {
                self.0
            }
            fn shape(&self) -> &[usize] {
                &self.1
            }
            fn data(&self) -> Cow<'_, [u8]> {
                Cow::Borrowed(&self.2)
            }
            fn data_len(&self) -> usize {
                self.2.len()
            }
        }
        let ok = Raw(Dtype::F32, vec![1], vec![0; 4]);
        let odd = Raw(Dtype::C64, vec![1], vec![0; 8]);
        let f = dir.path().join("c64.safetensors");
        safetensors::serialize_to_file([("fine", &ok), ("complex", &odd)], None, &f).unwrap();
        let msg = format!("{:#}", import_safetensors(&f, &out).unwrap_err());
        assert!(
            msg.contains("c64.safetensors") && msg.contains("`complex`") && msg.contains("C64"),
            "{msg}"
        );
        assert!(!out.exists());
        assert!(import_safetensors(&f, &f).is_err());
    }

    /// A parsed `.npy` file: (descr, shape, data).
    fn parse_npy(b: &[u8]) -> (String, Vec<u64>, Vec<u8>) {
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        let start = 10 + hlen;
        assert_eq!(start % 64, 0);
        let h = std::str::from_utf8(&b[10..start]).unwrap();
        assert!(h.ends_with('\n'));
        let descr = h
            .split("'descr': '")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap()
            .to_owned();
        assert!(h.contains("'fortran_order': False"));
        let shape = h
            .split("'shape': (")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap();
        let shape = shape
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        (descr, shape, b[start..].to_vec())
    }

    #[test]
    fn npz_export() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.tdump");
        build(&src);
        let trace = Trace::open(&src).unwrap();
        let npz = dir.path().join("out.npz");
        let s = export(&trace, ExportFormat::Npz, &npz, None).unwrap();
        let conv: Vec<&str> = s.converted.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(conv, ["bf", "fp8", "fp8b", "w_q8"]);
        assert_eq!(s.skipped.len(), 1);

        let mut zip = zip::ZipArchive::new(File::open(&npz).unwrap()).unwrap();
        assert_eq!(zip.len(), s.exported.len());
        let mut seen = HashMap::new();
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).unwrap();
            assert_eq!(f.compression(), zip::CompressionMethod::Stored);
            assert_eq!(f.data_start().unwrap() % 64, 0, "{}", f.name());
            let name = f.name().strip_suffix(".npy").unwrap().to_owned();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            seen.insert(name, parse_npy(&b));
        }
        for (name, id) in by_export_name(&trace) {
            let t = trace.tensor(id).unwrap();
            if t.is_stats_only() {
                assert!(!seen.contains_key(&name));
                continue;
            }
            let (descr, shape, data) = &seen[&name];
            if t.dtype.is_block() {
                let want: Vec<u8> = (-16..16)
                    .flat_map(|q| (q as f32 * 0.5).to_le_bytes())
                    .collect();
                assert_eq!((descr.as_str(), data), ("<f4", &want), "{name}");
                continue;
            }
            assert_eq!(shape, &t.layout.shape, "{name}");
            let v = trace.view(id).unwrap();
            let want = match t.dtype {
                DType::BF16 | DType::F8_E4M3 | DType::F8_E5M2 => {
                    assert_eq!(descr, "<f4");
                    v.to_f32()
                        .unwrap()
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect()
                }
                _ => v.materialize().unwrap(),
            };
            assert_eq!(data, &want, "{name}");
        }
        assert_eq!(seen["mask"].0, "|b1");
        assert_eq!(seen["attn_out#1"].0, "<f2");
        assert_eq!(seen["scalar_u64"].1, Vec::<u64>::new());
        assert_eq!(seen["u8"].1, [2, 0]);
        let fp8: Vec<f32> = seen["fp8"]
            .2
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(fp8, [1.0, -1.0, 2.0, 0.0]);
        let k: Vec<f32> = seen["k"]
            .2
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(k[..4], [-3.5, 2.5, 8.5, 14.5]);
        assert_eq!(npy_header("<f4", &[7]).unwrap().len() % 64, 0);
        assert!(
            String::from_utf8(npy_header("<f4", &[2, 3]).unwrap()[10..].to_vec())
                .unwrap()
                .contains("'shape': (2, 3), }")
        );

        numpy_check(&npz, &trace);
    }

    /// Load the npz with numpy in a subprocess (the reference Python that
    /// `make test` sets up in `.venv`, or `$TRACEDUMP_PYTHON`) and compare.
    fn numpy_check(npz: &Path, trace: &Trace) {
        let python = std::env::var_os("TRACEDUMP_PYTHON")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
        let script = r#"
import json, sys, numpy as np
z = np.load(sys.argv[1])
out = {}
for k in z.files:
    a = z[k]
    out[k] = {"dtype": a.dtype.str, "shape": list(a.shape), "values": a.astype(np.float64).ravel().tolist()}
print(json.dumps(out))
"#;
        let o = std::process::Command::new(&python).args(["-c", script]).arg(npz).output().unwrap_or_else(|e| {
            panic!("cannot run {} ({e}): run `make test`, which creates .venv with numpy, or set TRACEDUMP_PYTHON", python.display())
        });
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut n = 0;
        for (name, id) in by_export_name(trace) {
            let t = trace.tensor(id).unwrap();
            if t.is_stats_only() {
                assert!(got.get(&name).is_none());
                continue;
            }
            n += 1;
            let g = &got[&name];
            assert_eq!(g["shape"], json!(t.layout.shape), "{name}");
            let want = trace.view(id).unwrap().to_f64().unwrap();
            let vals: Vec<f64> = g["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(vals, want, "{name}");
        }
        assert_eq!(got.as_object().unwrap().len(), n);
    }
}
