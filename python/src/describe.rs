//! What `Writer.add` needs of a tensor: its dtype, layout and storage bytes.
//!
//! The common cases are read here, in Rust, without a Python call per
//! field: a numpy array of a plain little-endian dtype (its fields are read
//! from the array struct, its storage is the base array's buffer) and a CPU
//! torch tensor of a known dtype (its storage is the tensor's whole untyped
//! storage). A `torch.Tensor` or `Parameter` is read through torch's stable
//! C shim (`aoti_torch_get_sizes` & co., in the libtorch_cpu the process
//! has loaded), given the TensorImpl the tensor object holds (or its
//! `_cdata` names, in a torch laid out otherwise), and its negative bit is
//! read from the TensorImpl's dispatch key set: one Python call
//! (`untyped_storage()`) instead of ten, up to three in a torch laid out
//! otherwise. The shim, the handle and the bit are each used once they
//! have read probe tensors exactly as the Python attributes do; other
//! tensor types, or a torch without the shim, take the attribute path.
//! Everything else goes through `tracedump._layout.describe` (Python),
//! which handles byte-swapped arrays, ml_dtypes, non-CPU tensors,
//! conjugate/negative views and empty tensors with the same results.
//!
//! This is the one file of the bindings with `unsafe` code: the storage
//! bytes of such an array or tensor are read in place, as a slice made from
//! the address the object reports, while a strong reference to the object
//! and the GIL are held. The writer's weak references to owners are made
//! here too, untracked by the cycle collector (`owner_weakref`).

#![allow(unsafe_code)]

use numpy::prelude::*;
use numpy::{PyArrayDescr, PyReadonlyArray1, PyUntypedArray};
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyType, PyWeakrefReference};
use std::ffi::c_void;
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
    /// `torch.Tensor` and `torch.nn.Parameter`: the exact types read through
    /// [`Shim`] (a subclass may override `_cdata`).
    plain_types: Vec<Py<PyType>>,
    strided: Py<PyAny>,
    /// torch dtype objects with our dtype and their element size.
    dtypes: Vec<(Py<PyAny>, DType, u64)>,
    /// torch's stable C API, when this torch has it and it reads a probe
    /// tensor the same as the Python attributes do.
    shim: Option<Shim>,
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
    let mut plain_types = vec![tensor.clone().unbind()];
    if let Ok(p) = torch.getattr("nn").and_then(|nn| nn.getattr("Parameter")) {
        plain_types.push(p.cast_into::<PyType>()?.unbind());
    }
    let mut t = Torch {
        tensor: tensor.unbind(),
        plain_types,
        strided: torch.getattr("strided")?.unbind(),
        dtypes,
        shim: None,
    };
    t.shim =
        Shim::load(py, &torch).and_then(|mut shim| shim.agrees(py, &torch, &t).then_some(shim));
    Ok(Some(TORCH.get_or_init(py, || t)))
}

/// `_layout._describe_torch` for a CPU strided tensor of a dtype in
/// [`Torch::dtypes`] that is not a negative view; `None` otherwise.
fn torch_parts<'py>(py: Python<'py>, t: &Bound<'py, PyAny>) -> PyResult<Option<Described<'py>>> {
    let Some(torch) = torch(py)? else {
        return Ok(None);
    };
    if let Some(shim) = &torch.shim {
        let ty = t.get_type();
        if torch.plain_types.iter().any(|p| ty.is(p.bind(py))) {
            return shim_parts(py, t, shim);
        }
    }
    python_parts(py, t, torch)
}

