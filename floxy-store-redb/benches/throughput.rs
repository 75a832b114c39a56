//! Throughput of the redb store next to the memory store, in one run:
//!
//! * **claims/s**: `W` concurrent workers claim batches until a prefilled queue is empty;
//! * **durable step completions/s**: `W` concurrent workers each claim a batch and complete
//!   every claimed step with its own `update_instance` (fencing check, step CAS, queue
//!   delete, event, the next step queued), all of a worker's completions in flight at once;
//!   a completion counts when it is acknowledged, i.e. durable (redb: `Durability::Immediate`);
//! * **durable completions in eager chains/s**: the same, but the way the engine completes
//!   steps (its default): each completion leases the step it queues to the completing worker
//!   in the same commit (`update_instance_eager`), and the worker completes that one next, so
//!   only an instance's first step is claimed;
//! * **3-step sagas/s end to end**: the `floxy` engine with its worker pool (1 024 workers,
//!   claim batches of 256) runs `N` instances of a three-step workflow with no-op handlers,
//!   from the first start to the last completion.
//!
//! ```text
//! cargo bench -p floxy-store-redb --bench throughput            # full run
//! cargo bench -p floxy-store-redb --bench throughput -- --quick # smaller sizes
//! ```
//!
//! Files live in a temporary directory on the same disk as the system temp dir (`TMPDIR`).
//!
//! `--features bench-mimalloc` runs it with mimalloc as the global allocator instead of the
//! system's (glibc's malloc here): redb allocates, zeroes and frees a page buffer for every
//! page a commit writes, so the allocator is part of the committing thread's cost.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[cfg(feature = "bench-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use floxy::{Builder, Engine, InstanceStatus, Payload};
use floxy_core::eager::EagerClaim;
use floxy_core::model::{
    EventKind, InstanceId, InstanceRecord, InstanceSnapshot, InstanceStatus as Status, LeaseCheck,
    NewEvent, QueueItem, QueueKey, QueueOp, StepRun, StepStatus, StepWrite, Timestamp, Transition,
    WorkKind, WorkflowId,
};
use floxy_core::store::{ClaimRequest, Store};
use floxy_store_memory::MemoryStore;
use floxy_store_redb::{Durability, RedbOptions, RedbStore, WriterStats};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const T0: Timestamp = Timestamp(1_700_000_000_000);
const HANDLER: &str = "h";
const STEPS: [&str; 3] = ["s1", "s2", "s3"];

fn wf() -> WorkflowId {
    WorkflowId::new("bench", 1)
}

fn item(id: InstanceId, step: &str, now: Timestamp) -> QueueItem {
    QueueItem {
        key: QueueKey {
            instance_id: id,
            step: step.into(),
            kind: WorkKind::Execute,
        },
        workflow_id: wf(),
        handler: HANDLER.into(),
        run_at: now,
        priority: 50,
        order_key: now.as_millis(),
        attempt: 0,
        lease_ttl_ms: 60_000,
        cancel_requested: false,
        lease: None,
    }
}

fn event(kind: EventKind, step: Option<&str>) -> NewEvent {
    NewEvent {
        kind,
        step: step.map(Into::into),
        attempt: None,
        detail: None,
    }
}

/// A created instance with its first step queued (`steps` steps in a chain).
fn start(id: InstanceId, now: Timestamp) -> Transition {
    let instance = InstanceRecord {
        id,
        workflow_id: wf(),
        status: Status::Running,
        input: Payload::new(serde_json::json!({ "order": 42, "customer": "c-1" })),
        output: None,
        error: None,
        idempotency_key: None,
        created_at: now,
        updated_at: now,
        version: 1,
        completion_seq: 0,
        rollback_depth: 0,
        rollback_to: None,
        failed_step: None,
        branches: Vec::new(),
    };
    let run = StepRun::new(
        id,
        STEPS[0].into(),
        StepStatus::Pending,
        instance.input.clone(),
        now,
    );
    Transition {
        now,
        create: true,
        instance,
        steps: vec![StepWrite { run, expect: None }],
        queue: vec![QueueOp::Upsert(item(id, STEPS[0], now))],
        events: vec![event(EventKind::WorkflowStarted, None)],
        dlq_insert: Vec::new(),
        dlq_delete: Vec::new(),
        lease_check: None,
    }
}

