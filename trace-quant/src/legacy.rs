//! The 32-value block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, IQ4_NL, MXFP4,
//! and quantization to Q8_0 and Q4_0.
//!
//! Callers (lib.rs) have checked that `blocks` is whole blocks and `out`
//! holds exactly their values.

macro_rules! todo_fn {
    ($($name:ident),*) => {$(
        pub(crate) fn $name(_blocks: &[u8], _out: &mut [f32]) { unimplemented!(concat!(stringify!($name), " is being written")) }
    )*};
}
todo_fn!(dequantize_q4_0, dequantize_q4_1, dequantize_q5_0, dequantize_q5_1, dequantize_q8_0, dequantize_q8_1, dequantize_iq4_nl, dequantize_mxfp4);

pub(crate) fn quantize_q8_0(_values: &[f32], _out: &mut [u8]) {
    unimplemented!("quantize_q8_0 is being written")
}

pub(crate) fn quantize_q4_0(_values: &[f32], _out: &mut [u8]) {
    unimplemented!("quantize_q4_0 is being written")
}
