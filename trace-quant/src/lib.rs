#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
// unsafe code only where a module allows it (avx2.rs: the calls of the
// AVX2 copies of the dequantizers)
#![deny(unsafe_code)]

mod avx2;
mod error;
mod kquants;
mod legacy;

pub use error::QuantError;

use trace_format::DType;

/// Whether [`dequantize`] decodes `dtype`.
pub fn can_dequantize(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q8_0
            | DType::Q8_1
            | DType::Q2_K
            | DType::Q3_K
            | DType::Q4_K
            | DType::Q5_K
            | DType::Q6_K
            | DType::Q8_K
            | DType::IQ4_NL
            | DType::IQ4_XS
            | DType::MXFP4
    )
}

/// Whether [`quantize`] encodes to `dtype`.
pub fn can_quantize(dtype: DType) -> bool {
    matches!(dtype, DType::Q8_0 | DType::Q4_0)
}

/// Check that `blocks` is whole blocks of `dtype` and `out` has room for
/// exactly their values; returns the block count.
fn check_lengths(dtype: DType, blocks: usize, out: usize) -> Result<usize, QuantError> {
    if !dtype.is_block() {
        return Err(QuantError::NotBlockType { dtype });
    }
    let bb = dtype.block_bytes() as usize;
    let be = dtype.block_elems() as usize;
    if blocks % bb != 0 {
        return Err(QuantError::PartialBlock {
            dtype,
            bytes: blocks as u64,
        });
    }
    let n = blocks / bb;
    if n.checked_mul(be) != Some(out) {
        return Err(QuantError::OutputLength {
            dtype,
            blocks: n as u64,
            values: out as u64,
        });
    }
    Ok(n)
}

/// Decode whole blocks of `dtype` into `out` (`block_elems` values per
/// block), bit for bit as ggml's reference C `dequantize_row_*` and
/// gguf-py's `gguf.quants.dequantize` compute them.
pub fn dequantize(dtype: DType, blocks: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(dtype, blocks.len(), out.len())?;
    if let Some(avx2) = avx2::dequantizer(dtype) {
        avx2(blocks, out);
        return Ok(());
    }
    match dtype {
        DType::Q4_0 => legacy::dequantize_q4_0(blocks, out),
        DType::Q4_1 => legacy::dequantize_q4_1(blocks, out),
        DType::Q5_0 => legacy::dequantize_q5_0(blocks, out),
        DType::Q5_1 => legacy::dequantize_q5_1(blocks, out),
        DType::Q8_0 => legacy::dequantize_q8_0(blocks, out),
        DType::Q8_1 => legacy::dequantize_q8_1(blocks, out),
        DType::IQ4_NL => legacy::dequantize_iq4_nl(blocks, out),
        DType::MXFP4 => legacy::dequantize_mxfp4(blocks, out),
        DType::Q2_K => kquants::dequantize_q2_k(blocks, out),
        DType::Q3_K => kquants::dequantize_q3_k(blocks, out),
        DType::Q4_K => kquants::dequantize_q4_k(blocks, out),
        DType::Q5_K => kquants::dequantize_q5_k(blocks, out),
        DType::Q6_K => kquants::dequantize_q6_k(blocks, out),
        DType::Q8_K => kquants::dequantize_q8_k(blocks, out),
        DType::IQ4_XS => kquants::dequantize_iq4_xs(blocks, out),
        _ => {
            return Err(QuantError::Unsupported {
                dtype,
                what: "dequantization",
            })
        }
    }
    Ok(())
}

/// [`dequantize`] into a new vector.
pub fn dequantize_to_vec(dtype: DType, blocks: &[u8]) -> Result<Vec<f32>, QuantError> {
    if !dtype.is_block() {
        return Err(QuantError::NotBlockType { dtype });
    }
    let n = blocks.len() as u64 / dtype.block_bytes();
    let mut out = vec![0.0f32; (n * dtype.block_elems()) as usize];
    dequantize(dtype, blocks, &mut out)?;
    Ok(out)
}

/// Encode `values` (a whole number of blocks) as `dtype` into `out`
/// (`block_bytes` per block), bit for bit as gguf-py's `gguf.quants.quantize`
/// (ggml's reference `quantize_row_*_ref`) does.
pub fn quantize(dtype: DType, values: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(dtype, out.len(), values.len())?;
    match dtype {
        DType::Q8_0 => legacy::quantize_q8_0(values, out),
        DType::Q4_0 => legacy::quantize_q4_0(values, out),
        _ => {
            return Err(QuantError::Unsupported {
                dtype,
                what: "quantization",
            })
        }
    }
    Ok(())
}

/// [`quantize`] into a new vector.
pub fn quantize_to_vec(dtype: DType, values: &[f32]) -> Result<Vec<u8>, QuantError> {
    if !dtype.is_block() {
        return Err(QuantError::NotBlockType { dtype });
    }
    let be = dtype.block_elems() as usize;
    if values.len() % be != 0 {
        return Err(QuantError::OutputLength {
            dtype,
            blocks: (values.len() / be) as u64,
            values: values.len() as u64,
        });
    }
    let mut out = vec![0u8; values.len() / be * dtype.block_bytes() as usize];
    quantize(dtype, values, &mut out)?;
    Ok(out)
}
