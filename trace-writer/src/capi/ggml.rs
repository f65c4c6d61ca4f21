//! `td_ggml_*`: the ggml graph recorder.

use std::ffi::{c_char, c_void};

use super::add::finish_add;
use super::open::{hand_out, open_writer};
use super::*;
use crate::ggml::{GgmlNode, GgmlOptions, GgmlView};
use crate::CaptureFilter;

/// Open a trace for a ggml graph recorder (arguments as `td_writer_open`).
///
/// # Safety
/// As [`td_writer_open`].
#[no_mangle]
pub unsafe extern "C" fn td_ggml_open(
    path: *const c_char,
    keys: *const *const c_char,
    values: *const *const c_char,
    n: usize,
    background: i32,
    queue_bytes: u64,
    drop_when_full: i32,
    name_regex: *const c_char,
) -> *mut td_ggml {
    boxed("td_ggml_open", || {
        // SAFETY: the caller's promises.
        unsafe {
            open_recorder(
                Some(path),
                keys,
                values,
                n,
                background,
                queue_bytes,
                drop_when_full,
                name_regex,
            )
        }
    })
}

/// `td_ggml_open` with options (`opts` NULL: the defaults, everything). The
/// filter (`name_regex`, `layers`, `steps`) is answered where ggml asks
/// (`td_ggml_ask`); the graph inputs a recorded tensor reads are recorded
/// whatever it says. NULL on error.
///
/// # Safety
/// As [`td_writer_open`]; `opts` null or valid, its arrays and string
/// valid for this call.
#[no_mangle]
pub unsafe extern "C" fn td_ggml_open_with(
    path: *const c_char,
    keys: *const *const c_char,
    values: *const *const c_char,
    n: usize,
    opts: *const td_ggml_options,
) -> *mut td_ggml {
    boxed("td_ggml_open_with", || {
        // SAFETY: null or valid (the caller's promise).
        let Some(o) = (unsafe { opts.as_ref() }) else {
            // SAFETY: the caller's promises.
            return unsafe {
                open_recorder(Some(path), keys, values, n, 0, 0, 0, std::ptr::null())
            };
        };
        // SAFETY: the caller's promises.
        let (regex, layers, steps) = unsafe {
            (
                opt_text(o.name_regex, "name_regex")?,
                (!o.layers.is_null())
                    .then(|| slice(o.layers, o.n_layers, "layers"))
                    .transpose()?,
                (!o.steps.is_null())
                    .then(|| slice(o.steps, o.n_steps, "steps"))
                    .transpose()?,
            )
        };
        let mut filter = match regex {
            Some(r) => CaptureFilter::names(r).map_err(|e| format!("name_regex: {e}"))?,
            None => CaptureFilter::all(),
        };
        if let Some(l) = layers {
            filter = filter.with_layers(l.iter().copied());
            filter.require_labels = true;
        }
        if let Some(s) = steps {
            filter = filter.with_steps(s.iter().copied());
            filter.require_labels = true;
        }
        let queue = if o.queue_bytes == 0 {
            TD_DEFAULT_QUEUE_BYTES
        } else {
            o.queue_bytes
        };
        // SAFETY: the caller's promises.
        let writer = unsafe {
            open_writer(
                Some(path),
                keys,
                values,
                n,
                o.background,
                queue,
                o.drop_when_full,
                std::ptr::null(),
                // llama.cpp's threads hold the cores: no checksum thread
                false,
            )
        }?;
        Ok(td_ggml {
            recorder: GgmlRecorder::with_options(
                writer,
                GgmlOptions {
                    filter,
                    stats_only: o.stats_only != 0,
                },
            ),
        })
    })
}

/// A recorder on `path` (or in memory) whose name regex is its own filter.
///
/// # Safety
/// As [`td_writer_open`].
#[allow(clippy::too_many_arguments)]
unsafe fn open_recorder(
    path: Option<*const c_char>,
    keys: *const *const c_char,
    values: *const *const c_char,
    n: usize,
    background: i32,
    queue_bytes: u64,
    drop_when_full: i32,
    name_regex: *const c_char,
) -> Result<td_ggml, String> {
    // SAFETY: the caller's promises.
    let filter = match unsafe { opt_text(name_regex, "name_regex")? } {
        Some(r) => CaptureFilter::names(r).map_err(|e| format!("name_regex: {e}"))?,
        None => CaptureFilter::all(),
    };
    // SAFETY: the caller's promises.
    let writer = unsafe {
        open_writer(
            path,
            keys,
            values,
            n,
            background,
            queue_bytes,
            drop_when_full,
            std::ptr::null(),
            // llama.cpp's threads hold the cores: no checksum thread
            false,
        )
    }?;
    Ok(td_ggml {
        recorder: GgmlRecorder::with_options(
            writer,
            GgmlOptions {
                filter,
                stats_only: false,
            },
        ),
    })
}

