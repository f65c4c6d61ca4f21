//! The Python exception hierarchy, and the one place that maps the Rust
//! errors onto it.
//!
//! ```text
//! TraceError(Exception)
//! ├── TraceIOError(OSError)  the file could not be opened, mapped or written
//! │   ├── TraceFileNotFoundError(FileNotFoundError)  no such file
//! │   └── TracePermissionError(PermissionError)      not allowed to
//! ├── TraceFormatError      not a trace, a malformed record or GGUF field,
//! │                         a tensor description inconsistent with the file
//! ├── TraceLayoutError      a view reaching outside its storage, a bad layout
//! ├── TraceNotFoundError    no such tensor (also a KeyError)
//! ├── TraceUnsupportedError the values of a stats-only tensor, a dtype mismatch, …
//! └── TraceWriteError       a record the writer refused (lengths, storages)
//! ```
//!
//! So `except FileNotFoundError`, `except PermissionError`, `except OSError`
//! and `except KeyError` catch what they catch for `open()` and `dict[...]`.
//! An error from the operating system carries its `errno`, `strerror` and
//! `filename` (where the path is known), as `OSError` does.
//!
//! Messages are the Rust errors' own: they name the file, the record, the
//! tensor and the byte offset where those are known.

#![forbid(unsafe_code)]

use std::path::Path;

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyKeyError, PyOSError, PyPermissionError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use trace_reader::ReaderError;
use trace_writer::WriterError;

create_exception!(
    tracedump,
    TraceError,
    PyException,
    "Base class of every error tracedump raises."
);
create_exception!(
    tracedump,
    TraceFormatError,
    TraceError,
    "The file is not a readable trace or GGUF, or a record in it is malformed."
);
create_exception!(
    tracedump,
    TraceLayoutError,
    TraceError,
    "A tensor's layout is invalid or reaches outside its storage."
);
create_exception!(
    tracedump,
    TraceUnsupportedError,
    TraceError,
    "The tensor cannot do what was asked (the values of a stats-only tensor, …)."
);
create_exception!(
    tracedump,
    TraceWriteError,
    TraceError,
    "The writer refused a record (byte count, unknown storage, dropped record)."
);

/// The classes with two bases (one ours, one Python's), which
/// `create_exception!` cannot make: made once with `type()`.
#[derive(Clone, Copy, Debug)]
enum Twin {
    /// `TraceIOError(TraceError, OSError)`
    Io,
    /// `TraceFileNotFoundError(TraceIOError, FileNotFoundError)`
    FileNotFound,
    /// `TracePermissionError(TraceIOError, PermissionError)`
    Permission,
    /// `TraceNotFoundError(TraceError, KeyError)`
    NotFound,
}

static IO: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static FILE_NOT_FOUND: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static PERMISSION: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static NOT_FOUND: PyOnceLock<Py<PyType>> = PyOnceLock::new();

impl Twin {
    const ALL: [Twin; 4] = [
        Twin::Io,
        Twin::FileNotFound,
        Twin::Permission,
        Twin::NotFound,
    ];

    fn name(self) -> &'static str {
        match self {
            Twin::Io => "TraceIOError",
            Twin::FileNotFound => "TraceFileNotFoundError",
            Twin::Permission => "TracePermissionError",
            Twin::NotFound => "TraceNotFoundError",
        }
    }

    fn doc(self) -> &'static str {
        match self {
            Twin::Io => "The file could not be opened, mapped or written (also an OSError).",
            Twin::FileNotFound => "The file does not exist (also a FileNotFoundError).",
            Twin::Permission => "The file may not be read or written (also a PermissionError).",
            Twin::NotFound => {
                "No tensor has this name (or the occurrence asked for does not exist)."
            }
        }
    }

    fn cell(self) -> &'static PyOnceLock<Py<PyType>> {
        match self {
            Twin::Io => &IO,
            Twin::FileNotFound => &FILE_NOT_FOUND,
            Twin::Permission => &PERMISSION,
            Twin::NotFound => &NOT_FOUND,
        }
    }

    /// Our base and Python's.
    fn bases(self, py: Python<'_>) -> PyResult<(Bound<'_, PyType>, Bound<'_, PyType>)> {
        Ok(match self {
            Twin::Io => (py.get_type::<TraceError>(), py.get_type::<PyOSError>()),
            Twin::FileNotFound => (
                Twin::Io.get(py)?.clone(),
                py.get_type::<PyFileNotFoundError>(),
            ),
            Twin::Permission => (
                Twin::Io.get(py)?.clone(),
                py.get_type::<PyPermissionError>(),
            ),
            Twin::NotFound => (py.get_type::<TraceError>(), py.get_type::<PyKeyError>()),
        })
    }

    /// The class, made on first use. Its `str()` is the plain message:
    /// `OSError`'s would put `[Errno 2]` and the file name around it a
    /// second time, `KeyError`'s would quote it.
    fn get(self, py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
        let ty = self
            .cell()
            .get_or_try_init(py, || -> PyResult<Py<PyType>> {
                let (ours, theirs) = self.bases(py)?;
                let bases = PyTuple::new(py, [ours.into_any(), theirs.into_any()])?;
                let ns = PyDict::new(py);
                ns.set_item("__module__", "tracedump")?;
                ns.set_item("__doc__", self.doc())?;
                ns.set_item("__str__", py.get_type::<PyException>().getattr("__str__")?)?;
                let ty = py.get_type::<PyType>().call1((self.name(), bases, ns))?;
                Ok(ty.cast_into::<PyType>()?.unbind())
            })?;
        Ok(ty.bind(py))
    }

    /// An exception of this class with `msg`.
    fn err(self, py: Python<'_>, msg: String) -> PyErr {
        match self.get(py) {
            Ok(ty) => PyErr::from_type(ty.clone(), msg),
            Err(e) => e,
        }
    }
}