/// [`torch_parts`] through the tensor's Python attributes (any tensor type).
fn python_parts<'py>(
    py: Python<'py>,
    t: &Bound<'py, PyAny>,
    torch: &Torch,
) -> PyResult<Option<Described<'py>>> {
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
    let strides: Vec<i64> = t.call_method0(intern!(py, "stride"))?.extract()?;
    let offset: u64 = t.call_method0(intern!(py, "storage_offset"))?.extract()?;
    let storage = t.call_method0(intern!(py, "untyped_storage"))?;
    let addr: usize = storage.call_method0(intern!(py, "data_ptr"))?.extract()?;
    let len: usize = storage.call_method0(intern!(py, "nbytes"))?.extract()?;
    let fields = TensorFields {
        dtype,
        element_bytes: isz,
        shape,
        strides,
        offset,
        addr,
        len,
    };
    in_place(t, fields, storage)
}

/// [`torch_parts`] of a `torch.Tensor` or `Parameter`, read through [`Shim`]:
/// one Python call (`untyped_storage()`) instead of ten, plus `_cdata`
/// where the handle is not read from the object and `is_neg()` where the
/// negative bit is not read from the TensorImpl.
fn shim_parts<'py>(
    py: Python<'py>,
    t: &Bound<'py, PyAny>,
    shim: &Shim,
) -> PyResult<Option<Described<'py>>> {
    let tensor_impl: usize = if shim.handle_in_object {
        // SAFETY: `t` is an exact torch.Tensor or Parameter, whose objects
        // are at least `CDATA_OFFSET + 8` bytes (their `__basicsize__`,
        // checked with the layout in `Shim::agrees`) and hold the
        // TensorImpl pointer there; `t` is borrowed, so alive, for this
        // whole call.
        unsafe { in_object_tensor_impl(t) }
    } else {
        t.getattr(intern!(py, "_cdata"))?.extract()?
    };
    // SAFETY: `tensor_impl` is the TensorImpl of `t`, an exact torch.Tensor
    // or Parameter: what its `_cdata` returns (checked on probe tensors by
    // `Shim::agrees` before the shim is used). `t` is borrowed for this
    // whole call and keeps the TensorImpl alive; the GIL is held and no
    // Python code runs before the fields are copied out.
    let Some(fields) = (unsafe { shim.read(tensor_impl) }) else {
        return Ok(None);
    };
    let negative = match shim.negative_bit {
        // SAFETY: `tensor_impl` is the live TensorImpl of `t` (as above),
        // and `negative_bit` was found inside every TensorImpl of this
        // torch (`NegativeBit::find`).
        Some(bit) => unsafe { bit.is_set(tensor_impl) },
        None => t.call_method0(intern!(py, "is_neg"))?.is_truthy()?,
    };
    if negative {
        return Ok(None);
    }
    let storage = t.call_method0(intern!(py, "untyped_storage"))?;
    in_place(t, fields, storage)
}

/// Where a TensorImpl keeps its negative bit: `is_neg()` is
/// `key_set_.has_all(DispatchKeySet(DispatchKey::Negative))`, and
/// `key_set_`, a `uint64_t` bit set, is the last member of `TensorImpl`
/// (c10/core/TensorImpl.h, whose `check_sizes` fixes the sizes of the
/// members on 64-bit systems). It lies [`KEY_SET_AFTER_SIZES`] bytes after
/// the inline sizes the shim's `aoti_torch_get_sizes` points at; the offset
/// is used only once the word there equals
/// `torch._C._dispatch_keys(t).raw_repr()` on probe tensors with and
/// without the bit (and `is_neg()` agrees), else `is_neg()` is called per
/// tensor.
#[derive(Clone, Copy, Debug)]
struct NegativeBit {
    /// Byte offset of `key_set_` in a TensorImpl.
    offset: usize,
    /// `DispatchKeySet(DispatchKey::Negative)`: one bit.
    mask: u64,
}

/// Bytes from a TensorImpl's inline sizes to its `key_set_`: the sizes and
/// strides (5 + 5 `int64_t`), `storage_offset_`, `numel_`, then
/// `data_type_` (2), `device_opt_` (3) and the bit fields (2), padded to 8.
const KEY_SET_AFTER_SIZES: usize = 80 + 8 + 8 + 8;

