//! Several worker processes on one database, and a worker killed with `SIGKILL`.
//!
//! The worker processes are this test binary started again with the filter
//! `worker_process_entry` and `FLOXY_PG_WORKER_*` variables: that test is the worker's
//! `main` (run directly, without those variables, it returns at once).
//!
//! Every handler call is logged by the handler itself into a side table
//! (`test_handler_calls`) on its own connection, outside any store transaction, like a real
//! side effect; the checks read that log and the store's tables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{Builder, Engine, InstanceStatus, Payload, StepContext, Store};
use floxy_store_postgres::testing::{database_url, test_store};
use floxy_store_postgres::{Layout, PostgresConfig, PostgresStore};
use sqlx::Row;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENV_URL: &str = "FLOXY_PG_WORKER_URL";
const ENV_SCHEMA: &str = "FLOXY_PG_WORKER_SCHEMA";
const ENV_ID: &str = "FLOXY_PG_WORKER_ID";
const ENV_MODE: &str = "FLOXY_PG_WORKER_MODE";
const ENV_DEADLINE: &str = "FLOXY_PG_WORKER_DEADLINE_SECS";

/// The three-step saga every process registers.
fn saga() -> floxy::WorkflowDefinition {
    Builder::new("mp", 1)
        .step("one", "work")
        .then("two", "work")
        .then("three", "work")
        .build()
        .unwrap()
}

/// A one-step workflow with a short lease, for the kill test.
fn short_lease() -> floxy::WorkflowDefinition {
    Builder::new("kill", 1)
        .lease_ttl_ms(1_500)
        .step("slow", "slow")
        .build()
        .unwrap()
}

async fn log_call(pool: &sqlx::PgPool, schema: &str, ctx: &StepContext, worker: &str) {
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".test_handler_calls (instance_id, step, attempt, worker) \
         VALUES ($1, $2, $3, $4)"
    ))
    .bind(ctx.instance_id().0)
    .bind(ctx.step())
    .bind(i32::try_from(ctx.attempt()).unwrap())
    .bind(worker)
    .execute(pool)
    .await
    .unwrap();
}

fn engine_for(store: &PostgresStore, id: &str) -> Engine {
    Engine::builder(Arc::new(store.clone()))
        .worker_id(id)
        .workers(16)
        .batch_size(16)
        .poll_interval_ms(50)
        .build()
}

/// Registers the handlers of `mode`: `work` logs and returns its input; `slow` logs and,
/// in mode `hang`, never returns (until the process is killed).
fn register(engine: &Engine, store: &PostgresStore, worker: &str, mode: &str) {
    for name in ["work", "slow"] {
        let pool = store.pool().clone();
        let schema = store.schema().to_owned();
        let worker = worker.to_owned();
        let hang = mode == "hang" && name == "slow";
        engine.register_fn(name, move |ctx: StepContext, input: Payload| {
            let pool = pool.clone();
            let schema = schema.clone();
            let worker = worker.clone();
            async move {
                log_call(&pool, &schema, &ctx, &worker).await;
                if hang {
                    tokio::time::sleep(Duration::from_mins(10)).await;
                }
                Ok(input)
            }
        });
    }
}

async fn unfinished(store: &PostgresStore) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".workflow_instances \
         WHERE status NOT IN ('completed', 'failed', 'cancelled', 'aborted')",
        store.schema()
    ))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// The worker process's `main` (a no-op unless started by the tests below).
#[test]
fn worker_process_entry() {
    let (Ok(url), Ok(schema), Ok(id)) = (
        std::env::var(ENV_URL),
        std::env::var(ENV_SCHEMA),
        std::env::var(ENV_ID),
    ) else {
        return;
    };
    let mode = std::env::var(ENV_MODE).unwrap_or_default();
    let deadline: u64 = std::env::var(ENV_DEADLINE)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = PostgresStore::connect(&url, PostgresConfig::default().schema(schema))
            .await
            .unwrap();
        let engine = engine_for(&store, &id);
        register(&engine, &store, &id, &mode);
        engine.register_workflow(saga()).await.unwrap();
        engine.register_workflow(short_lease()).await.unwrap();
        engine.start_workers().unwrap();
        eprintln!("worker {id} started");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(deadline) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if mode != "hang" && unfinished(&store).await == 0 {
                break;
            }
        }
        let report = engine.shutdown(Duration::from_secs(5)).await;
        eprintln!("worker {id} stopped: {report:?}");
    });
}

