//! The `.tdump` container: the records of a file, from its footer index or,
//! for an unfinished file, a scan; tensor descriptions decoded from their
//! records.

#![forbid(unsafe_code)]

use trace_format::codec::{decode_footer, decode_run_metadata, decode_tensor, DataRef};
use trace_format::record::{
    decode_file_header, next_record_offset, split_body, Body, RecordHeader, RecordKind, Trailer,
    FILE_HEADER_BYTES, RECORD_HEADER_BYTES, TRAILER_BYTES,
};
use trace_format::{FormatError, Layout, Metadata};

use crate::container::{Describe, Opened, RecordEntry, Records, TensorInfo, TornTail};
use crate::error::ReaderError;

/// Open the `.tdump` file `bytes` (`path` names it in errors): its records,
/// from the footer or a scan, and its run metadata (all RUN_METADATA
/// records, later keys winning).
pub(crate) fn open(path: &std::path::Path, bytes: &[u8]) -> Result<Opened, ReaderError> {
    let version = decode_file_header(bytes).map_err(|source| ReaderError::NotATrace {
        path: path.to_path_buf(),
        error: Box::new(source),
    })?;
    let mut warnings = Vec::new();
    let (records, finished, footer_offset, torn) = match read_footer(bytes) {
        Ok(Some((records, footer_offset))) => (records, true, Some(footer_offset), None),
        Ok(None) => {
            let (records, torn) = scan(bytes);
            (records, false, None, torn)
        }
        Err(e) => {
            warnings.push(format!(
                "the footer index is damaged ({e}); records were found by scanning"
            ));
            let (records, torn) = scan(bytes);
            (records, false, None, torn)
        }
    };
    let updates = crate::updates::Updates::default();
    let at = Records {
        path,
        bytes,
        records: &records,
        updates: &updates,
    };
    let mut run = Metadata::new();
    for (id, r) in records.iter().enumerate() {
        if r.kind == RecordKind::RunMetadata as u16 {
            let id = id as u64;
            let body = at.body(id)?;
            let m = decode_run_metadata(body.descriptor, body.descriptor_offset)
                .map_err(|e| at.record_error(id, e))?;
            for (k, v) in m.0 {
                run.insert(k, v);
            }
        }
    }
    Ok(Opened {
        version,
        records,
        finished,
        footer_offset,
        torn,
        warnings,
        run_metadata: run,
        tensors: Box::new(Tdump),
    })
}

/// The tensor descriptions of a `.tdump` file: decoded from their records.
#[derive(Debug)]
struct Tdump;

