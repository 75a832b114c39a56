//! The PostgreSQL store next to raw PostgreSQL limits measured by `scripts/pgbench-raw.sh`
//! on the same server in the same run (moved from
//! `floxy-store-postgres/benches/pg_throughput.rs`):
//!
//! 1. **claim + complete** of no-op steps (part `ceilings`): a queue pre-filled with at
//!    least 20 k ready one-step instances (more for longer runs); each worker claims `batch` items and commits,
//!    for each, the full transition the state machine computes for a successful result
//!    (step completed, queue row deleted, instance completed, `step_completed` +
//!    `workflow_completed` events); batch 1 and 100, each worker count of the run, for
//!    `--secs` seconds each; next to
//! 2. **raw pgbench** (part `ceilings`): `scripts/pgbench-raw.sh` against the same server,
//!    the same claim sizes and client counts;
//! 3. **claim latency** (part `latency`): p50 / p99 of single claims, p50 of 100-item claims,
//!    with 1 k, 10 k, ... up to `--max-queue` queued items.
//!
//! The server is a throwaway cluster (`fsync=on`, see `floxy_store_postgres::testing`)
//! unless `FLOXY_TEST_DATABASE_URL` is set. The end-to-end sagas of the old bench are the
//! `sagas` part of `stores.rs` now, run on every backend.

use floxy::{Builder, Payload};
use floxy_core::graph::CompiledWorkflow;
use floxy_core::machine::{self, Input, WorkOutcome};
use floxy_core::model::{InstanceId, Timestamp};
use floxy_core::store::{ClaimRequest, ClaimedItem, Store, StoreError};
use floxy_store_postgres::testing::{TEST_DATABASE_URL_ENV, TestCluster, pool};
use floxy_store_postgres::{Layout, PostgresConfig, PostgresStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Opts;
use crate::report::Report;

pub(crate) fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Timestamp(i64::try_from(ms).unwrap())
}

/// A server for the PostgreSQL parts: `FLOXY_TEST_DATABASE_URL`, or a throwaway cluster
/// (kept alive by the returned value). `Err`: why there is none.
pub(crate) fn server() -> Result<(Option<TestCluster>, String), String> {
    if let Ok(u) = std::env::var(TEST_DATABASE_URL_ENV) {
        return Ok((None, u));
    }
    let cluster = TestCluster::start().map_err(|e| e.to_string())?;
    let url = cluster.url("postgres");
    Ok((Some(cluster), url))
}

