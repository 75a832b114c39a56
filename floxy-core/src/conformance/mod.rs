//! The store conformance suite: one public async function per behaviour of the
//! [`Store`] contract, each taking a fresh store and panicking with a message that
//! names the broken rule.
//!
//! Every backend runs the same suite from its `tests/conformance.rs`, and so can a
//! third-party backend. The suite is runtime-agnostic (it only needs an executor, e.g.
//! `futures::executor::block_on` or `#[tokio::test]`), builds its transitions by hand with
//! the [`fixtures`], uses explicit [`Timestamp`](crate::model::Timestamp)s around
//! [`fixtures::T0`], and never sleeps or reads a clock.
//!
//! ```text
//! #[test]
//! fn conformance() {
//!     futures::executor::block_on(floxy_core::conformance::run_all(|| async {
//!         MyStore::new()
//!     }));
//! }
//! ```
//!
//! [`checks`] lists every check with its name, for backends that prefer one test per check.
//!
//! Panicking on a broken rule is what every check and helper here is for, so their docs say
//! in prose which rule each one checks instead of repeating a `# Panics` section.

#![allow(clippy::missing_panics_doc)] // panicking is this module's contract (see above)

pub mod fixtures;

mod claims;
mod instances;
mod leases;
mod queue;
mod records;
mod retention;

pub use claims::{
    claim_batches, claim_handler_filter, claim_missing_step_run, claim_priority_aging,
    claim_side_effects, claim_tie_break, claim_uniqueness, eager_claim,
};
pub use instances::{
    atomic_apply, create_and_read, definitions, duplicate_create, idempotency_key,
    step_compare_and_set, update_errors, version_check,
};
pub use leases::{fencing_tokens_increase, heartbeat, lease_expiry, stale_token};
pub use queue::{delete_item, next_due, request_cancel, upsert_replaces};
pub use records::{dlq_records, events_sequence, list_instances};
pub use retention::{cleanup, stats};

use crate::store::{Capabilities, Store};
use futures::FutureExt;
use futures::future::BoxFuture;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// Builds a [`Capabilities`] value (the struct is `#[non_exhaustive]`, so backends outside
/// this crate cannot write it as a literal).
#[must_use]
pub const fn capabilities(durable: bool, multi_process: bool) -> Capabilities {
    Capabilities::new(durable, multi_process)
}

/// One check: takes a fresh store, panics on a contract violation.
pub type Check<S> = fn(S) -> BoxFuture<'static, ()>;

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// Every check of the suite with its name, in the order [`run_all`] runs them.
        #[must_use]
        pub fn checks<S: Store>() -> Vec<(&'static str, Check<S>)> {
            vec![$((stringify!($name), (|s: S| -> BoxFuture<'static, ()> { Box::pin($name(s)) }) as Check<S>)),*]
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
    eager_claim,
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

/// Generates one `#[test]` per conformance check, plus `every_check_is_listed`, in the
/// calling test crate. `$run` is called as `$run(name, check)` with the check's name and a
/// [`Check`] to apply to a fresh store; it owns the executor and the store's setup and
/// teardown (e.g. `|name, check| block_on(run_one(name, check(MyStore::new())))`).
///
/// ```text
/// floxy_core::conformance_tests!(MyStore, |name, check: Check<MyStore>| {
///     futures::executor::block_on(conformance::run_one(name, check(MyStore::new())))
/// });
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($store:ty, $run:expr) => {
        $crate::conformance_tests!(@each $store, $run;
            definitions, create_and_read, idempotency_key, duplicate_create, version_check,
            update_errors, step_compare_and_set, atomic_apply, claim_uniqueness, claim_batches,
            claim_tie_break, claim_handler_filter, claim_priority_aging, claim_side_effects,
            claim_missing_step_run, eager_claim, fencing_tokens_increase, lease_expiry, stale_token,
            heartbeat, upsert_replaces, delete_item, request_cancel, next_due, dlq_records,
            events_sequence, list_instances, stats, cleanup);
    };
    (@each $store:ty, $run:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let check: $crate::conformance::Check<$store> =
                    |s| ::std::boxed::Box::pin($crate::conformance::$name(s));
                ($run)(stringify!($name), check);
            }
        )*

        /// Guards against a check added to `conformance::checks` but not to the macro.
        #[test]
        fn every_check_is_listed() {
            let listed = [$(stringify!($name)),*];
            let suite: ::std::vec::Vec<&str> = $crate::conformance::checks::<$store>()
                .iter()
                .map(|(name, _)| *name)
                .collect();
            assert_eq!(suite, listed, "floxy-core: conformance_tests! misses a check");
        }
    };
}

/// Runs every check, each on a fresh store from `factory`. Panics with the name of the
/// first check that fails and its message.
pub async fn run_all<S, F, Fut>(factory: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    for (name, check) in checks::<S>() {
        let store = factory().await;
        run_one(name, check(store)).await;
    }
}

/// Runs one check future, turning its panic into one that names the check.
pub async fn run_one(name: &str, check: BoxFuture<'static, ()>) {
    if let Err(panic) = AssertUnwindSafe(check).catch_unwind().await {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(non-string panic)");
        panic!("store conformance check `{name}` failed: {msg}");
    }
}