/// The completion of the claimed step: step completed, item deleted, next step queued (or
/// the instance completed).
fn complete(
    snap: &InstanceSnapshot,
    key: &QueueKey,
    token: floxy_core::model::FencingToken,
    now: Timestamp,
) -> Transition {
    let mut instance = snap.instance.clone();
    instance.version += 1;
    instance.updated_at = now;
    instance.completion_seq += 1;
    let mut run = snap
        .steps
        .iter()
        .find(|r| r.step == key.step)
        .cloned()
        .expect("claimed step exists");
    run.status = StepStatus::Completed;
    run.output = Some(output());
    run.completed_seq = Some(instance.completion_seq);
    run.finished_at = Some(now);
    // Room for the next step's writes (or the completion's event): growing a one-element
    // vector is a `realloc` on the store's preparing thread, which runs this function; it
    // was a twelfth of that thread's time in `perf`.
    let mut steps = Vec::with_capacity(2);
    steps.push(StepWrite {
        run: run.clone(),
        expect: Some(StepStatus::Running),
    });
    let mut queue = Vec::with_capacity(2);
    queue.push(QueueOp::Delete(key.clone()));
    let mut events = Vec::with_capacity(2);
    events.push(event(EventKind::StepCompleted, Some(&key.step)));
    let mut t = Transition {
        now,
        create: false,
        instance,
        steps,
        queue,
        events,
        dlq_insert: Vec::new(),
        dlq_delete: Vec::new(),
        lease_check: Some(LeaseCheck {
            key: key.clone(),
            token,
        }),
    };
    let pos = STEPS
        .iter()
        .position(|s| **s == *key.step)
        .unwrap_or(STEPS.len());
    match STEPS.get(pos + 1) {
        Some(next) => {
            let next_run = StepRun::new(
                snap.instance.id,
                (*next).into(),
                StepStatus::Pending,
                run.output.clone().unwrap_or_default(),
                now,
            );
            t.steps.push(StepWrite {
                run: next_run,
                expect: None,
            });
            t.queue
                .push(QueueOp::Upsert(item(snap.instance.id, next, now)));
        }
        None => {
            t.instance.status = Status::Completed;
            t.instance.output = run.output;
            t.events.push(event(EventKind::WorkflowCompleted, None));
        }
    }
    t
}

/// The output of every step (shared: building JSON is not what is measured).
fn output() -> Payload {
    static OUTPUT: std::sync::OnceLock<Payload> = std::sync::OnceLock::new();
    OUTPUT
        .get_or_init(|| Payload::new(serde_json::json!({ "ok": true })))
        .clone()
}

fn ids(n: usize) -> Vec<InstanceId> {
    (0..n).map(|_| InstanceId(uuid::Uuid::now_v7())).collect()
}

async fn prefill<S: Store + ?Sized>(store: &Arc<S>, n: usize) {
    // Concurrent creates so the redb writer groups them.
    let chunks: Vec<Vec<InstanceId>> = ids(n).chunks(256).map(<[_]>::to_vec).collect();
    for chunk in chunks {
        futures::future::join_all(chunk.into_iter().map(|id| {
            let store = store.clone();
            async move { store.create_instance(start(id, T0)).await.expect("create") }
        }))
        .await;
    }
}

fn request(owner: &str, limit: usize) -> ClaimRequest {
    ClaimRequest {
        owner: owner.into(),
        handlers: vec![HANDLER.into()],
        limit,
        now: T0.add_ms(1),
    }
}

