//! A pure in-test applier of transitions: a minimal reference store used to drive the state
//! machine in transcript and property tests (no async, no clock).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use floxy_core::graph::CompiledWorkflow;
use floxy_core::machine::{self, Input, TransitionError, WorkOutcome};
use floxy_core::model::*;
use std::collections::BTreeMap;

pub(crate) struct H {
    pub wf: CompiledWorkflow,
    pub snap: InstanceSnapshot,
    pub queue: BTreeMap<QueueKey, QueueItem>,
    pub events: Vec<NewEvent>,
    pub next_dlq: u64,
    pub next_token: u64,
    pub now: Timestamp,
    /// Every handler call made: (step, kind, attempt).
    pub calls: Vec<(String, WorkKind, u32)>,
}

pub(crate) fn payload(v: serde_json::Value) -> Payload {
    Payload::new(v)
}

impl H {
    pub(crate) fn start(def: WorkflowDefinition, input: serde_json::Value) -> Self {
        let wf = CompiledWorkflow::compile(def).expect("valid definition");
        let id = InstanceId::from_u128(42);
        let now = Timestamp(1_000_000);
        let t = machine::start(&wf, id, Payload::new(input), None, now).expect("start");
        let mut h = H {
            wf,
            snap: InstanceSnapshot {
                instance: t.instance.clone(),
                steps: vec![],
                dlq: vec![],
            },
            queue: BTreeMap::new(),
            events: vec![],
            next_dlq: 1,
            next_token: 1,
            now,
            calls: vec![],
        };
        h.apply_t(t);
        h
    }

    pub(crate) fn apply_t(&mut self, t: Transition) {
        assert_eq!(
            t.instance.version,
            self.snap.instance.version + u64::from(!t.create)
        );
        if let Some(lc) = &t.lease_check {
            let item = self.queue.get(&lc.key).expect("lease check: item exists");
            assert_eq!(
                item.lease.as_ref().map(|l| l.token),
                Some(lc.token),
                "lease check token"
            );
        }
        for sw in &t.steps {
            let cur = self
                .snap
                .steps
                .iter()
                .find(|r| r.step == sw.run.step)
                .map(|r| r.status);
            assert_eq!(cur, sw.expect, "CAS on step {}", sw.run.step);
        }
        self.snap.instance = t.instance;
        for sw in t.steps {
            match self.snap.steps.iter_mut().find(|r| r.step == sw.run.step) {
                Some(r) => *r = sw.run,
                None => self.snap.steps.push(sw.run),
            }
        }
        for op in t.queue {
            match op {
                QueueOp::Upsert(i) => {
                    self.queue.insert(i.key.clone(), i);
                }
                QueueOp::Delete(k) => {
                    self.queue.remove(&k);
                }
                QueueOp::RequestCancel(k) => {
                    if let Some(i) = self.queue.get_mut(&k) {
                        i.cancel_requested = true;
                    }
                }
            }
        }
        self.events.extend(t.events);
        for id in t.dlq_delete {
            self.snap.dlq.retain(|r| r.id != id);
        }
        for rec in t.dlq_insert {
            self.snap.dlq.push(DlqRecord {
                id: DlqId(self.next_dlq),
                created_at: self.now,
                record: rec,
            });
            self.next_dlq += 1;
        }
    }

    /// Like a store: a stale lease changes nothing and is reported as `Err(None)`.
    pub(crate) fn try_feed(&mut self, input: &Input) -> Result<(), Option<TransitionError>> {
        let t = machine::apply(&self.wf, &self.snap, input, self.now).map_err(Some)?;
        if let Some(lc) = &t.lease_check {
            let held = self
                .queue
                .get(&lc.key)
                .and_then(|i| i.lease.as_ref())
                .map(|l| l.token);
            if held != Some(lc.token) {
                return Err(None);
            }
        }
        self.apply_t(t);
        Ok(())
    }

    pub(crate) fn feed(&mut self, input: &Input) -> Result<(), TransitionError> {
        let t = machine::apply(&self.wf, &self.snap, input, self.now)?;
        self.apply_t(t);
        Ok(())
    }

    /// Claims an item like a store would (`run_at` must be due unless `force`).
    pub(crate) fn claim(&mut self, step: &str, kind: WorkKind) -> (FencingToken, u32, bool) {
        let key = QueueKey {
            instance_id: self.snap.instance.id,
            step: step.into(),
            kind,
        };
        let now = self.now;
        let token = FencingToken(self.next_token);
        self.next_token += 1;
        let item = self
            .queue
            .get_mut(&key)
            .unwrap_or_else(|| panic!("no queue item for {step} {kind:?}"));
        assert!(item.run_at <= now, "{step} not due");
        let expired = item.lease.as_ref().is_some_and(|l| l.expires_at <= now);
        assert!(item.lease.is_none() || expired, "{step} already leased");
        item.attempt += 1;
        item.lease = Some(Lease {
            owner: "w".into(),
            token,
            expires_at: now.add_ms(item.lease_ttl_ms),
        });
        let attempt = item.attempt;
        if kind == WorkKind::Execute {
            let run = self
                .snap
                .steps
                .iter_mut()
                .find(|r| &*r.step == step)
                .unwrap();
            floxy_core::checks::start_run(run, attempt, now);
        }
        (token, attempt, expired)
    }

