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

use std::path::Path;

use trace_format::{DType, Metadata};

use crate::ReaderError;

mod describe;
mod parse;
#[cfg(test)]
mod tests;
mod value;

pub(crate) use describe::open;
pub use value::{value_type, value_type_name, GgufArray, GgufValue};

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

/// Parse the GGUF file `bytes`, read from `path` (used only in errors).
///
/// See the [module documentation](self) for what is checked. Nothing is
/// copied from `bytes` but names and metadata values.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Gguf, ReaderError> {
    parse::Parser::new(path, bytes).file()
}