/// Claims/s: `workers` tasks claim batches of `batch` until the queue is empty.
async fn claims<S: Store + ?Sized + 'static>(
    store: Arc<S>,
    n: usize,
    workers: usize,
    batch: usize,
    started: impl FnOnce(),
) -> f64 {
    prefill(&store, n).await;
    started();
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let req = request(&format!("w{w}"), batch);
                let mut got = 0;
                loop {
                    let c = store.claim(&req).await.expect("claim");
                    if c.is_empty() {
                        return got;
                    }
                    got += c.len();
                }
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("join");
    }
    assert_eq!(total, n, "every item claimed once");
    total as f64 / start.elapsed().as_secs_f64()
}

/// Step completions/s: `workers` tasks claim batches and complete every claimed step
/// concurrently, until `n` instances ran their three steps. With `eager`, each completion
/// leases the next step of its instance to the worker (as the engine does), which completes
/// it in turn.
async fn completions<S: Store + ?Sized + 'static>(
    store: Arc<S>,
    n: usize,
    workers: usize,
    batch: usize,
    eager: bool,
    started: impl FnOnce(),
) -> f64 {
    prefill(&store, n).await;
    started();
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut done = 0_usize;
                let mut now = T0.add_ms(1);
                let mut idle = 0;
                loop {
                    let mut req = request(&format!("w{w}"), batch);
                    req.now = now;
                    let claimed = store.claim(&req).await.expect("claim");
                    if claimed.is_empty() {
                        // Other workers may still be queueing follow-up steps.
                        idle += 1;
                        if idle > 50 {
                            return done;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    }
                    idle = 0;
                    let owner: Arc<str> = format!("w{w}").into();
                    let results = futures::future::join_all(claimed.into_iter().map(|c| {
                        let store = store.clone();
                        let owner = owner.clone();
                        async move {
                            // Built once per chain, as the engine does.
                            let claim = EagerClaim {
                                owner,
                                handlers: vec![HANDLER.into()],
                                limit: 1,
                            };
                            let mut next = Some(c);
                            let mut done = 0_usize;
                            while let Some(c) = next.take() {
                                let key = c.item.key.clone();
                                let token = c.item.lease.as_ref().map(|l| l.token).expect("lease");
                                let id = key.instance_id;
                                let f: floxy_core::store::TransitionFn =
                                    Box::new(move |s| Ok(complete(s, &key, token, now)));
                                if eager {
                                    // The engine's path: the completion leases the step it
                                    // queues to this worker in the same commit.
                                    let (_, items) = store
                                        .update_instance_eager(id, f, &claim)
                                        .await
                                        .expect("completion");
                                    next = items.into_iter().next();
                                } else {
                                    store.update_instance(id, f).await.expect("completion");
                                }
                                done += 1;
                            }
                            done
                        }
                    }))
                    .await;
                    done += results.into_iter().sum::<usize>();
                    now = now.add_ms(1);
                }
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("join");
    }
    assert_eq!(total, n * STEPS.len(), "every step completed once");
    total as f64 / start.elapsed().as_secs_f64()
}

