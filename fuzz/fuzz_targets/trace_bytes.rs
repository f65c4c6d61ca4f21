//! A trace file's bytes: open, full read, verify.
//! The body is `tracedump_tests::fuzzing::trace_bytes`, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracedump_tests::fuzzing::trace_bytes(data));
