#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
// unsafe code only where a module allows it (source.rs, halves.rs,
// values.rs); every other module forbids it
#![deny(unsafe_code)]

mod container;
mod error;
pub mod gguf;
mod halves;
mod name_index;
mod pool;
mod replay;
/// Layer and step numbers read from tensor names (shared with the writer).
pub use trace_format::names;
mod source;
mod tdump;
mod trace;
mod updates;
pub mod values;
mod verify;
mod view;

pub use error::ReaderError;
pub use source::Source;
pub use trace::{RecordEntry, StorageInfo, TensorFilter, TensorInfo, TornTail, Trace};
pub use trace_format::{DType, Layout, Lineage, Metadata, Op, SourceLayout, Stats, Value};
pub use updates::StorageBytes;
pub use verify::{Fault, VerifyReport};
pub use view::TensorView;

/// Open a trace file (see [`Trace::open`]).
pub fn open(path: impl AsRef<std::path::Path>) -> Result<Trace, ReaderError> {
    Trace::open(path)
}
