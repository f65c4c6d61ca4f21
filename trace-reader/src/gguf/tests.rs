//! The parser against hand-made files: every field, every error.

use super::parse::PREALLOC_ITEMS;
use super::*;
use std::path::PathBuf;
use trace_format::Value;
use value_type as vt;

/// A little-endian byte builder for hand-made GGUF files.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn header(version: u32, tensors: u64, kvs: u64) -> B {
        let mut b = B::default();
        b.raw(GGUF_MAGIC).u32(version).u64(tensors).u64(kvs);
        b
    }
    fn raw(&mut self, x: &[u8]) -> &mut Self {
        self.0.extend_from_slice(x);
        self
    }
    fn u8(&mut self, x: u8) -> &mut Self {
        self.raw(&[x])
    }
    fn u32(&mut self, x: u32) -> &mut Self {
        self.raw(&x.to_le_bytes())
    }
    fn u64(&mut self, x: u64) -> &mut Self {
        self.raw(&x.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A key and its value type; the value follows.
    fn key(&mut self, k: &str, ty: u32) -> &mut Self {
        self.str(k).u32(ty)
    }
    /// A value in GGUF encoding (type not included).
    fn value(&mut self, v: &GgufValue) -> &mut Self {
        match v {
            GgufValue::U8(x) => self.raw(&x.to_le_bytes()),
            GgufValue::I8(x) => self.raw(&x.to_le_bytes()),
            GgufValue::U16(x) => self.raw(&x.to_le_bytes()),
            GgufValue::I16(x) => self.raw(&x.to_le_bytes()),
            GgufValue::U32(x) => self.raw(&x.to_le_bytes()),
            GgufValue::I32(x) => self.raw(&x.to_le_bytes()),
            GgufValue::F32(x) => self.raw(&x.to_le_bytes()),
            GgufValue::Bool(x) => self.u8(u8::from(*x)),
            GgufValue::String(s) => self.str(s),
            GgufValue::U64(x) => self.raw(&x.to_le_bytes()),
            GgufValue::I64(x) => self.raw(&x.to_le_bytes()),
            GgufValue::F64(x) => self.raw(&x.to_le_bytes()),
            GgufValue::Array(a) => {
                self.u32(a.item_type).u64(a.items.len() as u64);
                for item in &a.items {
                    self.value(item);
                }
                self
            }
        }
    }
    fn kv(&mut self, k: &str, v: &GgufValue) -> &mut Self {
        self.key(k, v.type_id()).value(v)
    }
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &n in ne {
            self.u64(n);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, align: usize) -> &mut Self {
        while self.0.len() % align != 0 {
            self.u8(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

fn p(bytes: &[u8]) -> Result<Gguf, ReaderError> {
    parse(Path::new("t.gguf"), bytes)
}

/// The error's offset, tensor and message (panics on success).
fn err(bytes: &[u8]) -> (u64, Option<String>, String) {
    match p(bytes) {
        Err(e @ ReaderError::Gguf { .. }) => {
            let msg = e.to_string();
            let ReaderError::Gguf { offset, tensor, .. } = e else {
                unreachable!()
            };
            (offset, tensor, msg)
        }
        Err(e) => panic!("not a Gguf error: {e}"),
        Ok(g) => panic!("parsed: {g:?}"),
    }
}

fn arr(item_type: u32, items: Vec<GgufValue>) -> GgufValue {
    GgufValue::Array(GgufArray { item_type, items })
}

/// v3, alignment 32 given explicitly, an f32 [4, 2] tensor and a q8_0
/// [32] tensor; the file ends where the last tensor's data ends.
fn minimal() -> Vec<u8> {
    let mut b = B::header(3, 2, 2);
    b.kv("general.architecture", &GgufValue::String("test".into()))
        .kv("general.alignment", &GgufValue::U32(32))
        .tensor("a", &[4, 2], 0, 0)
        .tensor("b", &[32], 8, 32)
        .pad(32);
    for i in 0..8 {
        b.raw(&(i as f32).to_le_bytes());
    }
    b.zeros(34).done()
}

#[test]
fn minimal_file() {
    let bytes = minimal();
    let g = p(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(
        g.get("general.architecture").and_then(GgufValue::as_str),
        Some("test")
    );
    assert_eq!(g.data_offset % 32, 0);
    assert_eq!(g.data_offset as usize + 32 + 34, bytes.len());
    let a = g.tensor("a").unwrap();
    assert_eq!(
        (a.ne.as_slice(), a.ggml_type, a.dtype, a.nbytes),
        (&[4u64, 2][..], 0, Some(DType::F32), 32)
    );
    assert_eq!(a.file_offset, g.data_offset);
    assert_eq!(a.info_offset, 24 + (8 + 20 + 4 + 8 + 4) + (8 + 17 + 4 + 4));
    assert_eq!(a.name_offset, a.info_offset + 8);
    assert_eq!(&bytes[a.name_offset as usize..][..1], b"a");
    assert_eq!(a.n_elements(), 8);
    let r = a.byte_range();
    assert_eq!(
        &bytes[r.start as usize..r.end as usize][4..8],
        &1f32.to_le_bytes()
    );
    let b = g.tensor("b").unwrap();
    assert_eq!(
        (b.dtype, b.nbytes, b.offset, b.file_offset),
        (Some(DType::Q8_0), 34, 32, g.data_offset + 32)
    );
    assert_eq!(b.info_offset, a.info_offset + 8 + 1 + 4 + 16 + 4 + 8);
}

/// The memory bound in the module documentation assumes this.
#[test]
fn value_is_32_bytes() {
    assert!(std::mem::size_of::<GgufValue>() <= 32);
}

#[test]
fn version_2_reads_like_3() {
    let mut bytes = minimal();
    bytes[4] = 2;
    let g = p(&bytes).unwrap();
    assert_eq!(g.version, 2);
    bytes[4] = 3;
    assert_eq!(p(&bytes).unwrap().tensors, g.tensors);
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    let bytes = minimal();
    for n in 0..bytes.len() {
        let (offset, _, msg) = err(&bytes[..n]);
        assert!(
            offset <= bytes.len() as u64,
            "cut at {n}: offset {offset}: {msg}"
        );
    }
}

/// Random byte flips of a valid file: never a panic, and whatever parses
/// keeps its promises.
#[test]
fn mutations_never_panic() {
    let base = minimal();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut bytes = base.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % bytes.len() as u64) as usize;
            bytes[i] = if next() % 3 == 0 { 0xff } else { next() as u8 };
        }
        if let Ok(g) = p(&bytes) {
            for t in &g.tensors {
                assert!(t.byte_range().end <= bytes.len() as u64);
                assert_eq!(t.offset % g.alignment, 0);
            }
        }
    }
}

#[test]
fn every_value_type_round_trips() {
    let s = |x: &str| GgufValue::String(x.into());
    let values = vec![
        ("u8", GgufValue::U8(255)),
        ("i8", GgufValue::I8(-128)),
        ("u16", GgufValue::U16(65535)),
        ("i16", GgufValue::I16(-32768)),
        ("u32", GgufValue::U32(u32::MAX)),
        ("i32", GgufValue::I32(i32::MIN)),
        ("f32", GgufValue::F32(0.1)),
        ("bool.t", GgufValue::Bool(true)),
        ("bool.f", GgufValue::Bool(false)),
        ("string", s("héllo 🚀")),
        ("string.empty", s("")),
        ("u64", GgufValue::U64(u64::MAX)),
        ("i64", GgufValue::I64(i64::MIN)),
        ("f64", GgufValue::F64(-1e300)),
        ("arr.str", arr(vt::STRING, vec![s("a"), s(""), s("ü")])),
        (
            "arr.i32",
            arr(vt::I32, vec![GgufValue::I32(1), GgufValue::I32(-2)]),
        ),
        (
            "arr.u8",
            arr(vt::U8, vec![GgufValue::U8(0), GgufValue::U8(7)]),
        ),
        ("arr.f64", arr(vt::F64, vec![GgufValue::F64(0.5)])),
        (
            "arr.bool",
            arr(
                vt::BOOL,
                vec![GgufValue::Bool(true), GgufValue::Bool(false)],
            ),
        ),
        ("arr.empty", arr(vt::U64, vec![])),
        (
            "arr.nested",
            arr(
                vt::ARRAY,
                vec![
                    arr(vt::STRING, vec![s("x")]),
                    arr(vt::I16, vec![GgufValue::I16(-1), GgufValue::I16(2)]),
                    arr(vt::ARRAY, vec![arr(vt::F32, vec![GgufValue::F32(1.5)])]),
                ],
            ),
        ),
    ];
    let mut b = B::header(3, 0, values.len() as u64);
    for (k, v) in &values {
        b.kv(k, v);
    }
    let bytes = b.done();
    let g = p(&bytes).unwrap();
    assert!(g.tensors.is_empty());
    assert_eq!(g.alignment, GGUF_DEFAULT_ALIGNMENT);
    let expect: Vec<(String, GgufValue)> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(g.metadata, expect);
    for (k, v) in &values {
        assert!(value_type_name(v.type_id()).is_some(), "{k}");
    }
    // The end of the file need not be padded when there are no tensors.
    assert!(g.data_offset >= bytes.len() as u64);

    let m = g.to_metadata();
    assert_eq!(m.get("u8"), Some(&Value::U64(255)));
    assert_eq!(m.get("i8"), Some(&Value::I64(-128)));
    assert_eq!(m.get("f32"), Some(&Value::F64(f64::from(0.1f32))));
    assert_eq!(m.get("bool.t"), Some(&Value::Bool(true)));
    assert_eq!(m.get("string"), Some(&Value::Str("héllo 🚀".into())));
    assert_eq!(m.get("u64"), Some(&Value::U64(u64::MAX)));
    assert_eq!(m.get("i64"), Some(&Value::I64(i64::MIN)));
    assert_eq!(
        m.get("arr.str"),
        Some(&Value::List(vec![
            Value::Str("a".into()),
            Value::Str("".into()),
            Value::Str("ü".into())
        ]))
    );
    assert_eq!(m.get("arr.empty"), Some(&Value::List(vec![])));
    assert_eq!(
        m.get("arr.nested"),
        Some(&Value::List(vec![
            Value::List(vec![Value::Str("x".into())]),
            Value::List(vec![Value::I64(-1), Value::I64(2)]),
            Value::List(vec![Value::List(vec![Value::F64(1.5)])]),
        ]))
    );
    assert_eq!(GgufValue::I32(-1).as_u64(), None);
    assert_eq!(GgufValue::I32(7).as_u64(), Some(7));
    assert_eq!(GgufValue::U16(7).as_u64(), Some(7));
}

#[test]
fn versions_and_byte_order() {
    let mut v1 = minimal();
    v1[4] = 1;
    let (off, _, msg) = err(&v1);
    assert_eq!(off, 4);
    assert!(msg.contains("version 1 is not supported"), "{msg}");

    for v in [2u32, 3] {
        let mut be = minimal();
        be[4..8].copy_from_slice(&v.to_be_bytes());
        let (off, _, msg) = err(&be);
        assert_eq!(off, 4);
        assert!(msg.contains("big-endian GGUF is not supported"), "{msg}");
    }
    for v in [0u32, 4, 0xffff_ffff] {
        let mut b = minimal();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let (_, _, msg) = err(&b);
        assert!(
            msg.contains(&format!("version {v} is not supported")),
            "{msg}"
        );
    }
    let mut bad = minimal();
    bad[0] = b'g';
    let (off, _, msg) = err(&bad);
    assert_eq!(off, 0);
    assert!(msg.contains("not a GGUF file"), "{msg}");
}

#[test]
fn error_message_names_file_offset_and_tensor() {
    let mut b = B::header(3, 1, 0);
    b.tensor("blk.0.w", &[33], 8, 0).pad(32).zeros(64);
    let e = parse(Path::new("/m/model.gguf"), &b.done()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("/m/model.gguf: GGUF at byte "), "{msg}");
    assert!(msg.contains("(tensor `blk.0.w`)"), "{msg}");
    assert!(
        msg.contains("not a multiple of the q8_0 block size 32"),
        "{msg}"
    );
    let ReaderError::Gguf {
        path,
        offset,
        tensor,
        ..
    } = e
    else {
        panic!()
    };
    assert_eq!(path, PathBuf::from("/m/model.gguf"));
    assert_eq!(offset, 24 + 8 + 7 + 4, "points at ne[0]");
    assert_eq!(tensor.as_deref(), Some("blk.0.w"));
}

/// Counts above what is reserved ahead still read in full.
#[test]
fn long_arrays() {
    let n = PREALLOC_ITEMS * 3 + 1;
    let mut b = B::header(3, 0, 1);
    b.key("tokens", vt::ARRAY).u32(vt::U8).u64(n as u64);
    for i in 0..n {
        b.u8(i as u8);
    }
    let g = p(&b.done()).unwrap();
    let Some(GgufValue::Array(a)) = g.get("tokens") else {
        panic!()
    };
    assert_eq!(a.items.len(), n);
    assert_eq!(a.items[n - 1], GgufValue::U8((n - 1) as u8));
}

#[test]
fn absurd_counts_fail_fast() {
    // u64::MAX tensors.
    let (off, _, msg) = err(&B::header(3, u64::MAX, 0).zeros(100).done());
    assert_eq!(off, 8, "{msg}");
    // u64::MAX key/value pairs.
    let (off, _, _) = err(&B::header(3, 0, u64::MAX).zeros(100).done());
    assert_eq!(off, 16);
    // A tensor count that only fails once the metadata is read.
    let mut b = B::header(3, 3, 1);
    b.kv("k", &GgufValue::String("x".repeat(60))).zeros(30);
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 8, "{msg}");
    // A 2^40-element array, of each item type.
    for item in [vt::U8, vt::BOOL, vt::STRING, vt::ARRAY, vt::F64] {
        let mut b = B::header(3, 0, 1);
        b.key("big", vt::ARRAY).u32(item).u64(1 << 40).zeros(64);
        let (off, _, msg) = err(&b.done());
        assert_eq!(off, 24 + 8 + 3 + 4 + 4, "{msg}");
        assert!(
            msg.contains("metadata key `big`") && msg.contains("1099511627776"),
            "{msg}"
        );
    }
    // A 1 TB string value, key, and tensor name.
    let mut b = B::header(3, 0, 1);
    b.key("s", vt::STRING).u64(1 << 40).zeros(64);
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8 + 1 + 4, "{msg}");
    let (off, _, _) = err(&B::header(3, 0, 1).u64(u64::MAX).zeros(64).done());
    assert_eq!(off, 24);
    let (off, _, _) = err(&B::header(3, 1, 0).u64(1 << 40).zeros(64).done());
    assert_eq!(off, 24);
}

#[test]
fn nesting_is_limited() {
    let build = |depth: usize| {
        let mut b = B::header(3, 0, 1);
        b.key("deep", vt::ARRAY);
        for _ in 1..depth {
            b.u32(vt::ARRAY).u64(1);
        }
        b.u32(vt::U8).u64(1).u8(9);
        b.done()
    };
    let g = p(&build(GGUF_MAX_ARRAY_DEPTH)).unwrap();
    let mut v = g.get("deep").unwrap();
    let mut depth = 0;
    while let GgufValue::Array(a) = v {
        depth += 1;
        v = &a.items[0];
    }
    assert_eq!((depth, v), (GGUF_MAX_ARRAY_DEPTH, &GgufValue::U8(9)));
    let (_, _, msg) = err(&build(GGUF_MAX_ARRAY_DEPTH + 1));
    assert!(msg.contains("nest deeper"), "{msg}");
    // Very deep nesting inside a small file: an error, not a stack overflow.
    let mut b = B::header(3, 0, 1);
    b.key("deep", vt::ARRAY);
    for _ in 0..100_000 {
        b.u32(vt::ARRAY).u64(1);
    }
    assert!(err(&b.done()).2.contains("nest deeper"));
}

#[test]
fn alignment_rules() {
    let file = |v: GgufValue, offset: u64| {
        let mut b = B::header(3, 1, 1);
        b.kv("general.alignment", &v)
            .tensor("t", &[4], 0, offset)
            .pad(256)
            .zeros(512);
        b.done()
    };
    let g = p(&file(GgufValue::U32(64), 128)).unwrap();
    assert_eq!(
        (g.alignment, g.data_offset % 64, g.tensors[0].file_offset),
        (64, 0, g.data_offset + 128)
    );
    for bad in [0, 48, 3] {
        let (off, _, msg) = err(&file(GgufValue::U32(bad), 0));
        assert_eq!(off, 24 + 8 + 17 + 4, "{msg}");
        assert!(msg.contains("not a nonzero power of two"), "{msg}");
    }
    let (off, _, msg) = err(&file(GgufValue::U64(32), 0));
    assert_eq!(off, 24 + 8 + 17);
    assert!(msg.contains("must be a u32, not u64"), "{msg}");
    // Unaligned tensor offset.
    let (off, tensor, msg) = err(&file(GgufValue::U32(64), 32));
    assert_eq!(tensor.as_deref(), Some("t"));
    assert!(msg.contains("not a multiple of the alignment 64"), "{msg}");
    let bytes = file(GgufValue::U32(64), 32);
    assert_eq!(
        u64::from_le_bytes(bytes[off as usize..][..8].try_into().unwrap()),
        32,
        "points at the offset field"
    );
}

#[test]
fn data_must_lie_inside_the_file() {
    let file = |offset: u64, data: usize| {
        let mut b = B::header(3, 1, 0);
        b.tensor("t", &[4, 4], 0, offset).pad(32).zeros(data);
        b.done()
    };
    assert!(p(&file(0, 64)).is_ok());
    assert!(p(&file(0, 63)).is_err());
    let (_, tensor, msg) = err(&file(32, 64));
    assert_eq!(tensor.as_deref(), Some("t"));
    assert!(msg.contains("runs past the end"), "{msg}");
    let (_, _, msg) = err(&file(u64::MAX - 31, 64));
    assert!(msg.contains("runs past the end"), "{msg}");
    // The padding before the data section is missing.
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[0], 0, 0);
    let (_, _, msg) = err(&b.done());
    assert!(msg.contains("past the end of the file"), "{msg}");
}

