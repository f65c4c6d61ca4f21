#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod blame;
pub mod compare;
pub mod demo;
pub mod diagnose;
pub mod diff_text;
mod error;
pub mod export;
pub mod import;
pub mod inspect;
pub mod mapping;
pub mod metrics;
#[cfg(feature = "parquet")]
pub mod parquet;
pub mod recover;
pub mod report;
pub mod shards;
pub mod show;
pub mod sniff;
pub mod stream;
pub mod table;

pub use error::{ResultExt, ToolsError};
