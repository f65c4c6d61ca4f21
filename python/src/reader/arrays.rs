//! What the arrays a `Tensor` hands out are made of: our dtypes' numpy and
//! torch names, and [`MappedBytes`], the object numpy arrays are made over.
//!
//! Zero-copy works without `unsafe` here: a [`MappedBytes`] holds an
//! `Arc<Source>` (the file's mapping) and describes the tensor's bytes to
//! numpy through `__array_interface__` (address, shape, byte strides,
//! read-only flag). numpy keeps the object as the array's `base`, so the
//! mapping lives as long as any array made from it. The buffer protocol is
//! not used: it is not in the stable ABI before Python 3.11, and the module
//! is built for abi3-py310.
//!
//! Every address handed out points inside the mapping: the reader checked
//! each tensor's layout against its storage when it decoded it
//! (`Layout::check_within`), and the storage lies inside the file.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use trace_reader::{DType, Source};

use crate::errors::TraceError;

/// numpy's `typestr` for a scalar dtype, and the ml_dtypes type that
/// reinterprets it (bf16, fp8). `None` for block types.
pub fn numpy_type(dtype: DType) -> Option<(&'static str, Option<&'static str>)> {
    Some(match dtype {
        DType::F32 => ("<f4", None),
        DType::F16 => ("<f2", None),
        DType::F64 => ("<f8", None),
        DType::I8 => ("|i1", None),
        DType::I16 => ("<i2", None),
        DType::I32 => ("<i4", None),
        DType::I64 => ("<i8", None),
        DType::U8 => ("|u1", None),
        DType::U16 => ("<u2", None),
        DType::U32 => ("<u4", None),
        DType::U64 => ("<u8", None),
        DType::Bool => ("|b1", None),
        DType::BF16 => ("<u2", Some("bfloat16")),
        DType::F8_E4M3 => ("|u1", Some("float8_e4m3fn")),
        DType::F8_E5M2 => ("|u1", Some("float8_e5m2")),
        _ => return None,
    })
}

/// torch's name for a scalar dtype.
pub(crate) fn torch_type(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        DType::I8 => "int8",
        DType::I16 => "int16",
        DType::I32 => "int32",
        DType::I64 => "int64",
        DType::U8 => "uint8",
        DType::U16 => "uint16",
        DType::U32 => "uint32",
        DType::U64 => "uint64",
        DType::Bool => "bool",
        DType::F8_E4M3 => "float8_e4m3fn",
        DType::F8_E5M2 => "float8_e5m2",
        _ => return None,
    })
}

/// torch's dtype object named `tname`, or a clear error naming the tensor.
pub(super) fn torch_dtype<'py>(
    torch: &Bound<'py, PyModule>,
    tname: &str,
    tensor: &str,
) -> PyResult<Bound<'py, PyAny>> {
    torch.getattr(tname).map_err(|_| {
        TraceError::new_err(format!(
            "tensor `{tensor}`: this torch has no {tname} dtype"
        ))
    })
}

/// Bytes of a trace file described to numpy through `__array_interface__`;
/// numpy keeps it as the base of the arrays made over it, so the mapping
/// stays alive as long as they do. Read-only over the read-only mapping;
/// writable only over the private copy-on-write mapping used for torch.
#[pyclass(frozen, module = "tracedump._tracedump")]
#[derive(Debug)]
pub struct MappedBytes {
    pub(super) source: Arc<Source>,
    /// Byte offset in the file of element (0, …, 0).
    pub(super) offset: u64,
    pub(super) shape: Vec<u64>,
    pub(super) strides: Vec<i64>,
    pub(super) typestr: &'static str,
    pub(super) writable: bool,
}

#[pymethods]
impl MappedBytes {
    /// The array interface numpy reads (version 3).
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        // An address, not a reference: Rust never reads these bytes through
        // it. `offset` is inside the file (checked at construction), so the
        // sum stays inside the mapping.
        let addr = (self.source.as_ptr() as usize).saturating_add(self.offset as usize);
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("strides", PyTuple::new(py, &self.strides)?)?;
        d.set_item("typestr", self.typestr)?;
        d.set_item("data", (addr, !self.writable))?;
        Ok(d)
    }

    /// Whether this is the private copy-on-write mapping (writes never reach the file).
    #[getter]
    fn copy_on_write(&self) -> bool {
        self.writable
    }

    fn __repr__(&self) -> String {
        format!(
            "MappedBytes(offset={}, shape={:?}, strides={:?}, typestr={:?}, {})",
            self.offset,
            self.shape,
            self.strides,
            self.typestr,
            if self.writable {
                "copy-on-write"
            } else {
                "read-only"
            }
        )
    }
}
