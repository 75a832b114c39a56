//! `Engine::subscribe`: committed events in commit order; a stalled subscriber lags (told how
//! many it missed) and never slows commits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{WAIT, engine};
use floxy::{
    Builder, CommittedEvent, Engine, EventKind, HandlerError, InstanceStatus, MemoryStore, Payload,
    SUBSCRIPTION_CAPACITY, SubscriptionError,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn drain(sub: &mut floxy::EventSubscription) -> Vec<CommittedEvent> {
    let mut out = Vec::new();
    while let Some(e) = sub.try_recv().unwrap() {
        out.push(e);
    }
    out
}

/// A saga with a retry, a failure, compensations and an operator-free rollback: the
/// subscriber sees exactly the stored timeline, in order.
#[tokio::test(start_paused = true)]
async fn subscriber_sees_an_instances_events_in_commit_order() {
    let (engine, _store) = engine();
    engine.register_fn("ok", |_ctx, input: Payload| async move { Ok(input) });
    engine.register_fn("boom", |_ctx, _input: Payload| async move {
        Err::<Payload, _>(HandlerError::retryable("boom"))
    });
    let wf = engine
        .register_workflow(
            Builder::new("rollback", 1)
                .step("a", "ok")
                .on_failure("undo_a", "ok")
                .then("b", "ok")
                .on_failure("undo_b", "ok")
                .then("c", "boom")
                .max_retries(1)
                .retry_delay_ms(10)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut sub = engine.subscribe();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({"x": 1})).await.unwrap();
    let other = engine.start(&wf, json!({"x": 2})).await.unwrap();
    assert_eq!(
        engine.wait_for(id, WAIT).await.unwrap().status,
        InstanceStatus::Failed
    );
    engine.wait_for(other, WAIT).await.unwrap();
    let live = drain(&mut sub);
    let stored = engine.events(id).await.unwrap();
    let mine: Vec<&CommittedEvent> = live.iter().filter(|e| e.instance_id == id).collect();
    let got: Vec<_> = mine
        .iter()
        .map(|e| {
            (
                e.kind(),
                e.step().cloned(),
                e.event.attempt,
                e.event.detail.clone(),
            )
        })
        .collect();
    let want: Vec<_> = stored
        .iter()
        .map(|e| (e.kind, e.step.clone(), e.attempt, e.detail.clone()))
        .collect();
    assert_eq!(got, want);
    assert!(want.len() > 10, "a rich timeline: {want:?}");
    assert!(mine.iter().all(|e| e.workflow_id == wf));
    // Versions never go back, and the last event carries the final status.
    let versions: Vec<u64> = mine.iter().filter_map(|e| e.version).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    let last = mine.last().unwrap();
    assert_eq!(last.kind(), EventKind::WorkflowFailed);
    assert_eq!(last.status, Some(InstanceStatus::Failed));
    assert_eq!(
        live.iter().filter(|e| e.instance_id == other).count(),
        want.len()
    );
    // Timestamps are the commits' times, in order.
    assert!(mine.windows(2).all(|w| w[0].at <= w[1].at));
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A subscriber made later sees only later events; operator commands are published too,
/// with who asked.
#[tokio::test(start_paused = true)]
async fn operator_commands_are_published_with_who_asked() {
    let (engine, _store) = engine();
    engine.register_fn("ok", |_ctx, input: Payload| async move { Ok(input) });
    let wf = engine
        .register_workflow(
            Builder::new("human", 1)
                .step("a", "ok")
                .wait_human("approve")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();
    engine.wait_for(id, WAIT).await.unwrap();
    let mut sub = engine.subscribe();
    assert!(sub.try_recv().unwrap().is_none(), "nothing from before");
    engine
        .cancel_by(id, Some("changed my mind"), Some("alice"))
        .await
        .unwrap();
    engine.wait_for(id, WAIT).await.unwrap();
    let live = drain(&mut sub);
    let started = live
        .iter()
        .find(|e| e.kind() == EventKind::CancellationStarted)
        .unwrap();
    assert_eq!(
        started.detail().unwrap().value(),
        &json!({"reason": "changed my mind", "by": "alice"})
    );
    assert_eq!(live.last().unwrap().kind(), EventKind::WorkflowCancelled);
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Runs `n` 3-step sagas on the memory store with a subscriber that never reads; returns
/// what it had pending at the end and its first two `recv`s. (The throughput cost of
/// subscribers is measured by `cargo bench -p floxy-benches -- --parts events`.)
async fn stalled_run(
    n: usize,
) -> (
    usize,
    Result<CommittedEvent, SubscriptionError>,
    Result<CommittedEvent, SubscriptionError>,
) {
    let engine = Engine::builder(Arc::new(MemoryStore::new()))
        .workers(4)
        .batch_size(64)
        .poll_interval_ms(1)
        .build();
    engine.register_fn("noop", |_ctx, input: Payload| async move { Ok(input) });
    let wf = engine
        .register_workflow(
            Builder::new("saga", 1)
                .step("a", "noop")
                .on_failure("ua", "noop")
                .then("b", "noop")
                .on_failure("ub", "noop")
                .then("c", "noop")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut stalled = engine.subscribe();
    engine.start_workers().unwrap();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(engine.start(&wf, json!({"x": 1})).await.unwrap());
    }
    for id in ids {
        let done = engine.wait_for(id, Duration::from_mins(2)).await.unwrap();
        assert_eq!(done.status, InstanceStatus::Completed);
    }
    let pending = stalled.pending();
    let first = stalled.recv().await;
    let second = stalled.recv().await;
    engine.shutdown(Duration::from_secs(5)).await;
    (pending, first, second)
}

/// A stalled subscriber fills its buffer, then lags: it is told how many events it missed
/// and continues with the oldest one still buffered; the commits all happen meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_lags_and_commits_go_on() {
    // 3-step sagas write well over 10 events each: 1 000 sagas overflow the buffer.
    let (pending, first, second) = stalled_run(1_000).await;
    assert!(pending > SUBSCRIPTION_CAPACITY, "published {pending}");
    match first {
        Err(SubscriptionError::Lagged(n)) => {
            assert_eq!(
                n,
                (pending - SUBSCRIPTION_CAPACITY) as u64,
                "missed = published - kept"
            );
        }
        other => panic!("expected a lag, got {other:?}"),
    }
    // Then the oldest event still buffered.
    assert!(second.is_ok(), "{second:?}");
}
