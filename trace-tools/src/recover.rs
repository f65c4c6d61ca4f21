//! `tracedump recover`: turn a torn or unfinished trace into a clean, finished one.
//!
//! The file header and every complete record are copied verbatim (same bytes,
//! same offsets, so the same record ids and payload alignment), then a FOOTER
//! record and trailer are appended exactly as trace-writer's `finish()` writes
//! them. Every record's body checksum is checked first: recovery stops at the
//! first record that fails, because any later record may refer to it (a view
//! of a corrupt storage, a lineage parent).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::bail;
use crate::{ResultExt, ToolsError};
use serde::Serialize;
use trace_format::codec::{decode_storage, decode_tensor, IndexEntry};
use trace_format::record::{
    crc32c, frame_footer, next_record_offset, split_body, RecordHeader, RecordKind,
    FILE_HEADER_BYTES, RECORD_HEADER_BYTES,
};
use trace_reader::{RecordEntry, Trace};

type Result<T, E = ToolsError> = std::result::Result<T, E>;

/// What [`recover`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecoverSummary {
    /// Records copied into the output (its footer not counted).
    pub records: u64,
    /// Bytes of the input's records that were not carried over: the torn
    /// tail of an unfinished input and, when recovery stopped at a corrupt
    /// record, that record and everything after it up to the input's footer
    /// (or end). The footer and trailer of a finished input are replaced,
    /// not counted here.
    pub dropped_tail_bytes: u64,
    /// Where recovery stopped and why: a corrupt record (offset of its
    /// header), or the torn tail of an unfinished input (offset of its first
    /// byte). `None` when every record of the input was copied.
    pub stopped_at: Option<(u64, String)>,
    /// Size of the output file.
    pub bytes_written: u64,
}

const ZEROS: [u8; 64] = [0; 64];

/// Copy every complete, intact record of `input` into a finished trace at `output`.
pub fn recover(input: &Path, output: &Path) -> Result<RecoverSummary> {
    if same_file(input, output) {
        bail!(
            "{}: the output must be a different file from the input",
            output.display()
        );
    }
    let trace =
        Trace::open(input).context_with(|| format!("cannot recover {}", input.display()))?;
    let bytes = trace.source().bytes();
    let records = trace.records();

    // Which records can be kept: every one up to the first that fails a check.
    let mut keep = records.len();
    let mut stopped_at = trace.torn_tail().map(|t| {
        (
            t.offset,
            format!("torn tail of {} bytes: {}", t.bytes, t.reason),
        )
    });
    let mut expect = FILE_HEADER_BYTES;
    for (id, r) in records.iter().enumerate() {
        if let Err(why) = check_record(bytes, id as u64, r, expect) {
            let name = match trace.record_name(id as u64) {
                Some(n) if !n.is_empty() => format!(" `{n}`"),
                _ => String::new(),
            };
            let after = records.len() - id - 1;
            stopped_at = Some((
                r.offset,
                format!(
                    "record {id}{name} is corrupt ({why}); it and the {after} record(s) after it were not copied, \
                     since a later record may refer to it"
                ),
            ));
            keep = id;
            break;
        }
        expect = next_record_offset(r.offset, r.body_len).unwrap_or(u64::MAX);
    }
    let kept = &records[..keep];

    // The input's records end at its footer (finished) or at its end (unfinished).
    let input_len = bytes.len() as u64;
    let records_end = trace.footer_offset().unwrap_or(input_len);
    let copied_end = kept
        .last()
        .and_then(|r| next_record_offset(r.offset, r.body_len))
        .unwrap_or(FILE_HEADER_BYTES)
        .min(records_end);
    let dropped_tail_bytes = records_end.saturating_sub(copied_end);

    let tmp = temp_path(output);
    let written = write_recovered(&trace, kept, &tmp).and_then(|n| {
        fs::rename(&tmp, output)
            .context_with(|| format!("cannot move {} to {}", tmp.display(), output.display()))?;
        Ok(n)
    });
    let bytes_written = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    Ok(RecoverSummary {
        records: kept.len() as u64,
        dropped_tail_bytes,
        stopped_at,
        bytes_written,
    })
}

