//! Decoding descriptors (SPEC.md §4, §5), refusing what SPEC.md calls invalid.

use super::*;
use crate::error::FormatError;
use crate::DType;

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
