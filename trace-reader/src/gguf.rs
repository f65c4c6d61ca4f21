//! A parser of GGUF files (versions 2 and 3, little-endian), the format of
//! ggml and llama.cpp.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "GGUF"  u32 version  u64 tensor_count  u64 kv_count
//! kv_count ×     { string key, u32 value_type, value }
//! tensor_count × { string name, u32 n_dims, n_dims × u64 ne, u32 ggml_type, u64 offset }
//! padding to general.alignment (default 32)
//! data section: each tensor at data_offset + offset, offset a multiple of the alignment
//! ```
//!
//! A string is a u64 byte length followed by that many bytes of UTF-8. A
//! value is one of the 13 types of [`GgufValue`]; an array is a u32 item
//! type, a u64 count and the items (arrays may nest).
//!
//! [`parse`] copies only names and metadata values; tensor data stays in the
//! caller's bytes, located by [`GgufTensorInfo::file_offset`] and
//! [`GgufTensorInfo::nbytes`].
//!
//! # Hostile input
//!
//! The parser never panics and never reads outside the slice. Every count
//! and length read from the file (tensors, key/value pairs, array items,
//! string bytes) is checked against the bytes that remain, at the smallest
//! size one such item can take, before anything is allocated, and no more
//! than 65536 items are reserved ahead of reading them: memory follows the
//! bytes actually parsed, at most about 32 times them (the worst case, an
//! array of `u8`, costs one 32-byte [`GgufValue`] per byte; numbers, strings
//! and tensor infos cost at most about 8 times their bytes). Arrays nest at
//! most [`GGUF_MAX_ARRAY_DEPTH`] deep. Every error is a
//! [`ReaderError::Gguf`] carrying the absolute byte offset of the offending
//! field and the tensor's name when there is one.
//!
//! # What is checked, and how this differs from ggml
//!
//! * versions 2 and 3 (identical for little-endian files); version 1 (32-bit
//!   counts) and byte-swapped (big-endian) files are refused with a message;
//! * metadata keys are unique (as in ggml); `general.alignment`, when
//!   present, is a u32 nonzero power of two;
//! * `bool` values are 0 or 1 (the GGUF spec calls anything else invalid);
//!   strings, keys and tensor names are valid UTF-8;
//! * tensor names are unique; a tensor has at most [`GGUF_MAX_DIMS`] = 8
//!   dimensions (ggml itself accepts at most [`GGML_MAX_DIMS`] = 4; the
//!   format has room for more, so we read them); every `ne` fits an `i64` and
//!   so does their product;
//! * for a type we know, `ne[0]` is a multiple of the block size and
//!   `nbytes = elements / block_elems * block_bytes`;
//! * each tensor's `offset` is a multiple of the alignment and its bytes lie
//!   inside the file.
//!
//! A tensor whose `ggml_type` we do not know (ggml's IQ2/IQ3/IQ1/TQ types,
//! types newer than this reader) is **kept**, with `dtype: None` and
//! `nbytes: 0`: the rest of the file stays readable, and only its data
//! cannot be located. Only its start is checked to lie inside the file.
//!
//! Unlike ggml we do not require tensors to be packed in order (ggml demands
//! `offset` == the previous tensor's padded end), nor names shorter than 64
//! bytes; overlapping tensors are not detected. Unlike ggml we read nested
//! arrays, which the spec allows and ggml refuses.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;

use trace_format::{DType, Metadata, Value};

use crate::ReaderError;

/// The four bytes a GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// The data alignment when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;

/// The metadata key that sets the data alignment (a u32).
pub const GGUF_ALIGNMENT_KEY: &str = "general.alignment";

/// Most dimensions ggml itself gives a tensor (`GGML_MAX_DIMS`).
pub const GGML_MAX_DIMS: u32 = 4;

/// Most dimensions this parser accepts in a tensor info (more than ggml's 4).
pub const GGUF_MAX_DIMS: u32 = 8;

/// Deepest nesting of arrays in a metadata value (an array of scalars has
/// depth 1).
pub const GGUF_MAX_ARRAY_DEPTH: usize = 16;

