//! GGUF metadata values: the type ids, [`GgufValue`] and [`GgufArray`],
//! and their conversion to our [`Value`].

use trace_format::Value;

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
pub(super) fn min_value_bytes(id: u32) -> Option<u64> {
    Some(match id {
        value_type::U8 | value_type::I8 | value_type::BOOL => 1,
        value_type::U16 | value_type::I16 => 2,
        value_type::U32 | value_type::I32 | value_type::F32 => 4,
        value_type::U64 | value_type::I64 | value_type::F64 | value_type::STRING => 8,
        value_type::ARRAY => 12,
        _ => return None,
    })
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
