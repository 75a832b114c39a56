//! The store conformance suite of `floxy-core` against [`RedbStore`] on real files: one test
//! per check, plus `run_all` as a whole, plus the suite again on stores reopened from disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TempDb, fresh};
use floxy_core::conformance;
use floxy_store_redb::{Durability, RedbStore};

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (store, _db) = fresh(Durability::Immediate);
                futures::executor::block_on(async {
                    conformance::run_one(
                        stringify!($name),
                        Box::pin(conformance::$name(store.clone())),
                    )
                    .await;
                    store.close().await.expect("close");
                });
            }
        )*

        /// Guards against a check added to the suite but not listed here.
        #[test]
        fn every_check_is_listed() {
            let listed = [$(stringify!($name)),*];
            let suite: Vec<&str> = conformance::checks::<RedbStore>()
                .iter()
                .map(|(name, _)| *name)
                .collect();
            assert_eq!(suite, listed, "update the list in tests/conformance.rs");
        }
    };
}

checks!(
    definitions,
    create_and_read,
    idempotency_key,
    duplicate_create,
    version_check,
    update_errors,
    step_compare_and_set,
    atomic_apply,
    claim_uniqueness,
    claim_batches,
    claim_tie_break,
    claim_handler_filter,
    claim_priority_aging,
    claim_side_effects,
    claim_missing_step_run,
    fencing_tokens_increase,
    lease_expiry,
    stale_token,
    heartbeat,
    upsert_replaces,
    delete_item,
    request_cancel,
    next_due,
    dlq_records,
    events_sequence,
    list_instances,
    stats,
    cleanup,
);

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
