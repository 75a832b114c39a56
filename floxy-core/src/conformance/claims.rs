//! Claims: uniqueness under concurrency, batches, order, handler filter, priority with
//! aging, and the side effects on step runs.

use super::fixtures::{
    TTL_MS, at, claim, create, event, execute, iid, item, key, next, ok, request, snapshot, start,
    step_run, stored_step, update, wf, write,
};
use crate::model::{
    EventKind, FencingToken, LeaseCheck, QueueItem, QueueKey, QueueOp, StepStatus, TIMER_HANDLER,
    Timestamp, WorkKind,
};
use crate::store::{ClaimRequest, Store, StoreError};
use std::collections::HashSet;

fn token_of(item: &QueueItem) -> FencingToken {
    item.lease.as_ref().map_or_else(
        || panic!("claimed item {:?} has no lease", item.key),
        |l| l.token,
    )
}

fn steps_of(claimed: &[crate::store::ClaimedItem]) -> Vec<String> {
    claimed
        .iter()
        .map(|c| c.item.key.step.to_string())
        .collect()
}

/// Many concurrent claims (16 workers polled together, batches of 7, over 200 items) never
/// return the same item twice or the same token twice, and every item is claimed exactly
/// once.
pub async fn claim_uniqueness<S: Store>(store: S) {
    const INSTANCES: u128 = 10;
    const STEPS: usize = 20;
    let names: Vec<String> = (0..STEPS).map(|i| format!("s{i:02}")).collect();
    for n in 0..INSTANCES {
        let steps: Vec<(&str, &str)> = names.iter().map(|s| (s.as_str(), "h")).collect();
        create(&store, start(iid(100 + n), at(0), &steps)).await;
    }
    let requests: Vec<ClaimRequest> = (0..16)
        .map(|w| request(&format!("w{w}"), &["h"], 7, at(1)))
        .collect();
    let mut keys: HashSet<QueueKey> = HashSet::new();
    let mut tokens: HashSet<FencingToken> = HashSet::new();
    for _round in 0..100 {
        let results = futures::future::join_all(requests.iter().map(|r| store.claim(r))).await;
        let mut got = 0;
        for (w, r) in results.into_iter().enumerate() {
            let claimed = ok(r, "concurrent claim");
            assert!(claimed.len() <= 7, "a claim returned more than its limit");
            for c in claimed {
                got += 1;
                let lease = c
                    .item
                    .lease
                    .clone()
                    .unwrap_or_else(|| panic!("claimed item without lease"));
                assert_eq!(&*lease.owner, format!("w{w}"), "lease owner is the claimer");
                assert_eq!(c.item.attempt, 1, "first claim is attempt 1");
                assert!(!c.previous_lease_expired, "no lease expired");
                assert!(
                    keys.insert(c.item.key.clone()),
                    "item {:?} claimed twice",
                    c.item.key
                );
                assert!(
                    tokens.insert(lease.token),
                    "token {} issued twice",
                    lease.token
                );
            }
        }
        if got == 0 {
            break;
        }
    }
    assert_eq!(
        keys.len(),
        INSTANCES as usize * STEPS,
        "every item claimed exactly once"
    );
    assert!(
        claim(&store, "late", &["h"], 100, at(2)).await.is_empty(),
        "nothing left while the leases are live"
    );
}

/// A claim returns at most `limit` items, in ascending `(order_key, key)` order; the next
/// claim continues where it stopped; a limit of 0 claims nothing.
pub async fn claim_batches<S: Store>(store: S) {
    let id = iid(1);
    let mut t = start(id, at(0), &[]);
    // Order keys deliberately not in name order.
    let order = [
        ("e", 5),
        ("a", 40),
        ("d", 10),
        ("b", 30),
        ("c", 20),
        ("f", 0),
    ];
    for (step, ok_) in order {
        t.steps
            .push(write(step_run(id, step, StepStatus::Pending, at(0)), None));
        let mut i = execute(id, step, "h", at(0));
        i.order_key = ok_;
        t.queue.push(QueueOp::Upsert(i));
    }
    create(&store, t).await;
    assert!(
        claim(&store, "w", &["h"], 0, at(1)).await.is_empty(),
        "limit 0 claims nothing"
    );
    let first = claim(&store, "w", &["h"], 4, at(1)).await;
    assert_eq!(
        steps_of(&first),
        vec!["f", "e", "d", "c"],
        "first batch in order"
    );
    let rest = claim(&store, "w", &["h"], 4, at(1)).await;
    assert_eq!(
        steps_of(&rest),
        vec!["b", "a"],
        "second batch takes the rest"
    );
    let mut all: Vec<FencingToken> = first
        .iter()
        .chain(rest.iter())
        .map(|c| token_of(&c.item))
        .collect();
    let sorted = {
        let mut s = all.clone();
        s.sort();
        s
    };
    assert_eq!(all, sorted, "tokens increase in claim order");
    all.dedup();
    assert_eq!(all.len(), 6, "tokens are distinct");
}