#[test]
fn shapes() {
    // Up to 8 dimensions, and 0-dimensional tensors (one element).
    let mut b = B::header(3, 3, 0);
    b.tensor("d8", &[2, 1, 1, 1, 1, 1, 1, 3], 0, 0)
        .tensor("d0", &[], 0, 32)
        .tensor("empty", &[0, 5], 8, 64);
    let bytes = b.pad(32).zeros(68).done();
    let g = p(&bytes).unwrap();
    assert_eq!((g.tensors[0].ne.len(), g.tensors[0].nbytes), (8, 24));
    assert_eq!((g.tensors[1].n_elements(), g.tensors[1].nbytes), (1, 4));
    assert_eq!(g.tensors[2].nbytes, 0);

    let mut b = B::header(3, 1, 0);
    b.tensor("d9", &[1; 9], 0, 0).pad(32).zeros(4);
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8 + 2);
    assert!(
        msg.contains("9 dimensions") && msg.contains("at most 8"),
        "{msg}"
    );

    let mut b = B::header(3, 1, 0);
    b.tensor("neg", &[1, 1 << 63], 0, 0).pad(32).zeros(64);
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8 + 3 + 4 + 8);
    assert!(msg.contains("ne[1]") && msg.contains("i64"), "{msg}");

    let mut b = B::header(3, 1, 0);
    b.tensor("big", &[1 << 32, 1 << 31], 0, 0).pad(32).zeros(64);
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8 + 3 + 4 + 8);
    assert!(msg.contains("overflows"), "{msg}");

    // The element count fits but the f64 byte count does not.
    let mut b = B::header(3, 1, 0);
    b.tensor("f64", &[1 << 62], 28, 0).pad(32).zeros(64);
    let (_, _, msg) = err(&b.done());
    assert!(msg.contains("overflow"), "{msg}");

    // Q4_K rows must be whole super-blocks of 256.
    let mut b = B::header(3, 1, 0);
    b.tensor("q", &[128, 2], 12, 0).pad(32).zeros(144);
    let (_, _, msg) = err(&b.done());
    assert!(
        msg.contains("not a multiple of the q4_k block size 256"),
        "{msg}"
    );
}