fn spawn_worker(schema: &str, id: &str, mode: &str, deadline_secs: u64) -> Child {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args([
            "worker_process_entry",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ENV_URL, database_url())
        .env(ENV_SCHEMA, schema)
        .env(ENV_ID, id)
        .env(ENV_MODE, mode)
        .env(ENV_DEADLINE, deadline_secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn wait_child(child: &mut Child, timeout: Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "worker process failed: {status}");
            return;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("worker process did not finish within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_call_log(store: &PostgresStore) {
    sqlx::query(&format!(
        "CREATE TABLE \"{}\".test_handler_calls (instance_id uuid NOT NULL, step text NOT NULL, \
         attempt int NOT NULL, worker text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
        store.schema()
    ))
    .execute(store.pool())
    .await
    .unwrap();
}

/// Three worker processes run 300 three-step sagas (900 step runs) from one database:
/// every instance completes, every step run completes exactly once (one `step_completed`
/// event, one handler call, one claim), and the queue ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_the_work() {
    const INSTANCES: usize = 300;
    let store = test_store(Layout::Plain).await;
    create_call_log(&store).await;
    let starter = engine_for(&store, "starter");
    let wf = starter.register_workflow(saga()).await.unwrap();
    starter.register_workflow(short_lease()).await.unwrap();
    let mut ids = Vec::with_capacity(INSTANCES);
    for i in 0..INSTANCES {
        ids.push(
            starter
                .start(&wf, serde_json::json!({ "n": i }))
                .await
                .unwrap(),
        );
    }
    let mut workers: Vec<Child> = (0..3)
        .map(|w| spawn_worker(store.schema(), &format!("proc-{w}"), "count", 90))
        .collect();
    for w in &mut workers {
        wait_child(w, Duration::from_mins(2)).await;
    }

    for id in &ids {
        let rec = store.get_instance(*id).await.unwrap().unwrap();
        assert_eq!(rec.status, InstanceStatus::Completed, "instance {id} lost");
    }
    let s = store.schema();
    let dup_completions: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT instance_id, step FROM \"{s}\".workflow_events \
         WHERE kind = 'step_completed' GROUP BY 1, 2 HAVING count(*) <> 1) x"
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(dup_completions, 0, "a step run completed twice");
    let completions: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{s}\".workflow_events WHERE kind = 'step_completed'"
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(completions, i64::try_from(INSTANCES * 3).unwrap());
    let calls = sqlx::query(&format!(
        "SELECT count(*), count(DISTINCT (instance_id, step)), count(DISTINCT worker) \
         FROM \"{s}\".test_handler_calls"
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    let (n, distinct, workers_used): (i64, i64, i64) = (calls.get(0), calls.get(1), calls.get(2));
    assert_eq!(n, distinct, "a handler ran twice for one step run");
    assert_eq!(distinct, i64::try_from(INSTANCES * 3).unwrap());
    assert!(
        workers_used >= 2,
        "work was spread over the processes ({workers_used} used)"
    );
    let starts: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{s}\".workflow_events WHERE kind = 'step_started'"
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        starts, completions,
        "every step run was claimed exactly once"
    );
    let queue = store.stats().await.unwrap();
    assert_eq!(
        (queue.queue_ready, queue.queue_leased),
        (0, 0),
        "queue drained"
    );
}

/// A worker process is killed (`SIGKILL`) while its handler runs: the lease (1.5 s) expires,
/// another worker reclaims the step, the lost attempt is counted (`lease_expired`, attempt
/// 1), and the retry completes the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_lease_expires_and_step_is_reclaimed() {
    let store = test_store(Layout::Plain).await;
    create_call_log(&store).await;
    let starter = engine_for(&store, "starter");
    starter.register_workflow(saga()).await.unwrap();
    let wf = starter.register_workflow(short_lease()).await.unwrap();
    let id = starter.start(&wf, serde_json::json!({})).await.unwrap();

    let mut victim = spawn_worker(store.schema(), "victim", "hang", 120);
    let s = store.schema().to_owned();
    let waiting_since = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{s}\".test_handler_calls WHERE worker = 'victim'"
        ))
        .fetch_one(store.pool())
        .await
        .unwrap();
        if n > 0 {
            break;
        }
        assert!(
            waiting_since.elapsed() < Duration::from_mins(1),
            "victim never ran the handler"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let steps = store.list_steps(id).await.unwrap();
    assert_eq!(steps[0].status, floxy::StepStatus::Running);
    let leased = store.list_queue(id).await.unwrap();
    let first_lease = leased[0].lease.clone().expect("the item is leased");
    assert_eq!(&*first_lease.owner, "victim");
    victim.kill().unwrap(); // SIGKILL
    let _ = victim.wait();

    let mut rescuer = spawn_worker(store.schema(), "rescuer", "count", 60);
    wait_child(&mut rescuer, Duration::from_secs(90)).await;

    let rec = store.get_instance(id).await.unwrap().unwrap();
    assert_eq!(rec.status, InstanceStatus::Completed);
    let run = &store.list_steps(id).await.unwrap()[0];
    assert!(run.attempts >= 2, "the lost attempt is counted: {run:?}");
    let events = store.list_events(id, None, 0).await.unwrap();
    let expired = events
        .iter()
        .find(|e| e.kind == floxy::EventKind::LeaseExpired)
        .expect("a lease_expired event");
    assert_eq!(expired.attempt, Some(1), "attempt 1 was lost");
    assert!(
        expired.at >= first_lease.expires_at,
        "reclaimed only after the lease expired ({} < {})",
        expired.at,
        first_lease.expires_at
    );
    let calls: Vec<(String, i32)> = sqlx::query_as(&format!(
        "SELECT worker, attempt FROM \"{s}\".test_handler_calls ORDER BY at"
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(calls[0], ("victim".to_owned(), 1));
    assert!(
        calls[1..].iter().all(|(w, a)| w == "rescuer" && *a >= 2),
        "later calls are retries by the rescuer: {calls:?}"
    );
    assert_eq!(
        calls.len(),
        2,
        "one lost call, one successful retry: {calls:?}"
    );
}

/// Claims racing commits of the same instances: 150 instances of a four-branch fork (whose
/// branches finish, and are claimed, while sibling commits of the same instance run), on two
/// engines with their own pools and committers. Every instance completes, every step run
/// completes exactly once, every handler runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_race_claims_against_commits() {
    const INSTANCES: usize = 150;
    let store = test_store(Layout::Plain).await;
    create_call_log(&store).await;
    let other = PostgresStore::connect(
        &database_url(),
        PostgresConfig::default().schema(store.schema()),
    )
    .await
    .unwrap();
    let def = Builder::new("forky", 1)
        .step("first", "work")
        .fork("split", |f| {
            f.branch(|b| b.step("b1", "work"))
                .branch(|b| b.step("b2", "work").then("b2x", "work"))
                .branch(|b| b.step("b3", "work"))
                .branch(|b| b.step("b4", "work"))
        })
        .join("joined", floxy::JoinStrategy::All)
        .then("last", "work")
        .build()
        .unwrap();
    let engines = [engine_for(&store, "e1"), engine_for(&other, "e2")];
    for (e, s) in engines.iter().zip([&store, &other]) {
        register(e, s, e.worker_id(), "count");
        e.register_workflow(def.clone()).await.unwrap();
        e.start_workers().unwrap();
    }
    let wf = def.id();
    let starts = (0..INSTANCES).map(|i| engines[i % 2].start(&wf, serde_json::json!({ "n": i })));
    let ids: Vec<_> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let t0 = Instant::now();
    while unfinished(&store).await > 0 {
        assert!(
            t0.elapsed() < Duration::from_mins(2),
            "instances did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for e in &engines {
        e.shutdown(Duration::from_secs(5)).await;
    }
    for id in &ids {
        let rec = store.get_instance(*id).await.unwrap().unwrap();
        assert_eq!(rec.status, InstanceStatus::Completed, "instance {id}");
    }
    let s = store.schema();
    let per_step: Vec<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT count(*), count(DISTINCT (instance_id, step)) FROM \"{s}\".workflow_events \
         WHERE kind = 'step_completed' AND step IN ('first','b1','b2','b2x','b3','b4','last') \
         UNION ALL SELECT count(*), count(DISTINCT (instance_id, step)) \
         FROM \"{s}\".test_handler_calls"
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    let expected = i64::try_from(INSTANCES * 7).unwrap();
    assert_eq!(per_step[0], (expected, expected), "step completions");
    assert_eq!(per_step[1], (expected, expected), "handler calls");
}
