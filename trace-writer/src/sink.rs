//! The output end of the writer: appends framed records and keeps the
//! index, into a file or into memory.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use trace_format::codec::IndexEntry;
use trace_format::record::{
    self, body_head, crc32c, crc32c_append, crc32c_combine, encode_file_header,
    frame_footer_filled, next_record_offset, RecordHeader, RecordKind,
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

/// Zero bytes to write from: a record's padding (under 64 bytes), a
/// window's zero fill (64 KiB a write).
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

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
    unreachable!("streaming writes and mapped windows are only used on unix")
}

/// Records framed to at most this many bytes go through the mapped window
/// (sync mode); larger ones are written with write().
const MAPPED_RECORD_MAX: u64 = 64 << 10;

// a mapped record is never one whose payload streams (STREAM_BYTES)
const _: () = assert!(MAPPED_RECORD_MAX < STREAM_BYTES as u64);

/// Most bytes of the file mapped (and allocated) at a time ahead of the records.
const WINDOW_BYTES: u64 = 4 << 20;

/// Fewest: a window starts at most `WINDOW_ALIGN` before the record it is
/// for, and holds it whole (at most `MAPPED_RECORD_MAX`).
const WINDOW_MIN_BYTES: u64 = 128 << 10;

/// The window mapped for a record at `at`: as large as the file so far
/// (rounded up to a power of two) within the bounds above, so that the
/// space a small file leaves allocated ahead when it finishes (the file
/// never shrinks: [`Sink::finish`]) stays in proportion to it.
fn window_bytes(at: u64) -> u64 {
    at.checked_next_power_of_two()
        .unwrap_or(WINDOW_BYTES)
        .clamp(WINDOW_MIN_BYTES, WINDOW_BYTES)
}

const _: () = assert!(WINDOW_MIN_BYTES >= WINDOW_ALIGN + MAPPED_RECORD_MAX);

/// Window starts are multiples of this (a multiple of every page size).
const WINDOW_ALIGN: u64 = 64 << 10;

/// A stretch of the file, allocated and mapped shared, that small records
/// are copied into: a record copied there is in the page cache, as after a
/// write(), and survives the process (SIGKILL included) without a system
/// call. The file is longer than its records meanwhile; the bytes after the
/// last record are zero, which a reader takes for the end of the complete
/// records (SPEC.md §2). The file never shrinks: when the sink finishes,
/// the footer's zero payload fills them, and a sink dropped unfinished
/// leaves them zero; either way their disk blocks are given back.
#[derive(Debug)]
struct Window {
    map: memmap2::MmapMut,
    /// File offset of `map[0]`.
    start: u64,
    /// `map[..populated]` was faulted in writable ([`Window::populate`]).
    populated: usize,
}

/// Bytes of a window faulted in at a time, ahead of the records.
const POPULATE_BYTES: usize = 256 << 10;

impl Window {
    /// Fault `map[..end]` in writable, [`POPULATE_BYTES`] at a time ahead
    /// of the records, before anything is stored there. One call for 64
    /// pages costs less than 64 separate faults amid the caller's work
    /// (Python `Writer` create, 20,000 `add` of 256 B torch tensors, close:
    /// 1.99, 1.95 and 2.08 µs a tensor with it against 2.09, 2.15 and 2.18
    /// without, alternating runs), and a page that cannot be backed is an
    /// error here, not a SIGBUS at the store. Kernels before 5.14 lack it
    /// (`EINVAL`): their pages fault in at the stores.
    #[cfg(target_os = "linux")]
    fn populate(&mut self, end: usize) -> io::Result<()> {
        if end <= self.populated {
            return Ok(());
        }
        let to = end.max(self.populated + POPULATE_BYTES).min(self.map.len());
        match self.map.advise_range(
            memmap2::Advice::PopulateWrite,
            self.populated,
            to - self.populated,
        ) {
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
            _ => {}
        }
        self.populated = to;
        Ok(())
    }

    /// Windows are only mapped on Linux.
    #[cfg(not(target_os = "linux"))]
    fn populate(&mut self, _end: usize) -> io::Result<()> {
        Ok(())
    }
}

/// Write zeros over `[from, to)` of `file` (nothing when `from >= to`).
#[cfg(target_os = "linux")]
fn zero_fill(file: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Whether `file` lies on a file system where a store into a mapped page
/// that a write has backed can never fail for want of space: ext4, XFS and
/// tmpfs. A store that cannot be backed is a SIGBUS, not an error,
/// so copy-on-write file systems (btrfs, ZFS: an allocated block may still
/// need a new one when written), network and FUSE file systems, overlayfs
/// and any other get records written instead.
#[cfg(target_os = "linux")]
fn backs_mapped_stores(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    if cfg!(miri) {
        // Miri runs neither fstatfs nor file mappings: records are written
        return false;
    }
    const EXT4: u64 = 0xEF53;
    const XFS: u64 = 0x5846_5342;
    const TMPFS: u64 = 0x0102_1994;
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes a `statfs` into the buffer it is given, which
    // is one, on the open descriptor of `file`; it is read only on success.
    let ok = unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) } == 0;
    if !ok {
        return false;
    }
    // SAFETY: fstatfs succeeded, so it filled the whole struct.
    let kind = unsafe { fs.assume_init() }.f_type as u64 & 0xFFFF_FFFF;
    [EXT4, XFS, TMPFS].contains(&kind)
}

