//! Encoding and decoding of record descriptors (SPEC.md §4–§5).
//!
//! Every decoder works on a byte slice whose absolute file position it is
//! told, so errors name real offsets; every count read from the input is
//! bounded by the bytes that remain before anything is allocated.

use crate::error::FormatError;
use crate::DType;

/// Deepest nesting of lists and maps a metadata value may have.
pub const MAX_VALUE_DEPTH: usize = 32;

/// A typed metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Tag 1.
    Bool(bool),
    /// Tag 2.
    I64(i64),
    /// Tag 3.
    U64(u64),
    /// Tag 4.
    F64(f64),
    /// Tag 5.
    Str(String),
    /// Tag 6.
    Bytes(Vec<u8>),
    /// Tag 7.
    List(Vec<Value>),
    /// Tag 8: ordered key/value pairs.
    Map(Vec<(String, Value)>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => {
                f.write_str("0x")?;
                b.iter().try_for_each(|x| write!(f, "{x:02x}"))
            }
            Value::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(items) => {
                f.write_str("{")?;
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

macro_rules! value_from {
    ($t:ty, $v:ident, $conv:expr) => {
        impl From<$t> for Value {
            fn from(x: $t) -> Self {
                #[allow(clippy::redundant_closure_call)]
                Value::$v(($conv)(x))
            }
        }
    };
}
value_from!(bool, Bool, |x| x);
value_from!(i64, I64, |x| x);
value_from!(i32, I64, i64::from);
value_from!(u64, U64, |x| x);
value_from!(u32, U64, u64::from);
value_from!(f64, F64, |x| x);
value_from!(f32, F64, f64::from);
value_from!(String, Str, |x| x);
value_from!(&str, Str, String::from);
value_from!(Vec<u8>, Bytes, |x| x);

/// Ordered, typed key → value metadata. Keys are unique: [`Metadata::insert`]
/// replaces an existing key in place.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Metadata(pub Vec<(String, Value)>);

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Metadata(Vec::new())
    }

    /// The key path (`outer.inner.3`) of the first value nested deeper than
    /// [`MAX_VALUE_DEPTH`], which a reader refuses (SPEC.md §4); `None` when
    /// every value is within it. Walks with its own stack: a value can be
    /// nested as deep as memory allows.
    ///
    /// ```
    /// use trace_format::{Metadata, Value};
    /// let mut v = Value::I64(1);
    /// for _ in 0..40 {
    ///     v = Value::List(vec![v]);
    /// }
    /// let m = Metadata::new().with("deep", v);
    /// assert_eq!(m.too_deep().unwrap(), format!("deep{}", ".0".repeat(33)));
    /// assert_eq!(Metadata::new().with("x", 1i64).too_deep(), None);
    /// ```
    pub fn too_deep(&self) -> Option<String> {
        let mut stack: Vec<(&Value, usize, String)> =
            self.0.iter().map(|(k, v)| (v, 0, k.clone())).collect();
        stack.reverse();
        while let Some((v, depth, path)) = stack.pop() {
            if depth > MAX_VALUE_DEPTH {
                return Some(path);
            }
            match v {
                Value::List(items) => stack.extend(
                    items
                        .iter()
                        .enumerate()
                        .rev()
                        .map(|(i, x)| (x, depth + 1, format!("{path}.{i}"))),
                ),
                Value::Map(items) => stack.extend(
                    items
                        .iter()
                        .rev()
                        .map(|(k, x)| (x, depth + 1, format!("{path}.{k}"))),
                ),
                _ => {}
            }
        }
        None
    }

    /// Set `key` to `value`, replacing an earlier value of `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
        self
    }

    /// Builder form of [`Metadata::insert`].
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// One step of a tensor's lineage (SPEC.md §5.4). View-type steps (`View`,
/// `Permute`, `Reshape`, `Transpose`) are replayable on layouts; the others
/// make new data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Tag 1: a view `offset` bytes after the parent's start with its own shape and strides.
    View {
        /// Bytes after the parent's `storage_offset`.
        offset: u64,
        /// Shape of the view.
        shape: Vec<u64>,
        /// Byte strides of the view.
        byte_strides: Vec<i64>,
    },
    /// Tag 2: numpy-style permutation, canonical order.
    Permute {
        /// Result dimension `i` is source dimension `axes[i]`.
        axes: Vec<u32>,
    },
    /// Tag 3: reshape of a contiguous tensor.
    Reshape {
        /// New shape.
        shape: Vec<u64>,
    },
    /// Tag 4: swap two dimensions.
    Transpose {
        /// First dimension.
        a: u32,
        /// Second dimension.
        b: u32,
    },
    /// Tag 5: a contiguous copy.
    Cont,
    /// Tag 6: copy with conversion to `dtype` (ggml CPY, torch `.to`).
    Convert {
        /// Target dtype.
        dtype: DType,
    },
    /// Tag 7: quantization to a block `dtype`.
    Quantize {
        /// Target block dtype.
        dtype: DType,
    },
    /// Tag 8: dequantization to `dtype` (usually f32).
    Dequantize {
        /// Target dtype.
        dtype: DType,
    },
    /// Tag 9: concatenation of all parents along `axis` (first step only).
    Concat {
        /// The axis, canonical order.
        axis: u32,
    },
}