/// Equal order keys are claimed in key order: instance id, then step, then kind.
pub async fn claim_tie_break<S: Store>(store: S) {
    for n in [3_u128, 1, 2] {
        let mut t = start(iid(n), at(0), &[]);
        for step in ["y", "x"] {
            t.steps.push(write(
                step_run(iid(n), step, StepStatus::Pending, at(0)),
                None,
            ));
            t.queue
                .push(QueueOp::Upsert(execute(iid(n), step, "h", at(0))));
        }
        create(&store, t).await;
    }
    // One at a time first (a batch limit inside a run of equal order keys), then the rest.
    let mut claimed = Vec::new();
    for _ in 0..3 {
        claimed.extend(claim(&store, "w", &["h"], 1, at(0)).await);
    }
    claimed.extend(claim(&store, "w", &["h"], 10, at(0)).await);
    let got: Vec<(u128, String)> = claimed
        .iter()
        .map(|c| {
            (
                c.item.key.instance_id.0.as_u128(),
                c.item.key.step.to_string(),
            )
        })
        .collect();
    let expect: Vec<(u128, String)> = [1_u128, 2, 3]
        .iter()
        .flat_map(|&n| [(n, "x".to_owned()), (n, "y".to_owned())])
        .collect();
    assert_eq!(got, expect, "ties broken by (instance, step)");
}

/// Claims only return items of the requested handlers; timers only come with
/// [`TIMER_HANDLER`]; a merged claim over several handlers keeps the global order.
pub async fn claim_handler_filter<S: Store>(store: S) {
    let id = iid(1);
    let mut t = start(id, at(0), &[]);
    let rows = [
        ("a1", "alpha", 1),
        ("b1", "beta", 2),
        ("a2", "alpha", 3),
        ("b2", "beta", 4),
    ];
    for (step, handler, ok_) in rows {
        t.steps
            .push(write(step_run(id, step, StepStatus::Pending, at(0)), None));
        let mut i = execute(id, step, handler, at(0));
        i.order_key = ok_;
        t.queue.push(QueueOp::Upsert(i));
    }
    t.steps.push(write(
        step_run(id, "human", StepStatus::WaitingDecision, at(0)),
        None,
    ));
    let mut timer = item(
        &wf(),
        key(id, "human", WorkKind::Timer),
        TIMER_HANDLER,
        at(0),
    );
    timer.order_key = 0;
    t.queue.push(QueueOp::Upsert(timer));
    create(&store, t).await;

    assert!(
        claim(&store, "w", &["gamma"], 10, at(1)).await.is_empty(),
        "an unknown handler claims nothing"
    );
    assert!(
        claim(&store, "w", &[], 10, at(1)).await.is_empty(),
        "no handler claims nothing"
    );
    let alpha = claim(&store, "w", &["alpha"], 10, at(1)).await;
    assert_eq!(steps_of(&alpha), vec!["a1", "a2"], "only alpha items");
    assert!(alpha.iter().all(|c| &*c.item.handler == "alpha"));
    let merged = claim(&store, "w", &["beta", TIMER_HANDLER, "beta"], 10, at(1)).await;
    assert_eq!(
        steps_of(&merged),
        vec!["human", "b1", "b2"],
        "beta and timer items merged in order_key order"
    );
    assert_eq!(merged[0].item.key.kind, WorkKind::Timer);
}

