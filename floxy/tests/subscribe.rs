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
use std::time::{Duration, Instant};

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

/// An engine for the throughput runs: real time, four workers, no-op handlers.
fn bench_engine() -> Engine {
    let engine = Engine::builder(Arc::new(MemoryStore::new()))
        .workers(4)
        .batch_size(64)
        .poll_interval_ms(1)
        .build();
    engine.register_fn("noop", |_ctx, input: Payload| async move { Ok(input) });
    engine
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    None,
    Stalled,
    Draining,
}

/// Runs `n` 3-step sagas; returns sagas per second and, for a stalled subscriber, what its
/// first `recv` returned.
#[allow(clippy::type_complexity)]
async fn run(
    mode: Mode,
    n: usize,
) -> (
    f64,
    Option<(
        usize,
        Result<CommittedEvent, SubscriptionError>,
        Result<CommittedEvent, SubscriptionError>,
    )>,
) {
    let engine = bench_engine();
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
    let stalled = (mode == Mode::Stalled).then(|| engine.subscribe());
    let drainer = (mode == Mode::Draining).then(|| {
        let mut sub = engine.subscribe();
        tokio::spawn(async move {
            let mut seen = 0u64;
            loop {
                match sub.recv().await {
                    Ok(_) => seen += 1,
                    Err(SubscriptionError::Lagged(_)) => {}
                    Err(_) => return seen,
                }
            }
        })
    });
    engine.start_workers().unwrap();
    let begin = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(engine.start(&wf, json!({"x": 1})).await.unwrap());
    }
    for id in ids {
        let done = engine.wait_for(id, Duration::from_mins(2)).await.unwrap();
        assert_eq!(done.status, InstanceStatus::Completed);
    }
    let rate = n as f64 / begin.elapsed().as_secs_f64();
    let first = match stalled {
        Some(mut s) => {
            let pending = s.pending();
            let first = s.recv().await;
            let second = s.recv().await;
            Some((pending, first, second))
        }
        None => None,
    };
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);
    if let Some(d) = drainer {
        d.abort();
    }
    (rate, first)
}

/// A stalled subscriber fills its buffer, then lags: it is told how many events it missed
/// and continues with the oldest one still buffered; the commits all happen meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_lags_and_commits_go_on() {
    // 3-step sagas write well over 10 events each: 1 000 sagas overflow the buffer.
    let (_, stalled) = run(Mode::Stalled, 1_000).await;
    let (pending, first, second) = stalled.unwrap();
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

/// Throughput with no subscriber, a stalled one and a draining one, in paired rounds
/// (the three modes one after another, round after round), medians reported.
///
/// `cargo test -p floxy --release --test subscribe -- --ignored --nocapture`
#[ignore = "a measurement: run in release with --nocapture"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_throughput() {
    const ROUNDS: usize = 7;
    const SAGAS: usize = 2_000;
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    let modes = [Mode::None, Mode::Stalled, Mode::Draining];
    for round in 0..ROUNDS {
        // Rotate the order so no mode always runs first.
        for k in 0..3 {
            let i = (round + k) % 3;
            let (rate, _) = run(modes[i], SAGAS).await;
            rates[i].push(rate);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m: Vec<f64> = rates.iter_mut().map(median).collect();
    println!(
        "sagas/s (3 steps, memory store, 4 workers, {SAGAS} sagas, median of {ROUNDS} paired rounds): \
         no subscriber {:.0}, stalled subscriber {:.0} ({:+.1} %), draining subscriber {:.0} ({:+.1} %)",
        m[0],
        m[1],
        (m[1] / m[0] - 1.0) * 100.0,
        m[2],
        (m[2] / m[0] - 1.0) * 100.0
    );
    println!("raw: {rates:?}");
    assert!(m[1] > 0.8 * m[0], "a stalled subscriber slowed commits");
}
