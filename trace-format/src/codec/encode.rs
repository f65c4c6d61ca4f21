//! Encoding descriptors (SPEC.md §4, §5).

use super::*;

/// Appends little-endian primitives to a buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Encoder {
    /// A new, empty encoder.
    pub fn new() -> Self {
        Self::with_capacity(256)
    }
    /// A new, empty encoder with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        Encoder {
            buf: Vec::with_capacity(bytes),
        }
    }
    /// Append a u8.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Append a u16.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Append a u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Append a u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Append an i64.
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Append an f64.
    pub fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Append a count (u32). Panics only if a list has more than 2^32 items,
    /// which no in-memory tensor description reaches.
    fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("count fits in u32"));
    }
    /// Append a `str` (u32 length + UTF-8).
    pub fn str(&mut self, s: &str) {
        self.count(s.len());
        self.buf.extend_from_slice(s.as_bytes());
    }
    /// Append `bytes` (u32 length + bytes).
    pub fn bytes(&mut self, b: &[u8]) {
        self.count(b.len());
        self.buf.extend_from_slice(b);
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.i64(v);
            }
            None => self.u8(0),
        }
    }
    fn u64s(&mut self, v: &[u64]) {
        self.count(v.len());
        v.iter().for_each(|&x| self.u64(x));
    }
    fn i64s(&mut self, v: &[i64]) {
        self.count(v.len());
        v.iter().for_each(|&x| self.i64(x));
    }
    /// Append a metadata value.
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Bool(b) => {
                self.u8(1);
                self.u8(u8::from(*b));
            }
            Value::I64(x) => {
                self.u8(2);
                self.i64(*x);
            }
            Value::U64(x) => {
                self.u8(3);
                self.u64(*x);
            }
            Value::F64(x) => {
                self.u8(4);
                self.f64(*x);
            }
            Value::Str(s) => {
                self.u8(5);
                self.str(s);
            }
            Value::Bytes(b) => {
                self.u8(6);
                self.bytes(b);
            }
            Value::List(items) => {
                self.u8(7);
                self.count(items.len());
                items.iter().for_each(|v| self.value(v));
            }
            Value::Map(items) => {
                self.u8(8);
                self.count(items.len());
                for (k, v) in items {
                    self.str(k);
                    self.value(v);
                }
            }
        }
    }
    /// Append metadata.
    pub fn metadata(&mut self, m: &Metadata) {
        self.count(m.0.len());
        for (k, v) in &m.0 {
            self.str(k);
            self.value(v);
        }
    }
    /// Append a lineage op.
    pub fn op(&mut self, op: &Op) {
        match op {
            Op::View {
                offset,
                shape,
                byte_strides,
            } => {
                self.u8(1);
                self.u64(*offset);
                self.u64s(shape);
                self.i64s(byte_strides);
            }
            Op::Permute { axes } => {
                self.u8(2);
                self.count(axes.len());
                axes.iter().for_each(|&a| self.u32(a));
            }
            Op::Reshape { shape } => {
                self.u8(3);
                self.u64s(shape);
            }
            Op::Transpose { a, b } => {
                self.u8(4);
                self.u32(*a);
                self.u32(*b);
            }
            Op::Cont => self.u8(5),
            Op::Convert { dtype } => {
                self.u8(6);
                self.u16(dtype.id());
            }
            Op::Quantize { dtype } => {
                self.u8(7);
                self.u16(dtype.id());
            }
            Op::Dequantize { dtype } => {
                self.u8(8);
                self.u16(dtype.id());
            }
            Op::Concat { axis } => {
                self.u8(9);
                self.u32(*axis);
            }
        }
    }
    /// Append stats.
    pub fn stats(&mut self, s: &Stats) {
        self.u64(s.count);
        self.u64(s.nan_count);
        self.u64(s.inf_count);
        for v in [s.min, s.max, s.mean, s.std, s.abs_max, s.l2_norm] {
            self.f64(v);
        }
        match s.bytes_crc32c {
            Some(c) => {
                self.u8(1);
                self.u32(c);
            }
            None => self.u8(0),
        }
    }
}

/// Encode a TENSOR descriptor.
pub fn encode_tensor(t: &TensorDesc) -> Vec<u8> {
    encode_tensor_ref(&t.borrowed())
}

/// Encode a TENSOR descriptor from borrowed fields: the same bytes as
/// [`encode_tensor`] of the same values.
pub fn encode_tensor_ref(t: &TensorDescRef<'_>) -> Vec<u8> {
    // a ggml node's descriptor (layouts, engine op with its 64 bytes of
    // op_params, statistics, metadata) is 400–700 bytes: room for it up
    // front, not a reallocation or two on the way
    let mut e = Encoder::with_capacity(1024);
    e.str(t.name);
    e.u16(t.dtype.id());
    match t.data {
        DataRef::StatsOnly => e.u8(0),
        DataRef::Storage { storage, offset } => {
            e.u8(1);
            e.u64(storage);
            e.u64(offset);
        }
        DataRef::Inline { offset } => {
            e.u8(2);
            e.u64(offset);
        }
        DataRef::Derived => e.u8(3),
    }
    e.u64s(t.shape);
    e.i64s(t.byte_strides);
    e.opt_i64(t.step);
    e.opt_i64(t.layer);
    match t.role {
        Some(r) => {
            e.u8(1);
            e.str(r);
        }
        None => e.u8(0),
    }
    match t.source_layout {
        Some(SourceLayout::Ggml { ne, nb }) => {
            e.u8(1);
            e.i64s(ne);
            e.u64s(nb);
        }
        None => e.u8(0),
    }
    e.u64s(t.parents);
    e.count(t.ops.len());
    t.ops.iter().for_each(|op| e.op(op));
    match t.engine_op {
        Some(op) => {
            e.u8(1);
            e.str(&op.engine);
            e.str(&op.op);
            e.bytes(&op.params);
        }
        None => e.u8(0),
    }
    match t.stats {
        Some(s) => {
            e.u8(1);
            e.stats(s);
        }
        None => e.u8(0),
    }
    e.metadata(t.metadata);
    e.buf
}

/// Encode a STORAGE descriptor.
pub fn encode_storage(s: &StorageDesc) -> Vec<u8> {
    let mut e = Encoder::new();
    e.str(&s.name);
    e.metadata(&s.metadata);
    e.buf
}

/// Encode a RUN_METADATA descriptor.
pub fn encode_run_metadata(m: &Metadata) -> Vec<u8> {
    let mut e = Encoder::new();
    e.metadata(m);
    e.buf
}

/// Encode a FOOTER descriptor from index entries and the names they point into.
pub fn encode_footer(entries: &[IndexEntry], names: &[u8]) -> Vec<u8> {
    let mut e = Encoder {
        buf: Vec::with_capacity(16 + entries.len() * INDEX_ENTRY_BYTES + names.len()),
    };
    e.u64(entries.len() as u64);
    for x in entries {
        e.u64(x.offset);
        e.u64(x.body_len);
        e.u16(x.kind);
        e.u16(u16::from(x.step.is_some()) | (u16::from(x.layer.is_some()) << 1));
        e.u32(x.name_len);
        e.u64(x.name_offset);
        e.i64(x.step.unwrap_or(0));
        e.i64(x.layer.unwrap_or(0));
    }
    e.u64(names.len() as u64);
    e.buf.extend_from_slice(names);
    e.buf
}