impl Op {
    /// Whether the step only re-describes the parent's bytes.
    pub fn is_view(&self) -> bool {
        matches!(
            self,
            Op::View { .. } | Op::Permute { .. } | Op::Reshape { .. } | Op::Transpose { .. }
        )
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |v: &[u32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let joinu = |v: &[u64]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Op::View { offset, shape, .. } => write!(f, "view(+{offset}, [{}])", joinu(shape)),
            Op::Permute { axes } => write!(f, "permute({})", join(axes)),
            Op::Reshape { shape } => write!(f, "reshape({})", joinu(shape)),
            Op::Transpose { a, b } => write!(f, "transpose({a},{b})"),
            Op::Cont => f.write_str("cont"),
            Op::Convert { dtype } => write!(f, "cpy {dtype}"),
            Op::Quantize { dtype } => write!(f, "quantize {dtype}"),
            Op::Dequantize { dtype } => write!(f, "dequantize {dtype}"),
            Op::Concat { axis } => write!(f, "concat(axis={axis})"),
        }
    }
}

/// The engine's own description of the op that made a tensor, verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOp {
    /// Engine family, e.g. `ggml`, `torch`.
    pub engine: String,
    /// The op's name in that engine, e.g. `PERMUTE`, `FLASH_ATTN_EXT`.
    pub op: String,
    /// Raw parameters (ggml: the `op_params` bytes).
    pub params: Vec<u8>,
}

/// Where a tensor came from: parent record ids, canonical steps, and the engine's op.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Lineage {
    /// Record ids of parent tensors, in order (the parts, for `Concat`).
    pub parents: Vec<u64>,
    /// Steps from the parent(s) to this tensor, applied in order.
    pub ops: Vec<Op>,
    /// The engine's op, kept verbatim.
    pub engine_op: Option<EngineOp>,
}

impl Lineage {
    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.parents.is_empty() && self.ops.is_empty() && self.engine_op.is_none()
    }
}

/// Summary statistics of a tensor's values (SPEC.md §5.5).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Stats {
    /// Number of elements.
    pub count: u64,
    /// NaN values.
    pub nan_count: u64,
    /// ±Inf values.
    pub inf_count: u64,
    /// Smallest finite value (NaN if none).
    pub min: f64,
    /// Largest finite value (NaN if none).
    pub max: f64,
    /// Mean of finite values.
    pub mean: f64,
    /// Population standard deviation of finite values.
    pub std: f64,
    /// Largest absolute finite value.
    pub abs_max: f64,
    /// L2 norm of finite values.
    pub l2_norm: f64,
    /// crc32c of the tensor's bytes in row-major order, native dtype.
    pub bytes_crc32c: Option<u32>,
}

/// The source engine's own layout convention, kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceLayout {
    /// Tag 1: ggml `ne` (elements) and `nb` (bytes), fastest dimension first.
    Ggml {
        /// `ne[]`.
        ne: Vec<i64>,
        /// `nb[]`.
        nb: Vec<u64>,
    },
}

/// Where a tensor's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataRef {
    /// Tag 0: no data, only stats.
    StatsOnly,
    /// Tag 1: a view into the storage held by record `storage`.
    Storage {
        /// Record id of a STORAGE record (or of a TENSOR record with inline data).
        storage: u64,
        /// Byte offset of element (0,…,0).
        offset: u64,
    },
    /// Tag 2: a view into this record's own payload.
    Inline {
        /// Byte offset of element (0,…,0) in the payload.
        offset: u64,
    },
    /// Tag 3: no bytes of its own: the values are the lineage replayed on
    /// the parents' values (SPEC.md §5.4, value replay) — e.g. one logical
    /// K made of an f16 hot window and a q8_0 cold part.
    Derived,
}

