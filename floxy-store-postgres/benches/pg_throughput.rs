//! Throughput and latency of the PostgreSQL store, next to raw PostgreSQL limits measured by
//! `scripts/pgbench-raw.sh` on the same server in the same run.
//!
//! ```text
//! cargo bench -p floxy-store-postgres --bench pg_throughput
//! FLOXY_BENCH_SECS=10 FLOXY_BENCH_SAGAS=30000 cargo bench -p floxy-store-postgres --bench pg_throughput
//! ```
//!
//! It starts a throwaway cluster (`fsync=on`, see `floxy_store_postgres::testing`) unless
//! `FLOXY_TEST_DATABASE_URL` is set, then measures:
//!
//! 1. **claim + complete** of no-op steps: a queue pre-filled with at least 100 k ready
//!    one-step instances; each worker claims `batch` items and commits, for each, the full
//!    transition the state machine computes for a successful result (step completed, queue
//!    row deleted, instance completed, `step_completed` + `workflow_completed` events);
//!    batch 1 and 100, 1 / 4 / 16 concurrent workers;
//! 2. **end-to-end** three-step sagas per second through the `floxy` engine (start, three
//!    claims, three handler calls, three commits each);
//! 3. **claim latency** (p50 / p99 of single claims, p50 of 100-item claims) with 1 k, 10 k,
//!    100 k and 1 M queued items;
//! 4. **raw pgbench**: `scripts/pgbench-raw.sh` against the same server.
//!
//! Knobs: `FLOXY_BENCH_SECS` (per throughput run, default 5), `FLOXY_BENCH_SAGAS` (default
//! 20 000), `FLOXY_BENCH_MAX_QUEUE` (largest queue of the latency table, default 1 000 000),
//! `FLOXY_BENCH_TRACE=1` (print the time of every claim and of its commits),
//! `FLOXY_BENCH_COMMITTERS` (group-commit tasks, default 4), `FLOXY_BENCH_E2E_WORKERS` /
//! `FLOXY_BENCH_E2E_BATCH` (engine of the end-to-end run, default 1024 / 256),
//! `FLOXY_BENCH_EAGER` (`0`: the engine's eager claims off; default 1, the engine default),
//! `FLOXY_BENCH_PARTS` (comma-separated subset of `claims,e2e,latency,raw`; default all),
//! `FLOXY_BENCH_BATCHES` / `FLOXY_BENCH_WORKERS` (comma-separated lists for the claim +
//! complete runs, default `1,100` / `1,4,16`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use floxy::{Builder, Engine, Payload};
use floxy_core::graph::CompiledWorkflow;
use floxy_core::machine::{self, Input, WorkOutcome};
use floxy_core::model::{InstanceId, Timestamp};
use floxy_core::store::{ClaimRequest, Store};
use floxy_store_postgres::testing::{TEST_DATABASE_URL_ENV, TestCluster, pool};
use floxy_store_postgres::{Layout, PostgresConfig, PostgresStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn part(name: &str) -> bool {
    std::env::var("FLOXY_BENCH_PARTS").map_or(true, |p| p.split(',').any(|x| x.trim() == name))
}

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Timestamp(i64::try_from(ms).unwrap())
}

async fn store_on(url: &str, schema: &str, pool_size: u32) -> PostgresStore {
    let store = PostgresStore::with_config(
        pool(url, pool_size).await.unwrap(),
        PostgresConfig::default()
            .schema(schema)
            .committers(env_u64("FLOXY_BENCH_COMMITTERS", 4) as usize),
    )
    .unwrap();
    store.migrate(Layout::Plain).await.unwrap();
    store
}

async fn ready(store: &PostgresStore) -> u64 {
    store.stats().await.unwrap().queue_ready
}

/// Starts `n` one-step instances through the store (group-committed creates).
async fn prefill(store: &PostgresStore, wf: &Arc<CompiledWorkflow>, n: u64) {
    const CHUNK: u64 = 2_000;
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK);
        let t = now();
        let creates = (0..k).map(|_| {
            let tr = machine::start(
                wf,
                InstanceId(uuid::Uuid::now_v7()),
                Payload::null(),
                None,
                t,
            )
            .unwrap();
            store.create_instance(tr)
        });
        for r in futures::future::join_all(creates).await {
            r.unwrap();
        }
        left -= k;
    }
}

