//! The one error type of this crate.

use trace_format::DType;

/// What went wrong decoding or encoding blocks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The dtype is not a ggml block type.
    #[error("{dtype} is not a block-quantized type")]
    NotBlockType {
        /// The dtype asked for.
        dtype: DType,
    },
    /// The byte count is not a whole number of blocks.
    #[error("{bytes} bytes are not a whole number of {dtype} blocks")]
    PartialBlock {
        /// The dtype.
        dtype: DType,
        /// The byte count given.
        bytes: u64,
    },
    /// The value buffer does not match the block count.
    #[error("{blocks} {dtype} blocks do not hold {values} values")]
    OutputLength {
        /// The dtype.
        dtype: DType,
        /// Blocks given.
        blocks: u64,
        /// Values given or asked for.
        values: u64,
    },
    /// This crate does not (yet) do this for this dtype.
    #[error("{what} of {dtype} is not supported")]
    Unsupported {
        /// The dtype.
        dtype: DType,
        /// "dequantization" or "quantization".
        what: &'static str,
    },
}
