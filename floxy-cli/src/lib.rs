//! The library behind the `floxyctl` and `floxyd` binaries: exit codes, durations, store
//! opening, output formatting, and the glue from a flow file to an engine.

pub mod duration;
pub mod exit;
pub mod flows;
pub mod output;
pub mod store;
