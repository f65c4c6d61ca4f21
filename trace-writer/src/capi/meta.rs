//! `td_meta`: the lineage and metadata builder of the next tensor.

use std::ffi::c_char;

use trace_format::layout::ggml as ggml_layout;
use trace_format::Op;

use super::*;

/// A new, empty lineage/metadata builder (free with `td_meta_free`).
#[no_mangle]
pub extern "C" fn td_meta_new() -> *mut td_meta {
    Box::into_raw(Box::default())
}

/// Free a builder (NULL does nothing).
///
/// # Safety
/// `m` is null or from `td_meta_new`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn td_meta_free(m: *mut td_meta) {
    if !m.is_null() {
        // SAFETY: from Box::into_raw in td_meta_new, given back once.
        drop(unsafe { Box::from_raw(m) });
    }
}

/// Apply `f` to a live builder.
///
/// # Safety
/// `m` is null or a live builder used by this thread only.
unsafe fn with_meta(
    m: *mut td_meta,
    what: &str,
    f: impl FnOnce(&mut TensorMeta) -> Result<(), String>,
) -> i32 {
    guard(what, || {
        // SAFETY: null or live and unshared (the caller's promise).
        let m = unsafe { m.as_mut() }.ok_or("meta is NULL")?;
        f(&mut m.meta).map(|_| TD_OK)
    })
}

/// Set the layer (`TD_NONE`: none).
///
/// # Safety
/// `m` is null or a live builder.
#[no_mangle]
pub unsafe extern "C" fn td_meta_layer(m: *mut td_meta, layer: i64) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_layer", |m| {
            m.layer = opt_i64(layer);
            Ok(())
        })
    }
}

/// Set the step (`TD_NONE`: none).
///
/// # Safety
/// `m` is null or a live builder.
#[no_mangle]
pub unsafe extern "C" fn td_meta_step(m: *mut td_meta, step: i64) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_step", |m| {
            m.step = opt_i64(step);
            Ok(())
        })
    }
}

/// Set the role (`q`, `k`, `v`, `mask`, `kqv_out`, `k_quant`…; NULL: none).
///
/// # Safety
/// `m` is null or a live builder; `role` null or a C string.
#[no_mangle]
pub unsafe extern "C" fn td_meta_role(m: *mut td_meta, role: *const c_char) -> i32 {
    // SAFETY: the caller's promise.
    let role = match unsafe { opt_text(role, "role") } {
        Ok(r) => r.map(str::to_owned),
        Err(e) => {
            set_error(e);
            return TD_ERROR;
        }
    };
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_role", |m| {
            m.role = role;
            Ok(())
        })
    }
}

/// Add a parent: the record id of an earlier tensor.
///
/// # Safety
/// `m` is null or a live builder.
#[no_mangle]
pub unsafe extern "C" fn td_meta_parent(m: *mut td_meta, id: u64) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_parent", |m| {
            m.lineage.parents.push(id);
            Ok(())
        })
    }
}

/// Add a `View` step: offset in bytes from the current start, the view's
/// shape and byte strides in `order`.
///
/// # Safety
/// `m` is null or a live builder; arrays hold `ndim` items.
#[no_mangle]
pub unsafe extern "C" fn td_meta_view(
    m: *mut td_meta,
    offset: u64,
    ndim: u32,
    shape: *const i64,
    byte_strides: *const i64,
    order: u32,
) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_view", |m| {
            let shape = slice(shape, ndim as usize, "shape")?;
            let strides = slice(byte_strides, ndim as usize, "byte_strides")?;
            let l = canonical(order, shape, Some(strides), DType::U8, 0)?;
            m.lineage.ops.push(Op::View {
                offset,
                shape: l.shape().to_vec(),
                byte_strides: l.byte_strides().to_vec(),
            });
            Ok(())
        })
    }
}

/// Add a `Permute` step: canonical axes (numpy's meaning), or with
/// `TD_ORDER_GGML` ggml_permute's four arguments.
///
/// # Safety
/// `m` is null or a live builder; `axes` holds `ndim` items.
#[no_mangle]
pub unsafe extern "C" fn td_meta_permute(
    m: *mut td_meta,
    ndim: u32,
    axes: *const u32,
    order: u32,
) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_permute", |m| {
            let axes = slice(axes, ndim as usize, "axes")?.to_vec();
            let axes = match order {
                TD_ORDER_CANONICAL => axes,
                TD_ORDER_GGML => ggml_layout::permute_axes(&axes)
                    .ok_or_else(|| format!("ggml permute {axes:?} is not a permutation"))?,
                o => return Err(format!("unknown order {o}")),
            };
            m.lineage.ops.push(Op::Permute { axes });
            Ok(())
        })
    }
}

/// Add a `Reshape` step to `shape` (in `order`).
///
/// # Safety
/// `m` is null or a live builder; `shape` holds `ndim` items.
#[no_mangle]
pub unsafe extern "C" fn td_meta_reshape(
    m: *mut td_meta,
    ndim: u32,
    shape: *const i64,
    order: u32,
) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_reshape", |m| {
            let shape = slice(shape, ndim as usize, "shape")?;
            let l = canonical(order, shape, None, DType::U8, 0)?;
            m.lineage.ops.push(Op::Reshape {
                shape: l.shape().to_vec(),
            });
            Ok(())
        })
    }
}

