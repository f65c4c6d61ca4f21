//! Encoding and decoding of record descriptors (SPEC.md §4–§5).
//!
//! Every decoder works on a byte slice whose absolute file position it is
//! told, so errors name real offsets; every count read from the input is
//! bounded by the bytes that remain before anything is allocated.

use crate::DType;

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use decode::{decode_footer, decode_run_metadata, decode_storage, decode_tensor, Decoder};
pub use encode::{
    encode_footer, encode_run_metadata, encode_storage, encode_tensor, encode_tensor_ref, Encoder,
};

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
        // a first walk without paths: metadata is checked for every record
        // written, and is nearly always flat (a top-level scalar is at depth
        // 0); the paths are built only for metadata that is too deep
        let mut nested: Vec<(&Value, usize)> = self
            .0
            .iter()
            .filter(|(_, v)| matches!(v, Value::List(_) | Value::Map(_)))
            .map(|(_, v)| (v, 0))
            .collect();
        let mut deep = false;
        while let Some((v, depth)) = nested.pop() {
            if depth > MAX_VALUE_DEPTH {
                deep = true;
                break;
            }
            match v {
                Value::List(items) => nested.extend(items.iter().map(|x| (x, depth + 1))),
                Value::Map(items) => nested.extend(items.iter().map(|(_, x)| (x, depth + 1))),
                _ => {}
            }
        }
        if !deep {
            return None;
        }
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

impl TensorDesc {
    /// The descriptor's fields, borrowed.
    pub fn borrowed(&self) -> TensorDescRef<'_> {
        TensorDescRef {
            name: &self.name,
            dtype: self.dtype,
            data: self.data,
            shape: &self.shape,
            byte_strides: &self.byte_strides,
            step: self.step,
            layer: self.layer,
            role: self.role.as_deref(),
            source_layout: self.source_layout.as_ref(),
            parents: &self.lineage.parents,
            ops: &self.lineage.ops,
            engine_op: self.lineage.engine_op.as_ref(),
            stats: self.stats.as_ref(),
            metadata: &self.metadata,
        }
    }
}

/// A [`TensorDesc`] whose fields are borrowed: what a writer that keeps
/// the parts that repeat from record to record (a graph's node names, ops
/// and metadata, recorded again at every decode step) encodes without
/// copying them into a [`TensorDesc`] first ([`encode_tensor_ref`]).
#[derive(Clone, Copy, Debug)]
pub struct TensorDescRef<'a> {
    /// [`TensorDesc::name`].
    pub name: &'a str,
    /// [`TensorDesc::dtype`].
    pub dtype: DType,
    /// [`TensorDesc::data`].
    pub data: DataRef,
    /// [`TensorDesc::shape`].
    pub shape: &'a [u64],
    /// [`TensorDesc::byte_strides`].
    pub byte_strides: &'a [i64],
    /// [`TensorDesc::step`].
    pub step: Option<i64>,
    /// [`TensorDesc::layer`].
    pub layer: Option<i64>,
    /// [`TensorDesc::role`].
    pub role: Option<&'a str>,
    /// [`TensorDesc::source_layout`].
    pub source_layout: Option<&'a SourceLayout>,
    /// [`Lineage::parents`].
    pub parents: &'a [u64],
    /// [`Lineage::ops`].
    pub ops: &'a [Op],
    /// [`Lineage::engine_op`].
    pub engine_op: Option<&'a EngineOp>,
    /// [`TensorDesc::stats`].
    pub stats: Option<&'a Stats>,
    /// [`TensorDesc::metadata`].
    pub metadata: &'a Metadata,
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
