//! The bytes of a trace: a read-only memory map, or an owned buffer.
//!
//! This is the only file of the reader with `unsafe` code.

use std::fs::File;
use std::path::Path;

/// Read-only bytes of a trace file.
#[derive(Debug)]
pub enum Source {
    /// A private read-only mapping of the file.
    Mapped(memmap2::Mmap),
    /// Bytes held in memory (empty files, in-memory traces, tests).
    Owned(Vec<u8>),
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

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Source::Mapped(m) => m,
            Source::Owned(v) => v,
        }
    }
}