/// Add a `Transpose{a, b}` step (canonical axes).
///
/// # Safety
/// `m` is null or a live builder.
#[no_mangle]
pub unsafe extern "C" fn td_meta_transpose(m: *mut td_meta, a: u32, b: u32) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_transpose", |m| {
            m.lineage.ops.push(Op::Transpose { a, b });
            Ok(())
        })
    }
}

/// Add a value step: 5 `Cont`, 6 `Convert`, 7 `Quantize`, 8 `Dequantize`
/// (to `dtype`), 9 `Concat` (along canonical axis `dtype`), as SPEC.md §5.4
/// numbers them.
///
/// # Safety
/// `m` is null or a live builder.
#[no_mangle]
pub unsafe extern "C" fn td_meta_op(m: *mut td_meta, tag: u32, dtype: i32) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_op", |m| {
            let d = || dtype_of(dtype, "(lineage)");
            let op = match tag {
                5 => Op::Cont,
                6 => Op::Convert { dtype: d()? },
                7 => Op::Quantize { dtype: d()? },
                8 => Op::Dequantize { dtype: d()? },
                9 => Op::Concat {
                    axis: u32::try_from(dtype).map_err(|_| format!("axis {dtype}"))?,
                },
                t => return Err(format!("op tag {t} is not a value step (5..=9)")),
            };
            m.lineage.ops.push(op);
            Ok(())
        })
    }
}

/// Set the engine's own op: family (`ggml`), name (`PERMUTE`) and raw
/// parameters (kept verbatim).
///
/// # Safety
/// `m` is null or a live builder; strings C strings; `params` holds `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn td_meta_engine_op(
    m: *mut td_meta,
    engine: *const c_char,
    op: *const c_char,
    params: *const c_void,
    len: usize,
) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_engine_op", |m| {
            let engine = text(engine, "engine")?;
            let op = text(op, "op")?;
            let params = slice(params.cast::<u8>(), len, "params")?;
            *m = std::mem::take(m).engine_op(engine, op, params);
            Ok(())
        })
    }
}

/// Computed from `n` input records (added as parents, in order) by the op
/// `name` (`rms_norm`, `mul_mat`): format 1.1's op relation, which lets
/// `tracedump diff` blame the op that made a divergence.
///
/// # Safety
/// `m` is null or a live builder; `name` a C string; `inputs` holds `n` ids.
#[no_mangle]
pub unsafe extern "C" fn td_meta_computed_from(
    m: *mut td_meta,
    name: *const c_char,
    inputs: *const u64,
    n: usize,
) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_computed_from", |m| {
            let name = text(name, "name")?;
            let inputs = slice(inputs, n, "inputs")?;
            *m = std::mem::take(m).computed_from(name, inputs);
            Ok(())
        })
    }
}

/// A typed parameter of the op that made the tensor, as a double (`eps`,
/// `freq_base`, `scale`).
///
/// # Safety
/// `m` is null or a live builder; `key` a C string.
#[no_mangle]
pub unsafe extern "C" fn td_meta_op_param_f64(
    m: *mut td_meta,
    key: *const c_char,
    value: f64,
) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_op_param_f64", |m| {
            let key = text(key, "key")?;
            *m = std::mem::take(m).op_param(key, value);
            Ok(())
        })
    }
}

/// A typed parameter of the op that made the tensor, as an integer (RoPE's
/// `mode`, `n_dims`).
///
/// # Safety
/// `m` is null or a live builder; `key` a C string.
#[no_mangle]
pub unsafe extern "C" fn td_meta_op_param_i64(
    m: *mut td_meta,
    key: *const c_char,
    value: i64,
) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_op_param_i64", |m| {
            let key = text(key, "key")?;
            *m = std::mem::take(m).op_param(key, value);
            Ok(())
        })
    }
}

/// Keep ggml's `ne`/`nb` as the tensor's source layout.
///
/// # Safety
/// `m` is null or a live builder; `ne`, `nb` hold `ndim` items.
#[no_mangle]
pub unsafe extern "C" fn td_meta_ggml_layout(
    m: *mut td_meta,
    ndim: u32,
    ne: *const i64,
    nb: *const u64,
) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_ggml_layout", |m| {
            let ne = slice(ne, ndim as usize, "ne")?;
            let nb = slice(nb, ndim as usize, "nb")?;
            *m = std::mem::take(m).ggml_layout(ne, nb);
            Ok(())
        })
    }
}

/// Metadata `key` = a string.
///
/// # Safety
/// `m` is null or a live builder; strings are C strings.
#[no_mangle]
pub unsafe extern "C" fn td_meta_str(
    m: *mut td_meta,
    key: *const c_char,
    value: *const c_char,
) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_str", |m| {
            m.metadata.insert(text(key, "key")?, text(value, "value")?);
            Ok(())
        })
    }
}

/// Metadata `key` = an integer.
///
/// # Safety
/// `m` is null or a live builder; `key` a C string.
#[no_mangle]
pub unsafe extern "C" fn td_meta_int(m: *mut td_meta, key: *const c_char, value: i64) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_int", |m| {
            m.metadata.insert(text(key, "key")?, value);
            Ok(())
        })
    }
}

/// Metadata `key` = a float.
///
/// # Safety
/// `m` is null or a live builder; `key` a C string.
#[no_mangle]
pub unsafe extern "C" fn td_meta_float(m: *mut td_meta, key: *const c_char, value: f64) -> i32 {
    // SAFETY: the caller's promise.
    unsafe {
        with_meta(m, "td_meta_float", |m| {
            m.metadata.insert(text(key, "key")?, value);
            Ok(())
        })
    }
}
