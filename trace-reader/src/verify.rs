//! `verify()`: every checksum, every padding byte, every lineage replay.

#![forbid(unsafe_code)]

use trace_format::lineage::{replay, ParentLayout};
use trace_format::record::{
    crc32c, next_record_offset, RecordHeader, RecordKind, RECORD_HEADER_BYTES,
};

use crate::trace::Trace;

/// One fault found by [`Trace::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The record, when the fault is in one.
    pub record: Option<u64>,
    /// The tensor's name, when the record is a tensor.
    pub tensor: Option<String>,
    /// Byte offset of the fault (or of the record it is in).
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.record, &self.tensor) {
            (Some(r), Some(t)) => write!(
                f,
                "record {r} (tensor `{t}`), byte {}: {}",
                self.offset, self.message
            ),
            (Some(r), None) => write!(f, "record {r}, byte {}: {}", self.offset, self.message),
            _ => write!(f, "byte {}: {}", self.offset, self.message),
        }
    }
}

/// What [`Trace::verify`] checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records whose checksums were checked.
    pub records: u64,
    /// Bytes covered by checksums.
    pub bytes: u64,
    /// Tensors decoded and bounds-checked.
    pub tensors: u64,
    /// Lineages replayed against the recorded layout.
    pub lineages_replayed: u64,
    /// Stored byte checksums of tensor values compared.
    pub value_checksums: u64,
    /// Value checks (stored checksums, derived rebuilds) left out once
    /// verify had gone through its budget of values (SPEC.md §9): not faults.
    pub values_unchecked: u64,
    /// Every fault, in file order.
    pub faults: Vec<Fault>,
}

impl VerifyReport {
    /// Whether nothing was wrong.
    pub fn is_ok(&self) -> bool {
        self.faults.is_empty()
    }
}