#[test]
fn unknown_types_are_kept() {
    let mut b = B::header(3, 4, 0);
    b.tensor("iq2", &[256], 16, 0)
        .tensor("ours", &[4], 256, 0)
        .tensor("wrapped", &[4], 65536, 0)
        .tensor("f32", &[4], 0, 0);
    let g = p(&b.pad(32).zeros(16).done()).unwrap();
    let types: Vec<_> = g
        .tensors
        .iter()
        .map(|t| (t.ggml_type, t.dtype, t.nbytes))
        .collect();
    assert_eq!(
        types,
        [
            (16, None, 0),
            (256, None, 0),
            (65536, None, 0),
            (0, Some(DType::F32), 16)
        ]
    );
}

#[test]
fn duplicates() {
    let mut b = B::header(3, 2, 0);
    b.tensor("w", &[4], 0, 0).tensor("w", &[4], 0, 32);
    let (off, tensor, msg) = err(&b.pad(32).zeros(64).done());
    assert_eq!(
        (off, tensor.as_deref()),
        (24 + 8 + 1 + 4 + 8 + 4 + 8, Some("w"))
    );
    assert!(
        msg.contains("duplicate tensor name (first at byte 24)"),
        "{msg}"
    );

    let mut b = B::header(3, 0, 2);
    b.kv("k", &GgufValue::U8(1)).kv("k", &GgufValue::U8(2));
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8 + 1 + 4 + 1);
    assert!(msg.contains("duplicate metadata key `k`"), "{msg}");
}

