//! The library behind the `floxyctl` and `floxyd` binaries: exit codes, durations, store
//! opening, output formatting, the bash and HTTP handlers, and the glue from a flow file to
//! an engine.

pub mod duration;
pub mod exit;
pub mod flows;
pub mod handlers;
pub mod output;
pub mod store;