/// Priority with aging is the `order_key` order: an old low-priority item beats a new
/// high-priority one when its key is smaller; items whose `run_at` is in the future are not
/// claimed however small their key, judged by each claim's own `now` (a worker whose clock
/// lags behind an earlier claim's does not take items not due at its `now`).
pub async fn claim_priority_aging<S: Store>(store: S) {
    let aging = 2_000; // ms per priority point
    let id = iid(1);
    let mut t = start(id, at(0), &[]);
    let mut add = |step: &str, run_at: Timestamp, priority: u8| {
        t.steps
            .push(write(step_run(id, step, StepStatus::Pending, at(0)), None));
        let mut i = execute(id, step, "h", run_at);
        i.priority = priority;
        i.order_key = QueueItem::order_key_for(run_at, priority, aging);
        t.queue.push(QueueOp::Upsert(i));
    };
    // Waited 10 minutes at priority 10: key = at(0) - 20 s.
    add("old-low", at(0), 10);
    // Fresh at priority 90: key = at(600 s) - 180 s, larger.
    add("new-high", at(600_000), 90);
    // Fresh at priority 20: key = at(600 s) - 40 s.
    add("new-low", at(600_000), 20);
    // Due in 10 s with top priority: the smallest key, but not claimable yet (the leases
    // taken below expire at 630 s, after this item is due).
    add("future", at(610_000), 100);
    create(&store, t).await;
    let got = claim(&store, "w", &["h"], 10, at(600_000)).await;
    assert_eq!(
        steps_of(&got),
        vec!["old-low", "new-high", "new-low"],
        "aged low priority first, then by priority; the future item waits"
    );
    assert!(
        claim(&store, "w", &["h"], 10, at(609_999)).await.is_empty(),
        "not claimable before its run_at"
    );
    let later = claim(&store, "w", &["h"], 10, at(610_000)).await;
    assert_eq!(steps_of(&later), vec!["future"], "claimable at its run_at");
    // Each claim judges due-ness by its own `now`: after that claim at 610 s, a worker
    // whose clock lags does not take an item that is not due at its `now`.
    let lag = iid(2);
    let mut t = start(lag, at(0), &[]);
    for (step, run_at) in [("r", at(1_000)), ("s", at(3_000))] {
        t.steps
            .push(write(step_run(lag, step, StepStatus::Pending, at(0)), None));
        t.queue
            .push(QueueOp::Upsert(execute(lag, step, "lag", run_at)));
    }
    create(&store, t).await;
    let got = claim(&store, "ahead", &["lag"], 1, at(5_000)).await;
    assert_eq!(steps_of(&got), vec!["r"], "the earliest item first");
    assert!(
        claim(&store, "behind", &["lag"], 10, at(2_000))
            .await
            .is_empty(),
        "an item due at 3 s is not claimed at 2 s, whatever claims came before"
    );
    let got = claim(&store, "behind", &["lag"], 10, at(3_000)).await;
    assert_eq!(steps_of(&got), vec!["s"], "claimable at its run_at");
}

