//! `Writer`: numpy arrays and torch tensors recorded with their real
//! strides over their real storage.
//!
//! `describe` (Rust for plain numpy arrays and CPU torch tensors,
//! `tracedump._layout.describe` in Python for the rest) reads a tensor's
//! dtype, shape, byte strides and offset, and its storage: a torch tensor's
//! whole untyped storage, a numpy array's base buffer. The writer here
//! decides how to record it:
//!
//! 1. If its bytes lie inside a region this writer already recorded, whose
//!    owner (the base array or tensor) is still alive and whose bytes are
//!    unchanged (crc32c, the writer's checksum of the record's payload
//!    against one of the bytes now), it is a view of that record: no bytes are written
//!    twice. With `lineage="auto"` and a region recorded as a tensor, that
//!    tensor becomes the parent, with a `view` step.
//! 2. Else, a contiguous tensor is recorded with its own bytes (and becomes
//!    a region later views can use).
//! 3. Else the storage is recorded once and the tensor as a view of it.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use numpy::PyReadonlyArray1;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyWeakrefMethods, PyWeakrefReference};
use rustc_hash::FxHashMap;
use trace_writer::{CaptureFilter, EngineOp, Lineage, Op, Regions, TensorMeta, Writer};

use crate::convert::{dtype_from_name, py_to_metadata, py_to_op};
use crate::describe::{describe, owner_weakref};
use crate::errors::{writer_error, TraceError, TraceLayoutError};

/// A region of bytes this writer recorded, kept alive by the base array
/// or tensor it came from (while it lives, the address cannot be reused
/// for other data): the writer's [`trace_writer::Regions`] does the rest.
type Region = trace_writer::Region<Py<PyWeakrefReference>>;

#[derive(Debug)]
struct State {
    writer: Option<Writer>,
    regions: Regions<Py<PyWeakrefReference>>,
    names: Names,
}

/// Records numpy arrays and torch tensors into a `.tdump` trace.
#[pyclass(frozen, module = "tracedump", name = "Writer")]
#[derive(Debug)]
pub struct PyWriter {
    state: Mutex<State>,
    path: PathBuf,
    /// The writer's capture filter, consulted before a tensor is described
    /// (without the lock).
    filter: CaptureFilter,
    /// `close()` was called.
    closed: AtomicBool,
}

/// The last record id of each name added, for lineage parents given by
/// name. Names are appended to one buffer as they come (no allocation per
/// record) and hashed only when a parent is first looked up by name.
#[derive(Debug, Default)]
struct Names {
    bytes: String,
    /// (end of the name in `bytes`, record id), in the order added; each
    /// name starts where the previous one ends.
    added: Vec<(usize, u64)>,
    /// Last id of each name among `added[..indexed]`.
    index: FxHashMap<String, u64>,
    indexed: usize,
}

impl Names {
    fn insert(&mut self, name: &str, id: u64) {
        self.bytes.push_str(name);
        self.added.push((self.bytes.len(), id));
    }

    fn get(&mut self, name: &str) -> Option<u64> {
        let mut start = match self.indexed {
            0 => 0,
            n => self.added[n - 1].0,
        };
        for &(end, id) in &self.added[self.indexed..] {
            self.index.insert(self.bytes[start..end].to_owned(), id);
            start = end;
        }
        self.indexed = self.added.len();
        self.index.get(name).copied()
    }
}

impl PyWriter {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed(&self) -> PyErr {
        TraceError::new_err(format!("{}: the writer is closed", self.path.display()))
    }
}

/// A lineage parent as given: a record id or a name recorded earlier.
enum ParentRef {
    Id(u64),
    Name(String),
}

/// `err`, raised while reading the tensor `name`, with that name in front of
/// its message: the same Python type (TypeError, ValueError, RuntimeError,
/// NotImplementedError or ours), the original as its `__cause__`. Other
/// types, or a message that names the tensor already, pass unchanged.
fn naming_tensor(py: Python<'_>, name: &str, err: PyErr) -> PyErr {
    let ty = err.get_type(py);
    let plain = [
        py.get_type::<PyTypeError>(),
        py.get_type::<PyValueError>(),
        py.get_type::<pyo3::exceptions::PyRuntimeError>(),
        py.get_type::<pyo3::exceptions::PyNotImplementedError>(),
    ]
    .iter()
    .any(|t| ty.is(t))
        || ty.is_subclass_of::<TraceError>().unwrap_or(false);
    let message = err
        .value(py)
        .str()
        .map(|s| s.to_string())
        .unwrap_or_default();
    if !plain || message.contains(&format!("`{name}`")) {
        return err;
    }
    let named = PyErr::from_type(ty, format!("tensor `{name}`: {message}"));
    named.set_cause(py, Some(err));
    named
}

