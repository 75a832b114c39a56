//! Claim throughput of the memory store, single thread.
//!
//! A store is prefilled with 100,000 `Execute` items (10,000 instances of 10 pending steps,
//! spread over 1,000 distinct `run_at`s and 5 priorities) and drained by claims of a fixed
//! batch size; when it is empty, a fresh prefilled store replaces it outside the timed
//! section. The first claim on a store promotes all 100,000 items into the ready sets (they
//! all became due at once); that cost is timed and spread over the store's claims. Every claim does the full work of the contract: lease with a fencing token,
//! attempt, step run to `running`, `step_started` event, and a clone of the item and step
//! run for the caller. Throughput is reported in claimed items per second.
//!
//! Time is the thread's CPU time (from `/proc/thread-self/schedstat`, falling back to wall
//! time elsewhere), so that other load on a shared machine does not count: the benchmark is
//! single-threaded and never waits.
//!
//! Part `claims`, backend `memory` (moved from `floxy-store-memory/benches/claims.rs`, where
//! criterion ran it).

use floxy_core::model::{
    EventKind, InstanceId, InstanceRecord, InstanceStatus, NewEvent, Payload, QueueItem, QueueKey,
    QueueOp, StepRun, StepStatus, StepWrite, Timestamp, Transition, WorkKind, WorkflowId,
};
use floxy_core::store::{ClaimRequest, ClaimedItem, Store, StoreError};
use floxy_store_memory::MemoryStore;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const ITEMS: usize = 100_000;
const STEPS_PER_INSTANCE: usize = 10;
const T0: Timestamp = Timestamp(1_700_000_000_000);

/// Polls a future that never waits (every memory store method completes on first poll).
fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store never waits"),
    }
}

fn prefilled(handlers: &[&str]) -> MemoryStore {
    let store = MemoryStore::new();
    let wf = WorkflowId::new("bench", 1);
    let steps: Vec<Arc<str>> = (0..STEPS_PER_INSTANCE)
        .map(|i| Arc::from(format!("step-{i}")))
        .collect();
    let handlers: Vec<Arc<str>> = handlers.iter().map(|h| Arc::from(*h)).collect();
    let input = Payload::new(serde_json::json!({ "order": 42 }));
    for n in 0..ITEMS / STEPS_PER_INSTANCE {
        let id = InstanceId::from_u128(n as u128 + 1);
        let mut t = Transition {
            now: T0,
            create: true,
            instance: InstanceRecord {
                id,
                workflow_id: wf.clone(),
                status: InstanceStatus::Running,
                input: input.clone(),
                output: None,
                error: None,
                idempotency_key: None,
                created_at: T0,
                updated_at: T0,
                version: 1,
                completion_seq: 0,
                rollback_depth: 0,
                rollback_to: None,
                failed_step: None,
                branches: Vec::new(),
            },
            steps: Vec::new(),
            queue: Vec::new(),
            events: vec![NewEvent {
                kind: EventKind::WorkflowStarted,
                step: None,
                attempt: None,
                detail: None,
            }],
            dlq_insert: Vec::new(),
            dlq_delete: Vec::new(),
            lease_check: None,
        };
        for (i, step) in steps.iter().enumerate() {
            let k = n * STEPS_PER_INSTANCE + i;
            let run_at = T0.add_ms((k % 1_000) as u64);
            let priority = 30 + 10 * (k % 5) as u8;
            t.steps.push(StepWrite {
                run: StepRun::new(id, step.clone(), StepStatus::Pending, input.clone(), T0),
                expect: None,
            });
            t.queue.push(QueueOp::Upsert(QueueItem {
                key: QueueKey {
                    instance_id: id,
                    step: step.clone(),
                    kind: WorkKind::Execute,
                },
                workflow_id: wf.clone(),
                handler: handlers[k % handlers.len()].clone(),
                run_at,
                priority,
                order_key: QueueItem::order_key_for(run_at, priority, 2_000),
                attempt: 0,
                lease_ttl_ms: 60_000,
                cancel_requested: false,
                lease: None,
            }));
        }
        if let Err(e) = now_or_never(store.create_instance(t)) {
            panic!("prefill failed: {e}");
        }
    }
    store
}

/// A clock for the timed sections: thread CPU time where Linux exposes it, else wall time.
struct Clock {
    start: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    fn now(&self) -> Duration {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .map_or_else(|| self.start.elapsed(), Duration::from_nanos)
    }
}

fn claim(store: &MemoryStore, req: &ClaimRequest) -> Result<Vec<ClaimedItem>, StoreError> {
    now_or_never(store.claim(req))
}

/// Claimed items per second (thread CPU time) of each case: `(case, batch, items/s)`. Each
/// case claims for about `secs` seconds of CPU time (whole drained stores, at least one).
pub(crate) fn run(secs: f64) -> Vec<(&'static str, usize, f64)> {
    let clock = Clock::new();
    let cases: [(&str, &[&str], usize); 3] = [
        ("1 handler", &["h"], 1),
        ("1 handler", &["h"], 64),
        ("4 handlers", &["h0", "h1", "h2", "h3"], 64),
    ];
    let mut out = Vec::new();
    for (label, handlers, batch) in cases {
        let req = ClaimRequest {
            owner: Arc::from("bench-worker"),
            handlers: handlers.iter().map(|h| Arc::from(*h)).collect(),
            limit: batch,
            now: T0.add_ms(1_000),
        };
        // Whole stores are drained, so the promotion of newly due items (paid by the first
        // claim after they became due) is spread over all their claims; a fresh prefilled
        // store replaces a drained one outside the timed section.
        let mut total = Duration::ZERO;
        let mut claimed = 0_usize;
        while total.as_secs_f64() < secs || claimed == 0 {
            let store = prefilled(handlers);
            let start = clock.now();
            for _ in 0..ITEMS / batch {
                match claim(&store, &req) {
                    Ok(items) => assert_eq!(black_box(items).len(), batch),
                    Err(e) => panic!("claim failed: {e}"),
                }
            }
            total += clock.now().saturating_sub(start);
            claimed += ITEMS / batch * batch;
        }
        out.push((label, batch, claimed as f64 / total.as_secs_f64().max(1e-9)));
    }
    out
}
