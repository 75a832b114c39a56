//! The worker pool: shutdown, leases, heartbeats, concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Log, LosingStore, Started, WAIT, engine, engine_with, names, step, trail_handler};
use floxy::{
    Builder, ClaimRequest, EngineError, Input, InstanceStatus, Payload, StepContext, StepStatus,
    Store, StoreError, TransitionFn, WorkKind, WorkOutcome,
};
use floxy_store_memory::MemoryStore;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_in_flight_work() {
    let (engine, _store) = engine();
    let started = Started::default();
    let s = started.clone();
    engine.register_fn("slow", move |_ctx: StepContext, input: Payload| {
        let s = s.clone();
        async move {
            s.raise();
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(input)
        }
    });
    let wf = engine
        .register_workflow(
            Builder::new("slow", 1)
                .step("slow", "slow")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();
    started.wait().await;

    let report = engine.shutdown(Duration::from_secs(10)).await;

    assert_eq!(
        (report.in_flight, report.finished, report.abandoned),
        (1, 1, 0)
    );
    let rec = engine.instance(id).await.unwrap().unwrap();
    assert_eq!(
        rec.status,
        InstanceStatus::Completed,
        "the in-flight result was committed"
    );
    assert!(matches!(
        engine.run_once().await,
        Err(EngineError::ShuttingDown)
    ));
    assert!(matches!(
        engine.start_workers(),
        Err(EngineError::ShuttingDown)
    ));
    // Idempotent.
    assert_eq!(engine.shutdown(Duration::from_secs(1)).await.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_work_past_the_timeout() {
    let (engine, store) = engine();
    let started = Started::default();
    let token_fired = Arc::new(AtomicBool::new(false));
    let (s, f) = (started.clone(), Arc::clone(&token_fired));
    engine.register_fn("stuck", move |ctx: StepContext, input: Payload| {
        let (s, f) = (s.clone(), Arc::clone(&f));
        async move {
            let token = ctx.cancellation_token().clone();
            tokio::spawn(async move {
                token.cancelled().await;
                f.store(true, Ordering::SeqCst);
            });
            s.raise();
            // Ignores its token on purpose.
            tokio::time::sleep(Duration::from_hours(1)).await;
            Ok(input)
        }
    });
    let wf = engine
        .register_workflow(
            Builder::new("stuck", 1)
                .lease_ttl_ms(5_000)
                .step("stuck", "stuck")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();
    started.wait().await;

    let report = engine.shutdown(Duration::from_secs(1)).await;

    assert_eq!(
        (report.in_flight, report.finished, report.abandoned),
        (1, 0, 1)
    );
    tokio::task::yield_now().await;
    assert!(
        token_fired.load(Ordering::SeqCst),
        "abandoned handlers see their token fire"
    );
    assert_eq!(step(&engine, id, "stuck").await.status, StepStatus::Running);
    let queue = store.list_queue(id).await.unwrap();
    assert_eq!(queue.len(), 1);
    assert!(queue[0].lease.is_some(), "the lease is left to expire");
}

#[tokio::test(start_paused = true)]
async fn expired_lease_of_a_crashed_worker_is_reclaimed() {
    let (engine, store) = engine();
    let log = Log::default();
    trail_handler(&engine, "work", &log);
    let def = Builder::new("crash", 1)
        .lease_ttl_ms(1_000)
        .step("work", "work")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();

    // A worker claims the item and dies without completing or heartbeating.
    let crashed = store
        .claim(&ClaimRequest {
            owner: "crashed".into(),
            handlers: vec!["work".into()],
            limit: 10,
            now: engine.clock().now(),
        })
        .await
        .unwrap();
    assert_eq!(crashed.len(), 1);
    let stale_token = crashed[0].item.lease.as_ref().unwrap().token;
    assert_eq!(
        engine.run_once().await.unwrap(),
        0,
        "a live lease is not claimable"
    );

    // Workers sleep until the lease expires (virtual time), reclaim it, report the lost
    // attempt, and run the step again.
    engine.start_workers().unwrap();
    let done = engine.wait_for(id, WAIT).await.unwrap();

    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(log.entries(), ["work"], "the handler ran once here");
    let run = step(&engine, id, "work").await;
    assert_eq!(run.attempts, 2, "the crashed attempt counts");
    let events = engine.events(id).await.unwrap();
    assert!(
        names(&events).contains(&"lease_expired"),
        "{:?}",
        names(&events)
    );

    // The crashed worker's late result is fenced off.
    let wf_c = engine.workflow(&wf).await.unwrap();
    let input = Input::WorkDone {
        key: crashed[0].item.key.clone(),
        token: stale_token,
        attempt: crashed[0].item.attempt,
        outcome: WorkOutcome::Succeeded(Payload::null()),
    };
    let now = engine.clock().now();
    let f: TransitionFn =
        Box::new(move |snap| floxy::floxy_core::machine::apply(&wf_c, snap, &input, now));
    let late = store.update_instance(id, f).await;
    assert!(
        matches!(
            late,
            Err(StoreError::StaleLease { .. } | StoreError::Rejected(_))
        ),
        "{late:?}"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_long_handler_alive() {
    let (engine, store) = engine();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    engine.register_fn("long", move |ctx: StepContext, input: Payload| {
        let c = Arc::clone(&c);
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            // Ten lease TTLs.
            tokio::time::sleep(Duration::from_secs(10)).await;
            assert!(!ctx.is_cancelled(), "the lease was never lost");
            Ok(input)
        }
    });
    let def = Builder::new("long", 1)
        .lease_ttl_ms(1_000)
        .step("long", "long")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();

    // A competing worker polls all along and must never be able to steal the item.
    let competitor = {
        let store = Arc::clone(&store);
        let clock = Arc::clone(engine.clock());
        tokio::spawn(async move {
            let mut stolen = 0;
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let req = ClaimRequest {
                    owner: "thief".into(),
                    handlers: vec!["long".into()],
                    limit: 1,
                    now: clock.now(),
                };
                stolen += store.claim(&req).await.unwrap().len();
            }
            stolen
        })
    };
    let done = engine.wait_for(id, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(step(&engine, id, "long").await.attempts, 1);
    assert_eq!(competitor.await.unwrap(), 0);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn lost_lease_cancels_the_handler_and_drops_its_result() {
    // The first heartbeat reports the lease lost (another worker took it over).
    let store = Arc::new(LosingStore {
        inner: MemoryStore::new(),
        lose: AtomicUsize::new(1),
        loads: AtomicUsize::new(0),
    });
    let engine = engine_with(store.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let token_fired = Started::default();
    let (c, fired) = (Arc::clone(&calls), token_fired.clone());
    engine.register_fn("victim", move |ctx: StepContext, _input: Payload| {
        let (c, fired) = (Arc::clone(&c), fired.clone());
        async move {
            let call = c.fetch_add(1, Ordering::SeqCst) + 1;
            if call == 1 {
                let token = ctx.cancellation_token().clone();
                tokio::spawn(async move {
                    token.cancelled().await;
                    fired.raise();
                });
                // Returns long after the lease was lost: this result must be dropped.
                tokio::time::sleep(Duration::from_hours(1)).await;
            }
            Ok(Payload::new(json!({"call": call})))
        }
    });
    let def = Builder::new("lost", 1)
        .lease_ttl_ms(1_000)
        .step("victim", "victim")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();

    token_fired.wait().await;
    // The dropped attempt's lease expires in the store; the next claim counts it as lost and
    // runs the step again.
    let done = engine.wait_for(id, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(
        done.output.as_ref().map(Payload::value),
        Some(&json!({"call": 2}))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(names(&engine.events(id).await.unwrap()).contains(&"lease_expired"));
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn pool_never_runs_more_than_workers_handlers() {
    let (engine, _store) = engine();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (Arc::clone(&running), Arc::clone(&peak));
    engine.register_fn("busy", move |_ctx: StepContext, input: Payload| {
        let (r, p) = (Arc::clone(&r), Arc::clone(&p));
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(input)
        }
    });
    let wf = engine
        .register_workflow(
            Builder::new("busy", 1)
                .step("busy", "busy")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(engine.start(&wf, json!({"i": i})).await.unwrap());
    }
    engine.start_workers().unwrap();
    for id in ids {
        assert_eq!(
            engine.wait_for(id, WAIT).await.unwrap().status,
            InstanceStatus::Completed
        );
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 4, "at most `workers` handlers at once, saw {peak}");
    assert!(peak >= 2, "handlers ran concurrently, saw {peak}");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn timers_are_claimed_without_a_handler() {
    let (engine, _store) = engine();
    let def = Builder::new("timer", 1)
        .wait_human("approve")
        .decision_timeout_ms(5_000, floxy::TimeoutPolicy::Reject)
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let waiting = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
    assert_eq!(waiting.status, InstanceStatus::Running);
    let q = engine.queue(waiting.id).await.unwrap();
    assert!(q.iter().any(|i| i.key.kind == WorkKind::Timer), "{q:?}");
    // The timer fires on virtual time and rejects, which aborts.
    let t0 = engine.clock().now();
    let rec = engine
        .wait_until(waiting.id, WAIT, |s| s.instance.status.is_terminal())
        .await
        .unwrap();
    assert_eq!(rec.status, InstanceStatus::Aborted);
    assert!(engine.clock().now().since(t0) >= 4_000);
    engine.shutdown(Duration::from_secs(1)).await;
}

/// Waiters reload their instance only when it changes: 50 callers waiting on blocked
/// instances are not woken (nor reload) by the 40 commits of another instance's chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_wake_only_for_their_own_instance() {
    let store = Arc::new(LosingStore {
        inner: MemoryStore::new(),
        lose: AtomicUsize::new(0),
        loads: AtomicUsize::new(0),
    });
    let engine = floxy::Engine::builder(store.clone())
        .workers(64)
        .batch_size(16)
        // Long enough that polling adds no reloads during the test.
        .poll_interval_ms(60_000)
        .build();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = Arc::clone(&gate);
    engine.register_fn("blocked", move |_ctx: StepContext, input: Payload| {
        let g = Arc::clone(&g);
        async move {
            g.acquire().await.unwrap().forget();
            Ok(input)
        }
    });
    engine.register_fn("quick", |_ctx: StepContext, input: Payload| async move {
        Ok(input)
    });
    let blocked = engine
        .register_workflow(
            Builder::new("blocked", 1)
                .step("b", "blocked")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut chain = Builder::new("chain", 1).step("s0", "quick");
    for i in 1..20 {
        chain = chain.then(&format!("s{i}"), "quick");
    }
    let chain = engine
        .register_workflow(chain.build().unwrap())
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let mut waiters = Vec::new();
    for _ in 0..50 {
        let id = engine.start(&blocked, json!({})).await.unwrap();
        let e = engine.clone();
        waiters.push(tokio::spawn(async move { e.wait_for(id, WAIT).await }));
    }
    // Every waiter has made its first read (its instance is blocked, so it then waits).
    let t0 = std::time::Instant::now();
    while store.loads.load(Ordering::SeqCst) < 50 {
        assert!(t0.elapsed() < WAIT, "waiters never read their instances");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = store.loads.load(Ordering::SeqCst);
    let id = engine.start(&chain, json!({})).await.unwrap();
    let done = engine.wait_for(id, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    let during = store.loads.load(Ordering::SeqCst) - before;
    // The chain's own waiter reloads about once per commit (20 steps); the 50 others not at
    // all. Waking every waiter on every commit would cost about 50 × 20 = 1 000 reloads.
    assert!(during <= 60, "{during} reloads while another instance ran");
    gate.add_permits(50);
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap().status, InstanceStatus::Completed);
    }
    engine.shutdown(Duration::from_secs(5)).await;
}
