//! The validators catch what they should: each check is fed an end state that breaks it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{
    Builder, Engine, HandlerError, InstanceStatus, MemoryStore, Payload, StepContext, Timestamp,
    TokioClock, WorkKind,
};
use floxy_chaos::ledger::Ledger;
use floxy_chaos::validate::{Limits, check_instance};
use floxy_chaos::workload::WorkflowSpec;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

async fn setup(
    fail_b: bool,
) -> (
    Engine,
    Arc<MemoryStore>,
    floxy::InstanceId,
    floxy::CompiledWorkflow,
) {
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder(Arc::clone(&store) as Arc<dyn floxy::Store>)
        .clock(Arc::new(TokioClock::with_epoch(Timestamp(
            1_700_000_000_000,
        ))))
        .worker_id("v")
        .build();
    engine.register_fn("ok", |_c: StepContext, p: Payload| async move { Ok(p) });
    engine.register_fn("bad", move |_c: StepContext, p: Payload| async move {
        if fail_b {
            Err(HandlerError::fatal("no"))
        } else {
            Ok(p)
        }
    });
    let def = Builder::new("v", 1)
        .step("a", "ok")
        .on_failure("undo-a", "ok")
        .then("b", "bad")
        .max_retries(1)
        .build()
        .unwrap();
    let compiled = floxy::CompiledWorkflow::compile(def.clone()).unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, serde_json::json!({})).await.unwrap();
    (engine, store, id, compiled)
}

fn spec(c: &floxy::CompiledWorkflow) -> WorkflowSpec {
    WorkflowSpec {
        definition: c.definition().clone(),
        workload: floxy_chaos::workload::Builtin::Simple,
        tasks: vec!["a".into(), "b".into()],
        effect_steps: BTreeSet::from(["a".to_owned()]),
    }
}

fn kinds(v: &[floxy_chaos::validate::Violation]) -> Vec<String> {
    v.iter().map(|x| x.kind.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn healthy_instance_passes_and_broken_ledger_fails() {
    let (engine, store, id, c) = setup(false).await;
    let done = engine.wait_for(id, Duration::from_mins(1)).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    let ledger = Ledger::new();
    ledger.apply(id, "a", 5);
    ledger.record_call(id, "a", WorkKind::Execute, 1);
    let (_, v) = check_instance(
        store.as_ref(),
        &c,
        Some(&spec(&c)),
        Some(&ledger),
        id,
        &Limits::default(),
    )
    .await
    .unwrap();
    assert!(v.is_empty(), "{v:?}");
    // A completed step whose effect was reversed, and too many calls.
    ledger.reverse(id, "a");
    for a in 2..=6 {
        ledger.record_call(id, "b", WorkKind::Execute, a);
    }
    let (_, v) = check_instance(
        store.as_ref(),
        &c,
        Some(&spec(&c)),
        Some(&ledger),
        id,
        &Limits::default(),
    )
    .await
    .unwrap();
    let k = kinds(&v);
    assert!(k.contains(&"ledger".to_owned()), "{k:?}");
    assert!(k.contains(&"handler_calls".to_owned()), "{k:?}");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn rollback_depth_limit_and_scope() {
    let (engine, store, id, c) = setup(true).await;
    let done = engine.wait_for(id, Duration::from_mins(1)).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    assert!(done.rollback_depth >= 1);
    let limits = Limits {
        max_rollback_depth: 0,
        ..Limits::default()
    };
    let (_, v) = check_instance(store.as_ref(), &c, None, None, id, &limits)
        .await
        .unwrap();
    assert_eq!(kinds(&v), ["rollback_depth"]);
    // A leftover effect of a rolled-back step.
    let ledger = Ledger::new();
    ledger.apply(id, "a", 5);
    let (_, v) = check_instance(
        store.as_ref(),
        &c,
        Some(&spec(&c)),
        Some(&ledger),
        id,
        &Limits::default(),
    )
    .await
    .unwrap();
    assert!(kinds(&v).contains(&"ledger".to_owned()), "{v:?}");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn unsettled_instance_is_stuck() {
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder(Arc::clone(&store) as Arc<dyn floxy::Store>)
        .clock(Arc::new(TokioClock::with_epoch(Timestamp(
            1_700_000_000_000,
        ))))
        .build();
    let def = Builder::new("s", 1).step("a", "nobody").build().unwrap();
    let c = floxy::CompiledWorkflow::compile(def.clone()).unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    // No workers: it never moves.
    let id = engine.start(&wf, serde_json::json!({})).await.unwrap();
    let (_, v) = check_instance(store.as_ref(), &c, None, None, id, &Limits::default())
        .await
        .unwrap();
    assert_eq!(kinds(&v), ["stuck"]);
}
