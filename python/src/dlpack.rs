//! DLPack's C exchange API: a tensor described by its framework in one C
//! call, without a capsule to allocate and free.
//!
//! A framework publishes the API as `__dlpack_c_exchange_api__` on its
//! tensor type, a capsule named `dlpack_exchange_api` holding a
//! `DLPackExchangeAPI` (DLPack 1.3's `dlpack.h`; torch has it on
//! `torch.Tensor`). Its `dltensor_from_py_object_no_sync` fills a caller's
//! `DLTensor` with the tensor's data pointer, device, dtype, shape and
//! strides, which stay valid until control returns to Python. The structs
//! below are the published C ABI, field for field.
//!
//! DLPack has no negative or conjugate bit: a view with torch's lazy
//! negation is described by the memory it shares with its base, so the
//! caller asks for that separately (`describe.rs`).

#![allow(unsafe_code)]

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyType};
use std::ffi::{c_int, c_void};

/// `DLDeviceType::kDLCPU`.
pub(crate) const DL_CPU: i32 = 1;

/// `DLDevice`: a device type (`DLDeviceType`, an `int32_t` enum) and its index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

/// `DLDataType`: a type code (`DLDataTypeCode`), bits per lane, lanes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

/// `DLTensor`: the borrowed description of a tensor.
#[repr(C)]
#[derive(Debug)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    /// `ndim` sizes.
    shape: *const i64,
    /// `ndim` strides in elements; may be null (compact, row-major).
    strides: *const i64,
    byte_offset: u64,
}

impl Default for DLTensor {
    fn default() -> Self {
        DLTensor {
            data: std::ptr::null_mut(),
            device: DLDevice::default(),
            ndim: 0,
            dtype: DLDataType::default(),
            shape: std::ptr::null(),
            strides: std::ptr::null(),
            byte_offset: 0,
        }
    }
}

/// `DLPackVersion`.
#[repr(C)]
#[derive(Debug)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

/// `DLPackDLTensorFromPyObjectNoSync`: 0, or -1 with a Python exception set.
type DLTensorFromPyObject = unsafe extern "C" fn(*mut c_void, *mut DLTensor) -> c_int;

/// `DLPackExchangeAPIHeader`: the part of the table that every DLPack
/// version keeps.
#[repr(C)]
#[derive(Debug)]
struct DLPackExchangeAPIHeader {
    version: DLPackVersion,
    prev_api: *const DLPackExchangeAPIHeader,
}

/// `DLPackExchangeAPI` of DLPack major version 1. Only
/// `dltensor_from_py_object_no_sync` is called here; the others are kept
/// as opaque pointers to hold the layout.
#[repr(C)]
#[derive(Debug)]
struct DLPackExchangeAPI {
    header: DLPackExchangeAPIHeader,
    managed_tensor_allocator: *const c_void,
    managed_tensor_from_py_object_no_sync: *const c_void,
    managed_tensor_to_py_object_no_sync: *const c_void,
    /// May be null: the producer does not offer it.
    dltensor_from_py_object_no_sync: Option<DLTensorFromPyObject>,
    current_work_stream: *const c_void,
}

/// The exchange API one tensor type publishes, where it offers
/// `dltensor_from_py_object_no_sync` at DLPack major version 1.
pub(crate) struct ExchangeApi {
    /// The type it was read from.
    home: Py<PyType>,
    /// The `__dlpack_c_exchange_api__` capsule it was read from: a type
    /// whose attribute is this object publishes this API.
    capsule: Py<PyCapsule>,
    from_py_object: DLTensorFromPyObject,
}

/// A tensor as DLPack describes it, copied out of its `DLTensor`.
#[derive(Debug)]
pub(crate) struct DlView {
    /// Address of element 0 (`data + byte_offset`); 0 where the tensor has
    /// no memory.
    pub data: usize,
    pub device_type: i32,
    /// `DLDataType` code, bits and lanes.
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
    /// `None` where the producer left it null.
    pub shape: Option<Vec<i64>>,
    /// Element strides; `None` where the producer left them null.
    pub strides: Option<Vec<i64>>,
}

