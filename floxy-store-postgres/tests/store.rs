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

/// A TCP forwarder to the test server that can turn into a black hole: once `dead` is set it
/// keeps reading from both sides and forwards nothing, like a network that silently drops
/// packets (connections stay open, no reset, no answer).
async fn black_hole_proxy(
    upstream: std::net::SocketAddr,
    dead: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u16 {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(sr) as _, Box::new(cw) as _),
            ] {
                let dead = std::sync::Arc::clone(&dead);
                tokio::spawn(async move {
                    let mut buf = vec![0_u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !dead.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    port
}

/// A connection that goes silent (no reset, no answer) fails store calls with a retryable
/// error at the call deadline instead of hanging the caller forever (chaos finding F4):
/// a claim, a heartbeat and a group commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_fails_at_the_call_deadline() {
    use floxy_core::store::{ClaimRequest, LeaseRef};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let base = test_store(Layout::Plain).await;
    let opts: sqlx::postgres::PgConnectOptions = database_url().parse().unwrap();
    let upstream = format!("{}:{}", opts.get_host(), opts.get_port())
        .parse()
        .unwrap();
    let dead = Arc::new(AtomicBool::new(false));
    let port = black_hole_proxy(upstream, Arc::clone(&dead)).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.port(port))
        .await
        .unwrap();
    let store = PostgresStore::with_config(
        pool,
        PostgresConfig::default()
            .schema(base.schema())
            .call_timeout_ms(500),
    )
    .unwrap();
    store
        .create_instance(start(iid(1), at(0), &[("a", "h")]))
        .await
        .unwrap();
    let req = ClaimRequest {
        owner: Arc::from("w"),
        handlers: vec![Arc::from("h")],
        limit: 1,
        now: at(0),
    };
    let claimed = store.claim(&req).await.unwrap();
    assert_eq!(claimed.len(), 1, "the path works before the fault");
    let lease = claimed[0].item.lease.clone().unwrap();

    dead.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    // Each call must end by itself; the outer timeout only turns a hang into a failure.
    let hung = Duration::from_secs(5);
    let err = tokio::time::timeout(hung, store.claim(&req))
        .await
        .expect("claim hung")
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(_)) && err.is_retryable(),
        "{err}"
    );
    let refs = [LeaseRef {
        key: claimed[0].item.key.clone(),
        token: lease.token,
    }];
    let err = tokio::time::timeout(hung, store.heartbeat("w", &refs, at(1)))
        .await
        .expect("heartbeat hung")
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let err = tokio::time::timeout(
        hung,
        store.update_instance(iid(1), Box::new(|s| Ok(next(s, at(2))))),
    )
    .await
    .expect("commit hung")
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "three calls bounded by a 0.5 s deadline each (and the pool's connects), took {:?}",
        t0.elapsed()
    );
}

/// A claim is one round trip: one autocommit statement (the `floxy_claim` call), without a
/// `BEGIN`, `SET LOCAL` or `COMMIT` around it. Counted with `pg_stat_statements` (which
/// records every statement the server runs, utility statements included) on a cluster of
/// its own, so no other test's statements are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_is_one_statement() {
    use floxy_core::store::ClaimRequest;
    use floxy_store_postgres::testing::{STATEMENT_STATS, TestCluster};
    use sqlx::Row;
    use std::sync::Arc;

    let cluster = TestCluster::start_with(STATEMENT_STATS).unwrap();
    let url = cluster.url("postgres");
    let admin = pool(&url, 1).await.unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&admin)
        .await
        .unwrap();
    // No NOTIFY: it is sent after a commit, in the background, and would be counted.
    let store = PostgresStore::with_config(
        pool(&url, 4).await.unwrap(),
        PostgresConfig::default().schema("one_trip").notify(false),
    )
    .unwrap();
    store.migrate(Layout::Plain).await.unwrap();
    for n in 1..=3 {
        store
            .create_instance(start(iid(n), at(0), &[("a", "h")]))
            .await
            .unwrap();
    }
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&admin)
        .await
        .unwrap();
    let req = |limit| ClaimRequest {
        owner: Arc::from("w"),
        handlers: vec![Arc::from("h")],
        limit,
        now: at(1),
    };
    assert_eq!(store.claim(&req(1)).await.unwrap().len(), 1);
    assert_eq!(store.claim(&req(5)).await.unwrap().len(), 2);
    assert!(store.claim(&req(5)).await.unwrap().is_empty());
    let rows = sqlx::query(
        "SELECT query, calls FROM pg_stat_statements \
         WHERE query NOT ILIKE '%pg_stat_statements%' ORDER BY calls DESC",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    let seen: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        seen.len(),
        1,
        "three claims ran other statements than the claim itself: {seen:#?}"
    );
    assert!(seen[0].0.contains("floxy_claim"), "{seen:#?}");
    assert_eq!(seen[0].1, 3, "one statement per claim: {seen:#?}");
}

