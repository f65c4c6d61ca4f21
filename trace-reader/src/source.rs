//! The bytes of a trace: a read-only memory map, an owned buffer, or (for
//! bindings whose tensors may be written in place) a private copy-on-write map.
//!
//! With `halves.rs` (the F16C conversion), one of the two files of the
//! reader with `unsafe` code.

use std::fs::File;
use std::path::Path;

/// The bytes of a trace file.
#[derive(Debug)]
pub enum Source {
    /// A private read-only mapping of the file.
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
    /// Map `path` read-only.
    ///
    /// The mapping reflects the file as it is on disk. If another process
    /// truncates the file while it is mapped, touching the lost pages raises
    /// `SIGBUS`; tracedump never writes to a file it reads, and the writer
    /// only appends, which is safe (appended bytes are simply not seen).
    pub fn map(path: &Path) -> std::io::Result<Source> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(Source::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and private, so no Rust reference
        // to it is ever written through. The remaining hazard, another
        // process shrinking the file underneath, is documented above and in
        // SPEC.md §9; every offset we read is checked against the length
        // observed at mapping time.
        let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
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
        // other mapping or process can observe or disturb them. The hazard
        // of another process shrinking the file underneath is the same as
        // for `map` (documented there); callers check offsets against the
        // length observed at mapping time.
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
