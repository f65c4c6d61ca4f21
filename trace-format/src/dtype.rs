//! Element types: plain scalars and ggml's block-quantized types.
//!
//! Every dtype ggml knows keeps ggml's own numeric id (`ggml_type`), so a
//! ggml tensor's `type` field can be written as it is. Types ggml lacks take
//! ids from 256 up. The table [`DTYPE_TABLE`] is the single source of
//! ids, names, block sizes and block byte sizes; `SPEC.md` repeats it and a
//! test checks the two agree.

use std::fmt;

/// The element type of a tensor.
///
/// Block types (`Q4_0` … `MXFP4`) store `block_elems` values in
/// `block_bytes` bytes; their layouts are described in ggml's
/// `ggml-common.h`, which is the authority for the sizes pinned here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
#[allow(non_camel_case_types)]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// ggml Q4_0: 32 values, f16 scale + 16 bytes of nibbles.
    Q4_0,
    /// ggml Q4_1: 32 values, f16 scale and min + 16 bytes of nibbles.
    Q4_1,
    /// ggml Q5_0: 32 values.
    Q5_0,
    /// ggml Q5_1: 32 values.
    Q5_1,
    /// ggml Q8_0: 32 values, f16 scale + 32 signed bytes.
    Q8_0,
    /// ggml Q8_1: 32 values, f16 scale and f16 sum + 32 signed bytes (36 bytes).
    Q8_1,
    /// ggml Q2_K super-block of 256 values.
    Q2_K,
    /// ggml Q3_K super-block of 256 values.
    Q3_K,
    /// ggml Q4_K super-block of 256 values.
    Q4_K,
    /// ggml Q5_K super-block of 256 values.
    Q5_K,
    /// ggml Q6_K super-block of 256 values.
    Q6_K,
    /// ggml Q8_K super-block of 256 values (f32 scale, 256 bytes, 16 i16 sums).
    Q8_K,
    /// ggml IQ4_NL: 32 values, non-linear 4-bit.
    IQ4_NL,
    /// ggml IQ4_XS super-block of 256 values.
    IQ4_XS,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE 754 binary64.
    F64,
    /// bfloat16 (the top half of an f32).
    BF16,
    /// ggml MXFP4: 32 values, e8m0 shared exponent + 16 bytes of e2m1 nibbles.
    MXFP4,
    /// Boolean stored as one byte, 0 or 1.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits, finite only (`float8_e4m3fn`).
    F8_E4M3,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits (`float8_e5m2`).
    F8_E5M2,
}

/// How the values of a dtype are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DTypeClass {
    /// `bool`.
    Bool,
    /// Unsigned integer.
    UInt,
    /// Signed integer.
    SInt,
    /// Floating point (including f16, bf16, fp8).
    Float,
    /// A ggml block-quantized type.
    Block,
}

/// One row of the dtype table.
#[derive(Clone, Copy, Debug)]
pub struct DTypeInfo {
    /// The dtype.
    pub dtype: DType,
    /// The id stored in the file (ggml's `ggml_type` value where ggml has the type).
    pub id: u16,
    /// The lower-case name used in the CLI, SPEC.md and Python.
    pub name: &'static str,
    /// Values per block (1 for scalar types).
    pub block_elems: u32,
    /// Bytes per block (the element size for scalar types).
    pub block_bytes: u32,
    /// Encoding class.
    pub class: DTypeClass,
}

macro_rules! row {
    ($d:ident, $id:expr, $name:expr, $be:expr, $bb:expr, $class:ident) => {
        DTypeInfo {
            dtype: DType::$d,
            id: $id,
            name: $name,
            block_elems: $be,
            block_bytes: $bb,
            class: DTypeClass::$class,
        }
    };
}

