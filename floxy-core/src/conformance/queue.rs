//! Queue operations of transitions (upsert, delete, request-cancel) and `next_due`.

use super::fixtures::{
    TTL_MS, at, claim, create, execute, iid, item, key, next, ok, start, step_run, update, wf,
    write,
};
use crate::model::{FencingToken, LeaseCheck, QueueOp, StepStatus, WorkKind};
use crate::store::{LeaseRef, LeaseState, Store};
use std::sync::Arc;

fn token(c: &crate::store::ClaimedItem) -> FencingToken {
    c.item.lease.as_ref().map_or_else(
        || panic!("claimed item {:?} has no lease", c.item.key),
        |l| l.token,
    )
}

/// An upsert replaces the item with the same key and drops its lease: the old token is
/// stale, and the new item is claimable at its own `run_at` without `previous_lease_expired`.
pub async fn upsert_replaces<S: Store>(store: S) {
    let id = iid(1);
    create(&store, start(id, at(0), &[("a", "h")])).await;
    let old = token(&claim(&store, "w1", &["h"], 1, at(0)).await[0]);
    let ka = key(id, "a", WorkKind::Execute);
    let ka2 = ka.clone();
    ok(
        update(&store, id, move |s| {
            let mut t = next(s, at(5));
            t.lease_check = Some(LeaseCheck {
                key: ka2,
                token: old,
            });
            let mut replaced = execute(id, "a", "h2", at(50));
            replaced.priority = 90;
            replaced.order_key = 7;
            replaced.attempt = 1;
            // A lease on the upserted item itself is ignored: only claims lease.
            replaced.lease = Some(crate::model::Lease {
                owner: "intruder".into(),
                token: crate::model::FencingToken(u64::from(u32::MAX)),
                expires_at: at(1_000_000),
            });
            t.queue.push(QueueOp::Upsert(replaced));
            t
        })
        .await,
        "upsert of a leased item",
    );
    let queue = ok(store.list_queue(id).await, "list_queue");
    assert_eq!(queue.len(), 1, "still one item for the key");
    let i = &queue[0];
    assert!(i.lease.is_none(), "the upsert dropped the lease");
    assert_eq!(
        (&*i.handler, i.run_at, i.priority, i.order_key, i.attempt),
        ("h2", at(50), 90, 7, 1),
        "every field replaced"
    );
    let hb = ok(
        store
            .heartbeat(
                "w1",
                &[LeaseRef {
                    key: ka.clone(),
                    token: old,
                }],
                at(6),
            )
            .await,
        "heartbeat",
    );
    assert_eq!(
        hb,
        vec![LeaseState::Lost],
        "the replaced item's lease is gone"
    );
    assert!(
        claim(&store, "w2", &["h"], 10, at(100)).await.is_empty(),
        "the old handler no longer matches"
    );
    assert!(
        claim(&store, "w2", &["h2"], 10, at(49)).await.is_empty(),
        "not before the new run_at"
    );
    let got = claim(&store, "w2", &["h2"], 10, at(50)).await;
    assert_eq!(got.len(), 1);
    assert!(
        !got[0].previous_lease_expired,
        "a dropped lease is not an expired one"
    );
    assert_eq!(got[0].item.attempt, 2);
}

/// A delete removes the item (deleting a missing item is a no-op); a deleted item is never
/// claimed.
pub async fn delete_item<S: Store>(store: S) {
    let id = iid(1);
    create(&store, start(id, at(0), &[("a", "h"), ("b", "h")])).await;
    ok(
        update(&store, id, move |s| {
            let mut t = next(s, at(1));
            t.queue
                .push(QueueOp::Delete(key(id, "a", WorkKind::Execute)));
            t.queue
                .push(QueueOp::Delete(key(id, "zzz", WorkKind::Execute)));
            t.queue
                .push(QueueOp::Delete(key(id, "b", WorkKind::Compensate)));
            t
        })
        .await,
        "delete",
    );
    let queue: Vec<String> = ok(store.list_queue(id).await, "list_queue")
        .iter()
        .map(|i| i.key.step.to_string())
        .collect();
    assert_eq!(queue, vec!["b"], "only b's execute item is left");
    let got = claim(&store, "w", &["h"], 10, at(2)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&*got[0].item.key.step, "b");
}

