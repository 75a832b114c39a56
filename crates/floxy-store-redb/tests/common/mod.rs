//! Helpers shared by the integration tests: stores on fresh files in temporary directories.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use floxy_store_redb::{Durability, RedbOptions, RedbStore};
use std::path::{Path, PathBuf};

/// A temporary directory and a database path inside it.
pub struct TempDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("floxy.redb");
        Self { dir, path }
    }
}

/// Opens `path` with `durability`.
pub fn open(path: &Path, durability: Durability) -> RedbStore {
    RedbStore::open(path, RedbOptions::default().durability(durability)).expect("open store")
}

/// A store on a fresh file that lives as long as the returned guard. The store is durable
/// (`Immediate`) unless told otherwise.
pub fn fresh(durability: Durability) -> (RedbStore, TempDb) {
    let db = TempDb::new();
    let store = open(&db.path, durability);
    (store, db)
}
