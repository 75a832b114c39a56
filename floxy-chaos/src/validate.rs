//! Validators: the invariants a chaos run checks. A violation fails the run.
//!
//! Per instance, once the run has settled ([`check_instance`]):
//!
//! | kind | invariant |
//! |---|---|
//! | `stuck` | the instance is terminal, parked in `dlq` or waiting for a decision (SEMANTICS §13.6) |
//! | `rollback_depth` | its rollback depth is at most the limit (default 50) |
//! | `active_after_terminal` | a terminal instance has no pending, running, retrying, compensating or waiting step (§13.1) |
//! | `queue_after_terminal` | a terminal instance has no queue item (§13.1, §13.6) |
//! | `completed_path` | a completed instance has only completed (or skipped) steps on its path, apart from tolerated failures inside `any` branches (§13.2) |
//! | `rollback_scope` | a failed or cancelled instance has every step after its savepoint (every step, on cancel) rolled back, skipped, failed or compensation-failed (§13.3) |
//! | `compensation_twice` | each step is compensated at most once per forward run (§13.4) |
//! | `compensation_without_attempt` | a compensation starts only for a step run that made an attempt, once its forward run ended (§13.4) |
//! | `attempted_not_compensated` | once a rollback or cancel ended, every step run with an `on_failure` that made an attempt is compensated (`rolled_back`, or `compensation_failed`), apart from completed runs no rollback covers (§5 "attempted means compensated", §13.4) |
//! | `compensation_order` | compensations of one rollback start in reverse completion order (§13.4) |
//! | `compensation_overlap` | a compensation starts only after the previous one finished (§5) |
//! | `handler_calls` | forward calls ≤ `max_retries + 1` (`no_idempotent`: 1), compensation calls ≤ its `max_retries + 1`, per DLQ epoch (§13.5) |
//! | `duplicate_completion` | a step completes at most once per forward run (evidence for §13.7: no stale write was applied) |
//! | `ledger` | the ledger balances: completed steps applied exactly once, rolled back steps netted to zero |
//! | `ledger_partial` | a step that never completed (skipped or failed) left no effect behind: the engine compensates every attempt (§5), so there is no exception |
//!
//! Run-wide checks live in the runner: `orphan_queue` (queue items without a live
//! instance), `no_progress` (an instance unchanged for longer than the stall timeout while
//! faults run), `task_bound` and `task_leak` (tokio task count bounded during the run and
//! back to the baseline after), `hung_call` (a store or engine call of the driver, the
//! watcher or the validators that did not return within
//! [`crate::runner::CALL_TIMEOUT_MS`]) and `hung_shutdown` (`Engine::shutdown` not
//! returning long after its own timeout).

use crate::ledger::Ledger;
use crate::workload::WorkflowSpec;
use floxy::floxy_core::graph::{CompiledWorkflow, NodeKind};
use floxy::{
    EventKind, InstanceId, InstanceStatus, JoinStrategy, MAX_PAGE_SIZE, StepKind, StepRun,
    StepStatus, Store, StoreError, WorkKind,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Limits of the validators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest rollback depth (compensations of one instance) accepted.
    pub max_rollback_depth: u32,
    /// Largest number of alive tokio tasks accepted during the run (above the baseline).
    pub max_tasks: usize,
    /// An unsettled instance whose record did not change for this long is stuck.
    pub stall_timeout_ms: u64,
    /// Time every instance gets to settle once faults stop.
    pub settle_timeout_ms: u64,
    /// Time the task count gets to come back to the baseline after shutdown.
    pub task_drain_timeout_ms: u64,
    /// Check that the task count comes back to the baseline when the run ends (turn off
    /// when the store keeps its own tasks and check after closing it, as the CLI does).
    pub check_task_leak: bool,
    /// Check the ledger (turn off for workloads without ledger handlers).
    pub ledger: bool,
    /// Largest growth of resident memory, open descriptors and tasks from the one-minute
    /// figure to the end of the fault phase, as a fraction (0.2: 20 %), checked when the
    /// fault phase lasts at least two minutes (see [`crate::resources`]); `None`: not checked.
    pub max_resource_growth: Option<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rollback_depth: 50,
            max_tasks: 5_000,
            stall_timeout_ms: 30_000,
            settle_timeout_ms: 60_000,
            task_drain_timeout_ms: 5_000,
            check_task_leak: true,
            ledger: true,
            max_resource_growth: None,
        }
    }
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Short code (see the [module docs](self)).
    pub kind: String,
    /// The instance, if the violation concerns one.
    pub instance: Option<InstanceId>,
    /// Its workflow.
    pub workflow: Option<String>,
    /// What was seen.
    pub detail: String,
}

