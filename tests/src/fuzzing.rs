//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), here so that
//! the corpus-replay test (`tests/fuzz_corpus.rs`) runs the very same code
//! over everything the fuzzers kept.
//!
//! Each body takes arbitrary bytes and must neither panic nor exhaust
//! memory; where a body writes a trace, the reader must accept what the
//! writer wrote (a violation panics, which the fuzzer reports as a crash).

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use trace_reader::values::value_limit;
use trace_reader::{DType, Fault, TensorFilter, Trace};
use trace_writer::capi::{self, td_ggml_node, TD_ERROR, TD_NONE, TD_OK, TD_SKIPPED};
use trace_writer::Writer;

use trace_tools::import;

/// Tensors with more values than this are not read value by value in
/// [`read_all`] (unless they exceed the reader's own limit, which is
/// refused cheaply): every decoding path is reached with a block or two,
/// and a zero-stride view can name 2^23 values of a few bytes, which costs
/// a second per input and finds nothing new.
const VALUE_CAP: u64 = 1 << 10;

/// Data bytes when the input runs out: small floats, a NaN, an infinity,
/// a subnormal and a negative zero in f32, and whatever they are in other
/// dtypes.
const PATTERN: [u8; 32] = [
    0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0xc0, 0x7f, 0x00, 0x00, 0x80, 0x7f,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0xcd, 0xcc, 0x4c, 0x3e, 0x3c, 0x00, 0x00, 0x00,
];

/// A trace file's bytes: open, read every record and tensor (descriptions,
/// views, values, statistics), then `verify`.
pub fn trace_bytes(data: &[u8]) {
    if let Ok(trace) = Trace::from_bytes("fuzz.tdump", data.to_vec()) {
        read_all(&trace);
        let _ = trace.verify();
    }
}

/// A GGUF file's bytes (the magic is forced, so every input reaches the GGUF
/// parser): open as a trace, read it all, `verify`, then import it into a
/// trace as `tracedump import` does. When every tensor decodes, the import
/// must succeed, the reader must accept its output without a fault, and
/// every tensor's bytes must come back unchanged.
pub fn gguf_bytes(data: &[u8]) {
    let mut bytes = data.to_vec();
    let magic = trace_reader::gguf::GGUF_MAGIC;
    if bytes.len() < magic.len() {
        return;
    }
    bytes[..magic.len()].copy_from_slice(magic);
    let Ok(trace) = Trace::from_bytes("fuzz.gguf", bytes) else {
        return;
    };
    assert!(
        trace.is_gguf(),
        "a file with the GGUF magic opened as a trace"
    );
    read_all(&trace);
    let _ = trace.verify();
    if trace.tensors().any(|t| t.is_err()) {
        return;
    }
    let out = Scratch::new();
    let w = Writer::create(&out.0, import::gguf_run_metadata(&trace, "fuzz.gguf"))
        .unwrap_or_else(|e| panic!("cannot write the imported GGUF: {e}"));
    if let Err(e) = import::record_gguf(&trace, "fuzz.gguf", &w) {
        panic!("a GGUF whose tensors all decode fails to import: {e:#}");
    }
    w.finish()
        .unwrap_or_else(|e| panic!("cannot finish the imported GGUF: {e}"));
    let back = check_file(&out.0);
    assert_eq!(back.len(), trace.len(), "tensors lost in the import");
    for (&a, &b) in trace.tensor_ids().iter().zip(back.tensor_ids()) {
        let (va, vb) = (trace.view(a).unwrap(), back.view(b).unwrap());
        assert_eq!(va.info().name, vb.info().name);
        assert_eq!(va.info().dtype, vb.info().dtype);
        assert_eq!(va.info().layout.shape(), vb.info().layout.shape());
        assert_eq!(va.contiguous_bytes(), vb.contiguous_bytes());
    }
}