/// `lineage=` of `add()`: None, "auto", or a dict with "parents" (ids or
/// names), "ops" (op dicts) and "engine_op". Parsed before the
/// writer is locked (it may run Python code); names resolve under the lock.
fn parse_lineage(lineage: Option<&Bound<'_, PyAny>>) -> PyResult<(Lineage, Vec<ParentRef>, bool)> {
    let Some(l) = lineage.filter(|l| !l.is_none()) else {
        return Ok((Lineage::default(), Vec::new(), false));
    };
    if let Ok(s) = l.cast::<PyString>() {
        return match s.to_str()? {
            "auto" => Ok((Lineage::default(), Vec::new(), true)),
            other => Err(PyValueError::new_err(format!(
                "lineage={other:?}: expected \"auto\" or a dict(parents=, ops=, engine_op=)"
            ))),
        };
    }
    let mut out = Lineage::default();
    let mut parents_out = Vec::new();
    let ops_of = |ops: &Bound<'_, PyAny>| -> PyResult<Vec<Op>> {
        let mut v = Vec::new();
        for op in ops.try_iter()? {
            v.push(py_to_op(op?.cast::<PyDict>()?)?);
        }
        Ok(v)
    };
    if let Ok(d) = l.cast::<PyDict>() {
        if let Some(parents) = d.get_item("parents")? {
            for p in parents.try_iter()? {
                let p = p?;
                parents_out.push(match p.extract::<String>() {
                    Ok(name) => ParentRef::Name(name),
                    Err(_) => ParentRef::Id(p.extract::<u64>()?),
                });
            }
        }
        if let Some(ops) = d.get_item("ops")? {
            out.ops = ops_of(&ops)?;
        }
        if let Some(e) = d.get_item("engine_op")? {
            let e = e.cast::<PyDict>()?;
            let get = |k: &str| -> PyResult<Option<Bound<'_, PyAny>>> { e.get_item(k) };
            out.engine_op = Some(EngineOp {
                engine: get("engine")?
                    .map(|v| v.extract())
                    .transpose()?
                    .unwrap_or_default(),
                op: get("op")?
                    .map(|v| v.extract())
                    .transpose()?
                    .unwrap_or_default(),
                params: get("params")?
                    .map(|v| v.extract::<Vec<u8>>())
                    .transpose()?
                    .unwrap_or_default(),
            });
        }
        if !out.ops.is_empty() && parents_out.is_empty() {
            return Err(PyValueError::new_err(
                "lineage ops need the parents they start from (lineage={\"parents\": [...], \"ops\": [...]})",
            ));
        }
        return Ok((out, parents_out, false));
    }
    Err(PyTypeError::new_err(
        "lineage must be None, \"auto\", or a dict(parents=, ops=, engine_op=)",
    ))
}

fn resolve(names: &mut Names, p: ParentRef) -> PyResult<u64> {
    match p {
        ParentRef::Id(id) => Ok(id),
        ParentRef::Name(n) => names.get(&n).ok_or_else(|| {
            PyValueError::new_err(format!(
                "lineage parent `{n}` was not recorded by this writer"
            ))
        }),
    }
}

