//! The C ABI (writer, lineage builders, ggml recorder) driven by the input, and the trace it writes read back.
//! The body is `tracedump_tests::fuzzing::capi`, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracedump_tests::fuzzing::capi(data));
