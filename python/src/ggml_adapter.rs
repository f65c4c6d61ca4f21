//! The ggml adapter's C sources, embedded at build time from their one
//! source in trace-writer (`ggml/tracedump_ggml.{c,h}`, and the C ABI's
//! `include/tracedump.h`): `tracedump.ggml.adapter_library` writes them
//! out and compiles them against the installed llama-cpp-python.

#![forbid(unsafe_code)]

/// (file name, text) of each source the adapter compiles from.
pub const SOURCES: [(&str, &str); 3] = [
    (
        "tracedump.h",
        include_str!("../../trace-writer/include/tracedump.h"),
    ),
    (
        "tracedump_ggml.h",
        include_str!("../../trace-writer/ggml/tracedump_ggml.h"),
    ),
    (
        "tracedump_ggml.c",
        include_str!("../../trace-writer/ggml/tracedump_ggml.c"),
    ),
];
