//! `td_add_*`: storages, tensors, views and statistics.

use std::ffi::{c_char, c_void};

use trace_format::layout::ggml as ggml_layout;
use trace_format::Layout;

use super::*;

/// Record bytes other tensors view (`td_add_view`); `*out_id` gets its id.
///
/// # Safety
/// `w` null or live; `name` a C string; `data` holds `len` bytes; `out_id`
/// null or writable.
#[no_mangle]
pub unsafe extern "C" fn td_add_storage(
    w: *const td_writer,
    name: *const c_char,
    data: *const c_void,
    len: usize,
    out_id: *mut u64,
) -> i32 {
    guard("td_add_storage", || {
        // SAFETY: the caller's promises.
        let (w, name, bytes) = unsafe {
            (
                w.as_ref().ok_or("writer is NULL")?,
                text(name, "name")?,
                slice(data.cast::<u8>(), len, "data")?,
            )
        };
        let id = w
            .writer
            .add_storage(name, bytes)
            .map_err(|e| e.to_string())?;
        // SAFETY: null or writable (the caller's promise).
        unsafe { put(out_id, id) };
        Ok(TD_OK)
    })
}

/// # Safety
/// `out` is null or writable.
pub(super) unsafe fn put(out: *mut u64, id: u64) {
    if !out.is_null() {
        // SAFETY: non-null and writable (the caller's promise).
        unsafe { out.write_unaligned(id) };
    }
}

/// The common arguments of a tensor.
struct TensorArgs<'a> {
    name: &'a str,
    dtype: DType,
    layout: Layout,
    meta: TensorMeta,
}

/// # Safety
/// As the public functions that call it.
#[allow(clippy::too_many_arguments)]
unsafe fn tensor_args<'a>(
    name: *const c_char,
    dtype: i32,
    ndim: u32,
    shape: *const i64,
    byte_strides: *const i64,
    order: u32,
    storage_offset: u64,
    meta: *const td_meta,
) -> Result<TensorArgs<'a>, String> {
    // SAFETY: the caller's promises.
    let name = unsafe { text(name, "name")? };
    let dtype = dtype_of(dtype, name)?;
    // SAFETY: the caller's promises.
    let shape = unsafe { slice(shape, ndim as usize, "shape") }
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
    let strides = if byte_strides.is_null() {
        None
    } else {
        // SAFETY: the caller's promises.
        Some(unsafe { slice(byte_strides, ndim as usize, "byte_strides") }?)
    };
    let layout = canonical(order, shape, strides, dtype, storage_offset)
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
    // SAFETY: null or a live builder (the caller's promise).
    let mut meta = unsafe { meta.as_ref() }
        .map(|m| m.meta.clone())
        .unwrap_or_default();
    if order == TD_ORDER_GGML && meta.source_layout.is_none() {
        if let Some((ne, nb)) =
            ggml_layout::from_canonical(&layout.clone().at_offset(0), shape.len())
        {
            meta = meta.ggml_layout(&ne, &nb);
        }
    }
    Ok(TensorArgs {
        name,
        dtype,
        layout,
        meta,
    })
}

/// Record a tensor with its own bytes: `data` (`len` bytes) is the storage
/// its layout points into — `byte_strides` (NULL: contiguous) and
/// `storage_offset` say where each element is, in `order`. `meta` (NULL:
/// none) gives lineage and metadata.
///
/// # Safety
/// `w` null or live; `name` a C string; arrays hold `ndim` items; `data`
/// holds `len` bytes; `meta` null or live; `out_id` null or writable.
#[no_mangle]
pub unsafe extern "C" fn td_add_tensor(
    w: *const td_writer,
    name: *const c_char,
    dtype: i32,
    ndim: u32,
    shape: *const i64,
    byte_strides: *const i64,
    order: u32,
    storage_offset: u64,
    data: *const c_void,
    len: usize,
    meta: *const td_meta,
    out_id: *mut u64,
) -> i32 {
    guard("td_add_tensor", || {
        // SAFETY: the caller's promises.
        let (w, a, bytes) = unsafe {
            (
                w.as_ref().ok_or("writer is NULL")?,
                tensor_args(
                    name,
                    dtype,
                    ndim,
                    shape,
                    byte_strides,
                    order,
                    storage_offset,
                    meta,
                )?,
                slice(data.cast::<u8>(), len, "data")?,
            )
        };
        let id = w
            .writer
            .add_strided(a.name, a.dtype, &a.layout, bytes, a.meta)
            .map_err(|e| e.to_string())?;
        finish_add(id, out_id)
    })
}

pub(super) fn finish_add(id: Option<u64>, out_id: *mut u64) -> Result<i32, String> {
    match id {
        Some(id) => {
            // SAFETY: null or writable (the public functions' promise).
            unsafe { put(out_id, id) };
            Ok(TD_OK)
        }
        None => Ok(TD_SKIPPED),
    }
}

/// Record a view of an earlier storage (`td_add_storage`) or of an earlier
/// tensor's own bytes: `storage_offset` and the strides are relative to
/// that storage's first byte.
///
/// # Safety
/// As `td_add_tensor`.
#[no_mangle]
pub unsafe extern "C" fn td_add_view(
    w: *const td_writer,
    name: *const c_char,
    dtype: i32,
    ndim: u32,
    shape: *const i64,
    byte_strides: *const i64,
    order: u32,
    storage_id: u64,
    storage_offset: u64,
    meta: *const td_meta,
    out_id: *mut u64,
) -> i32 {
    guard("td_add_view", || {
        // SAFETY: the caller's promises.
        let (w, a) = unsafe {
            (
                w.as_ref().ok_or("writer is NULL")?,
                tensor_args(
                    name,
                    dtype,
                    ndim,
                    shape,
                    byte_strides,
                    order,
                    storage_offset,
                    meta,
                )?,
            )
        };
        let id = w
            .writer
            .add_view(a.name, a.dtype, storage_id, &a.layout, a.meta)
            .map_err(|e| e.to_string())?;
        finish_add(id, out_id)
    })
}

/// Record statistics only of a contiguous tensor (`data`, `len` bytes).
///
/// # Safety
/// As `td_add_tensor`.
#[no_mangle]
pub unsafe extern "C" fn td_add_stats(
    w: *const td_writer,
    name: *const c_char,
    dtype: i32,
    ndim: u32,
    shape: *const i64,
    order: u32,
    data: *const c_void,
    len: usize,
    meta: *const td_meta,
    out_id: *mut u64,
) -> i32 {
    guard("td_add_stats", || {
        // SAFETY: the caller's promises.
        let (w, a, bytes) = unsafe {
            (
                w.as_ref().ok_or("writer is NULL")?,
                tensor_args(name, dtype, ndim, shape, std::ptr::null(), order, 0, meta)?,
                slice(data.cast::<u8>(), len, "data")?,
            )
        };
        let id = w
            .writer
            .add_stats_of(a.name, a.dtype, a.layout.shape(), bytes, a.meta)
            .map_err(|e| e.to_string())?;
        finish_add(id, out_id)
    })
}
