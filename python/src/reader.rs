//! `Trace`: an open trace file, its tensors by name, id or filter, and
//! `verify()`. A `Tensor` (`tensor.rs`) shares the open file with it; the
//! arrays it hands out are made over [`MappedBytes`] (`arrays.rs`), so
//! they keep the file's mapping alive.

mod arrays;
mod tensor;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyList, PyString, PyTuple};
use trace_reader::{ReaderError, Source, TensorFilter, Trace};

use crate::convert::{html_escape, metadata_to_py};
use crate::errors::{io_error, reader_error, tools_error, TraceError};

pub use arrays::MappedBytes;
pub(crate) use arrays::{numpy_type, torch_type};
pub use tensor::PyTensor;

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
            .map_err(|e| io_error(format!("cannot map for torch: {e}")))
    }
}

/// A `Trace` is a `.tdump` trace or a `.gguf` file opened read-only and
/// memory-mapped: a read-only mapping (`collections.abc.Mapping`) from
/// keys (names; `name#k` for a repeated name's later occurrences) to
/// tensors, in record (execution) order.
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

/// The record ids `filter()` and `export()` choose: name regex (Rust
/// syntax), layer, step, role; None matches all.
fn filter_ids(
    trace: &Trace,
    regex: Option<&str>,
    layer: Option<i64>,
    step: Option<i64>,
    role: Option<String>,
) -> PyResult<Vec<u64>> {
    let name = regex
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| PyValueError::new_err(format!("bad regex: {e}")))?;
    trace
        .filter(&TensorFilter {
            name,
            layer,
            step,
            role,
        })
        .map_err(reader_error)
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

    /// The keys, in record (execution) order: a tensor's name, or
    /// `name#k` for the k-th occurrence (from 0) of a repeated name after
    /// the first, so every tensor has one key (`len(trace)` of them).
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        PyList::new(py, keys(&self.shared()?.trace))?.try_iter()
    }

    /// The keys (see iteration), as `collections.abc.Mapping.keys()`.
    fn keys<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        mapping_view(slf, "KeysView")
    }

    /// The tensors, in record order, as `collections.abc.Mapping.values()`.
    fn values<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        mapping_view(slf, "ValuesView")
    }

    /// `(key, tensor)` pairs, in record order, as `Mapping.items()`.
    fn items<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        mapping_view(slf, "ItemsView")
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

    /// Whether `trace[key]` finds a tensor by name (`name`, `name#k`);
    /// False for anything but a str.
    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let shared = self.shared()?;
        Ok(match key.cast::<PyString>() {
            Ok(name) => shared.trace.resolve(name.to_str()?).is_ok(),
            Err(_) => false,
        })
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
        let ids = filter_ids(&shared.trace, regex, layer, step, role)?;
        ids.iter().map(|&id| Self::tensor_at(&shared, id)).collect()
    }

    /// Write the logical tensors (contiguous, row-major) to `path` as
    /// `to="safetensors"` or `"npz"`, what `tracedump export` writes:
    /// quantized tensors dequantized to f32, repeated names as `name#k`,
    /// stats-only tensors and views past the value limit skipped (nothing
    /// made up is written), and the file written atomically. `regex`,
    /// `layer`, `step` and `role` choose tensors as `filter()` does.
    /// Returns `{"exported": [names], "skipped": [(name, why)], "converted":
    /// [(name, what)], "bytes": size}`. Parquet tables come from the CLI
    /// (`tracedump export --to parquet`), whose build carries arrow-rs.
    #[pyo3(signature = (path, *, to="safetensors", regex=None, layer=None, step=None, role=None))]
    #[allow(clippy::too_many_arguments)]
    fn export<'py>(
        &self,
        py: Python<'py>,
        path: &Bound<'py, PyAny>,
        to: &str,
        regex: Option<&str>,
        layer: Option<i64>,
        step: Option<i64>,
        role: Option<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        use trace_tools::export::{export, ExportFormat};
        let format = match to.to_ascii_lowercase().as_str() {
            "safetensors" => ExportFormat::Safetensors,
            "npz" => ExportFormat::Npz,
            "parquet" => {
                return Err(PyValueError::new_err(
                    "to='parquet': the Python package writes safetensors and npz; `tracedump export --to parquet` writes Parquet",
                ))
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "to={other:?}: choose 'safetensors' or 'npz'"
                )))
            }
        };
        let out = path_arg(path)?;
        let shared = self.shared()?;
        let ids = filter_ids(&shared.trace, regex, layer, step, role)?;
        let sum = py
            .detach(|| export(&shared.trace, format, &out, Some(&ids)))
            .map_err(tools_error)?;
        let d = PyDict::new(py);
        d.set_item("exported", sum.exported)?;
        d.set_item("skipped", sum.skipped)?;
        d.set_item("converted", sum.converted)?;
        d.set_item("bytes", sum.bytes)?;
        Ok(d)
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
                    i.layout.shape(),
                    i.layout.byte_strides(),
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

/// Each tensor's key, in record order: its name the first time, `name#k`
/// the k-th time after (what `Trace::resolve` finds it by).
fn keys(trace: &Trace) -> Vec<String> {
    let mut seen: rustc_hash::FxHashMap<&str, usize> = Default::default();
    trace
        .tensor_ids()
        .iter()
        .map(|&id| {
            let name = trace.record_name(id).unwrap_or("");
            let k = seen.entry(name).or_default();
            *k += 1;
            match *k - 1 {
                0 => name.to_owned(),
                k => format!("{name}#{k}"),
            }
        })
        .collect()
}

/// `collections.abc.<view>(trace)`: the standard mapping view, built on
/// `__iter__`, `__getitem__`, `__len__` and `__contains__`.
fn mapping_view<'py>(trace: &Bound<'py, PyTrace>, view: &str) -> PyResult<Bound<'py, PyAny>> {
    trace
        .py()
        .import("collections.abc")?
        .getattr(view)?
        .call1((trace,))
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