#[cfg(not(target_os = "linux"))]
fn backs_mapped_stores(_file: &File) -> bool {
    false
}

/// Where a sink's bytes go.
#[derive(Debug)]
enum Output {
    /// A file, through a write buffer.
    File(BufWriter<File>),
    /// Memory: the trace's bytes, handed out when it is finished
    /// ([`Sink::take_bytes`]). Nothing is allocated ahead or mapped, so the
    /// bytes are exactly those of a file written with `allocate_ahead` off.
    Memory(io::Cursor<Vec<u8>>),
}

impl Output {
    /// The file, for the system calls only a file has.
    fn file(&self) -> Option<&File> {
        match self {
            Output::File(f) => Some(f.get_ref()),
            Output::Memory(_) => None,
        }
    }

    /// Write `bytes` at `offset`, before the cursor, leaving it where it is
    /// (a header written last, in place).
    fn write_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        match self {
            Output::File(f) => {
                f.flush()?;
                write_at(f.get_ref(), bytes, offset)
            }
            Output::Memory(m) => {
                let at = usize::try_from(offset).map_err(io::Error::other)?;
                let dst = m
                    .get_mut()
                    .get_mut(at..at + bytes.len())
                    .ok_or_else(|| io::Error::other("write past the end of the trace"))?;
                dst.copy_from_slice(bytes);
                Ok(())
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::File(f) => f.write(buf),
            Output::Memory(m) => m.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Output::File(f) => f.write_all(buf),
            Output::Memory(m) => m.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::File(f) => f.flush(),
            Output::Memory(_) => Ok(()),
        }
    }
}

impl Seek for Output {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            Output::File(f) => f.seek(pos),
            Output::Memory(m) => m.seek(pos),
        }
    }
}

/// Appends records to the file or memory; owns the footer index.
#[derive(Debug)]
pub(crate) struct Sink {
    file: Output,
    offset: u64,
    /// Small records are copied into a mapped window of the file (sync
    /// mode on Linux; [`Sink::map_small_records`]).
    map_small: bool,
    window: Option<Window>,
    /// The file cursor is behind `offset` (records went into the window).
    cursor_behind: bool,
    /// The file may extend beyond `offset` (a window was allocated), so a
    /// record's end no longer shows a partial write: written records get
    /// their header last.
    ahead: bool,
    /// The end of the space allocated ahead (0: none), a multiple of 64.
    allocated_end: u64,
    index: Vec<IndexEntry>,
    names: Vec<u8>,
    /// crc32c of every record's payload, by record id (callers that
    /// recognise recorded bytes later ask for it: [`Sink::payload_crc32c`]).
    payload_crcs: Vec<u32>,
    /// Large payloads are checksummed on a second thread while written
    /// ([`crate::WriterOptions::checksum_thread`]).
    pub(crate) checksum_thread: bool,
}

impl Sink {
    pub fn create(path: &Path) -> io::Result<Sink> {
        // read as well as write: a shared mapping needs both
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Sink::new(Output::File(BufWriter::with_capacity(STREAM_BYTES, file)))
    }

    /// A sink that keeps the trace in memory.
    pub fn in_memory() -> Sink {
        Sink::new(Output::Memory(io::Cursor::new(Vec::new())))
            .unwrap_or_else(|_| unreachable!("writing into a Vec cannot fail"))
    }

    fn new(mut file: Output) -> io::Result<Sink> {
        let header = encode_file_header();
        file.write_all(&header)?;
        Ok(Sink {
            file,
            offset: header.len() as u64,
            map_small: false,
            window: None,
            cursor_behind: false,
            ahead: false,
            allocated_end: 0,
            index: Vec::new(),
            names: Vec::new(),
            payload_crcs: Vec::new(),
            checksum_thread: true,
        })
    }

    /// Copy small records into a mapped window of the file instead of
    /// writing each (the sync writer, which makes every record reach the
    /// OS before `add` returns: one system call fewer per record). Only on
    /// Linux and on file systems whose `fallocate` reserves the blocks a
    /// later store into the mapping needs ([`backs_mapped_stores`]);
    /// elsewhere, and wherever the file cannot be allocated ahead (a full
    /// disk), records are written.
    pub fn map_small_records(&mut self) {
        self.map_small = self.file.file().is_some_and(backs_mapped_stores);
    }

