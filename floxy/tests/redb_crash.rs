//! Crash safety. A child process (this test binary, re-executed) runs the floxy engine on a
//! redb file: it starts three-step workflows all the time, its workers run them, and a
//! ledger task bumps one instance with direct `update_instance` calls. It prints every
//! acknowledged start and ledger version to stdout *after* the acknowledgement. The parent
//! kills it with SIGKILL after a random number of acknowledgements, several times on the same
//! file, and after each kill reopens the file and checks that
//! every acknowledged commit is there and that no instance is lost or corrupted. Finally an
//! engine whose clock is past every lease expiry reclaims the leases the dead children held
//! and runs every instance to completion.
//!
//! (The redb store's own crash test, `floxy-store-redb/tests/crash_backend.rs`, cuts power
//! under redb through a storage backend; this one kills real processes running the engine.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use floxy::{
    Builder, Clock, Engine, InstanceStatus, Payload, RedbDurability, RedbOptions, RedbStore,
    SystemClock,
};
use floxy_core::conformance::fixtures::{iid, next, start};
use floxy_core::model::{EventKind, InstanceId, Timestamp};
use floxy_core::store::{InstanceQuery, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

const CHILD_ENV: &str = "FLOXY_REDB_CRASH_CHILD";
const ROUND_ENV: &str = "FLOXY_REDB_CRASH_ROUND";
const ROUNDS: u64 = 8;
const LEASE_TTL_MS: u64 = 5_000;
const STEPS: [&str; 3] = ["reserve", "charge", "ship"];

/// Opens `path` with immediate durability (the default, spelled out).
fn open(path: &std::path::Path) -> RedbStore {
    RedbStore::open(
        path,
        RedbOptions::default().durability(RedbDurability::Immediate),
    )
    .expect("open store")
}

/// A command that runs test `name` of this test binary alone, in a child process (the child
/// test is `#[ignore]`d, so a plain run reports it skipped instead of passing it, and does its
/// part when the environment variable the caller sets tells it to).
fn child_test(name: &str) -> std::process::Command {
    let mut c = std::process::Command::new(std::env::current_exe().expect("test binary"));
    c.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    c
}

/// The runtime of a child process: two worker threads, like a small service.
fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn ledger_id(round: u64) -> InstanceId {
    iid(u128::from(1_000_000 + round))
}

fn workflow() -> floxy::WorkflowDefinition {
    let mut b = Builder::new("crash", 1).lease_ttl_ms(LEASE_TTL_MS);
    for (i, s) in STEPS.iter().enumerate() {
        b = if i == 0 { b.step(s, s) } else { b.then(s, s) };
        // Every kill can cost a running step one attempt: keep a budget for all of them.
        b = b.max_retries(20).retry_delay_ms(10);
    }
    b.build().expect("definition")
}

fn register(engine: &Engine) {
    for s in STEPS {
        engine.register_fn(s, |ctx, input: Payload| async move {
            // Some steps take a while, so kills find leases held.
            let ms = if ctx.instance_id().0.as_u128() % 2 == 1 {
                3
            } else {
                1
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(input)
        });
    }
}

/// The child process: runs until killed.
#[test]
#[ignore = "the child process of the crash tests, which run it"]
fn child_runs_workflows() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    child_runtime().block_on(async move {
        let store =
            RedbStore::open(std::path::Path::new(&path), RedbOptions::default()).expect("open");
        let engine = Engine::builder(Arc::new(store.clone()))
            .workers(64)
            .batch_size(16)
            .poll_interval_ms(20)
            .build();
        register(&engine);
        let wf = engine
            .register_workflow(workflow())
            .await
            .expect("register");
        engine.start_workers().expect("workers");
        // The ledger: one instance bumped by direct transitions.
        let ledger = ledger_id(round);
        let now = SystemClock.now();
        store
            .create_instance(start(ledger, now, &[]))
            .await
            .expect("ledger");
        println!("ACK-L {round}");
        let ledger_store = store.clone();
        tokio::spawn(async move {
            loop {
                let t = ledger_store
                    .update_instance(
                        ledger,
                        Box::new(|s| {
                            let mut t = next(s, SystemClock.now());
                            t.events.push(floxy_core::model::NewEvent {
                                kind: EventKind::SavePointReached,
                                step: None,
                                attempt: None,
                                detail: None,
                            });
                            Ok(t)
                        }),
                    )
                    .await
                    .expect("ledger update");
                println!("ACK-V {round} {}", t.instance.version);
            }
        });
        // Starts, 8 at a time, forever.
        let mut n = 0_u64;
        loop {
            let ids = futures::future::join_all(
                (0..8)
                    .map(|i| engine.start(&wf, serde_json::json!({ "round": round, "n": n + i }))),
            )
            .await;
            n += 8;
            for id in ids {
                println!("ACK-S {}", id.expect("start"));
            }
        }
    });
}

/// A clock `ahead_ms` in the future: every lease the dead children held has expired for it.
#[derive(Debug)]
struct AheadClock(u64);

impl Clock for AheadClock {
    fn now(&self) -> Timestamp {
        SystemClock.now().add_ms(self.0)
    }
}

/// A small deterministic generator (xorshift), seeded from the time and printed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Acks {
    started: BTreeSet<InstanceId>,
    ledger_created: BTreeSet<u64>,
    ledger_version: BTreeMap<u64, u64>,
}

