//! The runtime's failpoints really fire (feature `failpoints`; the fail registry is
//! process-global, so these tests take a lock and run one at a time).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test holds LOCK for its whole body on purpose: the fail registry is process-global.
#![allow(clippy::await_holding_lock)]

use floxy::{
    Builder, Engine, EventKind, InstanceStatus, MemoryStore, Payload, StepContext, Timestamp,
    TokioClock,
};
use floxy_chaos::inject::failpoints::{
    self, AFTER_CLAIM, AFTER_COMMIT, BEFORE_COMMIT, FailpointSpec, HEARTBEAT, INSIDE_COMMIT,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static LOCK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn arm(name: &str, actions: &str) -> failpoints::FailpointGuard {
    failpoints::arm(&[FailpointSpec {
        name: name.into(),
        actions: actions.into(),
    }])
    .unwrap()
}

/// An engine on virtual time with one step `work` that counts its calls and sleeps
/// `sleep_ms`; lease TTL 1 s.
async fn setup(sleep_ms: u64) -> (Engine, Arc<AtomicU32>, floxy::WorkflowId) {
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder(store)
        .clock(Arc::new(TokioClock::with_epoch(Timestamp(
            1_700_000_000_000,
        ))))
        .poll_interval_ms(50)
        .worker_id("fp")
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    engine.register_fn("work", move |_ctx: StepContext, input: Payload| {
        let c = Arc::clone(&c);
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
            Ok(input)
        }
    });
    let def = Builder::new("fp", 1)
        .lease_ttl_ms(1_000)
        .step("work", "work")
        .max_retries(3)
        .retry_delay_ms(10)
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    (engine, calls, wf)
}

async fn events(engine: &Engine, id: floxy::InstanceId, kind: EventKind) -> usize {
    engine
        .events(id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == kind)
        .count()
}

#[tokio::test(start_paused = true)]
async fn after_claim_abandons_the_attempt() {
    let _l = LOCK.lock();
    let _g = arm(AFTER_CLAIM, "1*return");
    let (engine, calls, wf) = setup(0).await;
    let done = engine
        .start_and_wait(&wf, serde_json::json!({}), Duration::from_mins(1))
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    // The abandoned claim never called the handler; its lease expired and counted.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(events(&engine, done.id, EventKind::LeaseExpired).await, 1);
    assert_eq!(engine.steps(done.id).await.unwrap()[0].attempts, 2);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn before_commit_loses_a_finished_result() {
    let _l = LOCK.lock();
    let _g = arm(BEFORE_COMMIT, "1*return");
    let (engine, calls, wf) = setup(0).await;
    let done = engine
        .start_and_wait(&wf, serde_json::json!({}), Duration::from_mins(1))
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    // The handler ran, its result was lost, it ran again.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(events(&engine, done.id, EventKind::LeaseExpired).await, 1);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn after_commit_keeps_the_commit() {
    let _l = LOCK.lock();
    let _g = arm(AFTER_COMMIT, "1*return");
    let (engine, calls, wf) = setup(0).await;
    let done = engine
        .start_and_wait(&wf, serde_json::json!({}), Duration::from_mins(1))
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    // The commit was durable: no second call, no expired lease.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(events(&engine, done.id, EventKind::LeaseExpired).await, 0);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn skipped_heartbeats_let_a_long_handler_lose_its_lease() {
    let _l = LOCK.lock();
    // Every heartbeat skipped while the 3 s handler runs on a 1 s lease.
    let mut g = arm(HEARTBEAT, "return");
    let (engine, calls, wf) = setup(3_000).await;
    let id = engine.start(&wf, serde_json::json!({})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    g.disarm();
    let done = engine.wait_for(id, Duration::from_mins(1)).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "the expired attempt was re-run"
    );
    assert!(events(&engine, id, EventKind::LeaseExpired).await >= 1);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn numeric_return_is_an_async_delay() {
    let _l = LOCK.lock();
    // The commit waits 500 ms (within the 1 s lease) on the tokio timer.
    let _g = arm(BEFORE_COMMIT, "1*return(500)");
    let (engine, calls, wf) = setup(0).await;
    let t = tokio::time::Instant::now();
    let done = engine
        .start_and_wait(&wf, serde_json::json!({}), Duration::from_mins(1))
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(events(&engine, done.id, EventKind::LeaseExpired).await, 0);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn inside_commit_failure_is_retried() {
    let _l = LOCK.lock();
    let _g = arm(INSIDE_COMMIT, "2*return");
    let (engine, calls, wf) = setup(0).await;
    let done = engine
        .start_and_wait(&wf, serde_json::json!({}), Duration::from_mins(1))
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn inside_commit_lost_acknowledgement_applies_once() {
    let _l = LOCK.lock();
    let _g = arm(INSIDE_COMMIT, "1*return(applied)");
    let (engine, calls, wf) = setup(0).await;
    let id = engine.start(&wf, serde_json::json!({})).await.unwrap();
    let done = engine.wait_for(id, Duration::from_mins(1)).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(events(&engine, id, EventKind::StepCompleted).await, 1);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn chaos_run_with_crash_failpoints_keeps_every_invariant() {
    let _l = LOCK.lock();
    let mut sc = floxy_chaos::sim::scenario(11);
    sc.failpoints = FailpointSpec::crash_profile();
    let r = floxy_chaos::sim::run(sc).unwrap();
    assert!(r.passed(), "{}", r.to_text());
    assert!(
        r.stats.lease_expiries > 0,
        "crash failpoints fired: {}",
        r.to_text()
    );
}

/// Finding F3: when every holder of a claim is slower than the lease TTL before it reports
/// (here: a 5 s stall after every claim on a 1 s lease), each report carries a stale token
/// and is refused, the item is reclaimed again and again, and its attempt counter grows
/// without bound: the instance never fails (SEMANTICS §4: expired leases count as failed
/// attempts, so a worker that dies every time must end in a final failure).
#[tokio::test(start_paused = true)]
async fn finding_f3_slow_claimers_livelock() {
    let _l = LOCK.lock();
    let _g = arm(AFTER_CLAIM, "return(5000)");
    let (engine, _calls, wf) = setup(0).await;
    let id = engine.start(&wf, serde_json::json!({})).await.unwrap();
    let r = engine.wait_for(id, Duration::from_mins(2)).await;
    let q = engine.queue(id).await.unwrap();
    let attempts: Vec<u32> = q.iter().map(|i| i.attempt).collect();
    assert!(
        r.is_ok(),
        "instance did not settle in 120 s (max_retries 3); queue item attempts now {attempts:?}"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}