/// A safetensors file's bytes through `tracedump import`'s conversion: when
/// it records, the reader must accept the trace without a fault and every
/// tensor must hold the safetensors tensor's bytes.
pub fn safetensors_import(data: &[u8]) {
    let Ok(st) = import::SafetensorsImport::parse(data, "fuzz.safetensors") else {
        return;
    };
    let out = Scratch::new();
    let w = Writer::create(&out.0, st.run.clone())
        .unwrap_or_else(|e| panic!("cannot write the imported trace: {e}"));
    if st.record(&w).is_err() {
        return;
    }
    w.finish()
        .unwrap_or_else(|e| panic!("cannot finish the imported trace: {e}"));
    let back = check_file(&out.0);
    assert_eq!(back.len(), st.tensor_count(), "tensors lost in the import");
    let parsed = safetensors::SafeTensors::deserialize(data).expect("it parsed once");
    for (name, t) in parsed.tensors() {
        let ids = back.find(&name);
        assert_eq!(ids.len(), 1, "tensor `{name}` recorded {} times", ids.len());
        let v = back.view(ids[0]).unwrap();
        let shape: Vec<u64> = t.shape().iter().map(|&n| n as u64).collect();
        assert_eq!(v.info().layout.shape(), shape, "tensor `{name}`");
        assert_eq!(v.contiguous_bytes(), Some(t.data()), "tensor `{name}`");
    }
}

/// The C ABI driven by a little program the input spells: a writer (or a
/// ggml recorder), then storages, tensors, views, statistics, lineage and
/// metadata builders and ggml nodes with input-chosen dtype ids, dimension
/// counts, shapes, strides, orders, offsets, op names and parameters and
/// data lengths. Every pointer is valid for the length it is passed with
/// (the ABI's contract); the values are what is being tested. No call may
/// panic (the ABI turns a panic into `TD_ERROR` with "panic" in the last
/// error: that is a crash here), and a trace the writer finishes must be
/// one the reader accepts: every tensor decodes and `verify` finds nothing
/// but lineage claims that do not replay (the caller's claims, which the
/// writer records as given).
///
/// The trace is written into memory (`td_writer_open_memory`,
/// `td_writer_close_bytes`: no file to create, allocate, map and remove per
/// input), except for one input in [`FILE_ONE_IN`], chosen by its bytes,
/// which goes through a file as [`capi_to_file`] does.
pub fn capi(data: &[u8]) {
    let hash = data
        .iter()
        .fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    capi_into(data, hash % FILE_ONE_IN == 0);
}

/// One input in this many is written to a file by [`capi`].
const FILE_ONE_IN: u32 = 64;

/// [`capi`] with the trace written to a file (`td_writer_open`,
/// `td_writer_close`) and read back from it; the corpus replay runs every
/// input both ways.
pub fn capi_to_file(data: &[u8]) {
    capi_into(data, true);
}

