//! The library behind the `floxyctl` and `floxyd` binaries.

pub mod handlers;
