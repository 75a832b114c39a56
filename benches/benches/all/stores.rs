//! Throughput of the stores side by side, in one run (the memory store, the redb store on a
//! fresh file, the PostgreSQL store in a fresh schema):
//!
//! * **claims/s** (part `claims`): `W` concurrent workers claim batches until a prefilled
//!   queue is empty;
//! * **durable step completions/s** (part `completions`): `W` concurrent workers each claim a
//!   batch and complete every claimed step with its own `update_instance` (fencing check,
//!   step CAS, queue delete, event, the next step queued), all of a worker's completions in
//!   flight at once; a completion counts when it is acknowledged, i.e. durable (redb:
//!   `Durability::Immediate`; PostgreSQL: `fsync=on`);
//! * **durable completions in eager chains/s** (part `completions`): the same, but the way
//!   the engine completes steps (its default): each completion leases the step it queues to
//!   the completing worker in the same commit (`update_instance_eager`), and the worker
//!   completes that one next, so only an instance's first step is claimed;
//! * **3-step sagas/s end to end** (part `sagas`): the `floxy` engine with its worker pool
//!   (1 024 workers, claim batches of 256) runs `N` instances of a three-step workflow with
//!   no-op handlers, from the first start to the last completion.
//!
//! Moved from `floxy-store-redb/benches/throughput.rs` (memory next to redb), PostgreSQL
//! added (its tables get a `VACUUM ANALYZE` after each prefill, outside the measured time,
//! as autovacuum would have them in a running system). Files live in a temporary directory on the same disk as the system temp dir
//! (`TMPDIR`).