fn capi_into(data: &[u8], to_file: bool) {
    let mut input = Input(data);
    let out = to_file.then(Scratch::new);
    let path = out
        .as_ref()
        .map(|out| CString::new(out.0.to_string_lossy().into_owned()).expect("no NUL in the path"));
    let flags = input.u8();
    let ggml = flags & 1 != 0;
    let background = i32::from(flags & 6 == 6);
    let drop_when_full = i32::from(flags & 8 != 0);
    let queue_bytes = u64::from(input.u16());
    let regex = (flags & 0xf0 == 0xf0).then(|| input.text(8));
    let n_meta = usize::from(input.u8() % 3);
    let keys: Vec<CString> = (0..n_meta).map(|_| input.text(12)).collect();
    let values: Vec<CString> = (0..n_meta).map(|_| input.text(12)).collect();
    let key_ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
    let value_ptrs: Vec<*const c_char> = values.iter().map(|v| v.as_ptr()).collect();
    let regex_ptr = regex.as_ref().map_or(std::ptr::null(), |r| r.as_ptr());
    let (keys, values) = (key_ptrs.as_ptr(), value_ptrs.as_ptr());
    let mut session = if ggml {
        // SAFETY: every pointer is null or valid for the count passed with it.
        let g = unsafe {
            match &path {
                Some(path) => capi::td_ggml_open(
                    path.as_ptr(),
                    keys,
                    values,
                    n_meta,
                    background,
                    queue_bytes,
                    drop_when_full,
                    regex_ptr,
                ),
                None => capi::td_ggml_open_memory(
                    keys,
                    values,
                    n_meta,
                    background,
                    queue_bytes,
                    drop_when_full,
                    regex_ptr,
                ),
            }
        };
        if g.is_null() {
            no_panic("td_ggml_open", TD_ERROR);
            return;
        }
        Session::Ggml(g)
    } else {
        // SAFETY: as above.
        let w = unsafe {
            match &path {
                Some(path) => capi::td_writer_open(
                    path.as_ptr(),
                    keys,
                    values,
                    n_meta,
                    background,
                    queue_bytes,
                    drop_when_full,
                    regex_ptr,
                ),
                None => capi::td_writer_open_memory(
                    keys,
                    values,
                    n_meta,
                    background,
                    queue_bytes,
                    drop_when_full,
                    regex_ptr,
                ),
            }
        };
        if w.is_null() {
            no_panic("td_writer_open", TD_ERROR);
            return;
        }
        Session::Writer(w)
    };
    let mut ids: Vec<u64> = Vec::new();
    let meta = capi::td_meta_new();
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        match &mut session {
            Session::Writer(w) => writer_step(*w, meta, &mut input, &mut ids),
            Session::Ggml(g) => ggml_step(*g, &mut input, &mut ids),
        }
    }
    // SAFETY: from td_meta_new, freed once.
    unsafe { capi::td_meta_free(meta) };
    let (mut bytes, mut len) = (std::ptr::null_mut::<u8>(), 0usize);
    let code = match (session, &out) {
        // SAFETY: from td_writer_open / td_ggml_open, closed once.
        (Session::Writer(w), Some(_)) => unsafe { capi::td_writer_close(w) },
        // SAFETY: as above.
        (Session::Ggml(g), Some(_)) => unsafe { capi::td_ggml_close(g) },
        // SAFETY: from td_writer_open_memory, closed once; out-pointers valid.
        (Session::Writer(w), None) => unsafe {
            capi::td_writer_close_bytes(w, &mut bytes, &mut len)
        },
        // SAFETY: from td_ggml_open_memory, closed once; out-pointers valid.
        (Session::Ggml(g), None) => unsafe { capi::td_ggml_close_bytes(g, &mut bytes, &mut len) },
    };
    no_panic("close", code);
    if code != TD_OK {
        return;
    }
    match &out {
        Some(out) => {
            check_file(&out.0);
        }
        None => {
            assert!(!bytes.is_null(), "td_*_close_bytes gave no bytes");
            // SAFETY: td_*_close_bytes succeeded: `len` bytes at `bytes`,
            // copied before they are freed, once.
            let trace = unsafe { std::slice::from_raw_parts(bytes, len) }.to_vec();
            // SAFETY: as set by td_*_close_bytes, freed once.
            unsafe { capi::td_bytes_free(bytes, len) };
            check_written(Path::new("memory.tdump"), trace);
        }
    }
}

/// An open C ABI session.
enum Session {
    Writer(*mut capi::td_writer),
    Ggml(*mut capi::td_ggml),
}