impl Violation {
    /// A violation of `kind` with `detail`.
    #[must_use]
    pub fn new(kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            instance: None,
            workflow: None,
            detail: detail.into(),
        }
    }

    /// The same, about an instance.
    #[must_use]
    pub fn on(mut self, id: InstanceId, workflow: &str) -> Self {
        self.instance = Some(id);
        self.workflow = Some(workflow.to_owned());
        self
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}]", self.kind)?;
        if let Some(i) = self.instance {
            write!(f, " {i}")?;
        }
        if let Some(w) = &self.workflow {
            write!(f, " ({w})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What one instance looked like when checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSummary {
    /// Id.
    pub id: InstanceId,
    /// Workflow.
    pub workflow: String,
    /// Final status.
    pub status: InstanceStatus,
    /// Rollback depth.
    pub rollback_depth: u32,
    /// Completed steps.
    pub steps_completed: u32,
    /// Steps rolled back (with or without a call).
    pub steps_rolled_back: u32,
    /// Compensations started.
    pub compensations: u32,
    /// Failed retries (`step_retry` events).
    pub retries: u32,
    /// Lease expiries.
    pub lease_expiries: u32,
    /// DLQ records left.
    pub dlq_records: u32,
}

fn active(s: StepStatus) -> bool {
    matches!(
        s,
        StepStatus::Pending
            | StepStatus::Running
            | StepStatus::Retrying
            | StepStatus::Compensating
            | StepStatus::WaitingDecision
    )
}

/// Whether step `n` lies inside a branch of a fork joined with `any`.
fn in_any_branch(wf: &CompiledWorkflow, n: usize) -> bool {
    wf.node(n).scope.iter().any(|&(f, _)| {
        matches!(&wf.node(f).kind, NodeKind::Fork { join, .. }
            if matches!(wf.node(*join).kind, NodeKind::Join { strategy: JoinStrategy::Any, .. }))
    })
}

/// Every event of an instance (paged).
///
/// # Errors
/// The store failed.
pub async fn all_events(
    store: &dyn Store,
    id: InstanceId,
) -> Result<Vec<floxy::Event>, StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_events(id, after, MAX_PAGE_SIZE).await?;
        let full = page.len() >= MAX_PAGE_SIZE;
        after = page.last().map(|e| e.seq).or(after);
        out.extend(page);
        if !full || out.len() >= 1_000_000 {
            return Ok(out);
        }
    }
}