impl ExchangeApi {
    /// The API `ty` publishes, if any (see [`ExchangeApi`]).
    pub fn of(ty: &Bound<'_, PyType>) -> Option<ExchangeApi> {
        let py = ty.py();
        let capsule = ty
            .getattr(intern!(py, "__dlpack_c_exchange_api__"))
            .ok()?
            .cast_into::<PyCapsule>()
            .ok()?;
        let api = capsule.pointer_checked(Some(c"dlpack_exchange_api")).ok()?;
        // SAFETY: a capsule named `dlpack_exchange_api` holds a pointer to
        // a `DLPackExchangeAPI` that the producer keeps alive for the whole
        // process (the protocol's rule: a static table), so reading it now
        // and keeping its function pointer are both sound. Its header is
        // the same in every DLPack version and is read first; the whole
        // table only once the header says major version 1, whose layout
        // `DLPackExchangeAPI` is.
        let from_py_object = unsafe {
            if api.cast::<DLPackExchangeAPIHeader>().as_ref().version.major != 1 {
                return None;
            }
            api.cast::<DLPackExchangeAPI>()
                .as_ref()
                .dltensor_from_py_object_no_sync?
        };
        Some(ExchangeApi {
            home: ty.clone().unbind(),
            capsule: capsule.unbind(),
            from_py_object,
        })
    }

    /// Whether objects of type `ty` may be handed to this API: the
    /// protocol asks for the type it was found on, so `ty` is that type or
    /// publishes the same capsule (a subclass that inherits it).
    pub fn accepts(&self, ty: &Bound<'_, PyType>) -> bool {
        let py = ty.py();
        ty.is(self.home.bind(py))
            || ty
                .getattr(intern!(py, "__dlpack_c_exchange_api__"))
                .is_ok_and(|c| c.is(self.capsule.bind(py)))
    }

    /// `obj` as its framework describes it; the framework's exception where
    /// it cannot (a meta or sparse torch tensor, for one), a TypeError
    /// where `obj`'s type does not publish this API ([`accepts`]).
    ///
    /// [`accepts`]: ExchangeApi::accepts
    pub fn view(&self, obj: &Bound<'_, PyAny>) -> PyResult<DlView> {
        if !self.accepts(&obj.get_type()) {
            return Err(PyTypeError::new_err(
                "the object's type does not publish this DLPack exchange API",
            ));
        }
        let mut t = DLTensor::default();
        // SAFETY: `from_py_object` is the producer's
        // `dltensor_from_py_object_no_sync`, with that C signature; `obj`
        // is a live object (borrowed for this call) of a type that
        // publishes the API (checked above), the GIL is held (`obj` is
        // bound to it), and `t` is a writable `DLTensor` on our stack. It
        // returns 0, or -1 with a Python exception set.
        let status = unsafe { (self.from_py_object)(obj.as_ptr().cast(), &mut t) };
        if status != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // a negative ndim reads as neither shape nor strides
        let ndim = usize::try_from(t.ndim).ok();
        let copy = |p: *const i64| -> Option<Vec<i64>> {
            let ndim = ndim?;
            if ndim == 0 {
                return Some(Vec::new());
            }
            // SAFETY: a non-null `shape` or `strides` of a filled DLTensor
            // points at `ndim` int64s the producer owns, valid until
            // control returns to Python: no Python code runs between the
            // call above and this copy.
            (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p, ndim) }.to_vec())
        };
        // 0 stays 0 (no memory), and so does an address past the end
        let data = Some(t.data as usize)
            .filter(|&d| d != 0)
            .zip(usize::try_from(t.byte_offset).ok())
            .and_then(|(d, o)| d.checked_add(o))
            .unwrap_or(0);
        Ok(DlView {
            data,
            device_type: t.device.device_type,
            code: t.dtype.code,
            bits: t.dtype.bits,
            lanes: t.dtype.lanes,
            shape: copy(t.shape),
            strides: copy(t.strides),
        })
    }
}
