//! The reader's errors.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use thiserror::Error;
use trace_format::{DType, FormatError, LayoutError};

/// Why a trace, record or tensor could not be read. Every variant names the
/// file, and the record, tensor and byte offset where they are known.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReaderError {
    /// The file could not be opened or mapped.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The file is not a trace this reader can read (bad magic, version, header).
    #[error("{}: not a readable trace: {error}", path.display())]
    NotATrace {
        /// The file.
        path: PathBuf,
        /// What is wrong with the header.
        error: Box<FormatError>,
    },
    /// A record's bytes are malformed.
    #[error("{}: record {record}{} (at byte {offset}): {error}", path.display(), if name.is_empty() { String::new() } else { format!(" `{name}`") })]
    Record {
        /// The file.
        path: PathBuf,
        /// The record id.
        record: u64,
        /// The record's name (tensor or storage), empty if unknown.
        name: String,
        /// Offset of the record header.
        offset: u64,
        /// What is wrong.
        error: Box<FormatError>,
    },
    /// A tensor's description is inconsistent with the file (bad storage
    /// reference, unknown dtype, view outside its storage).
    #[error("{}: tensor `{tensor}` (record {record}, at byte {offset}): {reason}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The tensor's record id.
        record: u64,
        /// Offset of the tensor's record header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A tensor's view reaches outside its storage, or cannot be mapped.
    #[error("{}: tensor `{tensor}` (record {record}): {error}", path.display())]
    Layout {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The tensor's record id.
        record: u64,
        /// The layout fault, with its byte range.
        error: Box<LayoutError>,
    },
    /// No tensor has this name (or the occurrence asked for does not exist).
    #[error("{}: no tensor named `{name}`", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// No record with this id, or it is not a tensor.
    #[error("{}: record {record} is not a tensor of this trace", path.display())]
    NoSuchTensor {
        /// The file.
        path: PathBuf,
        /// The id asked for.
        record: u64,
    },
    /// The tensor has a dtype other than the one asked for.
    #[error("tensor `{tensor}` is {actual}, not {requested}")]
    DTypeMismatch {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        actual: DType,
        /// The dtype asked for.
        requested: DType,
    },
    /// The operation needs something this tensor does not have or this
    /// reader cannot do yet (e.g. the values of a stats-only tensor).
    #[error("tensor `{tensor}`: {what}")]
    Unsupported {
        /// The tensor.
        tensor: String,
        /// What cannot be done.
        what: String,
    },
    /// A GGUF file is malformed, or uses a version or byte order this
    /// reader does not read (see [`crate::gguf`]).
    #[error(
        "{}: GGUF at byte {offset}{}: {reason}",
        path.display(),
        tensor.as_ref().map(|t| format!(" (tensor `{t}`)")).unwrap_or_default()
    )]
    Gguf {
        /// The file.
        path: PathBuf,
        /// Absolute offset of the offending field.
        offset: u64,
        /// The tensor whose info or data is at fault, when known.
        tensor: Option<String>,
        /// What is wrong.
        reason: String,
    },
}
