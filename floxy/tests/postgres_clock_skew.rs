//! Clock skew between processes on one PostgreSQL database (issue 18, item 2).
//!
//! Two worker processes whose clocks differ from the real time by `+2 × TTL` and `-2 × TTL`
//! (lease TTL 2 s, skew ±4 s, handlers that run 0.9 s: longer than a heartbeat period, a
//! third of the TTL, and shorter than the TTL) run three-step sagas from one database. With
//! the engine's correction (it measures its offset from the database's `clock_timestamp()`
//! and works in the database's time) no live lease is reclaimed, no attempt is counted that
//! did not fail, and every instance completes. The same run with the correction turned off
//! (`clock_sync_interval_ms(0)`) reclaims live leases: the check that the test can fail.
//!
//! The worker processes are this test binary started again with the filter
//! `skew_worker_process_entry` and `FLOXY_SKEW_*` variables (as in `postgres_multiprocess`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{
    Builder, Clock, Engine, InstanceStatus, ManualClock, MemoryStore, Payload, StepContext, Store,
    SystemClock, Timestamp,
};
use floxy_store_postgres::testing::{database_url, test_store};
use floxy_store_postgres::{Layout, PostgresConfig, PostgresStore};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENV_URL: &str = "FLOXY_SKEW_URL";
const ENV_SCHEMA: &str = "FLOXY_SKEW_SCHEMA";
const ENV_ID: &str = "FLOXY_SKEW_ID";
const ENV_SKEW_MS: &str = "FLOXY_SKEW_MS";
const ENV_CORRECT: &str = "FLOXY_SKEW_CORRECT";
const ENV_WORKERS: &str = "FLOXY_SKEW_WORKERS";
const ENV_EAGER: &str = "FLOXY_SKEW_EAGER";

const LEASE_TTL_MS: u64 = 2_000;
/// Twice the lease TTL.
const SKEW_MS: i64 = 4_000;
/// Longer than a heartbeat period (TTL / 3 ≈ 667 ms), shorter than the TTL.
const HANDLER_MS: u64 = 900;
const INSTANCES: usize = 24;
/// Gap between two starts: work keeps arriving while both processes run, so the process
/// whose clock runs ahead (more workers) often has a free worker polling for work while
/// the other holds leases.
const START_GAP: Duration = Duration::from_millis(200);
/// How long a worker process runs at most.
const WORKER_DEADLINE: Duration = Duration::from_mins(1);

/// This host's clock, off by a fixed amount: what a machine with a badly set clock reads.
#[derive(Debug)]
struct SkewedClock {
    skew_ms: i64,
}

impl Clock for SkewedClock {
    fn now(&self) -> Timestamp {
        Timestamp(SystemClock.now().as_millis() + self.skew_ms)
    }
}

fn saga() -> floxy::WorkflowDefinition {
    Builder::new("skew", 1)
        .lease_ttl_ms(LEASE_TTL_MS)
        .step("one", "slow")
        .then("two", "slow")
        .then("three", "slow")
        .build()
        .unwrap()
}

/// Instances not settled yet, or -1 while the test is still starting instances.
async fn unfinished(store: &PostgresStore) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM \"{s}\".test_started_all) THEN \
           (SELECT count(*) FROM \"{s}\".workflow_instances \
            WHERE status NOT IN ('completed', 'failed', 'cancelled', 'aborted', 'dlq')) \
         ELSE -1 END",
        s = store.schema()
    ))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// The worker process's `main` (a no-op unless started by the tests below).