/// `sizeof(TensorImpl)` is at most 26 `int64_t` on 64-bit systems
/// (`check_sizes`): no offset at or past it is read.
const TENSOR_IMPL_MAX_BYTES: usize = 26 * 8;

impl NegativeBit {
    /// Whether the TensorImpl at `tensor_impl` has the negative bit.
    ///
    /// # Safety
    /// `tensor_impl` is a live TensorImpl of the torch this was found in,
    /// read with the GIL held.
    unsafe fn is_set(self, tensor_impl: usize) -> bool {
        // SAFETY: the caller's contract; `offset + 8 <= sizeof(TensorImpl)`
        // (checked on probes in `find`), and key_set_ is 8-byte aligned.
        let word = unsafe { ((tensor_impl + self.offset) as *const u64).read_volatile() };
        word & self.mask != 0
    }

    /// The bit's place, checked on probe tensors (see [`NegativeBit`]);
    /// `None` where any check fails.
    fn find(py: Python<'_>, torch: &Bound<'_, PyAny>, shim: &Shim) -> Option<NegativeBit> {
        let c = torch.getattr("_C").ok()?;
        // a DispatchKeySet's 64 bits
        let raw_repr = |set: PyResult<Bound<'_, PyAny>>| -> Option<u64> {
            set.ok()?.call_method0("raw_repr").ok()?.extract().ok()
        };
        let negative = c.getattr("DispatchKey").ok()?.getattr("Negative").ok()?;
        let mask = raw_repr(
            c.getattr("DispatchKeySet")
                .and_then(|k| k.call1((negative,))),
        )?;
        if mask.count_ones() != 1 {
            return None;
        }
        let cdata =
            |t: &Bound<'_, PyAny>| -> Option<usize> { t.getattr("_cdata").ok()?.extract().ok() };
        // the offset, from a tensor with inline sizes
        let plain = torch.call_method1("zeros", ((2, 3),)).ok()?;
        let impl_of_plain = cdata(&plain)?;
        let mut sizes: *const i64 = std::ptr::null();
        let tensor = impl_of_plain as *const c_void;
        // SAFETY: `tensor` is the TensorImpl of `plain`, a live tensor we
        // hold; the shim writes only its out-parameter.
        if unsafe { (shim.sizes)(&tensor, &mut sizes) } != 0 {
            return None;
        }
        let offset = (sizes as usize)
            .checked_sub(impl_of_plain)?
            .checked_add(KEY_SET_AFTER_SIZES)?;
        if offset % 8 != 0 || offset + 8 > TENSOR_IMPL_MAX_BYTES {
            return None;
        }
        let bit = NegativeBit { offset, mask };
        // probes without and with the bit: dtypes, grad, a Parameter, out-of-line sizes
        let run = |code: &std::ffi::CStr| -> Option<Bound<'_, PyAny>> {
            let globals = pyo3::types::PyDict::new(py);
            globals.set_item("torch", torch).ok()?;
            py.eval(code, Some(&globals), None).ok()
        };
        let probes = run(
            c"[torch.zeros(2, 3), torch.arange(5), torch.zeros(1, 1, 1, 1, 1, 2, 3), \
            torch.tensor(1.5, dtype=torch.float16), torch.zeros(4, requires_grad=True), \
            torch.nn.Parameter(torch.zeros(3)), torch.zeros(3, 4).t(), \
            torch._neg_view(torch.arange(6.0)), torch._neg_view(torch.zeros(1, 1, 1, 1, 1, 2, 3)), \
            torch.zeros(3, dtype=torch.complex64).conj().imag, \
            torch._neg_view(torch.zeros(4, requires_grad=True))]",
        )?;
        let (mut with, mut without) = (0, 0);
        for p in probes.try_iter().ok()? {
            let p = p.ok()?;
            let is_neg: bool = p.call_method0("is_neg").ok()?.extract().ok()?;
            let keys = raw_repr(c.call_method1("_dispatch_keys", (&p,)))?;
            let impl_of_p = cdata(&p)?;
            // SAFETY: `p` is a live tensor we hold, `impl_of_p` its
            // TensorImpl; `offset + 8` is within `TENSOR_IMPL_MAX_BYTES`.
            let word = unsafe { ((impl_of_p + offset) as *const u64).read_volatile() };
            if word != keys || is_neg != (word & mask != 0) {
                return None;
            }
            if is_neg {
                with += 1;
            } else {
                without += 1;
            }
        }
        (with >= 3 && without >= 3).then_some(bit)
    }
}