impl Describe for Tdump {
    fn describe(&self, at: Records<'_>, id: u64) -> Result<TensorInfo, ReaderError> {
        let body = at.body(id)?;
        let r = at.records[id as usize];
        let mut d = decode_tensor(body.descriptor, body.descriptor_offset).map_err(|e| {
            match at.record_error(id, e) {
                ReaderError::Record {
                    path,
                    record,
                    name,
                    offset,
                    error: source,
                } if name.is_empty() => {
                    // name the tensor from its own descriptor when the index has no name
                    let name = trace_format::codec::Decoder::new(body.descriptor, 0)
                        .str("name")
                        .unwrap_or("")
                        .to_owned();
                    ReaderError::Record {
                        path,
                        record,
                        name,
                        offset,
                        error: source,
                    }
                }
                other => other,
            }
        })?;
        let tensor_err = |reason: String| ReaderError::Tensor {
            path: at.path.to_path_buf(),
            tensor: d.name.clone(),
            record: id,
            offset: r.offset,
            reason,
        };
        if !matches!(d.data, DataRef::Inline { .. }) && !body.payload.is_empty() {
            return Err(tensor_err(format!(
                "carries {} payload bytes but does not say they are its data",
                body.payload.len()
            )));
        }
        let layout = Layout::new(
            std::mem::take(&mut d.shape),
            std::mem::take(&mut d.byte_strides),
            0,
        )
        .map_err(|source| ReaderError::Layout {
            path: at.path.to_path_buf(),
            tensor: d.name.clone(),
            record: id,
            error: Box::new(source),
        })?;
        let mut updated = false;
        let (storage, offset, storage_at, storage_len) = match d.data {
            DataRef::StatsOnly => {
                if d.stats.is_none() {
                    return Err(tensor_err("stats-only tensor without stats".into()));
                }
                (None, 0, 0, 0)
            }
            DataRef::Derived => {
                if d.lineage.ops.is_empty() {
                    return Err(tensor_err(
                        "derived tensor without lineage steps to rebuild it from".into(),
                    ));
                }
                (None, 0, 0, 0)
            }
            DataRef::Inline { offset } => (
                Some(id),
                offset,
                body.payload_offset,
                body.payload.len() as u64,
            ),
            DataRef::Storage { storage, offset } => {
                if storage >= id {
                    return Err(tensor_err(format!(
                        "views storage record {storage}, which does not come before it"
                    )));
                }
                let kind = at.records[storage as usize].kind;
                if kind == RecordKind::StorageUpdate as u16 {
                    // format 1.2: the storage as its updates made it (§5.7)
                    let c = at.updates.check(at, storage).map_err(|e| {
                        tensor_err(format!("views storage update record {storage}: {e}"))
                    })?;
                    updated = true;
                    (Some(storage), offset, 0, c.len())
                } else {
                    let sb = at.body(storage)?;
                    if kind == RecordKind::Tensor as u16 {
                        let sd = decode_tensor(sb.descriptor, sb.descriptor_offset)
                            .map_err(|e| at.record_error(storage, e))?;
                        if !matches!(sd.data, DataRef::Inline { .. }) {
                            return Err(tensor_err(format!(
                                "record {storage} is a tensor without its own bytes, not a storage"
                            )));
                        }
                    } else if kind != RecordKind::Storage as u16 {
                        return Err(tensor_err(format!(
                            "record {storage} is not a storage (kind {kind})"
                        )));
                    }
                    (
                        Some(storage),
                        offset,
                        sb.payload_offset,
                        sb.payload.len() as u64,
                    )
                }
            }
        };
        let layout = layout.at_offset(offset);
        if let Some(s) = storage {
            layout
                .check_within(d.dtype, storage_len)
                .map_err(|source| ReaderError::Layout {
                    path: at.path.to_path_buf(),
                    tensor: d.name.clone(),
                    record: id,
                    error: Box::new(annotate(source, s)),
                })?;
        }
        Ok(TensorInfo {
            id,
            name: d.name,
            dtype: d.dtype,
            layout,
            storage,
            step: d.step,
            layer: d.layer,
            role: d.role,
            source_layout: d.source_layout,
            lineage: d.lineage,
            stats: d.stats,
            metadata: d.metadata,
            record_offset: r.offset,
            derived: matches!(d.data, DataRef::Derived),
            storage_at,
            storage_len,
            updated,
        })
    }

    fn framed(&self) -> bool {
        true
    }

    fn is_gguf(&self) -> bool {
        false
    }
}

impl<'a> Records<'a> {
    pub(crate) fn record_error(&self, id: u64, source: FormatError) -> ReaderError {
        let offset = self.records.get(id as usize).map_or(0, |r| r.offset);
        let name = self.name(id).unwrap_or("").to_owned();
        ReaderError::Record {
            path: self.path.to_path_buf(),
            record: id,
            name,
            offset,
            error: Box::new(source),
        }
    }

    /// The header of record `id`, checked against the index.
    pub(crate) fn header(&self, id: u64) -> Result<RecordHeader, ReaderError> {
        let r = self.records[id as usize];
        let bytes = self.bytes;
        let h = bytes.get(r.offset as usize..).unwrap_or(&[]);
        let header = RecordHeader::decode(h, r.offset).map_err(|e| self.record_error(id, e))?;
        let mismatch = |what: &str| {
            self.record_error(
                id,
                FormatError::Invalid {
                    field: "record header",
                    offset: r.offset,
                    reason: format!("{what} differs from the index"),
                },
            )
        };
        if header.record_id != id {
            return Err(mismatch("record id"));
        }
        if header.kind != r.kind {
            return Err(mismatch("kind"));
        }
        if header.body_len != r.body_len {
            return Err(mismatch("body length"));
        }
        Ok(header)
    }

