//! The file end of the writer: appends framed records and keeps the index.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use trace_format::codec::IndexEntry;
use trace_format::record::{
    self, body_head, crc32c, crc32c_append, crc32c_combine, encode_file_header, frame_footer,
    next_record_offset, RecordHeader, RecordKind,
};

/// A record ready to be framed: its descriptor and payload.
#[derive(Debug)]
pub(crate) struct RecordParts<'a> {
    pub kind: RecordKind,
    pub name: &'a str,
    pub step: Option<i64>,
    pub layer: Option<i64>,
    pub descriptor: &'a [u8],
    /// The payload, in pieces written one after the other (one piece, or
    /// the chunks of the background queue's staging memory).
    pub payload: &'a [&'a [u8]],
    /// The payload's crc32c, when the caller has it already.
    pub payload_crc32c: Option<u32>,
    /// Checksum a large payload on this thread, piece by piece right after
    /// writing it (the background writer thread: a second thread would
    /// compete with the recording thread for the cores), rather than on a
    /// second thread while it is written (the sync path).
    pub checksum_inline: bool,
}

/// crc32c of the pieces one after the other.
fn crc32c_pieces(pieces: &[&[u8]]) -> u32 {
    pieces.iter().fold(0, |crc, p| crc32c_append(crc, p))
}

const ZEROS: [u8; 64] = [0; 64];

/// Payloads from this size on get their record crc by combining the head's
/// with the payload's; smaller ones are checksummed twice (cheaper).
const COMBINE_MIN_BYTES: usize = 4096;

/// Payloads at least this long are checksummed on a second thread while they
/// are written (the size of the write buffer, so they bypass it without a copy).
const STREAM_BYTES: usize = 1 << 20;

#[cfg(unix)]
fn write_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(not(unix))]
fn write_at(_file: &File, _bytes: &[u8], _offset: u64) -> io::Result<()> {
    unreachable!("streaming writes are only used on unix")
}

/// Appends records to the file; owns the footer index.
#[derive(Debug)]
pub(crate) struct Sink {
    file: BufWriter<File>,
    offset: u64,
    index: Vec<IndexEntry>,
    names: Vec<u8>,
    /// crc32c of every record's payload, by record id (callers that
    /// recognise recorded bytes later ask for it: [`Sink::payload_crc32c`]).
    payload_crcs: Vec<u32>,
}

impl Sink {
    pub fn create(path: &Path) -> io::Result<Sink> {
        let file = File::create(path)?;
        let mut file = BufWriter::with_capacity(STREAM_BYTES, file);
        let header = encode_file_header();
        file.write_all(&header)?;
        Ok(Sink {
            file,
            offset: header.len() as u64,
            index: Vec::new(),
            names: Vec::new(),
            payload_crcs: Vec::new(),
        })
    }

    /// The crc32c of record `id`'s payload, once it is appended.
    pub fn payload_crc32c(&self, id: u64) -> Option<u32> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.payload_crcs.get(i).copied())
    }

    /// The id the next record gets.
    pub fn next_id(&self) -> u64 {
        self.index.len() as u64
    }

    /// Frame and append one record; returns its id.
    pub fn append(&mut self, r: &RecordParts<'_>) -> io::Result<u64> {
        let id = self.next_id();
        let record_offset = self.offset;
        let payload_len: usize = r.payload.iter().map(|p| p.len()).sum();
        let head = body_head(record_offset, r.descriptor, payload_len as u64);
        let body_len = head.len() as u64 + payload_len as u64;
        let next = next_record_offset(record_offset, body_len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let pad = (next - record_offset - record::RECORD_HEADER_BYTES - body_len) as usize;
        let head_crc = crc32c(&head);
        let header = |body_crc32c| {
            RecordHeader {
                kind: r.kind as u16,
                flags: 0,
                record_id: id,
                body_len,
                body_crc32c,
            }
            .encode()
        };
        if cfg!(unix) && payload_len >= STREAM_BYTES {
            // Large payload: checksum it on a second thread while this one
            // writes it, and write the header last, in place. Until then the
            // header bytes are zero, which a reader takes for the end of the
            // complete records: a crash in between loses only this record.
            self.file
                .write_all(&[0u8; record::RECORD_HEADER_BYTES as usize])?;
            self.file.write_all(&head)?;
            // The payload's own crc is combined with the head's: callers may
            // reuse it to recognise these bytes later without a second pass.
            let file = &mut self.file;
            let payload_crc = if let Some(known) = r.payload_crc32c {
                for piece in r.payload {
                    file.write_all(piece)?;
                }
                known
            } else if r.checksum_inline {
                // each piece right after it is written, while it is still
                // in the cache
                let mut crc = 0;
                for piece in r.payload {
                    file.write_all(piece)?;
                    crc = crc32c_append(crc, piece);
                }
                crc
            } else {
                std::thread::scope(|scope| -> io::Result<u32> {
                    let worker = std::thread::Builder::new()
                        .spawn_scoped(scope, || crc32c_pieces(r.payload));
                    for piece in r.payload {
                        file.write_all(piece)?;
                    }
                    match worker {
                        Ok(handle) => handle
                            .join()
                            .map_err(|_| io::Error::other("checksum thread panicked")),
                        Err(_) => Ok(crc32c_pieces(r.payload)),
                    }
                })?
            };
            let crc = crc32c_combine(head_crc, payload_crc, payload_len);
            self.file.write_all(&ZEROS[..pad])?;
            self.file.flush()?;
            write_at(self.file.get_ref(), &header(crc), record_offset)?;
            self.payload_crcs.push(payload_crc);
        } else {
            // the payload's own crc is kept (payload_crcs); the record's is
            // the head's combined with it, or, for a small payload, the
            // head's continued over it (cheaper than a combine)
            let payload_crc = r.payload_crc32c.unwrap_or_else(|| crc32c_pieces(r.payload));
            let crc = if r.payload_crc32c.is_some() || payload_len >= COMBINE_MIN_BYTES {
                crc32c_combine(head_crc, payload_crc, payload_len)
            } else {
                r.payload
                    .iter()
                    .fold(head_crc, |crc, p| crc32c_append(crc, p))
            };
            self.payload_crcs.push(payload_crc);
            self.file.write_all(&header(crc))?;
            self.file.write_all(&head)?;
            for piece in r.payload {
                self.file.write_all(piece)?;
            }
            self.file.write_all(&ZEROS[..pad])?;
        }
        self.offset = next;
        let name_offset = self.names.len() as u64;
        self.names.extend_from_slice(r.name.as_bytes());
        self.index.push(IndexEntry {
            offset: record_offset,
            body_len,
            kind: r.kind as u16,
            step: r.step,
            layer: r.layer,
            name_offset,
            name_len: r.name.len() as u32,
        });
        Ok(id)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    pub fn sync_all(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()
    }

    /// Write the footer and trailer; returns (records, file bytes).
    pub fn finish(&mut self) -> io::Result<(u64, u64)> {
        let tail = frame_footer(self.offset, &self.index, &self.names);
        self.file.write_all(&tail)?;
        self.file.flush()?;
        self.offset += tail.len() as u64;
        Ok((self.next_id(), self.offset))
    }
}