/// Close the recorder's trace; frees `g` (NULL does nothing).
///
/// # Safety
/// `g` is null or from `td_ggml_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn td_ggml_close(g: *mut td_ggml) -> i32 {
    if g.is_null() {
        return TD_OK;
    }
    // SAFETY: from Box::into_raw in td_ggml_open, given back once.
    let g = unsafe { Box::from_raw(g) };
    guard("td_ggml_close", || {
        g.recorder
            .finish()
            .map(|_| TD_OK)
            .map_err(|e| e.to_string())
    })
}

/// `td_ggml_open` into memory: the trace's bytes come back from
/// `td_ggml_close_bytes` (arguments as `td_writer_open_memory`).
///
/// # Safety
/// As [`td_writer_open`].
#[no_mangle]
pub unsafe extern "C" fn td_ggml_open_memory(
    keys: *const *const c_char,
    values: *const *const c_char,
    n: usize,
    background: i32,
    queue_bytes: u64,
    drop_when_full: i32,
    name_regex: *const c_char,
) -> *mut td_ggml {
    boxed("td_ggml_open_memory", || {
        // SAFETY: the caller's promises.
        unsafe {
            open_recorder(
                None,
                keys,
                values,
                n,
                background,
                queue_bytes,
                drop_when_full,
                name_regex,
            )
        }
    })
}

/// `td_ggml_close`, handing back the trace's bytes as
/// `td_writer_close_bytes` does.
///
/// # Safety
/// `g` as `td_ggml_close`'s; `bytes` and `len` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn td_ggml_close_bytes(
    g: *mut td_ggml,
    bytes: *mut *mut u8,
    len: *mut usize,
) -> i32 {
    if g.is_null() {
        set_error("recorder is NULL");
        return TD_ERROR;
    }
    // SAFETY: from Box::into_raw in td_ggml_open*, given back once.
    let g = unsafe { Box::from_raw(g) };
    guard("td_ggml_close_bytes", || {
        let (_, trace) = g.recorder.finish_into_bytes().map_err(|e| e.to_string())?;
        // SAFETY: the caller's promise.
        unsafe { hand_out(trace, bytes, len) }
    })
}

/// Start step `step` (`TD_NONE`: none): a new graph.
///
/// # Safety
/// `g` is null or live.
#[no_mangle]
pub unsafe extern "C" fn td_ggml_set_step(g: *const td_ggml, step: i64) -> i32 {
    guard("td_ggml_set_step", || {
        // SAFETY: null or live (the caller's promise).
        let g = unsafe { g.as_ref() }.ok_or("recorder is NULL")?;
        g.recorder.set_step(opt_i64(step));
        Ok(TD_OK)
    })
}

/// 1 if a tensor named `name` would be recorded, else 0.
///
/// # Safety
/// `g` null or live; `name` a C string.
#[no_mangle]
pub unsafe extern "C" fn td_ggml_wants(g: *const td_ggml, name: *const c_char) -> i32 {
    // SAFETY: the caller's promises.
    let (Some(g), Ok(name)) = (unsafe { g.as_ref() }, unsafe { text(name, "name") }) else {
        return 0;
    };
    catch_unwind(AssertUnwindSafe(|| i32::from(g.recorder.wants(name)))).unwrap_or(0)
}

/// ggml's question before it computes a node (an eval callback's `ask`):
/// 1 if `td_ggml_record` will record the tensor at `key` named `name`
/// whose sources are `srcs` (`n_srcs`, null entries allowed), else 0. Call
/// it for every node, in graph order: a made-up name (`node_N`) gets the
/// layer its sources agree on (or the later layer whose nodes come before
/// it), so that a layer filter answers it right.
///
/// # Safety
/// `g` null or live; `name` a C string; `srcs` valid for `n_srcs` reads.
#[no_mangle]
pub unsafe extern "C" fn td_ggml_ask(
    g: *const td_ggml,
    key: *const c_void,
    name: *const c_char,
    srcs: *const *const c_void,
    n_srcs: usize,
) -> i32 {
    // SAFETY: the caller's promises.
    unsafe { ask(g, key, name, srcs, n_srcs, None) }
}

