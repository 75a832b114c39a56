//! Reopen: write through every kind of operation, close, reopen the file, and everything is
//! there; counters (fencing tokens, event sequence, DLQ ids) continue where they stopped;
//! leases held before the close are still held, and reclaimed once they expire.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TempDb, everything, populate};
use floxy_core::conformance::fixtures::{
    TTL_MS, at, claim, create, dlq_record, event, iid, next, ok, start, update, wf,
};
use floxy_core::model::{DlqId, EventKind};
use floxy_core::store::{DlqQuery, Store};
use floxy_store_redb::{Durability, RedbOptions, RedbStore};

fn reopen_roundtrip(options: &RedbOptions) {
    let db = TempDb::new();
    let open = || RedbStore::open(&db.path, options.clone()).expect("open");
    futures::executor::block_on(async {
        let store = open();
        populate(&store).await;
        let before = everything(&store).await;
        let last_event = before
            .instances
            .iter()
            .flat_map(|o| o.events.iter().map(|e| e.seq))
            .max()
            .expect("events");
        let last_dlq = before.dlq.iter().map(|r| r.id).max().expect("dlq");
        let last_token = before
            .instances
            .iter()
            .flat_map(|o| {
                o.queue
                    .iter()
                    .filter_map(|i| i.lease.as_ref().map(|l| l.token))
            })
            .max()
            .expect("leases");
        store.close().await.expect("close");

        let store = open();
        let after = everything(&store).await;
        assert_eq!(after, before, "everything is there after a reopen");

        // Leases held before the close are still held until they expire.
        assert!(
            claim(&store, "w2", &["h"], 100, at(4_999)).await.is_empty(),
            "nothing claimable: live leases and not-yet-due retries"
        );
        let reclaimed = claim(&store, "w2", &["h"], 100, at(100).add_ms(TTL_MS)).await;
        let still_leased = before
            .instances
            .iter()
            .flat_map(|o| o.queue.iter())
            .filter(|i| i.lease.is_some())
            .count();
        let retries = before
            .instances
            .iter()
            .flat_map(|o| o.queue.iter())
            .filter(|i| i.lease.is_none())
            .count();
        assert!(still_leased > 0 && retries > 0);
        assert_eq!(
            reclaimed.len(),
            still_leased + retries,
            "every expired lease and every due retry is claimable"
        );
        for c in &reclaimed {
            let token = c.item.lease.as_ref().map(|l| l.token).expect("lease");
            assert!(
                token > last_token,
                "tokens continue after a reopen: {token}"
            );
            assert_eq!(c.item.attempt, 2, "the lost or failed attempt counted");
        }
        assert_eq!(
            reclaimed
                .iter()
                .filter(|c| c.previous_lease_expired)
                .count(),
            still_leased,
            "expired leases are reclaimed as such"
        );
        // Event sequence and DLQ ids continue.
        ok(
            update(&store, iid(3), |s| {
                let mut t = next(s, at(40_000));
                t.events.push(event(EventKind::SavePointReached, None));
                t.dlq_insert.push(dlq_record(iid(3), &wf(), "z"));
                t
            })
            .await,
            "after reopen",
        );
        let ev = ok(store.list_events(iid(3), None, 0).await, "events");
        assert!(
            ev.last().expect("event").seq > last_event,
            "event sequence continues"
        );
        let dlq = ok(store.list_dlq(&DlqQuery::default()).await, "dlq").items;
        assert!(
            dlq.iter().map(|r| r.id).max().expect("dlq") > last_dlq,
            "DLQ ids are not reused"
        );
        assert!(!dlq.iter().any(|r| r.id == DlqId(0)));
        store.close().await.expect("close");
    });
}

#[test]
fn everything_survives_reopen() {
    reopen_roundtrip(&RedbOptions::default());
}

#[test]
fn everything_survives_reopen_relaxed() {
    // A flush interval far longer than the test: only the final flush on close syncs.
    reopen_roundtrip(&RedbOptions::default().durability(Durability::Relaxed {
        flush_interval_ms: 3_600_000,
    }));
}

#[test]
fn closed_store_refuses_calls_and_reopens() {
    let db = TempDb::new();
    futures::executor::block_on(async {
        let store = common::open(&db.path, Durability::Immediate);
        create(&store, start(iid(1), at(0), &[("a", "h")])).await;
        let clone = store.clone();
        store.close().await.expect("close");
        store.close().await.expect("closing twice is a no-op");
        assert!(matches!(
            clone.get_instance(iid(1)).await,
            Err(floxy_core::store::StoreError::Closed)
        ));
        assert!(matches!(
            clone.create_instance(start(iid(2), at(0), &[])).await,
            Err(floxy_core::store::StoreError::Closed)
        ));
        let store = RedbStore::open(&db.path, RedbOptions::default()).expect("reopen");
        assert!(ok(store.get_instance(iid(1)).await, "get").is_some());
        store.close().await.expect("close");
    });
}
