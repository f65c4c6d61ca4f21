//! The 256-value super-block types: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_XS.
//!
//! Callers (lib.rs) have checked that `blocks` is whole blocks and `out`
//! holds exactly their values.

macro_rules! todo_fn {
    ($($name:ident),*) => {$(
        pub(crate) fn $name(_blocks: &[u8], _out: &mut [f32]) { unimplemented!(concat!(stringify!($name), " is being written")) }
    )*};
}
todo_fn!(dequantize_q2_k, dequantize_q3_k, dequantize_q4_k, dequantize_q5_k, dequantize_q6_k, dequantize_q8_k, dequantize_iq4_xs);
