//! What `Writer.add` needs of a tensor: its dtype, layout and storage bytes.
//!
//! The common cases are read here, in Rust, without a Python call per
//! field: a numpy array of a plain little-endian dtype (its fields are read
//! from the array struct, its storage is the base array's buffer) and a CPU
//! torch tensor of a known dtype (a handful of method calls; its storage is
//! the tensor's whole untyped storage). Everything else goes through
//! `tracedump._layout.describe` (Python), which handles byte-swapped arrays,
//! ml_dtypes, non-CPU tensors, conjugate/negative views and empty tensors
//! with the same results.
//!
//! This is the one file of the bindings with `unsafe` code: the storage
//! bytes of such an array or tensor are read in place, as a slice made from
//! the address the object reports, while a strong reference to the object
//! and the GIL are held.

#![allow(unsafe_code)]

use numpy::prelude::*;
use numpy::{PyArrayDescr, PyReadonlyArray1, PyUntypedArray};
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use trace_format::{DType, Layout};

use crate::convert::dtype_from_name;
use crate::errors::TraceLayoutError;
use crate::reader::{numpy_type, torch_type};

/// A tensor as the writer records it.
pub(crate) struct Described<'py> {
    pub dtype: DType,
    /// `storage_offset` is the byte offset of element 0 in [`Described::storage`].
    pub layout: Layout,
    pub storage: Storage<'py>,
    /// What keeps the bytes alive, weakly referenceable: a numpy array's
    /// base array, a torch tensor's untyped storage.
    pub owner: Bound<'py, PyAny>,
}

/// The storage bytes of a described tensor.
pub(crate) enum Storage<'py> {
    /// A read-only uint8 array over them (`_layout.describe`).
    Array(PyReadonlyArray1<'py, u8>),
    /// `len` bytes at `addr`, inside the memory of `holder`, a live numpy
    /// array or torch tensor this value keeps a strong reference to.
    InPlace {
        addr: usize,
        len: usize,
        holder: Bound<'py, PyAny>,
    },
}

impl Storage<'_> {
    /// The bytes.
    pub fn bytes(&self) -> PyResult<&[u8]> {
        match self {
            Storage::Array(a) => a
                .as_slice()
                .map_err(|e| PyValueError::new_err(e.to_string())),
            Storage::InPlace { len: 0, .. } => Ok(&[]),
            Storage::InPlace { addr, len, holder } => {
                debug_assert!(!holder.is_none());
                // SAFETY: `addr..addr + len` is memory of a numpy array's
                // base buffer or of a CPU torch tensor's untyped storage, as
                // the object reported it just before (`numpy_parts` and
                // `torch_parts`: data pointer and extent of the base array,
                // data_ptr() and nbytes() of the storage). `holder` is a
                // strong reference to that array or tensor, which keeps the
                // memory allocated for as long as `self` (and so the slice,
                // which borrows `self`) lives. The `'py` lifetime means the
                // GIL is held throughout: no other thread runs Python code
                // that could resize the array or storage in place meanwhile
                // (numpy refuses to resize an array with other references;
                // `Writer.add` does not release the GIL while it uses the
                // bytes). The bytes are only read, and u8 has no invalid
                // values or alignment.
                Ok(unsafe { std::slice::from_raw_parts(*addr as *const u8, *len) })
            }
        }
    }
}

/// Describe `tensor` (a numpy array, torch tensor, or anything
/// `numpy.asarray` takes).
pub(crate) fn describe<'py>(
    py: Python<'py>,
    tensor: &Bound<'py, PyAny>,
) -> PyResult<Described<'py>> {
    if let Ok(array) = tensor.cast::<PyUntypedArray>() {
        if let Some(d) = numpy_parts(array)? {
            return Ok(d);
        }
    } else if let Some(d) = torch_parts(py, tensor)? {
        return Ok(d);
    }
    described_in_python(py, tensor)
}

/// `tracedump._layout.describe`, for every case.
fn described_in_python<'py>(
    py: Python<'py>,
    tensor: &Bound<'py, PyAny>,
) -> PyResult<Described<'py>> {
    let d = py
        .import(intern!(py, "tracedump._layout"))?
        .getattr(intern!(py, "describe"))?
        .call1((tensor,))?;
    let (dtype, shape, strides, offset, buffer, owner): (
        String,
        Vec<u64>,
        Vec<i64>,
        u64,
        PyReadonlyArray1<'py, u8>,
        Bound<'py, PyAny>,
    ) = d.extract()?;
    let dtype = dtype_from_name(&dtype)?;
    let layout = Layout::new(shape, strides, offset)
        .map_err(|e| TraceLayoutError::new_err(e.to_string()))?;
    Ok(Described {
        dtype,
        layout,
        storage: Storage::Array(buffer),
        owner,
    })
}

