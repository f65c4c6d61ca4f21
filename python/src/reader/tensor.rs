//! `Tensor`: one tensor of an open trace, its description, and its values
//! as numpy arrays or torch tensors over the file's bytes ([`MappedBytes`]).

use std::sync::Arc;

use numpy::PyArray1;
use pyo3::exceptions::{PyBufferError, PyImportError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple};
use trace_reader::{DType, ReaderError, Source, TensorInfo};

use super::arrays::{numpy_type, torch_dtype, torch_type, MappedBytes};
use super::{opt, Shared};
use crate::convert::{
    engine_op_to_py, html_escape, metadata_to_py, op_to_py, source_layout_to_py, stats_to_py,
};
use crate::errors::{reader_error, TraceError};

/// One tensor of a trace: its description, and its values as numpy or
/// torch arrays over the file's bytes.
#[pyclass(frozen, module = "tracedump", name = "Tensor")]
#[derive(Debug)]
pub struct PyTensor {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
}

impl PyTensor {
    fn info(&self) -> PyResult<&TensorInfo> {
        self.shared.trace.tensor(self.id).map_err(reader_error)
    }

    fn view(&self) -> PyResult<trace_reader::TensorView<'_>> {
        self.shared.trace.view(self.id).map_err(reader_error)
    }

    fn require_values(&self, info: &TensorInfo) -> PyResult<()> {
        if info.is_stats_only() {
            return Err(reader_error(ReaderError::Unsupported {
                tensor: info.name.clone(),
                what: "it was recorded as statistics only; it has no values (see .stats)".into(),
            }));
        }
        // numpy and torch refuse a shape whose extents multiply past isize
        // in bytes, even an empty one ([0, 2^62]): say so, as a TraceError
        let bytes = info
            .layout
            .shape()
            .iter()
            .filter(|&&n| n != 0)
            .try_fold(8u64, |acc, &n| acc.checked_mul(n));
        if bytes.is_none_or(|b| b > i64::MAX as u64) {
            return Err(reader_error(ReaderError::Unsupported {
                tensor: info.name.clone(),
                what: format!(
                    "an array of shape {:?}: its extents multiply past what numpy and torch can describe",
                    info.layout.shape()
                ),
            }));
        }
        Ok(())
    }

    /// What holds the bytes of `info`'s storage, and the offset of its
    /// first byte there: the file's read-only mapping (or, `writable`, the
    /// private copy-on-write one); for a storage made of updates (format
    /// 1.2, SPEC.md §5.7) the copy the trace materialized (or, `writable`,
    /// a private copy of it): such arrays are not views of the file.
    fn storage_of(&self, info: &TensorInfo, writable: bool) -> PyResult<(Arc<Source>, u64)> {
        if info.storage_in_file() || info.storage.is_none() {
            let source = if writable {
                Arc::clone(self.shared.cow()?)
            } else {
                Arc::clone(self.shared.trace.source())
            };
            return Ok((source, info.storage_file_offset()));
        }
        let (source, at) = self
            .shared
            .trace
            .storage_source(info)
            .map_err(reader_error)?;
        if writable {
            return Ok((Arc::new(Source::Owned(source.bytes().to_vec())), at));
        }
        Ok((source, at))
    }

    /// Bytes of a mapping described by `m`, as a numpy array (a view, not a copy).
    /// The whole copy-on-write mapping as a 1-D torch tensor of `tdtype`
    /// (cached per trace and dtype; the tensor keeps the mapping alive).
    fn whole_file<'py>(
        &self,
        py: Python<'py>,
        tname: &'static str,
        size: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Some(t) = self
            .shared
            .whole
            .lock()
            .map_err(|_| TraceError::new_err("poisoned cache"))?
            .get(tname)
        {
            return Ok(t.bind(py).clone());
        }
        let torch = py.import("torch")?;
        let tdtype = torch_dtype(&torch, tname, &self.info()?.name)?;
        let cow = self.shared.cow()?;
        let len = cow.len() as u64 - cow.len() as u64 % size;
        let bytes = self.mapped(
            py,
            MappedBytes {
                source: Arc::clone(cow),
                offset: 0,
                shape: vec![len],
                strides: vec![1],
                typestr: "|u1",
                writable: true,
            },
        )?;
        let t = torch
            .call_method1("from_numpy", (bytes,))?
            .call_method1("view", (tdtype,))?;
        self.shared
            .whole
            .lock()
            .map_err(|_| TraceError::new_err("poisoned cache"))?
            .insert(tname, t.clone().unbind());
        Ok(t)
    }

    fn mapped<'py>(&self, py: Python<'py>, m: MappedBytes) -> PyResult<Bound<'py, PyAny>> {
        if m.offset > m.source.len() as u64 {
            return Err(TraceError::new_err(format!(
                "tensor `{}`: offset {} is past the end of the file",
                self.info()?.name,
                m.offset
            )));
        }
        py.import("numpy")?
            .call_method1("asarray", (Bound::new(py, m)?,))
    }

    /// The values over the file's bytes with the tensor's true byte
    /// strides: read-only over the reader's mapping, or (`writable`) over
    /// the private copy-on-write one. None for quantized and derived
    /// tensors, which have no such view.
    fn strided<'py>(&self, py: Python<'py>, writable: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
        let info = self.info()?;
        self.require_values(info)?;
        let Some((typestr, ml)) = numpy_type(info.dtype).filter(|_| !info.derived) else {
            return Ok(None);
        };
        let layout = &info.layout;
        let (source, at) = self.storage_of(info, writable)?;
        let offset = if layout.shape().contains(&0) {
            at
        } else {
            at + layout.storage_offset()
        };
        let arr = self.mapped(
            py,
            MappedBytes {
                source,
                offset,
                shape: layout.shape().to_vec(),
                strides: layout.byte_strides().to_vec(),
                typestr,
                writable,
            },
        )?;
        Self::reinterpret(arr, ml).map(Some)
    }

    /// The f32 values (dequantized, rebuilt, or converted) as a new array.
    fn f32_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let view = self.view()?;
        let values = py.detach(|| view.to_f32()).map_err(reader_error)?;
        self.shaped(PyArray1::from_vec(py, values).into_any())
    }

    fn shaped<'py>(&self, arr: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let shape = PyTuple::new(arr.py(), self.info()?.layout.shape())?;
        arr.call_method1("reshape", (shape,))
    }

    /// ml_dtypes' numpy dtype `name` (bf16, fp8). ml_dtypes is a
    /// dependency of the package; where it is missing all the same, an
    /// ImportError that says so: the raw bits are never handed out as if
    /// they were the values (`raw()` has them).
    fn ml_dtype<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let missing = |e: PyErr| {
            let err = PyImportError::new_err(format!(
                "{name} values need ml_dtypes, a dependency of tracedump that is not \
                 importable here ({e}); pip install ml_dtypes (raw() gives the bits)"
            ));
            err.set_cause(py, Some(e));
            err
        };
        py.import("ml_dtypes")
            .map_err(missing)?
            .getattr(name)
            .map_err(missing)
    }

    /// `arr` (the stored bits) viewed as ml_dtypes' `ml` where it has one.
    fn reinterpret<'py>(
        arr: Bound<'py, PyAny>,
        ml: Option<&'static str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match ml {
            Some(name) => arr.call_method1("view", (Self::ml_dtype(arr.py(), name)?,)),
            None => Ok(arr),
        }
    }
}

