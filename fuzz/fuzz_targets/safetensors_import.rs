//! A safetensors file's bytes through `tracedump import`, and the trace it writes read back.
//! The body is `tracedump_tests::fuzzing::safetensors_import`, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracedump_tests::fuzzing::safetensors_import(data));
