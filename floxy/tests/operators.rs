//! Operator commands: cancel, abort, human decisions, DLQ and requeue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Log, Started, WAIT, compensation_handler, engine, names, step, trail_handler};
use floxy::{
    Builder, Decision, DlqId, DlqQuery, EngineError, HandlerError, InstanceId, InstanceStatus,
    Payload, StepContext, StepStatus, TransitionError,
};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Registers `name` as a handler that raises `started`, waits for its cancellation token
/// and then returns an error (`returns_ok`: success) after recording that it saw it.
fn waits_for_cancel(
    engine: &floxy::Engine,
    name: &'static str,
    started: &Started,
    saw_cancel: &Arc<AtomicBool>,
    returns_ok: bool,
) {
    let started = started.clone();
    let saw = Arc::clone(saw_cancel);
    engine.register_fn(name, move |ctx: StepContext, input: Payload| {
        let started = started.clone();
        let saw = Arc::clone(&saw);
        async move {
            started.raise();
            ctx.cancelled().await;
            saw.store(true, Ordering::SeqCst);
            if returns_ok {
                Ok(input)
            } else {
                Err(HandlerError::retryable("stopped"))
            }
        }
    });
}

#[tokio::test(start_paused = true)]
async fn cancel_delivers_the_token_and_compensates() {
    let (engine, _store) = engine();
    let log = Log::default();
    let started = Started::default();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    trail_handler(&engine, "a", &log);
    compensation_handler(&engine, "undo_a", &log);
    waits_for_cancel(&engine, "b", &started, &saw_cancel, false);
    let def = Builder::new("cancel", 1)
        .lease_ttl_ms(3_000)
        .step("a", "a")
        .on_failure("undo_a", "undo_a")
        .then("b", "b")
        .then("c", "c")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();
    started.wait().await;

    let rec = engine
        .cancel(id, Some("customer changed their mind"))
        .await
        .unwrap();
    assert!(
        matches!(
            rec.status,
            InstanceStatus::Cancelling | InstanceStatus::Cancelled
        ),
        "{:?}",
        rec.status
    );

    let done = engine.wait_for(id, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Cancelled);
    assert!(
        saw_cancel.load(Ordering::SeqCst),
        "the running handler saw its token fire"
    );
    assert_eq!(log.entries(), ["a", "undo_a(cancel)"]);
    assert_eq!(step(&engine, id, "a").await.status, StepStatus::RolledBack);
    assert!(
        engine
            .steps(id)
            .await
            .unwrap()
            .iter()
            .all(|s| &*s.step != "c")
    );
    let events = engine.events(id).await.unwrap();
    let n = names(&events);
    assert!(n.contains(&"cancellation_started"));
    assert_eq!(n.last(), Some(&"workflow_cancelled"));
    assert!(engine.queue(id).await.unwrap().is_empty());

    // A second cancel on a terminal instance is an error saying so.
    let err = engine.cancel(id, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Transition(TransitionError::InstanceTerminal { .. })
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_from_another_process_reaches_the_handler_through_heartbeats() {
    let (engine, store) = engine();
    let started = Started::default();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    waits_for_cancel(&engine, "a", &started, &saw_cancel, false);
    let def = Builder::new("remote_cancel", 1)
        .lease_ttl_ms(3_000)
        .step("a", "a")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();
    started.wait().await;

    // An operator process on the same store: its commits do not wake this engine, and the
    // handler's token can only fire through this engine's heartbeat.
    let operator = floxy::Engine::builder(store)
        .clock(Arc::clone(engine.clock()))
        .worker_id("operator")
        .build();
    let t0 = engine.clock().now();
    operator.cancel(id, Some("remote")).await.unwrap();
    let done = engine.wait_for(id, WAIT).await.unwrap();

    assert_eq!(done.status, InstanceStatus::Cancelled);
    assert!(saw_cancel.load(Ordering::SeqCst));
    // One heartbeat period (a third of the TTL) at most, plus the poll interval.
    assert!(
        engine.clock().now().since(t0) <= 1_000 + 200,
        "took {} ms",
        engine.clock().now().since(t0)
    );
    engine.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn late_success_after_cancel_is_compensated() {
    let (engine, _store) = engine();
    let log = Log::default();
    let started = Started::default();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    trail_handler(&engine, "a", &log);
    compensation_handler(&engine, "undo_a", &log);
    compensation_handler(&engine, "undo_b", &log);
    // Sees the token but completes anyway.
    waits_for_cancel(&engine, "b", &started, &saw_cancel, true);
    let def = Builder::new("late", 1)
        .step("a", "a")
        .on_failure("undo_a", "undo_a")
        .then("b", "b")
        .on_failure("undo_b", "undo_b")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();
    started.wait().await;
    engine.cancel(id, None).await.unwrap();
    let done = engine.wait_for(id, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Cancelled);
    assert!(saw_cancel.load(Ordering::SeqCst));
    // The late success of b was recorded and compensated like the others, each once, in
    // reverse completion order: the rollback waits for b to report before undoing a.
    let entries = log.entries();
    assert_eq!(
        entries,
        vec!["a", "undo_b(cancel)", "undo_a(cancel)"],
        "{entries:?}"
    );
    assert_eq!(step(&engine, id, "b").await.status, StepStatus::RolledBack);
}

#[tokio::test(start_paused = true)]
async fn cancel_twice_is_a_no_op_reporting_the_state() {
    let (engine, _store) = engine();
    let started = Started::default();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    waits_for_cancel(&engine, "a", &started, &saw_cancel, true);
    let wf = engine
        .register_workflow(Builder::new("cancel2", 1).step("a", "a").build().unwrap())
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();
    started.wait().await;
    let first = engine.cancel(id, None).await.unwrap();
    let second = engine.cancel(id, None).await;
    match second {
        Ok(rec) => assert!(
            matches!(
                rec.status,
                InstanceStatus::Cancelling | InstanceStatus::Cancelled
            ),
            "{:?}",
            rec.status
        ),
        // The first cancel may already have finished the instance.
        Err(EngineError::Transition(TransitionError::InstanceTerminal { .. })) => {
            assert_eq!(first.status, InstanceStatus::Cancelled);
        }
        Err(e) => panic!("unexpected {e:?}"),
    }
    assert_eq!(
        engine.wait_for(id, WAIT).await.unwrap().status,
        InstanceStatus::Cancelled
    );
}

#[tokio::test(start_paused = true)]
async fn abort_stops_without_compensation() {
    let (engine, _store) = engine();
    let log = Log::default();
    let started = Started::default();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    trail_handler(&engine, "a", &log);
    compensation_handler(&engine, "undo_a", &log);
    waits_for_cancel(&engine, "b", &started, &saw_cancel, true);
    let def = Builder::new("abort", 1)
        .lease_ttl_ms(3_000)
        .step("a", "a")
        .on_failure("undo_a", "undo_a")
        .then("b", "b")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();
    started.wait().await;
    engine.abort(id, Some("operator")).await.unwrap();
    let done = engine.wait_for(id, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Aborted);
    assert_eq!(log.entries(), ["a"], "no compensation runs on abort");
    assert_eq!(step(&engine, id, "a").await.status, StepStatus::Completed);
    assert!(names(&engine.events(id).await.unwrap()).contains(&"abort_started"));
}

/// An abort committed by another process reaches the running handler at this engine's next
/// heartbeat, which finds the item removed (lease gone): its token fires, as for a cancel.
#[tokio::test(start_paused = true)]
async fn abort_from_another_process_reaches_the_handler_through_heartbeats() {
    let (engine, store) = engine();
    let started = Started::default();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    waits_for_cancel(&engine, "a", &started, &saw_cancel, true);
    let def = Builder::new("remote_abort", 1)
        .lease_ttl_ms(3_000)
        .step("a", "a")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, json!({})).await.unwrap();
    started.wait().await;
    let operator = floxy::Engine::builder(store)
        .clock(Arc::clone(engine.clock()))
        .worker_id("operator")
        .build();
    let t0 = engine.clock().now();
    let rec = operator.abort(id, Some("remote")).await.unwrap();
    assert_eq!(rec.status, InstanceStatus::Aborted);
    assert!(!saw_cancel.load(Ordering::SeqCst), "not before a heartbeat");
    while !saw_cancel.load(Ordering::SeqCst) {
        assert!(
            engine.clock().now().since(t0) <= 1_000 + 200,
            "no token after {} ms",
            engine.clock().now().since(t0)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The handler's late success is dropped: the step stays failed by the abort.
    engine.shutdown(std::time::Duration::from_secs(1)).await;
    let a = step(&engine, id, "a").await;
    assert_eq!(a.status, StepStatus::Failed);
    assert!(a.output.is_none());
}

#[tokio::test(start_paused = true)]
async fn human_confirm_continues_the_flow() {
    let (engine, _store) = engine();
    let log = Log::default();
    trail_handler(&engine, "prepare", &log);
    trail_handler(&engine, "ship", &log);
    let def = Builder::new("approval", 1)
        .step("prepare", "prepare")
        .wait_human("approve")
        .then("ship", "ship")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();

    let waiting = engine
        .start_and_wait(&wf, json!({"amount": 10}), WAIT)
        .await
        .unwrap();
    assert_eq!(waiting.status, InstanceStatus::Running);
    let id = waiting.id;
    assert_eq!(
        step(&engine, id, "approve").await.status,
        StepStatus::WaitingDecision
    );
    assert_eq!(log.entries(), ["prepare"]);

    engine
        .decide(
            id,
            "approve",
            "alice",
            Decision::Confirm,
            Some("looks good"),
        )
        .await
        .unwrap();
    let done = engine.wait_for(id, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(log.entries(), ["prepare", "ship"]);
    let approve = step(&engine, id, "approve").await;
    assert_eq!(approve.status, StepStatus::Confirmed);
    assert_eq!(
        approve.decision.as_ref().map(|d| d.decided_by.as_str()),
        Some("alice")
    );
    let ship = step(&engine, id, "ship").await;
    assert_eq!(ship.input.value()["decided_by"], json!("alice"));

    // Exactly one decision wins.
    let err = engine
        .decide(id, "approve", "bob", Decision::Reject, None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Transition(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn human_reject_aborts_and_second_decision_is_refused() {
    let (engine, _store) = engine();
    let log = Log::default();
    trail_handler(&engine, "ship", &log);
    let def = Builder::new("reject", 1)
        .wait_human("approve")
        .then("ship", "ship")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let waiting = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
    let id = waiting.id;

    let err = engine
        .decide(id, "nope", "alice", Decision::Confirm, None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Transition(_)), "{err:?}");

    engine
        .decide(
            id,
            "approve",
            "alice",
            Decision::Reject,
            Some("too expensive"),
        )
        .await
        .unwrap();
    let done = engine.wait_for(id, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Aborted);
    assert!(log.entries().is_empty());
    assert_eq!(
        step(&engine, id, "approve").await.status,
        StepStatus::Rejected
    );
    let err = engine
        .decide(id, "approve", "bob", Decision::Confirm, None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Transition(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn dlq_then_requeue_with_new_input() {
    let (engine, _store) = engine();
    let log = Log::default();
    let calls = Log::default();
    let c = calls.clone();
    engine.register_fn("charge", move |_ctx: StepContext, input: Payload| {
        let c = c.clone();
        async move {
            let amount = input.value()["amount"].as_i64().unwrap_or(0);
            c.push(format!("charge {amount}"));
            if amount > 100 {
                Err(HandlerError::fatal("amount over limit"))
            } else {
                Ok(input)
            }
        }
    });
    trail_handler(&engine, "notify", &log);
    let def = Builder::new("dlq", 1)
        .dlq(true)
        .step("charge", "charge")
        .then("notify", "notify")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();

    let parked = engine
        .start_and_wait(&wf, json!({"amount": 500}), WAIT)
        .await
        .unwrap();
    assert_eq!(parked.status, InstanceStatus::Dlq);
    let id = parked.id;
    assert_eq!(step(&engine, id, "charge").await.status, StepStatus::Paused);
    let page = engine
        .dlq(&DlqQuery {
            instance_id: Some(id),
            ..DlqQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let record = &page.items[0];
    assert_eq!(&*record.record.step, "charge");
    assert_eq!(record.record.error, "amount over limit");
    assert_eq!(record.record.input.value(), &json!({"amount": 500}));

    let rec = engine
        .requeue(record.id, Some(Payload::new(json!({"amount": 50}))))
        .await
        .unwrap();
    assert_eq!(rec.status, InstanceStatus::Running);
    let done = engine.wait_for(id, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(calls.entries(), ["charge 500", "charge 50"]);
    assert_eq!(log.entries(), ["notify"]);
    assert!(
        engine
            .dlq(&DlqQuery::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(names(&engine.events(id).await.unwrap()).contains(&"dlq_requeued"));

    // The record is gone: requeueing it again is an error.
    let err = engine.requeue(record.id, None).await.unwrap_err();
    assert!(matches!(err, EngineError::UnknownDlqRecord(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn unknown_ids_are_reported() {
    let (engine, _store) = engine();
    let ghost = InstanceId::from_u128(42);
    let err = engine.cancel(ghost, None).await.unwrap_err();
    assert!(
        matches!(err, EngineError::UnknownInstance(i) if i == ghost),
        "{err:?}"
    );
    let err = engine
        .decide(ghost, "s", "me", Decision::Confirm, None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::UnknownInstance(_)), "{err:?}");
    let err = engine.requeue(DlqId(9), None).await.unwrap_err();
    assert!(
        matches!(err, EngineError::UnknownDlqRecord(DlqId(9))),
        "{err:?}"
    );
    let err = engine.wait_for(ghost, WAIT).await.unwrap_err();
    assert!(matches!(err, EngineError::UnknownInstance(_)), "{err:?}");
    assert!(engine.instance(ghost).await.unwrap().is_none());
}