#[pymethods]
impl PyWriter {
    /// Create (truncate) `path`; keyword arguments are run metadata, added
    /// to the defaults (command line, time, pid, tracedump version).
    ///
    /// `mode="background"` hands records to a writer thread: `add` then
    /// costs one copy of the bytes, and at most `queue_bytes` wait in memory;
    /// when they are used up `when_full="block"` waits for room and
    /// `"drop"` drops the record (counted in `dropped`). With
    /// `preallocate=True` the queue's memory (`queue_bytes` of it) is
    /// allocated and touched now (about 0.1 s per 256 MiB), so that `add`
    /// of a large tensor is a plain copy into memory already mapped rather
    /// than a copy that also faults fresh pages in. `include` (a regex
    /// searched in the name), `layers` and `steps` (iterables of ints)
    /// restrict what is recorded; tensors without a layer (step) pass a
    /// layer (step) filter.
    #[new]
    #[pyo3(signature = (path, *, mode="sync", queue_bytes=256 << 20, when_full="block", preallocate=false, include=None, layers=None, steps=None, **run_metadata))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        path: &Bound<'_, PyAny>,
        mode: &str,
        queue_bytes: u64,
        when_full: &str,
        preallocate: bool,
        include: Option<&str>,
        layers: Option<Vec<i64>>,
        steps: Option<Vec<i64>>,
        run_metadata: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let path: PathBuf = path
            .py()
            .import("os")?
            .getattr("fspath")?
            .call1((path,))?
            .extract()?;
        let when_full = match when_full {
            "block" => trace_writer::WhenFull::Block,
            "drop" => trace_writer::WhenFull::Drop,
            other => {
                return Err(PyValueError::new_err(format!(
                    "when_full must be \"block\" or \"drop\", not {other:?}"
                )))
            }
        };
        let mode = match mode {
            "sync" => trace_writer::Mode::Sync,
            "background" => trace_writer::Mode::Background {
                budget_bytes: queue_bytes,
                when_full,
            },
            other => {
                return Err(PyValueError::new_err(format!(
                    "mode must be \"sync\" or \"background\", not {other:?}"
                )))
            }
        };
        let mut filter = match include {
            Some(p) => trace_writer::CaptureFilter::names(p)
                .map_err(|e| PyValueError::new_err(format!("include: {e}")))?,
            None => trace_writer::CaptureFilter::all(),
        };
        if let Some(l) = layers {
            filter = filter.with_layers(l);
        }
        if let Some(s) = steps {
            filter = filter.with_steps(s);
        }
        let mut meta = trace_writer::default_run_metadata();
        for (k, v) in py_to_metadata(run_metadata)?.0 {
            meta.insert(k, v);
        }
        let writer = Writer::with_options(
            &path,
            meta,
            trace_writer::WriterOptions {
                mode,
                filter: filter.clone(),
                ..trace_writer::WriterOptions::default()
            },
        )
        .map_err(writer_error)?;
        if preallocate {
            writer.preallocate().map_err(writer_error)?;
        }
        Ok(PyWriter {
            state: Mutex::new(State {
                writer: Some(writer),
                regions: Regions::new(),
                names: Names::default(),
            }),
            path,
            filter,
            closed: AtomicBool::new(false),
        })
    }

    /// The file being written.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// Records dropped so far (background mode with `when_full="drop"`).
    #[getter]
    fn dropped(&self) -> PyResult<u64> {
        let st = self.lock();
        Ok(st.writer.as_ref().ok_or_else(|| self.closed())?.dropped())
    }

    /// Whether a tensor with this name, layer and step would be recorded.
    #[pyo3(signature = (name, *, layer=None, step=None))]
    fn wants(&self, name: &str, layer: Option<i64>, step: Option<i64>) -> PyResult<bool> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(self.closed());
        }
        Ok(self.filter.accepts(name, step, layer))
    }

    /// Record a numpy array or torch tensor with its real layout; returns
    /// its record id. `lineage="auto"` records a view of a base added
    /// earlier by this writer as its child (parent + `view` step); or pass
    /// `dict(parents=[ids or names], ops=[op dicts], engine_op=...)`.
    /// `ggml=(ne, nb)` keeps ggml's layout. Other keyword arguments are
    /// metadata.
    #[pyo3(signature = (name, tensor, *, layer=None, step=None, role=None, lineage=None, ggml=None, **metadata))]
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        py: Python<'_>,
        name: &str,
        tensor: &Bound<'_, PyAny>,
        layer: Option<i64>,
        step: Option<i64>,
        role: Option<String>,
        lineage: Option<&Bound<'_, PyAny>>,
        ggml: Option<(Vec<i64>, Vec<u64>)>,
        metadata: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<u64>> {
        if !self.wants(name, layer, step)? {
            return Ok(None);
        }
        let parts = describe(py, tensor).map_err(|e| naming_tensor(py, name, e))?;
        let (lin, parent_refs, auto) = parse_lineage(lineage)?;
        let mut meta = TensorMeta {
            layer,
            step,
            role,
            metadata: py_to_metadata(metadata)?,
            ..Default::default()
        };
        if let Some((ne, nb)) = ggml {
            meta = meta.ggml_layout(&ne, &nb);
        }
        let owner = owner_weakref(&parts.owner);
        let buf = parts.storage.bytes()?;
        let base = buf.as_ptr() as usize;
        let (dtype, layout) = (parts.dtype, parts.layout);
        let span = layout
            .byte_span(dtype)
            .map_err(|e| TraceLayoutError::new_err(format!("tensor `{name}`: {e}")))?;

        let mut st = self.lock();
        let st = &mut *st;
        meta.lineage = lin;
        for p in parent_refs {
            meta.lineage.parents.push(resolve(&mut st.names, p)?);
        }
        let w = st.writer.as_ref().ok_or_else(|| self.closed())?;
        let Some((lo, hi)) = span else {
            // no elements: nothing to point at
            let id = w
                .add_tensor(name, dtype, layout.shape(), &[], meta)
                .map_err(writer_error)?;
            if let Some(id) = id {
                st.names.insert(name, id);
            }
            return Ok(id);
        };
        if lo < 0 || hi > buf.len() as i128 {
            return Err(TraceLayoutError::new_err(format!(
                "tensor `{name}`: bytes {lo}..{hi} lie outside its {}-byte storage",
                buf.len()
            )));
        }
        let (lo, hi) = (lo as usize, hi as usize);
        let (abs_lo, abs_hi) = (base + lo, base + hi);
        let elem0 = base + layout.storage_offset() as usize;

        // 1. a view of bytes already recorded
        let found = st
            .regions
            .find(
                abs_lo..abs_hi,
                base,
                buf,
                |owner| owner.bind(py).upgrade().is_some(),
                |id| w.payload_crc32c(id).ok().flatten(),
            )
            .map(|r| (r.id, r.is_tensor, r.start));
        let id = if let Some((region_id, is_tensor, start)) = found {
            let rebased = layout.clone().at_offset((elem0 - start) as u64);
            if auto && is_tensor {
                meta.lineage.parents.push(region_id);
                meta.lineage.ops.push(Op::View {
                    offset: rebased.storage_offset(),
                    shape: rebased.shape().to_vec(),
                    byte_strides: rebased.byte_strides().to_vec(),
                });
            }
            w.add_view(name, dtype, region_id, &rebased, meta)
                .map_err(writer_error)?
        } else if layout.is_contiguous(dtype) {
            // 2. its own bytes (their crc is asked of the writer when a
            // later view needs it: the recording thread does not checksum)
            let bytes = &buf[lo..hi];
            let added = w
                .add_tensor(name, dtype, layout.shape(), bytes, meta)
                .map_err(writer_error)?;
            if let (Some(id), Some(owner)) = (added, owner) {
                st.regions.push(
                    Region {
                        start: abs_lo,
                        len: hi - lo,
                        id,
                        is_tensor: true,
                        owner,
                    },
                    |owner| owner.bind(py).upgrade().is_some(),
                );
            }
            added
        } else {
            // 3. the storage once, the tensor as a view of it
            let sid = w
                .add_storage_with(
                    &format!("{name}.storage"),
                    buf,
                    trace_writer::Metadata::new().with("first_view", name),
                )
                .map_err(writer_error)?;
            if let Some(owner) = owner {
                st.regions.push(
                    Region {
                        start: base,
                        len: buf.len(),
                        id: sid,
                        is_tensor: false,
                        owner,
                    },
                    |owner| owner.bind(py).upgrade().is_some(),
                );
            }
            w.add_view(name, dtype, sid, &layout, meta)
                .map_err(writer_error)?
        };
        if let Some(id) = id {
            st.names.insert(name, id);
        }
        Ok(id)
    }

    /// Record statistics only (count, mean, std, min, max, …) of a numpy
    /// array or torch tensor, not its values.
    #[pyo3(signature = (name, tensor, *, layer=None, step=None, role=None, **metadata))]
    #[allow(clippy::too_many_arguments)]
    fn add_stats(
        &self,
        py: Python<'_>,
        name: &str,
        tensor: &Bound<'_, PyAny>,
        layer: Option<i64>,
        step: Option<i64>,
        role: Option<String>,
        metadata: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<u64>> {
        let d = py
            .import("tracedump._layout")?
            .getattr("contiguous_bytes")?
            .call1((tensor,))
            .map_err(|e| naming_tensor(py, name, e))?;
        let (dtype, shape, buffer): (String, Vec<u64>, PyReadonlyArray1<'_, u8>) = d.extract()?;
        let dtype = dtype_from_name(&dtype)?;
        let meta = TensorMeta {
            layer,
            step,
            role,
            metadata: py_to_metadata(metadata)?,
            ..Default::default()
        };
        let bytes = buffer
            .as_slice()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let mut st = self.lock();
        let w = st.writer.as_ref().ok_or_else(|| self.closed())?;
        let id = w
            .add_stats_of(name, dtype, &shape, bytes, meta)
            .map_err(writer_error)?;
        if let Some(id) = id {
            st.names.insert(name, id);
        }
        Ok(id)
    }

    /// Quantize f32 `values` (a numpy array or torch tensor, any layout;
    /// rows must be whole blocks) to `dtype` ("q8_0" or "q4_0", bit-exact
    /// with ggml's reference quantizer) and record the blocks.
    #[pyo3(signature = (name, values, dtype="q8_0", *, layer=None, step=None, role=None, **metadata))]
    #[allow(clippy::too_many_arguments)]
    fn add_quantized(
        &self,
        py: Python<'_>,
        name: &str,
        values: &Bound<'_, PyAny>,
        dtype: &str,
        layer: Option<i64>,
        step: Option<i64>,
        role: Option<String>,
        metadata: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<u64>> {
        let dtype = dtype_from_name(dtype)?;
        let d = py
            .import("tracedump._layout")?
            .getattr("f32_values")?
            .call1((values,))
            .map_err(|e| naming_tensor(py, name, e))?;
        let (shape, buffer): (Vec<u64>, PyReadonlyArray1<'_, f32>) = d.extract()?;
        let values = buffer
            .as_slice()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let meta = TensorMeta {
            layer,
            step,
            role,
            metadata: py_to_metadata(metadata)?,
            ..Default::default()
        };
        let mut st = self.lock();
        let w = st.writer.as_ref().ok_or_else(|| self.closed())?;
        let id = w
            .add_quantized(name, dtype, &shape, values, meta)
            .map_err(writer_error)?;
        if let Some(id) = id {
            st.names.insert(name, id);
        }
        Ok(id)
    }

    /// Record a tensor with no bytes of its own, rebuilt by readers from
    /// its parents by replaying `ops` on their values (SPEC.md §5.4): the
    /// mixed KV cache `concat(K_quant, K_hot) → permute`. `parents` are
    /// record ids or names recorded by this writer.
    #[pyo3(signature = (name, shape, parents, ops, dtype="f32", *, layer=None, step=None, role=None, **metadata))]
    #[allow(clippy::too_many_arguments)]
    fn add_derived(
        &self,
        name: &str,
        shape: Vec<u64>,
        parents: &Bound<'_, PyAny>,
        ops: &Bound<'_, PyAny>,
        dtype: &str,
        layer: Option<i64>,
        step: Option<i64>,
        role: Option<String>,
        metadata: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<u64>> {
        let dtype = dtype_from_name(dtype)?;
        let spec = PyDict::new(parents.py());
        spec.set_item("parents", parents)?;
        spec.set_item("ops", ops)?;
        let (lin, parent_refs, _) = parse_lineage(Some(spec.as_any()))?;
        let mut meta = TensorMeta {
            layer,
            step,
            role,
            metadata: py_to_metadata(metadata)?,
            lineage: lin,
            ..Default::default()
        };
        let mut st = self.lock();
        let st = &mut *st;
        for p in parent_refs {
            meta.lineage.parents.push(resolve(&mut st.names, p)?);
        }
        let w = st.writer.as_ref().ok_or_else(|| self.closed())?;
        let id = w
            .add_derived(name, dtype, &shape, meta)
            .map_err(writer_error)?;
        if let Some(id) = id {
            st.names.insert(name, id);
        }
        Ok(id)
    }

    /// Hand every record written so far to the operating system.
    fn flush(&self) -> PyResult<()> {
        let st = self.lock();
        st.writer
            .as_ref()
            .ok_or_else(|| self.closed())?
            .flush()
            .map_err(writer_error)
    }

    /// Write the footer index and close the file; returns {"records",
    /// "dropped", "bytes"}. Closing twice does nothing (returns None).
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let w = {
            let mut st = self.lock();
            st.regions.clear();
            self.closed.store(true, Ordering::Relaxed);
            st.writer.take()
        };
        let Some(w) = w else {
            return Ok(None);
        };
        let s = w.finish().map_err(writer_error)?;
        let d = PyDict::new(py);
        d.set_item("records", s.records)?;
        d.set_item("dropped", s.dropped)?;
        d.set_item("bytes", s.bytes)?;
        Ok(Some(d))
    }

    /// Whether `close()` was called.
    #[getter(closed)]
    fn is_closed(&self) -> bool {
        self.lock().writer.is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let st = self.lock();
        format!(
            "Writer({:?}, {})",
            self.path.display().to_string(),
            if st.writer.is_some() {
                "open"
            } else {
                "closed"
            }
        )
    }
}
