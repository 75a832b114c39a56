//! Running compensations one at a time in reverse completion order, and ending the
//! instance when nothing is left to do.

use super::TransitionError;
use super::backoff::retry_delay_ms;
use super::work::Work;
use crate::graph::{NodeId, NodeKind};
use crate::model::{
    BranchPhase, DEFAULT_RETRY_PRIORITY, EventKind, InstanceStatus, NewDlqRecord, StepKind,
    StepStatus, WorkKind,
};
use serde_json::json;

impl Work<'_> {
    /// Whether `n` is flagged for compensation and its forward run has ended: completed,
    /// confirmed, failed (finally, or late after a stop) or skipped after an attempt.
    fn awaiting_compensation(&self, n: NodeId) -> bool {
        self.run(n).is_some_and(|r| {
            r.compensate.is_some()
                && matches!(
                    r.status,
                    StepStatus::Completed
                        | StepStatus::Confirmed
                        | StepStatus::Failed
                        | StepStatus::Skipped
                )
        })
    }

    /// Starts the next compensation if none is in flight. Steps without a compensation
    /// handler become `rolled_back` without a call, in their turn.
    pub(super) fn drive_compensation(&mut self) -> Result<(), TransitionError> {
        let ids = self.run_ids();
        // One at a time, and only once every handler asked to stop has reported: a late
        // success must be compensated before anything that completed earlier.
        let in_flight = ids.iter().any(|&n| {
            self.run(n).is_some_and(|r| {
                r.status == StepStatus::Compensating
                    || (r.status == StepStatus::Running && r.cancel_requested)
            })
        });
        if in_flight {
            return Ok(());
        }
        loop {
            let next = ids
                .iter()
                .copied()
                .filter(|&n| self.awaiting_compensation(n))
                .max_by_key(|&n| self.run(n).and_then(|r| r.completed_seq).unwrap_or(0));
            let Some(n) = next else { break };
            let wf = self.wf;
            if let (
                NodeKind::Task {
                    compensation: Some(handler),
                    ..
                },
                StepKind::Task {
                    on_failure: Some(c),
                    ..
                },
            ) = (&wf.node(n).kind, &wf.step_def(n).kind)
            {
                let priority = wf.step_def(n).options.priority.max(DEFAULT_RETRY_PRIORITY);
                let reason = self
                    .run(n)
                    .and_then(|r| r.compensate)
                    .map(super::super::model::record::CompensationReason::as_str);
                self.set_status(n, StepStatus::Compensating)?;
                self.run_mut(n)?.compensation_attempts = 0;
                self.enqueue(n, WorkKind::Compensate, handler.clone(), 0, priority, 0);
                self.inst.rollback_depth = self.inst.rollback_depth.saturating_add(1);
                self.event(
                    EventKind::CompensationStarted,
                    Some(n),
                    None,
                    Some(json!({ "compensation": c.name, "reason": reason })),
                );
                return Ok(());
            }
            self.set_status(n, StepStatus::RolledBack)?;
            self.event(EventKind::StepRolledBack, Some(n), None, None);
        }
        self.settle_branches();
        Ok(())
    }

    /// Branches of `any` forks whose local rollback finished become `failed`.
    fn settle_branches(&mut self) {
        let wf = self.wf;
        let mut done = Vec::new();
        for (i, bs) in self.inst.branches.iter().enumerate() {
            if bs.phase != BranchPhase::RollingBack {
                continue;
            }
            let Some(f) = wf.find(&bs.fork) else { continue };
            let busy = self.run_ids().into_iter().any(|n| {
                wf.node(n).in_branch((f, bs.branch))
                    && (self.status(n).is_some_and(StepStatus::is_active)
                        || self.awaiting_compensation(n))
            });
            if !busy {
                done.push(i);
            }
        }
        for i in done {
            self.inst.branches[i].phase = BranchPhase::Failed;
        }
    }

    /// A compensation call of `n` returned.
    pub(super) fn compensation_done(
        &mut self,
        n: NodeId,
        attempt: u32,
        error: Option<(String, bool)>,
    ) -> Result<(), TransitionError> {
        self.run_mut(n)?.compensation_attempts = attempt;
        match error {
            None => {
                self.set_status(n, StepStatus::RolledBack)?;
                self.dequeue(n, WorkKind::Compensate);
                self.event(
                    EventKind::CompensationCompleted,
                    Some(n),
                    Some(attempt),
                    None,
                );
            }
            Some((error, retryable)) => {
                let StepKind::Task {
                    on_failure: Some(c),
                    ..
                } = &self.wf.step_def(n).kind
                else {
                    return Err(TransitionError::Corrupt(
                        "compensation of a step without on_failure".into(),
                    ));
                };
                let max_calls = c
                    .retry
                    .max_retries
                    .unwrap_or(self.wf.definition().options.default_max_retries)
                    .saturating_add(1);
                if retryable && attempt < max_calls {
                    let delay = retry_delay_ms(&c.retry, attempt, self.inst.id, &c.name);
                    let handler = c.handler.as_str().into();
                    let priority = self
                        .wf
                        .step_def(n)
                        .options
                        .priority
                        .max(DEFAULT_RETRY_PRIORITY);
                    self.enqueue(n, WorkKind::Compensate, handler, delay, priority, attempt);
                    self.event(
                        EventKind::CompensationRetry,
                        Some(n),
                        Some(attempt),
                        Some(json!({ "error": error, "delay_ms": delay })),
                    );
                } else {
                    let run = self.run_mut(n)?;
                    run.error = Some(error.clone());
                    let input = run.input.clone();
                    self.set_status(n, StepStatus::CompensationFailed)?;
                    self.dequeue(n, WorkKind::Compensate);
                    self.dlq_insert.push(NewDlqRecord {
                        instance_id: self.inst.id,
                        workflow_id: self.wf.id().clone(),
                        step: self.wf.node(n).name.clone(),
                        kind: WorkKind::Compensate,
                        input,
                        error: error.clone(),
                        reason: "compensation failed finally".into(),
                    });
                    self.event(
                        EventKind::CompensationFailed,
                        Some(n),
                        Some(attempt),
                        Some(json!({ "error": error })),
                    );
                }
            }
        }
        Ok(())
    }

    /// Ends the instance when no work is left: `completed`, `failed` or `cancelled`, or back
    /// to `dlq` when only paused DLQ steps remain.
    pub(super) fn finalize(&mut self) {
        let ids = self.run_ids();
        let busy = ids.iter().any(|&n| {
            self.status(n).is_some_and(StepStatus::is_active) || self.awaiting_compensation(n)
        });
        if busy || !self.ready.is_empty() {
            return;
        }
        let paused = ids
            .iter()
            .any(|&n| self.status(n) == Some(StepStatus::Paused));
        let (status, kind) = match self.inst.status {
            InstanceStatus::Running if paused => (InstanceStatus::Dlq, EventKind::WorkflowDlq),
            InstanceStatus::Running => (InstanceStatus::Completed, EventKind::WorkflowCompleted),
            InstanceStatus::RollingBack => (InstanceStatus::Failed, EventKind::WorkflowFailed),
            InstanceStatus::Cancelling => (InstanceStatus::Cancelled, EventKind::WorkflowCancelled),
            _ => return,
        };
        self.inst.status = status;
        let detail = self.inst.error.clone().map(|e| json!({ "error": e }));
        self.event(kind, None, None, detail);
    }
}