async fn vacuum(store: &PostgresStore) {
    for t in ["workflow_queue", "workflow_instances", "workflow_steps"] {
        sqlx::query(&format!("VACUUM ANALYZE \"{}\".{t}", store.schema()))
            .execute(store.pool())
            .await
            .unwrap();
    }
}

async fn worker(
    store: PostgresStore,
    wf: Arc<CompiledWorkflow>,
    owner: String,
    batch: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let handlers: Vec<Arc<str>> = vec![Arc::from("noop")];
    let owner: Arc<str> = Arc::from(owner);
    while !stop.load(Ordering::Relaxed) {
        let req = ClaimRequest {
            owner: Arc::clone(&owner),
            handlers: handlers.clone(),
            limit: batch,
            now: now(),
        };
        let t_claim = Instant::now();
        let claimed = store.claim(&req).await.unwrap();
        let claim_us = t_claim.elapsed().as_micros() as u64;
        if claimed.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let commits = claimed.into_iter().map(|c| {
            let input = Input::WorkDone {
                key: c.item.key.clone(),
                token: c.item.lease.as_ref().unwrap().token,
                attempt: c.item.attempt,
                outcome: WorkOutcome::Succeeded(Payload::null()),
            };
            let wf = Arc::clone(&wf);
            let t = now();
            store.update_instance(
                c.item.key.instance_id,
                Box::new(move |snap| machine::apply(&wf, snap, &input, t)),
            )
        });
        let t_commit = Instant::now();
        let ok = futures::future::join_all(commits)
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count();
        if std::env::var_os("FLOXY_BENCH_TRACE").is_some() {
            eprintln!(
                "claim {claim_us} us, commit {} us",
                t_commit.elapsed().as_micros()
            );
        }
        done.fetch_add(ok as u64, Ordering::Relaxed);
    }
}

/// Claim + complete throughput (completions per second).
async fn claim_complete(
    store: &PostgresStore,
    wf: &Arc<CompiledWorkflow>,
    batch: usize,
    workers: usize,
    secs: u64,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            tokio::spawn(worker(
                store.clone(),
                Arc::clone(wf),
                format!("bench-{w}"),
                batch,
                Arc::clone(&stop),
                Arc::clone(&done),
            ))
        })
        .collect();
    // Warm-up, then measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_count = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let n = done.load(Ordering::Relaxed) - start_count;
    let el = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / el
}