/// The descriptor of a TENSOR record.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDesc {
    /// The engine's name (not unique).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Where the bytes are.
    pub data: DataRef,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
    /// Signed byte strides, outermost first.
    pub byte_strides: Vec<i64>,
    /// Decode step (token position / iteration), if known.
    pub step: Option<i64>,
    /// Layer number, if known.
    pub layer: Option<i64>,
    /// Role such as `q`, `k`, `v`, `mask`, `kq`, `kqv_out`, `k_hot`, `k_quant`.
    pub role: Option<String>,
    /// The engine's own layout, verbatim.
    pub source_layout: Option<SourceLayout>,
    /// How the tensor was made.
    pub lineage: Lineage,
    /// Statistics (always present for stats-only tensors).
    pub stats: Option<Stats>,
    /// Free typed metadata.
    pub metadata: Metadata,
}

/// The descriptor of a STORAGE record.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StorageDesc {
    /// A label, e.g. `cache_k_l0`.
    pub name: String,
    /// Free typed metadata.
    pub metadata: Metadata,
}

/// One entry of the footer index (48 bytes on disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// File offset of the record header.
    pub offset: u64,
    /// The record's body length.
    pub body_len: u64,
    /// The record kind.
    pub kind: u16,
    /// Step of a tensor record.
    pub step: Option<i64>,
    /// Layer of a tensor record.
    pub layer: Option<i64>,
    /// Byte range of the record's name in the footer's name table.
    pub name_offset: u64,
    /// Length of the name in bytes.
    pub name_len: u32,
}

/// Size of one footer index entry.
pub const INDEX_ENTRY_BYTES: usize = 48;

// ---------------------------------------------------------------------------
// Encoding