    pub(crate) fn work(
        &mut self,
        step: &str,
        kind: WorkKind,
        outcome: WorkOutcome,
    ) -> Result<(), TransitionError> {
        let (token, attempt, _) = self.claim(step, kind);
        self.calls.push((step.into(), kind, attempt));
        let key = QueueKey {
            instance_id: self.snap.instance.id,
            step: step.into(),
            kind,
        };
        self.feed(&Input::WorkDone {
            key,
            token,
            attempt,
            outcome,
        })
    }

    pub(crate) fn ok(&mut self, step: &str) {
        self.work(
            step,
            WorkKind::Execute,
            WorkOutcome::Succeeded(payload(serde_json::json!({ "by": step }))),
        )
        .unwrap();
    }

    pub(crate) fn fail(&mut self, step: &str, retryable: bool) {
        self.work(
            step,
            WorkKind::Execute,
            WorkOutcome::Failed {
                error: format!("{step} broke"),
                retryable,
            },
        )
        .unwrap();
    }

    pub(crate) fn compensate_ok(&mut self, step: &str) {
        self.work(
            step,
            WorkKind::Compensate,
            WorkOutcome::Succeeded(Payload::null()),
        )
        .unwrap();
    }

    /// Due, unleased items in claim order.
    pub(crate) fn ready(&self) -> Vec<(String, WorkKind)> {
        let mut v: Vec<&QueueItem> = self
            .queue
            .values()
            .filter(|i| {
                i.run_at <= self.now && i.lease.as_ref().is_none_or(|l| l.expires_at <= self.now)
            })
            .collect();
        v.sort_by(|a, b| (a.order_key, &a.key).cmp(&(b.order_key, &b.key)));
        v.into_iter()
            .map(|i| (i.key.step.to_string(), i.key.kind))
            .collect()
    }

    /// Advances virtual time to the next `run_at` if nothing is due.
    pub(crate) fn advance_to_next(&mut self) -> bool {
        if !self.ready().is_empty() {
            return true;
        }
        let due = |i: &QueueItem| {
            i.lease
                .as_ref()
                .map_or(i.run_at, |l| l.expires_at.max(i.run_at))
        };
        match self.queue.values().map(due).min() {
            Some(t) => {
                self.now = self.now.max(t);
                true
            }
            None => false,
        }
    }

    /// Runs every item until the queue is empty, answering handler calls with `f`.
    pub(crate) fn run(&mut self, mut f: impl FnMut(&str, WorkKind, u32) -> WorkOutcome) {
        for _ in 0..10_000 {
            if !self.advance_to_next() {
                return;
            }
            let Some((step, kind)) = self.ready().into_iter().next() else {
                return;
            };
            if kind == WorkKind::Timer {
                let (token, _, _) = self.claim(&step, kind);
                let key = QueueKey {
                    instance_id: self.snap.instance.id,
                    step: step.as_str().into(),
                    kind,
                };
                self.feed(&Input::TimerFired { key, token }).unwrap();
                continue;
            }
            let (token, attempt, _) = self.claim(&step, kind);
            self.calls.push((step.clone(), kind, attempt));
            let outcome = f(&step, kind, attempt);
            let key = QueueKey {
                instance_id: self.snap.instance.id,
                step: step.as_str().into(),
                kind,
            };
            self.feed(&Input::WorkDone {
                key,
                token,
                attempt,
                outcome,
            })
            .unwrap();
        }
        panic!("did not settle");
    }

    pub(crate) fn run_ok(&mut self) {
        self.run(|s, _, _| WorkOutcome::Succeeded(payload(serde_json::json!({ "by": s }))));
    }

    pub(crate) fn status(&self, step: &str) -> Option<StepStatus> {
        self.snap
            .steps
            .iter()
            .find(|r| &*r.step == step)
            .map(|r| r.status)
    }

    pub(crate) fn statuses(&self) -> BTreeMap<String, StepStatus> {
        self.snap
            .steps
            .iter()
            .map(|r| (r.step.to_string(), r.status))
            .collect()
    }

    pub(crate) fn inst(&self) -> InstanceStatus {
        self.snap.instance.status
    }