/// Whether every exact tensor type in `t.plain_types` holds its TensorImpl
/// pointer right after the object header: objects that long (`__basicsize__`)
/// and, on the probe and on a Parameter and a fresh tensor, the word there
/// is what `_cdata` returns.
fn handle_in_object(
    py: Python<'_>,
    torch: &Bound<'_, PyAny>,
    t: &Torch,
    probe: &Bound<'_, PyAny>,
) -> bool {
    let long_enough = t.plain_types.iter().all(|ty| {
        ty.bind(py)
            .getattr("__basicsize__")
            .and_then(|b| b.extract::<usize>())
            .is_ok_and(|b| b >= CDATA_OFFSET + std::mem::size_of::<usize>())
    });
    if !long_enough {
        return false;
    }
    let mut samples = vec![probe.clone()];
    if let Ok(fresh) = torch.call_method1("zeros", (3,)) {
        if let Ok(param) = torch
            .getattr("nn")
            .and_then(|nn| nn.getattr("Parameter"))
            .and_then(|p| p.call1((fresh.clone(),)))
        {
            samples.push(param);
        }
        samples.push(fresh);
    }
    samples.len() == 3
        && samples.iter().all(|s| {
            let plain = t.plain_types.iter().any(|ty| s.get_type().is(ty.bind(py)));
            let cdata = s.getattr("_cdata").and_then(|c| c.extract::<usize>());
            // SAFETY: `s` is a live object of a type whose objects are long
            // enough (checked above).
            plain && cdata.is_ok_and(|c| c != 0 && c == unsafe { in_object_tensor_impl(s) })
        })
}

/// The TensorImpl pointer a torch tensor object holds after its header.
///
/// # Safety
/// `t` is a live object at least `CDATA_OFFSET + 8` bytes long.
unsafe fn in_object_tensor_impl(t: &Bound<'_, PyAny>) -> usize {
    // SAFETY: the caller's contract: the read lies inside the object.
    unsafe {
        t.as_ptr()
            .cast::<u8>()
            .add(CDATA_OFFSET)
            .cast::<usize>()
            .read_unaligned()
    }
}

/// What a torch tensor reports of itself (strides and offset in elements).
struct TensorFields {
    dtype: DType,
    element_bytes: u64,
    shape: Vec<u64>,
    strides: Vec<i64>,
    offset: u64,
    /// Address and bytes of its untyped storage.
    addr: usize,
    len: usize,
}

/// The described tensor `t` whose fields are `f`, read in place.
fn in_place<'py>(
    t: &Bound<'py, PyAny>,
    f: TensorFields,
    storage: Bound<'py, PyAny>,
) -> PyResult<Option<Described<'py>>> {
    if f.shape.contains(&0) || f.addr == 0 {
        return Ok(None);
    }
    let isz = f.element_bytes as i64;
    let (Some(strides), Some(offset)) = (
        f.strides
            .iter()
            .map(|s| s.checked_mul(isz))
            .collect::<Option<Vec<i64>>>(),
        f.offset.checked_mul(f.element_bytes),
    ) else {
        return Ok(None);
    };
    let layout = Layout::new(f.shape, strides, offset)
        .map_err(|e| TraceLayoutError::new_err(e.to_string()))?;
    Ok(Some(Described {
        dtype: f.dtype,
        layout,
        storage: Storage::InPlace {
            addr: f.addr,
            len: f.len,
            holder: t.clone(),
        },
        owner: storage,
    }))
}

