//! Differential property test: the same random operations, with explicit timestamps, go to
//! the memory store (the oracle) and to a redb store on a real file; every result and, after
//! every operation, everything both stores show about every instance must be equal. The
//! operations include refused transitions (stale tokens, failed compare-and-set, version
//! conflicts, refusing closures), claims with expired leases and lagging clocks, heartbeats,
//! cleanup, and closing and reopening the redb file (the in-memory claim index and snapshot
//! cache are rebuilt from disk).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use floxy_core::conformance::fixtures::{
    Observation, at, dlq_record, event, execute, iid, key, next, observe, start, step_run, write,
};
use floxy_core::eager::EagerClaim;
use floxy_core::machine::TransitionError;
use floxy_core::model::{
    DlqId, EventKind, FencingToken, InstanceSnapshot, InstanceStatus, LeaseCheck, QueueKey,
    QueueOp, StepStatus, Timestamp, Transition, WorkKind,
};
use floxy_core::store::{ClaimRequest, LeaseRef, Store, StoreError};
use floxy_store_memory::MemoryStore;
use floxy_store_redb::{Durability, RedbStore};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const INSTANCES: u128 = 5;
const STEP_NAMES: [&str; 3] = ["a", "b", "c"];
const HANDLERS: [&str; 2] = ["h1", "h2"];

#[derive(Debug, Clone)]
enum Change {
    /// Complete a step: lease check with the last claimed token (or a stale one), CAS
    /// running → completed, delete its item.
    Complete { step: usize, stale: bool },
    /// The attempt failed: running → retrying, item re-queued later.
    Retry { step: usize, delay_ms: i64 },
    /// A new step run and its item.
    AddStep {
        step: usize,
        handler: usize,
        delay_ms: i64,
        priority: u8,
    },
    /// Status change (terminal statuses make the instance removable).
    Status(usize),
    /// Writes `version + 2`: a conflict.
    BadVersion,
    /// The transition function refuses.
    Refuse,
    /// Ask the holder of a step's item to stop.
    Cancel { step: usize },
    /// Write a DLQ record.
    DlqInsert { step: usize },
    /// Remove the instance's first DLQ record, or an id that may belong to another.
    DlqDelete { foreign: Option<u64> },
    /// Change the idempotency key.
    Idem(Option<u8>),
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        inst: u128,
        steps: Vec<(usize, usize)>,
        idem: Option<u8>,
    },
    Update {
        inst: u128,
        change: Change,
        /// An eager claim (`update_instance_eager`): the worker's handlers and its limit.
        eager: Option<(Vec<usize>, usize)>,
    },
    Claim {
        handlers: Vec<usize>,
        limit: usize,
        lag_ms: i64,
    },
    Heartbeat {
        picks: Vec<usize>,
        wrong_owner: bool,
    },
    Cleanup {
        back_ms: i64,
    },
    Advance(i64),
    Reopen,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0..3_usize, prop::bool::weighted(0.2)).prop_map(|(step, stale)| Change::Complete { step, stale }),
        2 => (0..3_usize, 0..5_000_i64).prop_map(|(step, delay_ms)| Change::Retry { step, delay_ms }),
        // Half the added steps are due at once, so eager updates have work to lease.
        2 => (0..3_usize, 0..2_usize, prop_oneof![Just(0_i64), 0..3_000_i64], 0..=100_u8).prop_map(|(step, handler, delay_ms, priority)| Change::AddStep { step, handler, delay_ms, priority }),
        2 => (0..InstanceStatus::ALL.len()).prop_map(Change::Status),
        1 => Just(Change::BadVersion),
        1 => Just(Change::Refuse),
        1 => (0..3_usize).prop_map(|step| Change::Cancel { step }),
        1 => (0..3_usize).prop_map(|step| Change::DlqInsert { step }),
        1 => prop::option::of(1..6_u64).prop_map(|foreign| Change::DlqDelete { foreign }),
        1 => prop::option::of(0..3_u8).prop_map(Change::Idem),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=INSTANCES, prop::collection::vec((0..3_usize, 0..2_usize), 0..3), prop::option::of(0..3_u8))
            .prop_map(|(inst, steps, idem)| Op::Create { inst, steps, idem }),
        8 => (
            1..=INSTANCES,
            change(),
            prop::option::weighted(0.4, (prop::collection::vec(0..3_usize, 1..3), 0..3_usize)),
        )
            .prop_map(|(inst, change, eager)| Op::Update { inst, change, eager }),
        // A step queued due now with the worker's handler among the eager claim's: the
        // engine's chain, so that eager leases are frequent.
        3 => (1..=INSTANCES, 0..3_usize, 0..2_usize, 0..=100_u8, 1..3_usize)
            .prop_map(|(inst, step, h, priority, limit)| Op::Update {
                inst,
                change: Change::AddStep { step, handler: h, delay_ms: 0, priority },
                eager: Some((vec![h, 2], limit)),
            }),
        4 => (prop::collection::vec(0..3_usize, 0..3), 0..5_usize, prop_oneof![3 => Just(0_i64), 1 => 1..20_000_i64])
            .prop_map(|(handlers, limit, lag_ms)| Op::Claim { handlers, limit, lag_ms }),
        2 => (prop::collection::vec(0..8_usize, 0..3), prop::bool::weighted(0.2))
            .prop_map(|(picks, wrong_owner)| Op::Heartbeat { picks, wrong_owner }),
        1 => (0..50_000_i64).prop_map(|back_ms| Op::Cleanup { back_ms }),
        3 => (0..40_000_i64).prop_map(Op::Advance),
        1 => Just(Op::Reopen),
    ]
}