/// End-to-end three-step sagas per second through the engine.
async fn sagas(url: &str, n: u64) -> f64 {
    let store = store_on(url, "bench_e2e", 64).await;
    let engine = Engine::builder(Arc::new(store.clone()))
        .workers(env_u64("FLOXY_BENCH_E2E_WORKERS", 1024) as usize)
        .batch_size(env_u64("FLOXY_BENCH_E2E_BATCH", 256) as usize)
        .poll_interval_ms(20)
        .eager_claims(env_u64("FLOXY_BENCH_EAGER", 1) == 1)
        .worker_id("bench-e2e")
        .build();
    engine.register_fn("noop", |_ctx, input: Payload| async move { Ok(input) });
    let wf = engine
        .register_workflow(
            Builder::new("saga", 1)
                .step("one", "noop")
                .then("two", "noop")
                .then("three", "noop")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let t0 = Instant::now();
    let starters = 64;
    let per = n / starters;
    let mut tasks = Vec::new();
    for _ in 0..starters {
        let engine = engine.clone();
        let wf = wf.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                engine.start(&wf, serde_json::json!({})).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = per * starters;
    let q = format!(
        "SELECT count(*) FROM \"{}\".workflow_instances WHERE status = 'completed'",
        store.schema()
    );
    loop {
        let c: i64 = sqlx::query_scalar(&q)
            .fetch_one(store.pool())
            .await
            .unwrap();
        if u64::try_from(c).unwrap() >= total {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "sagas did not finish"
        );
        // The count is a full scan competing with the engine for the server's CPU: poll
        // sparingly (±0.1 s on a run of many seconds).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let el = t0.elapsed().as_secs_f64();
    engine.shutdown(Duration::from_secs(10)).await;
    total as f64 / el
}

/// Adds `n` ready one-step items (instances, step runs, queue rows) with SQL.
async fn add_items(store: &PostgresStore, n: u64, t: Timestamp) {
    let s = store.schema();
    let sql = format!(
        "WITH ids AS (SELECT gen_random_uuid() AS id, g FROM generate_series(1, $1::int8) g),
         i AS (INSERT INTO \"{s}\".workflow_instances (id, workflow_id, status, input, created_at,
                 updated_at, version, completion_seq, rollback_depth, branches)
               SELECT id, 'lat-v1', 'running', '{{}}', $2, $2, 1, 0, 0, '[]' FROM ids),
         st AS (INSERT INTO \"{s}\".workflow_steps (instance_id, step, status, attempts,
                 compensation_attempts, input, cancel_requested, created_at)
               SELECT id, 'only', 'pending', 0, 0, '{{}}', false, $2 FROM ids)
         INSERT INTO \"{s}\".workflow_queue (instance_id, step, kind, workflow_id, handler, run_at,
             priority, order_key, attempt, lease_ttl_ms, cancel_requested)
         SELECT id, 'only', 'execute', 'lat-v1', 'noop', $2 - g, 50, $2 - g - 100000, 0, 600000,
                false FROM ids"
    );
    const CHUNK: u64 = 200_000;
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK);
        sqlx::query(&sql)
            .bind(i64::try_from(k).unwrap())
            .bind(t.as_millis())
            .execute(store.pool())
            .await
            .unwrap();
        left -= k;
    }
    vacuum(store).await;
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Claim latency (ms: p50 and p99 of single claims, p50 of 100-item claims) per queue size.
async fn latency(url: &str, max_queue: u64) -> Vec<(u64, f64, f64, f64)> {
    let store = store_on(url, "bench_latency", 8).await;
    let mut out = Vec::new();
    let mut size = 1_000;
    while size <= max_queue {
        let t = now();
        let have = ready(&store).await;
        add_items(&store, size.saturating_sub(have), t).await;
        let req = |limit| ClaimRequest {
            owner: Arc::from("lat"),
            handlers: vec![Arc::from("noop")],
            limit,
            now: t,
        };
        // Warm the statement cache.
        store.claim(&req(1)).await.unwrap();
        let mut one = Vec::new();
        for _ in 0..300 {
            let t0 = Instant::now();
            let got = store.claim(&req(1)).await.unwrap();
            one.push(t0.elapsed().as_secs_f64() * 1e3);
            assert_eq!(got.len(), 1);
        }
        let mut hundred = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            let got = store.claim(&req(100)).await.unwrap();
            hundred.push(t0.elapsed().as_secs_f64() * 1e3);
            assert_eq!(got.len(), 100);
        }
        out.push((
            size,
            pct(&mut one, 0.5),
            pct(&mut one, 0.99),
            pct(&mut hundred, 0.5),
        ));
        size *= 10;
    }
    out
}