    /// The body of record `id`, split (no checksum check: see `verify`).
    pub(crate) fn body(&self, id: u64) -> Result<Body<'a>, ReaderError> {
        self.header(id)?;
        let r = self.records[id as usize];
        let start = (r.offset + RECORD_HEADER_BYTES) as usize;
        // open() checked that every body lies inside the file.
        let body = &self.bytes[start..start + r.body_len as usize];
        split_body(body, r.offset).map_err(|e| self.record_error(id, e))
    }
}

/// Name the storage in an out-of-bounds error.
fn annotate(e: trace_format::LayoutError, storage: u64) -> trace_format::LayoutError {
    match e {
        trace_format::LayoutError::BlockMapping { dtype, reason } => {
            trace_format::LayoutError::BlockMapping {
                dtype,
                reason: format!("{reason} (storage {storage})"),
            }
        }
        other => other,
    }
}

/// The records of a finished file, from its footer. `Ok(None)` when there
/// is no valid trailer (an unfinished file).
fn read_footer(bytes: &[u8]) -> Result<Option<(Vec<RecordEntry>, u64)>, FormatError> {
    let len = bytes.len() as u64;
    if len < FILE_HEADER_BYTES + TRAILER_BYTES {
        return Ok(None);
    }
    let Some(trailer) = Trailer::decode(&bytes[(len - TRAILER_BYTES) as usize..]) else {
        return Ok(None);
    };
    let invalid = |offset, reason: String| FormatError::Invalid {
        field: "footer",
        offset,
        reason,
    };
    let fo = trailer.footer_offset;
    if fo < FILE_HEADER_BYTES
        || fo % 64 != 0
        || fo.saturating_add(RECORD_HEADER_BYTES) > len - TRAILER_BYTES
    {
        return Err(invalid(
            len - TRAILER_BYTES,
            format!("trailer points to byte {fo}, outside the file"),
        ));
    }
    let h = RecordHeader::decode(&bytes[fo as usize..], fo)?;
    if h.kind != RecordKind::Footer as u16 || h.record_id != trailer.record_count {
        return Err(invalid(
            fo,
            "the trailer does not point to the footer record".into(),
        ));
    }
    let body_start = fo + RECORD_HEADER_BYTES;
    if next_record_offset(fo, h.body_len) != Some(len - TRAILER_BYTES) {
        return Err(invalid(
            fo,
            format!(
                "footer body of {} bytes does not end where the trailer starts",
                h.body_len
            ),
        ));
    }
    let body = &bytes[body_start as usize..(body_start + h.body_len) as usize];
    if trace_format::record::crc32c(body) != h.body_crc32c {
        return Err(invalid(fo, "footer checksum mismatch".into()));
    }
    let b = split_body(body, fo)?;
    let (entries, names) = decode_footer(b.descriptor, b.descriptor_offset)?;
    if entries.len() as u64 != trailer.record_count {
        return Err(invalid(
            fo,
            "record count differs from the trailer's".into(),
        ));
    }
    let names_at = b.descriptor_offset + b.descriptor.len() as u64 - names.len() as u64;
    let mut records = Vec::with_capacity(entries.len());
    let mut expect = FILE_HEADER_BYTES;
    for (id, e) in entries.iter().enumerate() {
        let at = b.descriptor_offset + 8 + (id * trace_format::codec::INDEX_ENTRY_BYTES) as u64;
        if e.offset != expect {
            return Err(invalid(
                at,
                format!(
                    "record {id} is indexed at byte {}, expected {expect}",
                    e.offset
                ),
            ));
        }
        expect = next_record_offset(e.offset, e.body_len)
            .filter(|&n| n <= fo)
            .ok_or_else(|| {
                invalid(
                    at,
                    format!("record {id} of {} bytes runs past the footer", e.body_len),
                )
            })?;
        let name_end = e
            .name_offset
            .checked_add(u64::from(e.name_len))
            .filter(|&n| n <= names.len() as u64);
        let Some(name_end) = name_end else {
            return Err(invalid(
                at,
                format!("record {id}'s name lies outside the name table"),
            ));
        };
        if std::str::from_utf8(&names[e.name_offset as usize..name_end as usize]).is_err() {
            return Err(invalid(at, format!("record {id}'s name is not UTF-8")));
        }
        records.push(RecordEntry {
            offset: e.offset,
            body_len: e.body_len,
            kind: e.kind,
            step: e.step,
            layer: e.layer,
            name_at: names_at + e.name_offset,
            name_len: e.name_len,
        });
    }
    if expect != fo {
        return Err(invalid(
            fo,
            format!("bytes {expect}..{fo} before the footer belong to no record"),
        ));
    }
    Ok(Some((records, fo)))
}