/// 3-step sagas/s through the engine.
async fn sagas(store: Arc<dyn Store>, n: usize, stopped: impl FnOnce()) -> f64 {
    // `FLOXY_BENCH_SAGA_WORKERS` / `FLOXY_BENCH_SAGA_BATCH` override the pool (1 024
    // workers, claim batches of 256). Each saga waits for five commits in turn (start, claim,
    // three completions), so sagas/s is in-flight sagas over that latency: with 512 workers
    // and batches of 128 both stores ran 10-20 % fewer sagas/s in alternating runs.
    let engine = Engine::builder(store)
        .workers(env("FLOXY_BENCH_SAGA_WORKERS").unwrap_or(1024))
        .batch_size(env("FLOXY_BENCH_SAGA_BATCH").unwrap_or(256))
        // Eager claims are the engine default; `FLOXY_BENCH_EAGER=0` turns them off.
        .eager_claims(std::env::var("FLOXY_BENCH_EAGER").map_or(true, |v| v != "0"))
        .poll_interval_ms(50)
        .build();
    for s in STEPS {
        engine.register_fn(s, |_ctx, input: Payload| async move { Ok(input) });
    }
    let def = Builder::new("saga", 1)
        .step("s1", "s1")
        .then("s2", "s2")
        .then("s3", "s3")
        .build()
        .expect("definition");
    let wf = engine.register_workflow(def).await.expect("register");
    engine.start_workers().expect("workers");
    let start = Instant::now();
    let mut started = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let ids = futures::future::join_all(
            chunk
                .iter()
                .map(|i| engine.start(&wf, serde_json::json!({ "n": i }))),
        )
        .await;
        started.extend(ids.into_iter().map(|r| r.expect("start")));
    }
    // The clock stops when the store counts every saga completed (its published counters:
    // no read transaction), polled every 2 ms; each saga is then checked one by one, outside
    // the measured time. Reading the 10 000 snapshots back inside it (one `wait_for` each, as
    // this bench did before) cost about a fifth of the run's CPU, taken from the engine.
    let completed = |stats: &floxy_core::store::StoreStats| {
        stats
            .instances_by_status
            .iter()
            .find(|(s, _)| s == InstanceStatus::Completed.as_str())
            .map_or(0, |(_, c)| *c)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while completed(&engine.stats().await.expect("stats")) < n as u64 {
        assert!(Instant::now() < deadline, "sagas did not complete in 120 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stopped();
    for id in started {
        let r = engine
            .wait_for(id, Duration::from_secs(120))
            .await
            .expect("wait");
        assert_eq!(r.status, InstanceStatus::Completed);
    }
    engine.shutdown(Duration::from_secs(10)).await;
    rate
}

/// Bursts of creates with pauses between them: each create's latency (from the call to its
/// durable acknowledgement). 256 creates in flight at a time.
async fn bursts(store: &RedbStore, bursts: usize, per_burst: usize, pause: Duration) -> Vec<f64> {
    let mut latencies = Vec::with_capacity(bursts * per_burst);
    let all = ids(bursts * per_burst);
    for burst in all.chunks(per_burst) {
        for chunk in burst.chunks(256) {
            let done = futures::future::join_all(chunk.iter().map(|id| async move {
                let t = Instant::now();
                store.create_instance(start(*id, T0)).await.expect("create");
                t.elapsed().as_secs_f64() * 1e3
            }))
            .await;
            latencies.extend(done);
        }
        tokio::time::sleep(pause).await;
    }
    latencies
}

/// The `q` quantile of `sorted`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

/// Environment variable `name` parsed, if set and valid.
fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

struct Redb {
    _dir: tempfile::TempDir,
    store: Arc<RedbStore>,
}

fn redb() -> Redb {
    redb_with(|o| o)
}

/// A store on a fresh file with the bench's options, then `adjust`'s.
fn redb_with(adjust: impl FnOnce(RedbOptions) -> RedbOptions) -> Redb {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(
        dir.path().join("bench.redb"),
        adjust(
            RedbOptions::default()
                .durability(Durability::Immediate)
                .cache_size_bytes(env::<usize>("BENCH_CACHE_MB").unwrap_or(64) << 20)
                .snapshot_cache_instances(
                    env("FLOXY_BENCH_SNAPSHOT_CACHE")
                        .unwrap_or(floxy_store_redb::DEFAULT_SNAPSHOT_CACHE_INSTANCES),
                ),
        ),
    )
    .expect("open");
    Redb {
        _dir: dir,
        store: Arc::new(store),
    }
}

/// Where the measured part of a run started: the writer's counters, the time, the CPU time
/// of every thread.
struct Mark {
    stats: WriterStats,
    at: Instant,
    cpu: BTreeMap<String, f64>,
    process_cpu: f64,
}

impl Mark {
    fn now(store: &RedbStore) -> Self {
        Self {
            stats: store.writer_stats(),
            at: Instant::now(),
            cpu: thread_cpu(),
            process_cpu: process_cpu(),
        }
    }
}

/// CPU seconds (user + system) of each live thread of this process, summed by thread name
/// (Linux `/proc/self/task/*/stat`, in clock ticks of 10 ms; empty where that is missing).
fn thread_cpu() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = match &stat[open + 1..close] {
            n if n.starts_with("tokio") => "runtime",
            n if n.starts_with("floxy-redb-writ") => "preparing",
            n if n.starts_with("floxy-redb-comm") => "committing",
            n if n.starts_with("floxy-redb-noti") => "replies",
            n if n.starts_with("floxy-redb-log") => "log",
            _ => "other",
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(name.to_owned()).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    out
}

/// CPU seconds (user + system) of this whole process, threads that exited included (which
/// `thread_cpu` never sees).
fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// What the writer and the process did during the measured part of a run (`start`: its
/// beginning; `None`: the store's whole life).
fn note(notes: &mut Vec<String>, what: &str, store: &RedbStore, start: Option<Mark>) {
    let s = store.writer_stats();
    let (b, wall, cpu_before, process_before) = match start {
        Some(m) => (m.stats, m.at.elapsed(), m.cpu, m.process_cpu),
        None => (WriterStats::default(), Duration::ZERO, BTreeMap::new(), 0.0),
    };
    let batches = s.batches - b.batches;
    let requests = s.requests - b.requests;
    let preparing = (s.preparing - b.preparing).as_secs_f64();
    let applying = ((s.busy - s.preparing) - (b.busy - b.preparing)).as_secs_f64();
    let committing = (s.committing - b.committing).as_secs_f64();
    let wall = wall.as_secs_f64();
    let mut line = format!(
        "{what}: {batches} group commits, {:.1} requests each on average (largest {}); per request {:.1} µs preparing, {:.1} µs applying and committing ({committing:.2} s in redb's commits)",
        requests as f64 / batches.max(1) as f64,
        s.largest_batch,
        1e6 * preparing / requests.max(1) as f64,
        1e6 * applying / requests.max(1) as f64,
    );
    if wall > 0.0 {
        line.push_str(&format!(
            "; of {wall:.2} s the committing thread was busy {:.0} %",
            100.0 * applying / wall
        ));
        let mut cpu: Vec<(String, f64)> = thread_cpu()
            .into_iter()
            .map(|(k, v)| {
                let d = v - cpu_before.get(&k).copied().unwrap_or(0.0);
                (k, d.max(0.0))
            })
            .collect();
        let live: f64 = cpu.iter().map(|(_, v)| v).sum();
        // Threads that exited meanwhile count in the total.
        let total = (process_cpu() - process_before).max(live);
        cpu.push(("exited".to_owned(), total - live));
        if total > 0.0 {
            line.push_str(&format!(
                "; CPU {total:.2} s ({:.0} % of the cores, {:.1} µs per request):",
                100.0 * total / (wall * cores() as f64),
                1e6 * total / requests.max(1) as f64
            ));
            for (k, v) in cpu {
                line.push_str(&format!(" {k} {v:.2}"));
            }
        }
    }
    notes.push(line);
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Runs one part on the memory store (unless `redb_only`) and on a fresh redb file; notes the
/// redb writer's work from the moment the part calls `started` (after its prefill). Returns
/// (memory, redb) rates.
async fn compare<F, Fut>(
    notes: &mut Vec<String>,
    what: &str,
    redb_only: bool,
    part: F,
) -> (f64, f64)
where
    F: Fn(Arc<dyn Store>, Box<dyn FnOnce() + Send>) -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let m = if redb_only {
        0.0
    } else {
        part(Arc::new(MemoryStore::new()), Box::new(|| ())).await
    };
    let r = redb();
    let start = Arc::new(parking_lot::Mutex::new(None));
    let started = {
        let (start, store) = (start.clone(), r.store.clone());
        Box::new(move || *start.lock() = Some(Mark::now(&store)))
    };
    let d = part(r.store.clone(), started).await;
    note(notes, what, &r.store, start.lock().take());
    r.store.close().await.expect("close");
    (m, d)
}

fn row(what: &str, workers: &str, memory: f64, redb: f64) {
    println!("| {what:<34} | {workers:>7} | {memory:>12.0} | {redb:>12.0} |");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = |what: &str| {
        let named: Vec<&String> = args
            .iter()
            .skip(1)
            .filter(|a| {
                [
                    "claims",
                    "completions",
                    "chains",
                    "bursts",
                    "sagas",
                    "redb-only",
                ]
                .contains(&a.as_str())
            })
            .filter(|a| *a != "redb-only")
            .collect();
        named.is_empty() || named.iter().any(|a| *a == what)
    };
    let redb_only = args.iter().any(|a| a == "redb-only");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (n_claims, n_steps, n_sagas) = if quick {
        (10_000, 5_000, 2_000)
    } else {
        (50_000, 20_000, 10_000)
    };
    // `FLOXY_BENCH_STEP_INSTANCES=N` runs the completions part on N instances (3 N
    // completions).
    let n_steps = env("FLOXY_BENCH_STEP_INSTANCES").unwrap_or(n_steps);
    let batch = 64;
    // `FLOXY_BENCH_WORKERS=1,64` overrides the worker counts of claims and completions.
    let workers: Vec<usize> = std::env::var("FLOXY_BENCH_WORKERS")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 4, 16]);
    println!(
        "floxy-store-redb throughput (durability immediate; batch {batch}; {} cores; {} allocator)",
        cores(),
        if cfg!(feature = "bench-mimalloc") {
            "mimalloc"
        } else {
            "system"
        }
    );
    println!();
    println!(
        "| {:<34} | {:>7} | {:>12} | {:>12} |",
        "measure (per second)", "workers", "memory", "redb"
    );
    println!("|{:-<36}|{:-<9}:|{:-<13}:|{:-<13}:|", "", "", "", "");
    let notes = rt.block_on(async {
        let mut notes = Vec::new();
        for &w in &workers {
            if !only("claims") {
                break;
            }
            let (m, d) = compare(
                &mut notes,
                &format!("claims, {w} workers"),
                redb_only,
                |st, started| claims(st, n_claims, w, batch, started),
            )
            .await;
            row("claims", &w.to_string(), m, d);
        }
        // The plain part, then the eager chains (see the module docs).
        for (part, eager, note, label) in [
            (
                "completions",
                false,
                "completions",
                "durable step completions",
            ),
            (
                "chains",
                true,
                "chained completions",
                "durable completions, eager chains",
            ),
        ] {
            for &w in &workers {
                if !only(part) {
                    break;
                }
                let (m, d) = compare(
                    &mut notes,
                    &format!("{note}, {w} workers"),
                    redb_only,
                    |st, started| completions(st, n_steps, w, batch, eager, started),
                )
                .await;
                row(label, &w.to_string(), m, d);
            }
        }
        if only("sagas") {
            let m = if redb_only {
                0.0
            } else {
                sagas(Arc::new(MemoryStore::new()), n_sagas, || ()).await
            };
            let r = redb();
            let start = Mark::now(&r.store);
            let d = sagas(r.store.clone(), n_sagas, || {
                note(&mut notes, "sagas", &r.store, Some(start));
            })
            .await;
            r.store.close().await.expect("close");
            row(
                "3-step sagas (engine, end to end)",
                &std::env::var("FLOXY_BENCH_SAGA_WORKERS").unwrap_or_else(|_| "1024".to_owned()),
                m,
                d,
            );
        }
        // Last: the kernel is still writing back its files for a while, and the sagas part
        // right after it once ran at a third of its usual rate.
        if only("bursts") {
            // 12 bursts of 8 000 creates with 400 ms pauses.
            {
                let r = redb();
                let mut l = bursts(&r.store, 12, 8_000, Duration::from_millis(400)).await;
                l.sort_by(f64::total_cmp);
                notes.push(format!(
                    "bursts: create latency p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
                    quantile(&l, 0.5),
                    quantile(&l, 0.99),
                    quantile(&l, 0.999),
                    quantile(&l, 1.0),
                ));
                r.store.close().await.expect("close");
            }
        }
        notes
    });
    println!();
    for n in notes {
        println!("* redb {n}");
    }
}
