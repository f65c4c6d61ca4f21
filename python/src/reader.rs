//! `Trace`, `Tensor`, and the object numpy arrays are made over.
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

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use numpy::PyArray1;
use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use trace_reader::{DType, ReaderError, Source, TensorFilter, TensorInfo, Trace};

use crate::convert::{
    engine_op_to_py, html_escape, metadata_to_py, op_to_py, source_layout_to_py, stats_to_py,
};
use crate::errors::{reader_error, tools_error, TraceError, TraceIOError};

/// Files up to this size are read into memory when opened (copy-on-open):
/// arrays made from them cannot fault if another program truncates the file
/// later. Larger files are memory-mapped (see the README's rule).
pub const COPY_BELOW: u64 = 64 << 20;

/// An open trace, shared by the `Trace` object and every `Tensor` made from it.
#[derive(Debug)]
pub struct Shared {
    pub trace: Trace,
    /// Whether the file was read into memory at open (else it is mapped).
    pub copied: bool,
    /// Writable bytes of the same file for torch tensors: a private
    /// copy-on-write mapping (mapped at open time, right after the read-only
    /// one), or for a copied file a second in-memory copy made on first use
    /// (torch may write into it; the reader's copy is never written).
    cow: std::sync::OnceLock<Result<Arc<Source>, String>>,
    /// The whole writable copy as one torch tensor per dtype, made on first
    /// use: a tensor's `.torch()` is then one `as_strided` over it.
    whole: std::sync::Mutex<std::collections::HashMap<&'static str, Py<PyAny>>>,
}

impl Shared {
    /// Open `path`: read into memory when `copy` says so (None: when the
    /// file is at most [`COPY_BELOW`] bytes), else map it.
    pub fn open(path: PathBuf, copy: Option<bool>) -> PyResult<Shared> {
        let len = std::fs::metadata(&path).map(|m| m.len()).ok();
        let copied = copy.unwrap_or(len.is_some_and(|n| n <= COPY_BELOW));
        if copied {
            let bytes = std::fs::read(&path).map_err(|error| {
                reader_error(ReaderError::Io {
                    path: path.clone(),
                    error,
                })
            })?;
            let trace = Trace::from_bytes(&path, bytes).map_err(reader_error)?;
            return Ok(Shared {
                trace,
                copied,
                cow: std::sync::OnceLock::new(),
                whole: Default::default(),
            });
        }
        let trace = Trace::open(&path).map_err(reader_error)?;
        let cow = match Source::map_copy_on_write(&path) {
            Ok(s) if s.len() as u64 == trace.file_len() => Ok(Arc::new(s)),
            Ok(s) => Err(format!(
                "{}: the file changed while it was opened ({} bytes, then {})",
                path.display(),
                trace.file_len(),
                s.len()
            )),
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
        Ok(Shared {
            trace,
            copied,
            cow: std::sync::OnceLock::from(cow),
            whole: Default::default(),
        })
    }

    fn cow(&self) -> PyResult<&Arc<Source>> {
        self.cow
            .get_or_init(|| {
                Ok(Arc::new(Source::Owned(
                    self.trace.source().bytes().to_vec(),
                )))
            })
            .as_ref()
            .map_err(|e| TraceIOError::new_err(format!("cannot map for torch: {e}")))
    }
}

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
fn torch_dtype<'py>(
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
    source: Arc<Source>,
    /// Byte offset in the file of element (0, …, 0).
    offset: u64,
    shape: Vec<u64>,
    strides: Vec<i64>,
    typestr: &'static str,
    writable: bool,
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

/// A `Trace` is a `.tdump` trace or a `.gguf` file opened read-only and
/// memory-mapped. Iterate it for its tensors in record (execution) order.
#[pyclass(frozen, module = "tracedump", name = "Trace")]
#[derive(Debug)]
pub struct PyTrace {
    inner: RwLock<Option<Arc<Shared>>>,
    path: PathBuf,
}

impl PyTrace {
    pub fn open(path: PathBuf, copy: Option<bool>) -> PyResult<PyTrace> {
        let path = std::path::absolute(&path).unwrap_or(path);
        let shared = Shared::open(path.clone(), copy)?;
        Ok(PyTrace {
            inner: RwLock::new(Some(Arc::new(shared))),
            path,
        })
    }