#[pymethods]
impl PyTensor {
    /// The engine's name.
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.info()?.name.clone())
    }

    /// Record id: the tensor's identity (names repeat).
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// Which occurrence of its name this is, from 0.
    #[getter]
    fn occurrence(&self) -> usize {
        self.shared
            .trace
            .occurrence(self.id)
            .map(|(k, _)| k)
            .unwrap_or(0)
    }

    /// dtype name: "f32", "f16", "bf16", "q8_0", …
    #[getter]
    fn dtype(&self) -> PyResult<&'static str> {
        Ok(self.info()?.dtype.name())
    }

    /// Shape, outermost first.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.info()?.layout.shape())
    }

    /// Number of dimensions.
    #[getter]
    fn ndim(&self) -> PyResult<usize> {
        Ok(self.info()?.layout.ndim())
    }

    /// Number of elements.
    #[getter]
    fn numel(&self) -> PyResult<u64> {
        Ok(self.info()?.layout.numel())
    }

    /// Signed byte strides (numpy's convention; ggml's nb reversed).
    #[getter]
    fn byte_strides<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.info()?.layout.byte_strides())
    }

    /// Element strides (torch's convention) where every byte stride
    /// divides, else None. For block dtypes, in dequantized elements.
    #[getter]
    fn strides<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.info()?
            .element_strides()
            .map(|s| PyTuple::new(py, s))
            .transpose()
    }

    /// Byte offset of element (0, …, 0) in its storage.
    #[getter]
    fn storage_offset(&self) -> PyResult<u64> {
        Ok(self.info()?.layout.storage_offset())
    }

    /// Record id of the storage the tensor views (its own id when it has
    /// its own bytes; None for stats-only and derived tensors).
    #[getter]
    fn storage(&self) -> PyResult<Option<u64>> {
        Ok(self.info()?.storage)
    }

    /// Whether the elements are dense and row-major.
    #[getter]
    fn is_contiguous(&self) -> PyResult<bool> {
        Ok(self.info()?.is_contiguous())
    }

    /// Whether only statistics were recorded (no values).
    #[getter]
    fn is_stats_only(&self) -> PyResult<bool> {
        Ok(self.info()?.is_stats_only())
    }

    /// Whether the values are rebuilt from parents (no bytes of its own).
    #[getter]
    fn is_derived(&self) -> PyResult<bool> {
        Ok(self.info()?.derived)
    }

    /// Whether the dtype is a ggml block-quantized type.
    #[getter]
    fn is_quantized(&self) -> PyResult<bool> {
        Ok(self.info()?.dtype.is_block())
    }

    #[getter]
    fn layer(&self) -> PyResult<Option<i64>> {
        Ok(self.info()?.layer)
    }

    #[getter]
    fn step(&self) -> PyResult<Option<i64>> {
        Ok(self.info()?.step)
    }

    #[getter]
    fn role(&self) -> PyResult<Option<String>> {
        Ok(self.info()?.role.clone())
    }

    /// Lineage steps from the parents to this tensor, as dicts:
    /// `{"op": "view", "offset", "shape", "byte_strides"}`,
    /// `{"op": "permute", "axes"}`, `{"op": "reshape", "shape"}`,
    /// `{"op": "transpose", "a", "b"}`, `{"op": "cont"}`,
    /// `{"op": "convert"|"quantize"|"dequantize", "dtype"}`,
    /// `{"op": "concat", "axis"}`.
    #[getter]
    fn lineage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for op in &self.info()?.lineage.ops {
            list.append(op_to_py(py, op)?)?;
        }
        Ok(list)
    }

    /// Parent tensors as dicts {"id", "name"}, in order.
    #[getter]
    fn parents<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for &p in &self.info()?.lineage.parents {
            let d = PyDict::new(py);
            d.set_item("id", p)?;
            d.set_item("name", self.shared.trace.record_name(p))?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// The engine's own op {"engine", "op", "params"}, or None.
    #[getter]
    fn engine_op<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        engine_op_to_py(py, &self.info()?.lineage)
    }

    /// ggml's layout {"ne": [...], "nb": [...]} (fastest first), or None.
    #[getter]
    fn ggml<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        source_layout_to_py(py, self.info()?.source_layout.as_ref())
    }

    /// Free metadata (dict).
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        metadata_to_py(py, &self.info()?.metadata)
    }

    /// Stored statistics (dict), or None.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.info()?
            .stats
            .as_ref()
            .map(|s| stats_to_py(py, s))
            .transpose()
    }

    /// Statistics computed from the values now (dict).
    fn compute_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let view = self.view()?;
        let s = py.detach(|| view.compute_stats()).map_err(reader_error)?;
        stats_to_py(py, &s)
    }

    /// The values as a numpy array **without copying**: a read-only view of
    /// the file's mapping with the tensor's true byte strides (negative,
    /// zero and overlapping included). bf16 and fp8 come as ml_dtypes'
    /// `bfloat16` / `float8_e4m3fn` / `float8_e5m2` (ml_dtypes is a
    /// dependency; ImportError, never the raw bits, without it). Quantized and
    /// derived tensors come as a new f32 array (dequantized / rebuilt).
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.strided(py, false)? {
            Some(arr) => Ok(arr),
            None => self.f32_array(py),
        }
    }

    /// numpy's protocol (`np.asarray(tensor)`, numpy 2's signature): the
    /// array `numpy()` gives, converted to `dtype` when asked. `copy=None`
    /// copies only where it must (quantized, derived, another dtype),
    /// `copy=True` always, `copy=False` never (ValueError where it must).
    #[pyo3(signature = (dtype=None, copy=None))]
    fn __array__<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let view = self.strided(py, false)?;
        let made = view.is_none();
        if made && copy == Some(false) {
            return Err(PyValueError::new_err(format!(
                "tensor `{}` is {}: its values come as a new f32 array, which copy=False forbids",
                self.info()?.name,
                if self.info()?.derived {
                    "derived"
                } else {
                    "quantized"
                }
            )));
        }
        let arr = match view {
            Some(arr) => arr,
            None => self.f32_array(py)?,
        };
        let np = py.import("numpy")?;
        let kw = PyDict::new(py);
        kw.set_item("dtype", dtype)?;
        match copy {
            Some(true) if !made => {
                kw.set_item("copy", true)?;
                np.call_method("array", (arr,), Some(&kw))
            }
            Some(false) => {
                kw.set_item("copy", false)?;
                np.call_method("asarray", (arr,), Some(&kw))
            }
            _ => np.call_method("asarray", (arr,), Some(&kw)),
        }
    }

    /// DLPack (`torch.from_dlpack(tensor)`, `np.from_dlpack(tensor)`),
    /// through numpy's exporter: the values with their true strides over
    /// the private copy-on-write mapping that `torch()` uses, so a consumer
    /// may write into them and the file never changes. Quantized and
    /// derived tensors export a new f32 array (BufferError with
    /// `copy=False`). bf16 and fp8 are not exported (numpy's exporter has
    /// no such dtypes): `torch()` gives them without a copy. A consumer
    /// that refuses negative strides (torch) says so; `torch()` copies them.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<Bound<'py, PyAny>>,
        dl_device: Option<Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let info = self.info()?;
        if numpy_type(info.dtype).is_some_and(|(_, ml)| ml.is_some()) && !info.derived {
            return Err(PyBufferError::new_err(format!(
                "tensor `{}`: DLPack export of {} is not supported (numpy's exporter has no \
                 such dtype); .torch() gives it without a copy",
                info.name, info.dtype
            )));
        }
        let arr = match self.strided(py, true)? {
            Some(arr) if copy == Some(true) => arr.call_method0("copy")?,
            Some(arr) => arr,
            None if copy == Some(false) => {
                return Err(PyBufferError::new_err(format!(
                    "tensor `{}`: its values come as a new f32 array, which copy=False forbids",
                    info.name
                )))
            }
            None => self.f32_array(py)?,
        };
        // only what was given: numpy 1's exporter takes `stream` alone
        let kw = PyDict::new(py);
        for (k, v) in [
            ("stream", stream),
            ("max_version", max_version),
            ("dl_device", dl_device),
        ] {
            if let Some(v) = v {
                kw.set_item(k, v)?;
            }
        }
        arr.call_method("__dlpack__", (), Some(&kw))
    }

    /// `(kDLCPU, 0)`: the values are in host memory.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (crate::dlpack::DL_CPU, 0)
    }

    /// The values as a torch tensor **without copying** where torch can
    /// describe the layout: the tensor's true element strides over a
    /// private copy-on-write mapping of the file, so in-place writes are
    /// safe and never reach the file. Negative strides (torch has none),
    /// strides that are not whole elements, quantized and derived tensors
    /// come as a copy (quantized/derived: f32).
    fn torch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        static AS_STRIDED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let info = self.info()?;
        self.require_values(info)?;
        let tname = torch_type(info.dtype).filter(|_| !info.derived);
        let size = info.dtype.block_bytes();
        let layout = &info.layout;
        let elems = info
            .element_strides()
            .filter(|s| s.iter().all(|&x| x >= 0))
            .filter(|_| layout.storage_offset() % size == 0);
        let absolute = info.storage_file_offset() + layout.storage_offset();
        if let (Some(tname), Some(strides)) = (tname, &elems) {
            if absolute % size == 0 && info.storage_in_file() {
                // the common case, kept short: one call into torch
                let whole = self.whole_file(py, tname, size)?;
                let as_strided = AS_STRIDED.import(py, "torch", "as_strided")?;
                return as_strided.call1((
                    whole,
                    PyTuple::new(py, layout.shape())?,
                    PyTuple::new(py, strides)?,
                    absolute / size,
                ));
            }
        }
        let torch = py.import("torch")?;
        let Some(tname) = tname else {
            return torch.call_method1("from_numpy", (self.f32_array(py)?,));
        };
        let tdtype = torch_dtype(&torch, tname, &info.name)?;
        let Some(strides) = elems else {
            // a copy, row-major
            let view = self.view()?;
            let bytes = py.detach(|| view.materialize()).map_err(reader_error)?;
            let t = torch.call_method1("from_numpy", (PyArray1::from_vec(py, bytes),))?;
            let t = t.call_method1("view", (tdtype,))?;
            return t.call_method1("reshape", (PyTuple::new(py, layout.shape())?,));
        };
        let (source, at) = self.storage_of(info, true)?;
        let len = info.storage_len() - info.storage_len() % size;
        let bytes = self.mapped(
            py,
            MappedBytes {
                source,
                offset: at,
                shape: vec![len],
                strides: vec![1],
                typestr: "|u1",
                writable: true,
            },
        )?;
        let base = torch
            .call_method1("from_numpy", (bytes,))?
            .call_method1("view", (tdtype,))?;
        torch.call_method1(
            "as_strided",
            (
                base,
                PyTuple::new(py, layout.shape())?,
                PyTuple::new(py, strides)?,
                layout.storage_offset() / size,
            ),
        )
    }

    /// A contiguous row-major copy: in the tensor's dtype (dtype=None), or
    /// converted to `dtype` ("f32", "f64", "f16", "bf16", "i32", …; bf16
    /// and fp8 need ml_dtypes). Quantized and derived tensors: f32 unless
    /// asked otherwise.
    #[pyo3(signature = (dtype=None))]
    fn materialize<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let info = self.info()?;
        self.require_values(info)?;
        let target = dtype.map(crate::convert::dtype_from_name).transpose()?;
        let own = !info.derived && !info.dtype.is_block();
        match target {
            None if own => {}
            Some(t) if t == info.dtype && own => {}
            None | Some(DType::F32) => return self.f32_array(py),
            Some(DType::F64) => {
                let view = self.view()?;
                let values = py.detach(|| view.to_f64()).map_err(reader_error)?;
                return self.shaped(PyArray1::from_vec(py, values).into_any());
            }
            Some(t) => {
                let Some((typestr, ml)) = numpy_type(t) else {
                    return Err(PyValueError::new_err(format!(
                        "materialize() converts to scalar dtypes, not {t}"
                    )));
                };
                let view = self.view()?;
                let values = py.detach(|| view.to_f64()).map_err(reader_error)?;
                let np_dtype = match ml {
                    Some(name) => Self::ml_dtype(py, name)?,
                    None => typestr.into_pyobject(py)?.into_any(),
                };
                let arr = PyArray1::from_vec(py, values).call_method1("astype", (np_dtype,))?;
                return self.shaped(arr);
            }
        }
        let (_, ml) = numpy_type(info.dtype)
            .ok_or_else(|| PyValueError::new_err(format!("{} has no numpy dtype", info.dtype)))?;
        let view = self.view()?;
        let bytes = py.detach(|| view.materialize()).map_err(reader_error)?;
        let (typestr, _) = numpy_type(info.dtype).unwrap_or(("|u1", None));
        let arr = PyArray1::from_vec(py, bytes).call_method1("view", (typestr,))?;
        self.shaped(Self::reinterpret(arr, ml)?)
    }

    /// The values as f32, row-major, as a new array (same as materialize("f32")).
    fn to_f32<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.require_values(self.info()?)?;
        self.f32_array(py)
    }

    /// The stored bytes the view spans (quantized blocks included), as a
    /// read-only uint8 numpy array over the file's mapping (no copy).
    fn raw<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let info = self.info()?;
        self.require_values(info)?;
        if info.derived {
            return Err(reader_error(ReaderError::Unsupported {
                tensor: info.name.clone(),
                what: "it is derived from its parents and has no bytes of its own".into(),
            }));
        }
        let span = info.layout.byte_span(info.dtype).map_err(|e| {
            crate::errors::TraceLayoutError::new_err(format!("tensor `{}`: {e}", info.name))
        })?;
        // check_within at decode time: 0 <= start <= end <= storage_len
        let (start, end) = span.map_or((0, 0), |(s, e)| (s.max(0) as u64, e.max(0) as u64));
        let end = end.min(info.storage_len()).max(start);
        let (source, at) = self.storage_of(info, false)?;
        self.mapped(
            py,
            MappedBytes {
                source,
                offset: at + start,
                shape: vec![end - start],
                strides: vec![1],
                typestr: "|u1",
                writable: false,
            },
        )
    }

    fn __repr__(&self) -> String {
        match self.info() {
            Err(e) => format!("Tensor(#{}: {e})", self.id),
            Ok(i) => {
                let mut s = format!(
                    "Tensor({:?}, {}{:?}, byte_strides={:?}",
                    i.name,
                    i.dtype,
                    i.layout.shape(),
                    i.layout.byte_strides()
                );
                if i.layout.storage_offset() != 0 {
                    s.push_str(&format!(", offset={}", i.layout.storage_offset()));
                }
                if let Some(l) = i.layer {
                    s.push_str(&format!(", layer={l}"));
                }
                if let Some(st) = i.step {
                    s.push_str(&format!(", step={st}"));
                }
                if let Some(r) = &i.role {
                    s.push_str(&format!(", role={r:?}"));
                }
                if i.is_stats_only() {
                    s.push_str(", stats only");
                } else if i.derived {
                    s.push_str(", derived");
                }
                s.push_str(&format!(", id={})", i.id));
                s
            }
        }
    }

    fn _repr_html_(&self) -> String {
        let i = match self.info() {
            Ok(i) => i,
            Err(e) => {
                return format!(
                    "<b>Tensor</b> #{}: {}",
                    self.id,
                    html_escape(&e.to_string())
                )
            }
        };
        let mut rows: Vec<(&str, String)> = vec![
            ("id", i.id.to_string()),
            ("dtype", i.dtype.to_string()),
            ("shape", format!("{:?}", i.layout.shape())),
            ("byte strides", format!("{:?}", i.layout.byte_strides())),
            (
                "element strides",
                i.element_strides()
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_else(|| "—".into()),
            ),
            (
                "storage",
                format!("{:?} +{}", i.storage, i.layout.storage_offset()),
            ),
            ("contiguous", i.is_contiguous().to_string()),
            ("layer", opt(i.layer)),
            ("step", opt(i.step)),
            ("role", i.role.clone().unwrap_or_default()),
        ];
        if !i.lineage.is_empty() {
            let mut l: Vec<String> = i
                .lineage
                .parents
                .iter()
                .map(|&p| format!("{}#{p}", self.shared.trace.record_name(p).unwrap_or("?")))
                .collect();
            l.extend(i.lineage.ops.iter().map(|o| o.to_string()));
            if let Some(e) = &i.lineage.engine_op {
                l.push(format!("[{} {}]", e.engine, e.op));
            }
            rows.push(("lineage", l.join(" → ")));
        }
        if let Some(trace_reader::SourceLayout::Ggml { ne, nb }) = &i.source_layout {
            rows.push(("ggml", format!("ne {ne:?} nb {nb:?}")));
        }
        if let Some(s) = &i.stats {
            rows.push((
                "stats",
                format!(
                    "mean {:.6} std {:.6} min {:.6} max {:.6}",
                    s.mean, s.std, s.min, s.max
                ),
            ));
        }
        let mut h = format!(
            "<div><b>Tensor</b> <code>{}</code><table><tbody>",
            html_escape(&i.name)
        );
        for (k, v) in rows {
            h.push_str(&format!(
                "<tr><th style=\"text-align:left\">{k}</th><td>{}</td></tr>",
                html_escape(&v)
            ));
        }
        h.push_str("</tbody></table></div>");
        h
    }
}
