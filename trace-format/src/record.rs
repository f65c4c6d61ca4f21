//! File framing: file header, record headers, body layout, trailer (SPEC.md §2–§3).

use crate::error::FormatError;

/// The first 8 bytes of every trace: `\x89TDUMP\r\n`.
pub const FILE_MAGIC: [u8; 8] = *b"\x89TDUMP\r\n";
/// Format major version written and read.
pub const VERSION_MAJOR: u16 = 1;
/// Format minor version written.
pub const VERSION_MINOR: u16 = 2;
/// Size of the file header.
pub const FILE_HEADER_BYTES: u64 = 64;
/// The first 4 bytes of every record header.
pub const RECORD_MAGIC: [u8; 4] = *b"TREC";
/// Size of a record header.
pub const RECORD_HEADER_BYTES: u64 = 32;
/// Size of the body prefix (descriptor length + payload length).
pub const BODY_PREFIX_BYTES: u64 = 16;
/// Records and payloads start at multiples of this.
pub const ALIGN: u64 = 64;
/// Size of the trailer that ends a finished file.
pub const TRAILER_BYTES: u64 = 32;
/// The first 8 bytes of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"TDUMPEND";

/// Kinds of record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RecordKind {
    /// Run-level metadata.
    RunMetadata = 1,
    /// Raw bytes that tensors view.
    Storage = 2,
    /// A tensor: a view with metadata and lineage, maybe with its own bytes.
    Tensor = 3,
    /// The index of every record before it.
    Footer = 4,
    /// A storage as an earlier one with some byte ranges rewritten
    /// (format 1.2, [`crate::update`]).
    StorageUpdate = 5,
}

impl RecordKind {
    /// The kind with code `code`, if known.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => RecordKind::RunMetadata,
            2 => RecordKind::Storage,
            3 => RecordKind::Tensor,
            4 => RecordKind::Footer,
            5 => RecordKind::StorageUpdate,
            _ => return None,
        })
    }
}

/// crc32c (Castagnoli) of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The crc32c of `a ++ b` from the crc32c of `a`, the crc32c of `b` and the
/// length of `b`: `crc_a` times x^(8·len_b) modulo the polynomial, plus
/// `crc_b` (zlib's `crc32_combine` method: a few hundred operations
/// whatever the length, where the matrix method the `crc32c` crate uses
/// costs tens of microseconds).
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    multmodp(x2nmodp(len_b as u64, 3), crc_a) ^ crc_b
}

/// The reflected crc32c polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// `a · b` modulo the crc32c polynomial, both reflected (bit 31 is x^0).
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY
        } else {
            b >> 1
        };
    }
    p
}

/// x^(2^k) modulo the polynomial, k = 0..67 (enough for any 64-bit
/// length in bits: zlib wraps k at 32, which holds for its polynomial but
/// not for crc32c's).
const X2N_TABLE: [u32; 67] = {
    let mut t = [0u32; 67];
    let mut p = 1u32 << 30; // x^1
    t[0] = p;
    let mut n = 1;
    while n < 67 {
        p = multmodp(p, p);
        t[n] = p;
        n += 1;
    }
    t
};