/// Checks one instance against every per-instance invariant. `spec` (the workload's view of
/// the workflow) enables the ledger check; `ledger` the call-count and ledger checks.
///
/// # Errors
/// The store failed while reading the instance.
pub async fn check_instance(
    store: &dyn Store,
    wf: &CompiledWorkflow,
    spec: Option<&WorkflowSpec>,
    ledger: Option<&Ledger>,
    id: InstanceId,
    limits: &Limits,
) -> Result<(Option<InstanceSummary>, Vec<Violation>), StoreError> {
    let Some(snap) = store.load_instance(id).await? else {
        return Ok((
            None,
            vec![Violation::new(
                "lost_instance",
                format!("instance {id} is gone"),
            )],
        ));
    };
    let inst = &snap.instance;
    let wname = inst.workflow_id.as_str().to_owned();
    let mut v: Vec<Violation> = Vec::new();
    let mut bad = |kind: &str, detail: String| v.push(Violation::new(kind, detail).on(id, &wname));
    let st = inst.status;
    let steps: HashMap<&str, &StepRun> = snap.steps.iter().map(|r| (&*r.step, r)).collect();
    let events = all_events(store, id).await?;
    let queue = store.list_queue(id).await?;

    // Settled?
    let waiting = snap
        .steps
        .iter()
        .any(|s| s.status == StepStatus::WaitingDecision);
    if !(st.is_terminal() || st == InstanceStatus::Dlq || waiting) {
        let active_steps: Vec<String> = snap
            .steps
            .iter()
            .filter(|s| active(s.status))
            .map(|s| format!("{}={} (attempts {})", s.step, s.status, s.attempts))
            .collect();
        bad(
            "stuck",
            format!(
                "still {st} after the settle timeout; active steps: {}; queue: {}",
                active_steps.join(", "),
                queue
                    .iter()
                    .map(|q| format!(
                        "{}/{} run_at={} leased={}",
                        q.key.step,
                        q.key.kind.as_str(),
                        q.run_at,
                        q.lease.is_some()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    if inst.rollback_depth > limits.max_rollback_depth {
        bad(
            "rollback_depth",
            format!(
                "rollback depth {} exceeds the limit {}",
                inst.rollback_depth, limits.max_rollback_depth
            ),
        );
    }
    if st.is_terminal() {
        for r in &snap.steps {
            if active(r.status) {
                bad(
                    "active_after_terminal",
                    format!("{st} instance has step {} {}", r.step, r.status),
                );
            }
        }
        if !queue.is_empty() {
            bad(
                "queue_after_terminal",
                format!(
                    "{st} instance has queue items: {}",
                    queue
                        .iter()
                        .map(|q| format!("{}/{}", q.key.step, q.key.kind.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    if st == InstanceStatus::Completed {
        for r in &snap.steps {
            let ok = matches!(
                r.status,
                StepStatus::Completed | StepStatus::Skipped | StepStatus::Confirmed
            );
            let tolerated = wf.find(&r.step).is_some_and(|n| in_any_branch(wf, n))
                && matches!(
                    r.status,
                    StepStatus::RolledBack | StepStatus::Failed | StepStatus::CompensationFailed
                );
            if !ok && !tolerated {
                bad(
                    "completed_path",
                    format!("completed instance has step {} {}", r.step, r.status),
                );
            }
        }
    }
    if matches!(st, InstanceStatus::Failed | InstanceStatus::Cancelled) {
        let sp = inst.rollback_to.as_ref().and_then(|s| wf.find(s));
        for r in &snap.steps {
            let Some(n) = wf.find(&r.step) else {
                bad(
                    "unknown_step",
                    format!("step run of unknown step {}", r.step),
                );
                continue;
            };
            let in_scope = st == InstanceStatus::Cancelled
                || sp.is_none_or(|sp| wf.node(n).after_savepoint(sp));
            if in_scope
                && !matches!(
                    r.status,
                    StepStatus::RolledBack
                        | StepStatus::CompensationFailed
                        | StepStatus::Skipped
                        | StepStatus::Failed
                        | StepStatus::Rejected
                )
            {
                bad(
                    "rollback_scope",
                    format!(
                        "{st} instance (rollback to {:?}) has step {} {} in its rollback scope",
                        inst.rollback_to.as_deref(),
                        r.step,
                        r.status
                    ),
                );
            }
        }
    }

    // Events: compensations and completions.
    let mut requeues: BTreeMap<&str, u32> = BTreeMap::new();
    for e in &events {
        if e.kind == EventKind::DlqRequeued
            && let Some(s) = e.step.as_deref()
        {
            *requeues.entry(s).or_default() += 1;
        }
    }
    let epochs = |s: &str| 1 + requeues.get(s).copied().unwrap_or(0);
    let mut comp_started: BTreeMap<&str, u32> = BTreeMap::new();
    let mut completed_ev: BTreeMap<&str, u32> = BTreeMap::new();
    let mut ended_forward: BTreeMap<&str, bool> = BTreeMap::new();
    let mut attempted: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut open: Option<&str> = None;
    let mut last_seq_in_segment: Option<(u64, &str)> = None;
    let (mut compensations, mut retries, mut expiries, mut rolled_back) = (0u32, 0u32, 0u32, 0u32);
    for e in &events {
        let step = e.step.as_deref();
        match e.kind {
            EventKind::RollbackStarted
            | EventKind::CancellationStarted
            | EventKind::BranchFailed => last_seq_in_segment = None,
            EventKind::StepCompleted => {
                if let Some(s) = step {
                    *completed_ev.entry(s).or_default() += 1;
                    ended_forward.insert(s, true);
                }
            }
            EventKind::StepStarted => {
                if let Some(s) = step {
                    attempted.insert(s);
                }
            }
            EventKind::StepFailed | EventKind::StepSkipped => {
                if let Some(s) = step {
                    ended_forward.insert(s, true);
                }
            }
            EventKind::StepRetry => retries += 1,
            EventKind::LeaseExpired => expiries += 1,
            EventKind::StepRolledBack => rolled_back += 1,
            EventKind::CompensationStarted => {
                let Some(s) = step else { continue };
                compensations += 1;
                *comp_started.entry(s).or_default() += 1;
                if !ended_forward.get(s).copied().unwrap_or(false) {
                    bad(
                        "compensation_without_attempt",
                        format!("compensation of {s} started before its forward run ended"),
                    );
                } else if !attempted.contains(s) && steps.get(s).is_none_or(|r| r.attempts == 0) {
                    bad(
                        "compensation_without_attempt",
                        format!("compensation of {s} started but it never made an attempt"),
                    );
                }
                if let Some(o) = open {
                    bad(
                        "compensation_overlap",
                        format!("compensation of {s} started while that of {o} was running"),
                    );
                }
                open = Some(s);
                let seq = steps.get(s).and_then(|r| r.completed_seq).unwrap_or(0);
                if let Some((prev, prev_step)) = last_seq_in_segment
                    && seq > prev
                {
                    bad(
                        "compensation_order",
                        format!(
                            "{s} (completion #{seq}) compensated after {prev_step} (completion #{prev})"
                        ),
                    );
                }
                last_seq_in_segment = Some((seq, s));
            }
            EventKind::CompensationCompleted | EventKind::CompensationFailed => {
                rolled_back += u32::from(e.kind == EventKind::CompensationCompleted);
                if open == step {
                    open = None;
                }
            }
            _ => {}
        }
    }
    for (s, n) in &comp_started {
        if *n > epochs(s) {
            bad(
                "compensation_twice",
                format!("compensation of {s} started {n} times"),
            );
        }
    }
    // Attempted means compensated (§5, §13.4).
    if matches!(
        st,
        InstanceStatus::Completed | InstanceStatus::Failed | InstanceStatus::Cancelled
    ) {
        let sp = inst.rollback_to.as_ref().and_then(|s| wf.find(s));
        for r in &snap.steps {
            let Some(n) = wf.find(&r.step) else { continue };
            let has_comp = matches!(
                &wf.step_def(n).kind,
                StepKind::Task {
                    on_failure: Some(_),
                    ..
                }
            );
            let made_attempt =
                attempted.contains(&*r.step) || r.attempts > 0 || r.started_at.is_some();
            if !has_comp || !made_attempt {
                continue;
            }
            let kept = r.status.is_success()
                && (st == InstanceStatus::Completed
                    || (st == InstanceStatus::Failed
                        && sp.is_some_and(|sp| !wf.node(n).after_savepoint(sp))));
            let compensated = matches!(
                r.status,
                StepStatus::RolledBack | StepStatus::CompensationFailed
            ) && comp_started.contains_key(&*r.step);
            if !kept && !compensated {
                bad(
                    "attempted_not_compensated",
                    format!(
                        "{st} instance: step {} made {} attempt(s) and ended {} without a compensation",
                        r.step, r.attempts, r.status
                    ),
                );
            }
        }
    }
    for (s, n) in &completed_ev {
        if *n > epochs(s) {
            bad(
                "duplicate_completion",
                format!("step {s} completed {n} times"),
            );
        }
    }

    // Handler calls.
    if let Some(ledger) = ledger {
        let default_retries = wf.definition().options.default_max_retries;
        for (s, kind, calls) in ledger.calls_of(id) {
            let Some(n) = wf.find(&s) else { continue };
            let def = wf.step_def(n);
            let max = match kind {
                WorkKind::Execute if def.options.no_idempotent => 1,
                WorkKind::Execute => def
                    .options
                    .retry
                    .max_retries
                    .unwrap_or(default_retries)
                    .saturating_add(1),
                WorkKind::Compensate => match &def.kind {
                    StepKind::Task {
                        on_failure: Some(c),
                        ..
                    } => c
                        .retry
                        .max_retries
                        .unwrap_or(default_retries)
                        .saturating_add(1),
                    _ => 0,
                },
                WorkKind::Timer => u32::MAX,
            };
            if calls > max.saturating_mul(epochs(&s)) {
                bad(
                    "handler_calls",
                    format!(
                        "{} handler of {s} called {calls} times, at most {max} x {} allowed",
                        kind.as_str(),
                        epochs(&s)
                    ),
                );
            }
        }
    }

    // Ledger.
    if limits.ledger
        && let (Some(spec), Some(ledger)) = (spec, ledger)
        && st != InstanceStatus::Dlq
        && st.is_terminal()
    {
        for s in &spec.effect_steps {
            let eff = ledger.effect(id, s).unwrap_or_default();
            let Some(r) = steps.get(s.as_str()) else {
                if eff.net() != 0 {
                    bad(
                        "ledger",
                        format!("step {s} never ran but left {} in the ledger", eff.net()),
                    );
                }
                continue;
            };
            let completed = r.status.is_success();
            if st == InstanceStatus::Aborted && !completed {
                continue;
            }
            match r.status {
                StepStatus::CompensationFailed => {}
                _ if completed => {
                    if !eff.applied || eff.reversed {
                        bad(
                            "ledger",
                            format!(
                                "step {s} is {} but its effect is {} (applied {}, reversed {})",
                                r.status,
                                if eff.applied { "reversed" } else { "missing" },
                                eff.applies,
                                eff.reversals
                            ),
                        );
                    }
                }
                StepStatus::RolledBack => {
                    if eff.net() != 0 {
                        bad(
                            "ledger",
                            format!(
                                "step {s} is rolled_back but its effect {} is still applied",
                                eff.net()
                            ),
                        );
                    }
                }
                _ => {
                    if eff.net() != 0 {
                        bad(
                            "ledger_partial",
                            format!(
                                "step {s} ended {} after {} attempt(s) (last error: {}) with the effect {} of an earlier attempt still applied: never compensated",
                                r.status,
                                r.attempts,
                                r.error.as_deref().unwrap_or("-"),
                                eff.net()
                            ),
                        );
                    }
                }
            }
        }
    }

    let summary = InstanceSummary {
        id,
        workflow: wname.clone(),
        status: st,
        rollback_depth: inst.rollback_depth,
        steps_completed: saturating_u32(
            snap.steps.iter().filter(|s| s.status.is_success()).count(),
        ),
        steps_rolled_back: rolled_back,
        compensations,
        retries,
        lease_expiries: expiries,
        dlq_records: saturating_u32(snap.dlq.len()),
    };
    Ok((Some(summary), v))
}
/// A count as `u32`, saturating (a summary field; no instance has 2^32 steps).
fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
