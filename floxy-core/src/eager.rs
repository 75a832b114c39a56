//! Eager claims: leasing work in the commit that queues it.
//!
//! A worker that commits the result of one step usually has the capacity to run the next:
//! asking the store to lease that next step in the same atomic commit saves a separate claim
//! (a round trip, a queue row update and the search for ready work) per step. The lease is
//! exactly the one [`Store::claim`](crate::store::Store::claim) would give right after the
//! commit: a fresh fencing token, `attempt + 1`, the step run `running` and a
//! `step_started` event. [`lease_eagerly`] computes it, so every backend that offers eager
//! claims ([`Store::update_instance_eager`](crate::store::Store::update_instance_eager))
//! leases the same items the same way.

use crate::model::{
    EventKind, FencingToken, Lease, NewEvent, QueueOp, StepStatus, Transition, WorkKind,
};
use crate::store::{ClaimedItem, MAX_CLAIM_BATCH};
use std::sync::Arc;

/// What a committing worker can take in the same commit.
#[derive(Debug, Clone)]
pub struct EagerClaim {
    /// Worker id (the lease owner).
    pub owner: Arc<str>,
    /// Handler names the worker runs; only `execute` items of these handlers are leased.
    pub handlers: Vec<Arc<str>>,
    /// Most items to lease (≤ [`MAX_CLAIM_BATCH`]; 0 leases nothing).
    pub limit: usize,
}

/// Drops every lease the items upserted by `t` carry: an upsert stores its item unleased
/// (see [`QueueOp::Upsert`]). Stores call it on every transition before applying it, and
/// before [`lease_eagerly`], so that the only leases a transition applies are the eager ones.
pub fn unlease_upserts(t: &mut Transition) {
    for op in &mut t.queue {
        if let QueueOp::Upsert(item) = op {
            item.lease = None;
        }
    }
}

/// Leases, in `t` itself, up to `eager.limit` of the `execute` items `t` queues that are due
/// at `t.now`, not leased, of a handler in `eager.handlers`, whose step run `t` writes as
/// `pending` or `retrying` and that no later queue operation of `t` replaces or removes; in
/// queue-operation order. Each gets a token from `next_token` (which must issue tokens
/// greater than every token the store issued before), `attempt + 1` and a lease until
/// `t.now + lease_ttl_ms`; its step run becomes `running` with `attempts` = the new attempt
/// and `started_at = t.now`; a `step_started` event is appended. Returns the leased items
/// as a claim would, with their step runs.
pub fn lease_eagerly(
    t: &mut Transition,
    eager: &EagerClaim,
    mut next_token: impl FnMut() -> FencingToken,
) -> Vec<ClaimedItem> {
    let limit = eager.limit.min(MAX_CLAIM_BATCH);
    let mut out = Vec::new();
    if limit == 0 {
        return out;
    }
    let now = t.now;
    for i in 0..t.queue.len() {
        if out.len() >= limit {
            break;
        }
        let QueueOp::Upsert(item) = &t.queue[i] else {
            continue;
        };
        if item.key.kind != WorkKind::Execute
            || item.lease.is_some()
            || item.run_at > now
            || !eager.handlers.iter().any(|h| **h == *item.handler)
        {
            continue;
        }
        let key = item.key.clone();
        let replaced_later = t.queue[i + 1..].iter().any(|op| match op {
            QueueOp::Upsert(later) => later.key == key,
            QueueOp::Delete(k) | QueueOp::RequestCancel(k) => *k == key,
        });
        // The last write of the step in this transition is the run's state after it.
        let Some(w) = t.steps.iter().rposition(|w| w.run.step == key.step) else {
            continue;
        };
        if replaced_later
            || !matches!(
                t.steps[w].run.status,
                StepStatus::Pending | StepStatus::Retrying
            )
        {
            continue;
        }
        let token = next_token();
        let QueueOp::Upsert(item) = &mut t.queue[i] else {
            continue;
        };
        item.attempt = item.attempt.saturating_add(1);
        item.lease = Some(Lease {
            owner: Arc::clone(&eager.owner),
            token,
            expires_at: now.add_ms(item.lease_ttl_ms),
        });
        let leased = item.clone();
        let run = &mut t.steps[w].run;
        run.status = StepStatus::Running;
        run.attempts = leased.attempt;
        run.started_at = Some(now);
        let run = run.clone();
        t.events.push(NewEvent {
            kind: EventKind::StepStarted,
            step: Some(key.step.clone()),
            attempt: Some(leased.attempt),
            detail: None,
        });
        if out.is_empty() {
            // Room for one: most transitions lease one item (the next step of a chain), and
            // the default first growth (four items, over a kilobyte) costs the store's
            // writer thread a merge of glibc's free chunks (`malloc_consolidate`) per commit.
            out.reserve_exact(1);
        }
        out.push(ClaimedItem {
            item: leased,
            previous_lease_expired: false,
            run,
        });
    }
    out
}

