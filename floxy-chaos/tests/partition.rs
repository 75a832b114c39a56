//! A network partition of one worker (issue 18, item 4): two engines share one PostgreSQL;
//! engine B reaches it through its own proxy, which black-holes every byte (no forwarding,
//! no close) for longer than the lease TTL mid-run, while engine A keeps going on its own
//! connections. B's leases expire and A takes them over; when B's network comes back,
//! every late write B attempts with its old leases is fenced (refused for a stale fencing
//! token while A holds the item, or by the state machine once A's attempt moved the step
//! on), every instance finishes, no step runs more often than its attempts allow, no step
//! completes twice, and the ledger balances.
//!
//! About 25 s on a busy 2-core machine: part of the normal test run.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::Store;
use floxy_chaos::inject::handler::HandlerFaults;
use floxy_chaos::inject::store::{ChaosStore, StoreFaults};
use floxy_chaos::proxy::client::{NetworkDisruptor, NetworkFaults, ToxiproxyEnv};
use floxy_chaos::rng::ChaosRng;
use floxy_chaos::runner::{Disruptor, Run, Scenario};
use floxy_chaos::validate::Limits;
use floxy_chaos::workload::{Builtin, WorkloadOptions};
use floxy_chaos::{FaultCounters, FaultSwitch};
use floxy_store_postgres::testing::TestCluster;
use floxy_store_postgres::{Layout, PostgresConfig, PostgresStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lease TTL of every step: short, so the partition outlasts it several times.
const LEASE_TTL_MS: u64 = 1_500;
/// When the partition starts (after the fault phase began), and how long it lasts.
const PARTITION_AT_MS: u64 = 3_000;
const PARTITION_MS: u64 = 5_000;

/// Black-holes one proxy in both directions once, for a while: open connections stay open
/// and silent, new ones are accepted and hear nothing.
struct Partition {
    net: Arc<NetworkDisruptor>,
    started: parking_lot::Mutex<Option<Instant>>,
    healed: parking_lot::Mutex<Option<Instant>>,
}

#[floxy::async_trait]
impl Disruptor for Partition {
    fn name(&self) -> String {
        "partition of engine B".into()
    }
    fn interval_ms(&self) -> (u64, u64) {
        (PARTITION_AT_MS, PARTITION_AT_MS)
    }
    fn max_count(&self) -> Option<u32> {
        Some(1)
    }
    async fn disrupt(&self, _rng: &mut ChaosRng, counters: &FaultCounters) -> Result<(), String> {
        self.net.apply("timeout", "upstream").await?;
        self.net.apply("timeout", "downstream").await?;
        *self.started.lock() = Some(Instant::now());
        counters.add("proxy.partition");
        eprintln!("partition: engine B black-holed");
        tokio::time::sleep(Duration::from_millis(PARTITION_MS)).await;
        self.heal().await
    }
    async fn heal(&self) -> Result<(), String> {
        self.net.clear().await?;
        let mut h = self.healed.lock();
        if h.is_none() && self.started.lock().is_some() {
            *h = Some(Instant::now());
            eprintln!("partition: engine B reconnected");
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_worker_is_fenced_and_everything_finishes() {
    let t0 = Instant::now();
    let cluster = tokio::task::spawn_blocking(TestCluster::start)
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url("postgres");
    let cfg = PostgresConfig::default()
        .schema("partition")
        // A call into a silent connection gives up after a second (retryable), instead of
        // waiting for TCP to notice.
        .call_timeout_ms(1_000);
    let direct = PostgresStore::connect(&url, cfg.clone()).await.unwrap();
    direct.migrate(Layout::Plain).await.unwrap();

    // Engine A: its own pool, straight to the server. Engine B: its own pool, through
    // its own proxy.
    let env = ToxiproxyEnv::start(18).await.unwrap();
    let upstream = format!("127.0.0.1:{}", cluster.port());
    let listen = env.proxy("pg-b", "127.0.0.1:0", &upstream).await.unwrap();
    let url_b = url.replacen(&upstream, &listen, 1);
    let pg_a = PostgresStore::connect(&url, cfg.clone()).await.unwrap();
    let pg_b = PostgresStore::connect(&url_b, cfg.clone()).await.unwrap();
    let outcomes_a = FaultCounters::default();
    let outcomes_b = FaultCounters::default();
    let observe = |s: PostgresStore, o: &FaultCounters| -> Arc<dyn Store> {
        Arc::new(
            ChaosStore::new(
                Arc::new(s),
                StoreFaults::default(),
                0,
                FaultSwitch::new(false),
                FaultCounters::default(),
            )
            .observe(o.clone()),
        )
    };
    let store_a = observe(pg_a.clone(), &outcomes_a);
    let store_b = observe(pg_b.clone(), &outcomes_b);
    let partition = Arc::new(Partition {
        net: NetworkDisruptor::new(
            &env.api,
            "pg-b",
            NetworkFaults {
                timeout_ms: 0,
                ..NetworkFaults::default()
            },
        ),
        started: parking_lot::Mutex::new(None),
        healed: parking_lot::Mutex::new(None),
    });

    let scenario = Scenario {
        name: "partition".into(),
        seed: 18_004,
        duration_ms: 12_000,
        concurrency: 16,
        engines: 2,
        workers: 4,
        batch_size: 4,
        poll_interval_ms: 50,
        workloads: vec![Builtin::Simple, Builtin::Complex, Builtin::Parallel],
        workload: WorkloadOptions {
            version: 1,
            lease_ttl_ms: LEASE_TTL_MS,
            step_timeout_ms: 3_000,
            max_retries: 3,
            compensation_max_retries: 6,
            retry_delay_ms: 20,
            random_graphs: 0,
        },
        business_failure_rate: 0.05,
        cancel_rate: 0.0,
        abort_rate: 0.0,
        // Every call works a while, so B holds leases (and runs handlers) when it is cut off.
        handler_faults: HandlerFaults {
            sleep: 1.0,
            sleep_ms: (50, 600),
            ..HandlerFaults::default()
        },
        store_faults: StoreFaults::default(),
        engine_crash_ms: None,
        limits: Limits {
            settle_timeout_ms: 25_000,
            // The stores keep their own tasks (committers, listeners) until dropped.
            check_task_leak: false,
            ..Limits::default()
        },
        stats_interval_ms: 5_000,
        ..Scenario::default()
    };
    let report = Run::new(
        scenario,
        Arc::new(direct.clone()),
        "postgres (B partitioned)",
    )
    .engine_stores(vec![store_a, store_b])
    .disruptor(Arc::clone(&partition) as Arc<dyn Disruptor>)
    .execute()
    .await
    .unwrap();
    println!("{}", report.to_text());
    let a = outcomes_a.snapshot();
    let b = outcomes_b.snapshot();
    println!("engine A store outcomes: {a:?}\nengine B store outcomes: {b:?}");

    // The partition happened, for longer than the lease TTL.
    let started = partition
        .started
        .lock()
        .expect("the partition never started");
    let healed = partition.healed.lock().expect("the partition never healed");
    assert!(healed - started >= Duration::from_millis(PARTITION_MS - 100));
    // Every invariant holds (handler calls ≤ max_retries + 1 per step run, no duplicate
    // completion, the ledger balances, nothing stuck) and every instance finished.
    assert!(report.passed(), "{}", report.to_text());
    let s = &report.stats;
    assert!(s.started > 30, "too little work: {s:?}");
    assert_eq!(s.unsettled, 0, "{s:?}");
    assert_eq!(
        s.completed + s.failed + s.cancelled + s.aborted,
        s.started,
        "every instance reached a terminal status: {s:?}"
    );
    // A took over B's work: the claims found B's leases expired.
    assert!(s.lease_expiries > 0, "no lease expired: {s:?}");
    // B was cut off (its calls timed out), and its late writes were fenced: commits with
    // a lease A had taken over refused for a stale token, or refused by the state machine
    // because A's attempt had moved the step (or the instance) on meanwhile. None was
    // applied: the validators found no duplicate completion and no step called more often
    // than its attempts allow.
    let n = |k: &str| b.get(k).copied().unwrap_or(0);
    assert!(n("heartbeat.unavailable") > 0, "B was never cut off: {b:?}");
    let fenced = n("update_instance.stale_lease")
        + n("update_instance.stale_result")
        + n("update_instance.instance_terminal");
    assert!(fenced > 0, "no late commit of B was fenced: {b:?}");
    assert!(
        report.violations_by_kind.is_empty(),
        "{:?}",
        report.violations_by_kind
    );
    // No transaction B had open when it was cut off is still holding its locks: the
    // server ended them once idle for longer than the call deadline (else A's commits of
    // those instances wait on the locks and the claims skip their queue rows: stuck).
    let idle = cluster
        .psql(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' \
             AND now() - state_change > interval '3 seconds'",
        )
        .unwrap();
    assert_eq!(idle, "0", "sessions idle in a transaction left behind");
    // B came back: its pool works again after the partition.
    let ok = tokio::time::timeout(Duration::from_secs(10), pg_b.stats()).await;
    assert!(
        matches!(ok, Ok(Ok(_))),
        "engine B's store still unusable after the partition: {ok:?}"
    );
    println!(
        "pool B: size {} idle {}",
        pg_b.pool().size(),
        pg_b.pool().num_idle()
    );
    assert!(
        t0.elapsed() < Duration::from_mins(1),
        "took {:?}",
        t0.elapsed()
    );
    drop((pg_a, pg_b, direct));
    env.shutdown().await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