/// The dtype table, in id order. Ids below 256 are ggml's `enum ggml_type`.
pub const DTYPE_TABLE: &[DTypeInfo] = &[
    row!(F32, 0, "f32", 1, 4, Float),
    row!(F16, 1, "f16", 1, 2, Float),
    row!(Q4_0, 2, "q4_0", 32, 18, Block),
    row!(Q4_1, 3, "q4_1", 32, 20, Block),
    row!(Q5_0, 6, "q5_0", 32, 22, Block),
    row!(Q5_1, 7, "q5_1", 32, 24, Block),
    row!(Q8_0, 8, "q8_0", 32, 34, Block),
    row!(Q8_1, 9, "q8_1", 32, 36, Block),
    row!(Q2_K, 10, "q2_k", 256, 84, Block),
    row!(Q3_K, 11, "q3_k", 256, 110, Block),
    row!(Q4_K, 12, "q4_k", 256, 144, Block),
    row!(Q5_K, 13, "q5_k", 256, 176, Block),
    row!(Q6_K, 14, "q6_k", 256, 210, Block),
    row!(Q8_K, 15, "q8_k", 256, 292, Block),
    row!(IQ4_NL, 20, "iq4_nl", 32, 18, Block),
    row!(IQ4_XS, 23, "iq4_xs", 256, 136, Block),
    row!(I8, 24, "i8", 1, 1, SInt),
    row!(I16, 25, "i16", 1, 2, SInt),
    row!(I32, 26, "i32", 1, 4, SInt),
    row!(I64, 27, "i64", 1, 8, SInt),
    row!(F64, 28, "f64", 1, 8, Float),
    row!(BF16, 30, "bf16", 1, 2, Float),
    row!(MXFP4, 39, "mxfp4", 32, 17, Block),
    row!(Bool, 256, "bool", 1, 1, Bool),
    row!(U8, 257, "u8", 1, 1, UInt),
    row!(U16, 258, "u16", 1, 2, UInt),
    row!(U32, 259, "u32", 1, 4, UInt),
    row!(U64, 260, "u64", 1, 8, UInt),
    row!(F8_E4M3, 261, "f8_e4m3", 1, 1, Float),
    row!(F8_E5M2, 262, "f8_e5m2", 1, 1, Float),
];

impl DType {
    /// Every dtype, in id order.
    pub fn all() -> impl Iterator<Item = DType> {
        DTYPE_TABLE.iter().map(|r| r.dtype)
    }