/// Check record `id` as found at `r`: it starts where the previous one
/// ended, its header is valid and agrees with the index, its body is inside
/// the file, framed correctly, and matches its checksum.
fn check_record(bytes: &[u8], id: u64, r: &RecordEntry, expect: u64) -> Result<(), String> {
    if r.offset != expect {
        return Err(format!("it is at byte {}, expected {expect}", r.offset));
    }
    let at = usize::try_from(r.offset).map_err(|_| "offset too large".to_string())?;
    let h = RecordHeader::decode(bytes.get(at..).unwrap_or(&[]), r.offset)
        .map_err(|e| e.to_string())?;
    if h.record_id != id {
        return Err(format!("its header says record id {}", h.record_id));
    }
    if h.kind != r.kind || h.body_len != r.body_len {
        return Err("its header differs from the index".into());
    }
    let body = r
        .offset
        .checked_add(RECORD_HEADER_BYTES)
        .and_then(|s| Some((s, s.checked_add(h.body_len)?)))
        .and_then(|(s, e)| bytes.get(usize::try_from(s).ok()?..usize::try_from(e).ok()?))
        .ok_or_else(|| {
            format!(
                "its body of {} bytes runs past the end of the file",
                h.body_len
            )
        })?;
    let crc = crc32c(body);
    if crc != h.body_crc32c {
        return Err(format!(
            "body checksum mismatch: stored {:#010x}, computed {crc:#010x}",
            h.body_crc32c
        ));
    }
    split_body(body, r.offset).map_err(|e| e.to_string())?;
    Ok(())
}

/// Name, step and layer of a record for the footer index: from the record's
/// own (checksummed) descriptor where it decodes, else from the input's index.
fn index_fields(
    trace: &Trace,
    bytes: &[u8],
    id: u64,
    r: &RecordEntry,
) -> (String, Option<i64>, Option<i64>) {
    let fallback = || {
        (
            trace.record_name(id).unwrap_or("").to_owned(),
            r.step,
            r.layer,
        )
    };
    let start = (r.offset + RECORD_HEADER_BYTES) as usize;
    let Some(body) = bytes.get(start..start + r.body_len as usize) else {
        return fallback();
    };
    let Ok(b) = split_body(body, r.offset) else {
        return fallback();
    };
    if r.kind == RecordKind::Tensor as u16 {
        match decode_tensor(b.descriptor, b.descriptor_offset) {
            Ok(d) => (d.name, d.step, d.layer),
            Err(_) => fallback(),
        }
    } else if r.kind == RecordKind::Storage as u16 {
        match decode_storage(b.descriptor, b.descriptor_offset) {
            Ok(d) => (d.name, None, None),
            Err(_) => fallback(),
        }
    } else {
        fallback()
    }
}

/// Write the file header, `kept` records and a fresh footer and trailer to
/// `path`; returns the file size.
fn write_recovered(trace: &Trace, kept: &[RecordEntry], path: &Path) -> Result<u64> {
    let bytes = trace.source().bytes();
    let file = File::create(path).context_with(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let io = |e: std::io::Error| ToolsError::io(format!("writing {}", path.display()), e);

    out.write_all(&bytes[..FILE_HEADER_BYTES as usize])
        .map_err(io)?;
    let mut offset = FILE_HEADER_BYTES;
    let mut index = Vec::with_capacity(kept.len());
    let mut names = Vec::new();
    for (id, r) in kept.iter().enumerate() {
        // check_record made sure the record is inside the file, at `offset`.
        let end = r.offset + RECORD_HEADER_BYTES + r.body_len;
        out.write_all(&bytes[r.offset as usize..end as usize])
            .map_err(io)?;
        let next = next_record_offset(r.offset, r.body_len).context_with(|| "record too large")?;
        out.write_all(&ZEROS[..(next - end) as usize]).map_err(io)?;
        let (name, step, layer) = index_fields(trace, bytes, id as u64, r);
        index.push(IndexEntry {
            offset: r.offset,
            body_len: r.body_len,
            kind: r.kind,
            step,
            layer,
            name_offset: names.len() as u64,
            name_len: u32::try_from(name.len()).context_with(|| "record name too long")?,
        });
        names.extend_from_slice(name.as_bytes());
        offset = next;
    }

    // The footer and trailer, framed as trace-writer frames them.
    let tail = frame_footer(offset, &index, &names);
    out.write_all(&tail).map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(offset + tail.len() as u64)
}

/// A sibling of `path` to write into before renaming it over `path`.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tracedump-{}.partial", std::process::id()))
}