    /// The mapped bytes for `[at, at + len)`, mapping a new window when the
    /// current one does not hold them; `None` when that cannot be done (the
    /// caller writes instead, and mapping stays off from then on).
    fn window_for(&mut self, at: u64, len: u64) -> Option<&mut [u8]> {
        let inside = |w: &Window| at >= w.start && at + len <= w.start + w.map.len() as u64;
        if !self.window.as_ref().is_some_and(inside) {
            self.window = None;
            match self.map_window(at) {
                Ok(w) => {
                    self.allocated_end = self.allocated_end.max(w.start + w.map.len() as u64);
                    self.window = Some(w);
                    self.ahead = true;
                }
                Err(_) => {
                    // written from now on; the zero bytes allocated beyond
                    // `offset` are overwritten or cut off by `finish`
                    self.map_small = false;
                    return None;
                }
            }
        }
        let w = self.window.as_mut()?;
        let from = (at - w.start) as usize;
        if w.populate(from + len as usize).is_err() {
            // the file system cannot back these pages: written from now on
            self.window = None;
            self.map_small = false;
            return None;
        }
        let w = self.window.as_mut()?;
        w.map.get_mut(from..from + len as usize)
    }

    #[cfg(target_os = "linux")]
    fn map_window(&mut self, at: u64) -> io::Result<Window> {
        self.file.flush()?;
        let start = at - at % WINDOW_ALIGN;
        let bytes = window_bytes(at);
        let file = self
            .file
            .file()
            .ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
        // back every page first, by writing zeros where the file has
        // nothing yet (from `at`, or from the end of the last window):
        // a store to a mapped page the file system cannot back would be a
        // SIGBUS, not an error, and a write reserves the blocks (or fails
        // here, ENOSPC). Zeros written put the pages in the page cache,
        // dirty: mapping and storing into them then costs a third of what
        // it costs over `posix_fallocate`d blocks, which the kernel reads
        // in (as zeros) and converts at the first store (a C loop on ext4
        // copying 12 MiB of 600-byte records into 4 MiB windows, faulted
        // in 256 KiB at a time: 0.25 µs a record against 0.80; a `pwrite`
        // per record: 1.67)
        zero_fill(file, at.max(self.allocated_end), start + bytes)?;
        // SAFETY: `file` is this sink's own file, created (truncated) by it
        // and written only through it; every byte of the range was just
        // written (records before `at`, zeros after), so every page of the
        // mapping is backed. Another process truncating
        // the file while it is written would make a store fault (SIGBUS):
        // the same contract as any writer that maps its output.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(bytes as usize)
                .map_mut(file)?
        };
        Ok(Window {
            map,
            start,
            populated: 0,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn map_window(&mut self, _at: u64) -> io::Result<Window> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    /// Copy a small record (`total` bytes framed, at most
    /// [`MAPPED_RECORD_MAX`]) into the mapped window; false when no window
    /// can be had (the caller writes it).
    fn append_mapped(
        &mut self,
        at: u64,
        total: u64,
        header: &[u8],
        head: &[u8],
        payload: &[&[u8]],
    ) -> bool {
        let Some(dst) = self.window_for(at, total) else {
            return false;
        };
        // the body first, the header last: a process killed in between
        // leaves zero header bytes, which end the complete records (as for
        // a large record, SPEC.md §2), never a valid header over a partial body
        let (head_bytes, body) = dst.split_at_mut(header.len());
        let mut pos = 0;
        for piece in std::iter::once(head).chain(payload.iter().copied()) {
            body[pos..pos + piece.len()].copy_from_slice(piece);
            pos += piece.len();
        }
        body[pos..].fill(0);
        // the stores above come before the header's, for this thread (a
        // kill) and for other cores reading the file while it grows
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        head_bytes.copy_from_slice(header);
        self.cursor_behind = true;
        true
    }

    /// Put the file cursor at `offset` before a write, if records went
    /// into the window since the last one.
    fn catch_up_cursor(&mut self) -> io::Result<()> {
        if self.cursor_behind {
            self.file.seek(SeekFrom::Start(self.offset))?;
            self.cursor_behind = false;
        }
        Ok(())
    }

    /// Give the disk blocks of `[from, to)` back, keeping the file's length:
    /// the bytes read as zeros, as before (a hole). Best effort: where the
    /// file system cannot, the blocks stay allocated.
    #[cfg(target_os = "linux")]
    fn release(&mut self, from: u64, to: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(len)) = (
            libc::off_t::try_from(from),
            libc::off_t::try_from(to - from),
        ) else {
            return;
        };
        if len == 0 || self.file.flush().is_err() {
            return;
        }
        if let Some(file) = self.file.file() {
            // SAFETY: a plain system call on the open descriptor of this
            // sink's own file; the range lies inside the file, which keeps
            // its length (KEEP_SIZE): a reader's mapping of it stays valid.
            unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    len,
                );
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn release(&mut self, _from: u64, _to: u64) {}

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
        // below the streaming size, the payload's own crc is kept
        // (payload_crcs); the record's is the head's combined with it, or,
        // for a small payload, the head's continued over it (cheaper than a
        // combine)
        let crcs = || {
            let payload_crc = r.payload_crc32c.unwrap_or_else(|| crc32c_pieces(r.payload));
            let crc = if r.payload_crc32c.is_some() || payload_len >= COMBINE_MIN_BYTES {
                crc32c_combine(head_crc, payload_crc, payload_len)
            } else {
                r.payload
                    .iter()
                    .fold(head_crc, |crc, p| crc32c_append(crc, p))
            };
            (payload_crc, crc)
        };
        let mapped_total = next - record_offset;
        if self.map_small && mapped_total <= MAPPED_RECORD_MAX {
            let (payload_crc, crc) = crcs();
            if self.append_mapped(record_offset, mapped_total, &header(crc), &head, r.payload) {
                self.payload_crcs.push(payload_crc);
                return Ok(self.indexed(r, id, record_offset, next, body_len));
            }
        }
        self.catch_up_cursor()?;
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
            } else if r.checksum_inline || !self.checksum_thread {
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
            self.file.write_at(&header(crc), record_offset)?;
            self.payload_crcs.push(payload_crc);
        } else {
            let (payload_crc, crc) = crcs();
            self.payload_crcs.push(payload_crc);
            // with the file allocated beyond this record, a write cut short
            // would leave a valid header over zeros: the header goes last
            let header_last = self.ahead;
            if header_last {
                self.file
                    .write_all(&[0u8; record::RECORD_HEADER_BYTES as usize])?;
            } else {
                self.file.write_all(&header(crc))?;
            }
            self.file.write_all(&head)?;
            for piece in r.payload {
                self.file.write_all(piece)?;
            }
            self.file.write_all(&ZEROS[..pad])?;
            if header_last {
                self.file.write_at(&header(crc), record_offset)?;
            }
        }
        Ok(self.indexed(r, id, record_offset, next, body_len))
    }