/// One call of the C ABI on a plain writer.
fn writer_step(
    w: *mut capi::td_writer,
    m: *mut capi::td_meta,
    input: &mut Input<'_>,
    ids: &mut Vec<u64>,
) {
    let op = input.u8();
    let mut id = u64::MAX;
    let code = match op % 8 {
        0 => {
            let name = input.name();
            let bytes = input.data();
            // SAFETY: every pointer is null or valid for the count passed with it.
            unsafe {
                capi::td_add_storage(w, name.ptr(), bytes.as_ptr().cast(), bytes.len(), &mut id)
            }
        }
        1..=3 => {
            let name = input.name();
            let dtype = input.dtype();
            let ndim = input.ndim();
            let shape: Vec<i64> = (0..ndim).map(|_| input.num()).collect();
            let strides: Option<Vec<i64>> =
                (input.u8() % 2 == 0).then(|| (0..ndim).map(|_| input.num()).collect());
            let strides_ptr = strides.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
            let order = u32::from(input.u8() % 3);
            let offset = input.num() as u64;
            let meta = if input.u8() % 2 == 0 {
                m.cast_const()
            } else {
                std::ptr::null()
            };
            match op % 8 {
                1 => {
                    let bytes = input.data();
                    // SAFETY: as above.
                    unsafe {
                        capi::td_add_tensor(
                            w,
                            name.ptr(),
                            dtype,
                            ndim as u32,
                            shape.as_ptr(),
                            strides_ptr,
                            order,
                            offset,
                            bytes.as_ptr().cast(),
                            bytes.len(),
                            meta,
                            &mut id,
                        )
                    }
                }
                2 => {
                    let storage = input.pick(ids);
                    // SAFETY: as above.
                    unsafe {
                        capi::td_add_view(
                            w,
                            name.ptr(),
                            dtype,
                            ndim as u32,
                            shape.as_ptr(),
                            strides_ptr,
                            order,
                            storage,
                            offset,
                            meta,
                            &mut id,
                        )
                    }
                }
                _ => {
                    let bytes = input.data();
                    // SAFETY: as above.
                    unsafe {
                        capi::td_add_stats(
                            w,
                            name.ptr(),
                            dtype,
                            ndim as u32,
                            shape.as_ptr(),
                            order,
                            bytes.as_ptr().cast(),
                            bytes.len(),
                            meta,
                            &mut id,
                        )
                    }
                }
            }
        }
        4..=6 => meta_step(m, input, ids),
        _ => {
            // SAFETY: `w` is live.
            unsafe { capi::td_writer_flush(w) }
        }
    };
    no_panic("a writer call", code);
    if code == TD_OK && id != u64::MAX {
        ids.push(id);
    }
}

/// One call that builds lineage or metadata in `m`.
fn meta_step(m: *mut capi::td_meta, input: &mut Input<'_>, ids: &[u64]) -> i32 {
    let op = input.u8();
    let ndim = input.ndim();
    let order = u32::from(input.u8() % 3);
    // SAFETY: (every call below) `m` is a live builder of this thread, and
    // every pointer is null or valid for the count passed with it.
    unsafe {
        match op % 14 {
            0 => capi::td_meta_layer(m, input.num_or_none()),
            1 => capi::td_meta_step(m, input.num_or_none()),
            2 => capi::td_meta_role(m, input.name().ptr()),
            3 => capi::td_meta_parent(m, input.pick(ids)),
            4 => {
                let offset = input.num() as u64;
                let shape: Vec<i64> = (0..ndim).map(|_| input.num()).collect();
                let strides: Vec<i64> = (0..ndim).map(|_| input.num()).collect();
                capi::td_meta_view(
                    m,
                    offset,
                    ndim as u32,
                    shape.as_ptr(),
                    strides.as_ptr(),
                    order,
                )
            }
            5 => {
                let axes: Vec<u32> = (0..ndim).map(|_| u32::from(input.u8() % 10)).collect();
                capi::td_meta_permute(m, ndim as u32, axes.as_ptr(), order)
            }
            6 => {
                let shape: Vec<i64> = (0..ndim).map(|_| input.num()).collect();
                capi::td_meta_reshape(m, ndim as u32, shape.as_ptr(), order)
            }
            7 => capi::td_meta_transpose(m, u32::from(input.u8() % 10), u32::from(input.u8() % 10)),
            8 => capi::td_meta_op(m, u32::from(input.u8() % 12), input.dtype()),
            9 => {
                let (engine, name) = (input.name(), input.op_name());
                let n = usize::from(input.u8() % 80);
                let params = input.take(n);
                capi::td_meta_engine_op(
                    m,
                    engine.ptr(),
                    name.ptr(),
                    params.as_ptr().cast(),
                    params.len(),
                )
            }
            10 => {
                let ne: Vec<i64> = (0..ndim).map(|_| input.num()).collect();
                let nb: Vec<u64> = (0..ndim).map(|_| input.num() as u64).collect();
                capi::td_meta_ggml_layout(m, ndim as u32, ne.as_ptr(), nb.as_ptr())
            }
            11 => capi::td_meta_str(m, input.name().ptr(), input.name().ptr()),
            12 => capi::td_meta_int(m, input.name().ptr(), input.num()),
            _ => {
                let value = f64::from_bits(input.u64());
                capi::td_meta_float(m, input.name().ptr(), value)
            }
        }
    }
}

