//! A burst: thousands of requests queued at once while nothing commits. The writer hands the
//! first few hundred to the committing thread and prepares the rest while they commit (see
//! `IDLE_HAND_OVER`), so a burst is split over group commits; every request is still answered
//! once and durably, a claim burst right after hands every item to exactly one caller, and
//! the file reopens with all of it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use floxy_core::conformance::fixtures::{request, start};
use floxy_core::model::{InstanceId, Timestamp};
use floxy_core::store::Store;
use floxy_store_redb::Durability;
use std::collections::HashSet;
use std::sync::Arc;

const T0: Timestamp = Timestamp(1_700_000_000_000);
const N: u128 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_split_over_commits_and_every_request_lands_once() {
    let db = common::TempDb::new();
    let store = Arc::new(common::open(&db.path, Durability::Immediate));
    let ids: Vec<InstanceId> = (1..=N).map(InstanceId::from_u128).collect();
    let before = store.writer_stats();
    let created = futures::future::join_all(ids.iter().map(|id| {
        let store = store.clone();
        let id = *id;
        async move { store.create_instance(start(id, T0, &[("s1", "h")])).await }
    }))
    .await;
    for r in created {
        r.expect("create");
    }
    let stats = store.writer_stats();
    let batches = stats.batches - before.batches;
    assert!(
        batches >= 2,
        "{N} queued creates went in {batches} group commit(s)"
    );
    assert_eq!(stats.requests - before.requests, u64::try_from(N).unwrap());

    // A claim burst: 60 claims of 64 items each at once; every item goes to exactly one.
    let claims = futures::future::join_all((0..60).map(|w| {
        let store = store.clone();
        async move {
            store
                .claim(&request(&format!("w{w}"), &["h"], 64, T0))
                .await
        }
    }))
    .await;
    let mut seen = HashSet::new();
    for c in claims {
        for item in c.expect("claim") {
            assert!(
                seen.insert(item.item.key.instance_id),
                "{} claimed twice",
                item.item.key.instance_id
            );
        }
    }
    assert_eq!(seen.len(), N as usize, "every item claimed once");
    store.close().await.unwrap();

    // Everything acknowledged is in the file.
    let store = common::open(&db.path, Durability::Immediate);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.queue_leased, u64::try_from(N).unwrap(), "{stats:?}");
    for id in ids.iter().step_by(97) {
        let snap = store.load_instance(*id).await.unwrap().expect("instance");
        assert_eq!(snap.steps.len(), 1);
    }
    store.close().await.unwrap();
}
