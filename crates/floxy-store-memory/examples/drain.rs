#![allow(missing_docs, clippy::unwrap_used)]
use floxy_core::model::{
    EventKind, InstanceId, InstanceRecord, InstanceStatus, NewEvent, Payload, QueueItem,
    QueueKey, QueueOp, StepRun, StepStatus, StepWrite, Timestamp, Transition, WorkKind,
    WorkflowId,
};
use floxy_core::store::{ClaimRequest, ClaimedItem, Store, StoreError};
use floxy_store_memory::MemoryStore;
use std::future::Future;
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

fn claim(store: &MemoryStore, req: &ClaimRequest) -> Result<Vec<ClaimedItem>, StoreError> {
    now_or_never(store.claim(req))
}


fn main() {
    let batch: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let req = ClaimRequest { owner: Arc::from("w"), handlers: vec![Arc::from("h")], limit: batch, now: T0.add_ms(1_000) };
    let mut total = Duration::ZERO;
    let mut first = Duration::ZERO;
    for _ in 0..rounds {
        let store = prefilled(&["h"]);
        let t = Instant::now();
        let _ = claim(&store, &req);
        first += t.elapsed();
        let start = Instant::now();
        for _ in 0..(ITEMS / batch - 1) { let v = claim(&store, &req); std::hint::black_box(v).ok(); }
        total += start.elapsed();
    }
    let n = (rounds * (ITEMS / batch - 1) * batch) as f64;
    println!("first claim avg {:?}; steady {:.0} claims/s ({:.0} ns/item)", first / rounds as u32, n / total.as_secs_f64(), total.as_nanos() as f64 / n);
}
