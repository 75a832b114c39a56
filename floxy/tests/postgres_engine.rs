//! The engine on the PostgreSQL store: LISTEN/NOTIFY wakeups of an idle dispatcher, and
//! eager claims next to plain claims on one schema (moved here from the store crate's tests,
//! so that the store crate does not depend on the runtime).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{Builder, Engine, InstanceStatus, Payload};
use floxy_store_postgres::testing::{database_url, pool, test_store};
use floxy_store_postgres::{Layout, PostgresConfig, PostgresStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An idle engine in another "process" (its own pool and store value) runs work started
/// elsewhere at once: its dispatcher waits on `Store::wait_for_work` (LISTEN/NOTIFY), not only
/// on its 30 s poll. Without the wakeup the step would start after about 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_wakes_on_work_queued_by_another_process() {
    let store = test_store(Layout::Plain).await;
    let other = PostgresStore::with_config(
        pool(&database_url(), 4).await.unwrap(),
        PostgresConfig::default().schema(store.schema()),
    )
    .unwrap();
    let def = || Builder::new("wake", 1).step("only", "h").build().unwrap();
    let worker = Engine::builder(Arc::new(store.clone()))
        .worker_id("idle-worker")
        .poll_interval_ms(30_000)
        .build();
    worker.register_fn("h", |_ctx, input: Payload| async move { Ok(input) });
    worker.register_workflow(def()).await.unwrap();
    // Starts no workers: only queues work.
    let starter = Engine::new(Arc::new(other));
    let wf = starter.register_workflow(def()).await.unwrap();
    worker.start_workers().unwrap();
    // Let the dispatcher find the queue empty and go idle on its long poll.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let id = starter.start(&wf, serde_json::json!({})).await.unwrap();
    let done = worker.wait_for(id, Duration::from_secs(20)).await.unwrap();
    let took = t0.elapsed();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert!(
        took < Duration::from_secs(5),
        "woken by NOTIFY, not by the 30 s poll ({took:?})"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// With eager claims on, engine workers take the next step of a chain in the commit of the
/// current one: every saga completes, and every step ran exactly once (one `step_started`,
/// one `step_completed`), next to an engine without eager claims on the same schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_engine_runs_every_step_once() {
    let store = test_store(Layout::Plain).await;
    let def = || {
        Builder::new("chain", 1)
            .step("one", "h")
            .then("two", "h")
            .then("three", "h")
            .build()
            .unwrap()
    };
    let mut engines = Vec::new();
    for (name, eager) in [("eager", true), ("plain", false)] {
        let e = Engine::builder(Arc::new(store.clone()))
            .worker_id(name)
            .workers(8)
            .batch_size(4)
            .poll_interval_ms(50)
            .eager_claims(eager)
            .build();
        e.register_fn("h", |_ctx, input: Payload| async move { Ok(input) });
        e.register_workflow(def()).await.unwrap();
        engines.push(e);
    }
    let wf = engines[0].register_workflow(def()).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(engines[0].start(&wf, serde_json::json!({})).await.unwrap());
    }
    for e in &engines {
        e.start_workers().unwrap();
    }
    for id in &ids {
        let done = engines[0]
            .wait_for(*id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(done.status, InstanceStatus::Completed);
    }
    let s = store.schema();
    let (runs, distinct): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(DISTINCT (instance_id, step)) FROM \"{s}\".workflow_events \
         WHERE kind = 'step_started'"
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        (runs, distinct),
        (120, 120),
        "each of 3 × 40 steps started once"
    );
    let completed: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{s}\".workflow_events WHERE kind = 'step_completed'"
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(completed, 120, "and completed once");
    for e in &engines {
        e.shutdown(Duration::from_secs(5)).await;
    }
}