    /// Enter an appended record in the index; returns its id.
    fn indexed(
        &mut self,
        r: &RecordParts<'_>,
        id: u64,
        record_offset: u64,
        next: u64,
        body_len: u64,
    ) -> u64 {
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
        id
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    pub fn sync_all(&mut self) -> io::Result<()> {
        self.file.flush()?;
        match self.file.file() {
            Some(f) => f.sync_all(),
            None => Ok(()),
        }
    }

    /// The bytes of an in-memory sink, once finished (`None`: a file sink,
    /// or asked before).
    pub fn take_bytes(&mut self) -> Option<Vec<u8>> {
        match &mut self.file {
            Output::Memory(m) => Some(std::mem::take(m.get_mut())),
            Output::File(_) => None,
        }
    }

    /// Write the footer and trailer; returns (records, file bytes).
    ///
    /// The file never shrinks: a reader may have mapped the bytes allocated
    /// ahead, and a page cut from under its mapping is a SIGBUS. The footer
    /// fills that space with a zero payload instead (SPEC.md §5.6), whose
    /// blocks go back to the file system, and the trailer follows it.
    pub fn finish(&mut self) -> io::Result<(u64, u64)> {
        self.window = None;
        let end = if self.ahead { self.allocated_end } else { 0 };
        let footer_offset = self.offset;
        let footer = frame_footer_filled(footer_offset, &self.index, &self.names, end);
        self.catch_up_cursor()?;
        self.file.write_all(&footer.head)?;
        let fill_at = footer_offset + footer.head.len() as u64;
        if footer.fill > 0 {
            self.file.seek(SeekFrom::Start(fill_at + footer.fill))?;
        }
        self.file.write_all(&footer.trailer)?;
        self.file.flush()?;
        self.release(fill_at, fill_at + footer.fill);
        self.ahead = false;
        self.offset = fill_at + footer.fill + footer.trailer.len() as u64;
        Ok((self.next_id(), self.offset))
    }
}

impl Drop for Sink {
    /// An unfinished sink leaves the zero bytes allocated ahead where they
    /// are (a reader may have mapped them; SPEC.md §2 lets an unfinished
    /// file end in zeros) and gives their disk blocks back.
    fn drop(&mut self) {
        self.window = None;
        if self.ahead && self.allocated_end > self.offset {
            self.release(self.offset, self.allocated_end);
        }
    }
}