/// One call on a ggml recorder.
fn ggml_step(g: *mut capi::td_ggml, input: &mut Input<'_>, ids: &mut Vec<u64>) {
    let op = input.u8();
    let code = match op % 8 {
        0 => {
            // SAFETY: `g` is live.
            unsafe { capi::td_ggml_set_step(g, input.num_or_none()) }
        }
        1 => {
            let name = input.name();
            // SAFETY: `g` is live; the name is null or a C string.
            let wants = unsafe { capi::td_ggml_wants(g, name.ptr()) };
            assert!(wants == 0 || wants == 1, "td_ggml_wants gave {wants}");
            TD_OK
        }
        _ => {
            let name = input.name();
            let op_name = input.op_name();
            let ggml_type = if input.u8() < 0xf0 {
                u32::from(input.u8() % 42)
            } else {
                input.u32()
            };
            let ne = [input.num(), input.num(), input.num(), input.num()];
            let nb = [
                input.num() as u64,
                input.num() as u64,
                input.num() as u64,
                input.num() as u64,
            ];
            let n = usize::from(input.u8() % 80);
            let params = input.take(n).to_vec();
            let key = input.key();
            let n_srcs = usize::from(input.u8() % 4);
            let srcs: Vec<*const c_void> = (0..n_srcs).map(|_| input.key()).collect();
            let src_names: Vec<Text> = (0..n_srcs).map(|_| input.name()).collect();
            let src_name_ptrs: Vec<*const c_char> = src_names.iter().map(Text::ptr).collect();
            let is_view = input.u8() % 2 == 0;
            let view_src = if is_view {
                input.key()
            } else {
                std::ptr::null()
            };
            let view_src_name = input.name();
            let view_offs = input.num() as u64;
            let once = i32::from(input.u8() % 4 == 0);
            let bytes = input.data();
            let node = td_ggml_node {
                name: name.ptr(),
                op: op_name.ptr(),
                ggml_type,
                ne,
                nb,
                op_params: params.as_ptr().cast(),
                op_params_len: params.len(),
                key,
                srcs: srcs.as_ptr(),
                src_names: src_name_ptrs.as_ptr(),
                n_srcs,
                data: bytes.as_ptr().cast(),
                data_len: bytes.len(),
                view_src,
                view_src_name: view_src_name.ptr(),
                view_offs,
                once,
            };
            let mut id = u64::MAX;
            // SAFETY: `g` is live and every pointer of the node is null or
            // valid for the count passed with it (keys are never read).
            let code = unsafe { capi::td_ggml_record(g, &node, &mut id) };
            if code == TD_OK {
                ids.push(id);
            }
            code
        }
    };
    no_panic("a ggml call", code);
}

/// A caught panic is a crash: the ABI says what it caught in the last error.
fn no_panic(what: &str, code: i32) {
    assert!(
        [TD_OK, TD_SKIPPED, TD_ERROR].contains(&code),
        "{what} returned {code}"
    );
    if code == TD_ERROR {
        // SAFETY: td_last_error gives a C string valid until the next call.
        let msg = unsafe { CStr::from_ptr(capi::td_last_error()) }.to_string_lossy();
        assert!(!msg.contains("panic"), "{what}: {msg}");
    }
}

