//! Two promises of SEMANTICS.md, on every backend (memory, redb on a temporary file,
//! PostgreSQL on a throwaway cluster), in real time:
//!
//! * §9: an abort fires the cancellation token of a running handler (forward or
//!   compensation) of the instance in the same moment as a cancel, not at the next heartbeat
//!   (a third of the 60 s default lease TTL).
//! * §4: a result that arrives after the step's timeout is discarded, also when the handler
//!   blocked its thread past the deadline and the timer never got a chance to fire first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{
    Builder, Engine, HandlerError, InstanceId, InstanceStatus, Payload, StepContext, StepRun,
    StepStatus, Store,
};
use parking_lot::Mutex;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long after the abort commits a running handler's token may fire at most.
const FIRE_WITHIN: Duration = Duration::from_secs(1);
/// Bound on waiting for an instance to settle.
const SETTLE: Duration = Duration::from_secs(30);
/// The step timeout of the blocking-handler tests.
const TIMEOUT_MS: u64 = 300;
/// How long the blocking handler blocks its thread (well past the timeout).
const BLOCK: Duration = Duration::from_millis(TIMEOUT_MS + 500);

/// A store of each backend; the guard keeps what the store lives in (a directory).
enum Backend {
    Memory,
    #[cfg(feature = "redb")]
    Redb,
    #[cfg(feature = "postgres")]
    Postgres,
}

async fn open(backend: &Backend) -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    match backend {
        Backend::Memory => (Arc::new(floxy::MemoryStore::new()), None),
        #[cfg(feature = "redb")]
        Backend::Redb => {
            let dir = tempfile::tempdir().unwrap();
            let store = floxy::RedbStore::open(
                dir.path().join("floxy.redb"),
                floxy::RedbOptions::default(),
            )
            .unwrap();
            (Arc::new(store), Some(dir))
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let store =
                floxy_store_postgres::testing::test_store(floxy_store_postgres::Layout::Plain)
                    .await;
            (Arc::new(store), None)
        }
    }
}

/// An engine with the default lease TTL (60 s: heartbeats every 20 s).
fn engine(store: Arc<dyn Store>) -> Engine {
    Engine::builder(store)
        .workers(4)
        .poll_interval_ms(50)
        .worker_id("deadlines")
        .build()
}

/// What a handler waiting for its token saw.
#[derive(Clone, Default)]
struct Probe {
    started: Arc<tokio::sync::Notify>,
    fired_at: Arc<Mutex<Option<Instant>>>,
    fired: Arc<tokio::sync::Notify>,
}

impl Probe {
    /// Registers `name` as a handler that raises `started`, waits for its token, records
    /// when it fired and returns an error.
    fn register(&self, engine: &Engine, name: &'static str) {
        let probe = self.clone();
        engine.register_fn(name, move |ctx: StepContext, _input: Payload| {
            let probe = probe.clone();
            async move {
                probe.started.notify_one();
                ctx.cancelled().await;
                *probe.fired_at.lock() = Some(Instant::now());
                probe.fired.notify_one();
                Err::<Payload, _>(HandlerError::retryable("stopped"))
            }
        });
    }

    async fn wait_started(&self) {
        tokio::time::timeout(SETTLE, self.started.notified())
            .await
            .expect("the handler never started");
    }

    /// When the token fired, waiting at most `within` after `since` for it.
    async fn fired_by(&self, since: Instant, within: Duration) -> Option<Instant> {
        let fired = self.fired.notified();
        if let Some(at) = *self.fired_at.lock() {
            return Some(at);
        }
        let left = within.saturating_sub(since.elapsed());
        let _ = tokio::time::timeout(left, fired).await;
        *self.fired_at.lock()
    }
}

async fn step(engine: &Engine, id: InstanceId, name: &str) -> StepRun {
    engine
        .steps(id)
        .await
        .unwrap()
        .into_iter()
        .find(|s| &*s.step == name)
        .unwrap_or_else(|| panic!("no step {name}"))
}

/// Aborts `id` and asserts that `probe`'s handler saw its token fire within
/// [`FIRE_WITHIN`] of the abort's commit.
async fn abort_and_expect_token(engine: &Engine, id: InstanceId, probe: &Probe, what: &str) {
    let asked = Instant::now();
    let rec = engine.abort(id, Some("operator")).await.unwrap();
    let committed = Instant::now();
    assert_eq!(rec.status, InstanceStatus::Aborted, "{what}");
    let fired = probe.fired_by(committed, FIRE_WITHIN).await;
    let fired = fired.unwrap_or_else(|| {
        panic!(
            "{what}: the running handler's token did not fire within {FIRE_WITHIN:?} of the \
             abort (the abort took {:?}); it would fire only at the next heartbeat",
            committed - asked
        )
    });
    assert!(
        fired.saturating_duration_since(committed) <= FIRE_WITHIN,
        "{what}: fired {:?} after the abort committed",
        fired.saturating_duration_since(committed)
    );
}

