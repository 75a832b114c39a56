//! Differential property test: the same random operations (create, claim, heartbeat,
//! complete / retry / fail with a fencing token, cancel, cleanup, all at explicit times) go
//! to the memory store (the oracle) and to PostgreSQL; every result and, after every
//! operation, everything both stores show about the touched instance (snapshot, steps,
//! queue, events with their sequence numbers, DLQ, stats) and `next_due` must be equal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy_core::conformance::fixtures::{
    Observation, at, event, execute, iid, instance, key, observe, step_run, write,
};
use floxy_core::machine::TransitionError;
use floxy_core::model::{
    EventKind, FencingToken, InstanceId, InstanceStatus, LeaseCheck, NewDlqRecord, Payload,
    QueueItem, QueueOp, StepStatus, Timestamp, Transition, WorkKind,
};
use floxy_core::store::{ClaimRequest, LeaseRef, Store, StoreError};
use floxy_store_memory::MemoryStore;
use floxy_store_postgres::testing::test_store;
use floxy_store_postgres::{Layout, PostgresStore};
use proptest::prelude::*;
use std::sync::Arc;

const INSTANCES: u8 = 4;
const HANDLERS: [&str; 2] = ["h1", "h2"];
const STEPS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Outcome {
    Success,
    Retry(u16),
    Fail,
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        inst: u8,
        steps: Vec<(u8, u8, u16, u8)>,
        idem: Option<u8>,
    },
    Claim {
        owner: u8,
        handlers: u8,
        limit: u8,
    },
    Heartbeat {
        owner: u8,
        picks: Vec<u8>,
    },
    Finish {
        pick: u8,
        outcome: Outcome,
    },
    Cancel {
        inst: u8,
    },
    Cleanup {
        back_ms: u16,
    },
    Advance {
        ms: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            0..INSTANCES,
            prop::collection::vec((0..3_u8, 0..2_u8, 0..2_000_u16, 0..=100_u8), 0..=3),
            prop::option::weighted(0.3, 0..3_u8)
        )
            .prop_map(|(inst, steps, idem)| Op::Create { inst, steps, idem }),
        4 => (0..3_u8, 1..=3_u8, 0..5_u8).prop_map(|(owner, handlers, limit)| Op::Claim {
            owner,
            handlers,
            limit
        }),
        1 => (0..3_u8, prop::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(owner, picks)| Op::Heartbeat { owner, picks }),
        4 => (
            any::<u8>(),
            prop_oneof![
                3 => Just(Outcome::Success),
                1 => (0..3_000_u16).prop_map(Outcome::Retry),
                1 => Just(Outcome::Fail)
            ]
        )
            .prop_map(|(pick, outcome)| Op::Finish { pick, outcome }),
        1 => (0..INSTANCES).prop_map(|inst| Op::Cancel { inst }),
        1 => (0..5_000_u16).prop_map(|back_ms| Op::Cleanup { back_ms }),
        2 => (0..40_000_u16).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A comparable rendering of a store result: the value, or the error's variant.
fn res<T: std::fmt::Debug>(r: Result<T, StoreError>) -> Result<String, String> {
    match r {
        Ok(v) => Ok(format!("{v:?}")),
        Err(e) => Err(match e {
            StoreError::StaleLease { .. } => "StaleLease".into(),
            StoreError::Conflict(_) => "Conflict".into(),
            StoreError::NotFound(_) => "NotFound".into(),
            StoreError::Rejected(e) => format!("Rejected({e})"),
            other => format!("unexpected: {other}"),
        }),
    }
}

fn create_transition(
    op_inst: u8,
    steps: &[(u8, u8, u16, u8)],
    idem_key: Option<u8>,
    now: Timestamp,
) -> Transition {
    let id = iid(u128::from(op_inst) + 1);
    let mut t = Transition {
        now,
        create: true,
        instance: instance(
            id,
            &floxy_core::conformance::fixtures::wf(),
            InstanceStatus::Running,
            now,
        ),
        steps: Vec::new(),
        queue: Vec::new(),
        events: vec![event(EventKind::WorkflowStarted, None)],
        dlq_insert: Vec::new(),
        dlq_delete: Vec::new(),
        lease_check: None,
    };
    t.instance.idempotency_key = idem_key.map(|k| format!("key-{k}"));
    let mut seen = Vec::new();
    for &(s, h, off, prio) in steps {
        let name = STEPS[usize::from(s)];
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        t.steps
            .push(write(step_run(id, name, StepStatus::Pending, now), None));
        let run_at = now.add_ms(u64::from(off));
        let mut item = execute(id, name, HANDLERS[usize::from(h)], run_at);
        item.priority = prio;
        item.order_key = QueueItem::order_key_for(run_at, prio, 2_000);
        t.queue.push(QueueOp::Upsert(item));
    }
    t
}