fn pgbench(url: &str, secs: u64, clients: &[u64]) -> Vec<(String, u64, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pgbench-raw.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(url)
        .arg(secs.to_string())
        .args(clients.iter().map(u64::to_string))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench-raw.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut name = None;
            let mut clients = None;
            let mut jobs = None;
            for (i, w) in l.split_whitespace().enumerate() {
                if i == 1 {
                    name = Some(w.to_owned());
                } else if let Some(v) = w.strip_prefix("clients=") {
                    clients = v.parse().ok();
                } else if let Some(v) = w.strip_prefix("jobs_per_s=") {
                    jobs = v.parse().ok();
                }
            }
            Some((name?, clients?, jobs?))
        })
        .collect()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = env_u64("FLOXY_BENCH_SECS", 5);
    let n_sagas = env_u64("FLOXY_BENCH_SAGAS", 20_000);
    let max_queue = env_u64("FLOXY_BENCH_MAX_QUEUE", 1_000_000);
    let cluster;
    let url = match std::env::var(TEST_DATABASE_URL_ENV) {
        Ok(u) => u,
        Err(_) => {
            cluster = TestCluster::start().unwrap_or_else(|e| panic!("{e}"));
            cluster.url("postgres")
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("floxy-store-postgres benchmark (fsync=on, {secs} s per throughput run)");
        // 1. claim + complete.
        let store = store_on(&url, "bench_claims", 64).await;
        let def = Builder::new("noop", 1)
            .step("only", "noop")
            .build()
            .unwrap();
        store.put_definition(&def).await.unwrap();
        let wf = Arc::new(CompiledWorkflow::compile(def).unwrap());
        let mut ours = Vec::new();
        let batches = if part("claims") {
            env_list("FLOXY_BENCH_BATCHES", &[1, 100])
        } else {
            vec![]
        };
        let worker_counts = env_list("FLOXY_BENCH_WORKERS", &[1, 4, 16]);
        for &batch in &batches {
            let batch = batch as usize;
            for &workers in &worker_counts {
                let workers = workers as usize;
                let want = 100_000 + if batch == 1 { 5_000 } else { 50_000 } * secs;
                let have = ready(&store).await;
                if have < want {
                    let t0 = Instant::now();
                    prefill(&store, &wf, want - have).await;
                    vacuum(&store).await;
                    eprintln!(
                        "  prefilled {} instances in {:.1}s",
                        want - have,
                        t0.elapsed().as_secs_f64()
                    );
                }
                let queued = ready(&store).await;
                let before = store.group_commit_stats();
                let rate = claim_complete(&store, &wf, batch, workers, secs).await;
                let after = store.group_commit_stats();
                let per_batch = (after.calls - before.calls) as f64
                    / (after.batches - before.batches).max(1) as f64;
                eprintln!(
                    "  batch {batch:>3}, {workers:>2} workers, {queued} queued: {rate:.0} steps/s \
                     ({per_batch:.1} commits per transaction)"
                );
                ours.push((batch, workers, queued, rate));
            }
        }
        drop(store);
        // 2. end-to-end sagas.
        let saga_rate = if part("e2e") {
            sagas(&url, n_sagas).await
        } else {
            0.0
        };
        eprintln!("  e2e: {saga_rate:.0} sagas/s");
        // 3. claim latency.
        let lat = if part("latency") {
            latency(&url, max_queue).await
        } else {
            vec![]
        };
        // 4. raw pgbench on the same server.
        let raw = if part("raw") {
            pgbench(&url, secs, &worker_counts)
        } else {
            vec![]
        };

        println!();
        println!("## claim + complete, no-op steps (steps/s; raw = pgbench jobs/s, same server)");
        println!("| batch | workers | queued at start | floxy | raw pgbench | floxy / raw |");
        println!("|---:|---:|---:|---:|---:|---:|");
        for (batch, workers, queued, rate) in &ours {
            let name = if *batch == 1 { "single" } else { "batch100" };
            let r = raw
                .iter()
                .find(|(n, c, _)| n == name && *c == *workers as u64)
                .map_or(0.0, |x| x.2);
            println!(
                "| {batch} | {workers} | {queued} | {rate:.0} | {r:.0} | {:.0}% |",
                if r > 0.0 { rate / r * 100.0 } else { 0.0 }
            );
        }
        println!();
        println!("## end to end");
        println!("| three-step sagas | sagas/s |");
        println!("|---:|---:|");
        println!("| {n_sagas} | {saga_rate:.0} |");
        println!();
        println!("## claim latency vs queue size (ms)");
        println!("| queued | claim 1 p50 | claim 1 p99 | claim 100 p50 |");
        println!("|---:|---:|---:|---:|");
        for (size, p50, p99, h50) in &lat {
            println!("| {size} | {p50:.2} | {p99:.2} | {h50:.2} |");
        }
    });
}