    /// This dtype's row of [`DTYPE_TABLE`].
    pub fn info(self) -> &'static DTypeInfo {
        // The table holds every variant exactly once (checked by a unit test).
        DTYPE_TABLE
            .iter()
            .find(|r| r.dtype == self)
            .unwrap_or(&DTYPE_TABLE[0])
    }

    /// The dtype with file id `id`, if known.
    pub fn from_id(id: u16) -> Option<DType> {
        DTYPE_TABLE.iter().find(|r| r.id == id).map(|r| r.dtype)
    }

    /// The dtype whose name is `name` (case-insensitive; `float32`, `half`,
    /// `float16`, `bfloat16`, `float64`, `double` are accepted too).
    pub fn from_name(name: &str) -> Option<DType> {
        let lower = name.to_ascii_lowercase();
        let alias = match lower.as_str() {
            "float32" | "float" => "f32",
            "float16" | "half" => "f16",
            "bfloat16" => "bf16",
            "float64" | "double" => "f64",
            "float8_e4m3fn" | "f8e4m3" => "f8_e4m3",
            "float8_e5m2" | "f8e5m2" => "f8_e5m2",
            other => other,
        };
        DTYPE_TABLE
            .iter()
            .find(|r| r.name == alias)
            .map(|r| r.dtype)
    }

    /// The id stored in the file.
    pub fn id(self) -> u16 {
        self.info().id
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Values per block (1 for scalar types).
    pub fn block_elems(self) -> u64 {
        u64::from(self.info().block_elems)
    }

    /// Bytes per block (the element size for scalar types).
    pub fn block_bytes(self) -> u64 {
        u64::from(self.info().block_bytes)
    }

    /// Whether this is a ggml block-quantized type.
    pub fn is_block(self) -> bool {
        self.info().class == DTypeClass::Block
    }

    /// Whether values are floating point (f16, bf16, f32, f64, fp8).
    pub fn is_float(self) -> bool {
        self.info().class == DTypeClass::Float
    }

    /// The size of one element in bytes, or `None` for block types.
    pub fn element_bytes(self) -> Option<usize> {
        if self.is_block() {
            None
        } else {
            Some(self.info().block_bytes as usize)
        }
    }

    /// Bytes needed for `n` contiguous elements; `None` on overflow or, for
    /// block types, when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let be = self.block_elems();
        if n % be != 0 {
            return None;
        }
        (n / be).checked_mul(self.block_bytes())
    }

    /// Decode the scalar at the start of `bytes` (little-endian) as f64.
    ///
    /// Returns `None` for block types or when `bytes` is too short.
    #[inline]
    pub fn decode_f64(self, bytes: &[u8]) -> Option<f64> {
        macro_rules! le {
            ($t:ty) => {{
                let n = std::mem::size_of::<$t>();
                <$t>::from_le_bytes(bytes.get(..n)?.try_into().ok()?)
            }};
        }
        Some(match self {
            DType::F32 => f64::from(le!(f32)),
            DType::F64 => le!(f64),
            DType::F16 => half::f16::from_bits(le!(u16)).to_f64(),
            DType::BF16 => half::bf16::from_bits(le!(u16)).to_f64(),
            DType::F8_E4M3 => f8_e4m3_to_f32(*bytes.first()?) as f64,
            DType::F8_E5M2 => f8_e5m2_to_f32(*bytes.first()?) as f64,
            DType::Bool => f64::from(u8::from(*bytes.first()? != 0)),
            DType::U8 => f64::from(*bytes.first()?),
            DType::I8 => f64::from(*bytes.first()? as i8),
            DType::U16 => f64::from(le!(u16)),
            DType::I16 => f64::from(le!(i16)),
            DType::U32 => f64::from(le!(u32)),
            DType::I32 => f64::from(le!(i32)),
            DType::U64 => le!(u64) as f64,
            DType::I64 => le!(i64) as f64,
            _ => return None,
        })
    }

    /// Decode the scalar at the start of `bytes` as f32 (rounded to nearest
    /// for f64 and 32/64-bit integers). `None` as for [`DType::decode_f64`].
    #[inline]
    pub fn decode_f32(self, bytes: &[u8]) -> Option<f32> {
        Some(match self {
            DType::F32 => f32::from_le_bytes(bytes.get(..4)?.try_into().ok()?),
            DType::F16 => {
                half::f16::from_bits(u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?)).to_f32()
            }
            DType::BF16 => {
                half::bf16::from_bits(u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?)).to_f32()
            }
            DType::F8_E4M3 => f8_e4m3_to_f32(*bytes.first()?),
            DType::F8_E5M2 => f8_e5m2_to_f32(*bytes.first()?),
            _ => self.decode_f64(bytes)? as f32,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Convert an `float8_e4m3fn` byte to f32 (exact). `0x7f`/`0xff` are NaN; there is no infinity.
pub fn f8_e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = (b >> 3) & 0x0f;
    let man = b & 0x07;
    if exp == 0x0f && man == 0x07 {
        return f32::NAN;
    }
    let mag = if exp == 0 {
        f32::from(man) / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + f32::from(man) / 8.0) * 2f32.powi(i32::from(exp) - 7)
    };
    sign * mag
}

/// Convert a `float8_e5m2` byte to f32 (exact): it is the top byte of an f16.
pub fn f8_e5m2_to_f32(b: u8) -> f32 {
    half::f16::from_bits(u16::from(b) << 8).to_f32()
}

/// Rust types whose values are stored as one of our scalar dtypes, in
/// native (little-endian) byte order.
pub trait NativeType: bytemuck::Pod + Copy + Send + Sync + 'static {
    /// The dtype of this type.
    const DTYPE: DType;
}

