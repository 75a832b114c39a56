//! Payloads nested past `MAX_PAYLOAD_DEPTH` never reach a store, on every backend: a start
//! with such an input is refused with a typed error and leaves nothing behind; a handler
//! that returns such an output fails its step for good (no retry) and the instance rolls
//! back; everything written reads back — on redb after a reopen of the file, where a
//! payload deeper than the row decoder's bound used to be written and then read as
//! `Corrupt`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::floxy_core::model::{MAX_PAYLOAD_DEPTH, PayloadTooLarge};
use floxy::{
    Builder, Engine, EngineError, InstanceStatus, Payload, RedbOptions, RedbStore, StepStatus,
    Store,
};
use floxy_store_postgres::Layout;
use floxy_store_postgres::testing::test_store;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn nested(levels: usize) -> Value {
    let mut v = json!("leaf");
    for _ in 0..levels {
        // Built by hand: `json!` would serialize every interpolated value again.
        v = Value::Object(std::iter::once(("k".to_owned(), Value::Array(vec![v]))).collect());
    }
    v
}

/// Runs the checks on `store`; returns the failed instance's id.
async fn check(store: Arc<dyn Store>) -> floxy::InstanceId {
    let engine = Engine::new(Arc::clone(&store));
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    // 150 objects each holding an array: 300 levels, past serde_json's 128 and redb's 256.
    engine.register_fn("deep", move |_ctx, _input: Payload| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Ok(Payload::new(nested(150))) }
    });
    engine.register_fn("ok", |_ctx, input: Payload| async move { Ok(input) });
    let wf = engine
        .register_workflow(
            Builder::new("depth", 1)
                .step("a", "ok")
                .on_failure("undo_a", "ok")
                .then("deep", "deep")
                .max_retries(3)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();

    // A start nested past the bound: refused, nothing created.
    let err = engine
        .start(&wf, nested(MAX_PAYLOAD_DEPTH / 2 + 1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::PayloadTooLarge(PayloadTooLarge::Depth {
                max_depth: MAX_PAYLOAD_DEPTH
            })
        ),
        "{err:?}"
    );
    let page = engine
        .instances(&floxy::InstanceQuery::default())
        .await
        .unwrap();
    assert!(page.items.is_empty(), "{:?}", page.items);

    // At the bound: accepted; the deep handler output fails the step without a retry.
    engine.start_workers().unwrap();
    let done = engine
        .start_and_wait(&wf, nested(MAX_PAYLOAD_DEPTH / 2), WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a rejected output is final"
    );
    let steps = engine.steps(done.id).await.unwrap();
    let deep = steps.iter().find(|s| &*s.step == "deep").unwrap();
    assert_eq!(deep.status, StepStatus::Failed);
    let error = deep.error.as_deref().unwrap();
    assert!(error.contains("deeper than"), "{error}");
    let a = steps.iter().find(|s| &*s.step == "a").unwrap();
    assert_eq!(a.status, StepStatus::RolledBack);
    assert_eq!(
        a.output.as_ref().map(Payload::value),
        Some(&nested(MAX_PAYLOAD_DEPTH / 2))
    );
    engine.shutdown(Duration::from_secs(5)).await;
    done.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_refuses_payloads_nested_past_the_bound() {
    check(Arc::new(floxy_store_memory::MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_refuses_payloads_nested_past_the_bound_and_reads_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("depth.redb");
    let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
    let id = check(Arc::new(store.clone())).await;
    store.close().await.unwrap();
    let reopened = RedbStore::open(&path, RedbOptions::default()).unwrap();
    let inst = reopened.get_instance(id).await.unwrap().unwrap();
    assert_eq!(inst.status, InstanceStatus::Failed);
    let steps = reopened.list_steps(id).await.unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    reopened.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_payloads_nested_past_the_bound() {
    let store = test_store(Layout::Plain).await;
    let id = check(Arc::new(store.clone())).await;
    let steps = store.list_steps(id).await.unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
}