    pub fn shared(&self) -> PyResult<Arc<Shared>> {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        guard.clone().ok_or_else(|| {
            TraceError::new_err(format!("{}: the trace is closed", self.path.display()))
        })
    }

    fn tensor_at(shared: &Arc<Shared>, id: u64) -> PyResult<PyTensor> {
        shared.trace.tensor(id).map_err(reader_error)?;
        Ok(PyTensor {
            shared: Arc::clone(shared),
            id,
        })
    }
}

fn path_arg(path: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    let fspath = path.py().import("os")?.getattr("fspath")?.call1((path,))?;
    fspath
        .extract::<PathBuf>()
        .map_err(|_| PyTypeError::new_err("path must be str or os.PathLike[str]"))
}

/// Open a trace (`.tdump`) or a GGUF file. `copy=True` reads it into
/// memory, `False` maps it; the default copies files up to 64 MiB (arrays
/// from a copied file survive the file being truncated or deleted).
#[pyfunction]
#[pyo3(signature = (path, *, copy=None))]
pub fn open(path: &Bound<'_, PyAny>, copy: Option<bool>) -> PyResult<PyTrace> {
    PyTrace::open(path_arg(path)?, copy)
}

/// The shard files `path` names, sorted, by the CLI's rules
/// (`trace_tools::shards::shard_files`): a directory's `*.tdump` files, or
/// the files a `dir/pattern*.tdump` glob matches.
#[pyfunction]
pub fn _shard_files(path: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let files = trace_tools::shards::shard_files(&path_arg(path)?).map_err(tools_error)?;
    Ok(files.iter().map(|f| f.display().to_string()).collect())
}

/// Whether `path` names shards (`trace_tools::shards::is_sharded`).
#[pyfunction]
pub fn _is_sharded(path: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(trace_tools::shards::is_sharded(&path_arg(path)?))
}

#[pymethods]
impl PyTrace {
    #[new]
    #[pyo3(signature = (path, *, copy=None))]
    fn py_new(path: &Bound<'_, PyAny>, copy: Option<bool>) -> PyResult<PyTrace> {
        open(path, copy)
    }

    /// Whether the file was read into memory when opened (else it is mapped).
    #[getter]
    fn copied(&self) -> PyResult<bool> {
        Ok(self.shared()?.copied)
    }

    /// The file's path.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// Number of tensors.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.shared()?.trace.len())
    }

    fn __iter__(&self) -> PyResult<TensorIter> {
        Ok(TensorIter {
            shared: self.shared()?,
            pos: Mutex::new(0),
        })
    }