/// Claiming an `Execute` item makes its step run `running` with `attempts` = the item's
/// attempt and `started_at = now`, appends a `step_started` event with that attempt, and
/// returns the step run as stored. Other kinds leave the step run alone.
pub async fn claim_side_effects<S: Store>(store: S) {
    let id = iid(1);
    let mut t = start(id, at(0), &[("a", "h")]);
    t.steps.push(write(
        step_run(id, "done", StepStatus::Compensating, at(0)),
        None,
    ));
    t.queue.push(QueueOp::Upsert(item(
        &wf(),
        key(id, "done", WorkKind::Compensate),
        "undo",
        at(0),
    )));
    create(&store, t).await;
    let events_before = ok(store.list_events(id, None, 0).await, "list_events");

    let got = claim(&store, "w1", &["h"], 1, at(10)).await;
    assert_eq!(got.len(), 1);
    let c = &got[0];
    assert_eq!(c.item.attempt, 1, "the claim counts as attempt 1");
    let lease = c
        .item
        .lease
        .clone()
        .unwrap_or_else(|| panic!("claimed item without lease"));
    assert_eq!(&*lease.owner, "w1");
    assert_eq!(
        lease.expires_at,
        at(10).add_ms(TTL_MS),
        "expiry = now + TTL"
    );
    assert!(!c.previous_lease_expired);
    assert_eq!(c.run.status, StepStatus::Running);
    assert_eq!(c.run.attempts, 1);
    assert_eq!(c.run.started_at, Some(at(10)));
    let snap = snapshot(&store, id).await;
    assert_eq!(
        stored_step(&snap, "a"),
        c.run,
        "the returned run is the stored one"
    );
    assert_eq!(
        snap.instance.version, 1,
        "a claim does not change the instance record"
    );
    let events = ok(store.list_events(id, None, 0).await, "list_events");
    assert_eq!(events.len(), events_before.len() + 1, "one event appended");
    let started = &events[events.len() - 1];
    assert_eq!(started.kind, EventKind::StepStarted);
    assert_eq!(started.step.as_deref(), Some("a"));
    assert_eq!(started.attempt, Some(1));
    assert_eq!(started.at, at(10));
    assert!(
        started.seq > events_before[events_before.len() - 1].seq,
        "the claim's event follows earlier ones"
    );
    assert_eq!(
        ok(store.list_queue(id).await, "list_queue")
            .iter()
            .find(|i| &*i.key.step == "a")
            .map(|i| (i.attempt, i.lease.clone())),
        Some((1, Some(lease.clone()))),
        "the stored item carries the lease and attempt"
    );

    // The attempt fails and is retried: the next claim is attempt 2.
    let token = lease.token;
    ok(
        update(&store, id, move |s| {
            let mut t = next(s, at(20));
            t.lease_check = Some(LeaseCheck {
                key: key(id, "a", WorkKind::Execute),
                token,
            });
            let mut a = stored_step(s, "a");
            a.status = StepStatus::Retrying;
            a.error = Some("boom".into());
            t.steps.push(write(a, Some(StepStatus::Running)));
            let mut retry = execute(id, "a", "h", at(100));
            retry.attempt = 1;
            t.queue.push(QueueOp::Upsert(retry));
            t.events.push(event(EventKind::StepRetry, Some("a")));
            t
        })
        .await,
        "retry transition",
    );
    assert!(
        claim(&store, "w2", &["h"], 1, at(99)).await.is_empty(),
        "retry not due yet"
    );
    let got = claim(&store, "w2", &["h"], 1, at(100)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].item.attempt, 2, "second attempt");
    assert!(
        !got[0].previous_lease_expired,
        "the upsert dropped the old lease"
    );
    assert_eq!(got[0].run.status, StepStatus::Running);
    assert_eq!(got[0].run.attempts, 2);
    assert_eq!(
        got[0].run.error.as_deref(),
        Some("boom"),
        "the run is returned as stored"
    );
    let events = ok(store.list_events(id, None, 0).await, "list_events");
    let last = &events[events.len() - 1];
    assert_eq!(
        (last.kind, last.attempt),
        (EventKind::StepStarted, Some(2)),
        "step_started for attempt 2"
    );

    // A compensation claim leaves the step run and the events alone.
    let n_events = events.len();
    let got = claim(&store, "w3", &["undo"], 1, at(100)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].item.key.kind, WorkKind::Compensate);
    assert_eq!(got[0].item.attempt, 1);
    assert_eq!(got[0].run.status, StepStatus::Compensating);
    assert_eq!(got[0].run.attempts, 0);
    assert_eq!(
        stored_step(&snapshot(&store, id).await, "done"),
        got[0].run,
        "compensate claims do not touch the step run"
    );
    assert_eq!(
        ok(store.list_events(id, None, 0).await, "list_events").len(),
        n_events,
        "compensate claims write no step_started event"
    );
}

/// A queue item without its step run cannot be claimed: the claim fails with
/// [`StoreError::Corrupt`] and leases nothing.
pub async fn claim_missing_step_run<S: Store>(store: S) {
    let id = iid(1);
    let mut t = start(id, at(0), &[]);
    t.queue
        .push(QueueOp::Upsert(execute(id, "ghost", "h", at(0))));
    create(&store, t).await;
    let r = store.claim(&request("w", &["h"], 10, at(1))).await;
    assert!(
        matches!(r, Err(StoreError::Corrupt(_))),
        "claim of an item without step run: expected Corrupt, got {r:?}"
    );
    let queue = ok(store.list_queue(id).await, "list_queue");
    assert!(
        queue.iter().all(|i| i.lease.is_none() && i.attempt == 0),
        "a failed claim leases nothing: {queue:?}"
    );
}

