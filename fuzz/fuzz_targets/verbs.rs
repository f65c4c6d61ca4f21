//! A trace file's bytes through the `tracedump` verbs' library calls:
//! inspect (table, tree, stats, JSON), show, verify, diff, report, export.
//! The body is `tracedump_tests::fuzzing_verbs::verbs`, which the corpus
//! replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracedump_tests::fuzzing_verbs::verbs(data));
