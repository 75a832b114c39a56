//! An idle checkpoint that fails (failpoint `floxy-redb::idle-checkpoint`, feature
//! `failpoints`) changes nothing, is not retried while the store stays idle (it would log a
//! failure every 250 ms), and the next idle spell after a later batch checkpoints.
//!
//! Failpoints are process-wide, so this binary holds one test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use floxy_core::conformance::fixtures::{at, create, iid, next, ok, snapshot, start, update};
use floxy_store_redb::{RedbOptions, RedbStore};
use std::time::Duration;

/// Several idle waits (250 ms each), with room for a loaded machine.
const IDLE: Duration = Duration::from_millis(2_000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_idle_checkpoint_waits_for_the_next_batch() {
    let scenario = fail::FailScenario::setup();
    let db = common::TempDb::new();
    // 16 KiB of log make an idle checkpoint due.
    let options = RedbOptions::default().checkpoint_bytes(256 << 10);
    let store = RedbStore::open(&db.path, options.clone()).expect("open");
    // The first idle checkpoint fails; any later one would succeed. So no checkpoint while
    // the store stays idle means it was tried once and not again, and the checkpoint after
    // the next batch (below) can only come if that one failure was used up before it.
    fail::cfg("floxy-redb::idle-checkpoint", "1*return").unwrap();
    futures::future::join_all((1..=150).map(|n| create(&store, start(iid(n), at(0), &[])))).await;
    tokio::time::sleep(IDLE).await;
    assert_eq!(
        store.writer_stats().checkpoints,
        0,
        "failed, and not retried while nothing new was committed"
    );
    ok(
        update(&store, iid(1), |s| next(s, at(1))).await,
        "a later batch",
    );
    common::wait_for_checkpoints(&store, 1).await;
    // Everything is there, before and after a reopen.
    for n in 1..=150 {
        let v = if n == 1 { 2 } else { 1 };
        assert_eq!(snapshot(&store, iid(n)).await.instance.version, v);
    }
    store.close().await.expect("close");
    let store = RedbStore::open(&db.path, options).expect("reopen");
    assert_eq!(snapshot(&store, iid(1)).await.instance.version, 2);
    assert_eq!(snapshot(&store, iid(150)).await.instance.version, 1);
    store.close().await.expect("close");
    scenario.teardown();
}
