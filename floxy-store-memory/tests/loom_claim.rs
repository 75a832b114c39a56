//! Loom models of claims, leases and fencing on a [`MemoryStore`] built on loom's mutex:
//! loom runs every interleaving of the threads' lock acquisitions. Time is explicit state:
//! each operation passes its own `now`, so lease expiry is modelled without a clock.
//!
//! ```text
//! RUSTFLAGS="--cfg floxy_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p floxy-store-memory --test loom_claim --release
//! ```
#![cfg(floxy_loom)]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use floxy_core::conformance::fixtures::{at, iid, key, next, start, stored_step, write};
use floxy_core::model::{
    FencingToken, InstanceId, LeaseCheck, QueueOp, StepStatus, Timestamp, WorkKind,
};
use floxy_core::store::{ClaimRequest, ClaimedItem, LeaseRef, LeaseState, Store, StoreError};
use floxy_store_memory::MemoryStore;
use loom::thread;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Lease TTL of the modelled items.
const TTL_MS: u64 = 100;

/// Runs a memory store future: it never waits, so one poll completes it.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store never waits"),
    }
}

/// A store with one instance whose steps each have an execute item for `h`, TTL 100 ms.
fn store_with(steps: &[&str]) -> (MemoryStore, InstanceId) {
    let store = MemoryStore::new();
    let id = iid(1);
    let pairs: Vec<(&str, &str)> = steps.iter().map(|s| (*s, "h")).collect();
    let mut t = start(id, at(0), &pairs);
    for op in &mut t.queue {
        if let QueueOp::Upsert(item) = op {
            item.lease_ttl_ms = TTL_MS;
        }
    }
    block_on(store.create_instance(t)).unwrap();
    (store, id)
}

fn claim(store: &MemoryStore, owner: &str, now: Timestamp) -> Vec<ClaimedItem> {
    let req = ClaimRequest {
        owner: Arc::from(owner),
        handlers: vec![Arc::from("h")],
        limit: 1,
        now,
    };
    block_on(store.claim(&req)).unwrap()
}

fn token(c: &ClaimedItem) -> FencingToken {
    c.item.lease.as_ref().unwrap().token
}

/// Completes step `a` with `token`: CAS running → completed, delete the item.
fn complete(
    store: &MemoryStore,
    id: InstanceId,
    token: FencingToken,
    now: Timestamp,
) -> Result<(), StoreError> {
    let f = move |s: &floxy_core::model::InstanceSnapshot| {
        let mut t = next(s, now);
        t.lease_check = Some(LeaseCheck {
            key: key(id, "a", WorkKind::Execute),
            token,
        });
        let mut a = stored_step(s, "a");
        a.status = StepStatus::Completed;
        t.steps.push(write(a, Some(StepStatus::Running)));
        t.queue
            .push(QueueOp::Delete(key(id, "a", WorkKind::Execute)));
        Ok(t)
    };
    block_on(store.update_instance(id, Box::new(f))).map(|_| ())
}

/// Three workers claim two items at the same time: each item is claimed exactly once, and
/// the tokens are distinct.
#[test]
fn no_double_claim() {
    loom::model(|| {
        let (store, _) = store_with(&["a", "b"]);
        let handles: Vec<_> = (0..3)
            .map(|w| {
                let s = store.clone();
                thread::spawn(move || claim(&s, &format!("w{w}"), at(1)))
            })
            .collect();
        let claimed: Vec<ClaimedItem> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(claimed.len(), 2, "two items, two claims");
        assert_ne!(
            claimed[0].item.key, claimed[1].item.key,
            "no item claimed twice"
        );
        assert_ne!(token(&claimed[0]), token(&claimed[1]));
        assert!(claimed.iter().all(|c| !c.previous_lease_expired));
    });
}

/// Worker A claims at t=0 (lease until 100), heartbeats at t=50 and completes at t=60;
/// worker B claims at t=100 and completes at t=101. In every interleaving exactly one
/// completion succeeds; B reclaims only an expired, unextended lease (and then A's
/// heartbeat and completion are rejected); a stale token never writes.
#[test]
fn expiry_heartbeat_and_fencing() {
    loom::model(|| {
        let (store, id) = store_with(&["a"]);
        let sa = store.clone();
        let a = thread::spawn(move || {
            let got = claim(&sa, "A", at(0));
            let Some(c) = got.first() else {
                return (None, None, None);
            };
            let t = token(c);
            let lease_ref = LeaseRef {
                key: key(id, "a", WorkKind::Execute),
                token: t,
            };
            let hb = block_on(sa.heartbeat("A", &[lease_ref], at(50))).unwrap();
            let done = complete(&sa, id, t, at(60));
            (Some(c.clone()), Some(hb[0]), Some(done))
        });
        let sb = store.clone();
        let b = thread::spawn(move || {
            let got = claim(&sb, "B", at(100));
            let Some(c) = got.first() else {
                return (None, None);
            };
            let done = complete(&sb, id, token(c), at(101));
            (Some(c.clone()), Some(done))
        });
        let (a_claim, a_hb, a_done) = a.join().unwrap();
        let (b_claim, b_done) = b.join().unwrap();

        let oks = [a_done.as_ref(), b_done.as_ref()]
            .into_iter()
            .flatten()
            .filter(|r| r.is_ok())
            .count();
        assert_eq!(oks, 1, "exactly one completion wins");
        for r in [a_done.as_ref(), b_done.as_ref()].into_iter().flatten() {
            assert!(
                matches!(r, Ok(()) | Err(StoreError::StaleLease { .. })),
                "a losing completion is a stale lease: {r:?}"
            );
        }
        if let (Some(ca), Some(cb)) = (&a_claim, &b_claim) {
            // Both claimed: B went second (A cannot take B's live lease at t=0), after A's
            // lease expired, and before A's heartbeat could extend it.
            assert!(token(cb) > token(ca), "the reclaim has a larger token");
            assert!(cb.previous_lease_expired, "B reclaimed an expired lease");
            assert_eq!(cb.item.attempt, 2, "the lost attempt counts");
            assert_eq!(a_hb, Some(LeaseState::Lost), "A's heartbeat came too late");
            assert!(
                matches!(a_done, Some(Err(StoreError::StaleLease { .. }))),
                "A's stale completion is rejected: {a_done:?}"
            );
        }
        if let Some(LeaseState::Held { expires_at, .. }) = a_hb {
            assert_eq!(expires_at, at(50).add_ms(TTL_MS));
            assert!(
                b_claim.is_none(),
                "an extended lease is not reclaimed at t=100"
            );
        }
        let snap = block_on(store.load_instance(id)).unwrap().unwrap();
        assert_eq!(stored_step(&snap, "a").status, StepStatus::Completed);
        assert!(block_on(store.list_queue(id)).unwrap().is_empty());
    });
}
