//! Row work per no-op step on PostgreSQL (part `rows`): the figure that does not drift with
//! the machine's speed.
//!
//! A throwaway cluster with `pg_stat_statements` loaded (or `FLOXY_TEST_DATABASE_URL`, where
//! the extension must be available) gets `N` ready one-step instances; once every
//! connection that filled it has exited (so their statistics are flushed), the statement,
//! table and WAL statistics are reset, a fresh store drains the queue with `W` workers
//! claiming batches of `B` and completing every claimed step (`update_instance` with the
//! state machine's transition: step completed, queue row deleted, instance completed,
//! `step_completed` and `workflow_completed` events), its pool is closed, and the counters
//! are read and divided by `N`:
//!
//! * per statement (`pg_stat_statements`, top level: a function's work counts for the
//!   statement that calls it): calls, rows, WAL records and bytes;
//! * per table (`pg_stat_user_tables`): tuples inserted, updated, deleted, and how many of
//!   the updates were HOT (no index entries written);
//! * the server's whole WAL (`pg_stat_wal`, including commit records).

use floxy::Builder;
use floxy_core::graph::CompiledWorkflow;
use floxy_core::store::{ClaimRequest, Store};
use floxy_store_postgres::testing::{STATEMENT_STATS, TEST_DATABASE_URL_ENV, TestCluster, pool};
use floxy_store_postgres::{PostgresConfig, PostgresStore};
use sqlx::Row;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::postgres::{complete_noops, now, prefill, store_on, vacuum};
use crate::report::Report;

const SCHEMA: &str = "bench_rows";

/// One statement's figures (totals over the run).
struct Statement {
    query: String,
    calls: i64,
    rows: i64,
    wal_records: i64,
    wal_bytes: f64,
}

/// One table's figures (totals over the run).
struct Table {
    name: String,
    ins: i64,
    upd: i64,
    del: i64,
    hot: i64,
}

/// What one measured run did.
struct RowWork {
    steps: u64,
    claims: u64,
    statements: Vec<Statement>,
    tables: Vec<Table>,
    wal_records: i64,
    wal_bytes: f64,
}

