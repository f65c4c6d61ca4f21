//! `tracedump import`: the tensors of a safetensors or GGUF file recorded
//! into a trace, written atomically (a temporary file renamed into place).
//! The fuzz targets (`tests/src/fuzzing.rs`) call [`SafetensorsImport`] and
//! [`record_gguf`], the very code the CLI runs.

use crate::error::invalid;
use crate::{ResultExt, ToolsError};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use trace_reader::{DType, Trace};
use trace_writer::{Metadata, TensorMeta, Writer};

use std::fs;
use std::path::Path;

use serde::Serialize;
use trace_reader::Source;

use crate::error::bail;
use crate::recover::{same_file, temp_path};

type Result<T, E = ToolsError> = std::result::Result<T, E>;

/// The key of `__metadata__` that describes the source tensors.
pub const TENSORS_KEY: &str = "tracedump.tensors";

/// The trace dtype of a safetensors dtype (`None`: a trace cannot hold it).
pub fn from_st_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U64 => DType::U64,
        Dtype::U32 => DType::U32,
        Dtype::U16 => DType::U16,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        Dtype::F8_E4M3 => DType::F8_E4M3,
        Dtype::F8_E5M2 => DType::F8_E5M2,
        _ => return None,
    })
}

/// A safetensors file, parsed, its tensors in the order they are recorded:
/// the order of the source trace when the file came from `export` (its
/// `tracedump.tensors` key; their layer, step and role are restored too),
/// else the order of their data in the file.
#[derive(Debug)]
pub struct SafetensorsImport<'a> {
    /// The input's name in errors.
    label: String,
    /// Run metadata for the trace: every `__metadata__` entry (as a string)
    /// and `imported_from` = the label.
    pub run: Metadata,
    /// What an earlier export said about each tensor (ignored if malformed).
    described: serde_json::Map<String, serde_json::Value>,
    order: Vec<(String, TensorView<'a>)>,
}

impl<'a> SafetensorsImport<'a> {
    /// Parse the bytes of a safetensors file; `label` names it in errors.
    pub fn parse(bytes: &'a [u8], label: &str) -> Result<Self> {
        let bad = |e: safetensors::SafeTensorError| {
            invalid!("{label}: not a valid safetensors file: {e}")
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(bad)?;
        let st = SafeTensors::deserialize(bytes).map_err(bad)?;

        let mut run = Metadata::new();
        let mut keys: Vec<(&String, &String)> = header.metadata().iter().flatten().collect();
        keys.sort();
        for (k, v) in keys {
            run.insert(k.as_str(), v.as_str());
        }
        run.insert("imported_from", label);

        let described: serde_json::Map<String, serde_json::Value> = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(TENSORS_KEY))
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mut order: Vec<(String, TensorView<'a>)> = st.tensors();
        let key = |name: &str| {
            let record = described
                .get(name)
                .and_then(|d| d.get("record"))
                .and_then(serde_json::Value::as_u64);
            let offset = header.info(name).map_or(usize::MAX, |i| i.data_offsets.0);
            (record.is_none(), record.unwrap_or(0), offset)
        };
        order.sort_by(|(a, _), (b, _)| key(a).cmp(&key(b)).then_with(|| a.cmp(b)));
        Ok(SafetensorsImport {
            label: label.to_owned(),
            run,
            described,
            order,
        })
    }

    /// How many tensors [`SafetensorsImport::record`] records.
    pub fn tensor_count(&self) -> usize {
        self.order.len()
    }

    /// Record every tensor, contiguous, into `w`.
    pub fn record(&self, w: &Writer) -> Result<()> {
        let label = &self.label;
        for (name, t) in &self.order {
            let dtype = from_st_dtype(t.dtype()).ok_or_else(|| {
                invalid!(
                    "{label}: tensor `{name}` has dtype {:?}, which a trace cannot hold",
                    t.dtype()
                )
            })?;
            let shape: Vec<u64> = t.shape().iter().map(|&n| n as u64).collect();
            let mut meta = TensorMeta::new();
            if let Some(d) = self.described.get(name.as_str()) {
                meta.layer = d.get("layer").and_then(serde_json::Value::as_i64);
                meta.step = d.get("step").and_then(serde_json::Value::as_i64);
                meta.role = d
                    .get("role")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned);
            }
            w.add_tensor(name, dtype, &shape, t.data(), meta)
                .context_with(|| format!("{label}: tensor `{name}`"))?;
        }
        Ok(())
    }
}

/// Run metadata for a trace imported from the GGUF file `trace`: its
/// key-value metadata and `imported_from` = `label`.
pub fn gguf_run_metadata(trace: &Trace, label: &str) -> Metadata {
    let mut run = trace.run_metadata().clone();
    run.insert("imported_from", label);
    run
}

/// Record every tensor of the GGUF file `trace` into `w` with its raw bytes
/// (block types stay blocks), ggml `ne`/`nb` kept as the source layout,
/// layer and step from the names; `label` names the input in errors.
pub fn record_gguf(trace: &Trace, label: &str, w: &Writer) -> Result<()> {
    for t in trace.tensors() {
        let t = t?;
        let view = trace.view(t.id)?;
        let bytes = view
            .contiguous_bytes()
            .ok_or_else(|| invalid!("{label}: tensor `{}` is not contiguous", t.name))?;
        let mut meta = TensorMeta::new();
        meta.layer = t.layer;
        meta.step = t.step;
        meta.source_layout = t.source_layout.clone();
        meta.metadata = t.metadata.clone();
        w.add_tensor(&t.name, t.dtype, t.layout.shape(), bytes, meta)
            .context_with(|| format!("{label}: tensor `{}`", t.name))?;
    }
    Ok(())
}

/// What [`import_safetensors`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Tensors recorded.
    pub tensors: u64,
    /// Size of the trace file.
    pub bytes: u64,
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
    let run = gguf_run_metadata(&trace, &label);
    let bytes = write_trace_atomically(output, run, |w| record_gguf(&trace, &label, w))?;
    Ok(ImportSummary {
        tensors: trace.len() as u64,
        bytes,
    })
}

/// Read a safetensors file and record its tensors, contiguous, in a new
/// trace (see [`SafetensorsImport`] for their order and metadata).
pub fn import_safetensors(input: &Path, output: &Path) -> Result<ImportSummary> {
    if same_file(input, output) {
        bail!(
            "{}: the output must be a different file from the input",
            output.display()
        );
    }
    let source = Source::map(input).context_with(|| format!("cannot read {}", input.display()))?;
    let st = SafetensorsImport::parse(source.bytes(), &input.display().to_string())?;
    let bytes = write_trace_atomically(output, st.run.clone(), |w| st.record(w))?;
    Ok(ImportSummary {
        tensors: st.tensor_count() as u64,
        bytes,
    })
}