/// A handler name (index 2 is the timer handler, claimed like any other).
fn handler(i: usize) -> Arc<str> {
    match HANDLERS.get(i) {
        Some(h) => Arc::from(*h),
        None => Arc::from(floxy_core::model::TIMER_HANDLER),
    }
}

/// The transition of a change, a pure function of the snapshot and the arguments.
fn transition(
    s: &InstanceSnapshot,
    change: &Change,
    now: Timestamp,
    tokens: &BTreeMap<QueueKey, FencingToken>,
) -> Result<Transition, TransitionError> {
    let id = s.instance.id;
    let mut t = next(s, now);
    let find = |step: &str| s.steps.iter().find(|r| &*r.step == step).cloned();
    match change {
        Change::Complete { step, stale } => {
            let name = STEP_NAMES[*step];
            let k = key(id, name, WorkKind::Execute);
            let token = tokens.get(&k).copied().unwrap_or(FencingToken(0));
            t.lease_check = Some(LeaseCheck {
                key: k.clone(),
                token: if *stale {
                    FencingToken(token.0 + 1_000)
                } else {
                    token
                },
            });
            let mut run =
                find(name).unwrap_or_else(|| step_run(id, name, StepStatus::Running, now));
            run.status = StepStatus::Completed;
            run.finished_at = Some(now);
            t.steps.push(write(run, Some(StepStatus::Running)));
            t.queue.push(QueueOp::Delete(k));
            t.events.push(event(EventKind::StepCompleted, Some(name)));
        }
        Change::Retry { step, delay_ms } => {
            let name = STEP_NAMES[*step];
            let mut run =
                find(name).unwrap_or_else(|| step_run(id, name, StepStatus::Running, now));
            run.status = StepStatus::Retrying;
            run.error = Some("boom".into());
            let attempts = run.attempts;
            t.steps.push(write(run, Some(StepStatus::Running)));
            let mut item = execute(id, name, HANDLERS[step % 2], Timestamp(now.0 + delay_ms));
            item.attempt = attempts;
            t.queue.push(QueueOp::Upsert(item));
            t.events.push(event(EventKind::StepRetry, Some(name)));
        }
        Change::AddStep {
            step,
            handler: h,
            delay_ms,
            priority,
        } => {
            let name = STEP_NAMES[*step];
            t.steps
                .push(write(step_run(id, name, StepStatus::Pending, now), None));
            let mut item = execute(id, name, HANDLERS[*h], Timestamp(now.0 + delay_ms));
            item.priority = *priority;
            item.order_key =
                floxy_core::model::QueueItem::order_key_for(item.run_at, *priority, 2_000);
            t.queue.push(QueueOp::Upsert(item));
        }
        Change::Status(i) => {
            t.instance.status = InstanceStatus::ALL[*i];
            t.events.push(event(EventKind::WorkflowCompleted, None));
        }
        Change::BadVersion => t.instance.version += 1,
        Change::Refuse => {
            return Err(TransitionError::InstanceTerminal {
                status: s.instance.status,
            });
        }
        Change::Cancel { step } => {
            t.queue.push(QueueOp::RequestCancel(key(
                id,
                STEP_NAMES[*step],
                WorkKind::Execute,
            )));
        }
        Change::DlqInsert { step } => {
            t.dlq_insert
                .push(dlq_record(id, &s.instance.workflow_id, STEP_NAMES[*step]));
            t.instance.status = InstanceStatus::Dlq;
        }
        Change::DlqDelete { foreign } => match foreign {
            Some(d) => t.dlq_delete.push(DlqId(*d)),
            None => {
                if let Some(r) = s.dlq.iter().min_by_key(|r| r.id) {
                    t.dlq_delete.push(r.id);
                }
            }
        },
        Change::Idem(k) => t.instance.idempotency_key = k.map(|k| format!("k{k}")),
    }
    Ok(t)
}

