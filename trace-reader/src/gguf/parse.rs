//! The GGUF parser: header, key/value pairs and tensor infos, every count
//! and length checked against the bytes left (see the module documentation
//! of [`crate::gguf`]).

use std::collections::HashMap;
use std::path::Path;

use trace_format::DType;

use super::value::{min_value_bytes, value_type, value_type_name, GgufArray, GgufValue};
use super::{
    Gguf, GgufTensorInfo, GGML_MAX_DIMS, GGUF_ALIGNMENT_KEY, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC,
    GGUF_MAX_ARRAY_DEPTH, GGUF_MAX_DIMS,
};
use crate::ReaderError;

/// Fewest bytes of one key/value pair: key length, type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Fewest bytes of one tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Fixed header: magic, version, tensor_count, kv_count.
const HEADER_BYTES: usize = 4 + 4 + 8 + 8;
/// Most items reserved ahead of reading them; beyond this, vectors grow as
/// items are actually read, so memory follows the bytes parsed rather than
/// the count a file claims.
pub(super) const PREALLOC_ITEMS: usize = 1 << 16;

/// Our dtype for a ggml type id. Ids from 256 up are our own types, not
/// ggml's, so they are unknown here.
fn dtype_of_ggml(ggml_type: u32) -> Option<DType> {
    if ggml_type >= 256 {
        return None;
    }
    DType::from_id(u16::try_from(ggml_type).ok()?)
}

pub(super) struct Parser<'a> {
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
    pub(super) fn new(path: &'a Path, bytes: &'a [u8]) -> Parser<'a> {
        Parser {
            path,
            bytes,
            pos: 0,
            key: None,
            tensor: None,
        }
    }

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

    pub(super) fn file(mut self) -> Result<Gguf, ReaderError> {
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
