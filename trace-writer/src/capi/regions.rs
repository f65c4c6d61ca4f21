//! `td_regions_*`: views of memory already recorded, found by address
//! ([`crate::Regions`]), so that a tensor over bytes recorded before is
//! recorded as a view of that record (`td_add_view`), not a second copy.
//! A region is offered only while its bytes hash to what was recorded; C
//! has no owner to watch, so memory freed and reused with other bytes is
//! told by its checksum, and `td_regions_clear` forgets everything.

use std::ffi::c_void;

use super::add::put;
use super::*;

/// A new, empty set of regions (free with `td_regions_free`).
#[no_mangle]
pub extern "C" fn td_regions_new() -> *mut td_regions {
    boxed("td_regions_new", || Ok(td_regions::default()))
}

/// Free `r` (NULL does nothing).
///
/// # Safety
/// `r` is null or from `td_regions_new`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn td_regions_free(r: *mut td_regions) {
    if !r.is_null() {
        // SAFETY: from Box::into_raw in td_regions_new, given back once.
        drop(unsafe { Box::from_raw(r) });
    }
}

/// Forget every region (memory freed, a new graph).
///
/// # Safety
/// `r` is null or live.
#[no_mangle]
pub unsafe extern "C" fn td_regions_clear(r: *mut td_regions) -> i32 {
    guard("td_regions_clear", || {
        // SAFETY: null or live (the caller's promise).
        let r = unsafe { r.as_mut() }.ok_or("regions is NULL")?;
        r.regions.clear();
        Ok(TD_OK)
    })
}

/// Remember that record `id` (a storage, or a tensor with its own bytes:
/// `is_tensor` non-zero) holds the `len` bytes at `start`.
///
/// # Safety
/// `r` is null or live. `start` is only compared, never read.
#[no_mangle]
pub unsafe extern "C" fn td_regions_add(
    r: *mut td_regions,
    start: *const c_void,
    len: usize,
    id: u64,
    is_tensor: i32,
) -> i32 {
    guard("td_regions_add", || {
        // SAFETY: null or live (the caller's promise).
        let r = unsafe { r.as_mut() }.ok_or("regions is NULL")?;
        let start = start as usize;
        if start.checked_add(len).is_none() {
            return Err(format!(
                "a region of {len} bytes at {start:#x} wraps around"
            ));
        }
        let region = crate::Region {
            start,
            len,
            id,
            is_tensor: is_tensor != 0,
            owner: (),
        };
        r.regions.push(region, |_| true);
        Ok(TD_OK)
    })
}

/// Find the newest region holding the `len` bytes at `data` and lying
/// inside the `base_len` bytes at `base` (the memory the caller records
/// from, which holds `data`), whose bytes still hash to the crc32c `w`
/// recorded for its payload. `TD_OK`: found, `*out_id` is its record,
/// `*out_offset` the offset of `data` in it (a view's storage offset) and
/// `*out_is_tensor` whether it is a tensor (each out-pointer may be NULL);
/// `TD_SKIPPED`: none (regions found changed are forgotten).
///
/// # Safety
/// `r` null or live, `w` null or a live writer; `base` null (with
/// `base_len == 0`) or readable for `base_len` bytes; out-pointers null or
/// writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn td_regions_find(
    r: *mut td_regions,
    w: *const td_writer,
    data: *const c_void,
    len: usize,
    base: *const c_void,
    base_len: usize,
    out_id: *mut u64,
    out_offset: *mut u64,
    out_is_tensor: *mut i32,
) -> i32 {
    guard("td_regions_find", || {
        // SAFETY: null or live (the caller's promises).
        let (r, w) = unsafe { (r.as_mut(), w.as_ref()) };
        let r = r.ok_or("regions is NULL")?;
        let w = w.ok_or("writer is NULL")?;
        // SAFETY: readable for base_len bytes (the caller's promise).
        let buf = unsafe { slice(base.cast::<u8>(), base_len, "base") }?;
        let lo = data as usize;
        let hi = lo
            .checked_add(len)
            .ok_or_else(|| format!("{len} bytes at {lo:#x} wrap around"))?;
        let crc_of = |id| w.writer.payload_crc32c(id).ok().flatten();
        let Some(found) = r.regions.find(lo..hi, base as usize, buf, |_| true, crc_of) else {
            return Ok(TD_SKIPPED);
        };
        // SAFETY: each null or writable (the caller's promise).
        unsafe {
            put(out_id, found.id);
            put(out_offset, (lo - found.start) as u64);
            if !out_is_tensor.is_null() {
                out_is_tensor.write_unaligned(i32::from(found.is_tensor));
            }
        }
        Ok(TD_OK)
    })
}