/// A `TraceNotFoundError` with `msg`.
pub fn not_found(py: Python<'_>, msg: String) -> PyErr {
    Twin::NotFound.err(py, msg)
}

/// A `TraceIOError` with `msg`, for a failure that is not one error of
/// the operating system (see [`os_error`] for those).
pub fn io_error(msg: String) -> PyErr {
    Python::attach(|py| Twin::Io.err(py, msg))
}

/// The exception for an error of the operating system, `msg` saying what
/// failed: `TraceFileNotFoundError`, `TracePermissionError` or
/// `TraceIOError` by the error's kind, with `errno`, `strerror` and
/// `filename` set as `OSError` sets them.
pub fn os_error(msg: String, error: &std::io::Error, path: Option<&Path>) -> PyErr {
    let twin = match error.kind() {
        std::io::ErrorKind::NotFound => Twin::FileNotFound,
        std::io::ErrorKind::PermissionDenied => Twin::Permission,
        _ => Twin::Io,
    };
    Python::attach(|py| {
        let made = || -> PyResult<PyErr> {
            let e = twin.get(py)?.call1((msg.clone(),))?;
            if let Some(n) = error.raw_os_error() {
                e.setattr("errno", n)?;
                e.setattr(
                    "strerror",
                    py.import("os")?.getattr("strerror")?.call1((n,))?,
                )?;
            } else {
                e.setattr("strerror", error.to_string())?;
            }
            if let Some(p) = path {
                e.setattr("filename", p.as_os_str())?;
            }
            Ok(PyErr::from_value(e))
        };
        made().unwrap_or_else(|e| e)
    })
}

/// The Python exception for a reader error.
pub fn reader_error(e: ReaderError) -> PyErr {
    let msg = e.to_string();
    match e {
        ReaderError::Io { path, error } => os_error(msg, &error, Some(&path)),
        ReaderError::NotATrace { .. } | ReaderError::Record { .. } | ReaderError::Gguf { .. } => {
            TraceFormatError::new_err(msg)
        }
        ReaderError::Tensor { .. } => TraceFormatError::new_err(msg),
        ReaderError::Layout { .. } => TraceLayoutError::new_err(msg),
        ReaderError::NotFound { .. } | ReaderError::NoSuchTensor { .. } => {
            Python::attach(|py| not_found(py, msg))
        }
        ReaderError::DTypeMismatch { .. } | ReaderError::Unsupported { .. } => {
            TraceUnsupportedError::new_err(msg)
        }
        _ => TraceError::new_err(msg),
    }
}

/// The Python exception for an error of the tools library (compare,
/// report, shards): a reader's or writer's error keeps its class.
pub fn tools_error(e: trace_tools::ToolsError) -> PyErr {
    let msg = e.to_string();
    // what was being done wraps the error itself: its class is the inner one's
    let mut inner = e;
    while let trace_tools::ToolsError::Context { inner: i, .. } = inner {
        inner = *i;
    }
    match inner {
        trace_tools::ToolsError::Reader(e) if e.to_string() == msg => reader_error(e),
        trace_tools::ToolsError::Writer(e) if e.to_string() == msg => writer_error(e),
        trace_tools::ToolsError::Io { cause, .. } | trace_tools::ToolsError::Os(cause) => {
            os_error(msg, &cause, None)
        }
        trace_tools::ToolsError::Reader(e) => {
            // the class of the reader's error, the message with its context
            let class = reader_error(e);
            Python::attach(|py| PyErr::from_type(class.get_type(py), msg))
        }
        trace_tools::ToolsError::Writer(e) => {
            let class = writer_error(e);
            Python::attach(|py| PyErr::from_type(class.get_type(py), msg))
        }
        _ => TraceError::new_err(msg),
    }
}

/// The Python exception for a writer error.
pub fn writer_error(e: WriterError) -> PyErr {
    let msg = e.to_string();
    match e {
        WriterError::Io { path, error } => os_error(msg, &error, Some(&path)),
        WriterError::Failed { .. } => io_error(msg),
        WriterError::Layout { .. } => TraceLayoutError::new_err(msg),
        WriterError::Unsupported { .. } => TraceUnsupportedError::new_err(msg),
        _ => TraceWriteError::new_err(msg),
    }
}

/// Add the hierarchy to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TraceError", py.get_type::<TraceError>())?;
    m.add("TraceFormatError", py.get_type::<TraceFormatError>())?;
    m.add("TraceLayoutError", py.get_type::<TraceLayoutError>())?;
    m.add(
        "TraceUnsupportedError",
        py.get_type::<TraceUnsupportedError>(),
    )?;
    m.add("TraceWriteError", py.get_type::<TraceWriteError>())?;
    for twin in Twin::ALL {
        m.add(twin.name(), twin.get(py)?)?;
    }
    Ok(())
}
