//! Forward runs, failures, rollbacks, retries, timeouts and panics, end to end on the memory
//! store with virtual time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    Log, WAIT, compensation_handler, engine, failing_handler, names, step, step_events,
    trail_handler,
};
use floxy::{
    Builder, CompensationReason, EngineError, HandlerError, InstanceStatus, JoinStrategy, Payload,
    StartOptions, StepContext, StepStatus,
};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn happy_path_three_steps() {
    let (engine, _store) = engine();
    let log = Log::default();
    for h in ["a", "b", "c"] {
        trail_handler(&engine, h, &log);
    }
    let def = Builder::new("happy", 1)
        .step("a", "a")
        .then("b", "b")
        .then("c", "c")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();

    let done = engine
        .start_and_wait(&wf, json!({"order": 7}), WAIT)
        .await
        .unwrap();

    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(
        done.output.as_ref().map(Payload::value),
        Some(&json!({"order": 7, "trail": ["a", "b", "c"]}))
    );
    assert_eq!(log.entries(), ["a", "b", "c"]);
    let steps = engine.steps(done.id).await.unwrap();
    assert_eq!(steps.len(), 3);
    assert!(
        steps
            .iter()
            .all(|s| s.status == StepStatus::Completed && s.attempts == 1)
    );
    // Data flow: b got a's output.
    let b = step(&engine, done.id, "b").await;
    assert_eq!(b.input.value(), &json!({"order": 7, "trail": ["a"]}));
    let events = engine.events(done.id).await.unwrap();
    let n = names(&events);
    assert_eq!(n.first(), Some(&"workflow_started"));
    assert_eq!(n.last(), Some(&"workflow_completed"));
    assert_eq!(n.iter().filter(|e| **e == "step_completed").count(), 3);
    assert!(engine.queue(done.id).await.unwrap().is_empty());
    let report = engine.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.abandoned, 0);
}