/// The transition a worker commits after running a claimed item.
fn finish(
    s: &floxy_core::model::InstanceSnapshot,
    claimed: &QueueItem,
    token: FencingToken,
    outcome: &Outcome,
    now: Timestamp,
) -> Transition {
    let mut t = floxy_core::conformance::fixtures::next(s, now);
    let k = claimed.key.clone();
    t.lease_check = Some(LeaseCheck {
        key: k.clone(),
        token,
    });
    let Some(mut run) = s.steps.iter().find(|r| r.step == k.step).cloned() else {
        return t;
    };
    let expect = Some(run.status);
    match outcome {
        Outcome::Success => {
            t.instance.completion_seq += 1;
            run.status = StepStatus::Completed;
            run.completed_seq = Some(t.instance.completion_seq);
            run.output = Some(Payload::new(serde_json::json!({ "done": &*k.step })));
            run.finished_at = Some(now);
            t.queue.push(QueueOp::Delete(k.clone()));
            t.events
                .push(event(EventKind::StepCompleted, Some(&k.step)));
            let others_done = s.steps.iter().filter(|r| r.step != k.step).all(|r| {
                matches!(
                    r.status,
                    StepStatus::Completed | StepStatus::Skipped | StepStatus::Failed
                )
            });
            if others_done && t.instance.status == InstanceStatus::Running {
                t.instance.status = InstanceStatus::Completed;
                t.events.push(event(EventKind::WorkflowCompleted, None));
            }
        }
        Outcome::Retry(delay) => {
            run.status = StepStatus::Retrying;
            run.error = Some("boom".into());
            let mut again = claimed.clone();
            again.lease = None;
            again.run_at = now.add_ms(u64::from(*delay));
            again.order_key = QueueItem::order_key_for(again.run_at, again.priority, 2_000);
            t.queue.push(QueueOp::Upsert(again));
            let mut e = event(EventKind::StepRetry, Some(&k.step));
            e.attempt = Some(claimed.attempt);
            t.events.push(e);
        }
        Outcome::Fail => {
            run.status = StepStatus::Failed;
            run.error = Some("fatal".into());
            t.queue.push(QueueOp::Delete(k.clone()));
            t.dlq_insert.push(NewDlqRecord {
                instance_id: k.instance_id,
                workflow_id: claimed.workflow_id.clone(),
                step: k.step.clone(),
                kind: WorkKind::Execute,
                input: run.input.clone(),
                error: "fatal".into(),
                reason: "test".into(),
            });
            t.instance.status = InstanceStatus::Dlq;
            t.events.push(event(EventKind::WorkflowDlq, None));
        }
    }
    t.steps.push(write(run, expect));
    t
}

/// Cancel: pending/retrying steps skipped and their items deleted; running ones asked to
/// stop (the instance stays `cancelling` while any runs).
fn cancel(
    s: &floxy_core::model::InstanceSnapshot,
    now: Timestamp,
) -> Result<Transition, TransitionError> {
    if s.instance.status.is_terminal() {
        return Err(TransitionError::InstanceTerminal {
            status: s.instance.status,
        });
    }
    let mut t = floxy_core::conformance::fixtures::next(s, now);
    let mut running = false;
    // Snapshot step order is unspecified: visit them by name.
    let mut steps = s.steps.clone();
    steps.sort_by(|a, b| a.step.cmp(&b.step));
    for r in &steps {
        let k = key(s.instance.id, &r.step, WorkKind::Execute);
        match r.status {
            StepStatus::Pending | StepStatus::Retrying => {
                let mut r2 = r.clone();
                r2.status = StepStatus::Skipped;
                t.steps.push(write(r2, Some(r.status)));
                t.queue.push(QueueOp::Delete(k));
            }
            StepStatus::Running => {
                running = true;
                t.queue.push(QueueOp::RequestCancel(k));
            }
            _ => {}
        }
    }
    t.instance.status = if running {
        InstanceStatus::Cancelling
    } else {
        InstanceStatus::Cancelled
    };
    t.events.push(event(EventKind::CancellationStarted, None));
    Ok(t)
}

struct Pair {
    mem: MemoryStore,
    pg: PostgresStore,
    now: Timestamp,
    /// Every claim made: (item, token).
    claimed: Vec<(QueueItem, FencingToken)>,
}

impl Pair {
    async fn observe_both(&self, id: InstanceId) -> (Observation, Observation) {
        (observe(&self.mem, id).await, observe(&self.pg, id).await)
    }

