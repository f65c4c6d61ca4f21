//! A GGUF file as a trace's container: every tensor a record (raw blocks,
//! ggml `ne` kept as the source layout), the key/value metadata as run
//! metadata, layer and step read from the tensor names. It yields the same
//! descriptions as a `.tdump` file's records; it has no record framing or
//! checksums.

use std::path::Path;

use trace_format::record::RecordKind;
use trace_format::{Layout, Lineage, Metadata, SourceLayout, Value};

use super::GgufTensorInfo;
use crate::container::{Describe, Opened, RecordEntry, Records, TensorInfo};
use crate::error::ReaderError;

/// Open the GGUF file `bytes` (`path` names it in errors): one record per
/// tensor, and the run metadata (`format`, `gguf_version`, then every key).
pub(crate) fn open(path: &Path, bytes: &[u8]) -> Result<Opened, ReaderError> {
    let g = super::parse(path, bytes)?;
    let mut run = Metadata::new();
    run.insert("format", Value::Str("gguf".into()));
    run.insert("gguf_version", Value::U64(u64::from(g.version)));
    for (k, v) in &g.metadata {
        run.insert(k.clone(), v.to_value());
    }
    let records: Vec<RecordEntry> = g
        .tensors
        .iter()
        .map(|t| RecordEntry {
            offset: t.info_offset,
            body_len: 0,
            kind: RecordKind::Tensor as u16,
            step: crate::names::step_from_name(&t.name),
            layer: crate::names::layer_from_name(&t.name),
            name_at: t.name_offset,
            name_len: t.name.len() as u32,
        })
        .collect();
    Ok(Opened {
        version: (0, 0),
        records,
        finished: true,
        footer_offset: None,
        torn: None,
        warnings: Vec::new(),
        run_metadata: run,
        tensors: Box::new(Tensors(g.tensors.into_boxed_slice())),
    })
}

/// A GGUF file's tensor table, record `i` its `i`-th tensor.
#[derive(Debug)]
struct Tensors(Box<[GgufTensorInfo]>);

impl Describe for Tensors {
    fn describe(&self, at: Records<'_>, id: u64) -> Result<TensorInfo, ReaderError> {
        let t = &self.0[id as usize];
        let err = |reason: String| ReaderError::Gguf {
            path: at.path.to_path_buf(),
            offset: t.info_offset,
            tensor: Some(t.name.clone()),
            reason,
        };
        let dtype = t.dtype.ok_or_else(|| {
            err(format!(
                "ggml type {} is not known to this reader",
                t.ggml_type
            ))
        })?;
        let shape: Vec<u64> = t.ne.iter().rev().copied().collect();
        let layout = Layout::contiguous(dtype, &shape, 0).map_err(|e| err(e.to_string()))?;
        layout
            .check_within(dtype, t.nbytes)
            .map_err(|e| err(e.to_string()))?;
        // ggml's ne/nb of the contiguous tensor (nb[0] = block bytes)
        let (ne, nb) = trace_format::layout::ggml::from_canonical(&layout, t.ne.len())
            .ok_or_else(|| err("its layout has no ggml form".into()))?;
        let r = at.records[id as usize];
        Ok(TensorInfo {
            id,
            name: t.name.clone(),
            dtype,
            layout,
            storage: Some(id),
            step: r.step,
            layer: r.layer,
            role: None,
            source_layout: Some(SourceLayout::Ggml { ne, nb }),
            lineage: Lineage::default(),
            stats: None,
            metadata: Metadata::new().with("gguf_offset", t.offset),
            record_offset: t.info_offset,
            derived: false,
            storage_at: t.file_offset,
            storage_len: t.nbytes,
            updated: false,
        })
    }

    fn framed(&self) -> bool {
        false
    }

    fn is_gguf(&self) -> bool {
        true
    }
}