/// `update_instance_eager`: the work a transition queues may be leased to the committing
/// worker in the same commit, exactly as a claim right after it would lease it; a backend
/// that does not offer it returns no item and leaves the work claimable.
pub async fn eager_claim<S: Store>(store: S) {
    use crate::eager::EagerClaim;
    use crate::store::{LeaseRef, LeaseState};
    let id = iid(1);
    create(&store, start(id, at(0), &[("a", "h")])).await;
    let first = claim(&store, "w1", &["h"], 1, at(1)).await;
    let first_token = token_of(&first[0].item);
    // Complete `a` and queue `b` (handler h) and `c` (handler other), both due.
    let a_done = {
        let lease_check = Some(LeaseCheck {
            key: key(id, "a", WorkKind::Execute),
            token: first_token,
        });
        move |s: &crate::model::InstanceSnapshot| {
            let mut t = next(s, at(2));
            let mut a = stored_step(s, "a");
            a.status = StepStatus::Completed;
            t.steps.push(write(a, Some(StepStatus::Running)));
            t.queue
                .push(QueueOp::Delete(key(id, "a", WorkKind::Execute)));
            for (step, handler) in [("b", "h"), ("c", "other")] {
                t.steps
                    .push(write(step_run(id, step, StepStatus::Pending, at(2)), None));
                t.queue
                    .push(QueueOp::Upsert(execute(id, step, handler, at(2))));
            }
            t.events.push(event(EventKind::StepCompleted, Some("a")));
            t.lease_check = lease_check;
            t
        }
    };
    let eager = EagerClaim {
        owner: "w1".into(),
        handlers: vec!["h".into(), "unused".into()],
        limit: 5,
    };
    let (applied, leased) = ok(
        store
            .update_instance_eager(id, Box::new(move |s| Ok(a_done(s))), &eager)
            .await,
        "update_instance_eager",
    );
    assert_eq!(applied.instance.version, 2, "the transition was applied");
    let snap = snapshot(&store, id).await;
    assert_eq!(stored_step(&snap, "a").status, StepStatus::Completed);
    assert!(
        leased.len() <= 1,
        "only b is due with a handler of the worker: {leased:?}"
    );
    if let Some(b) = leased.first() {
        assert_eq!(&*b.item.key.step, "b");
        let lease = b
            .item
            .lease
            .clone()
            .unwrap_or_else(|| panic!("eager item without lease"));
        assert_eq!(&*lease.owner, "w1");
        assert!(
            lease.token > first_token,
            "a fresh token, greater than earlier ones"
        );
        assert_eq!(
            lease.expires_at,
            at(2).add_ms(TTL_MS),
            "leased at the commit's time"
        );
        assert_eq!((b.item.attempt, b.previous_lease_expired), (1, false));
        let run = stored_step(&snap, "b");
        assert_eq!(
            (run.status, run.attempts, run.started_at),
            (StepStatus::Running, 1, Some(at(2))),
            "the stored run is running"
        );
        assert_eq!(b.run, run, "the item comes with its stored run");
        let events = ok(store.list_events(id, None, 0).await, "list_events");
        let last = events.last().unwrap_or_else(|| panic!("no events"));
        assert_eq!(
            (last.kind, last.step.as_deref(), last.attempt),
            (EventKind::StepStarted, Some("b"), Some(1)),
            "step_started appended after the transition's events"
        );
        // Nobody else can claim it; it heartbeats like a claimed item.
        assert!(claim(&store, "w2", &["h"], 10, at(3)).await.is_empty());
        let states = ok(
            store
                .heartbeat(
                    "w1",
                    &[LeaseRef {
                        key: b.item.key.clone(),
                        token: lease.token,
                    }],
                    at(3),
                )
                .await,
            "heartbeat",
        );
        assert!(matches!(states[0], LeaseState::Held { .. }), "{states:?}");
    } else {
        let again = claim(&store, "w2", &["h"], 10, at(3)).await;
        assert_eq!(
            steps_of(&again),
            ["b"],
            "without eager claims, b stays claimable"
        );
    }
    // c was never the worker's: still queued, unleased, for a claim of its handler.
    let other = claim(&store, "w3", &["other"], 10, at(3)).await;
    assert_eq!(steps_of(&other), ["c"]);
    assert_eq!(other[0].item.attempt, 1);
}
