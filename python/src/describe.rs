//! What `Writer.add` needs of a tensor: its dtype, layout and storage bytes.
//!
//! The common cases are read here, in Rust: a numpy array of a plain
//! little-endian dtype (its fields are read from the array struct through
//! numpy's C API, its storage is the base array's buffer) and a CPU torch
//! tensor of a known dtype (its storage is the tensor's whole untyped
//! storage). A torch tensor is described by DLPack's C exchange API
//! (`dlpack.rs`), or where torch lacks it by its public attributes, with
//! its negative bit from `is_neg()` and its storage from
//! `untyped_storage()`: never through torch's private object layout, whose
//! members move between releases.
//! Everything else goes through `tracedump._layout.describe` (Python),
//! which handles byte-swapped arrays, ml_dtypes, non-CPU tensors,
//! conjugate/negative views and empty tensors with the same results.
//!
//! Besides `dlpack.rs`, this is the one file of the bindings with `unsafe`
//! code: the storage bytes of such an array or tensor are read in place, as a slice made from
//! the address the object reports, while a strong reference to the object
//! and the GIL are held. The writer's weak references to owners are made
//! here too, untracked by the cycle collector (`owner_weakref`).

#![allow(unsafe_code)]

use numpy::prelude::*;
use numpy::{PyArrayDescr, PyReadonlyArray1, PyUntypedArray};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyType, PyWeakrefReference};
use trace_format::{DType, Layout};

use crate::convert::dtype_from_name;
use crate::dlpack::{ExchangeApi, DL_CPU};
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
    /// DLPack's C exchange API as `torch.Tensor` publishes it, where this
    /// torch does.
    exchange: Option<ExchangeApi>,
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
    let tensor = torch.getattr("Tensor")?.cast_into::<PyType>()?;
    let t = Torch {
        exchange: ExchangeApi::of(&tensor),
        tensor: tensor.unbind(),
        strided: torch.getattr("strided")?.unbind(),
        dtypes,
    };
    Ok(Some(TORCH.get_or_init(py, || t)))
}

/// `_layout._describe_torch` for a CPU strided tensor of a dtype we
/// record, with its memory allocated and without the negative bit; `None`
/// otherwise (`_layout` then resolves or refuses it).
///
/// Read through documented interfaces only: DLPack's C exchange API where
/// the tensor's type publishes torch's, else the tensor's public methods and
/// attributes; then `is_neg()` and the untyped storage's `data_ptr()` and
/// `nbytes()`.
fn torch_parts<'py>(py: Python<'py>, t: &Bound<'py, PyAny>) -> PyResult<Option<Described<'py>>> {
    let Some(torch) = torch(py)? else {
        return Ok(None);
    };
    let ty = t.get_type();
    if !ty.is(torch.tensor.bind(py)) && !t.is_instance(torch.tensor.bind(py))? {
        return Ok(None);
    }
    let view = match &torch.exchange {
        Some(api) if api.accepts(&ty) => dlpack_view(py, t, api)?,
        _ => attribute_view(py, t, torch)?,
    };
    match view {
        Some(v) => in_storage(py, t, v),
        None => Ok(None),
    }
}

/// What a torch tensor reports of itself: strides in elements, `data` the
/// address of element 0.
struct TensorView {
    dtype: DType,
    element_bytes: u64,
    shape: Vec<u64>,
    strides: Vec<i64>,
    data: usize,
}

/// Our dtype for a DLPack `DLDataType` of one lane.
fn dlpack_dtype(code: u8, bits: u8) -> Option<DType> {
    // DLDataTypeCode: kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBfloat 4,
    // kDLBool 6, kDLFloat8_e4m3fn 10, kDLFloat8_e5m2 12
    Some(match (code, bits) {
        (0, 8) => DType::I8,
        (0, 16) => DType::I16,
        (0, 32) => DType::I32,
        (0, 64) => DType::I64,
        (1, 8) => DType::U8,
        (1, 16) => DType::U16,
        (1, 32) => DType::U32,
        (1, 64) => DType::U64,
        (2, 16) => DType::F16,
        (2, 32) => DType::F32,
        (2, 64) => DType::F64,
        (4, 16) => DType::BF16,
        (6, 8) => DType::Bool,
        (10, 8) => DType::F8_E4M3,
        (12, 8) => DType::F8_E5M2,
        _ => return None,
    })
}

