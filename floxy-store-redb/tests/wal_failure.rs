//! Write-ahead log failures (failpoints `floxy-redb::wal-sync` and `floxy-redb::wal-discard`,
//! feature `failpoints`):
//!
//! * a batch whose log record cannot be synced fails with a retryable error, writes nothing,
//!   and the store goes on;
//! * when the record of a failed batch cannot even be discarded, the store refuses every
//!   later write (the record could be replayed after a crash), and a clean close settles it:
//!   the reopened file has neither failed batch, and takes writes again.
//!
//! Failpoints are process-wide, so this binary holds one test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use floxy_core::conformance::fixtures::{create, next, snapshot, start};
use floxy_core::model::{InstanceId, Timestamp};
use floxy_core::store::{Store, StoreError};
use floxy_store_redb::{Durability, RedbStore};

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn id() -> InstanceId {
    InstanceId(uuid::Uuid::now_v7())
}

async fn bump(store: &RedbStore, id: InstanceId) -> Result<u64, StoreError> {
    store
        .update_instance(id, Box::new(|s| Ok(next(s, T0.add_ms(1)))))
        .await
        .map(|t| t.instance.version)
}

fn unavailable<T: std::fmt::Debug>(r: &Result<T, StoreError>, needle: &str, what: &str) {
    assert!(
        matches!(r, Err(StoreError::Unavailable(m)) if m.contains(needle)),
        "{what}: expected an Unavailable error naming {needle:?}, got {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_failures_fail_the_batch_and_a_lost_discard_stops_writes_until_reopen() {
    let scenario = fail::FailScenario::setup();
    let db = common::TempDb::new();
    let store = common::open(&db.path, Durability::Immediate);
    let a = id();
    create(&store, start(a, T0, &[("s1", "h")])).await;

    // 1. The sync fails: the update fails, nothing of it is visible, the store goes on.
    fail::cfg("floxy-redb::wal-sync", "1*return").unwrap();
    unavailable(
        &bump(&store, a).await,
        "wal-sync",
        "an update whose sync failed",
    );
    assert_eq!(snapshot(&store, a).await.instance.version, 1);
    assert_eq!(
        bump(&store, a).await.unwrap(),
        2,
        "the next update goes through"
    );

    // 2. The commit fails and so does the discard of its record: the store refuses writes.
    fail::cfg("floxy-redb::commit", "1*return").unwrap();
    fail::cfg("floxy-redb::wal-discard", "1*return").unwrap();
    unavailable(
        &bump(&store, a).await,
        "floxy-redb::commit",
        "the failed update",
    );
    let refused = bump(&store, a).await;
    unavailable(&refused, "reopened", "a write after a lost discard");
    let b = id();
    unavailable(
        &store.create_instance(start(b, T0, &[("s1", "h")])).await,
        "reopened",
        "a create after a lost discard",
    );
    // Reads still work, and show neither failed write.
    assert_eq!(snapshot(&store, a).await.instance.version, 2);

    // 3. A clean close checkpoints what the file holds and empties the log.
    store.close().await.unwrap();
    let log = {
        let mut p = db.path.as_os_str().to_owned();
        p.push("-wal");
        std::path::PathBuf::from(p)
    };
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        0,
        "the log is empty"
    );
    let store = common::open(&db.path, Durability::Immediate);
    assert_eq!(snapshot(&store, a).await.instance.version, 2);
    assert!(store.load_instance(b).await.unwrap().is_none());
    assert_eq!(bump(&store, a).await.unwrap(), 3, "writes are taken again");
    store.close().await.unwrap();
    scenario.teardown();
}