use floxy::{Builder, Engine, InstanceStatus, Payload};
use floxy_core::eager::EagerClaim;
use floxy_core::model::{
    EventKind, InstanceId, InstanceRecord, InstanceSnapshot, InstanceStatus as Status, LeaseCheck,
    NewEvent, QueueItem, QueueKey, QueueOp, StepRun, StepStatus, StepWrite, Timestamp, Transition,
    WorkKind, WorkflowId,
};
use floxy_core::store::{ClaimRequest, Store};
use floxy_store_memory::MemoryStore;
use floxy_store_postgres::PostgresStore;
use floxy_store_redb::{Durability, RedbOptions, RedbStore, WriterStats};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::report::Report;
use crate::{Backend, Opts, postgres};

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
    if let Some(next) = STEPS.get(pos + 1) {
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
    } else {
        t.instance.status = Status::Completed;
        t.instance.output = run.output;
        t.events.push(event(EventKind::WorkflowCompleted, None));
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
    started: Started,
) -> f64 {
    prefill(&store, n).await;
    started().await;
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
    started: Started,
) -> f64 {
    prefill(&store, n).await;
    started().await;
    let start = Instant::now();
    // Completed steps of all workers: a worker stops when every step is done (an empty claim
    // alone does not mean that: other workers' completions may be queueing follow-up steps).
    let all_done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let store = store.clone();
            let all_done = all_done.clone();
            tokio::spawn(async move {
                let mut done = 0_usize;
                let mut now = T0.add_ms(1);
                loop {
                    if all_done.load(Ordering::Relaxed) >= n * STEPS.len() {
                        return done;
                    }
                    let mut req = request(&format!("w{w}"), batch);
                    req.now = now;
                    let claimed = store.claim(&req).await.expect("claim");
                    if claimed.is_empty() {
                        tokio::task::yield_now().await;
                        continue;
                    }
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
                    let finished = results.into_iter().sum::<usize>();
                    all_done.fetch_add(finished, Ordering::Relaxed);
                    done += finished;
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
/// `poll`: how often the store's counters are read to see whether all sagas completed
/// (PostgreSQL counts with a query that competes with the engine: poll it sparingly).
async fn sagas(store: Arc<dyn Store>, n: usize, poll: Duration, started: Started) -> f64 {
    // Each saga waits for five commits in turn (start, claim, three completions), so sagas/s
    // is in-flight sagas over that latency: with 512 workers and batches of 128 the memory
    // and redb stores ran 10-20 % fewer sagas/s in alternating runs. Eager claims are the
    // engine default.
    let engine = Engine::builder(store)
        .workers(SAGA_WORKERS)
        .batch_size(SAGA_BATCH)
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
    started().await;
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
    // The clock stops when the store counts every saga completed (redb: its published
    // counters, no read transaction), polled every `poll`; each saga is then checked one by one, outside
    // the measured time. Reading the 10 000 snapshots back inside it (one `wait_for` each, as
    // this bench did before) cost about a fifth of the run's CPU, taken from the engine.
    let completed = |stats: &floxy_core::store::StoreStats| {
        stats
            .instances_by_status
            .iter()
            .find(|(s, _)| s == InstanceStatus::Completed.as_str())
            .map_or(0, |(_, c)| *c)
    };
    let deadline = Instant::now() + Duration::from_mins(5);
    while completed(&engine.stats().await.expect("stats")) < n as u64 {
        assert!(Instant::now() < deadline, "sagas did not complete in 300 s");
        tokio::time::sleep(poll).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    for id in started {
        let r = engine
            .wait_for(id, Duration::from_mins(2))
            .await
            .expect("wait");
        assert_eq!(r.status, InstanceStatus::Completed);
    }
    engine.shutdown(Duration::from_secs(10)).await;
    rate
}

/// The engine's pool in the sagas part.
const SAGA_WORKERS: usize = 1024;
/// The engine's claim batch in the sagas part.
const SAGA_BATCH: usize = 256;

struct Redb {
    _dir: tempfile::TempDir,
    store: Arc<RedbStore>,
}

/// A store on a fresh file: default options, durable commits.
fn redb() -> Redb {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(
        dir.path().join("bench.redb"),
        RedbOptions::default().durability(Durability::Immediate),
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
    let preparing = s.preparing.saturating_sub(b.preparing).as_secs_f64();
    let applying = (s.busy.saturating_sub(s.preparing))
        .saturating_sub(b.busy.saturating_sub(b.preparing))
        .as_secs_f64();
    let committing = s.committing.saturating_sub(b.committing).as_secs_f64();
    let wall = wall.as_secs_f64();
    let mut line = format!(
        "{what}: {batches} group commits, {:.1} requests each on average (largest {}); per request {:.1} µs preparing, {:.1} µs applying and committing ({committing:.2} s in redb's commits)",
        requests as f64 / batches.max(1) as f64,
        s.largest_batch,
        1e6 * preparing / requests.max(1) as f64,
        1e6 * applying / requests.max(1) as f64,
    );
    if wall > 0.0 {
        let _ = write!(
            line,
            "; of {wall:.2} s the committing thread was busy {:.0} %",
            100.0 * applying / wall
        );
        let mut cpu: Vec<(String, f64)> = thread_cpu()
            .into_iter()
            .map(|(k, v)| {
                let d = v - cpu_before.get(&k).copied().unwrap_or(0.0);
                (k, d.max(0.0))
            })
            .collect();
        let live_cpu: f64 = cpu.iter().map(|(_, v)| v).sum();
        // Threads that exited meanwhile count in the total.
        let total = (process_cpu() - process_before).max(live_cpu);
        cpu.push(("exited".to_owned(), total - live_cpu));
        if total > 0.0 {
            let _ = write!(
                line,
                "; CPU {total:.2} s ({:.0} % of the cores, {:.1} µs per request):",
                100.0 * total / (wall * cores() as f64),
                1e6 * total / requests.max(1) as f64
            );
            for (k, v) in cpu {
                let _ = write!(line, " {k} {v:.2}");
            }
        }
    }
    notes.push(line);
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Runs one part on a fresh store of `backend` (PostgreSQL: a fresh schema on `pg`); notes
/// what the redb writer or the PostgreSQL group committer did from the moment the part
/// calls `started` (after its prefill). Returns the part's rate.
async fn measure<F, Fut>(
    notes: &mut Vec<String>,
    what: &str,
    backend: Backend,
    pg: Option<&str>,
    part: F,
) -> f64
where
    F: FnOnce(Arc<dyn Store>, Started) -> Fut,
    Fut: Future<Output = f64>,
{
    match backend {
        Backend::Memory => {
            part(
                Arc::new(MemoryStore::new()),
                Box::new(|| Box::pin(async {})),
            )
            .await
        }
        Backend::Redb => {
            let r = redb();
            let start = Arc::new(parking_lot::Mutex::new(None));
            let started = {
                let (start, store) = (start.clone(), r.store.clone());
                Box::new(move || {
                    *start.lock() = Some(Mark::now(&store));
                    Box::pin(async {}) as Pin<Box<dyn Future<Output = ()> + Send>>
                })
            };
            let rate = part(r.store.clone(), started).await;
            note(notes, what, &r.store, start.lock().take());
            r.store.close().await.expect("close");
            rate
        }
        Backend::Postgres => {
            let url = pg.expect("a PostgreSQL server for the postgres backend");
            let store: PostgresStore = postgres::fresh_store(url, 64).await;
            let start = Arc::new(parking_lot::Mutex::new(None));
            let started = {
                let (start, store) = (start.clone(), store.clone());
                // Statistics for the planner after the bulk prefill, as autovacuum would
                // have them in a running system (a fresh table's plans are for an empty one).
                Box::new(move || {
                    Box::pin(async move {
                        postgres::vacuum(&store).await;
                        *start.lock() = Some(store.group_commit_stats());
                    }) as Pin<Box<dyn Future<Output = ()> + Send>>
                })
            };
            let rate = part(Arc::new(store.clone()), started).await;
            if let Some(b) = start.lock().take()
                && store.group_commit_stats().batches > b.batches
            {
                let a = store.group_commit_stats();
                notes.push(format!(
                    "{what}: {} commit transactions, {:.1} calls each on average",
                    a.batches - b.batches,
                    (a.calls - b.calls) as f64 / (a.batches - b.batches).max(1) as f64
                ));
            }
            postgres::drop_store(&store).await;
            rate
        }
    }
}

/// A part run on one store: the store, the callback that marks the end of its prefill; its
/// rate.
type PartFn = dyn Fn(Arc<dyn Store>, Started) -> Pin<Box<dyn Future<Output = f64> + Send>>;

/// Called by a part when its prefill is done and the measured part begins.
type Started = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// One measure on every backend of the run: `(backend, rate)`.
type Row = Vec<(Backend, f64)>;

/// The `claims`, `completions` and `sagas` parts on every backend of `opts`, side by side,
/// with the ratios of the backends to each other. Returns the figures by measure and
/// worker count, for the ceilings.
#[allow(clippy::too_many_lines)] // one table, built in the order it is measured
pub(crate) async fn run(opts: &Opts, pg: Option<&str>, report: &mut Report) -> Figures {
    let backends: Vec<Backend> = opts
        .backends
        .iter()
        .copied()
        .filter(|b| *b != Backend::Postgres || pg.is_some())
        .collect();
    let mut figures = Figures::default();
    if backends.is_empty() {
        return figures;
    }
    let batch = 64;
    let mut notes: Vec<(Backend, String)> = Vec::new();
    let mut rows: Vec<(String, String, Row)> = Vec::new();
    let mut each = async |what: &str, label: &str, workers: String, run: &PartFn| {
        let mut row = Row::new();
        for &b in &backends {
            let mut n = Vec::new();
            let rate = measure(&mut n, &format!("{what}, {workers} workers"), b, pg, run).await;
            eprintln!("  {label}, {workers} workers, {}: {rate:.0}/s", b.name());
            notes.extend(n.into_iter().map(|n| (b, n)));
            row.push((b, rate));
        }
        rows.push((label.to_owned(), workers, row.clone()));
        row
    };
    if opts.part("claims") {
        for &w in &opts.workers {
            let n = opts.claims;
            let row = each("claims", "claims", w.to_string(), &move |s, st| {
                Box::pin(claims(s, n, w, batch, st))
            })
            .await;
            figures.claims.push((w, row));
        }
    }
    if opts.part("completions") {
        for (eager, note, label) in [
            (false, "completions", "durable step completions"),
            (
                true,
                "chained completions",
                "durable completions, eager chains",
            ),
        ] {
            for &w in &opts.workers {
                let n = opts.steps;
                let row = each(note, label, w.to_string(), &move |s, st| {
                    Box::pin(completions(s, n, w, batch, eager, st))
                })
                .await;
                if eager {
                    figures.chains.push((w, row));
                } else {
                    figures.completions.push((w, row));
                }
            }
        }
    }
    if opts.part("sagas") {
        let n = opts.sagas;
        let mut row = Row::new();
        for &b in &backends {
            let poll = if b == Backend::Postgres {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(2)
            };
            let mut n_ = Vec::new();
            let rate = measure(&mut n_, "sagas", b, pg, |s, st| sagas(s, n, poll, st)).await;
            eprintln!("  3-step sagas, {}: {rate:.0}/s", b.name());
            notes.extend(n_.into_iter().map(|x| (b, x)));
            row.push((b, rate));
        }
        rows.push((
            "3-step sagas (engine, end to end)".to_owned(),
            SAGA_WORKERS.to_string(),
            row.clone(),
        ));
        figures.sagas = row;
    }
    if rows.is_empty() {
        return figures;
    }
    report.section(&format!(
        "Stores side by side (per second; claim batches of {batch}; durable commits)"
    ));
    let mut head = String::from("| measure | workers |");
    let mut rule = String::from("|---|---:|");
    for b in &backends {
        let _ = write!(head, " {} |", b.name());
        rule.push_str("---:|");
    }
    let pairs: Vec<(Backend, Backend)> = [
        (Backend::Redb, Backend::Memory),
        (Backend::Postgres, Backend::Memory),
        (Backend::Postgres, Backend::Redb),
    ]
    .into_iter()
    .filter(|(a, b)| backends.contains(a) && backends.contains(b))
    .collect();
    for (a, b) in &pairs {
        let _ = write!(head, " {} / {} |", a.name(), b.name());
        rule.push_str("---:|");
    }
    report.line(&head);
    report.line(&rule);
    for (label, workers, row) in &rows {
        let mut line = format!("| {label} | {workers} |");
        for (_, rate) in row {
            let _ = write!(line, " {rate:.0} |");
        }
        for (a, b) in &pairs {
            let _ = write!(line, " {} |", ratio(rate_of(row, *a), rate_of(row, *b)));
        }
        report.line(&line);
    }
    report.line("");
    let mut sizes = Vec::new();
    if opts.part("claims") {
        sizes.push(format!(
            "claims {} prefilled instances per run",
            opts.claims
        ));
    }
    if opts.part("completions") {
        sizes.push(format!(
            "completions {} instances (3 steps each) per run",
            opts.steps
        ));
    }
    if opts.part("sagas") {
        sizes.push(format!(
            "sagas {} instances, the engine with {SAGA_WORKERS} workers, claim batches of \
             {SAGA_BATCH} and eager claims (the default)",
            opts.sagas
        ));
    }
    report.line(&format!("Sizes: {}.", sizes.join("; ")));
    report.line("");
    for (b, n) in notes {
        report.line(&format!("* {} {n}", b.name()));
    }
    figures
}

/// `a / b` as a percentage, or `-` when `b` is not a measure.
pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.0} %", 100.0 * a / b)
    } else {
        "-".to_owned()
    }
}

/// The rate of `backend` in `row` (0 when it did not run).
pub(crate) fn rate_of(row: &[(Backend, f64)], backend: Backend) -> f64 {
    row.iter().find(|(b, _)| *b == backend).map_or(0.0, |x| x.1)
}

/// The figures of [`run`] by worker count, for the ceilings section.
#[derive(Default)]
pub(crate) struct Figures {
    /// Claims/s by worker count.
    pub(crate) claims: Vec<(usize, Row)>,
    /// Plain durable completions/s by worker count.
    pub(crate) completions: Vec<(usize, Row)>,
    /// Completions/s in eager chains by worker count.
    pub(crate) chains: Vec<(usize, Row)>,
    /// Sagas/s.
    pub(crate) sagas: Row,
}