    /// `trace["name"]` (first occurrence), `trace["name#k"]` (the k-th, from
    /// 0), or `trace[i]` (the i-th tensor in record order).
    fn __getitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let shared = self.shared()?;
        if let Ok(name) = key.cast::<PyString>() {
            let id = shared.trace.resolve(name.to_str()?).map_err(reader_error)?;
            return Self::tensor_at(&shared, id);
        }
        if let Ok(i) = key.extract::<i64>() {
            let ids = shared.trace.tensor_ids();
            let n = ids.len() as i64;
            let j = if i < 0 { i + n } else { i };
            if j < 0 || j >= n {
                return Err(PyIndexError::new_err(format!(
                    "tensor index {i} out of range ({n} tensors)"
                )));
            }
            return Self::tensor_at(&shared, ids[j as usize]);
        }
        Err(PyTypeError::new_err(
            "index a trace by tensor name (str) or position (int)",
        ))
    }

    fn __contains__(&self, name: &str) -> PyResult<bool> {
        Ok(self.shared()?.trace.resolve(name).is_ok())
    }

    /// The tensor named `name` (see `trace[name]`), or `default`.
    #[pyo3(signature = (name, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared()?;
        match shared.trace.resolve(name) {
            Ok(id) => Ok(Bound::new(py, Self::tensor_at(&shared, id)?)?.into_any()),
            Err(_) => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    /// Every occurrence of `name`, in record order.
    fn find(&self, name: &str) -> PyResult<Vec<PyTensor>> {
        let shared = self.shared()?;
        shared
            .trace
            .find(name)
            .iter()
            .map(|&id| Self::tensor_at(&shared, id))
            .collect()
    }

    /// Tensor names, each once, in order of first occurrence.
    fn names(&self) -> PyResult<Vec<String>> {
        let shared = self.shared()?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for &id in shared.trace.tensor_ids() {
            let name = shared.trace.record_name(id).unwrap_or("");
            if seen.insert(name) {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    /// Tensors whose name matches `regex` (Rust regex syntax, anywhere in
    /// the name) and that have this layer, step and role; None matches all.
    #[pyo3(signature = (regex=None, layer=None, step=None, role=None))]
    fn filter(
        &self,
        regex: Option<&str>,
        layer: Option<i64>,
        step: Option<i64>,
        role: Option<String>,
    ) -> PyResult<Vec<PyTensor>> {
        let shared = self.shared()?;
        let name = regex
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| PyValueError::new_err(format!("bad regex: {e}")))?;
        let ids = shared
            .trace
            .filter(&TensorFilter {
                name,
                layer,
                step,
                role,
            })
            .map_err(reader_error)?;
        ids.iter().map(|&id| Self::tensor_at(&shared, id)).collect()
    }

    /// Run metadata (a dict of Python values).
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        metadata_to_py(py, self.shared()?.trace.run_metadata())
    }

    /// Format version (major, minor); (0, 0) for GGUF.
    #[getter]
    fn version(&self) -> PyResult<(u16, u16)> {
        Ok(self.shared()?.trace.version())
    }

    /// Whether the writer finished the file (footer present).
    #[getter]
    fn is_finished(&self) -> PyResult<bool> {
        Ok(self.shared()?.trace.is_finished())
    }

    /// Whether this is a GGUF file.
    #[getter]
    fn is_gguf(&self) -> PyResult<bool> {
        Ok(self.shared()?.trace.is_gguf())
    }

    /// For an unfinished file: {"offset", "bytes", "reason"} of the torn tail.
    #[getter]
    fn torn_tail<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let shared = self.shared()?;
        let Some(t) = shared.trace.torn_tail() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("offset", t.offset)?;
        d.set_item("bytes", t.bytes)?;
        d.set_item("reason", &t.reason)?;
        Ok(Some(d))
    }

    /// Things noticed while opening that are not errors.
    #[getter]
    fn warnings(&self) -> PyResult<Vec<String>> {
        Ok(self.shared()?.trace.warnings().to_vec())
    }

    /// Check every checksum, padding byte, bound and lineage replay.
    fn verify(&self, py: Python<'_>) -> PyResult<VerifyReport> {
        let shared = self.shared()?;
        let rep = py.detach(|| shared.trace.verify());
        Ok(VerifyReport { rep })
    }

    /// Drop this object's reference to the file. Tensors and arrays made
    /// from it keep the mapping alive until they are gone.
    fn close(&self) {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        *guard = None;
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        match self.shared() {
            Err(_) => format!("Trace({:?}, closed)", self.path.display().to_string()),
            Ok(s) => format!(
                "Trace({:?}, {} tensors, {})",
                self.path.display().to_string(),
                s.trace.len(),
                if s.trace.is_gguf() {
                    "gguf"
                } else if s.trace.is_finished() {
                    "finished"
                } else {
                    "unfinished"
                }
            ),
        }
    }

    fn _repr_html_(&self) -> String {
        const ROWS: usize = 40;
        let Ok(shared) = self.shared() else {
            return format!(
                "<b>Trace</b> <code>{}</code> (closed)",
                html_escape(&self.path.display().to_string())
            );
        };
        let t = &shared.trace;
        let mut h = format!(
            "<div><b>Trace</b> <code>{}</code>: {} tensors{}<table><thead><tr>\
             <th>#</th><th>name</th><th>dtype</th><th>shape</th><th>byte strides</th>\
             <th>layer</th><th>step</th><th>role</th></tr></thead><tbody>",
            html_escape(&self.path.display().to_string()),
            t.len(),
            if t.is_finished() { "" } else { " (unfinished)" }
        );
        for &id in t.tensor_ids().iter().take(ROWS) {
            match t.tensor(id) {
                Ok(i) => h.push_str(&format!(
                    "<tr><td>{id}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    html_escape(&i.name),
                    i.dtype,
                    i.layout.shape,
                    i.layout.byte_strides,
                    opt(i.layer),
                    opt(i.step),
                    html_escape(i.role.as_deref().unwrap_or(""))
                )),
                Err(e) => h.push_str(&format!(
                    "<tr><td>{id}</td><td colspan=7>{}</td></tr>",
                    html_escape(&e.to_string())
                )),
            }
        }
        if t.len() > ROWS {
            h.push_str(&format!(
                "<tr><td colspan=8>… {} more</td></tr>",
                t.len() - ROWS
            ));
        }
        h.push_str("</tbody></table></div>");
        h
    }
}