#[test]
fn malformed_values() {
    // Invalid UTF-8 in a value, a key and a tensor name: the offset is the bad byte's.
    let mut b = B::header(3, 0, 1);
    b.key("k", vt::STRING).u64(3).raw(b"a\xffb");
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8 + 1 + 4 + 8 + 1);
    assert!(
        msg.contains("metadata key `k`: string value is not valid UTF-8"),
        "{msg}"
    );
    let mut b = B::header(3, 0, 1);
    b.u64(2).raw(b"\xc3(").u32(vt::U8).u8(0);
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8);
    assert!(msg.contains("metadata key is not valid UTF-8"), "{msg}");
    let mut b = B::header(3, 1, 0);
    b.u64(2)
        .raw(b"w\x80")
        .u32(1)
        .u64(4)
        .u32(0)
        .u64(0)
        .pad(32)
        .zeros(16);
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8 + 1);
    assert!(msg.contains("tensor name is not valid UTF-8"), "{msg}");

    // A bool that is neither 0 nor 1.
    let mut b = B::header(3, 0, 1);
    b.key("b", vt::BOOL).u8(2);
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8 + 1 + 4);
    assert!(msg.contains("bool value is 2"), "{msg}");

    // Unknown value types, at top level and in an array.
    let mut b = B::header(3, 0, 1);
    b.key("x", 13).zeros(8);
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8 + 1);
    assert!(msg.contains("unknown value type 13"), "{msg}");
    let mut b = B::header(3, 0, 1);
    b.key("x", vt::ARRAY).u32(99).u64(1).zeros(8);
    let (off, _, msg) = err(&b.done());
    assert_eq!(off, 24 + 8 + 1 + 4);
    assert!(msg.contains("unknown array item type 99"), "{msg}");
}