#[test]
fn skew_worker_process_entry() {
    let (Ok(url), Ok(schema), Ok(id), Ok(skew)) = (
        std::env::var(ENV_URL),
        std::env::var(ENV_SCHEMA),
        std::env::var(ENV_ID),
        std::env::var(ENV_SKEW_MS),
    ) else {
        return;
    };
    let skew_ms: i64 = skew.parse().unwrap();
    let correct = std::env::var(ENV_CORRECT).as_deref() != Ok("0");
    let eager = std::env::var(ENV_EAGER).as_deref() == Ok("1");
    let workers: usize = std::env::var(ENV_WORKERS).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = PostgresStore::connect(&url, PostgresConfig::default().schema(schema))
            .await
            .unwrap();
        let mut builder = Engine::builder(Arc::new(store.clone()))
            .worker_id(&id)
            .workers(workers)
            .batch_size(workers)
            .eager_claims(eager)
            .poll_interval_ms(50)
            .clock(Arc::new(SkewedClock { skew_ms }));
        if !correct {
            builder = builder.clock_sync_interval_ms(0);
        }
        let engine = builder.build();
        let (pool, s, worker) = (store.pool().clone(), store.schema().to_owned(), id.clone());
        engine.register_fn("slow", move |ctx: StepContext, input: Payload| {
            let (pool, s, worker) = (pool.clone(), s.clone(), worker.clone());
            async move {
                sqlx::query(&format!(
                    "INSERT INTO \"{s}\".test_handler_calls (instance_id, step, attempt, worker) \
                     VALUES ($1, $2, $3, $4)"
                ))
                .bind(ctx.instance_id().0)
                .bind(ctx.step())
                .bind(i32::try_from(ctx.attempt()).unwrap())
                .bind(&worker)
                .execute(&pool)
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(HANDLER_MS)).await;
                Ok(input)
            }
        });
        engine.register_workflow(saga()).await.unwrap();
        engine.start_workers().unwrap();
        let start = Instant::now();
        let mut offset_logged = false;
        while start.elapsed() < WORKER_DEADLINE {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !offset_logged && let Some(offset) = engine.clock_offset_ms() {
                sqlx::query(&format!(
                    "INSERT INTO \"{}\".test_offsets (worker, offset_ms) VALUES ($1, $2)",
                    store.schema()
                ))
                .bind(&id)
                .bind(offset)
                .execute(store.pool())
                .await
                .unwrap();
                offset_logged = true;
            }
            if unfinished(&store).await == 0 {
                break;
            }
        }
        let report = engine.shutdown(Duration::from_secs(5)).await;
        eprintln!(
            "skewed worker {id} ({skew_ms:+} ms, correction {correct}) stopped: {report:?}, offset {:?}",
            engine.clock_offset_ms()
        );
    });
}

/// One worker process of the test.
struct Worker {
    id: &'static str,
    skew_ms: i64,
    workers: usize,
    eager: bool,
}

fn spawn_worker(schema: &str, w: &Worker, correct: bool) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "skew_worker_process_entry",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ENV_URL, database_url())
        .env(ENV_SCHEMA, schema)
        .env(ENV_ID, w.id)
        .env(ENV_SKEW_MS, w.skew_ms.to_string())
        .env(ENV_WORKERS, w.workers.to_string())
        .env(ENV_EAGER, if w.eager { "1" } else { "0" })
        .env(ENV_CORRECT, if correct { "1" } else { "0" })
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

/// What a run left in the database.
#[derive(Debug)]
struct Outcome {
    completed: usize,
    /// `lease_expired` events: live leases reclaimed (no process died).
    lease_expired: i64,
    /// Step runs with `attempts != 1`.
    retried_steps: i64,
    /// Handler calls beyond one per step run.
    extra_calls: i64,
    /// Handler calls per worker.
    calls_by_worker: Vec<(String, i64)>,
    /// Offsets the workers measured.
    offsets: Vec<(String, i64)>,
}