/// Whether `a` and `b` name the same existing file.
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(x), Ok(y)) = (fs::canonicalize(a), fs::canonicalize(b)) {
        if x == y {
            return true;
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (fs::metadata(a), fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_format::stats::compute_stats;
    use trace_writer::{DType, Layout, Metadata, Op, TensorMeta, Writer};

    /// A trace with a storage and views into it, inline tensors (contiguous,
    /// strided, one payload over 1 MiB), a stats-only tensor and a repeated name.
    fn build(path: &Path) -> Vec<u8> {
        let w = Writer::create(
            path,
            Metadata::new()
                .with("engine", "recover-test")
                .with("rank", 0u64),
        )
        .unwrap();
        let cache: Vec<f32> = (0..4 * 6).map(|i| i as f32 * 0.5).collect();
        let s = w
            .add_storage("cache", bytemuck::cast_slice(&cache))
            .unwrap();
        let full = Layout::contiguous(DType::F32, &[4, 6], 0).unwrap();
        let c = w
            .add_view("cache", DType::F32, s, &full, TensorMeta::new().layer(0))
            .unwrap()
            .unwrap();
        let t = full.transpose(0, 1).unwrap();
        let meta = TensorMeta::new()
            .layer(0)
            .step(1)
            .role("k")
            .parent(c)
            .op(Op::Transpose { a: 0, b: 1 });
        w.add_view("k-0", DType::F32, s, &t, meta).unwrap();
        let q: Vec<u16> = (0..2 * 3)
            .map(|i| half::f16::from_f32(i as f32).to_bits())
            .collect();
        w.add_tensor(
            "q",
            DType::F16,
            &[2, 3],
            bytemuck::cast_slice(&q),
            TensorMeta::new().step(1),
        )
        .unwrap();
        let big: Vec<f32> = (0..300_000).map(|i| (i as f32).sin()).collect();
        w.add_tensor(
            "big",
            DType::F32,
            &[300, 1000],
            bytemuck::cast_slice(&big),
            TensorMeta::new(),
        )
        .unwrap();
        let strided = Layout::new(vec![3], vec![-8], 16).unwrap();
        let v: Vec<i32> = (0..5).collect();
        w.add_strided(
            "rev",
            DType::I32,
            &strided,
            bytemuck::cast_slice(&v),
            TensorMeta::new().layer(1),
        )
        .unwrap();
        let kq = [0.25f32, 0.75, -1.0];
        let stats = compute_stats(DType::F32, bytemuck::cast_slice(&kq)).unwrap();
        w.add_stats(
            "kq",
            DType::F32,
            &[3],
            stats,
            TensorMeta::new().layer(0).step(1),
        )
        .unwrap();
        w.add_tensor(
            "q",
            DType::F16,
            &[2, 3],
            bytemuck::cast_slice(&q),
            TensorMeta::new().step(2),
        )
        .unwrap();
        w.add_storage("tail", &[7u8; 100]).unwrap();
        w.finish().unwrap();
        fs::read(path).unwrap()
    }

    /// Every record of `a` is byte-identical in `b`, and so is every tensor.
    fn same_records(a: &Trace, b: &Trace) {
        assert_eq!(a.records().len(), b.records().len());
        let (ab, bb) = (a.source().bytes(), b.source().bytes());
        for (ra, rb) in a.records().iter().zip(b.records()) {
            assert_eq!(
                (ra.offset, ra.body_len, ra.kind, ra.step, ra.layer),
                (rb.offset, rb.body_len, rb.kind, rb.step, rb.layer)
            );
            let end = (ra.offset + RECORD_HEADER_BYTES + ra.body_len) as usize;
            assert_eq!(ab[ra.offset as usize..end], bb[rb.offset as usize..end]);
        }
        assert_eq!(a.tensor_ids(), b.tensor_ids());
        for &id in a.tensor_ids() {
            assert_eq!(a.record_name(id), b.record_name(id));
            let (ta, tb) = (a.tensor(id).unwrap(), b.tensor(id).unwrap());
            assert_eq!(ta, tb);
            if !ta.is_stats_only() {
                assert_eq!(
                    a.view(id).unwrap().materialize().unwrap(),
                    b.view(id).unwrap().materialize().unwrap()
                );
            }
        }
        assert_eq!(a.run_metadata(), b.run_metadata());
    }

    #[test]
    fn recovers_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let full_path = dir.path().join("full.tdump");
        let full = build(&full_path);
        let complete = Trace::open(&full_path).unwrap();
        let n = complete.records().len();
        let fo = complete.footer_offset().unwrap() as usize;

        // Cut points: every record boundary and inside every header, body and
        // padding; inside the footer, between footer and trailer, in the trailer.
        let mut cuts = vec![64, 65];
        for r in complete.records() {
            let (o, end) = (
                r.offset as usize,
                (r.offset + RECORD_HEADER_BYTES + r.body_len) as usize,
            );
            cuts.extend([
                o,
                o + 1,
                o + 31,
                o + 32,
                o + 40,
                (o + end) / 2,
                end - 1,
                end,
                end + 1,
            ]);
        }
        cuts.extend([
            fo,
            fo + 16,
            fo + 40,
            fo + 100,
            full.len() - 32,
            full.len() - 33,
            full.len() - 1,
        ]);
        cuts.sort_unstable();
        cuts.dedup();

        for cut in cuts {
            let cut_path = dir.path().join("cut.tdump");
            fs::write(&cut_path, &full[..cut]).unwrap();
            let torn = Trace::open(&cut_path).unwrap();
            assert!(!torn.is_finished(), "cut at {cut}");
            let out = dir.path().join("out.tdump");
            let s = recover(&cut_path, &out).unwrap_or_else(|e| panic!("cut at {cut}: {e:#}"));
            let fixed = Trace::open(&out).unwrap();
            assert!(fixed.is_finished(), "cut at {cut}");
            let rep = fixed.verify();
            assert!(rep.is_ok(), "cut at {cut}: {:?}", rep.faults);
            same_records(&torn, &fixed);
            assert_eq!(s.records as usize, torn.records().len());
            assert!(s.records as usize <= n);
            assert_eq!(s.bytes_written, fs::metadata(&out).unwrap().len());
            let kept_end = torn
                .records()
                .last()
                .map(|r| next_record_offset(r.offset, r.body_len).unwrap() as usize)
                .unwrap_or(64);
            assert_eq!(
                s.dropped_tail_bytes as usize,
                cut.saturating_sub(kept_end),
                "cut at {cut}"
            );
            assert_eq!(
                s.stopped_at.is_some(),
                torn.torn_tail().is_some(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn finished_input_is_copied_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("full.tdump");
        let full = build(&p);
        let out = dir.path().join("copy.tdump");
        let s = recover(&p, &out).unwrap();
        assert_eq!(s.stopped_at, None);
        assert_eq!(s.dropped_tail_bytes, 0);
        // Same records, same index: the very same bytes up to the footer,
        // whose zero payload (the writer's space allocated ahead) is not copied.
        let copy = fs::read(&out).unwrap();
        assert_eq!(s.bytes_written, copy.len() as u64);
        let fo = Trace::open(&p).unwrap().footer_offset().unwrap() as usize;
        assert_eq!(copy[..fo], full[..fo]);
        assert!(copy.len() <= full.len());
        same_records(&Trace::open(&p).unwrap(), &Trace::open(&out).unwrap());
    }

    #[test]
    fn unfinished_writer_output_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dropped.tdump");
        {
            let w = Writer::create(&p, Metadata::new()).unwrap();
            w.add_tensor(
                "a",
                DType::U8,
                &[3],
                &[1, 2, 3],
                TensorMeta::new().layer(4).step(2),
            )
            .unwrap();
            w.add_tensor("b", DType::Bool, &[2], &[1, 0], TensorMeta::new())
                .unwrap();
            // dropped without finish(): no footer
        }
        let out = dir.path().join("fixed.tdump");
        let s = recover(&p, &out).unwrap();
        assert_eq!(s.records, 3);
        assert_eq!(s.stopped_at, None);
        let t = Trace::open(&out).unwrap();
        assert!(t.is_finished() && t.verify().is_ok());
        assert_eq!(t.get("a").unwrap().layer, Some(4));
        assert_eq!(t.records()[1].step, Some(2));
        same_records(&Trace::open(&p).unwrap(), &t);
    }

    #[test]
    fn corrupt_record_stops_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("full.tdump");
        let mut full = build(&p);
        let trace = Trace::open(&p).unwrap();
        // the storage `cache` (record 1), viewed by records 2 and 3: flip a payload bit
        let id = 1;
        let r = trace.records()[id];
        assert_eq!(trace.record_name(id as u64), Some("cache"));
        let payload_at = trace.storage(id as u64).unwrap().file_offset as usize;
        full[payload_at + 5] ^= 0x10;
        drop(trace);
        for finished in [true, false] {
            let bad = dir.path().join("bad.tdump");
            let bytes = if finished {
                &full[..]
            } else {
                &full[..full.len() - 200]
            };
            fs::write(&bad, bytes).unwrap();
            let out = dir.path().join("out.tdump");
            let s = recover(&bad, &out).unwrap();
            assert_eq!(s.records, id as u64);
            let (at, why) = s.stopped_at.clone().unwrap();
            assert_eq!(at, r.offset);
            assert!(
                why.contains("checksum") && why.contains("`cache`") && why.contains("not copied"),
                "{why}"
            );
            let fixed = Trace::open(&out).unwrap();
            assert!(fixed.is_finished() && fixed.verify().is_ok());
            assert_eq!(fixed.records().len(), id);
            let records_end = if finished {
                Trace::open(&bad).unwrap().footer_offset().unwrap()
            } else {
                bytes.len() as u64
            };
            assert_eq!(s.dropped_tail_bytes, records_end - r.offset);
        }

        // a corrupt record in the middle: the records before it are kept
        let mut full = build(&p);
        let trace = Trace::open(&p).unwrap();
        let id = trace.resolve("rev").unwrap();
        let payload_at = trace.tensor(id).unwrap().storage_file_offset() as usize;
        full[payload_at] ^= 1;
        drop(trace);
        let bad = dir.path().join("bad2.tdump");
        fs::write(&bad, &full).unwrap();
        let out = dir.path().join("out2.tdump");
        let s = recover(&bad, &out).unwrap();
        assert_eq!(s.records, id);
        let fixed = Trace::open(&out).unwrap();
        assert!(fixed.verify().is_ok());
        assert!(fixed.get("big").is_ok() && fixed.get("rev").is_err());
    }

    #[test]
    fn refuses_to_overwrite_its_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tdump");
        let full = build(&p);
        let err = recover(&p, &p).unwrap_err();
        assert!(err.to_string().contains("different file"), "{err:#}");
        let alias = dir.path().join(".").join("t.tdump");
        assert!(recover(&p, &alias).is_err());
        assert_eq!(fs::read(&p).unwrap(), full);
        // not a trace at all
        let junk = dir.path().join("junk");
        fs::write(&junk, b"hello").unwrap();
        let err = recover(&junk, &dir.path().join("o")).unwrap_err();
        assert!(format!("{err:#}").contains("junk"), "{err:#}");
        assert!(!dir.path().join("o").exists());
    }
}