    pub(crate) fn event_names(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| match &e.step {
                Some(s) => format!("{}:{}", e.kind.as_str(), s),
                None => e.kind.as_str().to_string(),
            })
            .collect()
    }

    /// Compensation calls in order.
    pub(crate) fn compensations(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (s, k, _) in &self.calls {
            if *k == WorkKind::Compensate && v.last() != Some(s) {
                v.push(s.clone());
            }
        }
        v
    }

    /// Checks SEMANTICS §13 invariants that a snapshot can show.
    pub(crate) fn check_invariants(&self) {
        let st = self.inst();
        if st.is_terminal() {
            for r in &self.snap.steps {
                assert!(
                    !matches!(
                        r.status,
                        StepStatus::Pending
                            | StepStatus::Running
                            | StepStatus::Retrying
                            | StepStatus::Compensating
                            | StepStatus::WaitingDecision
                    ),
                    "terminal {st} has active step {} {}",
                    r.step,
                    r.status
                );
            }
            if st != InstanceStatus::Failed {
                assert!(
                    self.queue.is_empty(),
                    "terminal {st} has queue items {:?}",
                    self.queue.keys().collect::<Vec<_>>()
                );
            }
        }
        if st == InstanceStatus::Completed {
            for r in &self.snap.steps {
                assert!(
                    matches!(
                        r.status,
                        StepStatus::Completed | StepStatus::Skipped | StepStatus::Confirmed
                    ) || self.in_failed_any_branch(&r.step),
                    "completed instance has step {} {}",
                    r.step,
                    r.status
                );
            }
        }
        if matches!(st, InstanceStatus::Failed | InstanceStatus::Cancelled) {
            let sp = self
                .snap
                .instance
                .rollback_to
                .as_ref()
                .and_then(|s| self.wf.find(s));
            for r in &self.snap.steps {
                let n = self.wf.find(&r.step).unwrap();
                let in_scope = st == InstanceStatus::Cancelled
                    || sp.is_none_or(|sp| self.wf.node(n).after_savepoint(sp));
                if in_scope {
                    assert!(
                        matches!(
                            r.status,
                            StepStatus::RolledBack
                                | StepStatus::CompensationFailed
                                | StepStatus::Skipped
                                | StepStatus::Failed
                                | StepStatus::Rejected
                        ),
                        "{st} instance has step {} {} in rollback scope",
                        r.step,
                        r.status
                    );
                }
            }
        }
        // Handler call bounds (invariant 5).
        let mut counts: BTreeMap<(String, WorkKind), u32> = BTreeMap::new();
        for (s, k, _) in &self.calls {
            *counts.entry((s.clone(), *k)).or_default() += 1;
        }
        for ((s, k), c) in counts {
            if k == WorkKind::Execute {
                let n = self.wf.find(&s).unwrap();
                let def = self.wf.step_def(n);
                let max = if def.options.no_idempotent {
                    1
                } else {
                    def.options
                        .retry
                        .max_retries
                        .unwrap_or(self.wf.definition().options.default_max_retries)
                        + 1
                };
                // A DLQ requeue grants a fresh budget.
                let requeues = self
                    .events
                    .iter()
                    .filter(|e| {
                        e.kind == EventKind::DlqRequeued && e.step.as_deref() == Some(s.as_str())
                    })
                    .count();
                let epochs = 1 + u32::try_from(requeues).unwrap();
                assert!(
                    c <= max * epochs,
                    "step {s} called {c} times, max {max} x {epochs}\n{:?}",
                    self.event_names()
                );
            }
        }
        // Each step run compensated at most once (invariant 4; a requeued repair aside).
        let comps = self.compensations();
        let mut uniq = comps.clone();
        uniq.sort();
        uniq.dedup();
        let requeued = self
            .events
            .iter()
            .filter(|e| e.kind == EventKind::DlqRequeued)
            .count();
        assert!(
            uniq.len() + requeued >= comps.len(),
            "a step compensated twice: {comps:?}\n{:?}",
            self.event_names()
        );
    }

    fn in_failed_any_branch(&self, step: &str) -> bool {
        let n = self.wf.find(step).unwrap();
        self.wf.node(n).scope.iter().any(|&(f, b)| {
            self.snap.instance.branches.iter().any(|bs| {
                bs.fork == self.wf.node(f).name && bs.branch == b && bs.phase == BranchPhase::Failed
            })
        }) || matches!(self.status(step), Some(StepStatus::RolledBack | StepStatus::Failed | StepStatus::Skipped | StepStatus::CompensationFailed))
            && self.wf.node(n).scope.iter().any(|&(f, _)| {
                matches!(&self.wf.node(f).kind, floxy_core::graph::NodeKind::Fork { join, .. }
                    if matches!(self.wf.node(*join).kind, floxy_core::graph::NodeKind::Join { strategy: JoinStrategy::Any, .. }))
            })
    }
}