/// Appends little-endian primitives to a buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Encoder {
    /// A new, empty encoder.
    pub fn new() -> Self {
        Encoder {
            buf: Vec::with_capacity(256),
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
    let mut e = Encoder::new();
    e.str(&t.name);
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
    e.u64s(&t.shape);
    e.i64s(&t.byte_strides);
    e.opt_i64(t.step);
    e.opt_i64(t.layer);
    match &t.role {
        Some(r) => {
            e.u8(1);
            e.str(r);
        }
        None => e.u8(0),
    }
    match &t.source_layout {
        Some(SourceLayout::Ggml { ne, nb }) => {
            e.u8(1);
            e.i64s(ne);
            e.u64s(nb);
        }
        None => e.u8(0),
    }
    e.u64s(&t.lineage.parents);
    e.count(t.lineage.ops.len());
    t.lineage.ops.iter().for_each(|op| e.op(op));
    match &t.lineage.engine_op {
        Some(op) => {
            e.u8(1);
            e.str(&op.engine);
            e.str(&op.op);
            e.bytes(&op.params);
        }
        None => e.u8(0),
    }
    match &t.stats {
        Some(s) => {
            e.u8(1);
            e.stats(s);
        }
        None => e.u8(0),
    }
    e.metadata(&t.metadata);
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

// ---------------------------------------------------------------------------
// Decoding

/// Reads little-endian primitives from a slice, with absolute offsets for errors.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Decoder<'a> {
    /// A decoder over `buf`, which starts at absolute file offset `base`.
    pub fn new(buf: &'a [u8], base: u64) -> Self {
        Decoder { buf, pos: 0, base }
    }
    /// Absolute offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Take `n` bytes.
    pub fn take(&mut self, n: u64, field: &'static str) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() as u64 {
            return Err(FormatError::Truncated {
                field,
                offset: self.offset(),
                needed: n,
                available: self.remaining() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FormatError> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    /// Read a u8.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, FormatError> {
        Ok(self.arr::<1>(field)?[0])
    }
    /// Read a u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.arr(field)?))
    }
    /// Read a u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.arr(field)?))
    }
    /// Read a u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.arr(field)?))
    }
    /// Read an i64.
    pub fn i64(&mut self, field: &'static str) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(self.arr(field)?))
    }
    /// Read an f64.
    pub fn f64(&mut self, field: &'static str) -> Result<f64, FormatError> {
        Ok(f64::from_le_bytes(self.arr(field)?))
    }
    fn invalid(&self, field: &'static str, at: u64, reason: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            field,
            offset: at,
            reason: reason.into(),
        }
    }
    /// Read a count of items each at least `min_item_bytes` long, refusing
    /// counts the remaining bytes cannot hold (so no huge allocation happens).
    fn count(&mut self, field: &'static str, min_item_bytes: usize) -> Result<usize, FormatError> {
        let at = self.offset();
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.remaining() {
            return Err(self.invalid(
                field,
                at,
                format!(
                    "count {n} needs more than the {} bytes left",
                    self.remaining()
                ),
            ));
        }
        Ok(n)
    }
    /// Read a `str`.
    pub fn str(&mut self, field: &'static str) -> Result<&'a str, FormatError> {
        let n = self.u32(field)?;
        let at = self.offset();
        let b = self.take(u64::from(n), field)?;
        std::str::from_utf8(b).map_err(|_| FormatError::InvalidUtf8 { field, offset: at })
    }
    /// Read `bytes`.
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], FormatError> {
        let n = self.u32(field)?;
        self.take(u64::from(n), field)
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, FormatError> {
        let at = self.offset();
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            x => Err(self.invalid(field, at, format!("presence byte is {x}, not 0 or 1"))),
        }
    }
    fn opt_i64(&mut self, field: &'static str) -> Result<Option<i64>, FormatError> {
        Ok(if self.flag(field)? {
            Some(self.i64(field)?)
        } else {
            None
        })
    }
    fn u64s(&mut self, field: &'static str) -> Result<Vec<u64>, FormatError> {
        let n = self.count(field, 8)?;
        (0..n).map(|_| self.u64(field)).collect()
    }
    fn i64s(&mut self, field: &'static str) -> Result<Vec<i64>, FormatError> {
        let n = self.count(field, 8)?;
        (0..n).map(|_| self.i64(field)).collect()
    }
    /// Read a dtype id.
    pub fn dtype(&mut self) -> Result<DType, FormatError> {
        let at = self.offset();
        let id = self.u16("dtype")?;
        DType::from_id(id).ok_or(FormatError::UnknownDType { id, offset: at })
    }
    /// Read a metadata value.
    pub fn value(&mut self, depth: usize) -> Result<Value, FormatError> {
        let at = self.offset();
        if depth > MAX_VALUE_DEPTH {
            return Err(self.invalid(
                "metadata value",
                at,
                format!("nested deeper than {MAX_VALUE_DEPTH}"),
            ));
        }
        Ok(match self.u8("metadata value tag")? {
            1 => Value::Bool(self.flag("bool value")?),
            2 => Value::I64(self.i64("i64 value")?),
            3 => Value::U64(self.u64("u64 value")?),
            4 => Value::F64(self.f64("f64 value")?),
            5 => Value::Str(self.str("string value")?.to_owned()),
            6 => Value::Bytes(self.bytes("bytes value")?.to_vec()),
            7 => {
                let n = self.count("list length", 1)?;
                Value::List(
                    (0..n)
                        .map(|_| self.value(depth + 1))
                        .collect::<Result<_, _>>()?,
                )
            }
            8 => {
                let n = self.count("map length", 5)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.str("map key")?.to_owned();
                    items.push((k, self.value(depth + 1)?));
                }
                Value::Map(items)
            }
            t => return Err(self.invalid("metadata value tag", at, format!("unknown tag {t}"))),
        })
    }
    /// Read metadata.
    pub fn metadata(&mut self) -> Result<Metadata, FormatError> {
        let n = self.count("metadata count", 5)?;
        let mut m = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.str("metadata key")?.to_owned();
            m.push((k, self.value(0)?));
        }
        Ok(Metadata(m))
    }
    /// Read a lineage op.
    pub fn op(&mut self) -> Result<Op, FormatError> {
        let at = self.offset();
        Ok(match self.u8("op tag")? {
            1 => Op::View {
                offset: self.u64("view offset")?,
                shape: self.u64s("view shape")?,
                byte_strides: self.i64s("view byte_strides")?,
            },
            2 => {
                let n = self.count("permute axes", 4)?;
                Op::Permute {
                    axes: (0..n)
                        .map(|_| self.u32("permute axis"))
                        .collect::<Result<_, _>>()?,
                }
            }
            3 => Op::Reshape {
                shape: self.u64s("reshape shape")?,
            },
            4 => Op::Transpose {
                a: self.u32("transpose axis")?,
                b: self.u32("transpose axis")?,
            },
            5 => Op::Cont,
            6 => Op::Convert {
                dtype: self.dtype()?,
            },
            7 => Op::Quantize {
                dtype: self.dtype()?,
            },
            8 => Op::Dequantize {
                dtype: self.dtype()?,
            },
            9 => Op::Concat {
                axis: self.u32("concat axis")?,
            },
            t => return Err(self.invalid("op tag", at, format!("unknown op tag {t}"))),
        })
    }
    /// Read stats.
    pub fn stats(&mut self) -> Result<Stats, FormatError> {
        let count = self.u64("stats")?;
        let nan_count = self.u64("stats")?;
        let inf_count = self.u64("stats")?;
        let mut f = [0f64; 6];
        for x in &mut f {
            *x = self.f64("stats")?;
        }
        let bytes_crc32c = if self.flag("stats crc")? {
            Some(self.u32("stats crc")?)
        } else {
            None
        };
        Ok(Stats {
            count,
            nan_count,
            inf_count,
            min: f[0],
            max: f[1],
            mean: f[2],
            std: f[3],
            abs_max: f[4],
            l2_norm: f[5],
            bytes_crc32c,
        })
    }
    /// Fail unless every byte was consumed.
    pub fn finish(&self, field: &'static str) -> Result<(), FormatError> {
        if self.remaining() != 0 {
            return Err(self.invalid(
                field,
                self.offset(),
                format!("{} unexpected trailing bytes", self.remaining()),
            ));
        }
        Ok(())
    }
}