/// [`check_written`] on a file.
fn check_file(path: &Path) -> Trace {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read back: {e}"));
    check_written(path, bytes)
}

/// Open a trace the writer finished; panic unless the reader accepts it:
/// finished, every tensor decodes, the values of every tensor of at most
/// [`VALUE_CAP`] values read, and `verify` finds nothing but lineage claims
/// that do not replay.
fn check_written(path: &Path, bytes: Vec<u8>) -> Trace {
    let trace = Trace::from_bytes(path, bytes)
        .unwrap_or_else(|e| panic!("the reader rejects what the writer wrote: {e}"));
    assert!(trace.is_finished(), "the writer's trace is unfinished");
    assert!(trace.warnings().is_empty(), "{:?}", trace.warnings());
    for &id in trace.tensor_ids() {
        let t = trace
            .tensor(id)
            .unwrap_or_else(|e| panic!("the writer wrote a tensor the reader rejects: {e}"));
        if t.has_values() && !t.derived && t.layout.numel() <= VALUE_CAP {
            let values = trace.view(id).and_then(|v| v.to_f32()).unwrap_or_else(|e| {
                panic!("the writer wrote a tensor whose values cannot be read: {e}")
            });
            assert_eq!(values.len() as u64, t.layout.numel(), "tensor `{}`", t.name);
        }
    }
    read_all(&trace);
    let report = trace.verify();
    let faults: Vec<&Fault> = report
        .faults
        .iter()
        .filter(|f| !is_lineage_claim(f))
        .collect();
    assert!(
        faults.is_empty(),
        "verify finds faults in what the writer wrote: {faults:#?}"
    );
    trace
}

/// A fault about a lineage the caller claimed (which the writer records as
/// given, and `verify` exists to check), not about the file.
fn is_lineage_claim(f: &Fault) -> bool {
    ["lineage ", "parent "]
        .iter()
        .any(|p| f.message.starts_with(p))
}

/// Read everything a trace offers, ignoring errors: the reader must not
/// panic on any of it.
fn read_all(trace: &Trace) {
    let _ = (
        trace.version(),
        trace.is_finished(),
        trace.torn_tail(),
        trace.footer_offset(),
        trace.run_metadata().iter().count(),
    );
    for id in 0..trace.records().len() as u64 {
        let _ = trace.record_name(id);
        let _ = trace.storage(id);
    }
    let limit = value_limit(trace.file_len());
    for &id in trace.tensor_ids() {
        let Ok(t) = trace.tensor(id) else {
            continue;
        };
        let _ = (t.element_strides(), t.is_contiguous(), trace.occurrence(id));
        let _ = trace.get(&t.name);
        let Ok(view) = trace.view(id) else {
            continue;
        };
        let _ = view.contiguous_bytes();
        let _ = view.array::<f32>();
        let _ = view.array::<u8>();
        let _ = view.as_slice::<f32>();
        let numel = t.layout.numel();
        if numel <= VALUE_CAP || numel > limit {
            // to_f64, materialize and the statistics; to_f32 takes the same
            // path but for f32's zero-copy one
            let _ = view.compute_stats();
            if t.dtype == DType::F32 {
                let _ = view.to_f32();
            }
        }
    }
    let _ = trace.filter(&TensorFilter {
        layer: Some(0),
        role: Some("k".into()),
        ..TensorFilter::default()
    });
}

/// A file for one body's output: unique to this call, in memory where
/// `/dev/shm` exists, removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Scratch(dir.join(format!("tracedump-fuzz-{}-{n}.tdump", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let mut partial = self.0.clone().into_os_string();
        partial.push(".partial");
        let _ = std::fs::remove_file(partial);
    }
}

/// A C string argument, or NULL.
struct Text(Option<CString>);