/// The GGUF value type ids (`enum gguf_type`).
pub mod value_type {
    /// `uint8_t`.
    pub const U8: u32 = 0;
    /// `int8_t`.
    pub const I8: u32 = 1;
    /// `uint16_t`.
    pub const U16: u32 = 2;
    /// `int16_t`.
    pub const I16: u32 = 3;
    /// `uint32_t`.
    pub const U32: u32 = 4;
    /// `int32_t`.
    pub const I32: u32 = 5;
    /// `float`.
    pub const F32: u32 = 6;
    /// One byte, 0 or 1.
    pub const BOOL: u32 = 7;
    /// u64 length + UTF-8 bytes.
    pub const STRING: u32 = 8;
    /// u32 item type + u64 count + items.
    pub const ARRAY: u32 = 9;
    /// `uint64_t`.
    pub const U64: u32 = 10;
    /// `int64_t`.
    pub const I64: u32 = 11;
    /// `double`.
    pub const F64: u32 = 12;
}

/// The name of GGUF value type `id` (`"u8"` … `"f64"`), if it is one.
pub fn value_type_name(id: u32) -> Option<&'static str> {
    const NAMES: [&str; 13] = [
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
        "f64",
    ];
    NAMES.get(usize::try_from(id).ok()?).copied()
}

/// The fewest bytes a value of type `id` takes in the file, or `None` for
/// an unknown type.
fn min_value_bytes(id: u32) -> Option<u64> {
    Some(match id {
        value_type::U8 | value_type::I8 | value_type::BOOL => 1,
        value_type::U16 | value_type::I16 => 2,
        value_type::U32 | value_type::I32 | value_type::F32 => 4,
        value_type::U64 | value_type::I64 | value_type::F64 | value_type::STRING => 8,
        value_type::ARRAY => 12,
        _ => return None,
    })
}

/// Fewest bytes of one key/value pair: key length, type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Fewest bytes of one tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Fixed header: magic, version, tensor_count, kv_count.
const HEADER_BYTES: usize = 4 + 4 + 8 + 8;
/// Most items reserved ahead of reading them; beyond this, vectors grow as
/// items are actually read, so memory follows the bytes parsed rather than
/// the count a file claims.
const PREALLOC_ITEMS: usize = 1 << 16;

/// A parsed GGUF file: nothing is copied but names and metadata values.
#[derive(Clone, Debug, PartialEq)]
pub struct Gguf {
    /// The format version (2 or 3).
    pub version: u32,
    /// The key/value pairs, in file order (keys are unique).
    pub metadata: Vec<(String, GgufValue)>,
    /// The tensor infos, in file order (names are unique).
    pub tensors: Vec<GgufTensorInfo>,
    /// The data alignment: `general.alignment`, or 32.
    pub alignment: u64,
    /// Absolute file offset of the tensor data section: the end of the
    /// tensor infos rounded up to `alignment`. It may lie past the end of
    /// the file only when there are no tensors.
    pub data_offset: u64,
}

impl Gguf {
    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The metadata as our [`Metadata`] (see [`GgufValue::to_value`]).
    pub fn to_metadata(&self) -> Metadata {
        Metadata(
            self.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.to_value()))
                .collect(),
        )
    }
}

/// A GGUF metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    String(String),
    /// Type 9.
    Array(GgufArray),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

/// A GGUF array: its declared item type and its items.
///
/// Every item has type `item_type` (the parser reads them all as that
/// type); `item_type` is kept so that an empty array keeps its type.
/// Items of type [`value_type::ARRAY`] are arrays themselves, each with its
/// own item type.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufArray {
    /// The GGUF value type of every item (see [`value_type`]).
    pub item_type: u32,
    /// The items.
    pub items: Vec<GgufValue>,
}