/// An `AtenTensorHandle` of torch's C shim: the address of an `at::Tensor`,
/// which is one pointer to its TensorImpl.
type TensorHandle = *const *const c_void;
type GetI64 = unsafe extern "C" fn(TensorHandle, *mut i64) -> i32;
type GetI32 = unsafe extern "C" fn(TensorHandle, *mut i32) -> i32;
type GetArray = unsafe extern "C" fn(TensorHandle, *mut *const i64) -> i32;
type GetPtr = unsafe extern "C" fn(TensorHandle, *mut *mut c_void) -> i32;
type Constant = unsafe extern "C" fn() -> i32;

/// torch's stable C API (`torch/csrc/inductor/aoti_torch/c/shim.h`, kept
/// ABI-compatible across releases), found in the libtorch_cpu this process
/// has already loaded: a tensor's fields in a few C calls instead of a
/// Python call each.
struct Shim {
    dim: GetI64,
    sizes: GetArray,
    strides: GetArray,
    storage_offset: GetI64,
    storage_size: GetI64,
    data_ptr: GetPtr,
    dtype: GetI32,
    device_type: GetI32,
    layout: GetI32,
    cpu: i32,
    strided: i32,
    /// torch's dtype codes with our dtype and element size.
    dtypes: Vec<(i32, DType, u64)>,
    /// The tensor object holds its `at::Tensor` right after the Python
    /// object header (torch's `THPVariable`: `PyObject_HEAD; at::Tensor
    /// cdata;`, as in torch 2.15), so a `torch.Tensor` or `Parameter` gives
    /// its shim handle without a `_cdata` call: checked on probe tensors of
    /// both types in [`Shim::agrees`]; `false` for a torch that lays it out
    /// otherwise (older ones hold an `at::MaybeOwned<at::Tensor>`), which
    /// calls `_cdata`.
    handle_in_object: bool,
    /// Where a TensorImpl keeps its negative bit, so that `is_neg()` is not
    /// called per tensor; `None` where the probes disagree ([`NegativeBit`]).
    negative_bit: Option<NegativeBit>,
}

/// Offset of `THPVariable::cdata` in a tensor object: the Python object
/// header's size.
const CDATA_OFFSET: usize = std::mem::size_of::<pyo3::ffi::PyObject>();