// The fixtures come with the conformance suite (CI tests with `--all-features`).
#[cfg(all(test, feature = "conformance"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::conformance::fixtures::{at, execute, iid, start};
    use crate::model::QueueKey;

    fn eager(limit: usize) -> EagerClaim {
        EagerClaim {
            owner: Arc::from("w"),
            handlers: vec![Arc::from("h")],
            limit,
        }
    }

    #[test]
    fn leases_due_items_of_known_handlers_up_to_the_limit() {
        let mut t = start(
            iid(1),
            at(10),
            &[("a", "h"), ("b", "other"), ("c", "h"), ("d", "h")],
        );
        let before_events = t.events.len();
        let mut next = 100;
        let got = lease_eagerly(&mut t, &eager(2), || {
            next += 1;
            FencingToken(next)
        });
        let steps: Vec<&str> = got.iter().map(|c| &*c.item.key.step).collect();
        assert_eq!(steps, ["a", "c"], "handler filter, queue order, limit");
        assert_eq!(got[0].item.lease.as_ref().unwrap().token, FencingToken(101));
        assert_eq!(got[1].item.lease.as_ref().unwrap().token, FencingToken(102));
        let lease = got[0].item.lease.as_ref().unwrap();
        assert_eq!(
            (&*lease.owner, lease.expires_at),
            ("w", at(10).add_ms(got[0].item.lease_ttl_ms))
        );
        assert_eq!(got[0].item.attempt, 1);
        assert_eq!(
            (
                got[0].run.status,
                got[0].run.attempts,
                got[0].run.started_at
            ),
            (StepStatus::Running, 1, Some(at(10)))
        );
        // The transition itself carries the leases, the running runs and the events.
        let QueueOp::Upsert(a) = &t.queue[0] else {
            panic!("queue op changed kind")
        };
        assert_eq!(*a, got[0].item);
        let QueueOp::Upsert(b) = &t.queue[1] else {
            panic!("queue op changed kind")
        };
        assert!(b.lease.is_none(), "other handlers are left to claims");
        assert_eq!(t.steps[0].run, got[0].run);
        assert_eq!(
            t.steps[3].run.status,
            StepStatus::Pending,
            "over the limit: untouched"
        );
        let started: Vec<_> = t.events[before_events..]
            .iter()
            .map(|e| (e.kind, e.step.as_deref().map(str::to_owned), e.attempt))
            .collect();
        assert_eq!(
            started,
            [
                (EventKind::StepStarted, Some("a".to_owned()), Some(1)),
                (EventKind::StepStarted, Some("c".to_owned()), Some(1))
            ]
        );
    }

    #[test]
    fn leaves_future_replaced_and_already_leased_items() {
        let mut t = start(iid(1), at(10), &[("a", "h"), ("b", "h"), ("c", "h")]);
        // a: due later; b: removed by a later op; c: already leased.
        t.queue[0] = QueueOp::Upsert(execute(iid(1), "a", "h", at(11)));
        t.queue.push(QueueOp::Delete(QueueKey {
            instance_id: iid(1),
            step: "b".into(),
            kind: WorkKind::Execute,
        }));
        if let QueueOp::Upsert(c) = &mut t.queue[2] {
            c.lease = Some(Lease {
                owner: Arc::from("x"),
                token: FencingToken(1),
                expires_at: at(99),
            });
        }
        let snapshot = t.clone();
        let got = lease_eagerly(&mut t, &eager(10), || FencingToken(7));
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(t, snapshot, "nothing leased, nothing changed");
        assert!(lease_eagerly(&mut t, &eager(0), || FencingToken(7)).is_empty());
    }
}