/// x^(n · 2^k) modulo the polynomial.
fn x2nmodp(mut n: u64, mut k: usize) -> u32 {
    let mut p = 1u32 << 31; // x^0
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N_TABLE[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// Continue a crc32c over more bytes.
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// Round `x` up to a multiple of [`ALIGN`].
pub fn align_up(x: u64) -> Option<u64> {
    x.checked_add(ALIGN - 1).map(|v| v & !(ALIGN - 1))
}

/// The 64-byte file header.
pub fn encode_file_header() -> [u8; FILE_HEADER_BYTES as usize] {
    let mut h = [0u8; FILE_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(&FILE_MAGIC);
    h[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
    h[10..12].copy_from_slice(&VERSION_MINOR.to_le_bytes());
    let crc = crc32c(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Check a file header; returns (major, minor).
pub fn decode_file_header(h: &[u8]) -> Result<(u16, u16), FormatError> {
    if h.len() < FILE_HEADER_BYTES as usize {
        return Err(FormatError::Truncated {
            field: "file header",
            offset: 0,
            needed: FILE_HEADER_BYTES,
            available: h.len() as u64,
        });
    }
    let invalid = |offset, reason: String| FormatError::Invalid {
        field: "file header",
        offset,
        reason,
    };
    if h[0..8] != FILE_MAGIC {
        return Err(invalid(0, "not a tracedump trace (bad magic)".into()));
    }
    let crc = u32::from_le_bytes(h[60..64].try_into().unwrap_or_default());
    if crc != crc32c(&h[0..60]) {
        return Err(invalid(60, "checksum mismatch".into()));
    }
    let major = u16::from_le_bytes([h[8], h[9]]);
    let minor = u16::from_le_bytes([h[10], h[11]]);
    if major != VERSION_MAJOR {
        return Err(invalid(
            8,
            format!("format version {major}.{minor}; this reader reads {VERSION_MAJOR}.x"),
        ));
    }
    if h[12..60].iter().any(|&b| b != 0) {
        return Err(invalid(12, "reserved bytes are not zero".into()));
    }
    Ok((major, minor))
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Record kind code (see [`RecordKind`]).
    pub kind: u16,
    /// Flags (0 in v1).
    pub flags: u16,
    /// The record's id: its position among the file's records, from 0.
    pub record_id: u64,
    /// Length of the body that follows the header.
    pub body_len: u64,
    /// crc32c of the body.
    pub body_crc32c: u32,
}

impl RecordHeader {
    /// The 32 header bytes, with the header checksum.
    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES as usize] {
        let mut h = [0u8; RECORD_HEADER_BYTES as usize];
        h[0..4].copy_from_slice(&RECORD_MAGIC);
        h[4..6].copy_from_slice(&self.kind.to_le_bytes());
        h[6..8].copy_from_slice(&self.flags.to_le_bytes());
        h[8..16].copy_from_slice(&self.record_id.to_le_bytes());
        h[16..24].copy_from_slice(&self.body_len.to_le_bytes());
        h[24..28].copy_from_slice(&self.body_crc32c.to_le_bytes());
        let crc = crc32c(&h[0..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decode and check a header found at file offset `offset`.
    pub fn decode(h: &[u8], offset: u64) -> Result<Self, FormatError> {
        if h.len() < RECORD_HEADER_BYTES as usize {
            return Err(FormatError::Truncated {
                field: "record header",
                offset,
                needed: RECORD_HEADER_BYTES,
                available: h.len() as u64,
            });
        }
        let invalid = |reason: &str| FormatError::Invalid {
            field: "record header",
            offset,
            reason: reason.into(),
        };
        if h[0..4] != RECORD_MAGIC {
            return Err(invalid("bad record magic"));
        }
        let le32 =
            |r: std::ops::Range<usize>| u32::from_le_bytes(h[r].try_into().unwrap_or_default());
        let le64 =
            |r: std::ops::Range<usize>| u64::from_le_bytes(h[r].try_into().unwrap_or_default());
        if le32(28..32) != crc32c(&h[0..28]) {
            return Err(invalid("header checksum mismatch"));
        }
        let flags = u16::from_le_bytes([h[6], h[7]]);
        if flags != 0 {
            return Err(invalid("unknown flags"));
        }
        Ok(RecordHeader {
            kind: u16::from_le_bytes([h[4], h[5]]),
            flags,
            record_id: le64(8..16),
            body_len: le64(16..24),
            body_crc32c: le32(24..28),
        })
    }
}

/// Absolute file offset of the payload of a record at `record_offset` whose
/// descriptor is `descriptor_len` bytes (when it has a payload).
pub fn payload_offset(record_offset: u64, descriptor_len: u64) -> Option<u64> {
    align_up(
        record_offset
            .checked_add(RECORD_HEADER_BYTES + BODY_PREFIX_BYTES)?
            .checked_add(descriptor_len)?,
    )
}

/// The body length of a record at `record_offset` with the given descriptor and payload lengths.
pub fn body_len(record_offset: u64, descriptor_len: u64, payload_len: u64) -> Option<u64> {
    if payload_len == 0 {
        return (BODY_PREFIX_BYTES).checked_add(descriptor_len);
    }
    let start = payload_offset(record_offset, descriptor_len)?;
    (start - record_offset - RECORD_HEADER_BYTES).checked_add(payload_len)
}

/// Offset of the record after one at `record_offset` with a body of `body_len` bytes.
pub fn next_record_offset(record_offset: u64, body_len: u64) -> Option<u64> {
    align_up(
        record_offset
            .checked_add(RECORD_HEADER_BYTES)?
            .checked_add(body_len)?,
    )
}

/// Everything of a body before its payload: prefix, descriptor, zero padding.
pub fn body_head(record_offset: u64, descriptor: &[u8], payload_len: u64) -> Vec<u8> {
    let d = descriptor.len() as u64;
    let head_len = if payload_len == 0 {
        BODY_PREFIX_BYTES + d
    } else {
        payload_offset(record_offset, d).unwrap_or(0) - record_offset - RECORD_HEADER_BYTES
    };
    let mut b = Vec::with_capacity(head_len as usize);
    b.extend_from_slice(&d.to_le_bytes());
    b.extend_from_slice(&payload_len.to_le_bytes());
    b.extend_from_slice(descriptor);
    b.resize(head_len as usize, 0);
    b
}

/// One whole record as it lies in the file at `record_offset`: header, body
/// and the zero padding up to the next record. For small records and tools;
/// the writer streams large payloads instead of copying them.
pub fn frame_record(
    record_offset: u64,
    record_id: u64,
    kind: RecordKind,
    descriptor: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut body = body_head(record_offset, descriptor, payload.len() as u64);
    body.extend_from_slice(payload);
    let header = RecordHeader {
        kind: kind as u16,
        flags: 0,
        record_id,
        body_len: body.len() as u64,
        body_crc32c: crc32c(&body),
    };
    let end = next_record_offset(record_offset, body.len() as u64).unwrap_or(u64::MAX);
    let mut out = Vec::with_capacity((end - record_offset) as usize);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&body);
    out.resize((end - record_offset) as usize, 0);
    out
}

/// The end of a finished file written at `footer_offset`: the FOOTER record
/// indexing `entries` (whose names are in `names`), its padding, and the trailer.
pub fn frame_footer(
    footer_offset: u64,
    entries: &[crate::codec::IndexEntry],
    names: &[u8],
) -> Vec<u8> {
    let record_count = entries.len() as u64;
    let descriptor = crate::codec::encode_footer(entries, names);
    let mut out = frame_record(
        footer_offset,
        record_count,
        RecordKind::Footer,
        &descriptor,
        &[],
    );
    out.extend_from_slice(
        &Trailer {
            footer_offset,
            record_count,
        }
        .encode(),
    );
    out
}

/// The end of a finished file written at `footer_offset` into space the
/// writer allocated ahead up to `allocated_end` (a multiple of 64): a FOOTER
/// whose zero payload fills that space, so that the trailer starts at
/// `allocated_end` and the file only grows (SPEC.md §2, §5.6). Where the
/// footer does not fit, it is the plain one of [`frame_footer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilledFooter {
    /// The footer's header, body prefix, descriptor and padding up to its
    /// payload: written at `footer_offset`.
    pub head: Vec<u8>,
    /// Zero payload bytes after `head`, not in `head`: the allocated space
    /// already reads as zeros.
    pub fill: u64,
    /// The trailer, written at `footer_offset + head.len() + fill`.
    pub trailer: [u8; TRAILER_BYTES as usize],
}

/// [`FilledFooter`] for a footer at `footer_offset` filling up to `allocated_end`.
pub fn frame_footer_filled(
    footer_offset: u64,
    entries: &[crate::codec::IndexEntry],
    names: &[u8],
    allocated_end: u64,
) -> FilledFooter {
    let record_count = entries.len() as u64;
    let descriptor = crate::codec::encode_footer(entries, names);
    let trailer = Trailer {
        footer_offset,
        record_count,
    }
    .encode();
    let payload_at = payload_offset(footer_offset, descriptor.len() as u64).unwrap_or(u64::MAX);
    if allocated_end % 64 != 0 || payload_at >= allocated_end {
        let mut head = frame_footer(footer_offset, entries, names);
        head.truncate(head.len() - TRAILER_BYTES as usize);
        return FilledFooter {
            head,
            fill: 0,
            trailer,
        };
    }
    let fill = allocated_end - payload_at;
    let body = body_head(footer_offset, &descriptor, fill);
    let mut crc = crc32c(&body);
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    let mut left = fill;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64);
        crc = crc32c_append(crc, &ZEROS[..n as usize]);
        left -= n;
    }
    let header = RecordHeader {
        kind: RecordKind::Footer as u16,
        flags: 0,
        record_id: record_count,
        body_len: body.len() as u64 + fill,
        body_crc32c: crc,
    };
    let mut head = header.encode().to_vec();
    head.extend_from_slice(&body);
    FilledFooter {
        head,
        fill,
        trailer,
    }
}

/// A decoded body: descriptor and payload slices, checked against the framing rules.
#[derive(Clone, Copy, Debug)]
pub struct Body<'a> {
    /// The descriptor bytes.
    pub descriptor: &'a [u8],
    /// Absolute offset of the descriptor.
    pub descriptor_offset: u64,
    /// The payload bytes (empty if none).
    pub payload: &'a [u8],
    /// Absolute offset of the payload.
    pub payload_offset: u64,
}

/// Split a body found for a record at `record_offset` into descriptor and payload.
pub fn split_body(body: &[u8], record_offset: u64) -> Result<Body<'_>, FormatError> {
    let body_at = record_offset + RECORD_HEADER_BYTES;
    let invalid = |offset, reason: String| FormatError::Invalid {
        field: "record body",
        offset,
        reason,
    };
    if body.len() < BODY_PREFIX_BYTES as usize {
        return Err(FormatError::Truncated {
            field: "record body prefix",
            offset: body_at,
            needed: BODY_PREFIX_BYTES,
            available: body.len() as u64,
        });
    }
    let d = u64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
    let p = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
    let expect =
        body_len(record_offset, d, p).ok_or_else(|| invalid(body_at, "lengths overflow".into()))?;
    if expect != body.len() as u64 {
        return Err(invalid(
            body_at,
            format!(
                "descriptor {d} + payload {p} bytes need a body of {expect} bytes; it has {}",
                body.len()
            ),
        ));
    }
    let d_end = (BODY_PREFIX_BYTES + d) as usize;
    let p_start = body.len() - p as usize;
    if body[d_end..p_start].iter().any(|&x| x != 0) {
        return Err(invalid(
            body_at + d_end as u64,
            "padding before the payload is not zero".into(),
        ));
    }
    Ok(Body {
        descriptor: &body[BODY_PREFIX_BYTES as usize..d_end],
        descriptor_offset: body_at + BODY_PREFIX_BYTES,
        payload: &body[p_start..],
        payload_offset: body_at + p_start as u64,
    })
}

/// The 32-byte trailer of a finished file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Offset of the FOOTER record.
    pub footer_offset: u64,
    /// Records before the footer (the footer's own record id).
    pub record_count: u64,
}

impl Trailer {
    /// Encode with checksum.
    pub fn encode(&self) -> [u8; TRAILER_BYTES as usize] {
        let mut t = [0u8; TRAILER_BYTES as usize];
        t[0..8].copy_from_slice(&TRAILER_MAGIC);
        t[8..16].copy_from_slice(&self.footer_offset.to_le_bytes());
        t[16..24].copy_from_slice(&self.record_count.to_le_bytes());
        let crc = crc32c(&t[0..28]);
        t[28..32].copy_from_slice(&crc.to_le_bytes());
        t
    }

    /// Decode the last 32 bytes of a file; `None` if they are not a valid trailer.
    pub fn decode(t: &[u8]) -> Option<Self> {
        if t.len() != TRAILER_BYTES as usize || t[0..8] != TRAILER_MAGIC || t[24..28] != [0; 4] {
            return None;
        }
        let crc = u32::from_le_bytes(t[28..32].try_into().ok()?);
        if crc != crc32c(&t[0..28]) {
            return None;
        }
        Some(Trailer {
            footer_offset: u64::from_le_bytes(t[8..16].try_into().ok()?),
            record_count: u64::from_le_bytes(t[16..24].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crc32c_combine` agrees with a crc of the concatenation, for lengths
    /// from 0 to past 2^32 bits' worth of shifting steps, and with the
    /// `crc32c` crate's combine.
    #[test]
    fn combine_is_the_crc_of_the_concatenation() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for split in [0, 1, 3, 64, 4095, 4096, 33_333, 69_999, 70_000] {
            let (a, b) = data.split_at(split);
            let want = crc32c(&data);
            assert_eq!(
                crc32c_combine(crc32c(a), crc32c(b), b.len()),
                want,
                "{split}"
            );
        }
        for (a, b, n) in [
            (0u32, 0u32, 0usize),
            (0xdead_beef, 0x1234_5678, 1 << 40),
            (1, 2, usize::MAX),
        ] {
            assert_eq!(
                crc32c_combine(a, b, n),
                crc32c::crc32c_combine(a, b, n),
                "{n}"
            );
        }
    }

    #[test]
    fn framing_round_trip() {
        let desc = vec![7u8; 10];
        let off = 128;
        let head = body_head(off, &desc, 100);
        assert_eq!((off + RECORD_HEADER_BYTES + head.len() as u64) % ALIGN, 0);
        let mut body = head.clone();
        body.extend(std::iter::repeat_n(9u8, 100));
        assert_eq!(body.len() as u64, body_len(off, 10, 100).unwrap());
        let b = split_body(&body, off).unwrap();
        assert_eq!(b.descriptor, &desc[..]);
        assert_eq!(b.payload.len(), 100);
        assert_eq!(b.payload_offset % ALIGN, 0);
        let h = RecordHeader {
            kind: 3,
            flags: 0,
            record_id: 5,
            body_len: body.len() as u64,
            body_crc32c: 1,
        };
        assert_eq!(RecordHeader::decode(&h.encode(), 0).unwrap(), h);
        let t = Trailer {
            footer_offset: 640,
            record_count: 9,
        };
        assert_eq!(Trailer::decode(&t.encode()), Some(t));
        decode_file_header(&encode_file_header()).unwrap();
    }

    /// A footer filling the space allocated ahead ends exactly there, and
    /// its header, body and trailer are what a plain footer's framing
    /// rules say; one that does not fit is the plain footer.
    #[test]
    fn filled_footer_ends_where_the_allocation_does() {
        let entries = vec![crate::codec::IndexEntry {
            offset: 64,
            body_len: 100,
            kind: RecordKind::Tensor as u16,
            step: Some(3),
            layer: None,
            name_offset: 0,
            name_len: 1,
        }];
        let at = 256;
        let f = frame_footer_filled(at, &entries, b"x", 128 << 10);
        let end = at + f.head.len() as u64 + f.fill;
        assert_eq!(end, 128 << 10);
        let h = RecordHeader::decode(&f.head, at).unwrap();
        assert_eq!(next_record_offset(at, h.body_len), Some(end));
        let mut body = f.head[RECORD_HEADER_BYTES as usize..].to_vec();
        body.resize(body.len() + f.fill as usize, 0);
        assert_eq!(crc32c(&body), h.body_crc32c);
        let b = split_body(&body, at).unwrap();
        assert!(b.payload.len() as u64 == f.fill && b.payload.iter().all(|&x| x == 0));
        assert_eq!(
            crate::codec::decode_footer(b.descriptor, b.descriptor_offset)
                .unwrap()
                .0,
            entries
        );
        assert_eq!(Trailer::decode(&f.trailer).unwrap().footer_offset, at);
        // no room, or no allocation: the plain footer
        for allocated in [0, at, at + 64] {
            let f = frame_footer_filled(at, &entries, b"x", allocated);
            let mut plain = frame_footer(at, &entries, b"x");
            assert_eq!(f.fill, 0);
            assert_eq!(
                plain.split_off(plain.len() - TRAILER_BYTES as usize),
                f.trailer
            );
            assert_eq!(plain, f.head);
        }
    }
}