/// Our dtype for a numpy dtype read in place: one whose typestr (byte
/// order, kind, size) is in [`numpy_type`]'s table without an ml_dtypes
/// name; native order counts as little-endian on a little-endian host.
fn numpy_dtype(d: &Bound<'_, PyArrayDescr>) -> Option<DType> {
    if d.has_fields() || d.has_subarray() {
        return None;
    }
    let order = match d.byteorder() {
        b'=' if cfg!(target_endian = "little") => b'<',
        o => o,
    };
    let size = u8::try_from(d.itemsize()).ok().filter(|&n| n < 10)?;
    let typestr = [order, d.kind(), b'0' + size];
    DType::all().find(|&t| matches!(numpy_type(t), Some((ts, None)) if ts.as_bytes() == typestr))
}

/// Byte range `[lo, hi)` an array touches, relative to its element 0
/// (`_layout._extent`); `None` on overflow.
fn extent(shape: &[usize], strides: &[isize], itemsize: usize) -> Option<(isize, isize)> {
    let (mut lo, mut hi) = (0isize, 0isize);
    for (&n, &s) in shape.iter().zip(strides) {
        if n > 1 {
            let reach = isize::try_from(n - 1).ok()?.checked_mul(s)?;
            if reach < 0 {
                lo = lo.checked_add(reach)?;
            } else {
                hi = hi.checked_add(reach)?;
            }
        }
    }
    Some((lo, hi.checked_add(isize::try_from(itemsize).ok()?)?))
}

/// A numpy array's data pointer.
fn data_address(a: &Bound<'_, PyUntypedArray>) -> usize {
    // SAFETY: `as_array_ptr` points at the live array object `a` refers to
    // (it holds a reference); reading its `data` field is a plain load.
    unsafe { (*a.as_array_ptr()).fields.data as usize }
}

/// `numpy_parts` of `_layout._describe_numpy`; `None` when the array needs
/// the Python path (a dtype not read here, or no elements).
fn numpy_parts<'py>(a: &Bound<'py, PyUntypedArray>) -> PyResult<Option<Described<'py>>> {
    let Some(dtype) = numpy_dtype(&a.dtype()) else {
        return Ok(None);
    };
    let (shape, strides) = (a.shape(), a.strides());
    if shape.contains(&0) {
        return Ok(None);
    }
    let itemsize = a.dtype().itemsize();
    // the base buffer: the last ndarray of the base chain
    let py = a.py();
    let mut root = a.clone();
    loop {
        // SAFETY: as in `data_address`; `base` is null or a reference the
        // array owns, kept alive by `root` (which we hold) for this loop.
        let base = unsafe { (*root.as_array_ptr()).fields.base };
        if base.is_null() {
            break;
        }
        // SAFETY: `base` is a valid, live object pointer (above); a new
        // strong reference is taken.
        let base = unsafe { Bound::from_borrowed_ptr(py, base) };
        match base.cast_into::<PyUntypedArray>() {
            Ok(b) => root = b,
            Err(_) => break,
        }
    }
    let Some((lo, hi)) = extent(shape, strides, itemsize) else {
        return Ok(None);
    };
    let addr = data_address(a);
    let (mut start, mut end) = (addr.wrapping_add_signed(lo), addr.wrapping_add_signed(hi));
    if !root.is(a) && !root.shape().contains(&0) {
        let Some((rlo, rhi)) = extent(root.shape(), root.strides(), root.dtype().itemsize()) else {
            return Ok(None);
        };
        let raddr = data_address(&root);
        start = start.min(raddr.wrapping_add_signed(rlo));
        end = end.max(raddr.wrapping_add_signed(rhi));
    }
    let layout = Layout::new(
        shape.iter().map(|&n| n as u64).collect(),
        strides.iter().map(|&s| s as i64).collect(),
        (addr - start) as u64,
    )
    .map_err(|e| TraceLayoutError::new_err(e.to_string()))?;
    Ok(Some(Described {
        dtype,
        layout,
        storage: Storage::InPlace {
            addr: start,
            len: end - start,
            holder: a.clone().into_any(),
        },
        owner: root.into_any(),
    }))
}

/// What is needed of torch, looked up once torch is imported.
struct Torch {
    tensor: Py<PyType>,
    strided: Py<PyAny>,
    /// torch dtype objects with our dtype and their element size.
    dtypes: Vec<(Py<PyAny>, DType, u64)>,
}

