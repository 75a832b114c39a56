//! Reopen: write through every kind of operation, close, reopen the file, and everything is
//! there; counters (fencing tokens, event sequence, DLQ ids) continue where they stopped;
//! leases held before the close are still held, and reclaimed once they expire.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TempDb;
use floxy_core::conformance::fixtures::{
    Observation, TTL_MS, at, claim, create, definition, dlq_record, event, iid, key, next, observe,
    ok, start, stored_step, update, wf, write,
};
use floxy_core::model::{
    DlqId, EventKind, InstanceStatus, LeaseCheck, QueueOp, StepStatus, Timestamp, WorkKind,
};
use floxy_core::store::{DlqQuery, InstanceQuery, Store, StoreStats};
use floxy_store_redb::{Durability, RedbOptions, RedbStore};
use std::sync::Arc;

const N: u128 = 30;

#[derive(Debug, PartialEq)]
struct Everything {
    instances: Vec<Observation>,
    definitions: Vec<floxy_core::model::WorkflowDefinition>,
    listed: Vec<floxy_core::model::InstanceRecord>,
    dlq: Vec<floxy_core::model::DlqRecord>,
    stats: StoreStats,
    next_due: Option<Timestamp>,
    idem: Option<floxy_core::model::InstanceId>,
}

async fn everything(store: &RedbStore) -> Everything {
    let mut instances = Vec::new();
    for n in 1..=N {
        instances.push(observe(store, iid(n)).await);
    }
    Everything {
        instances,
        definitions: ok(store.list_definitions().await, "list_definitions"),
        listed: ok(
            store.list_instances(&InstanceQuery::default()).await,
            "list",
        )
        .items,
        dlq: ok(store.list_dlq(&DlqQuery::default()).await, "list_dlq").items,
        stats: ok(store.stats().await, "stats"),
        next_due: ok(store.next_due(&[Arc::from("h")]).await, "next_due"),
        idem: ok(store.find_by_idempotency_key(&wf(), "key-7").await, "find"),
    }
}

/// Writes a varied history: definitions, instances (one with an idempotency key), claims,
/// completions, retries, DLQ records, terminal instances, a cleanup.
async fn populate(store: &RedbStore) {
    ok(
        store
            .put_definition(&definition("orders", 1, "charge"))
            .await,
        "def",
    );
    ok(
        store.put_definition(&definition("audit", 3, "log")).await,
        "def",
    );
    for n in 1..=N {
        let mut t = start(iid(n), at(n as i64), &[("a", "h"), ("b", "h")]);
        if n == 7 {
            t.instance.idempotency_key = Some("key-7".into());
        }
        create(store, t).await;
    }
    // Claim a batch, complete some, retry some, park some in the DLQ.
    let claimed = claim(store, "w1", &["h"], 100, at(100)).await;
    assert_eq!(claimed.len(), 2 * N as usize, "every item leased");
    for (i, c) in claimed.iter().enumerate() {
        let id = c.item.key.instance_id;
        let step = c.item.key.step.clone();
        let token = c.item.lease.as_ref().map(|l| l.token).expect("lease");
        let k = c.item.key.clone();
        match i % 4 {
            0 => {
                ok(
                    update(store, id, move |s| {
                        let mut t = next(s, at(200));
                        t.lease_check = Some(LeaseCheck {
                            key: k.clone(),
                            token,
                        });
                        let mut r = stored_step(s, &step);
                        r.status = StepStatus::Completed;
                        t.steps.push(write(r, Some(StepStatus::Running)));
                        t.queue.push(QueueOp::Delete(k));
                        t.events.push(event(EventKind::StepCompleted, Some(&step)));
                        t
                    })
                    .await,
                    "complete",
                );
            }
            1 => {
                ok(
                    update(store, id, move |s| {
                        let mut t = next(s, at(200));
                        t.lease_check = Some(LeaseCheck {
                            key: k.clone(),
                            token,
                        });
                        let mut r = stored_step(s, &step);
                        r.status = StepStatus::Retrying;
                        t.steps.push(write(r, Some(StepStatus::Running)));
                        let mut item =
                            floxy_core::conformance::fixtures::execute(id, &step, "h", at(5_000));
                        item.attempt = 1;
                        t.queue.push(QueueOp::Upsert(item));
                        t.events.push(event(EventKind::StepRetry, Some(&step)));
                        t
                    })
                    .await,
                    "retry",
                );
            }
            2 if step.as_ref() == "a" => {
                ok(
                    update(store, id, move |s| {
                        let mut t = next(s, at(300));
                        t.instance.status = InstanceStatus::Dlq;
                        t.dlq_insert.push(dlq_record(id, &wf(), &step));
                        t.queue.push(QueueOp::RequestCancel(k));
                        t
                    })
                    .await,
                    "dlq",
                );
            }
            _ => {} // stays leased
        }
    }
    // Two terminal instances, one removed by cleanup.
    for (n, at_ms) in [(N - 1, 400), (N, 5_000)] {
        ok(
            update(store, iid(n), move |s| {
                let mut t = next(s, at(at_ms));
                t.instance.status = InstanceStatus::Completed;
                t.queue
                    .push(QueueOp::Delete(key(iid(n), "a", WorkKind::Execute)));
                t.queue
                    .push(QueueOp::Delete(key(iid(n), "b", WorkKind::Execute)));
                t.events.push(event(EventKind::WorkflowCompleted, None));
                t
            })
            .await,
            "terminal",
        );
    }
    assert_eq!(ok(store.cleanup(at(1_000)).await, "cleanup"), 1);
}

fn reopen_roundtrip(options: RedbOptions) {
    let db = TempDb::new();
    let open = || RedbStore::open(&db.path, options.clone()).expect("open");
    futures::executor::block_on(async {
        let store = open();
        populate(&store).await;
        let stats = store.writer_stats();
        if options.durability == Durability::Immediate {
            if options.checkpoint_bytes == 1 {
                // Each batch after one that left log bytes checkpoints: every other one.
                assert!(
                    stats.checkpoints >= 10 && stats.checkpoints * 2 <= stats.batches + 1,
                    "checkpoints: {stats:?}"
                );
            } else {
                assert_eq!(stats.checkpoints, 0, "no batch checkpoints: {stats:?}");
            }
        }
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
    // Every batch lives in the write-ahead log until the close checkpoints.
    reopen_roundtrip(RedbOptions::default());
}

#[test]
fn everything_survives_reopen_checkpointing_every_batch() {
    reopen_roundtrip(RedbOptions::default().checkpoint_bytes(1));
}

#[test]
fn everything_survives_reopen_relaxed() {
    // A flush interval far longer than the test: only the final flush on close syncs.
    reopen_roundtrip(RedbOptions::default().durability(Durability::Relaxed {
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
        let store = RedbStore::open(&db.path, Default::default()).expect("reopen");
        assert!(ok(store.get_instance(iid(1)).await, "get").is_some());
        store.close().await.expect("close");
    });
}