/// A request-cancel sets the flag that heartbeats return; the flag is kept by a reclaim;
/// a request for a missing item is a no-op.
pub async fn request_cancel<S: Store>(store: S) {
    let id = iid(1);
    create(&store, start(id, at(0), &[("a", "h")])).await;
    let t1 = token(&claim(&store, "w1", &["h"], 1, at(0)).await[0]);
    let ka = key(id, "a", WorkKind::Execute);
    ok(
        update(&store, id, move |s| {
            let mut t = next(s, at(1));
            t.queue
                .push(QueueOp::RequestCancel(key(id, "a", WorkKind::Execute)));
            t.queue
                .push(QueueOp::RequestCancel(key(id, "nope", WorkKind::Execute)));
            t
        })
        .await,
        "request cancel",
    );
    let hb = ok(
        store
            .heartbeat(
                "w1",
                &[LeaseRef {
                    key: ka.clone(),
                    token: t1,
                }],
                at(2),
            )
            .await,
        "heartbeat",
    );
    assert_eq!(
        hb,
        vec![LeaseState::Held {
            expires_at: at(2).add_ms(TTL_MS),
            cancel_requested: true
        }],
        "the holder sees the cancel request"
    );
    let queue = ok(store.list_queue(id).await, "list_queue");
    assert!(
        queue[0].cancel_requested,
        "the stored item carries the flag"
    );
    assert_eq!(
        queue.len(),
        1,
        "a request for a missing item creates nothing"
    );
    let again = claim(&store, "w2", &["h"], 1, at(2).add_ms(TTL_MS)).await;
    assert_eq!(again.len(), 1);
    assert!(again[0].item.cancel_requested, "a reclaim keeps the flag");
}

/// `next_due` is the earliest `run_at` (or lease expiry, when leased) among the items of
/// the given handlers; `None` when there is none.
pub async fn next_due<S: Store>(store: S) {
    let h = |names: &[&str]| -> Vec<Arc<str>> { names.iter().map(|n| Arc::from(*n)).collect() };
    assert_eq!(
        ok(store.next_due(&h(&["a"])).await, "next_due"),
        None,
        "empty store"
    );
    let id = iid(1);
    let mut t = start(id, at(0), &[]);
    for (step, handler, run_at) in [
        ("x", "a", at(500)),
        ("y", "a", at(300)),
        ("z", "b", at(100)),
    ] {
        t.steps
            .push(write(step_run(id, step, StepStatus::Pending, at(0)), None));
        t.queue.push(QueueOp::Upsert(item(
            &wf(),
            key(id, step, WorkKind::Execute),
            handler,
            run_at,
        )));
    }
    create(&store, t).await;
    assert_eq!(
        ok(store.next_due(&h(&["a"])).await, "next_due"),
        Some(at(300))
    );
    assert_eq!(
        ok(store.next_due(&h(&["a", "b"])).await, "next_due"),
        Some(at(100))
    );
    assert_eq!(ok(store.next_due(&h(&["c"])).await, "next_due"), None);
    assert_eq!(ok(store.next_due(&h(&[])).await, "next_due"), None);
    // Claim y at 300: it is due again when its lease expires; x is next for `a`.
    let got = claim(&store, "w", &["a"], 1, at(300)).await;
    assert_eq!(&*got[0].item.key.step, "y");
    assert_eq!(
        ok(store.next_due(&h(&["a"])).await, "next_due"),
        Some(at(500))
    );
    let got = claim(&store, "w", &["a"], 1, at(500)).await;
    assert_eq!(&*got[0].item.key.step, "x");
    assert_eq!(
        ok(store.next_due(&h(&["a"])).await, "next_due"),
        Some(at(300).add_ms(TTL_MS)),
        "a leased item is due at its lease expiry"
    );
    // Two items due; a claim takes one: the other is still due at its run_at.
    let id2 = iid(2);
    let mut t = start(id2, at(0), &[]);
    for step in ["p", "q"] {
        t.steps
            .push(write(step_run(id2, step, StepStatus::Pending, at(0)), None));
        t.queue.push(QueueOp::Upsert(item(
            &wf(),
            key(id2, step, WorkKind::Execute),
            "c",
            at(1_000),
        )));
    }
    create(&store, t).await;
    let got = claim(&store, "w", &["c"], 1, at(2_000)).await;
    assert_eq!(&*got[0].item.key.step, "p");
    assert_eq!(
        ok(store.next_due(&h(&["c"])).await, "next_due"),
        Some(at(1_000)),
        "an item left over by a claim is still due at its run_at"
    );
}