/// Both asks: `writes` `None` for a plain `td_ggml_ask`, else what the
/// node writes (`Some(None)`: nothing besides its own bytes).
///
/// # Safety
/// As `td_ggml_ask`.
unsafe fn ask(
    g: *const td_ggml,
    key: *const c_void,
    name: *const c_char,
    srcs: *const *const c_void,
    n_srcs: usize,
    writes: Option<Option<usize>>,
) -> i32 {
    // SAFETY: the caller's promises.
    let (Some(g), Ok(name), Ok(srcs)) = (
        unsafe { g.as_ref() },
        unsafe { text(name, "name") },
        unsafe { slice(srcs, n_srcs, "srcs") },
    ) else {
        return 0;
    };
    catch_unwind(AssertUnwindSafe(|| {
        let mut keys = [0usize; 16];
        let n = srcs.len().min(keys.len());
        for (k, s) in keys.iter_mut().zip(srcs) {
            *k = *s as usize;
        }
        let (key, keys) = (key as usize, &keys[..n]);
        i32::from(match writes {
            None => g.recorder.ask(key, name, keys),
            Some(writes) => g.recorder.ask_node(key, name, keys, writes),
        })
    }))
    .unwrap_or(0)
}

/// `td_ggml_ask`, told also what computing the node writes besides its
/// own bytes: `writes` is `t->view_src` where the node writes into memory
/// it views (an op other than VIEW, RESHAPE, PERMUTE, TRANSPOSE: SET_ROWS,
/// CPY into a view of the KV cache), else null. A recorder asked only this
/// way, with `td_ggml_set_step` called before each graph, knows when a
/// view's owner is unchanged since it last read it in the same graph, and
/// reads it once: a decode step's many views of one KV cache cost one
/// pass, not one each.
///
/// # Safety
/// As `td_ggml_ask`.
#[no_mangle]
pub unsafe extern "C" fn td_ggml_ask_node(
    g: *const td_ggml,
    key: *const c_void,
    name: *const c_char,
    srcs: *const *const c_void,
    n_srcs: usize,
    writes: *const c_void,
) -> i32 {
    let writes = (!writes.is_null()).then_some(writes as usize);
    // SAFETY: the caller's promises.
    unsafe { ask(g, key, name, srcs, n_srcs, Some(writes)) }
}

/// Record one ggml tensor (see `td_ggml_node`).
///
/// # Safety
/// `g` null or live; `node` null or valid with the arrays and strings it
/// describes; `out_id` null or writable.
#[no_mangle]
pub unsafe extern "C" fn td_ggml_record(
    g: *const td_ggml,
    node: *const td_ggml_node,
    out_id: *mut u64,
) -> i32 {
    guard("td_ggml_record", || {
        // SAFETY: null or live / valid (the caller's promises).
        let (g, n) = unsafe {
            (
                g.as_ref().ok_or("recorder is NULL")?,
                node.as_ref().ok_or("node is NULL")?,
            )
        };
        // SAFETY: the node's pointers are valid as described (the caller's promise).
        let (name, op, params, srcs, src_names, data) = unsafe {
            (
                text(n.name, "name")?,
                text(n.op, "op")?,
                slice(n.op_params.cast::<u8>(), n.op_params_len, "op_params")?,
                slice(n.srcs, n.n_srcs, "srcs")?,
                slice(n.src_names, n.n_srcs, "src_names")?,
                slice(n.data.cast::<u8>(), n.data_len, "data")?,
            )
        };
        let mut sources = Vec::with_capacity(srcs.len());
        for (&k, &sn) in srcs.iter().zip(src_names) {
            // SAFETY: null or a C string (the caller's promise).
            let sn = unsafe { opt_text(sn, "src name")? }.unwrap_or("");
            sources.push((k as usize, sn));
        }
        let view_name;
        let view = if n.view_src.is_null() {
            None
        } else {
            // SAFETY: null or a C string (the caller's promise).
            view_name = unsafe { opt_text(n.view_src_name, "view_src_name")? }.unwrap_or("");
            Some(GgmlView {
                owner_key: n.view_src as usize,
                owner_name: view_name,
                offset: n.view_offs,
            })
        };
        let id = g
            .recorder
            .record(&GgmlNode {
                name,
                op,
                ggml_type: n.ggml_type,
                ne: n.ne,
                nb: n.nb,
                op_params: params,
                key: n.key as usize,
                srcs: &sources,
                data,
                view,
                once: n.once != 0,
            })
            .map_err(|e| e.to_string())?;
        finish_add(id, out_id)
    })
}