async fn abort_fires_running_tokens_at_once(backend: Backend) {
    let (store, _dir) = open(&backend).await;
    let engine = engine(store);
    // A running forward handler.
    let forward = Probe::default();
    forward.register(&engine, "waits");
    // A running compensation: `a` completed, `b` fails for good, `undo_a` waits.
    let undo = Probe::default();
    undo.register(&engine, "undo_waits");
    engine.register_fn("ok", |_ctx, input: Payload| async move { Ok(input) });
    engine.register_fn("boom", |_ctx, _input| async move {
        Err::<Payload, _>(HandlerError::fatal("no"))
    });
    let fwd = engine
        .register_workflow(
            Builder::new("abort-forward", 1)
                .step("a", "ok")
                .then("w", "waits")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let comp = engine
        .register_workflow(
            Builder::new("abort-compensation", 1)
                .step("a", "ok")
                .on_failure("undo_a", "undo_waits")
                .then("b", "boom")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();

    let id = engine.start(&fwd, json!({})).await.unwrap();
    forward.wait_started().await;
    abort_and_expect_token(&engine, id, &forward, "forward handler").await;
    let done = engine.wait_for(id, SETTLE).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Aborted);
    assert_eq!(step(&engine, id, "a").await.status, StepStatus::Completed);
    let w = step(&engine, id, "w").await;
    assert_eq!(w.status, StepStatus::Failed);
    assert!(w.output.is_none());

    let id = engine.start(&comp, json!({})).await.unwrap();
    undo.wait_started().await;
    abort_and_expect_token(&engine, id, &undo, "compensation handler").await;
    let done = engine.wait_for(id, SETTLE).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Aborted);
    assert_eq!(
        step(&engine, id, "a").await.status,
        StepStatus::CompensationFailed
    );

    engine.shutdown(Duration::from_secs(5)).await;
}

/// Registers `name` as a handler whose first `block_calls` calls block their thread past the
/// timeout and then return `{"late": true}`; later calls return `{"call": n}` at once.
fn blocking_handler(engine: &Engine, name: &'static str, block_calls: u32) -> Arc<AtomicU32> {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    engine.register_fn(name, move |_ctx: StepContext, _input: Payload| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n <= block_calls {
                std::thread::sleep(BLOCK);
                Ok(Payload::from(json!({ "late": true })))
            } else {
                Ok(Payload::from(json!({ "call": n })))
            }
        }
    });
    calls
}

async fn a_late_result_of_a_blocking_handler_is_discarded(backend: Backend) {
    let (store, _dir) = open(&backend).await;
    let engine = engine(store);
    let retried_calls = blocking_handler(&engine, "blocks_once", 1);
    let failed_calls = blocking_handler(&engine, "blocks_always", u32::MAX);
    // Retryable: the late first call counts as a timed-out attempt, the second one wins.
    let retried = engine
        .register_workflow(
            Builder::new("late-retried", 1)
                .step("s", "blocks_once")
                .timeout_ms(TIMEOUT_MS)
                .max_retries(1)
                .retry_delay_ms(10)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    // No retries: the late call is a final failure.
    let failed = engine
        .register_workflow(
            Builder::new("late-failed", 1)
                .step("s", "blocks_always")
                .timeout_ms(TIMEOUT_MS)
                .max_retries(0)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();

    let done = engine
        .start_and_wait(&retried, json!({}), SETTLE)
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(
        retried_calls.load(Ordering::SeqCst),
        2,
        "the timeout retried"
    );
    let s = step(&engine, done.id, "s").await;
    assert_eq!(s.attempts, 2);
    assert_eq!(
        s.output.as_ref().map(|p| p.value().clone()),
        Some(json!({ "call": 2 })),
        "the late result of the first call was discarded"
    );

    let done = engine
        .start_and_wait(&failed, json!({}), SETTLE)
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    assert_eq!(failed_calls.load(Ordering::SeqCst), 1);
    let s = step(&engine, done.id, "s").await;
    assert_eq!(s.status, StepStatus::Failed);
    assert!(s.output.is_none(), "late output stored: {:?}", s.output);
    let error = s.error.unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");

    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_abort_fires_running_tokens_at_once() {
    abort_fires_running_tokens_at_once(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_late_result_of_a_blocking_handler_is_discarded() {
    a_late_result_of_a_blocking_handler_is_discarded(Backend::Memory).await;
}

#[cfg(feature = "redb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_abort_fires_running_tokens_at_once() {
    abort_fires_running_tokens_at_once(Backend::Redb).await;
}

#[cfg(feature = "redb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_a_late_result_of_a_blocking_handler_is_discarded() {
    a_late_result_of_a_blocking_handler_is_discarded(Backend::Redb).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_abort_fires_running_tokens_at_once() {
    abort_fires_running_tokens_at_once(Backend::Postgres).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_late_result_of_a_blocking_handler_is_discarded() {
    a_late_result_of_a_blocking_handler_is_discarded(Backend::Postgres).await;
}