impl Trace {
    /// Check everything: record and footer checksums, zero padding, the
    /// index against the records, every tensor's bounds, every lineage
    /// replay, and stored value checksums. An unfinished file is a fault
    /// too (its complete records are still checked).
    pub fn verify(&self) -> VerifyReport {
        let mut rep = VerifyReport::default();
        let bytes = self.source.bytes();
        let fault = |rep: &mut VerifyReport,
                     record: Option<u64>,
                     tensor: Option<String>,
                     offset: u64,
                     message: String| {
            rep.faults.push(Fault {
                record,
                tensor,
                offset,
                message,
            });
        };
        for w in &self.warnings {
            fault(&mut rep, None, None, 0, w.clone());
        }
        if let Some(t) = self.torn_tail() {
            fault(
                &mut rep,
                None,
                None,
                t.offset,
                format!(
                    "unfinished trace: torn tail of {} bytes ({})",
                    t.bytes, t.reason
                ),
            );
        } else if !self.is_finished() {
            fault(
                &mut rep,
                None,
                None,
                self.file_len(),
                "unfinished trace: no footer".into(),
            );
        }
        // a GGUF file has no record framing or checksums: its tensors are checked below
        let framed = if self.framed() {
            &self.records[..]
        } else {
            &[][..]
        };
        for (id, r) in framed.iter().enumerate() {
            let id = id as u64;
            let name = (r.kind == RecordKind::Tensor as u16)
                .then(|| self.record_name(id).unwrap_or("").to_owned());
            let header = match self.header(id) {
                Ok(h) => h,
                Err(e) => {
                    fault(&mut rep, Some(id), name, r.offset, e.to_string());
                    continue;
                }
            };
            let start = (r.offset + RECORD_HEADER_BYTES) as usize;
            let body = &bytes[start..start + r.body_len as usize];
            rep.records += 1;
            rep.bytes += RECORD_HEADER_BYTES + r.body_len;
            if crc32c(body) != header.body_crc32c {
                fault(
                    &mut rep,
                    Some(id),
                    name.clone(),
                    r.offset + 24,
                    "body checksum mismatch".into(),
                );
            }
            let end = start + r.body_len as usize;
            let next = next_record_offset(r.offset, r.body_len)
                .unwrap_or(u64::MAX)
                .min(bytes.len() as u64) as usize;
            if let Some(p) = bytes[end..next].iter().position(|&b| b != 0) {
                fault(
                    &mut rep,
                    Some(id),
                    name.clone(),
                    (end + p) as u64,
                    "padding after the record is not zero".into(),
                );
            }
            if let Err(e) = self.body(id) {
                fault(&mut rep, Some(id), name.clone(), r.offset, e.to_string());
            } else if r.kind == RecordKind::StorageUpdate as u16 {
                // format 1.2: the update decodes, its chain down to a storage
                // is sound, and the index names it as it names itself
                match self.check_update(id) {
                    Err(message) => fault(&mut rep, Some(id), None, r.offset, message),
                    Ok(own) if Some(own.as_str()) != self.record_name(id) => fault(
                        &mut rep,
                        Some(id),
                        None,
                        r.offset,
                        "the index's name differs from the storage update's".into(),
                    ),
                    Ok(_) => {}
                }
            }
        }
        if let Some(fo) = self.footer_offset() {
            // read_footer checked the footer's checksum and framing at open;
            // the trailer's checksum too. Check the footer padding here.
            if let Ok(h) = RecordHeader::decode(&bytes[fo as usize..], fo) {
                let end = (fo + RECORD_HEADER_BYTES + h.body_len) as usize;
                let next = bytes.len() - trace_format::record::TRAILER_BYTES as usize;
                if let Some(p) = bytes[end.min(next)..next].iter().position(|&b| b != 0) {
                    fault(
                        &mut rep,
                        None,
                        None,
                        (end + p) as u64,
                        "padding after the footer is not zero".into(),
                    );
                }
                // the footer's payload, if any, is the space a writer
                // allocated ahead: zeros (SPEC.md §5.6)
                let body_at = (fo + RECORD_HEADER_BYTES) as usize;
                if let Ok(b) = trace_format::record::split_body(&bytes[body_at..end.min(next)], fo)
                {
                    if let Some(p) = b.payload.iter().position(|&x| x != 0) {
                        fault(
                            &mut rep,
                            None,
                            None,
                            b.payload_offset + p as u64,
                            "the footer's payload is not zero".into(),
                        );
                    }
                }
                rep.bytes += RECORD_HEADER_BYTES + h.body_len;
            }
        }
        let mut value_budget = crate::values::value_limit(self.file_len()).saturating_mul(4);
        for &id in self.tensor_ids() {
            let t = match self.tensor(id) {
                Ok(t) => t,
                Err(e) => {
                    let name = self.record_name(id).map(str::to_owned);
                    fault(
                        &mut rep,
                        Some(id),
                        name,
                        self.records[id as usize].offset,
                        e.to_string(),
                    );
                    continue;
                }
            };
            rep.tensors += 1;
            if self.records[id as usize].step != t.step
                || self.records[id as usize].layer != t.layer
                || self.record_name(id) != Some(&t.name)
            {
                fault(
                    &mut rep,
                    Some(id),
                    Some(t.name.clone()),
                    t.record_offset,
                    "the index's name, step or layer differs from the record's".into(),
                );
            }
            let mut parents = Vec::with_capacity(t.lineage.parents.len());
            let mut parents_ok = true;
            for &p in &t.lineage.parents {
                match (p < id).then(|| self.tensor(p)) {
                    Some(Ok(pt)) => parents.push(ParentLayout {
                        dtype: pt.dtype,
                        layout: pt.layout.clone(),
                        storage: pt.storage,
                    }),
                    Some(Err(e)) => {
                        parents_ok = false;
                        fault(
                            &mut rep,
                            Some(id),
                            Some(t.name.clone()),
                            t.record_offset,
                            format!("parent {p}: {e}"),
                        );
                    }
                    None => {
                        parents_ok = false;
                        fault(
                            &mut rep,
                            Some(id),
                            Some(t.name.clone()),
                            t.record_offset,
                            format!("parent {p} is not an earlier tensor record"),
                        );
                    }
                }
            }
            if parents_ok {
                match replay(&t.lineage, &parents) {
                    Ok(None) => {}
                    Ok(Some(r)) => {
                        rep.lineages_replayed += 1;
                        let mut diffs = Vec::new();
                        if let Some(d) = r.dtype.filter(|&d| d != t.dtype) {
                            diffs.push(format!("dtype {d} (recorded {})", t.dtype));
                        }
                        if r.shape != t.layout.shape() {
                            diffs.push(format!(
                                "shape {:?} (recorded {:?})",
                                r.shape,
                                t.layout.shape()
                            ));
                        }
                        if let Some(s) = &r.byte_strides {
                            if !same_strides(&r.shape, s, t.layout.byte_strides()) {
                                diffs.push(format!(
                                    "byte strides {:?} (recorded {:?})",
                                    s,
                                    t.layout.byte_strides()
                                ));
                            }
                        }
                        if let Some((storage, offset)) = r.storage {
                            if storage != t.storage || offset != t.layout.storage_offset() {
                                diffs.push(format!(
                                    "storage {storage:?} + {offset} (recorded {:?} + {})",
                                    t.storage,
                                    t.layout.storage_offset()
                                ));
                            }
                        }
                        if !diffs.is_empty() {
                            fault(
                                &mut rep,
                                Some(id),
                                Some(t.name.clone()),
                                t.record_offset,
                                format!("lineage replay gives {}", diffs.join(", ")),
                            );
                        }
                    }
                    Err(e) => fault(
                        &mut rep,
                        Some(id),
                        Some(t.name.clone()),
                        t.record_offset,
                        format!("lineage cannot be replayed: {e}"),
                    ),
                }
            }
            // value checks cost in proportion to the values, which a view
            // can make far more than the file holds: a budget for them all
            let wants_values = t.derived
                || (t.stats.as_ref().is_some_and(|s| s.bytes_crc32c.is_some())
                    && !t.is_stats_only());
            if wants_values {
                let n = t.layout.numel();
                if n > value_budget {
                    rep.values_unchecked += 1;
                    continue;
                }
                value_budget -= n;
            }
            if t.derived {
                if let Err(e) = self.view(id).and_then(|v| v.to_f32()) {
                    fault(
                        &mut rep,
                        Some(id),
                        Some(t.name.clone()),
                        t.record_offset,
                        e.to_string(),
                    );
                }
            }
            if let (Some(crc), false) = (
                t.stats.as_ref().and_then(|s| s.bytes_crc32c),
                t.is_stats_only(),
            ) {
                if let Ok(b) = self.view(id).and_then(|v| v.materialize()) {
                    rep.value_checksums += 1;
                    if crc32c(&b) != crc {
                        fault(
                            &mut rep,
                            Some(id),
                            Some(t.name.clone()),
                            t.record_offset,
                            "values differ from the stored checksum of the tensor's bytes".into(),
                        );
                    }
                }
            }
        }
        rep.faults.sort_by_key(|f| f.offset);
        rep
    }
}

/// Strides equal, ignoring dimensions of size 1 (whose stride means nothing).
fn same_strides(shape: &[u64], a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len()
        && shape
            .iter()
            .zip(a.iter().zip(b))
            .all(|(&n, (x, y))| n == 1 || x == y)
}