fn opt(v: Option<i64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// Iterator over a trace's tensors.
#[pyclass(frozen, module = "tracedump._tracedump")]
#[derive(Debug)]
pub struct TensorIter {
    shared: Arc<Shared>,
    pos: Mutex<usize>,
}

#[pymethods]
impl TensorIter {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self) -> PyResult<Option<PyTensor>> {
        let id = {
            let mut pos = self.pos.lock().unwrap_or_else(|e| e.into_inner());
            let Some(&id) = self.shared.trace.tensor_ids().get(*pos) else {
                return Ok(None);
            };
            *pos += 1;
            id
        };
        PyTrace::tensor_at(&self.shared, id).map(Some)
    }
}

/// What `Trace.verify()` found.
#[pyclass(frozen, module = "tracedump", name = "VerifyReport")]
#[derive(Debug)]
pub struct VerifyReport {
    rep: trace_reader::VerifyReport,
}

#[pymethods]
impl VerifyReport {
    /// Whether nothing was wrong.
    #[getter]
    fn ok(&self) -> bool {
        self.rep.is_ok()
    }

    /// Every fault: dicts with record, tensor, offset, message.
    #[getter]
    fn faults<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for f in &self.rep.faults {
            let d = PyDict::new(py);
            d.set_item("record", f.record)?;
            d.set_item("tensor", &f.tensor)?;
            d.set_item("offset", f.offset)?;
            d.set_item("message", &f.message)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// Records whose checksums were checked.
    #[getter]
    fn records(&self) -> u64 {
        self.rep.records
    }

    /// Tensors decoded and bounds-checked.
    #[getter]
    fn tensors(&self) -> u64 {
        self.rep.tensors
    }

    /// Bytes covered by checksums.
    #[getter]
    fn bytes(&self) -> u64 {
        self.rep.bytes
    }

    /// Lineages replayed against the recorded layouts.
    #[getter]
    fn lineages_replayed(&self) -> u64 {
        self.rep.lineages_replayed
    }

    /// Value checks left out past verify's budget of values (not faults).
    #[getter]
    fn values_unchecked(&self) -> u64 {
        self.rep.values_unchecked
    }

    fn __bool__(&self) -> bool {
        self.rep.is_ok()
    }

    fn __repr__(&self) -> String {
        let mut s = format!(
            "VerifyReport(ok={}, records={}, tensors={}, lineages_replayed={}, faults={})",
            if self.rep.is_ok() { "True" } else { "False" },
            self.rep.records,
            self.rep.tensors,
            self.rep.lineages_replayed,
            self.rep.faults.len()
        );
        for f in self.rep.faults.iter().take(5) {
            s.push_str(&format!("\n  {f}"));
        }
        s
    }
}

/// One tensor of a trace: its description, and its values as numpy or
/// torch arrays over the file's bytes.
#[pyclass(frozen, module = "tracedump", name = "Tensor")]
#[derive(Debug)]
pub struct PyTensor {
    shared: Arc<Shared>,
    id: u64,
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
            .shape
            .iter()
            .filter(|&&n| n != 0)
            .try_fold(8u64, |acc, &n| acc.checked_mul(n));
        if bytes.is_none_or(|b| b > i64::MAX as u64) {
            return Err(reader_error(ReaderError::Unsupported {
                tensor: info.name.clone(),
                what: format!(
                    "an array of shape {:?}: its extents multiply past what numpy and torch can describe",
                    info.layout.shape
                ),
            }));
        }
        Ok(())
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