impl GgufValue {
    /// The GGUF value type id of this value (see [`value_type`]).
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => value_type::U8,
            GgufValue::I8(_) => value_type::I8,
            GgufValue::U16(_) => value_type::U16,
            GgufValue::I16(_) => value_type::I16,
            GgufValue::U32(_) => value_type::U32,
            GgufValue::I32(_) => value_type::I32,
            GgufValue::F32(_) => value_type::F32,
            GgufValue::Bool(_) => value_type::BOOL,
            GgufValue::String(_) => value_type::STRING,
            GgufValue::Array(_) => value_type::ARRAY,
            GgufValue::U64(_) => value_type::U64,
            GgufValue::I64(_) => value_type::I64,
            GgufValue::F64(_) => value_type::F64,
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a u64, if it is an integer of any width that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The closest [`Value`]: unsigned integers become [`Value::U64`],
    /// signed ones [`Value::I64`], `f32`/`f64` [`Value::F64`] (exactly),
    /// strings [`Value::Str`], and every array a [`Value::List`] of its items
    /// converted alike (arrays of `u8` too, so that all arrays read the same
    /// way). The GGUF widths are not kept.
    pub fn to_value(&self) -> Value {
        match self {
            GgufValue::U8(v) => Value::U64((*v).into()),
            GgufValue::U16(v) => Value::U64((*v).into()),
            GgufValue::U32(v) => Value::U64((*v).into()),
            GgufValue::U64(v) => Value::U64(*v),
            GgufValue::I8(v) => Value::I64((*v).into()),
            GgufValue::I16(v) => Value::I64((*v).into()),
            GgufValue::I32(v) => Value::I64((*v).into()),
            GgufValue::I64(v) => Value::I64(*v),
            GgufValue::F32(v) => Value::F64((*v).into()),
            GgufValue::F64(v) => Value::F64(*v),
            GgufValue::Bool(v) => Value::Bool(*v),
            GgufValue::String(s) => Value::Str(s.clone()),
            GgufValue::Array(a) => Value::List(a.items.iter().map(GgufValue::to_value).collect()),
        }
    }
}

/// One tensor's info entry, validated against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Absolute file offset of the name's UTF-8 bytes (after its length).
    pub name_offset: u64,
    /// The dimensions in ggml order, fastest-varying first (the reverse of
    /// a row-major shape). Empty for a 0-dimensional tensor (one element).
    pub ne: Vec<u64>,
    /// The `ggml_type` id as stored.
    pub ggml_type: u32,
    /// Our dtype for `ggml_type`, or `None` when we do not know the type
    /// (the tensor is kept, with `nbytes` 0).
    pub dtype: Option<DType>,
    /// The data offset as stored, relative to [`Gguf::data_offset`].
    pub offset: u64,
    /// Absolute file offset of the data.
    pub file_offset: u64,
    /// Bytes of data: `elements / block_elems * block_bytes`; 0 when
    /// `dtype` is `None`.
    pub nbytes: u64,
    /// Absolute file offset where this tensor's info entry starts.
    pub info_offset: u64,
}

impl GgufTensorInfo {
    /// The number of elements (the product of `ne`; checked at parse time
    /// to fit an `i64`).
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// The absolute byte range of the data in the file.
    pub fn byte_range(&self) -> std::ops::Range<u64> {
        self.file_offset..self.file_offset + self.nbytes
    }
}

/// Our dtype for a ggml type id. Ids from 256 up are our own types, not
/// ggml's, so they are unknown here.
fn dtype_of_ggml(ggml_type: u32) -> Option<DType> {
    if ggml_type >= 256 {
        return None;
    }
    DType::from_id(u16::try_from(ggml_type).ok()?)
}

/// Parse the GGUF file `bytes`, read from `path` (used only in errors).
///
/// See the [module documentation](self) for what is checked. Nothing is
/// copied from `bytes` but names and metadata values.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Gguf, ReaderError> {
    Parser {
        path,
        bytes,
        pos: 0,
        key: None,
        tensor: None,
    }
    .file()
}

struct Parser<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    /// Next byte to read; always `<= bytes.len()`.
    pos: usize,
    /// The metadata key being read, named in errors.
    key: Option<&'a str>,
    /// The tensor whose info is being read, named in errors.
    tensor: Option<&'a str>,
}

