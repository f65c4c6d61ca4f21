//! The bytes of a trace: a private read-only memory map, an owned buffer,
//! or (for bindings whose tensors may be written in place) a private
//! copy-on-write map.
//!
//! One of the three files of the reader with `unsafe` code (with
//! `halves.rs`, the F16C conversion, and `values.rs`, the length of a
//! vector its rows were converted into): the two maps below.
//!
//! # What a map of a file being written shows
//!
//! A private map is private only for the pages this process writes: every
//! other page is the file's page in the page cache, and shows what other
//! processes write to the file after it was mapped (Linux; POSIX leaves it
//! unspecified). tracedump's writer does write into files that readers
//! may have mapped (SPEC.md §2, `trace-writer/src/sink.rs`): it appends,
//! it fills space it allocated ahead (zeros) with records in place, and it
//! writes a large record's header after its body. It never changes the
//! bytes of a record once the record is complete, and never shrinks a file.
//! The reader indexes only complete records when it opens a file (from the
//! footer, or a scan that stops at the first incomplete one), so every byte
//! it reads through the index stays as it was decoded. Bytes past the last
//! complete record may turn from zeros into a record while mapped: the scan
//! reads them once, to tell zeros (space allocated ahead) from a torn tail,
//! and a later open sees the records. A program other than tracedump that rewrites a
//! mapped file changes bytes under the reader's `&[u8]`, and one that
//! truncates it makes touching the lost pages raise `SIGBUS`: no memory
//! map can guard against either (memmap2's `Mmap` documents the same), and
//! both are the caller's to rule out.

// the memory maps: see the `unsafe` blocks and their SAFETY comments
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

/// The bytes of a trace file.
#[derive(Debug)]
pub enum Source {
    /// A private, read-only mapping of the file (`MAP_PRIVATE`, `PROT_READ`).
    Mapped(memmap2::Mmap),
    /// Bytes held in memory (empty files, in-memory traces, tests).
    Owned(Vec<u8>),
    /// A private, writable, copy-on-write mapping of the file
    /// ([`Source::map_copy_on_write`]): for handing to foreign code that may
    /// write through it (torch tensors have no read-only mode). Writes land
    /// in private pages of this process and never reach the file.
    CopyOnWrite(memmap2::MmapMut),
}

impl Source {
    /// Map `path` private and read-only.
    ///
    /// Bytes the writer adds to the file later may or may not be seen;
    /// bytes of complete records never change (see the module
    /// documentation). If another program truncates the file while it is
    /// mapped, touching the lost pages raises `SIGBUS`.
    pub fn map(path: &Path) -> std::io::Result<Source> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(Source::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only, so no Rust code can write through
        // it, and it lives as long as `Source` (the `File` may close: the
        // map keeps its own reference). What memmap2 asks of the caller is
        // that the file not change underneath. tracedump's writer changes
        // only bytes past the last complete record (it fills zeros it
        // allocated ahead, and never rewrites a complete record or shrinks
        // a file): the reader indexes none of them, and reads them only
        // once, when a scan tells zeros from a torn tail, an answer a fill
        // under way can at worst make stale. Every offset read is checked
        // against the length observed at mapping time. Another program rewriting or truncating the file is
        // outside what the reader can rule out (module documentation,
        // SPEC.md §9).
        let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file)? };
        Ok(Source::Mapped(map))
    }

    /// Map `path` private and copy-on-write: the pages can be written, and
    /// every page written becomes a private copy of this process. Nothing
    /// written ever reaches the file, other mappings of it (a read-only
    /// [`Source::map`] sees the file, not these writes), or other processes.
    ///
    /// For bindings that hand the bytes to code which has no read-only
    /// mode and may write in place (a torch tensor made over the trace):
    /// writing to a read-only map would crash the process, writing here is
    /// harmless. Such code gets the address from [`Source::as_ptr`];
    /// [`Source::bytes`] must then not be held while it may write. An empty
    /// file gives an empty [`Source::Owned`].
    pub fn map_copy_on_write(path: &Path) -> std::io::Result<Source> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(Source::Owned(Vec::new()));
        }
        // SAFETY: the mapping is private (MAP_PRIVATE): writes through it
        // go to private copies of the pages and never to the file, so no
        // other mapping or process sees them. Pages not written here are
        // the file's, with the same hazard as `map` (documented there and
        // in the module documentation): the writer changes only bytes not
        // indexed, another program rewriting or truncating the file is the
        // caller's to rule out; offsets are checked against the length
        // observed at mapping time.
        let map = unsafe { memmap2::MmapOptions::new().map_copy(&file)? };
        Ok(Source::CopyOnWrite(map))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Source::Mapped(m) => m,
            Source::Owned(v) => v,
            Source::CopyOnWrite(m) => m,
        }
    }

    /// Address of the first byte (never null; dangling when empty), without
    /// forming a reference to the bytes.
    pub fn as_ptr(&self) -> *const u8 {
        match self {
            Source::Mapped(m) => m.as_ptr(),
            Source::Owned(v) => v.as_ptr(),
            Source::CopyOnWrite(m) => m.as_ptr(),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Source::Mapped(m) => m.len(),
            Source::Owned(v) => v.len(),
            Source::CopyOnWrite(m) => m.len(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_on_write_writes_never_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        std::fs::write(&path, [1u8, 2, 3, 4]).unwrap();
        let mut cow = Source::map_copy_on_write(&path).unwrap();
        let ro = Source::map(&path).unwrap();
        match &mut cow {
            Source::CopyOnWrite(m) => m[0] = 9,
            other => panic!("expected a copy-on-write map, got {other:?}"),
        }
        assert_eq!(cow.bytes(), [9, 2, 3, 4]);
        assert_eq!(ro.bytes(), [1, 2, 3, 4]);
        drop(cow);
        assert_eq!(std::fs::read(&path).unwrap(), [1, 2, 3, 4]);
        assert_eq!(Source::map(&path).unwrap().len(), 4);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, []).unwrap();
        assert!(Source::map_copy_on_write(&empty).unwrap().is_empty());
    }
}