/// Runs two worker processes, `ahead` (clock `+SKEW_MS`, 8 workers, every step through a
/// claim) and `behind` (clock `-SKEW_MS`, 4 workers, eager claims: the next step of a chain
/// is leased in the commit of the previous one), with or without the correction, starts
/// [`INSTANCES`] sagas [`START_GAP`] apart (alternately from an engine with each skewed
/// clock), waits until they settle and reads the outcome.
async fn run(correct: bool) -> Outcome {
    let store = test_store(Layout::Plain).await;
    let s = store.schema().to_owned();
    for ddl in [
        format!(
            "CREATE TABLE \"{s}\".test_handler_calls (instance_id uuid NOT NULL, \
             step text NOT NULL, attempt int NOT NULL, worker text NOT NULL)"
        ),
        format!("CREATE TABLE \"{s}\".test_offsets (worker text NOT NULL, offset_ms bigint)"),
        format!("CREATE TABLE \"{s}\".test_started_all (at timestamptz DEFAULT now())"),
    ] {
        sqlx::query(&ddl).execute(store.pool()).await.unwrap();
    }
    // Instances are started on both hosts: alternately by an engine with each skewed clock.
    let starters: Vec<Engine> = [SKEW_MS, -SKEW_MS]
        .into_iter()
        .map(|skew_ms| {
            let b = Engine::builder(Arc::new(store.clone()))
                .worker_id(format!("starter{skew_ms:+}"))
                .clock(Arc::new(SkewedClock { skew_ms }));
            if correct {
                b
            } else {
                b.clock_sync_interval_ms(0)
            }
            .build()
        })
        .collect();
    let wf = starters[0].register_workflow(saga()).await.unwrap();
    let ahead = Worker {
        id: "ahead",
        skew_ms: SKEW_MS,
        workers: 8,
        eager: false,
    };
    let behind = Worker {
        id: "behind",
        skew_ms: -SKEW_MS,
        workers: 4,
        eager: true,
    };
    let mut workers = [
        spawn_worker(&s, &ahead, correct),
        spawn_worker(&s, &behind, correct),
    ];
    let mut ids = Vec::new();
    for i in 0..INSTANCES {
        let starter = &starters[i % 2];
        ids.push(
            starter
                .start(&wf, serde_json::json!({ "n": i }))
                .await
                .unwrap(),
        );
        tokio::time::sleep(START_GAP).await;
    }
    sqlx::query(&format!(
        "INSERT INTO \"{s}\".test_started_all DEFAULT VALUES"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    for w in &mut workers {
        wait_child(w, WORKER_DEADLINE + Duration::from_secs(30)).await;
    }

    let mut completed = 0;
    for id in &ids {
        let rec = store.get_instance(*id).await.unwrap().unwrap();
        completed += usize::from(rec.status == InstanceStatus::Completed);
    }
    let scalar = |sql: String| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let lease_expired = scalar(format!(
        "SELECT count(*) FROM \"{s}\".workflow_events WHERE kind = 'lease_expired'"
    ))
    .await;
    let retried_steps = scalar(format!(
        "SELECT count(*) FROM \"{s}\".workflow_steps WHERE attempts <> 1"
    ))
    .await;
    let extra_calls = scalar(format!(
        "SELECT count(*) - count(DISTINCT (instance_id, step)) FROM \"{s}\".test_handler_calls"
    ))
    .await;
    let calls_by_worker = sqlx::query_as(&format!(
        "SELECT worker, count(*) FROM \"{s}\".test_handler_calls GROUP BY 1 ORDER BY 1"
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    let offsets = sqlx::query_as(&format!(
        "SELECT worker, offset_ms FROM \"{s}\".test_offsets ORDER BY 1"
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    Outcome {
        completed,
        lease_expired,
        retried_steps,
        extra_calls,
        calls_by_worker,
        offsets,
    }
}

/// With the correction: every instance completes, every step run took exactly one attempt
/// and one handler call, no lease was reclaimed, both processes worked, and each measured
/// its offset from the database's clock (about minus its skew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_processes_agree_on_lease_expiry() {
    let o = run(true).await;
    eprintln!("with the correction: {o:?}");
    assert_eq!(o.completed, INSTANCES, "every instance completes: {o:?}");
    assert_eq!(o.lease_expired, 0, "no live lease is reclaimed: {o:?}");
    assert_eq!(o.retried_steps, 0, "every step run took one attempt: {o:?}");
    assert_eq!(o.extra_calls, 0, "one handler call per step run: {o:?}");
    assert_eq!(o.calls_by_worker.len(), 2, "both processes worked: {o:?}");
    for (worker, offset) in &o.offsets {
        let expected = if worker == "ahead" { -SKEW_MS } else { SKEW_MS };
        assert!(
            (offset - expected).abs() < 250,
            "{worker} measured offset {offset} ms, expected about {expected}"
        );
    }
    assert_eq!(
        o.offsets.len(),
        2,
        "both processes measured an offset: {o:?}"
    );
}

/// The same run without the correction fails the checks above: the process whose clock runs
/// ahead sees every lease of the one behind as expired and reclaims it (counting an attempt
/// that did not fail). Shows that the test above can fail, and why the correction is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_correction_live_leases_are_reclaimed() {
    let o = run(false).await;
    eprintln!("without the correction: {o:?}");
    assert!(o.offsets.is_empty(), "nothing measured: {o:?}");
    assert!(
        o.lease_expired > 0 && o.retried_steps > 0,
        "without the correction, live leases of the process behind are reclaimed: {o:?}"
    );
}

/// In-process: an engine over PostgreSQL whose clock source is far off (a manual clock at
/// 5 s after the epoch) works in the database's time after its first claim, and exports the
/// offset as `floxy_store_clock_offset_seconds`.
#[test]
fn engine_clock_follows_the_database_clock() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = metrics::set_default_local_recorder(&recorder);
    rt.block_on(async {
        let store = test_store(Layout::Plain).await;
        let source = Arc::new(ManualClock::new(Timestamp(5_000)));
        let engine = Engine::builder(Arc::new(store.clone()))
            .clock(source.clone())
            .build();
        assert_eq!(engine.clock_offset_ms(), None);
        assert_eq!(engine.clock().now(), Timestamp(5_000), "not measured yet");
        assert_eq!(engine.run_once().await.unwrap(), 0);
        let offset = engine.clock_offset_ms().expect("measured before the claim");
        let db_now = store.clock().await.unwrap().unwrap();
        let now = engine.clock().now();
        assert!(
            (db_now.as_millis() - now.as_millis()).abs() < 250,
            "engine {now} vs database {db_now}"
        );
        assert_eq!(now.as_millis(), 5_000 + offset);
        // The source still moves the clock; a new measurement catches the change up.
        source.advance(Duration::from_mins(1));
        assert_eq!(engine.clock().now().as_millis(), 65_000 + offset);
        let resynced = engine.sync_clock().await.unwrap().unwrap();
        assert!((resynced - (offset - 60_000)).abs() < 250, "{resynced}");
    });
    let gauge = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, ..)| k.key().name() == floxy::metrics::STORE_CLOCK_OFFSET)
        .map(|(.., v)| v)
        .expect("the offset gauge is recorded");
    let metrics_util::debugging::DebugValue::Gauge(v) = gauge else {
        panic!("not a gauge: {gauge:?}")
    };
    // The database clock is ~1.7e9 s after the epoch, the source at 65 s.
    assert!(v.into_inner() > 1.0e9, "{v:?}");
}

/// A store without a clock (memory) is asked once and gets no correction: the engine's
/// clock is its source, exactly (virtual and manual clocks stay deterministic).
#[tokio::test]
async fn no_correction_without_a_store_clock() {
    let source = Arc::new(ManualClock::new(Timestamp(5_000)));
    let engine = Engine::builder(Arc::new(MemoryStore::new()))
        .clock(source.clone())
        .build();
    assert_eq!(engine.run_once().await.unwrap(), 0);
    assert_eq!(engine.sync_clock().await.unwrap(), None);
    assert_eq!(engine.clock_offset_ms(), None);
    assert_eq!(engine.clock().now(), Timestamp(5_000));
    source.advance(Duration::from_millis(7));
    assert_eq!(engine.clock().now(), Timestamp(5_007));
}
