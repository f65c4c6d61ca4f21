//! Python bindings of tracedump (`import tracedump`): a thin layer over
//! `trace-reader` and `trace-writer`. See `python/README.md`.
//!
//! `unsafe` code lives in two files: `describe.rs` (the writer reads a
//! numpy array's or torch tensor's bytes in place) and `dlpack.rs` (the
//! DLPack C ABI a torch tensor is described through). Arrays are made over
//! the file's mapping through numpy's `__array_interface__` (see
//! `reader/arrays.rs`), and the mapping's own `unsafe` lives in
//! `trace_reader::Source`.

#![deny(unsafe_code)]

mod compare;
mod convert;
mod describe;
mod dlpack;
mod errors;
mod ggml_adapter;
mod reader;
mod writer;

use pyo3::prelude::*;

/// The compiled part of the `tracedump` package.
#[pymodule]
fn _tracedump(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(reader::open, m)?)?;
    m.add_function(wrap_pyfunction!(compare::compare, m)?)?;
    m.add_function(wrap_pyfunction!(compare::report, m)?)?;
    m.add_function(wrap_pyfunction!(describe::_describe, m)?)?;
    m.add_function(wrap_pyfunction!(reader::_shard_files, m)?)?;
    m.add_function(wrap_pyfunction!(reader::_is_sharded, m)?)?;
    m.add_class::<reader::PyTrace>()?;
    m.add_class::<reader::PyTensor>()?;
    m.add_class::<reader::VerifyReport>()?;
    m.add_class::<reader::MappedBytes>()?;
    m.add_class::<writer::PyWriter>()?;
    m.add_class::<compare::DiffResult>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("_GGML_ADAPTER_SOURCES", ggml_adapter::SOURCES.to_vec())?;
    Ok(())
}