impl<'a> Parser<'a> {
    fn fail(&self, offset: usize, reason: impl Into<String>) -> ReaderError {
        let reason = reason.into();
        ReaderError::Gguf {
            path: self.path.to_path_buf(),
            offset: offset as u64,
            tensor: self.tensor.map(str::to_owned),
            reason: match self.key {
                Some(k) => format!("metadata key `{k}`: {reason}"),
                None => reason,
            },
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes; `what` names the field in the error.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ReaderError> {
        let at = self.pos;
        match self.bytes.get(at..).and_then(|rest| rest.get(..n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.fail(
                at,
                format!(
                    "{what} needs {n} bytes, but the file ends at byte {} ({} left)",
                    self.bytes.len(),
                    self.remaining()
                ),
            )),
        }
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ReaderError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ReaderError> {
        self.fixed(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, ReaderError> {
        self.fixed(what).map(u64::from_le_bytes)
    }

    /// A GGUF string; also returns the offset of its bytes.
    fn string(&mut self, what: &str) -> Result<(&'a str, usize), ReaderError> {
        let len_at = self.pos;
        let len = self.u64(what)?;
        let left = self.remaining();
        let len = match usize::try_from(len) {
            Ok(n) if n <= left => n,
            _ => {
                return Err(self.fail(
                    len_at,
                    format!("{what} is {len} bytes long, but only {left} bytes are left"),
                ))
            }
        };
        let at = self.pos;
        let raw = self.take(len, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok((s, at)),
            Err(e) => Err(self.fail(at + e.valid_up_to(), format!("{what} is not valid UTF-8"))),
        }
    }

    fn file(mut self) -> Result<Gguf, ReaderError> {
        let len = self.bytes.len();
        if len < HEADER_BYTES {
            return Err(self.fail(
                0,
                format!("{len} bytes is shorter than the {HEADER_BYTES}-byte GGUF header"),
            ));
        }
        let magic = self.fixed::<4>("magic")?;
        if &magic != GGUF_MAGIC {
            return Err(self.fail(
                0,
                format!(
                    "not a GGUF file: magic is \"{}\", not \"GGUF\"",
                    magic.escape_ascii()
                ),
            ));
        }
        let version = self.u32("version")?;
        match version {
            2 | 3 => {}
            1 => return Err(self.fail(4, "GGUF version 1 is not supported (only versions 2 and 3)")),
            v if v & 0xffff == 0 && v != 0 => {
                return Err(self.fail(
                    4,
                    format!(
                        "big-endian GGUF is not supported (the version reads as {v:#010x}, byte-swapped {})",
                        v.swap_bytes()
                    ),
                ))
            }
            v => return Err(self.fail(4, format!("GGUF version {v} is not supported (only versions 2 and 3)"))),
        }
        let tensor_count_at = self.pos;
        let tensor_count = self.u64("tensor count")?;
        let kv_count_at = self.pos;
        let kv_count = self.u64("key/value count")?;
        self.check_count(
            tensor_count_at,
            tensor_count,
            MIN_TENSOR_INFO_BYTES,
            "tensor infos",
        )?;
        let kv_cap = self.check_count(kv_count_at, kv_count, MIN_KV_BYTES, "key/value pairs")?;

        // Key/value pairs.
        let kv_cap = kv_cap.min(PREALLOC_ITEMS);
        let mut metadata = Vec::with_capacity(kv_cap);
        let mut keys: HashMap<&'a str, usize> = HashMap::with_capacity(kv_cap);
        let mut alignment = GGUF_DEFAULT_ALIGNMENT;
        for _ in 0..kv_count {
            let key_at = self.pos;
            let (key, _) = self.string("metadata key")?;
            if let Some(first) = keys.insert(key, key_at) {
                return Err(self.fail(
                    key_at,
                    format!("duplicate metadata key `{key}` (first at byte {first})"),
                ));
            }
            self.key = Some(key);
            let type_at = self.pos;
            let ty = self.u32("value type")?;
            let value = self.value(ty, type_at, 0)?;
            if key == GGUF_ALIGNMENT_KEY {
                alignment = match value {
                    GgufValue::U32(a) if a != 0 && a.is_power_of_two() => u64::from(a),
                    GgufValue::U32(a) => {
                        return Err(self.fail(
                            type_at + 4,
                            format!("alignment {a} is not a nonzero power of two"),
                        ))
                    }
                    ref other => {
                        let name = value_type_name(other.type_id()).unwrap_or("?");
                        return Err(
                            self.fail(type_at, format!("alignment must be a u32, not {name}"))
                        );
                    }
                };
            }
            self.key = None;
            metadata.push((key.to_owned(), value));
        }

        // Tensor infos.
        let tensor_cap = self
            .check_count(
                tensor_count_at,
                tensor_count,
                MIN_TENSOR_INFO_BYTES,
                "tensor infos",
            )?
            .min(PREALLOC_ITEMS);
        let mut tensors = Vec::with_capacity(tensor_cap);
        let mut offset_fields = Vec::with_capacity(tensor_cap);
        let mut names: HashMap<&'a str, usize> = HashMap::with_capacity(tensor_cap);
        for _ in 0..tensor_count {
            let (info, at) = self.tensor_info(&mut names)?;
            tensors.push(info);
            offset_fields.push(at);
        }

        // Data section.
        let infos_end = self.pos as u64;
        let data_offset = infos_end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| self.fail(self.pos, "the data section offset overflows"))?;
        let len = len as u64;
        if !tensors.is_empty() && data_offset > len {
            return Err(self.fail(
                self.pos,
                format!("the data section would start at byte {data_offset} (aligned to {alignment}), past the end of the file ({len} bytes)"),
            ));
        }
        for (t, f) in tensors.iter_mut().zip(&offset_fields) {
            let fail = |reason: String| ReaderError::Gguf {
                path: self.path.to_path_buf(),
                offset: *f as u64,
                tensor: Some(t.name.clone()),
                reason,
            };
            if t.offset % alignment != 0 {
                return Err(fail(format!(
                    "data offset {} is not a multiple of the alignment {alignment}",
                    t.offset
                )));
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.nbytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= len => t.file_offset = start,
                _ => {
                    return Err(fail(format!(
                    "data at offset {} + {} ({} bytes) runs past the end of the file ({len} bytes)",
                    data_offset, t.offset, t.nbytes
                )))
                }
            }
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// Check that `count` items of at least `min` bytes each can fit in
    /// what is left; returns the count as a usize.
    fn check_count(
        &self,
        at: usize,
        count: u64,
        min: u64,
        what: &str,
    ) -> Result<usize, ReaderError> {
        let left = self.remaining() as u64;
        match usize::try_from(count) {
            Ok(n) if count <= left / min => Ok(n),
            _ => Err(self.fail(
                at,
                format!("{count} {what} cannot fit in the {left} bytes left (each takes at least {min} bytes)"),
            )),
        }
    }

    /// A value of type `ty`, whose type field is at `type_at`; `depth` is
    /// the number of arrays it is inside.
    fn value(&mut self, ty: u32, type_at: usize, depth: usize) -> Result<GgufValue, ReaderError> {
        Ok(match ty {
            value_type::U8 => GgufValue::U8(u8::from_le_bytes(self.fixed("u8 value")?)),
            value_type::I8 => GgufValue::I8(i8::from_le_bytes(self.fixed("i8 value")?)),
            value_type::U16 => GgufValue::U16(u16::from_le_bytes(self.fixed("u16 value")?)),
            value_type::I16 => GgufValue::I16(i16::from_le_bytes(self.fixed("i16 value")?)),
            value_type::U32 => GgufValue::U32(u32::from_le_bytes(self.fixed("u32 value")?)),
            value_type::I32 => GgufValue::I32(i32::from_le_bytes(self.fixed("i32 value")?)),
            value_type::F32 => GgufValue::F32(f32::from_le_bytes(self.fixed("f32 value")?)),
            value_type::U64 => GgufValue::U64(u64::from_le_bytes(self.fixed("u64 value")?)),
            value_type::I64 => GgufValue::I64(i64::from_le_bytes(self.fixed("i64 value")?)),
            value_type::F64 => GgufValue::F64(f64::from_le_bytes(self.fixed("f64 value")?)),
            value_type::BOOL => {
                let at = self.pos;
                match self.fixed::<1>("bool value")? {
                    [0] => GgufValue::Bool(false),
                    [1] => GgufValue::Bool(true),
                    [b] => return Err(self.fail(at, format!("bool value is {b}, not 0 or 1"))),
                }
            }
            value_type::STRING => GgufValue::String(self.string("string value")?.0.to_owned()),
            value_type::ARRAY => {
                if depth >= GGUF_MAX_ARRAY_DEPTH {
                    return Err(self.fail(
                        type_at,
                        format!("arrays nest deeper than {GGUF_MAX_ARRAY_DEPTH}"),
                    ));
                }
                let item_type_at = self.pos;
                let item_type = self.u32("array item type")?;
                let Some(min) = min_value_bytes(item_type) else {
                    return Err(
                        self.fail(item_type_at, format!("unknown array item type {item_type}"))
                    );
                };
                let count_at = self.pos;
                let count = self.u64("array length")?;
                let name = value_type_name(item_type).unwrap_or("?");
                let cap = self.check_count(count_at, count, min, &format!("{name} array items"))?;
                let mut items = Vec::with_capacity(cap.min(PREALLOC_ITEMS));
                for _ in 0..count {
                    items.push(self.value(item_type, item_type_at, depth + 1)?);
                }
                GgufValue::Array(GgufArray { item_type, items })
            }
            other => return Err(self.fail(type_at, format!("unknown value type {other}"))),
        })
    }

    /// One tensor info entry, and the offset of its `offset` field; `names`
    /// maps the names seen so far to their info offsets.
    fn tensor_info(
        &mut self,
        names: &mut HashMap<&'a str, usize>,
    ) -> Result<(GgufTensorInfo, usize), ReaderError> {
        let info_at = self.pos;
        let (name, name_at) = self.string("tensor name")?;
        self.tensor = Some(name);
        if let Some(first) = names.insert(name, info_at) {
            return Err(self.fail(
                info_at,
                format!("duplicate tensor name (first at byte {first})"),
            ));
        }
        let n_dims_at = self.pos;
        let n_dims = self.u32("n_dims")?;
        if n_dims > GGUF_MAX_DIMS {
            return Err(self.fail(
                n_dims_at,
                format!("{n_dims} dimensions; this reader accepts at most {GGUF_MAX_DIMS} (ggml itself at most {GGML_MAX_DIMS})"),
            ));
        }
        // n_dims <= 8, so this allocation is small whatever the file says.
        let mut ne = Vec::with_capacity(n_dims as usize);
        let mut elements: u64 = 1;
        let mut ne0_at = n_dims_at;
        for j in 0..n_dims {
            let at = self.pos;
            if j == 0 {
                ne0_at = at;
            }
            let n = self.u64("ne")?;
            if i64::try_from(n).is_err() {
                return Err(self.fail(at, format!("ne[{j}] = {n} does not fit an i64")));
            }
            elements = match elements.checked_mul(n) {
                Some(e) if i64::try_from(e).is_ok() => e,
                _ => {
                    return Err(self.fail(
                        at,
                        format!("the element count overflows an i64 at ne[{j}] = {n}"),
                    ))
                }
            };
            ne.push(n);
        }
        let type_at = self.pos;
        let ggml_type = self.u32("ggml type")?;
        let offset_at = self.pos;
        let offset = self.u64("data offset")?;
        let dtype = dtype_of_ggml(ggml_type);
        let nbytes = match dtype {
            None => 0,
            Some(d) => {
                let (be, bb) = (d.block_elems(), d.block_bytes());
                let ne0 = ne.first().copied().unwrap_or(1);
                if ne0 % be != 0 {
                    return Err(self.fail(
                        ne0_at,
                        format!("ne[0] = {ne0} is not a multiple of the {d} block size {be}"),
                    ));
                }
                // ne[0] % be == 0, so elements is a whole number of blocks.
                (elements / be).checked_mul(bb).ok_or_else(|| {
                    self.fail(
                        type_at,
                        format!("{elements} elements of {d} overflow a u64 byte count"),
                    )
                })?
            }
        };
        self.tensor = None;
        let info = GgufTensorInfo {
            name: name.to_owned(),
            name_offset: name_at as u64,
            ne,
            ggml_type,
            dtype,
            offset,
            file_offset: 0, // set once the data section is known
            nbytes,
            info_offset: info_at as u64,
        };
        Ok((info, offset_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
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
}
