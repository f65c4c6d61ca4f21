//! A GGUF file's bytes: open as a trace, full read, verify, import into a trace and read that back.
//! The body is `tracedump_tests::fuzzing::gguf_bytes`, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracedump_tests::fuzzing::gguf_bytes(data));