static TORCH: PyOnceLock<Torch> = PyOnceLock::new();

/// The torch lookups, when the process has imported torch.
fn torch(py: Python<'_>) -> PyResult<Option<&'static Torch>> {
    if let Some(t) = TORCH.get(py) {
        return Ok(Some(t));
    }
    let modules = py
        .import(intern!(py, "sys"))?
        .getattr(intern!(py, "modules"))?;
    let Ok(torch) = modules.get_item("torch") else {
        return Ok(None);
    };
    // torch's names of our dtypes (`torch_type`), where this torch has them
    let mut dtypes = Vec::new();
    for dtype in DType::all() {
        if let (Some(name), Some(size)) = (torch_type(dtype), dtype.element_bytes()) {
            if let Ok(obj) = torch.getattr(name) {
                dtypes.push((obj.unbind(), dtype, size as u64));
            }
        }
    }
    let t = Torch {
        tensor: torch.getattr("Tensor")?.cast_into::<PyType>()?.unbind(),
        strided: torch.getattr("strided")?.unbind(),
        dtypes,
    };
    Ok(Some(TORCH.get_or_init(py, || t)))
}

/// `_layout._describe_torch` for a CPU strided tensor of a dtype in
/// [`Torch::dtypes`] that is not a negative view; `None` otherwise.
fn torch_parts<'py>(py: Python<'py>, t: &Bound<'py, PyAny>) -> PyResult<Option<Described<'py>>> {
    let Some(torch) = torch(py)? else {
        return Ok(None);
    };
    if !t.is_instance(torch.tensor.bind(py))? {
        return Ok(None);
    }
    if !t.getattr(intern!(py, "is_cpu"))?.is_truthy()?
        || !t.getattr(intern!(py, "layout"))?.is(torch.strided.bind(py))
        || t.call_method0(intern!(py, "is_neg"))?.is_truthy()?
    {
        return Ok(None);
    }
    let dtype_obj = t.getattr(intern!(py, "dtype"))?;
    let Some(&(_, dtype, isz)) = torch
        .dtypes
        .iter()
        .find(|(o, _, _)| o.bind(py).is(&dtype_obj))
    else {
        return Ok(None);
    };
    let shape: Vec<u64> = t.getattr(intern!(py, "shape"))?.extract()?;
    if shape.contains(&0) {
        return Ok(None);
    }
    let strides: Vec<i64> = t.call_method0(intern!(py, "stride"))?.extract()?;
    let offset: u64 = t.call_method0(intern!(py, "storage_offset"))?.extract()?;
    let storage = t.call_method0(intern!(py, "untyped_storage"))?;
    let addr: usize = storage.call_method0(intern!(py, "data_ptr"))?.extract()?;
    let len: usize = storage.call_method0(intern!(py, "nbytes"))?.extract()?;
    let isz_i = isz as i64;
    let (Some(strides), Some(offset)) = (
        strides
            .iter()
            .map(|s| s.checked_mul(isz_i))
            .collect::<Option<Vec<i64>>>(),
        offset.checked_mul(isz),
    ) else {
        return Ok(None);
    };
    if addr == 0 {
        return Ok(None);
    }
    let layout = Layout::new(shape, strides, offset)
        .map_err(|e| TraceLayoutError::new_err(e.to_string()))?;
    Ok(Some(Described {
        dtype,
        layout,
        storage: Storage::InPlace {
            addr,
            len,
            holder: t.clone(),
        },
        owner: storage,
    }))
}

/// What `_describe` returns.
type DescribedFields = (&'static str, Vec<u64>, Vec<i64>, u64, usize, usize, bool);

/// `_describe(t)`, for the tests: what the writer reads of `t`, as
/// `(dtype, shape, byte strides, offset of element 0 in the storage,
/// storage address, storage bytes, read in Rust)`; `_layout.describe` gives
/// the same fields for every tensor the Rust path reads.
#[pyfunction]
pub(crate) fn _describe<'py>(py: Python<'py>, t: &Bound<'py, PyAny>) -> PyResult<DescribedFields> {
    let d = describe(py, t)?;
    let bytes = d.storage.bytes()?;
    Ok((
        d.dtype.name(),
        d.layout.shape.clone(),
        d.layout.byte_strides.clone(),
        d.layout.storage_offset,
        bytes.as_ptr() as usize,
        bytes.len(),
        matches!(d.storage, Storage::InPlace { .. }),
    ))
}
