//! The store conformance suite of `floxy-core` against [`MemoryStore`]: one test per check,
//! plus `run_all` as a whole.

use floxy_core::conformance;
use floxy_store_memory::MemoryStore;

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                futures::executor::block_on(conformance::run_one(
                    stringify!($name),
                    Box::pin(conformance::$name(MemoryStore::new())),
                ));
            }
        )*

        /// Guards against a check added to the suite but not listed here.
        #[test]
        fn every_check_is_listed() {
            let listed = [$(stringify!($name)),*];
            let suite: Vec<&str> = conformance::checks::<MemoryStore>()
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

#[test]
fn run_all() {
    futures::executor::block_on(conformance::run_all(|| async { MemoryStore::new() }));
}
