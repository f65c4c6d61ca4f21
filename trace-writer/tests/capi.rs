//! The C ABI called from Rust, as a C caller would: small enough to run
//! under Miri (`make miri`), which checks every `unsafe` block on the way
//! (pointer reads, string and slice construction, boxes handed out and back).

use std::ffi::{c_void, CStr, CString};
use std::ptr::{null, null_mut};

use trace_writer::capi::*;

fn last_error() -> String {
    // SAFETY: td_last_error returns a valid C string owned by this thread.
    unsafe { CStr::from_ptr(td_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_function_and_every_error_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = CString::new(dir.path().join("c.tdump").to_str().unwrap()).unwrap();
    let name = |s: &str| CString::new(s).unwrap();
    // SAFETY: every pointer below is null where the ABI allows it, or points
    // at live data of the length passed; the writer and builders are used
    // only while alive and freed once.
    unsafe {
        assert_eq!(td_dtype_from_name(name("f16").as_ptr()), 1);
        assert_eq!(td_dtype_from_name(null()), -1);
        assert!(td_writer_open(null(), null(), null(), 0, 0, 0, 0, null()).is_null());
        assert!(last_error().contains("path is NULL"));
        assert!(td_writer_open(path.as_ptr(), null(), null(), 3, 0, 0, 0, null()).is_null());
        assert!(last_error().contains("keys is NULL"));

        let (k, v) = (name("engine"), name("miri"));
        let keys = [k.as_ptr()];
        let values = [v.as_ptr()];
        let w = td_writer_open(
            path.as_ptr(),
            keys.as_ptr(),
            values.as_ptr(),
            1,
            0,
            0,
            0,
            null(),
        );
        assert!(!w.is_null(), "{}", last_error());

        let data: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let shape = [2i64, 3];
        let m = td_meta_new();
        assert_eq!(td_meta_layer(m, 1), TD_OK);
        assert_eq!(td_meta_step(m, TD_NONE), TD_OK);
        assert_eq!(td_meta_role(m, name("q").as_ptr()), TD_OK);
        assert_eq!(
            td_meta_str(m, name("k").as_ptr(), name("v").as_ptr()),
            TD_OK
        );
        assert_eq!(td_meta_int(m, name("n").as_ptr(), 3), TD_OK);
        assert_eq!(td_meta_float(m, name("x").as_ptr(), 0.25), TD_OK);
        assert_eq!(
            td_meta_engine_op(m, name("ggml").as_ptr(), name("NONE").as_ptr(), null(), 0),
            TD_OK
        );
        let ne = [3i64, 2];
        let nb = [4u64, 12];
        assert_eq!(td_meta_ggml_layout(m, 2, ne.as_ptr(), nb.as_ptr()), TD_OK);
        let mut id = u64::MAX;
        let rc = td_add_tensor(
            w,
            name("a").as_ptr(),
            0,
            2,
            shape.as_ptr(),
            null(),
            TD_ORDER_CANONICAL,
            0,
            data.as_ptr().cast::<c_void>(),
            24,
            m,
            &mut id,
        );
        assert_eq!(rc, TD_OK, "{}", last_error());
        td_meta_free(m);

        // a transposed view, in ggml order, with lineage
        let m = td_meta_new();
        assert_eq!(td_meta_parent(m, id), TD_OK);
        assert_eq!(td_meta_transpose(m, 0, 1), TD_OK);
        let perm = [1u32, 0];
        assert_eq!(td_meta_permute(m, 2, perm.as_ptr(), TD_ORDER_GGML), TD_OK);
        assert_eq!(td_meta_permute(m, 2, perm.as_ptr(), 9), TD_ERROR);
        assert_eq!(
            td_meta_reshape(m, 2, shape.as_ptr(), TD_ORDER_CANONICAL),
            TD_OK
        );
        assert_eq!(
            td_meta_view(
                m,
                0,
                2,
                shape.as_ptr(),
                [12i64, 4].as_ptr(),
                TD_ORDER_CANONICAL
            ),
            TD_OK
        );
        assert_eq!(td_meta_op(m, 5, 0), TD_OK);
        assert_eq!(td_meta_op(m, 6, 1), TD_OK);
        assert_eq!(td_meta_op(m, 7, 8), TD_OK);
        assert_eq!(td_meta_op(m, 8, 0), TD_OK);
        assert_eq!(td_meta_op(m, 9, 0), TD_OK);
        assert_eq!(td_meta_op(m, 3, 0), TD_ERROR);
        td_meta_free(m);
        let m = td_meta_new();
        assert_eq!(td_meta_parent(m, id), TD_OK);
        let gne = [2i64, 3];
        let gnb = [12i64, 4];
        let mut vid = 0;
        let rc = td_add_view(
            w,
            name("a_t").as_ptr(),
            0,
            2,
            gne.as_ptr(),
            gnb.as_ptr(),
            TD_ORDER_GGML,
            id,
            0,
            m,
            &mut vid,
        );
        assert_eq!(rc, TD_OK, "{}", last_error());
        td_meta_free(m);

        let mut sid = 0;
        let bytes = [1u8; 16];
        assert_eq!(
            td_add_storage(w, name("s").as_ptr(), bytes.as_ptr().cast(), 16, &mut sid),
            TD_OK
        );
        assert_eq!(
            td_add_stats(
                w,
                name("st").as_ptr(),
                0,
                2,
                shape.as_ptr(),
                TD_ORDER_CANONICAL,
                data.as_ptr().cast(),
                24,
                null(),
                null_mut()
            ),
            TD_OK
        );
        // errors name the tensor; nothing crashes
        let rc = td_add_tensor(
            w,
            name("short").as_ptr(),
            0,
            2,
            shape.as_ptr(),
            null(),
            0,
            0,
            data.as_ptr().cast(),
            8,
            null(),
            null_mut(),
        );
        assert_eq!(rc, TD_ERROR);
        assert!(last_error().contains("short"));
        assert_eq!(
            td_add_tensor(
                w,
                null(),
                0,
                0,
                null(),
                null(),
                0,
                0,
                null(),
                0,
                null(),
                null_mut()
            ),
            TD_ERROR
        );
        assert_eq!(
            td_add_tensor(
                w,
                name("nd").as_ptr(),
                0,
                2,
                null(),
                null(),
                0,
                0,
                null(),
                0,
                null(),
                null_mut()
            ),
            TD_ERROR
        );
        assert_eq!(
            td_add_view(
                w,
                name("bad").as_ptr(),
                0,
                1,
                shape.as_ptr(),
                null(),
                0,
                999,
                0,
                null(),
                null_mut()
            ),
            TD_ERROR
        );
        assert_eq!(
            td_add_tensor(
                null(),
                name("x").as_ptr(),
                0,
                0,
                null(),
                null(),
                0,
                0,
                null(),
                0,
                null(),
                null_mut()
            ),
            TD_ERROR
        );
        assert_eq!(td_meta_layer(null_mut(), 0), TD_ERROR);
        assert_eq!(td_writer_flush(w), TD_OK);
        assert_eq!(td_writer_close(w), TD_OK);
        assert_eq!(td_writer_close(null_mut()), TD_OK);

        // the ggml recorder: an owner and a permuted view of it
        let gpath = CString::new(dir.path().join("g.tdump").to_str().unwrap()).unwrap();
        let g = td_ggml_open(gpath.as_ptr(), null(), null(), 0, 0, 0, 0, null());
        assert!(!g.is_null());
        assert_eq!(td_ggml_wants(g, name("x").as_ptr()), 1);
        assert_eq!(td_ggml_set_step(g, 0), TD_OK);
        let owner_data: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let (kq, op, mm) = (name("kq-0"), name("PERMUTE"), name("MUL_MAT"));
        let owner_key = 0x1000usize as *const c_void;
        let node = td_ggml_node {
            name: kq.as_ptr(),
            op: mm.as_ptr(),
            ggml_type: 0,
            ne: [4, 2, 1, 1],
            nb: [4, 16, 32, 32],
            op_params: null(),
            op_params_len: 0,
            key: owner_key,
            srcs: null(),
            src_names: null(),
            n_srcs: 0,
            data: owner_data.as_ptr().cast(),
            data_len: 32,
            view_src: null(),
            view_src_name: null(),
            view_offs: 0,
            once: 0,
        };
        let mut gid = 0;
        assert_eq!(
            td_ggml_record(g, &node, &mut gid),
            TD_OK,
            "{}",
            last_error()
        );
        let params = [1i32, 0, 2, 3];
        let srcs = [owner_key];
        let src_names = [kq.as_ptr()];
        let pname = name("node_3");
        let view = td_ggml_node {
            name: pname.as_ptr(),
            op: op.as_ptr(),
            ne: [2, 4, 1, 1],
            nb: [16, 4, 32, 32],
            op_params: params.as_ptr().cast(),
            op_params_len: 16,
            key: 0x2000usize as *const c_void,
            srcs: srcs.as_ptr(),
            src_names: src_names.as_ptr(),
            n_srcs: 1,
            view_src: owner_key,
            view_src_name: kq.as_ptr(),
            ..node
        };
        assert_eq!(
            td_ggml_record(g, &view, &mut gid),
            TD_OK,
            "{}",
            last_error()
        );
        let bad = td_ggml_node {
            ggml_type: 999,
            key: 0x3000usize as *const c_void,
            ..view
        };
        assert_eq!(td_ggml_record(g, &bad, null_mut()), TD_ERROR);
        assert!(last_error().contains("node_3"));
        assert_eq!(td_ggml_record(g, null(), null_mut()), TD_ERROR);
        assert_eq!(td_ggml_close(g), TD_OK);
    }
}

#[test]
fn memory_writer_and_recorder_hand_back_their_bytes() {
    let magic = trace_format::record::encode_file_header();
    // SAFETY: as above; the bytes handed out are read within their length
    // and freed once.
    unsafe {
        let (mut bytes, mut len) = (null_mut::<u8>(), 0usize);
        assert_eq!(
            td_writer_close_bytes(null_mut(), &mut bytes, &mut len),
            TD_ERROR
        );
        assert!(last_error().contains("writer is NULL"));
        assert_eq!(
            td_ggml_close_bytes(null_mut(), &mut bytes, &mut len),
            TD_ERROR
        );
        assert!(last_error().contains("recorder is NULL"));
        td_bytes_free(null_mut(), 0);

        let w = td_writer_open_memory(null(), null(), 0, 0, 0, 0, null());
        assert!(!w.is_null(), "{}", last_error());
        let data = [1.0f32, 2.0, 3.0];
        let shape = [3i64];
        let name = CString::new("x").unwrap();
        let mut id = 0;
        let code = td_add_tensor(
            w,
            name.as_ptr(),
            0,
            1,
            shape.as_ptr(),
            null(),
            TD_ORDER_CANONICAL,
            0,
            data.as_ptr().cast(),
            12,
            null(),
            &mut id,
        );
        assert_eq!(code, TD_OK, "{}", last_error());
        assert_eq!(id, 1);
        assert_eq!(
            td_writer_close_bytes(w, &mut bytes, &mut len),
            TD_OK,
            "{}",
            last_error()
        );
        let trace = std::slice::from_raw_parts(bytes, len);
        assert!(trace.starts_with(&magic));
        // the tensor's bytes are in the trace
        let payload: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(trace.windows(12).any(|w| w == payload.as_slice()));
        td_bytes_free(bytes, len);

        // a bad filter fails the open, as td_writer_open's does
        let bad = CString::new("(").unwrap();
        assert!(td_ggml_open_memory(null(), null(), 0, 0, 0, 0, bad.as_ptr()).is_null());
        assert!(last_error().contains("name_regex"));
        let g = td_ggml_open_memory(null(), null(), 0, 1, 1 << 20, 0, null());
        assert!(!g.is_null(), "{}", last_error());
        let (mut gbytes, mut glen) = (null_mut::<u8>(), 0usize);
        assert_eq!(td_ggml_close_bytes(g, null_mut(), &mut glen), TD_ERROR);
        assert!(last_error().contains("bytes or len is NULL"));
        let g = td_ggml_open_memory(null(), null(), 0, 1, 1 << 20, 0, null());
        assert_eq!(
            td_ggml_close_bytes(g, &mut gbytes, &mut glen),
            TD_OK,
            "{}",
            last_error()
        );
        assert!(std::slice::from_raw_parts(gbytes, glen).starts_with(&magic));
        assert!(
            glen < len,
            "the recorder's trace holds only its run metadata"
        );
        td_bytes_free(gbytes, glen);
    }
}

#[test]
fn regions_find_recorded_bytes_while_they_are_unchanged() {
    // SAFETY: as above; `cache` outlives every call that is given it.
    unsafe {
        let r = td_regions_new();
        assert!(!r.is_null());
        let w = td_writer_open_memory(null(), null(), 0, 0, 0, 0, null());
        assert!(!w.is_null(), "{}", last_error());
        let mut cache: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let name = CString::new("cache").unwrap();
        let mut sid = 0;
        let code = td_add_storage(w, name.as_ptr(), cache.as_ptr().cast(), 256, &mut sid);
        assert_eq!(code, TD_OK, "{}", last_error());
        assert_eq!(td_regions_add(r, cache.as_ptr().cast(), 256, sid, 0), TD_OK);

        let (mut id, mut offset, mut is_tensor) = (0u64, 0u64, -1i32);
        let base = cache.as_ptr();
        let code = td_regions_find(
            r,
            w,
            base.add(8).cast(),
            16,
            base.cast(),
            256,
            &mut id,
            &mut offset,
            &mut is_tensor,
        );
        assert_eq!(code, TD_OK, "{}", last_error());
        assert_eq!((id, offset, is_tensor), (sid, 32, 0));
        // past the region's end: none
        let past = td_regions_find(
            r,
            w,
            base.add(60).cast(),
            32,
            base.cast(),
            256,
            null_mut(),
            null_mut(),
            null_mut(),
        );
        assert_eq!(past, TD_SKIPPED);
        // errors are values
        assert_eq!(
            td_regions_find(
                null_mut(),
                w,
                base.cast(),
                4,
                base.cast(),
                256,
                null_mut(),
                null_mut(),
                null_mut()
            ),
            TD_ERROR
        );
        assert!(last_error().contains("regions is NULL"));
        assert_eq!(
            td_regions_find(
                r,
                null(),
                base.cast(),
                4,
                base.cast(),
                256,
                null_mut(),
                null_mut(),
                null_mut()
            ),
            TD_ERROR
        );
        assert!(last_error().contains("writer is NULL"));
        assert_eq!(td_regions_add(null_mut(), base.cast(), 4, 0, 0), TD_ERROR);
        assert_eq!(
            td_regions_add(r, std::ptr::without_provenance(usize::MAX), 2, 0, 0),
            TD_ERROR
        );
        assert!(last_error().contains("wraps around"));

        // the bytes change: the region is no longer offered
        cache[3] = -1.0;
        let changed = td_regions_find(
            r,
            w,
            base.add(8).cast(),
            16,
            base.cast(),
            256,
            &mut id,
            null_mut(),
            null_mut(),
        );
        assert_eq!(changed, TD_SKIPPED);
        assert_eq!(td_regions_clear(r), TD_OK);
        assert_eq!(td_regions_clear(null_mut()), TD_ERROR);
        td_regions_free(r);
        td_regions_free(null_mut());
        assert_eq!(td_writer_close(w), TD_OK);
    }
}