    async fn apply(&mut self, op: &Op) -> Vec<InstanceId> {
        let now = self.now;
        match op {
            Op::Create { inst, steps, idem } => {
                let t = create_transition(*inst, steps, *idem, now);
                let a = res(self.mem.create_instance(t.clone()).await);
                let b = res(self.pg.create_instance(t).await);
                assert_eq!(a, b, "create_instance");
                vec![iid(u128::from(*inst) + 1)]
            }
            Op::Claim {
                owner,
                handlers,
                limit,
            } => {
                let hs: Vec<Arc<str>> = HANDLERS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| handlers & (1 << i) != 0)
                    .map(|(_, h)| Arc::from(*h))
                    .collect();
                let req = ClaimRequest {
                    owner: Arc::from(format!("w{owner}")),
                    handlers: hs,
                    limit: usize::from(*limit),
                    now,
                };
                let a = self.mem.claim(&req).await;
                let b = self.pg.claim(&req).await;
                assert_eq!(res(a.clone()), res(b), "claim {req:?}");
                let mut touched = Vec::new();
                for c in a.unwrap_or_default() {
                    touched.push(c.item.key.instance_id);
                    if let Some(l) = &c.item.lease {
                        self.claimed.push((c.item.clone(), l.token));
                    }
                }
                touched
            }
            Op::Heartbeat { owner, picks } => {
                if self.claimed.is_empty() {
                    return Vec::new();
                }
                let refs: Vec<LeaseRef> = picks
                    .iter()
                    .map(|p| {
                        let (item, token) = &self.claimed[usize::from(*p) % self.claimed.len()];
                        LeaseRef {
                            key: item.key.clone(),
                            token: *token,
                        }
                    })
                    .collect();
                let owner = format!("w{owner}");
                let a = res(self.mem.heartbeat(&owner, &refs, now).await);
                let b = res(self.pg.heartbeat(&owner, &refs, now).await);
                assert_eq!(a, b, "heartbeat {refs:?}");
                refs.iter().map(|r| r.key.instance_id).collect()
            }
            Op::Finish { pick, outcome } => {
                if self.claimed.is_empty() {
                    return Vec::new();
                }
                let (item, token) = self.claimed[usize::from(*pick) % self.claimed.len()].clone();
                let id = item.key.instance_id;
                let (i2, o2) = (item.clone(), outcome.clone());
                let a = res(self
                    .mem
                    .update_instance(id, Box::new(move |s| Ok(finish(s, &i2, token, &o2, now))))
                    .await);
                let o3 = outcome.clone();
                let b = res(self
                    .pg
                    .update_instance(id, Box::new(move |s| Ok(finish(s, &item, token, &o3, now))))
                    .await);
                assert_eq!(a, b, "finish {outcome:?}");
                vec![id]
            }
            Op::Cancel { inst } => {
                let id = iid(u128::from(*inst) + 1);
                let a = res(self
                    .mem
                    .update_instance(id, Box::new(move |s| cancel(s, now)))
                    .await);
                let b = res(self
                    .pg
                    .update_instance(id, Box::new(move |s| cancel(s, now)))
                    .await);
                assert_eq!(a, b, "cancel");
                vec![id]
            }
            Op::Cleanup { back_ms } => {
                let cutoff = Timestamp(now.0 - i64::from(*back_ms));
                let a = res(self.mem.cleanup(cutoff).await);
                let b = res(self.pg.cleanup(cutoff).await);
                assert_eq!(a, b, "cleanup");
                (0..INSTANCES).map(|i| iid(u128::from(i) + 1)).collect()
            }
            Op::Advance { ms } => {
                self.now = now.add_ms(u64::from(*ms));
                Vec::new()
            }
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 200,
        .. ProptestConfig::default()
    })]

    #[test]
    fn memory_and_postgres_agree(ops in prop::collection::vec(op(), 1..40)) {
        runtime().block_on(async {
            let mut pair = Pair {
                mem: MemoryStore::new(),
                pg: test_store(Layout::Plain).await,
                now: at(0),
                claimed: Vec::new(),
            };
            for (n, op) in ops.iter().enumerate() {
                let touched = pair.apply(op).await;
                for hs in [&["h1"][..], &["h2", "h1"][..]] {
                    let hs: Vec<Arc<str>> = hs.iter().map(|h| Arc::from(*h)).collect();
                    assert_eq!(
                        res(pair.mem.next_due(&hs).await),
                        res(pair.pg.next_due(&hs).await),
                        "next_due({hs:?}) after op #{n} {op:?}"
                    );
                }
                for id in touched {
                    let (a, b) = pair.observe_both(id).await;
                    assert_eq!(a, b, "observations of {id} after op #{n} {op:?}");
                }
            }
            for i in 0..INSTANCES {
                let (a, b) = pair.observe_both(iid(u128::from(i) + 1)).await;
                assert_eq!(a, b, "final observation of instance {i}");
            }
        });
    }
}
