//! The writer's errors.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use thiserror::Error;

/// Why a record could not be written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WriterError {
    /// The operating system refused a write (disk full, permissions, …).
    #[error("{}: {error}", path.display())]
    Io {
        /// The trace file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// An earlier write, flush or fsync failed; the file holds every record
    /// flushed before it (records added since the last flush may be lost
    /// with the write buffer) and nothing more is appended.
    #[error("{}: an earlier write failed ({message}); the file keeps every record flushed before it", path.display())]
    Failed {
        /// The trace file.
        path: PathBuf,
        /// The first failure.
        message: String,
    },
    /// The tensor's layout is invalid or reaches outside its bytes.
    #[error("tensor `{name}`: {error}")]
    Layout {
        /// The tensor.
        name: String,
        /// What is wrong.
        error: trace_format::LayoutError,
    },
    /// The byte count does not match dtype × shape.
    #[error("tensor `{name}`: {actual} bytes given, dtype and shape need {expected}")]
    DataLength {
        /// The tensor.
        name: String,
        /// Bytes needed.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
    /// A view names a storage this writer did not record.
    #[error("tensor `{name}`: storage record {storage} was not recorded by this writer")]
    UnknownStorage {
        /// The tensor.
        name: String,
        /// The storage id given.
        storage: u64,
    },
    /// A storage update (SPEC.md §5.7) does not fit its base.
    #[error("storage update `{name}` of record {base}: {reason}")]
    StorageUpdate {
        /// The storage's name.
        name: String,
        /// The base record given.
        base: u64,
        /// What is wrong.
        reason: String,
    },
    /// A storage could not be queued (background queue full in drop mode).
    #[error("storage `{name}` was dropped: the background queue is full")]
    Dropped {
        /// The storage.
        name: String,
    },
    /// A metadata value nested deeper than readers accept (SPEC.md §4).
    #[error("`{name}`: metadata `{path}` is nested deeper than {max} levels (a reader refuses it; a structure that contains itself never ends)", max = trace_format::codec::MAX_VALUE_DEPTH)]
    MetadataTooDeep {
        /// The tensor or storage (empty: the run metadata).
        name: String,
        /// The key path of the first value too deep.
        path: String,
    },
    /// The request needs something this writer cannot do.
    #[error("tensor `{name}`: {what} is not supported")]
    Unsupported {
        /// The tensor.
        name: String,
        /// What.
        what: String,
    },
}
