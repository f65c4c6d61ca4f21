//! One module per subcommand: its arguments, and a `run` over library calls.

pub mod demo;
pub mod diff;
pub mod export;
pub mod import;
pub mod inspect;
pub mod recover;
pub mod report;
pub mod show;
pub mod verify;