impl Acks {
    fn record(&mut self, line: &str) {
        let mut words = line
            .split_whitespace()
            .skip_while(|w| !w.starts_with("ACK-"));
        match words.next() {
            Some("ACK-S") => {
                let id: InstanceId = words.next().expect("id").parse().expect("uuid");
                self.started.insert(id);
            }
            Some("ACK-L") => {
                self.ledger_created
                    .insert(words.next().expect("round").parse().expect("round"));
            }
            Some("ACK-V") => {
                let round: u64 = words.next().expect("round").parse().expect("round");
                let v: u64 = words.next().expect("version").parse().expect("version");
                let e = self.ledger_version.entry(round).or_default();
                *e = (*e).max(v);
            }
            _ => {}
        }
    }
}

/// Runs one child until `kill_after` acknowledgements, kills it with SIGKILL and returns
/// every acknowledgement it printed.
fn run_child(path: &std::path::Path, round: u64, kill_after: u64, acks: &mut Acks) {
    let mut child = child_test("child_runs_workflows")
        .env(CHILD_ENV, path)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = 0;
    while seen < kill_after {
        match rx.recv_timeout(Duration::from_mins(1)) {
            Ok(line) => {
                if line.contains("ACK-") {
                    seen += 1;
                }
                acks.record(&line);
            }
            Err(e) => {
                let _ = child.kill();
                panic!("round {round}: the child stopped acknowledging ({e}) after {seen}");
            }
        }
    }
    child.kill().expect("SIGKILL"); // `Child::kill` is SIGKILL on Unix.
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the child was killed");
    reader.join().expect("reader");
    // Lines printed before the kill are acknowledged commits too.
    for line in rx.try_iter() {
        acks.record(&line);
    }
}

