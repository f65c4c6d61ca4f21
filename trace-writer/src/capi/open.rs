//! Opening and closing a writer (a file or memory), flushing, and the
//! trace bytes an in-memory writer hands back.

use std::ffi::c_char;

use super::*;
use crate::{CaptureFilter, Mode, WhenFull, WriterOptions};

/// Create (truncate) `path` and write its run metadata: `n` key/value pairs
/// added to the defaults. `background` non-zero: records go through a
/// queue of at most `queue_bytes` to a writer thread, and when it is full
/// they are dropped (`drop_when_full` non-zero, `TD_SKIPPED`) or wait.
/// `name_regex` (nullable) records only matching names. NULL on error.
///
/// # Safety
/// C strings and arrays as described, valid for this call.
#[no_mangle]
pub unsafe extern "C" fn td_writer_open(
    path: *const c_char,
    keys: *const *const c_char,
    values: *const *const c_char,
    n: usize,
    background: i32,
    queue_bytes: u64,
    drop_when_full: i32,
    name_regex: *const c_char,
) -> *mut td_writer {
    boxed("td_writer_open", || {
        // SAFETY: the caller's promises.
        let writer = unsafe {
            open_writer(
                Some(path),
                keys,
                values,
                n,
                background,
                queue_bytes,
                drop_when_full,
                name_regex,
                true,
            )
        }?;
        Ok(td_writer { writer })
    })
}

/// `td_writer_open` into memory rather than a file: the trace's bytes
/// come back from `td_writer_close_bytes` (the other arguments as
/// `td_writer_open`'s). NULL on error.
///
/// # Safety
/// As [`td_writer_open`].
#[no_mangle]
pub unsafe extern "C" fn td_writer_open_memory(
    keys: *const *const c_char,
    values: *const *const c_char,
    n: usize,
    background: i32,
    queue_bytes: u64,
    drop_when_full: i32,
    name_regex: *const c_char,
) -> *mut td_writer {
    boxed("td_writer_open_memory", || {
        // SAFETY: the caller's promises.
        let writer = unsafe {
            open_writer(
                None,
                keys,
                values,
                n,
                background,
                queue_bytes,
                drop_when_full,
                name_regex,
                true,
            )
        }?;
        Ok(td_writer { writer })
    })
}

/// A writer on `path`, or in memory (`None`).
///
/// # Safety
/// As [`td_writer_open`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn open_writer(
    path: Option<*const c_char>,
    keys: *const *const c_char,
    values: *const *const c_char,
    n: usize,
    background: i32,
    queue_bytes: u64,
    drop_when_full: i32,
    name_regex: *const c_char,
    checksum_thread: bool,
) -> Result<Writer, String> {
    // SAFETY: the caller's promises.
    let (path, meta, regex) = unsafe {
        (
            path.map(|p| text(p, "path")).transpose()?,
            run_metadata(keys, values, n)?,
            opt_text(name_regex, "name_regex")?,
        )
    };
    let filter = match regex {
        Some(r) => CaptureFilter::names(r).map_err(|e| format!("name_regex: {e}"))?,
        None => CaptureFilter::all(),
    };
    let mode = if background != 0 {
        Mode::Background {
            budget_bytes: queue_bytes,
            when_full: if drop_when_full != 0 {
                WhenFull::Drop
            } else {
                WhenFull::Block
            },
        }
    } else {
        Mode::Sync
    };
    let options = WriterOptions {
        mode,
        filter,
        checksum_thread,
        ..WriterOptions::default()
    };
    match path {
        Some(path) => Writer::with_options(path, meta, options),
        None => Writer::in_memory(meta, options),
    }
    .map_err(|e| e.to_string())
}

/// Hand finished trace bytes to C: `*bytes` and `*len` (both non-null),
/// freed with `td_bytes_free`.
///
/// # Safety
/// `bytes` and `len` are null or valid for a write.
pub(super) unsafe fn hand_out(
    trace: Vec<u8>,
    bytes: *mut *mut u8,
    len: *mut usize,
) -> Result<i32, String> {
    if bytes.is_null() || len.is_null() {
        return Err("bytes or len is NULL".into());
    }
    let trace = Box::into_raw(trace.into_boxed_slice());
    // SAFETY: both non-null and valid for a write (the caller's promise).
    unsafe {
        *len = trace.len();
        *bytes = trace.cast::<u8>();
    }
    Ok(TD_OK)
}

/// Free trace bytes from `td_writer_close_bytes` / `td_ggml_close_bytes`
/// (NULL does nothing).
///
/// # Safety
/// `bytes` is null, or `*bytes`/`*len` as one of those calls set them, not
/// freed before.
#[no_mangle]
pub unsafe extern "C" fn td_bytes_free(bytes: *mut u8, len: usize) {
    if !bytes.is_null() {
        // SAFETY: from Box::into_raw of a boxed slice of `len` bytes in
        // hand_out, given back once (the caller's promise).
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(bytes, len)) });
    }
}

/// Write the footer and close; frees `w` (NULL does nothing).
///
/// # Safety
/// `w` is null or from `td_writer_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn td_writer_close(w: *mut td_writer) -> i32 {
    if w.is_null() {
        return TD_OK;
    }
    // SAFETY: from Box::into_raw in td_writer_open, given back once.
    let w = unsafe { Box::from_raw(w) };
    guard("td_writer_close", || {
        w.writer.finish().map(|_| TD_OK).map_err(|e| e.to_string())
    })
}

/// `td_writer_close`, handing back the trace's bytes in `*bytes` (free
/// them with `td_bytes_free`) and their count in `*len`: those of a
/// `td_writer_open_memory` writer, or a file writer's file read back.
/// Frees `w`; on error `*bytes` and `*len` are left as they were.
///
/// # Safety
/// `w` as `td_writer_close`'s; `bytes` and `len` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn td_writer_close_bytes(
    w: *mut td_writer,
    bytes: *mut *mut u8,
    len: *mut usize,
) -> i32 {
    if w.is_null() {
        set_error("writer is NULL");
        return TD_ERROR;
    }
    // SAFETY: from Box::into_raw in td_writer_open*, given back once.
    let w = unsafe { Box::from_raw(w) };
    guard("td_writer_close_bytes", || {
        let (_, trace) = w.writer.finish_into_bytes().map_err(|e| e.to_string())?;
        // SAFETY: the caller's promise.
        unsafe { hand_out(trace, bytes, len) }
    })
}

/// Hand everything recorded so far to the operating system.
///
/// # Safety
/// `w` is null or a live writer.
#[no_mangle]
pub unsafe extern "C" fn td_writer_flush(w: *const td_writer) -> i32 {
    guard("td_writer_flush", || {
        // SAFETY: null or live (the caller's promise).
        let w = unsafe { w.as_ref() }.ok_or("writer is NULL")?;
        w.writer.flush().map(|_| TD_OK).map_err(|e| e.to_string())
    })
}

/// Background mode: allocate and touch the queue's memory (`queue_bytes`)
/// now, so that recording a large tensor is a plain copy into memory that
/// is already mapped; costs about 0.1 s per 256 MiB. Sync mode: does
/// nothing.
///
/// # Safety
/// `w` is null or a live writer.
#[no_mangle]
pub unsafe extern "C" fn td_writer_preallocate(w: *const td_writer) -> i32 {
    guard("td_writer_preallocate", || {
        // SAFETY: null or live (the caller's promise).
        let w = unsafe { w.as_ref() }.ok_or("writer is NULL")?;
        w.writer
            .preallocate()
            .map(|_| TD_OK)
            .map_err(|e| e.to_string())
    })
}
