#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
// unsafe code only where a module allows it (stats_kernel.rs: the AVX2
// call), each block with its SAFETY comment
#![deny(unsafe_code)]

pub mod codec;
pub mod dtype;
mod error;
pub mod layout;
pub mod lineage;
pub mod names;
pub mod op;
pub mod record;
pub mod stats;
mod stats_kernel;
mod strided;
pub mod update;

pub use codec::{
    DataRef, EngineOp, IndexEntry, Lineage, Metadata, Op, SourceLayout, Stats, StorageDesc,
    TensorDesc, TensorDescRef, Value,
};
pub use dtype::{DType, NativeType};
pub use error::{FormatError, LayoutError};
pub use layout::{ElementLayout, Layout};
pub use record::RecordKind;
