//! The library behind the `floxyctl` and `floxyd` binaries.