/// Decode a TENSOR descriptor that starts at absolute offset `base`.
pub fn decode_tensor(buf: &[u8], base: u64) -> Result<TensorDesc, FormatError> {
    let mut d = Decoder::new(buf, base);
    let name = d.str("tensor name")?.to_owned();
    let dtype = d.dtype()?;
    let at = d.offset();
    let data = match d.u8("data kind")? {
        0 => DataRef::StatsOnly,
        1 => DataRef::Storage {
            storage: d.u64("storage id")?,
            offset: d.u64("storage offset")?,
        },
        2 => DataRef::Inline {
            offset: d.u64("storage offset")?,
        },
        3 => DataRef::Derived,
        k => return Err(d.invalid("data kind", at, format!("unknown data kind {k}"))),
    };
    let shape = d.u64s("shape")?;
    let at = d.offset();
    let byte_strides = d.i64s("byte_strides")?;
    if byte_strides.len() != shape.len() {
        return Err(d.invalid(
            "byte_strides",
            at,
            format!(
                "{} strides for {} dimensions",
                byte_strides.len(),
                shape.len()
            ),
        ));
    }
    let step = d.opt_i64("step")?;
    let layer = d.opt_i64("layer")?;
    let role = if d.flag("role")? {
        Some(d.str("role")?.to_owned())
    } else {
        None
    };
    let at = d.offset();
    let source_layout = match d.u8("source layout")? {
        0 => None,
        1 => Some(SourceLayout::Ggml {
            ne: d.i64s("ggml ne")?,
            nb: d.u64s("ggml nb")?,
        }),
        k => return Err(d.invalid("source layout", at, format!("unknown convention {k}"))),
    };
    let parents = d.u64s("parents")?;
    let n = d.count("ops", 1)?;
    let ops = (0..n).map(|_| d.op()).collect::<Result<Vec<_>, _>>()?;
    let engine_op = if d.flag("engine op")? {
        Some(EngineOp {
            engine: d.str("engine")?.to_owned(),
            op: d.str("engine op")?.to_owned(),
            params: d.bytes("engine op params")?.to_vec(),
        })
    } else {
        None
    };
    let stats = if d.flag("stats")? {
        Some(d.stats()?)
    } else {
        None
    };
    let metadata = d.metadata()?;
    d.finish("tensor descriptor")?;
    Ok(TensorDesc {
        name,
        dtype,
        data,
        shape,
        byte_strides,
        step,
        layer,
        role,
        source_layout,
        lineage: Lineage {
            parents,
            ops,
            engine_op,
        },
        stats,
        metadata,
    })
}

