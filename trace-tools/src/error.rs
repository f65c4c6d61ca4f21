//! The one error type of the tools library.

use trace_reader::ReaderError;
use trace_writer::WriterError;

/// What went wrong in a tool. Messages name the file and, where there is
/// one, the tensor; causes are part of the message (one line, as printed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolsError {
    /// Reading a trace failed (names the file, tensor and offset).
    #[error(transparent)]
    Reader(#[from] ReaderError),
    /// Writing a trace failed.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// A file could not be created, written, read or moved.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The operating system's error, where the context says what was done.
    #[error("{0}")]
    Os(std::io::Error),
    /// The input or an argument is not what the tool can work with.
    #[error("{0}")]
    Invalid(String),
    /// An error, with what was being done when it happened.
    #[error("{context}: {inner}")]
    Context {
        /// What was being done (a file, a tensor).
        context: String,
        /// The error itself.
        inner: Box<ToolsError>,
    },
}

impl ToolsError {
    /// An error about `path`, from the operating system.
    pub fn io(what: impl Into<String>, cause: std::io::Error) -> Self {
        ToolsError::Io {
            what: what.into(),
            cause,
        }
    }

    /// An error about a path, from the operating system: "PATH: cause".
    pub fn at(path: &std::path::Path, cause: std::io::Error) -> Self {
        Self::io(path.display().to_string(), cause)
    }

    /// Whether the error is (or was caused by) a closed pipe.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            ToolsError::Io { cause, .. } | ToolsError::Os(cause) => {
                cause.kind() == std::io::ErrorKind::BrokenPipe
            }
            ToolsError::Context { inner, .. } => inner.is_broken_pipe(),
            _ => false,
        }
    }
}

impl From<std::fmt::Error> for ToolsError {
    fn from(_: std::fmt::Error) -> Self {
        ToolsError::Invalid("formatting failed".into())
    }
}

impl From<serde_json::Error> for ToolsError {
    fn from(e: serde_json::Error) -> Self {
        ToolsError::Invalid(format!("JSON: {e}"))
    }
}

impl From<std::num::ParseIntError> for ToolsError {
    fn from(e: std::num::ParseIntError) -> Self {
        ToolsError::Invalid(e.to_string())
    }
}

impl From<trace_format::LayoutError> for ToolsError {
    fn from(e: trace_format::LayoutError) -> Self {
        ToolsError::Invalid(format!("layout: {e}"))
    }
}

impl From<std::num::TryFromIntError> for ToolsError {
    fn from(e: std::num::TryFromIntError) -> Self {
        ToolsError::Invalid(e.to_string())
    }
}

impl From<safetensors::SafeTensorError> for ToolsError {
    fn from(e: safetensors::SafeTensorError) -> Self {
        ToolsError::Invalid(format!("safetensors: {e}"))
    }
}

impl From<zip::result::ZipError> for ToolsError {
    fn from(e: zip::result::ZipError) -> Self {
        match e {
            zip::result::ZipError::Io(e) => ToolsError::Os(e),
            e => ToolsError::Invalid(format!("zip: {e}")),
        }
    }
}

#[cfg(feature = "parquet")]
impl From<parquet::errors::ParquetError> for ToolsError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        ToolsError::Invalid(format!("parquet: {e}"))
    }
}

#[cfg(feature = "parquet")]
impl From<arrow::error::ArrowError> for ToolsError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ToolsError::Invalid(format!("arrow: {e}"))
    }
}

/// `anyhow`-style context for results of the tools library.
pub trait ResultExt<T> {
    /// Say what was being done when the error happened.
    fn context_with<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T, ToolsError>;
}

impl<T, E: Into<ToolsError>> ResultExt<T> for Result<T, E> {
    fn context_with<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T, ToolsError> {
        self.map_err(|e| ToolsError::Context {
            context: f().into(),
            inner: Box::new(e.into()),
        })
    }
}

impl From<std::io::Error> for ToolsError {
    fn from(cause: std::io::Error) -> Self {
        ToolsError::Os(cause)
    }
}

impl<T> ResultExt<T> for Option<T> {
    fn context_with<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T, ToolsError> {
        self.ok_or_else(|| ToolsError::Invalid(f().into()))
    }
}

/// Return a [`ToolsError::Invalid`] with a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::ToolsError::Invalid(format!($($arg)*)))
    };
}

/// A [`ToolsError::Invalid`] with a formatted message.
macro_rules! invalid {
    ($($arg:tt)*) => {
        $crate::ToolsError::Invalid(format!($($arg)*))
    };
}

pub(crate) use {bail, invalid};