macro_rules! native {
    ($t:ty, $d:ident) => {
        impl NativeType for $t {
            const DTYPE: DType = DType::$d;
        }
    };
}
native!(f32, F32);
native!(f64, F64);
native!(half::f16, F16);
native!(half::bf16, BF16);
native!(i8, I8);
native!(i16, I16);
native!(i32, I32);
native!(i64, I64);
native!(u8, U8);
native!(u16, U16);
native!(u32, U32);
native!(u64, U64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut ids: Vec<u16> = DTYPE_TABLE.iter().map(|r| r.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), DTYPE_TABLE.len(), "ids are unique and sorted");
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        for r in DTYPE_TABLE {
            assert_eq!(r.dtype.info().id, r.id);
            assert_eq!(DType::from_id(r.id), Some(r.dtype));
            assert_eq!(DType::from_name(r.name), Some(r.dtype));
            assert_eq!(DType::from_name(&r.name.to_uppercase()), Some(r.dtype));
        }
    }

    /// ids, block sizes and block bytes from ggml's `ggml.c` type traits and
    /// `ggml-common.h` (block structs): pinned here on purpose.
    #[test]
    fn ggml_ids_and_block_sizes_are_pinned() {
        let expect: &[(DType, u16, u64, u64)] = &[
            (DType::F32, 0, 1, 4),
            (DType::F16, 1, 1, 2),
            (DType::Q4_0, 2, 32, 18),
            (DType::Q4_1, 3, 32, 20),
            (DType::Q5_0, 6, 32, 22),
            (DType::Q5_1, 7, 32, 24),
            (DType::Q8_0, 8, 32, 34),
            (DType::Q8_1, 9, 32, 36),
            (DType::Q2_K, 10, 256, 84),
            (DType::Q3_K, 11, 256, 110),
            (DType::Q4_K, 12, 256, 144),
            (DType::Q5_K, 13, 256, 176),
            (DType::Q6_K, 14, 256, 210),
            (DType::Q8_K, 15, 256, 292),
            (DType::IQ4_NL, 20, 32, 18),
            (DType::IQ4_XS, 23, 256, 136),
            (DType::I8, 24, 1, 1),
            (DType::I16, 25, 1, 2),
            (DType::I32, 26, 1, 4),
            (DType::I64, 27, 1, 8),
            (DType::F64, 28, 1, 8),
            (DType::BF16, 30, 1, 2),
            (DType::MXFP4, 39, 32, 17),
        ];
        for &(d, id, be, bb) in expect {
            assert_eq!(
                (d.id(), d.block_elems(), d.block_bytes()),
                (id, be, bb),
                "{d}"
            );
        }
        assert_eq!(DType::all().count(), 30);
    }

    /// SPEC.md §8 repeats the table; the two must agree row for row.
    #[test]
    fn spec_table_matches() {
        let spec = include_str!("../SPEC.md");
        let section = spec.split("## §8").nth(1).expect("SPEC.md has §8");
        let rows: Vec<Vec<&str>> = section
            .lines()
            .take_while(|l| !l.starts_with("## §9"))
            .filter(|l| l.starts_with("| ") && l.as_bytes().get(2).is_some_and(u8::is_ascii_digit))
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        assert_eq!(rows.len(), DTYPE_TABLE.len());
        for (row, info) in rows.iter().zip(DTYPE_TABLE) {
            let class = format!("{:?}", info.class).to_lowercase();
            assert_eq!(
                row[..5],
                [
                    info.id.to_string().as_str(),
                    info.name,
                    &info.block_elems.to_string(),
                    &info.block_bytes.to_string(),
                    &class
                ],
                "SPEC.md §8 row for {}",
                info.name
            );
        }
    }

    #[test]
    fn fp8_decoding() {
        assert_eq!(f8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(f8_e4m3_to_f32(0x7e), 448.0);
        assert_eq!(f8_e4m3_to_f32(0x01), 2f32.powi(-9));
        assert!(f8_e4m3_to_f32(0x7f).is_nan());
        assert_eq!(f8_e4m3_to_f32(0xb8), -1.0);
        assert_eq!(f8_e5m2_to_f32(0x3c), 1.0);
        assert_eq!(f8_e5m2_to_f32(0x7b), 57344.0);
        assert!(f8_e5m2_to_f32(0x7c).is_infinite());
    }

    #[test]
    fn bytes_for_blocks() {
        assert_eq!(DType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(DType::Q8_0.bytes_for(16), None);
        assert_eq!(DType::F32.bytes_for(3), Some(12));
        assert_eq!(DType::F64.bytes_for(u64::MAX), None);
    }
}
