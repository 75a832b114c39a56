//! The store conformance suite of `floxy-core` against [`PostgresStore`] on a real
//! PostgreSQL (a throwaway cluster, or `FLOXY_TEST_DATABASE_URL`): one test per check, each
//! on a fresh schema, plus `run_all`, for both table layouts.

#![allow(clippy::expect_used)]

use floxy_core::conformance;
use floxy_store_postgres::testing::test_store;
use floxy_store_postgres::{Layout, PostgresStore};

/// One check on a fresh schema of the plain layout, on its own tokio runtime.
fn run_plain(name: &'static str, check: conformance::Check<PostgresStore>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let store = test_store(Layout::Plain).await;
        conformance::run_one(name, check(store)).await;
    });
}

mod plain {
    use super::*;
    floxy_core::conformance_tests!(PostgresStore, run_plain);
}

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
