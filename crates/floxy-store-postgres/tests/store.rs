//! Behaviour specific to the PostgreSQL store: group commit isolation, the one-by-one
//! fallback, LISTEN/NOTIFY wakeups, error mapping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy_core::conformance::fixtures::{at, iid, next, start};
use floxy_core::machine::TransitionError;
use floxy_core::model::InstanceStatus;
use floxy_core::store::{Store, StoreError, WorkWait};
use floxy_store_postgres::testing::{database_url, pool, test_store, test_store_with};
use floxy_store_postgres::{Layout, PostgresConfig, PostgresStore};
use std::time::{Duration, Instant};

/// 400 concurrent updates of 200 instances (two per instance, so batches must serialise
/// them), a third of them refused by their transition function: the refused ones change
/// nothing, all others apply, and each instance's two updates both land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_isolates_rejections() {
    let store = test_store(Layout::Plain).await;
    let creates =
        (0..200_u128).map(|n| store.create_instance(start(iid(n + 1), at(0), &[("a", "h")])));
    for r in futures::future::join_all(creates).await {
        r.unwrap();
    }
    let updates = (0..400_u128).map(|k| {
        let id = iid(k % 200 + 1);
        let refuse = k % 3 == 0;
        store.update_instance(
            id,
            Box::new(move |s| {
                if refuse {
                    return Err(TransitionError::InstanceTerminal {
                        status: InstanceStatus::Completed,
                    });
                }
                let mut t = next(s, at(1));
                t.instance.rollback_depth += 1;
                Ok(t)
            }),
        )
    });
    let results = futures::future::join_all(updates).await;
    let mut expected = vec![0_u32; 200];
    for (k, r) in results.iter().enumerate() {
        if k % 3 == 0 {
            assert!(
                matches!(r, Err(StoreError::Rejected(_))),
                "update {k}: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "update {k}: {r:?}");
            expected[k % 200] += 1;
        }
    }
    for (n, want) in expected.iter().enumerate() {
        let rec = store
            .get_instance(iid(n as u128 + 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.rollback_depth, *want, "instance {n}");
        assert_eq!(rec.version, u64::from(*want) + 1, "instance {n}");
    }
}

/// A transition that breaks a constraint the checks cannot see (an idempotency key taken by
/// another instance) fails alone: the batch falls back to one transaction per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraint_failure_falls_back_to_single_commits() {
    let store = test_store_with(Layout::Plain, PostgresConfig::default().committers(1)).await;
    let mut holder = start(iid(1), at(0), &[]);
    holder.instance.idempotency_key = Some("taken".into());
    store.create_instance(holder).await.unwrap();
    for n in 2..=50 {
        store
            .create_instance(start(iid(n), at(0), &[]))
            .await
            .unwrap();
    }
    let updates = (2..=50_u128).map(|n| {
        store.update_instance(
            iid(n),
            Box::new(move |s| {
                let mut t = next(s, at(1));
                if n == 25 {
                    t.instance.idempotency_key = Some("taken".into());
                }
                Ok(t)
            }),
        )
    });
    let results = futures::future::join_all(updates).await;
    for (i, r) in results.iter().enumerate() {
        let n = i + 2;
        if n == 25 {
            assert!(matches!(r, Err(StoreError::Conflict(_))), "culprit: {r:?}");
        } else {
            assert!(r.is_ok(), "update of {n}: {r:?}");
        }
    }
    let rec = store.get_instance(iid(25)).await.unwrap().unwrap();
    assert_eq!(
        (rec.version, rec.idempotency_key),
        (1, None),
        "the culprit changed nothing"
    );
}

/// An idle waiter wakes when another process (another pool) queues work, and not otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_idle_workers() {
    let store = test_store(Layout::Plain).await;
    let other = PostgresStore::with_config(
        pool(&database_url(), 4).await.unwrap(),
        PostgresConfig::default().schema(store.schema()),
    )
    .unwrap();
    // Starts the listener; nothing happened yet.
    assert_eq!(store.wait_for_work(300).await, WorkWait::TimedOut);
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            (store.wait_for_work(20_000).await, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    other
        .create_instance(start(iid(1), at(0), &[("a", "h")]))
        .await
        .unwrap();
    let (woke, after) = waiter.await.unwrap();
    assert_eq!(woke, WorkWait::Notified, "the waiter was notified");
    assert!(after < Duration::from_secs(5), "woken promptly ({after:?})");
    // A commit that queues nothing does not notify.
    let quiet = {
        let store = store.clone();
        tokio::spawn(async move { store.wait_for_work(700).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    other
        .update_instance(iid(1), Box::new(|s| Ok(next(s, at(1)))))
        .await
        .unwrap();
    assert_eq!(
        quiet.await.unwrap(),
        WorkWait::TimedOut,
        "no work, no wakeup"
    );
}

/// An unreachable server is a retryable error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts: sqlx::postgres::PgConnectOptions = format!("postgres://postgres@127.0.0.1:{port}/x")
        .parse()
        .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(opts);
    let store = PostgresStore::new(pool);
    let err = store.get_instance(iid(1)).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let err = store
        .create_instance(start(iid(1), at(0), &[]))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

/// Invalid schema names are refused before any SQL is built with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_names_are_validated() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:1/x")
        .unwrap();
    for bad in ["", "Floxy", "a-b", "x\"; DROP TABLE y; --", "pg_temp"] {
        assert!(
            PostgresStore::with_config(pool.clone(), PostgresConfig::default().schema(bad))
                .is_err(),
            "{bad:?}"
        );
    }
    assert!(PostgresStore::with_config(pool, PostgresConfig::default().schema("tenant_1")).is_ok());
}

/// An idle engine in another "process" (its own pool and store value) runs work started
/// elsewhere at once: its dispatcher waits on `Store::wait_for_work` (LISTEN/NOTIFY), not only
/// on its 30 s poll. Without the wakeup the step would start after about 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_wakes_on_work_queued_by_another_process() {
    use floxy::{Builder, Engine, Payload};
    use std::sync::Arc;

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
