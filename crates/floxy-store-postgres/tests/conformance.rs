//! The store conformance suite of `floxy-core` against [`PostgresStore`] on a real
//! PostgreSQL (a throwaway cluster, or `FLOXY_TEST_DATABASE_URL`): one test per check, each
//! on a fresh schema, plus `run_all`, for both table layouts.

use floxy_core::conformance;
use floxy_store_postgres::Layout;
use floxy_store_postgres::testing::test_store;

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        mod plain {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store = test_store(Layout::Plain).await;
                    conformance::run_one(
                        stringify!($name),
                        Box::pin(conformance::$name(store)),
                    )
                    .await;
                }
            )*
        }

        /// Guards against a check added to the suite but not listed here.
        #[test]
        fn every_check_is_listed() {
            let listed = [$(stringify!($name)),*];
            let suite: Vec<&str> = conformance::checks::<floxy_store_postgres::PostgresStore>()
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

/// The whole suite on the plain layout, as a third-party backend would run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_plain() {
    conformance::run_all(|| test_store(Layout::Plain)).await;
}

/// The whole suite on the pg_partman-partitioned layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_partitioned() {
    conformance::run_all(|| test_store(Layout::Partitioned)).await;
}