/// A comparable form of a store result.
fn outcome<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(StoreError::StaleLease {
            instance_id,
            step,
            kind,
            token,
        }) => {
            format!("stale {instance_id} {step} {kind} {token}")
        }
        Err(StoreError::Conflict(_)) => "conflict".into(),
        Err(StoreError::NotFound(_)) => "not found".into(),
        Err(StoreError::Rejected(e)) => format!("rejected {e}"),
        Err(StoreError::Corrupt(_)) => "corrupt".into(),
        Err(e) => format!("other {e}"),
    }
}

struct Harness {
    memory: MemoryStore,
    redb: RedbStore,
    path: std::path::PathBuf,
    now: Timestamp,
    /// Last token each claimed key got (both stores issue the same tokens).
    tokens: BTreeMap<QueueKey, FencingToken>,
}

impl Harness {
    async fn observe_all(&self) -> Vec<(Observation, Observation)> {
        let mut out = Vec::new();
        for n in 1..=INSTANCES {
            out.push((
                observe(&self.memory, iid(n)).await,
                observe(&self.redb, iid(n)).await,
            ));
        }
        out
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Create { inst, steps, idem } => {
                let id = iid(*inst);
                let pairs: Vec<(&str, &str)> = steps
                    .iter()
                    .map(|(s, h)| (STEP_NAMES[*s], HANDLERS[*h]))
                    .collect();
                let mut t = start(id, self.now, &pairs);
                // Duplicate step names in one creating transition are a CAS conflict.
                t.instance.idempotency_key = idem.map(|k| format!("k{k}"));
                let m = self.memory.create_instance(t.clone()).await;
                let r = self.redb.create_instance(t).await;
                prop_assert_eq!(outcome(&m), outcome(&r), "create {:?}", op);
            }
            Op::Update {
                inst,
                change,
                eager: None,
            } => {
                let (c1, c2) = (change.clone(), change.clone());
                let (now, t1, t2) = (self.now, self.tokens.clone(), self.tokens.clone());
                let m = self
                    .memory
                    .update_instance(iid(*inst), Box::new(move |s| transition(s, &c1, now, &t1)))
                    .await;
                let r = self
                    .redb
                    .update_instance(iid(*inst), Box::new(move |s| transition(s, &c2, now, &t2)))
                    .await;
                prop_assert_eq!(outcome(&m), outcome(&r), "update {:?}", op);
            }
            Op::Update {
                inst,
                change,
                eager: Some((handlers, limit)),
            } => {
                let (c1, c2) = (change.clone(), change.clone());
                let (now, t1, t2) = (self.now, self.tokens.clone(), self.tokens.clone());
                let claim = EagerClaim {
                    owner: Arc::from("w"),
                    handlers: handlers.iter().map(|h| handler(*h)).collect(),
                    limit: *limit,
                };
                let m = self
                    .memory
                    .update_instance_eager(
                        iid(*inst),
                        Box::new(move |s| transition(s, &c1, now, &t1)),
                        &claim,
                    )
                    .await;
                let r = self
                    .redb
                    .update_instance_eager(
                        iid(*inst),
                        Box::new(move |s| transition(s, &c2, now, &t2)),
                        &claim,
                    )
                    .await;
                prop_assert_eq!(outcome(&m), outcome(&r), "eager update {:?}", op);
                if let Ok((_, items)) = m {
                    for c in items {
                        if let Some(l) = &c.item.lease {
                            self.tokens.insert(c.item.key.clone(), l.token);
                        }
                    }
                }
            }
            Op::Claim {
                handlers,
                limit,
                lag_ms,
            } => {
                let req = ClaimRequest {
                    owner: Arc::from("w"),
                    handlers: handlers.iter().map(|h| handler(*h)).collect(),
                    limit: *limit,
                    now: Timestamp(self.now.0 - lag_ms),
                };
                let m = self.memory.claim(&req).await;
                let r = self.redb.claim(&req).await;
                prop_assert_eq!(outcome(&m), outcome(&r), "claim {:?}", op);
                if let Ok(items) = m {
                    for c in items {
                        if let Some(l) = &c.item.lease {
                            self.tokens.insert(c.item.key.clone(), l.token);
                        }
                    }
                }
            }
            Op::Heartbeat { picks, wrong_owner } => {
                let all: Vec<(&QueueKey, &FencingToken)> = self.tokens.iter().collect();
                let leases: Vec<LeaseRef> = picks
                    .iter()
                    .filter_map(|p| all.get(p % all.len().max(1)))
                    .map(|(k, t)| LeaseRef {
                        key: (*k).clone(),
                        token: **t,
                    })
                    .collect();
                let owner = if *wrong_owner { "x" } else { "w" };
                let m = self.memory.heartbeat(owner, &leases, self.now).await;
                let r = self.redb.heartbeat(owner, &leases, self.now).await;
                prop_assert_eq!(outcome(&m), outcome(&r), "heartbeat {:?}", op);
            }
            Op::Cleanup { back_ms } => {
                let cutoff = Timestamp(self.now.0 - back_ms);
                let m = self.memory.cleanup(cutoff).await;
                let r = self.redb.cleanup(cutoff).await;
                prop_assert_eq!(outcome(&m), outcome(&r), "cleanup {:?}", op);
            }
            Op::Advance(ms) => self.now = Timestamp(self.now.0 + ms),
            Op::Reopen => {
                self.redb.close().await.expect("close");
                self.redb = common::open(&self.path, Durability::relaxed());
            }
        }
        // Everything both stores show.
        for (m, r) in self.observe_all().await {
            prop_assert_eq!(m, r, "observations differ after {:?}", op);
        }
        let hs: Vec<Vec<Arc<str>>> = vec![
            vec![handler(0)],
            vec![handler(1)],
            vec![handler(0), handler(1), handler(2)],
        ];
        for h in hs {
            let m = self.memory.next_due(&h).await.expect("next_due");
            let r = self.redb.next_due(&h).await.expect("next_due");
            prop_assert_eq!(m, r, "next_due {:?} after {:?}", h, op);
        }
        Ok(())
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let db = common::TempDb::new();
    futures::executor::block_on(async {
        let mut h = Harness {
            memory: MemoryStore::new(),
            redb: common::open(&db.path, Durability::relaxed()),
            path: db.path.clone(),
            now: at(0),
            tokens: BTreeMap::new(),
        };
        let mut result = Ok(());
        for op in ops {
            result = h.step(op).await;
            if result.is_err() {
                break;
            }
        }
        h.redb.close().await.expect("close");
        result
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        // `PROPTEST_CASES` raises it for a longer run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn redb_behaves_like_memory(ops in prop::collection::vec(op(), 1..70)) {
        run(&ops)?;
    }
}