/// After a crash: every acknowledged commit is there, every instance reads back whole, and
/// the queue holds the work of every unfinished instance.
async fn check_after_crash(store: &RedbStore, acks: &Acks, round: u64) -> usize {
    for id in &acks.started {
        let snap = store
            .load_instance(*id)
            .await
            .unwrap_or_else(|e| panic!("round {round}: instance {id} unreadable: {e}"));
        assert!(
            snap.is_some(),
            "round {round}: acknowledged start {id} lost"
        );
    }
    for r in &acks.ledger_created {
        let rec = store.get_instance(ledger_id(*r)).await.expect("ledger");
        let rec = rec.unwrap_or_else(|| panic!("round {round}: ledger {r} lost"));
        let acked = acks.ledger_version.get(r).copied().unwrap_or(1);
        assert!(
            rec.version >= acked,
            "round {round}: ledger {r} at version {} but version {acked} was acknowledged",
            rec.version
        );
        let events = store
            .list_events(ledger_id(*r), None, 0)
            .await
            .expect("events");
        assert_eq!(
            events.len() as u64,
            rec.version,
            "one event per ledger version"
        );
    }
    let mut all = 0;
    let mut q = InstanceQuery::default();
    loop {
        let page = store.list_instances(&q).await.expect("list");
        for rec in &page.items {
            all += 1;
            let id = rec.id;
            if rec.workflow_id.as_str() != "crash-v1" {
                continue;
            }
            let steps = store.list_steps(id).await.expect("steps");
            let queue = store.list_queue(id).await.expect("queue");
            store.list_events(id, None, 0).await.expect("events");
            match rec.status {
                InstanceStatus::Completed => {
                    assert!(
                        queue.is_empty(),
                        "round {round}: completed {id} has queue items"
                    );
                    assert_eq!(steps.len(), 3, "round {round}: {id} ran every step");
                }
                InstanceStatus::Running => assert_eq!(
                    queue.len(),
                    1,
                    "round {round}: running {id} has exactly its current step queued: {queue:?}"
                ),
                other => panic!("round {round}: instance {id} is {other}"),
            }
        }
        match page.next {
            Some(n) => q.after = Some(n),
            None => return all,
        }
    }
}

#[test]
fn sigkill_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("floxy.redb");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(1))
        | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut acks = Acks::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for round in 0..ROUNDS {
        let kill_after = 20 + rng.below(400);
        run_child(&path, round, kill_after, &mut acks);
        rt.block_on(async {
            let store = open(&path);
            let n = check_after_crash(&store, &acks, round).await;
            println!(
                "round {round}: killed after {kill_after} acks; {n} instances, {} acknowledged starts",
                acks.started.len()
            );
            store.close().await.expect("close");
        });
    }
    // Recovery: an engine past every lease expiry finishes everything.
    rt.block_on(async {
        let store = open(&path);
        let leased_before = store.stats().await.expect("stats").queue_leased;
        assert!(leased_before > 0, "the kills left leases held");
        let engine = Engine::builder(Arc::new(store.clone()))
            .workers(64)
            .batch_size(32)
            .poll_interval_ms(10)
            .clock(Arc::new(AheadClock(10 * LEASE_TTL_MS)))
            .build();
        register(&engine);
        engine.register_workflow(workflow()).await.expect("register");
        engine.start_workers().expect("workers");
        let mut q = InstanceQuery::default();
        let mut ids = Vec::new();
        loop {
            let page = store.list_instances(&q).await.expect("list");
            ids.extend(
                page.items
                    .iter()
                    .filter(|r| r.workflow_id.as_str() == "crash-v1")
                    .map(|r| r.id),
            );
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        for id in &ids {
            let r = engine
                .wait_for(*id, Duration::from_mins(1))
                .await
                .unwrap_or_else(|e| panic!("instance {id} did not finish: {e}"));
            assert_eq!(r.status, InstanceStatus::Completed, "instance {id}");
        }
        engine.shutdown(Duration::from_secs(10)).await;
        let mut reclaimed = 0;
        for id in &ids {
            reclaimed += store
                .list_events(*id, None, 0)
                .await
                .expect("events")
                .iter()
                .filter(|e| e.kind == EventKind::LeaseExpired)
                .count();
        }
        println!(
            "recovery: {} instances completed, {leased_before} leases held after the kills, {reclaimed} reclaimed as expired",
            ids.len()
        );
        assert!(reclaimed > 0, "expired leases were reclaimed");
        let stats = store.stats().await.expect("stats");
        assert_eq!((stats.queue_ready, stats.queue_leased), (0, 0), "no work left");
        store.close().await.expect("close");
    });
}