#[tokio::test(start_paused = true)]
async fn run_once_drives_an_instance_step_by_step() {
    let (engine, _store) = engine();
    let log = Log::default();
    for h in ["a", "b"] {
        trail_handler(&engine, h, &log);
    }
    let wf = engine
        .register_workflow(
            Builder::new("manual", 1)
                .step("a", "a")
                .then("b", "b")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();
    assert_eq!(engine.run_once().await.unwrap(), 1);
    assert_eq!(log.entries(), ["a"]);
    assert_eq!(engine.run_once().await.unwrap(), 1);
    assert_eq!(engine.run_once().await.unwrap(), 0);
    let rec = engine.instance(id).await.unwrap().unwrap();
    assert_eq!(rec.status, InstanceStatus::Completed);
    assert_eq!(log.entries(), ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn failure_compensates_in_reverse_order() {
    let (engine, _store) = engine();
    let log = Log::default();
    trail_handler(&engine, "a", &log);
    trail_handler(&engine, "b", &log);
    failing_handler(&engine, "c", false, &log);
    for h in ["undo_a", "undo_b", "undo_c"] {
        compensation_handler(&engine, h, &log);
    }
    let def = Builder::new("saga", 1)
        .step("a", "a")
        .on_failure("undo_a", "undo_a")
        .then("b", "b")
        .on_failure("undo_b", "undo_b")
        .then("c", "c")
        .on_failure("undo_c", "undo_c")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();

    let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();

    assert_eq!(done.status, InstanceStatus::Failed);
    assert_eq!(
        log.entries(),
        [
            "a",
            "b",
            "c",
            "undo_c(failure)",
            "undo_b(failure)",
            "undo_a(failure)"
        ]
    );
    for s in ["a", "b", "c"] {
        let run = step(&engine, done.id, s).await;
        assert_eq!(run.status, StepStatus::RolledBack, "step {s}");
    }
    let c = step(&engine, done.id, "c").await;
    assert_eq!(c.attempts, 1, "fatal errors are not retried");
    assert_eq!(c.error.as_deref(), Some("c failed"));
    let events = engine.events(done.id).await.unwrap();
    assert_eq!(names(&events).last(), Some(&"workflow_failed"));
    assert!(engine.queue(done.id).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn compensation_sees_output_and_error() {
    type Seen = (String, Option<Payload>, Option<String>);
    let (engine, _store) = engine();
    let log = Log::default();
    let seen: Arc<parking_lot::Mutex<Vec<Seen>>> = Arc::default();
    trail_handler(&engine, "a", &log);
    failing_handler(&engine, "b", false, &log);
    let s = Arc::clone(&seen);
    engine.register_fn("undo", move |ctx: StepContext, _input: Payload| {
        let s = Arc::clone(&s);
        async move {
            let info = ctx.compensation().unwrap();
            assert_eq!(info.reason, CompensationReason::Failure);
            assert_eq!(
                ctx.idempotency_key(),
                format!("{}:{}", ctx.instance_id(), ctx.step())
            );
            s.lock().push((
                ctx.step().to_owned(),
                info.output.clone(),
                info.error.clone(),
            ));
            Ok(Payload::null())
        }
    });
    let def = Builder::new("info", 1)
        .step("a", "a")
        .on_failure("undo_a", "undo")
        .then("b", "b")
        .on_failure("undo_b", "undo")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "b");
    assert_eq!(seen[0].1, None);
    assert_eq!(seen[0].2.as_deref(), Some("b failed"));
    assert_eq!(seen[1].0, "a");
    assert_eq!(
        seen[1].1.as_ref().map(Payload::value),
        Some(&json!({"trail": ["a"]}))
    );
}

#[tokio::test(start_paused = true)]
async fn retries_then_succeeds() {
    let (engine, _store) = engine();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    engine.register_fn("flaky", move |ctx: StepContext, input: Payload| {
        let c = Arc::clone(&c);
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(ctx.attempt(), n, "attempt numbers count handler calls");
            if n < 3 {
                Err(HandlerError::from("not yet"))
            } else {
                Ok(input)
            }
        }
    });
    let def = Builder::new("retry", 1)
        .step("flaky", "flaky")
        .max_retries(3)
        .retry_delay_ms(1_000)
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let t0 = engine.clock().now();

    let done = engine
        .start_and_wait(&wf, json!({"x": 1}), WAIT)
        .await
        .unwrap();

    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let run = step(&engine, done.id, "flaky").await;
    assert_eq!(run.attempts, 3);
    let events = engine.events(done.id).await.unwrap();
    assert_eq!(
        step_events(&events, "flaky")
            .iter()
            .filter(|e| **e == "step_retry")
            .count(),
        2
    );
    // Two backoffs of about a second each (jitter ±20 %) passed on the virtual clock.
    assert!(
        engine.clock().now().since(t0) >= 1_600,
        "retry delays were honoured"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_exhausted_fail_the_instance() {
    let (engine, _store) = engine();
    let log = Log::default();
    failing_handler(&engine, "always", true, &log);
    let def = Builder::new("exhaust", 1)
        .step("always", "always")
        .max_retries(2)
        .retry_delay_ms(10)
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    assert_eq!(log.count("always"), 3, "max_retries = 2 means three calls");
}

#[tokio::test(start_paused = true)]
async fn timeout_is_enforced() {
    let (engine, _store) = engine();
    let token_fired = Arc::new(AtomicBool::new(false));
    let fired = Arc::clone(&token_fired);
    engine.register_fn("slow", move |ctx: StepContext, input: Payload| {
        let fired = Arc::clone(&fired);
        async move {
            let token = ctx.cancellation_token().clone();
            tokio::spawn(async move {
                token.cancelled().await;
                fired.store(true, Ordering::SeqCst);
            });
            tokio::time::sleep(Duration::from_hours(1)).await;
            Ok(input)
        }
    });
    let def = Builder::new("timeout", 1)
        .step("slow", "slow")
        .timeout_ms(1_000)
        .max_retries(0)
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let t0 = engine.clock().now();

    let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();

    assert_eq!(done.status, InstanceStatus::Failed);
    let run = step(&engine, done.id, "slow").await;
    assert_eq!(run.error.as_deref(), Some("timed out after 1000 ms"));
    let elapsed = engine.clock().now().since(t0);
    assert!(
        (1_000..3_600_000).contains(&elapsed),
        "failed at the deadline, not after the sleep: {elapsed} ms"
    );
    tokio::task::yield_now().await;
    assert!(
        token_fired.load(Ordering::SeqCst),
        "the handler's token fires at the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn panic_becomes_failed_attempt() {
    let (engine, _store) = engine();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    engine.register_fn("boom", move |_ctx: StepContext, _input: Payload| {
        let c = Arc::clone(&c);
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            panic!("kaboom");
        }
    });
    let def = Builder::new("panic", 1)
        .step("boom", "boom")
        .max_retries(1)
        .retry_delay_ms(10)
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a panic is a retryable failure"
    );
    let run = step(&engine, done.id, "boom").await;
    let err = run.error.unwrap();
    assert!(err.contains("kaboom"), "panic message kept: {err}");
    // The engine survived: it still runs workflows.
    engine.register_fn("ok", |_ctx, input| async move { Ok(input) });
    let wf2 = engine
        .register_workflow(
            Builder::new("after_panic", 1)
                .step("ok", "ok")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let done = engine.start_and_wait(&wf2, json!({}), WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn oversized_output_fails_without_retry() {
    let (engine, _store) = engine();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    engine.register_fn("big", move |_ctx: StepContext, _input: Payload| {
        let c = Arc::clone(&c);
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(Payload::new(json!({"blob": "x".repeat(10_000)})))
        }
    });
    let def = Builder::new("big", 1)
        .max_payload_bytes(1_000)
        .step("big", "big")
        .max_retries(3)
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let err = step(&engine, done.id, "big").await.error.unwrap();
    assert!(err.contains("exceeds the limit"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn oversized_input_is_refused_at_start() {
    let (engine, _store) = engine();
    let def = Builder::new("small", 1)
        .max_payload_bytes(100)
        .step("a", "a")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    let err = engine
        .start(&wf, json!({"blob": "x".repeat(1_000)}))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::PayloadTooLarge(_)), "{err:?}");
    let page = engine
        .instances(&floxy::InstanceQuery::default())
        .await
        .unwrap();
    assert!(page.items.is_empty());
}

#[tokio::test(start_paused = true)]
async fn idempotent_start_returns_the_same_instance() {
    let (engine, _store) = engine();
    let wf = engine
        .register_workflow(Builder::new("idem", 1).step("a", "a").build().unwrap())
        .await
        .unwrap();
    let first = engine
        .start_with(
            &wf,
            json!({"n": 1}),
            StartOptions::new().idempotency_key("order-42"),
        )
        .await
        .unwrap();
    let again = engine
        .start_with(
            &wf,
            json!({"n": 2}),
            StartOptions::new().idempotency_key("order-42"),
        )
        .await
        .unwrap();
    let other = engine
        .start_with(
            &wf,
            json!({"n": 3}),
            StartOptions::new().idempotency_key("order-43"),
        )
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_ne!(first, other);
    let rec = engine.instance(first).await.unwrap().unwrap();
    assert_eq!(
        rec.input.value(),
        &json!({"n": 1}),
        "the second start wrote nothing"
    );
    assert_eq!(rec.idempotency_key.as_deref(), Some("order-42"));
    let page = engine
        .instances(&floxy::InstanceQuery::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn start_and_wait_times_out_without_workers() {
    let (engine, _store) = engine();
    let wf = engine
        .register_workflow(Builder::new("idle", 1).step("a", "a").build().unwrap())
        .await
        .unwrap();
    let err = engine
        .start_and_wait(&wf, json!({}), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn register_workflow_is_idempotent_and_immutable() {
    let (engine, _store) = engine();
    let v1 = Builder::new("imm", 1).step("a", "a").build().unwrap();
    let id = engine.register_workflow(v1.clone()).await.unwrap();
    assert_eq!(engine.register_workflow(v1).await.unwrap(), id);
    let changed = Builder::new("imm", 1).step("a", "other").build().unwrap();
    let err = engine.register_workflow(changed).await.unwrap_err();
    assert!(
        matches!(err, EngineError::DefinitionConflict(ref w) if *w == id),
        "{err:?}"
    );
    let unknown = engine
        .start(&floxy::WorkflowId::new("nope", 1), json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, EngineError::UnknownWorkflow(_)),
        "{unknown:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn workflows_are_loaded_from_the_store_on_demand() {
    let (engine, store) = engine();
    let wf = engine
        .register_workflow(Builder::new("shared", 1).step("a", "a").build().unwrap())
        .await
        .unwrap();
    // A second engine (another process) on the same store never registered the workflow.
    let other = common::engine_on(store);
    let log = Log::default();
    trail_handler(&other, "a", &log);
    let id = other.start(&wf, json!({})).await.unwrap();
    assert_eq!(other.run_once().await.unwrap(), 1);
    assert_eq!(
        other.instance(id).await.unwrap().unwrap().status,
        InstanceStatus::Completed
    );
}

#[tokio::test(start_paused = true)]
async fn fork_join_all_collects_branch_outputs() {
    let (engine, _store) = engine();
    let log = Log::default();
    for h in ["left", "right", "after"] {
        trail_handler(&engine, h, &log);
    }
    let def = Builder::new("fork", 1)
        .fork("split", |f| {
            f.branch(|b| b.step("left", "left"))
                .branch(|b| b.step("right", "right"))
        })
        .join("joined", JoinStrategy::All)
        .then("after", "after")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    let after = step(&engine, done.id, "after").await;
    let outputs = &after.input.value()["outputs"];
    assert_eq!(outputs["left"], json!({"trail": ["left"]}));
    assert_eq!(outputs["right"], json!({"trail": ["right"]}));
    assert_eq!(log.entries().last().map(String::as_str), Some("after"));
}

struct Inspect(Arc<parking_lot::Mutex<Vec<String>>>);

#[floxy::async_trait]
impl floxy::Handler for Inspect {
    async fn execute(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError> {
        self.0.lock().push(format!(
            "{}|{}|{}|{}|{:?}|{}",
            ctx.workflow_id(),
            ctx.step(),
            ctx.attempt(),
            ctx.kind().as_str(),
            ctx.metadata().get("team"),
            ctx.idempotency_key() == format!("{}:{}", ctx.instance_id(), ctx.step()),
        ));
        Ok(input)
    }
}

#[tokio::test(start_paused = true)]
async fn struct_handler_sees_its_context() {
    let (engine, _store) = engine();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    engine.register_handler("inspect", Inspect(Arc::clone(&seen)));
    let def = Builder::new("ctx", 3)
        .step("look", "inspect")
        .metadata("team", "payments")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(
        seen.lock().clone(),
        ["ctx-v3|look|1|execute|Some(\"payments\")|true"]
    );
}

#[tokio::test(start_paused = true)]
async fn instance_ids_follow_creation_order() {
    let store = Arc::new(floxy_store_memory::MemoryStore::new());
    // A frozen clock: ordering within one millisecond comes from the v7 counter.
    let engine = floxy::Engine::builder(store)
        .clock(Arc::new(floxy::ManualClock::new(common::EPOCH)))
        .build();
    let wf = engine
        .register_workflow(Builder::new("ids", 1).step("a", "a").build().unwrap())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(engine.start(&wf, json!({})).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "UUIDv7 ids increase");
    assert!(ids.iter().all(|id| id.0.get_version_num() == 7));
    let ts = ids[0].0.get_timestamp().unwrap().to_unix();
    assert_eq!(
        ts.0 * 1_000 + u64::from(ts.1 / 1_000_000),
        1_700_000_000_000,
        "time from the clock"
    );
    let listed: Vec<_> = engine
        .instances(&floxy::InstanceQuery::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, ids);
}

#[tokio::test(start_paused = true)]
async fn cleanup_removes_only_old_terminal_instances() {
    let (engine, _store) = common::engine();
    engine.register_fn("ok", |_ctx, input: floxy::Payload| async move { Ok(input) });
    let done = engine
        .register_workflow(
            floxy::Builder::new("retention", 1)
                .step("a", "ok")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let waiting = engine
        .register_workflow(
            floxy::Builder::new("retention-human", 1)
                .wait_human("h")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let old = engine
        .start_and_wait(&done, serde_json::json!({}), common::WAIT)
        .await
        .unwrap();
    let live = engine
        .start_and_wait(&waiting, serde_json::json!({}), common::WAIT)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_hours(1)).await;
    let fresh = engine
        .start_and_wait(&done, serde_json::json!({}), common::WAIT)
        .await
        .unwrap();
    assert_eq!(
        engine
            .cleanup(std::time::Duration::from_mins(1))
            .await
            .unwrap(),
        1
    );
    assert!(
        engine.instance(old.id).await.unwrap().is_none(),
        "old terminal instance removed"
    );
    assert!(
        engine.instance(live.id).await.unwrap().is_some(),
        "waiting instance kept"
    );
    assert!(
        engine.instance(fresh.id).await.unwrap().is_some(),
        "recent instance kept"
    );
    assert!(engine.events(old.id).await.unwrap().is_empty());
    engine.shutdown(None).await;
}