/// Decode a STORAGE descriptor that starts at absolute offset `base`.
pub fn decode_storage(buf: &[u8], base: u64) -> Result<StorageDesc, FormatError> {
    let mut d = Decoder::new(buf, base);
    let name = d.str("storage name")?.to_owned();
    let metadata = d.metadata()?;
    d.finish("storage descriptor")?;
    Ok(StorageDesc { name, metadata })
}

/// Decode a RUN_METADATA descriptor that starts at absolute offset `base`.
pub fn decode_run_metadata(buf: &[u8], base: u64) -> Result<Metadata, FormatError> {
    let mut d = Decoder::new(buf, base);
    let m = d.metadata()?;
    d.finish("run metadata")?;
    Ok(m)
}

/// Decode a FOOTER descriptor: the index entries and the name table.
pub fn decode_footer(buf: &[u8], base: u64) -> Result<(Vec<IndexEntry>, &[u8]), FormatError> {
    let mut d = Decoder::new(buf, base);
    let at = d.offset();
    let n = d.u64("record count")?;
    if n.saturating_mul(INDEX_ENTRY_BYTES as u64) > d.remaining() as u64 {
        return Err(d.invalid(
            "record count",
            at,
            format!("{n} entries do not fit in the footer"),
        ));
    }
    let mut entries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let at = d.offset();
        let offset = d.u64("index offset")?;
        let body_len = d.u64("index body_len")?;
        let kind = d.u16("index kind")?;
        let flags = d.u16("index flags")?;
        if flags & !3 != 0 {
            return Err(d.invalid(
                "index flags",
                at + 18,
                format!("unknown flag bits {flags:#x}"),
            ));
        }
        let name_len = d.u32("index name_len")?;
        let name_offset = d.u64("index name_offset")?;
        let step = d.i64("index step")?;
        let layer = d.i64("index layer")?;
        entries.push(IndexEntry {
            offset,
            body_len,
            kind,
            step: (flags & 1 != 0).then_some(step),
            layer: (flags & 2 != 0).then_some(layer),
            name_offset,
            name_len,
        });
    }
    let names_len = d.u64("name table length")?;
    let names = d.take(names_len, "name table")?;
    d.finish("footer")?;
    Ok((entries, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_round_trip() {
        let t = TensorDesc {
            name: "Qcur-0".into(),
            dtype: DType::F16,
            data: DataRef::Storage {
                storage: 3,
                offset: 64,
            },
            shape: vec![1, 8, 4],
            byte_strides: vec![64, 8, 2],
            step: Some(0),
            layer: Some(0),
            role: Some("q".into()),
            source_layout: Some(SourceLayout::Ggml {
                ne: vec![4, 8, 1, 1],
                nb: vec![2, 8, 64, 64],
            }),
            lineage: Lineage {
                parents: vec![2],
                ops: vec![
                    Op::Permute {
                        axes: vec![0, 2, 1],
                    },
                    Op::Convert { dtype: DType::F16 },
                ],
                engine_op: Some(EngineOp {
                    engine: "ggml".into(),
                    op: "CPY".into(),
                    params: vec![1, 2, 3],
                }),
            },
            stats: Some(Stats {
                count: 32,
                min: -1.0,
                ..Default::default()
            }),
            metadata: Metadata::new().with("n", Value::List(vec![1i64.into(), "x".into()])),
        };
        let b = encode_tensor(&t);
        assert_eq!(decode_tensor(&b, 0).unwrap(), t);
        for cut in 0..b.len() {
            assert!(decode_tensor(&b[..cut], 0).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        let mut e = Encoder::new();
        e.u32(u32::MAX); // metadata count
        let err = decode_run_metadata(&e.buf, 100).unwrap_err();
        assert!(
            matches!(err, FormatError::Invalid { offset: 100, .. }),
            "{err}"
        );
        let mut e = Encoder::new();
        e.u64(u64::MAX / 2);
        assert!(decode_footer(&e.buf, 0).is_err());
    }

    #[test]
    fn deep_values_are_refused() {
        let mut e = Encoder::new();
        e.u32(1);
        e.str("k");
        for _ in 0..100 {
            e.u8(7);
            e.u32(1);
        }
        e.u8(1);
        e.u8(1);
        assert!(decode_run_metadata(&e.buf, 0).is_err());
    }
}