/// [`TensorView`] of `t` through DLPack's C exchange API, and `is_neg()`
/// (DLPack has no negative bit). A conjugate view is complex, a dtype not
/// recorded, so `is_conj()` needs no call; a tensor DLPack cannot describe
/// (meta, sparse, nested) is left to `_layout`, which says why.
fn dlpack_view(
    py: Python<'_>,
    t: &Bound<'_, PyAny>,
    api: &ExchangeApi,
) -> PyResult<Option<TensorView>> {
    let v = match api.view(t) {
        Ok(v) => v,
        Err(e) if e.is_instance_of::<PyException>(py) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (Some(dtype), Some(shape), Some(strides)) = (
        dlpack_dtype(v.code, v.bits).filter(|_| v.lanes == 1),
        v.shape,
        v.strides,
    ) else {
        return Ok(None);
    };
    let (Some(element_bytes), Ok(shape)) = (
        dtype.element_bytes(),
        shape.into_iter().map(u64::try_from).collect(),
    ) else {
        return Ok(None);
    };
    if v.device_type != DL_CPU || t.call_method0(intern!(py, "is_neg"))?.is_truthy()? {
        return Ok(None);
    }
    Ok(Some(TensorView {
        dtype,
        element_bytes: element_bytes as u64,
        shape,
        strides,
        data: v.data,
    }))
}

/// [`TensorView`] of `t` through its public attributes, for a torch without
/// DLPack's C exchange API or a tensor type that publishes its own.
fn attribute_view(
    py: Python<'_>,
    t: &Bound<'_, PyAny>,
    torch: &Torch,
) -> PyResult<Option<TensorView>> {
    if !t.getattr(intern!(py, "is_cpu"))?.is_truthy()?
        || !t.getattr(intern!(py, "layout"))?.is(torch.strided.bind(py))
        || t.call_method0(intern!(py, "is_neg"))?.is_truthy()?
    {
        return Ok(None);
    }
    let dtype_obj = t.getattr(intern!(py, "dtype"))?;
    let Some(&(_, dtype, element_bytes)) = torch
        .dtypes
        .iter()
        .find(|(o, _, _)| o.bind(py).is(&dtype_obj))
    else {
        return Ok(None);
    };
    Ok(Some(TensorView {
        dtype,
        element_bytes,
        shape: t.getattr(intern!(py, "shape"))?.extract()?,
        strides: t.call_method0(intern!(py, "stride"))?.extract()?,
        data: t.call_method0(intern!(py, "data_ptr"))?.extract()?,
    }))
}

/// The described tensor `t` of view `v`, in its whole untyped storage; `None`
/// where it has no memory (a ZeroTensor) or no elements.
fn in_storage<'py>(
    py: Python<'py>,
    t: &Bound<'py, PyAny>,
    v: TensorView,
) -> PyResult<Option<Described<'py>>> {
    if v.data == 0 || v.shape.contains(&0) {
        return Ok(None);
    }
    let storage = t.call_method0(intern!(py, "untyped_storage"))?;
    let addr: usize = storage.call_method0(intern!(py, "data_ptr"))?.extract()?;
    let len: usize = storage.call_method0(intern!(py, "nbytes"))?.extract()?;
    let isz = v.element_bytes as i64;
    // element 0 lies `offset` bytes into the storage
    let (Some(strides), Some(offset)) = (
        v.strides
            .into_iter()
            .map(|s| s.checked_mul(isz))
            .collect::<Option<Vec<i64>>>(),
        v.data.checked_sub(addr).filter(|&o| o < len),
    ) else {
        return Ok(None);
    };
    let layout = Layout::new(v.shape, strides, offset as u64)
        .map_err(|e| TraceLayoutError::new_err(e.to_string()))?;
    Ok(Some(Described {
        dtype: v.dtype,
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
        d.layout.shape().to_vec(),
        d.layout.byte_strides().to_vec(),
        d.layout.storage_offset(),
        bytes.as_ptr() as usize,
        bytes.len(),
        matches!(d.storage, Storage::InPlace { .. }),
    ))
}

/// A weak reference to `owner` that Python's cycle collector does not
/// track (`None` if `owner` cannot be weakly referenced).
///
/// Each region holds one for as long as its owner lives, so a capture of
/// thousands of tensors would otherwise add thousands of tracked objects
/// that every full collection of the process walks: with 20,000 small
/// torch tensors that cost more than the write itself. A weak reference
/// without a callback holds no strong reference to anything and so can
/// never be part of a reference cycle; untracking it changes nothing the
/// collector can find (it clears weak references through the referent's
/// list, tracked or not), as CPython itself untracks tuples and dicts that
/// hold only atoms.
pub(crate) fn owner_weakref(owner: &Bound<'_, PyAny>) -> Option<Py<PyWeakrefReference>> {
    let weak = PyWeakrefReference::new(owner).ok()?;
    // SAFETY: `weak` is a live weak reference object (we hold a strong
    // reference to it) and the GIL is held (`owner` is bound to it);
    // PyObject_GC_UnTrack does nothing to an object not tracked, and a
    // basic weak reference without a callback (the kind `new` makes, or
    // the one it shares) references nothing strongly.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(weak.as_ptr().cast()) };
    Some(weak.unbind())
}