/// A schema migrated by a store without the claim function (simulated by dropping it)
/// fails claims with a non-retryable error that says to migrate, and the next migrate
/// brings the function back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_without_the_function_asks_for_a_migrate() {
    use floxy_core::store::ClaimRequest;
    use std::sync::Arc;

    let store = test_store(Layout::Plain).await;
    store
        .create_instance(start(iid(1), at(0), &[("a", "h")]))
        .await
        .unwrap();
    sqlx::query(&format!(
        "DROP FUNCTION \"{}\".floxy_claim(text[], bigint, bigint, text)",
        store.schema()
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let req = ClaimRequest {
        owner: Arc::from("w"),
        handlers: vec![Arc::from("h")],
        limit: 1,
        now: at(1),
    };
    let err = store.claim(&req).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("migrate")) && !err.is_retryable(),
        "{err}"
    );
    store.migrate(Layout::Plain).await.unwrap();
    assert_eq!(store.claim(&req).await.unwrap().len(), 1);
}

/// Retention walks the instances created before the cutoff in slices of `CLEANUP_SCAN`
/// (`created_at`, then id): old terminal instances created after more than a slice of old
/// live ones are still found and removed in one call, and the live ones are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_walks_past_slices_of_live_instances() {
    use floxy_core::model::Timestamp;
    use floxy_store_postgres::CLEANUP_SCAN;

    let store = test_store(Layout::Plain).await;
    let live = i64::try_from(CLEANUP_SCAN).unwrap() + 5_000;
    let terminal = 3_000_i64;
    sqlx::query(&format!(
        "INSERT INTO \"{}\".workflow_instances (id, workflow_id, status, input, created_at, \
             updated_at, version, completion_seq, rollback_depth, branches) \
         SELECT gen_random_uuid(), 'w-v1', \
                CASE WHEN g <= $1 THEN 'running' ELSE 'completed' END, '{{}}', g, g, 1, 0, 0, \
                '[]' \
           FROM generate_series(1, $1 + $2) g",
        store.schema()
    ))
    .bind(live)
    .bind(terminal)
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(&format!(
        "ANALYZE \"{}\".workflow_instances",
        store.schema()
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let removed = store.cleanup(Timestamp(live + terminal + 1)).await.unwrap();
    assert_eq!(removed, u64::try_from(terminal).unwrap());
    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats.instances_by_status,
        vec![("running".to_owned(), u64::try_from(live).unwrap())]
    );
    assert_eq!(store.cleanup(Timestamp(i64::MAX)).await.unwrap(), 0);
}

/// Transitions update the instance row in place (HOT, no index entries written), the one
/// that makes it terminal included: no index of `workflow_instances` reads a column the hot
/// path changes (the first schema's terminal index had a predicate on `status`). One
/// connection, so the committer's statistics can be flushed from it and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_updates_are_hot_up_to_the_terminal_one() {
    let base = test_store(Layout::Plain).await;
    let store = PostgresStore::with_config(
        pool(&database_url(), 1).await.unwrap(),
        PostgresConfig::default()
            .schema(base.schema())
            .notify(false),
    )
    .unwrap();
    store
        .create_instance(start(iid(1), at(0), &[("a", "h")]))
        .await
        .unwrap();
    store
        .update_instance(iid(1), Box::new(|s| Ok(next(s, at(1)))))
        .await
        .unwrap();
    store
        .update_instance(
            iid(1),
            Box::new(|s| {
                let mut t = next(s, at(2));
                t.instance.status = InstanceStatus::Completed;
                Ok(t)
            }),
        )
        .await
        .unwrap();
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(store.pool())
        .await
        .unwrap();
    let (upd, hot): (i64, i64) = sqlx::query_as(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND relname = 'workflow_instances'",
    )
    .bind(store.schema())
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((upd, hot), (2, 2), "updates, of which HOT");
    assert_eq!(
        store.get_instance(iid(1)).await.unwrap().unwrap().status,
        InstanceStatus::Completed
    );
}