    /// The f32 values (dequantized, rebuilt, or converted) as a new array.
    fn f32_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let view = self.view()?;
        let values = py.detach(|| view.to_f32()).map_err(reader_error)?;
        self.shaped(PyArray1::from_vec(py, values).into_any())
    }

    fn shaped<'py>(&self, arr: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let shape = PyTuple::new(arr.py(), &self.info()?.layout.shape)?;
        arr.call_method1("reshape", (shape,))
    }

    /// A numpy dtype for `dtype`: ml_dtypes' type for bf16/fp8 when
    /// ml_dtypes is installed, else `None` (the raw unsigned view is kept).
    fn ml_dtype<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyAny>> {
        py.import("ml_dtypes").ok()?.getattr(name).ok()
    }

    fn reinterpret<'py>(
        arr: Bound<'py, PyAny>,
        ml: Option<&'static str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match ml.and_then(|n| Self::ml_dtype(arr.py(), n)) {
            Some(t) => arr.call_method1("view", (t,)),
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
        PyTuple::new(py, &self.info()?.layout.shape)
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
        PyTuple::new(py, &self.info()?.layout.byte_strides)
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
        Ok(self.info()?.layout.storage_offset)
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
    /// `bfloat16` / `float8_e4m3fn` / `float8_e5m2` when ml_dtypes is
    /// installed, else as the raw `uint16` / `uint8` bits. Quantized and
    /// derived tensors come as a new f32 array (dequantized / rebuilt).
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let info = self.info()?;
        self.require_values(info)?;
        let Some((typestr, ml)) = numpy_type(info.dtype).filter(|_| !info.derived) else {
            return self.f32_array(py);
        };
        let layout = &info.layout;
        let offset = if layout.shape.contains(&0) {
            info.storage_file_offset()
        } else {
            info.storage_file_offset() + layout.storage_offset
        };
        let arr = self.mapped(
            py,
            MappedBytes {
                source: Arc::clone(self.shared.trace.source()),
                offset,
                shape: layout.shape.clone(),
                strides: layout.byte_strides.clone(),
                typestr,
                writable: false,
            },
        )?;
        Self::reinterpret(arr, ml)
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
            .filter(|_| layout.storage_offset % size == 0);
        let absolute = info.storage_file_offset() + layout.storage_offset;
        if let (Some(tname), Some(strides)) = (tname, &elems) {
            if absolute % size == 0 {
                // the common case, kept short: one call into torch
                let whole = self.whole_file(py, tname, size)?;
                let as_strided = AS_STRIDED.import(py, "torch", "as_strided")?;
                return as_strided.call1((
                    whole,
                    PyTuple::new(py, &layout.shape)?,
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
            return t.call_method1("reshape", (PyTuple::new(py, &layout.shape)?,));
        };
        let cow = self.shared.cow()?;
        let len = info.storage_len() - info.storage_len() % size;
        let bytes = self.mapped(
            py,
            MappedBytes {
                source: Arc::clone(cow),
                offset: info.storage_file_offset(),
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
                PyTuple::new(py, &layout.shape)?,
                PyTuple::new(py, strides)?,
                layout.storage_offset / size,
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
                    Some(name) => Self::ml_dtype(py, name).ok_or_else(|| {
                        PyValueError::new_err(format!("converting to {t} needs ml_dtypes"))
                    })?,
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
        self.mapped(
            py,
            MappedBytes {
                source: Arc::clone(self.shared.trace.source()),
                offset: info.storage_file_offset() + start,
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
                    i.name, i.dtype, i.layout.shape, i.layout.byte_strides
                );
                if i.layout.storage_offset != 0 {
                    s.push_str(&format!(", offset={}", i.layout.storage_offset));
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
            ("shape", format!("{:?}", i.layout.shape)),
            ("byte strides", format!("{:?}", i.layout.byte_strides)),
            (
                "element strides",
                i.element_strides()
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_else(|| "—".into()),
            ),
            (
                "storage",
                format!("{:?} +{}", i.storage, i.layout.storage_offset),
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
