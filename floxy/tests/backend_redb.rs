//! The `redb` feature: a saga with a rollback runs on a real file through the facade, and
//! its result is there after the file is reopened.
#![cfg(feature = "redb")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{
    Builder, Engine, HandlerError, InstanceStatus, Payload, RedbOptions, RedbStore, Store,
};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_survives_a_reopen_of_the_redb_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floxy.redb");
    let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
    let engine = Engine::new(Arc::new(store.clone()));
    engine.register_fn("ok", |_ctx, input: Payload| async move { Ok(input) });
    engine.register_fn("boom", |_ctx, _input| async move {
        Err::<Payload, _>(HandlerError::fatal("no"))
    });
    let wf = engine
        .register_workflow(
            Builder::new("redb-saga", 1)
                .step("a", "ok")
                .on_failure("ua", "ok")
                .then("b", "boom")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let done = engine
        .start_and_wait(&wf, serde_json::json!({"x": 1}), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    engine.shutdown(None).await;
    drop(engine);
    store.close().await.unwrap();
    let reopened = RedbStore::open(&path, RedbOptions::default()).unwrap();
    let inst = reopened
        .get_instance(done.id)
        .await
        .unwrap()
        .expect("instance persisted");
    assert_eq!(inst.status, InstanceStatus::Failed);
    let steps = reopened.list_steps(done.id).await.unwrap();
    assert!(
        steps
            .iter()
            .any(|s| &*s.step == "a" && s.status == floxy::StepStatus::RolledBack)
    );
    reopened.close().await.unwrap();
}
