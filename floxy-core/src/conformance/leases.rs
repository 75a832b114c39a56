//! Leases and fencing: increasing tokens, expiry and reclaim, stale tokens, heartbeats.

use super::fixtures::{
    TTL_MS, assert_stale, at, claim, create, event, iid, key, next, observe, ok, start,
    stored_step, update, write,
};
use crate::model::{EventKind, FencingToken, LeaseCheck, QueueOp, StepStatus, Timestamp, WorkKind};
use crate::store::{LeaseRef, LeaseState, Store};

fn token(c: &crate::store::ClaimedItem) -> FencingToken {
    c.item.lease.as_ref().map_or_else(
        || panic!("claimed item {:?} has no lease", c.item.key),
        |l| l.token,
    )
}

/// Fencing tokens strictly increase across claims, batches and reclaims.
pub async fn fencing_tokens_increase<S: Store>(store: S) {
    create(
        &store,
        start(
            iid(1),
            at(0),
            &[("a", "h"), ("b", "h"), ("c", "h"), ("d", "h")],
        ),
    )
    .await;
    let mut tokens = Vec::new();
    tokens.extend(claim(&store, "w", &["h"], 2, at(0)).await.iter().map(token));
    tokens.extend(claim(&store, "w", &["h"], 1, at(0)).await.iter().map(token));
    // Reclaim all four after their leases expired, then the last one again.
    let later = at(0).add_ms(TTL_MS);
    tokens.extend(
        claim(&store, "w", &["h"], 10, later)
            .await
            .iter()
            .map(token),
    );
    tokens.extend(
        claim(&store, "w", &["h"], 10, later.add_ms(TTL_MS))
            .await
            .iter()
            .map(token),
    );
    assert_eq!(tokens.len(), 3 + 4 + 4, "all claims returned items");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens strictly increase: {tokens:?}"
    );
}

/// A lease is reclaimable exactly at `expires_at`, not before; the reclaim reports
/// `previous_lease_expired`, counts an attempt and starts the step run again.
pub async fn lease_expiry<S: Store>(store: S) {
    let id = iid(1);
    create(&store, start(id, at(0), &[("a", "h")])).await;
    let first = claim(&store, "w1", &["h"], 1, at(0)).await;
    assert_eq!(first.len(), 1);
    let expires = at(0).add_ms(TTL_MS);
    assert!(
        claim(&store, "w2", &["h"], 1, Timestamp(expires.0 - 1))
            .await
            .is_empty(),
        "not reclaimable before expiry"
    );
    let again = claim(&store, "w2", &["h"], 1, expires).await;
    assert_eq!(again.len(), 1, "reclaimable at expires_at");
    let c = &again[0];
    assert!(
        c.previous_lease_expired,
        "the reclaim reports the expired lease"
    );
    assert_eq!(c.item.attempt, 2, "the lost attempt counts");
    assert!(token(c) > token(&first[0]), "a new, larger token");
    let lease = c
        .item
        .lease
        .clone()
        .unwrap_or_else(|| panic!("reclaimed item has a lease"));
    assert_eq!(&*lease.owner, "w2");
    assert_eq!(lease.expires_at, expires.add_ms(TTL_MS));
    assert_eq!(c.run.status, StepStatus::Running);
    assert_eq!(c.run.attempts, 2);
    assert_eq!(c.run.started_at, Some(expires));
    let events = ok(store.list_events(id, None, 0).await, "list_events");
    let last = &events[events.len() - 1];
    assert_eq!((last.kind, last.attempt), (EventKind::StepStarted, Some(2)));
}

