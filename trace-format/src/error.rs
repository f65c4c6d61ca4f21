//! The format crate's errors.

use thiserror::Error;

/// A structural fault found while decoding bytes of a trace.
///
/// Offsets are absolute byte offsets in the file whenever the caller passed
/// the absolute position of the bytes being decoded (the reader always does).
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes end before the field does.
    #[error("{field} at byte {offset} runs past the end of its record ({needed} bytes needed, {available} left)")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where the field starts.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes that remain.
        available: u64,
    },
    /// A string is not valid UTF-8.
    #[error("{field} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
        /// Where the string starts.
        offset: u64,
    },
    /// A dtype id this reader does not know.
    #[error("unknown dtype id {id} at byte {offset}")]
    UnknownDType {
        /// The id found.
        id: u16,
        /// Where it was found.
        offset: u64,
    },
    /// A field holds a value the format does not allow.
    #[error("invalid {field} at byte {offset}: {reason}")]
    Invalid {
        /// The field being read.
        field: &'static str,
        /// Where it was found.
        offset: u64,
        /// Why it is invalid.
        reason: String,
    },
}

/// A layout that cannot describe bytes of its storage, or a lineage step
/// that cannot be replayed.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum LayoutError {
    /// Shape and strides have different lengths.
    #[error("shape has {shape} dimensions but byte_strides has {strides}")]
    RankMismatch {
        /// Dimensions in the shape.
        shape: usize,
        /// Dimensions in the strides.
        strides: usize,
    },
    /// More dimensions than the format allows.
    #[error("{ndim} dimensions (at most {max} allowed)")]
    TooManyDims {
        /// Dimensions found.
        ndim: usize,
        /// The limit.
        max: usize,
    },
    /// The element count or a byte offset does not fit in 64 bits.
    #[error("element count or byte offset of shape {shape:?} overflows 64 bits")]
    Overflow {
        /// The shape.
        shape: Vec<u64>,
    },
    /// The view reaches bytes outside its storage.
    #[error("view covers bytes {start}..{end} but the storage has {storage_len} bytes")]
    OutOfBounds {
        /// First byte touched (may be negative).
        start: i128,
        /// One past the last byte touched.
        end: i128,
        /// Storage length.
        storage_len: u64,
    },
    /// A block-typed view whose offset or strides do not map onto whole elements.
    #[error("{dtype} view cannot be mapped onto elements: {reason}")]
    BlockMapping {
        /// The block dtype.
        dtype: crate::DType,
        /// Why.
        reason: String,
    },
    /// A block-typed tensor whose element count is not a whole number of blocks where one is needed.
    #[error("{dtype} needs whole blocks of {block_elems} values; got {numel}")]
    PartialBlock {
        /// The block dtype.
        dtype: crate::DType,
        /// Values per block.
        block_elems: u64,
        /// The element count.
        numel: u64,
    },
    /// Permutation axes that are not a permutation of `0..ndim`.
    #[error("axes {axes:?} are not a permutation of 0..{ndim}")]
    BadAxes {
        /// The axes given.
        axes: Vec<u32>,
        /// The rank of the tensor.
        ndim: usize,
    },
    /// A reshape to a different element count, or of a non-contiguous tensor.
    #[error("cannot reshape {from:?} to {to:?}: {reason}")]
    BadReshape {
        /// The shape before.
        from: Vec<u64>,
        /// The shape asked for.
        to: Vec<u64>,
        /// Why.
        reason: &'static str,
    },
    /// Lineage steps with no parent to apply them to.
    #[error("the lineage step `{op}` has no parent to apply to")]
    NoParent {
        /// The first step.
        op: String,
    },
    /// A concat whose parts do not fit together.
    #[error("cannot concat along axis {axis}: {reason}")]
    BadConcat {
        /// The axis.
        axis: u32,
        /// Why.
        reason: String,
    },
}