/// Walk the records of a file from the start; stop at the first that is
/// incomplete or invalid. Footer records met on the way are not records of
/// the trace (a writer that died after its footer but before its trailer).
fn scan(bytes: &[u8]) -> (Vec<RecordEntry>, Option<TornTail>) {
    let len = bytes.len() as u64;
    let mut records = Vec::new();
    let mut at = FILE_HEADER_BYTES;
    let stop = |at: u64, reason: String| {
        Some(TornTail {
            offset: at,
            bytes: len - at,
            reason,
        })
    };
    loop {
        if at >= len {
            return (records, None);
        }
        let h = match RecordHeader::decode(&bytes[at as usize..], at) {
            Ok(h) => h,
            // only zeros left: space a writer allocated ahead, nothing lost
            Err(_) if bytes[at as usize..].iter().all(|&b| b == 0) => return (records, None),
            Err(e) => return (records, stop(at, e.to_string())),
        };
        if h.record_id != records.len() as u64 {
            let reason = format!(
                "record header says id {}, expected {}",
                h.record_id,
                records.len()
            );
            return (records, stop(at, reason));
        }
        let end = at
            .checked_add(RECORD_HEADER_BYTES)
            .and_then(|x| x.checked_add(h.body_len));
        let Some(end) = end.filter(|&e| e <= len) else {
            return (
                records,
                stop(
                    at,
                    format!(
                        "record {} needs {} body bytes; the file ends first",
                        h.record_id, h.body_len
                    ),
                ),
            );
        };
        let body = &bytes[(at + RECORD_HEADER_BYTES) as usize..end as usize];
        if h.kind == RecordKind::Footer as u16 {
            let trailing = len - at;
            return (
                records,
                stop(
                    at,
                    format!("footer record without a valid trailer ({trailing} bytes)"),
                ),
            );
        }
        let Ok(b) = split_body(body, at) else {
            return (records, stop(at, "malformed record body".into()));
        };
        let (mut name_at, mut name_len, mut step, mut layer) =
            (b.descriptor_offset, 0u32, None, None);
        if h.kind == RecordKind::Tensor as u16
            || h.kind == RecordKind::Storage as u16
            || h.kind == RecordKind::StorageUpdate as u16
        {
            if b.descriptor.len() >= 4 {
                let n = u32::from_le_bytes(b.descriptor[0..4].try_into().unwrap_or_default());
                if 4 + n as usize <= b.descriptor.len()
                    && std::str::from_utf8(&b.descriptor[4..4 + n as usize]).is_ok()
                {
                    name_at = b.descriptor_offset + 4;
                    name_len = n;
                }
            }
            if h.kind == RecordKind::Tensor as u16 {
                if let Ok(d) = decode_tensor(b.descriptor, b.descriptor_offset) {
                    step = d.step;
                    layer = d.layer;
                }
            }
        }
        records.push(RecordEntry {
            offset: at,
            body_len: h.body_len,
            kind: h.kind,
            step,
            layer,
            name_at,
            name_len,
        });
        match next_record_offset(at, h.body_len) {
            Some(next) if next <= len => at = next,
            // the last record is complete; only its padding was cut
            _ => {
                return (
                    records,
                    stop(
                        end,
                        "the file ends inside the padding after the last record".into(),
                    ),
                )
            }
        }
    }
}