/// A migrated store (plain layout, the default 4 committers) in a fresh schema.
pub(crate) async fn fresh_store(url: &str, pool_size: u32) -> PostgresStore {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let schema = format!("bench_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    store_on(url, &schema, pool_size).await
}

/// Drops the store's schema and closes its pool.
pub(crate) async fn drop_store(store: &PostgresStore) {
    sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", store.schema()))
        .execute(store.pool())
        .await
        .unwrap();
    store.pool().close().await;
}

pub(crate) async fn store_on(url: &str, schema: &str, pool_size: u32) -> PostgresStore {
    let store = PostgresStore::with_config(
        pool(url, pool_size).await.unwrap(),
        PostgresConfig::default().schema(schema),
    )
    .unwrap();
    store.migrate(Layout::Plain).await.unwrap();
    store
}

async fn ready(store: &PostgresStore) -> u64 {
    store.stats().await.unwrap().queue_ready
}

/// Starts `n` one-step instances through the store (group-committed creates).
pub(crate) async fn prefill(store: &PostgresStore, wf: &Arc<CompiledWorkflow>, n: u64) {
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

/// `VACUUM ANALYZE` of the store's hot tables.
pub(crate) async fn vacuum(store: &PostgresStore) {
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
        let claimed = store.claim(&req).await.unwrap();
        if claimed.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let ok = complete_noops(&store, &wf, claimed)
            .await
            .into_iter()
            .flatten()
            .count();
        done.fetch_add(ok as u64, Ordering::Relaxed);
    }
}

/// Completes every claimed no-op step with success, each in its own `update_instance`
/// (the group commit batches them), and returns the outcomes.
pub(crate) async fn complete_noops(
    store: &PostgresStore,
    wf: &Arc<CompiledWorkflow>,
    claimed: Vec<ClaimedItem>,
) -> Vec<Result<(), StoreError>> {
    let commits = claimed.into_iter().map(|c| {
        let input = Input::WorkDone {
            key: c.item.key.clone(),
            token: c.item.lease.as_ref().unwrap().token,
            attempt: c.item.attempt,
            outcome: WorkOutcome::Succeeded(Payload::null()),
        };
        let wf = Arc::clone(wf);
        let t = now();
        store.update_instance(
            c.item.key.instance_id,
            Box::new(move |snap| machine::apply(&wf, snap, &input, t)),
        )
    });
    futures::future::join_all(commits)
        .await
        .into_iter()
        .map(|r| r.map(drop))
        .collect()
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

/// Adds `n` ready one-step items (instances, step runs, queue rows) with SQL.
async fn add_items(store: &PostgresStore, n: u64, t: Timestamp) {
    const CHUNK: u64 = 200_000;
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
    eprintln!("  raw pgbench: {script}, {secs} s per run, clients {clients:?}");
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

/// Floxy's claim + complete next to raw pgbench (part `ceilings`) and the claim latency
/// (part `latency`) on the server at `url`.
pub(crate) async fn run(opts: &Opts, url: &str, report: &mut Report) {
    let secs = opts.secs;
    let worker_counts: Vec<u64> = opts.workers.iter().map(|w| *w as u64).collect();
    if opts.part("ceilings") {
        // 1. claim + complete.
        let store = store_on(url, "bench_claims", 64).await;
        let def = Builder::new("noop", 1)
            .step("only", "noop")
            .build()
            .unwrap();
        store.put_definition(&def).await.unwrap();
        let wf = Arc::new(CompiledWorkflow::compile(def).unwrap());
        let mut ours = Vec::new();
        for batch in [1_usize, 100] {
            for &workers in &worker_counts {
                let workers = workers as usize;
                let want = 20_000 + if batch == 1 { 3_000 } else { 15_000 } * secs;
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
                if ready(&store).await == 0 {
                    eprintln!("  WARNING: the queue ran dry: the rate below is a lower bound");
                }
                let per_batch = (after.calls - before.calls) as f64
                    / (after.batches - before.batches).max(1) as f64;
                eprintln!(
                    "  batch {batch:>3}, {workers:>2} workers, {queued} queued: {rate:.0} steps/s \
                     ({per_batch:.1} commits per transaction)"
                );
                ours.push((batch, workers, queued, rate, per_batch));
            }
        }
        drop_store(&store).await;
        // 2. raw pgbench on the same server.
        let raw = pgbench(url, secs, &worker_counts);

        report.section(&format!(
            "PostgreSQL: claim + complete of no-op steps next to raw pgbench (steps/s, {secs} s per run, same server)"
        ));
        report.line(
            "| claim batch | workers | queued at start | floxy | commits per transaction | raw pgbench | floxy / raw |",
        );
        report.line("|---:|---:|---:|---:|---:|---:|---:|");
        for (batch, workers, queued, rate, per_batch) in &ours {
            let name = if *batch == 1 { "single" } else { "batch100" };
            let r = raw
                .iter()
                .find(|(n, c, _)| n == name && *c == *workers as u64)
                .map_or(0.0, |x| x.2);
            report.line(&format!(
                "| {batch} | {workers} | {queued} | {rate:.0} | {per_batch:.1} | {r:.0} | {} |",
                crate::stores::ratio(*rate, r)
            ));
        }
        report.line("");
        report.line(
            "raw pgbench (`scripts/pgbench-raw.sh`): `single` claims one job per transaction \
             and completes it in another; `batch100` claims 100 jobs per transaction and \
             completes them with one `UPDATE ... WHERE id = ANY(...)`. Floxy writes, per step, \
             the step row, the queue row, the instance row and two events.",
        );
    }
    if opts.part("latency") {
        let lat = latency(url, opts.max_queue).await;
        report.section("PostgreSQL: claim latency vs queue size (ms)");
        report.line("| queued | claim 1 p50 | claim 1 p99 | claim 100 p50 |");
        report.line("|---:|---:|---:|---:|");
        for (size, p50, p99, h50) in &lat {
            report.line(&format!("| {size} | {p50:.2} | {p99:.2} | {h50:.2} |"));
        }
    }
}