/// After a reclaim, a write with the old token is [`crate::store::StoreError::StaleLease`]
/// and changes nothing, a heartbeat with it is lost; the new token works.
pub async fn stale_token<S: Store>(store: S) {
    let id = iid(1);
    create(&store, start(id, at(0), &[("a", "h")])).await;
    let old = token(&claim(&store, "w1", &["h"], 1, at(0)).await[0]);
    let expires = at(0).add_ms(TTL_MS);
    let new = token(&claim(&store, "w2", &["h"], 1, expires).await[0]);
    let before = observe(&store, id).await;
    let complete = move |t: FencingToken| {
        move |s: &crate::model::InstanceSnapshot| {
            let mut tr = next(s, expires.add_ms(1));
            tr.lease_check = Some(LeaseCheck {
                key: key(id, "a", WorkKind::Execute),
                token: t,
            });
            let mut a = stored_step(s, "a");
            a.status = StepStatus::Completed;
            tr.steps.push(write(a, Some(StepStatus::Running)));
            tr.queue
                .push(QueueOp::Delete(key(id, "a", WorkKind::Execute)));
            tr.events.push(event(EventKind::StepCompleted, Some("a")));
            tr
        }
    };
    let r = update(&store, id, complete(old)).await;
    assert_stale(&r, "completion with the token of the expired lease");
    assert_eq!(
        observe(&store, id).await,
        before,
        "a stale write changes nothing"
    );
    let hb = ok(
        store
            .heartbeat(
                "w1",
                &[LeaseRef {
                    key: key(id, "a", WorkKind::Execute),
                    token: old,
                }],
                expires.add_ms(1),
            )
            .await,
        "heartbeat",
    );
    assert_eq!(hb, vec![LeaseState::Lost], "the old holder lost the lease");
    ok(
        update(&store, id, complete(new)).await,
        "completion with the current token",
    );
    // The item is gone now: its token is stale too.
    let r = update(&store, id, complete(new)).await;
    assert_stale(&r, "a write for a deleted item");
}

/// Heartbeats extend the leases the owner holds with these tokens to `now + TTL`, in one
/// call, in order; wrong owner, wrong token or a missing item is `Lost`.
pub async fn heartbeat<S: Store>(store: S) {
    let id = iid(1);
    create(&store, start(id, at(0), &[("a", "h"), ("b", "h")])).await;
    let got = claim(&store, "w1", &["h"], 2, at(0)).await;
    assert_eq!(got.len(), 2);
    let (ta, tb) = (token(&got[0]), token(&got[1]));
    let ka = key(id, "a", WorkKind::Execute);
    let kb = key(id, "b", WorkKind::Execute);
    let refs = [
        LeaseRef {
            key: kb.clone(),
            token: tb,
        },
        LeaseRef {
            key: ka.clone(),
            token: FencingToken(ta.0 + 1_000_000),
        },
        LeaseRef {
            key: key(id, "missing", WorkKind::Execute),
            token: ta,
        },
        LeaseRef {
            key: ka.clone(),
            token: ta,
        },
    ];
    let now = at(10_000);
    let states = ok(store.heartbeat("w1", &refs, now).await, "heartbeat");
    let extended = LeaseState::Held {
        expires_at: now.add_ms(TTL_MS),
        cancel_requested: false,
    };
    assert_eq!(
        states,
        vec![extended, LeaseState::Lost, LeaseState::Lost, extended],
        "held, wrong token, missing item, held — in request order"
    );
    let other = ok(
        store
            .heartbeat(
                "w2",
                &[LeaseRef {
                    key: ka.clone(),
                    token: ta,
                }],
                now,
            )
            .await,
        "heartbeat",
    );
    assert_eq!(other, vec![LeaseState::Lost], "another owner cannot extend");
    assert!(
        claim(&store, "w2", &["h"], 10, at(0).add_ms(TTL_MS))
            .await
            .is_empty(),
        "not reclaimable at the old expiry after a heartbeat"
    );
    let stored = ok(store.list_queue(id).await, "list_queue");
    assert!(
        stored
            .iter()
            .all(|i| i.lease.as_ref().map(|l| l.expires_at) == Some(now.add_ms(TTL_MS))),
        "the stored leases carry the new expiry: {stored:?}"
    );
    let reclaimed = claim(&store, "w2", &["h"], 10, now.add_ms(TTL_MS)).await;
    assert_eq!(reclaimed.len(), 2, "reclaimable at the extended expiry");
    assert!(reclaimed.iter().all(|c| c.previous_lease_expired));
    assert_eq!(
        ok(
            store
                .heartbeat("w1", &[LeaseRef { key: ka, token: ta }], now.add_ms(TTL_MS))
                .await,
            "heartbeat"
        ),
        vec![LeaseState::Lost],
        "the reclaimed lease is lost to its old owner"
    );
    assert!(
        ok(store.heartbeat("w1", &[], now).await, "heartbeat").is_empty(),
        "an empty heartbeat"
    );
}