impl Shim {
    /// The shim of the loaded `torch` module's libtorch_cpu; `None` when the
    /// library is not loaded from there or lacks a function.
    #[cfg(unix)]
    fn load(py: Python<'_>, torch: &Bound<'_, PyAny>) -> Option<Shim> {
        let file: String = torch
            .getattr(intern!(py, "__file__"))
            .ok()?
            .extract()
            .ok()?;
        let name = if cfg!(target_os = "macos") {
            "libtorch_cpu.dylib"
        } else {
            "libtorch_cpu.so"
        };
        // torch/lib/ of the imported package; else the library of that
        // name the process has loaded from elsewhere (a system libtorch)
        let in_package = std::path::Path::new(&file).parent()?.join("lib").join(name);
        let lib = [
            in_package.into_os_string().into_encoded_bytes(),
            name.into(),
        ]
        .into_iter()
        .filter_map(|p| std::ffi::CString::new(p).ok())
        .map(|path| {
            // SAFETY: `path` is a NUL-terminated string; RTLD_NOLOAD
            // only returns a handle to a library the process has loaded
            // already (no second copy of torch, no initialisers run).
            // The handle is never closed, so the symbols below stay
            // valid for the process.
            unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) }
        })
        .find(|lib| !lib.is_null())?;
        let sym = |name: &str| -> Option<*mut c_void> {
            let name = std::ffi::CString::new(name).ok()?;
            // SAFETY: `lib` is a live handle (above), `name` NUL-terminated.
            let f = unsafe { libc::dlsym(lib, name.as_ptr()) };
            (!f.is_null()).then_some(f)
        };
        macro_rules! func {
            ($name:literal, $ty:ty) => {
                // SAFETY: the symbol is the shim.h function of that name,
                // whose C signature is the target type's (`AOTITorchError`
                // is int32_t; `int64_t**` results are borrowed).
                unsafe { std::mem::transmute::<*mut c_void, $ty>(sym($name)?) }
            };
        }
        let constant = |name: &str| -> Option<i32> {
            let f = sym(name)?;
            // SAFETY: as above: `int32_t aoti_torch_...(void)`.
            Some(unsafe { std::mem::transmute::<*mut c_void, Constant>(f)() })
        };
        let dtypes = DType::all()
            .filter_map(|d| {
                let code = constant(&format!("aoti_torch_dtype_{}", torch_type(d)?))?;
                Some((code, d, d.element_bytes()? as u64))
            })
            .collect();
        Some(Shim {
            dim: func!("aoti_torch_get_dim", GetI64),
            sizes: func!("aoti_torch_get_sizes", GetArray),
            strides: func!("aoti_torch_get_strides", GetArray),
            storage_offset: func!("aoti_torch_get_storage_offset", GetI64),
            storage_size: func!("aoti_torch_get_storage_size", GetI64),
            data_ptr: func!("aoti_torch_get_data_ptr", GetPtr),
            dtype: func!("aoti_torch_get_dtype", GetI32),
            device_type: func!("aoti_torch_get_device_type", GetI32),
            layout: func!("aoti_torch_get_layout", GetI32),
            cpu: constant("aoti_torch_device_type_cpu")?,
            strided: constant("aoti_torch_layout_strided")?,
            dtypes,
            handle_in_object: false,
            negative_bit: None,
        })
    }

    #[cfg(not(unix))]
    fn load(_py: Python<'_>, _torch: &Bound<'_, PyAny>) -> Option<Shim> {
        None
    }

    /// Whether the shim reads a strided, offset f16 view exactly as its
    /// Python attributes do (checks that `_cdata` is the TensorImpl the shim
    /// expects before any tensor of a user is read through it).
    fn agrees(&mut self, py: Python<'_>, torch: &Bound<'_, PyAny>, t: &Torch) -> bool {
        let probe = || -> PyResult<Bound<'_, PyAny>> {
            let kw = pyo3::types::PyDict::new(py);
            kw.set_item("dtype", torch.getattr("float16")?)?;
            let base = torch.call_method("arange", (24,), Some(&kw))?;
            // shape (5, 2), element strides (2, 11), offset 3 in a 48-byte storage
            let v = base.get_item(pyo3::types::PySlice::new(py, 2, 24, 1))?;
            let v = v.call_method1("view", (2, 11))?;
            let v = v.call_method1("as_strided", ((5, 2), (2, 11), 3))?;
            Ok(v)
        };
        let Ok(probe) = probe() else {
            return false;
        };
        let Ok(Some(slow)) = python_parts(py, &probe, t) else {
            return false;
        };
        let Ok(cdata) = probe.getattr("_cdata").and_then(|c| c.extract::<usize>()) else {
            return false;
        };
        // SAFETY: `probe` is a live tensor we hold, `cdata` its `_cdata`;
        // if `_cdata` were not a TensorImpl this read could go wrong, which
        // is why it is made once, on a tensor of our own, at start-up.
        let Some(fast) = (unsafe { self.read(cdata) }) else {
            return false;
        };
        let same = fast.dtype == slow.dtype
            && fast.shape == slow.layout.shape
            && fast
                .strides
                .iter()
                .map(|s| s * 2)
                .eq(slow.layout.byte_strides.iter().copied())
            && fast.offset * 2 == slow.layout.storage_offset
            && fast.shape == [5, 2]
            && fast.strides == [2, 11]
            && fast.offset == 3;
        let addr_same = matches!(slow.storage, Storage::InPlace { addr, len, .. }
            if addr == fast.addr && len == fast.len && len == 48);
        if !(same && addr_same) {
            return false;
        }
        self.handle_in_object = handle_in_object(py, torch, t, &probe);
        self.negative_bit = NegativeBit::find(py, torch, self);
        true
    }

    /// The fields of the tensor whose TensorImpl is at `tensor_impl`, when it
    /// is a CPU strided tensor of a dtype in [`Shim::dtypes`].
    ///
    /// # Safety
    /// `tensor_impl` is the `_cdata` of a torch tensor the caller holds a
    /// reference to, with the GIL, for the duration of the call.
    unsafe fn read(&self, tensor_impl: usize) -> Option<TensorFields> {
        let tensor = tensor_impl as *const c_void;
        // the `at::Tensor`: one pointer to the TensorImpl
        let handle: TensorHandle = &tensor;
        let ok = |err: i32| (err == 0).then_some(());
        let (mut device, mut layout, mut code) = (0i32, 0i32, 0i32);
        // SAFETY: (every call below) `handle` points at a valid `at::Tensor`
        // for this call (the caller's contract); each function writes only
        // its out-parameter, a live local here, and reports failure (a C++
        // exception caught by the shim) as a non-zero code.
        unsafe {
            ok((self.device_type)(handle, &mut device))?;
            ok((self.layout)(handle, &mut layout))?;
            if device != self.cpu || layout != self.strided {
                return None;
            }
            ok((self.dtype)(handle, &mut code))?;
            let &(_, dtype, element_bytes) = self.dtypes.iter().find(|(c, _, _)| *c == code)?;
            let (mut dim, mut offset, mut len) = (0i64, 0i64, 0i64);
            let (mut sizes, mut strides) = (std::ptr::null(), std::ptr::null());
            let mut data: *mut c_void = std::ptr::null_mut();
            ok((self.dim)(handle, &mut dim))?;
            ok((self.sizes)(handle, &mut sizes))?;
            ok((self.strides)(handle, &mut strides))?;
            ok((self.storage_offset)(handle, &mut offset))?;
            ok((self.storage_size)(handle, &mut len))?;
            ok((self.data_ptr)(handle, &mut data))?;
            let dim = usize::try_from(dim).ok()?;
            let shape = if dim == 0 {
                Vec::new()
            } else {
                if sizes.is_null() || strides.is_null() {
                    return None;
                }
                // SAFETY: the shim returns borrowed pointers to the tensor's
                // `dim` sizes and strides, alive while the tensor is and not
                // changed while the GIL is held; copied out at once.
                std::slice::from_raw_parts(sizes, dim)
                    .iter()
                    .map(|&n| u64::try_from(n).ok())
                    .collect::<Option<Vec<u64>>>()?
            };
            let strides = if dim == 0 {
                Vec::new()
            } else {
                // SAFETY: as for the sizes.
                std::slice::from_raw_parts(strides, dim).to_vec()
            };
            let offset = u64::try_from(offset).ok()?;
            // data_ptr() is element 0: the storage starts `offset` elements before
            let addr = (data as usize)
                .checked_sub(usize::try_from(offset.checked_mul(element_bytes)?).ok()?)?;
            Some(TensorFields {
                dtype,
                element_bytes,
                shape,
                strides,
                offset,
                addr,
                len: usize::try_from(len).ok()?,
            })
        }
    }
}

/// `_torch_shim()`, for the tests: `(shim, handle_in_object,
/// negative_bit)`, whether CPU torch tensors are read through torch's C
/// shim, whether their shim handle is found in the tensor object without a
/// `_cdata` call, and whether their negative bit is read from the
/// TensorImpl without an `is_neg()` call (imports torch).
#[pyfunction]
pub(crate) fn _torch_shim(py: Python<'_>) -> PyResult<(bool, bool, bool)> {
    py.import("torch")?;
    let shim = torch(py)?.and_then(|t| t.shim.as_ref());
    Ok((
        shim.is_some(),
        shim.is_some_and(|s| s.handle_in_object),
        shim.is_some_and(|s| s.negative_bit.is_some()),
    ))
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