impl Text {
    fn ptr(&self) -> *const c_char {
        self.0.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
    }
}

/// The input, read front to back; past its end every read gives zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Up to `n` bytes.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.take(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// An extent, stride or offset: mostly small, sometimes a multiple of
    /// a block, sometimes negative, sometimes any 64-bit value.
    fn num(&mut self) -> i64 {
        match self.u8() {
            t @ 0..=127 => i64::from(t),
            t @ 128..=191 => i64::from(t - 128) * 32,
            t @ 192..=223 => -i64::from(t - 191),
            224..=239 => i64::from(self.u16()) * 2,
            _ => self.u64() as i64,
        }
    }

    /// A layer or step, or `TD_NONE`.
    fn num_or_none(&mut self) -> i64 {
        if self.u8() % 4 == 0 {
            TD_NONE
        } else {
            self.num()
        }
    }

    /// A dimension count: mostly 0..8, sometimes up to 79 (beyond the limit).
    fn ndim(&mut self) -> usize {
        match self.u8() {
            t @ 0..=247 => usize::from(t % 8),
            t => usize::from(t) % 80,
        }
    }

    /// A dtype id: mostly a known one, sometimes any `i32`.
    fn dtype(&mut self) -> i32 {
        let t = self.u8();
        if t < 0xf0 {
            let ids: Vec<u16> = DType::all().map(DType::id).collect();
            i32::from(ids[usize::from(t) % ids.len()])
        } else {
            self.u32() as i32
        }
    }

    /// A record id: mostly one returned earlier.
    fn pick(&mut self, ids: &[u64]) -> u64 {
        let t = self.u8();
        match ids.len() {
            n if n > 0 && t < 0xf0 => ids[usize::from(t) % n],
            _ => self.num() as u64,
        }
    }

    /// A name: up to 15 bytes (not always UTF-8), sometimes NULL.
    fn name(&mut self) -> Text {
        let t = self.u8();
        if t == 0xff {
            return Text(None);
        }
        Text(Some(self.text(usize::from(t % 16))))
    }

    /// A C string of up to `max` bytes (NULs dropped).
    fn text(&mut self, max: usize) -> CString {
        let n = usize::from(self.u8()) % (max + 1);
        let bytes: Vec<u8> = self.take(n).iter().copied().filter(|&b| b != 0).collect();
        CString::new(bytes).expect("no NUL")
    }

    /// A ggml op name: mostly one the recorder gives meaning to.
    fn op_name(&mut self) -> Text {
        const OPS: [&str; 12] = [
            "NONE",
            "VIEW",
            "PERMUTE",
            "TRANSPOSE",
            "RESHAPE",
            "CONT",
            "DUP",
            "CPY",
            "SET_ROWS",
            "MUL_MAT",
            "ROPE",
            "FLASH_ATTN_EXT",
        ];
        let t = self.u8();
        match OPS.get(usize::from(t)) {
            Some(op) => Text(Some(CString::new(*op).expect("no NUL"))),
            None => self.name(),
        }
    }

    /// An address used as a ggml tensor's identity (never dereferenced).
    fn key(&mut self) -> *const c_void {
        std::ptr::without_provenance(usize::from(self.u8() % 8))
    }

    /// Data: a length (mostly under 240 bytes, sometimes up to 16 KiB,
    /// now and then past 1 MiB, where the writer streams), filled from the
    /// input, then by repeating what was taken (or a fixed pattern).
    fn data(&mut self) -> Vec<u8> {
        let len = match self.u8() {
            t @ 0..=0xef => usize::from(t),
            0xf0..=0xfe => usize::from(self.u16() & 0x3fff),
            0xff => (1 << 20) + usize::from(self.u16()),
        };
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(self.take(len));
        if out.is_empty() {
            out.extend_from_slice(&PATTERN[..len.min(PATTERN.len())]);
        }
        while out.len() < len {
            let n = out.len().min(len - out.len());
            out.extend_from_within(..n);
        }
        out
    }
}
