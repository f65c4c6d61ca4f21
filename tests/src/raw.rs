//! Traces built record by record, so tests can write what the writer refuses to.

#![forbid(unsafe_code)]

use trace_format::codec::{encode_run_metadata, encode_tensor, DataRef, IndexEntry, TensorDesc};
use trace_format::record::{encode_file_header, frame_footer, frame_record, RecordKind};
use trace_format::{DType, Lineage, Metadata};

/// A trace under construction: valid framing and checksums around any
/// descriptor bytes.
#[derive(Debug)]
pub struct RawTrace {
    /// The file so far.
    pub bytes: Vec<u8>,
    index: Vec<IndexEntry>,
    names: Vec<u8>,
}

impl Default for RawTrace {
    fn default() -> Self {
        Self::new()
    }
}

impl RawTrace {
    /// The file header and an empty RUN_METADATA record.
    pub fn new() -> Self {
        let mut r = RawTrace {
            bytes: encode_file_header().to_vec(),
            index: vec![],
            names: vec![],
        };
        r.push(
            RecordKind::RunMetadata,
            "",
            &encode_run_metadata(&Metadata::new()),
            &[],
        );
        r
    }

    /// Frame and append a record (checksums computed); returns its id.
    pub fn push(&mut self, kind: RecordKind, name: &str, descriptor: &[u8], payload: &[u8]) -> u64 {
        let id = self.index.len() as u64;
        let off = self.bytes.len() as u64;
        let framed = frame_record(off, id, kind, descriptor, payload);
        let body_len = u64::from_le_bytes(framed[16..24].try_into().unwrap());
        self.bytes.extend_from_slice(&framed);
        let name_offset = self.names.len() as u64;
        self.names.extend_from_slice(name.as_bytes());
        self.index.push(IndexEntry {
            offset: off,
            body_len,
            kind: kind as u16,
            step: None,
            layer: None,
            name_offset,
            name_len: name.len() as u32,
        });
        id
    }

    /// Append a record of a kind this reader does not know (`code`, as a
    /// later minor version might write): framed as a STORAGE_UPDATE with
    /// the kind code and header checksum rewritten; returns its id.
    pub fn push_unknown(
        &mut self,
        code: u16,
        name: &str,
        descriptor: &[u8],
        payload: &[u8],
    ) -> u64 {
        let off = self.bytes.len();
        let id = self.push(RecordKind::StorageUpdate, name, descriptor, payload);
        self.bytes[off + 4..off + 6].copy_from_slice(&code.to_le_bytes());
        let crc = trace_format::record::crc32c(&self.bytes[off..off + 28]);
        self.bytes[off + 28..off + 32].copy_from_slice(&crc.to_le_bytes());
        self.index[id as usize].kind = code;
        id
    }

    /// Append a TENSOR record.
    pub fn tensor(&mut self, desc: &TensorDesc, payload: &[u8]) -> u64 {
        self.push(
            RecordKind::Tensor,
            &desc.name,
            &encode_tensor(desc),
            payload,
        )
    }

    /// The file with its footer index.
    pub fn finish(mut self) -> Vec<u8> {
        let tail = frame_footer(self.bytes.len() as u64, &self.index, &self.names);
        self.bytes.extend_from_slice(&tail);
        self.bytes
    }

    /// The file without a footer (as a killed writer leaves it).
    pub fn unfinished(self) -> Vec<u8> {
        self.bytes
    }
}

/// A tensor descriptor with only what a layout test needs; the rest empty.
pub fn tensor_desc(
    name: &str,
    dtype: DType,
    data: DataRef,
    shape: &[u64],
    strides: &[i64],
) -> TensorDesc {
    TensorDesc {
        name: name.into(),
        dtype,
        data,
        shape: shape.to_vec(),
        byte_strides: strides.to_vec(),
        step: None,
        layer: None,
        role: None,
        source_layout: None,
        lineage: Lineage::default(),
        stats: None,
        metadata: Metadata::new(),
    }
}