/// Waits until no client backend but the caller's is connected to the database (the
/// store's backends flush their statistics when they exit).
async fn wait_for_exits(admin: &sqlx::PgPool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .fetch_one(admin)
        .await
        .unwrap();
        if others == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The exit hook's flush lands right before the backend leaves the activity view.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Claims and completes until the queue is empty; returns (steps completed, claim calls).
async fn drain(
    store: &PostgresStore,
    wf: &Arc<CompiledWorkflow>,
    workers: usize,
    batch: usize,
) -> (u64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let claims = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let store = store.clone();
            let wf = Arc::clone(wf);
            let done = Arc::clone(&done);
            let claims = Arc::clone(&claims);
            tokio::spawn(async move {
                let owner: Arc<str> = Arc::from(format!("rows-{w}"));
                loop {
                    let req = ClaimRequest {
                        owner: Arc::clone(&owner),
                        handlers: vec![Arc::from("noop")],
                        limit: batch,
                        now: now(),
                    };
                    let claimed = store.claim(&req).await.unwrap();
                    claims.fetch_add(1, Ordering::Relaxed);
                    if claimed.is_empty() {
                        break;
                    }
                    for r in complete_noops(&store, &wf, claimed).await {
                        r.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (done.load(Ordering::Relaxed), claims.load(Ordering::Relaxed))
}

/// A short name for a statement: whitespace collapsed, the schema left out, cut at 90
/// characters, `|` escaped for the markdown table.
fn label(query: &str) -> String {
    let flat = query
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(&format!("\"{SCHEMA}\"."), "");
    let name = if flat.contains("floxy_claim(") {
        "claim (function): "
    } else if flat.contains("workflow_lease_tokens") && flat.contains("SKIP LOCKED") {
        "claim: "
    } else {
        ""
    };
    let mut cut: String = flat.chars().take(90).collect();
    if cut.len() < flat.len() {
        cut.push('…');
    }
    format!("{name}`{}`", cut.replace('|', "\\|").replace('`', "'"))
}

async fn measure(url: &str, steps: u64, workers: usize, batch: usize) -> RowWork {
    let admin = pool(url, 1).await.unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    let def = Builder::new("noop", 1)
        .step("only", "noop")
        .build()
        .unwrap();
    let wf = Arc::new(CompiledWorkflow::compile(def.clone()).unwrap());
    {
        let store = store_on(url, SCHEMA, 16).await;
        store.put_definition(&def).await.unwrap();
        prefill(&store, &wf, steps).await;
        vacuum(&store).await;
        store.pool().close().await;
    }
    wait_for_exits(&admin).await;
    for reset in [
        "SELECT pg_stat_statements_reset()",
        "SELECT pg_stat_reset()",
        "SELECT pg_stat_reset_shared('wal')",
    ] {
        sqlx::query(reset).execute(&admin).await.unwrap();
    }
    let store = PostgresStore::with_config(
        pool(url, 32).await.unwrap(),
        PostgresConfig::default().schema(SCHEMA),
    )
    .unwrap();
    let (done, claims) = drain(&store, &wf, workers, batch).await;
    store.pool().close().await;
    drop(store);
    wait_for_exits(&admin).await;
    let wal = sqlx::query("SELECT wal_records, wal_bytes::float8 FROM pg_stat_wal")
        .fetch_one(&admin)
        .await
        .unwrap();
    let statements = sqlx::query(
        "SELECT query, calls, rows, wal_records, wal_bytes::float8 FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND query NOT ILIKE '%pg_stat%' \
         ORDER BY wal_bytes DESC, calls DESC",
    )
    .fetch_all(&admin)
    .await
    .unwrap()
    .iter()
    .map(|r| Statement {
        query: r.get(0),
        calls: r.get(1),
        rows: r.get(2),
        wal_records: r.get(3),
        wal_bytes: r.get(4),
    })
    .collect();
    let tables = sqlx::query(
        "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd \
         FROM pg_stat_user_tables WHERE schemaname = $1 \
          AND n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY relname",
    )
    .bind(SCHEMA)
    .fetch_all(&admin)
    .await
    .unwrap()
    .iter()
    .map(|r| Table {
        name: r.get(0),
        ins: r.get(1),
        upd: r.get(2),
        del: r.get(3),
        hot: r.get(4),
    })
    .collect();
    sqlx::query(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    RowWork {
        steps: done,
        claims,
        statements,
        tables,
        wal_records: wal.get(0),
        wal_bytes: wal.get(1),
    }
}

/// Part `rows`: measures and reports the row work per no-op step.
pub(crate) async fn run(quick: bool, report: &mut Report) {
    let steps: u64 = if quick { 2_000 } else { 10_000 };
    let (workers, batch) = (4, 100);
    let (cluster, url) = if let Ok(u) = std::env::var(TEST_DATABASE_URL_ENV) {
        (None, u)
    } else {
        let c = tokio::task::spawn_blocking(|| TestCluster::start_with(STATEMENT_STATS))
            .await
            .unwrap()
            .unwrap();
        let u = c.url("postgres");
        (Some(c), u)
    };
    let w = measure(&url, steps, workers, batch).await;
    drop(cluster);
    let n = w.steps.max(1) as f64;
    report.section(&format!(
        "PostgreSQL: row work per no-op step ({} one-step instances claimed in batches of {batch} by {workers} workers and completed; pg_stat_statements, pg_stat_user_tables)",
        w.steps
    ));
    report.line(&format!(
        "{} `claim` calls ({:.3} per step); per step: {:.2} WAL records, {:.0} WAL bytes on the whole server (`pg_stat_wal`, commit records included).",
        w.claims,
        w.claims as f64 / n,
        w.wal_records as f64 / n,
        w.wal_bytes / n
    ));
    report.line("");
    report
        .line("| statement | calls / step | rows / step | WAL records / step | WAL bytes / step |");
    report.line("|---|---:|---:|---:|---:|");
    let (mut calls, mut rows, mut recs, mut bytes) = (0, 0, 0, 0.0);
    for s in &w.statements {
        calls += s.calls;
        rows += s.rows;
        recs += s.wal_records;
        bytes += s.wal_bytes;
        report.line(&format!(
            "| {} | {:.3} | {:.3} | {:.2} | {:.0} |",
            label(&s.query),
            s.calls as f64 / n,
            s.rows as f64 / n,
            s.wal_records as f64 / n,
            s.wal_bytes / n
        ));
    }
    report.line(&format!(
        "| **all statements** | {:.3} | {:.3} | {:.2} | {:.0} |",
        calls as f64 / n,
        rows as f64 / n,
        recs as f64 / n,
        bytes / n
    ));
    report.line("");
    report.line("| table | inserted / step | updated / step | of which HOT | deleted / step | rows written / step |");
    report.line("|---|---:|---:|---:|---:|---:|");
    let (mut ins, mut upd, mut hot, mut del) = (0, 0, 0, 0);
    for t in &w.tables {
        ins += t.ins;
        upd += t.upd;
        hot += t.hot;
        del += t.del;
        report.line(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            t.name,
            t.ins as f64 / n,
            t.upd as f64 / n,
            t.hot as f64 / n,
            t.del as f64 / n,
            (t.ins + t.upd + t.del) as f64 / n
        ));
    }
    report.line(&format!(
        "| **all tables** | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        ins as f64 / n,
        upd as f64 / n,
        hot as f64 / n,
        del as f64 / n,
        (ins + upd + del) as f64 / n
    ));
}
