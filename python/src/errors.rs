//! The Python exception hierarchy, and the one place that maps the Rust
//! errors onto it.
//!
//! ```text
//! TraceError(Exception)
//! ├── TraceIOError          the file could not be opened, mapped or written
//! ├── TraceFormatError      not a trace, a malformed record or GGUF field,
//! │                         a tensor description inconsistent with the file
//! ├── TraceLayoutError      a view reaching outside its storage, a bad layout
//! ├── TraceNotFoundError    no such tensor (also a KeyError)
//! ├── TraceUnsupportedError the values of a stats-only tensor, a dtype mismatch, …
//! └── TraceWriteError       a record the writer refused (lengths, storages)
//! ```
//!
//! Messages are the Rust errors' own: they name the file, the record, the
//! tensor and the byte offset where those are known.

#![forbid(unsafe_code)]

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyError};
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
    TraceIOError,
    TraceError,
    "The file could not be opened, mapped or written."
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

static NOT_FOUND: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `TraceNotFoundError(TraceError, KeyError)`: made with `type()` because
/// `create_exception!` takes one base. Its `str()` is the plain message
/// (a `KeyError` would quote it).
pub fn not_found_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let ty = NOT_FOUND.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(
            py,
            [
                py.get_type::<TraceError>().into_any(),
                py.get_type::<PyKeyError>().into_any(),
            ],
        )?;
        let ns = PyDict::new(py);
        ns.set_item("__module__", "tracedump")?;
        ns.set_item(
            "__doc__",
            "No tensor has this name (or the occurrence asked for does not exist).",
        )?;
        ns.set_item("__str__", py.get_type::<PyException>().getattr("__str__")?)?;
        let ty = py
            .get_type::<PyType>()
            .call1(("TraceNotFoundError", bases, ns))?;
        Ok(ty.cast_into::<PyType>()?.unbind())
    })?;
    Ok(ty.bind(py))
}

/// A `TraceNotFoundError` with `msg`.
pub fn not_found(py: Python<'_>, msg: String) -> PyErr {
    match not_found_type(py) {
        Ok(ty) => PyErr::from_type(ty.clone(), msg),
        Err(e) => e,
    }
}

/// The Python exception for a reader error.
pub fn reader_error(e: ReaderError) -> PyErr {
    let msg = e.to_string();
    match e {
        ReaderError::Io { .. } => TraceIOError::new_err(msg),
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
    match e {
        trace_tools::ToolsError::Reader(e) => reader_error(e),
        trace_tools::ToolsError::Writer(e) => writer_error(e),
        e @ (trace_tools::ToolsError::Io { .. } | trace_tools::ToolsError::Os(_)) => {
            TraceIOError::new_err(e.to_string())
        }
        e => TraceError::new_err(e.to_string()),
    }
}

/// The Python exception for a writer error.
pub fn writer_error(e: WriterError) -> PyErr {
    let msg = e.to_string();
    match e {
        WriterError::Io { .. } | WriterError::Failed { .. } => TraceIOError::new_err(msg),
        WriterError::Layout { .. } => TraceLayoutError::new_err(msg),
        WriterError::Unsupported { .. } => TraceUnsupportedError::new_err(msg),
        _ => TraceWriteError::new_err(msg),
    }
}

/// Add the hierarchy to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TraceError", py.get_type::<TraceError>())?;
    m.add("TraceIOError", py.get_type::<TraceIOError>())?;
    m.add("TraceFormatError", py.get_type::<TraceFormatError>())?;
    m.add("TraceLayoutError", py.get_type::<TraceLayoutError>())?;
    m.add(
        "TraceUnsupportedError",
        py.get_type::<TraceUnsupportedError>(),
    )?;
    m.add("TraceWriteError", py.get_type::<TraceWriteError>())?;
    m.add("TraceNotFoundError", not_found_type(py)?)?;
    Ok(())
}
