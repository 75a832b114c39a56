//! Results of handler calls, retries, final failures, DLQ parking, and the start of
//! rollbacks (global to a savepoint, or local to one branch of an `any` fork).

use super::TransitionError;
use super::backoff::retry_delay_ms;
use super::work::Work;
use crate::graph::{BranchRef, NodeId, NodeKind};
use crate::model::{
    BranchPhase, CompensationReason, DEFAULT_RETRY_PRIORITY, EventKind, InstanceStatus,
    JoinStrategy, NewDlqRecord, Payload, StepKind, StepStatus, WorkKind,
};
use serde_json::json;

impl Work<'_> {
    /// Whether results of `n` no longer drive forward progress (the instance or one of the
    /// step's branches is stopping).
    pub(super) fn forward_stopped(&self, n: NodeId) -> bool {
        matches!(
            self.inst.status,
            InstanceStatus::RollingBack | InstanceStatus::Cancelling
        ) || self.wf.node(n).scope.iter().any(|&(f, b)| {
            matches!(
                self.branch_phase(f, b),
                Some(BranchPhase::RollingBack | BranchPhase::Failed)
            )
        })
    }

    /// Whether a late success of `n` is covered by the rollback in progress.
    fn in_rollback_scope(&self, n: NodeId) -> Option<CompensationReason> {
        let node = self.wf.node(n);
        match self.inst.status {
            InstanceStatus::Cancelling => return Some(CompensationReason::Cancel),
            InstanceStatus::RollingBack => {
                let sp = self.inst.rollback_to.as_ref().and_then(|s| self.wf.find(s));
                if sp.is_none_or(|sp| node.after_savepoint(sp)) {
                    return Some(CompensationReason::Failure);
                }
            }
            _ => {}
        }
        node.scope
            .iter()
            .any(|&(f, b)| {
                matches!(
                    self.branch_phase(f, b),
                    Some(BranchPhase::RollingBack | BranchPhase::Failed)
                )
            })
            .then_some(CompensationReason::Failure)
    }

    /// Calls a forward step may make: `max_retries + 1`, or 1 for `no_idempotent` steps.
    pub(super) fn max_calls(&self, n: NodeId) -> u32 {
        let def = self.wf.step_def(n);
        if def.options.no_idempotent {
            1
        } else {
            def.options
                .retry
                .max_retries
                .unwrap_or(self.wf.definition().options.default_max_retries)
                .saturating_add(1)
        }
    }

    /// A forward handler call of `n` returned `output`.
    pub(super) fn step_succeeded(
        &mut self,
        n: NodeId,
        attempt: u32,
        output: Payload,
    ) -> Result<(), TransitionError> {
        let max = self.wf.definition().options.max_payload_bytes;
        if let Err(e) = output.check_size(max) {
            return self.attempt_failed(n, attempt, format!("output rejected: {e}"), false);
        }
        let seq = self.next_seq();
        let now = self.now;
        let run = self.run_mut(n)?;
        run.output = Some(output.clone());
        run.completed_seq = Some(seq);
        run.finished_at = Some(now);
        run.error = None;
        run.attempts = attempt;
        self.set_status(n, StepStatus::Completed)?;
        self.dequeue(n, WorkKind::Execute);
        self.event(EventKind::StepCompleted, Some(n), Some(attempt), None);
        if let Some(reason) = self.in_rollback_scope(n) {
            // A late success of a step asked to stop: compensate it like the others.
            self.run_mut(n)?.compensate.get_or_insert(reason);
        } else if self.forward_stopped(n) {
            // Outside the rollback scope (before the savepoint): keep the result.
        } else {
            self.advance(n, output)?;
            self.notify_wait_lists(n)?;
        }
        Ok(())
    }

    /// A forward handler call of `n` failed (or its lease was lost).
    pub(super) fn attempt_failed(
        &mut self,
        n: NodeId,
        attempt: u32,
        error: String,
        retryable: bool,
    ) -> Result<(), TransitionError> {
        let cancelled = self.run(n).is_some_and(|r| r.cancel_requested);
        if cancelled || self.forward_stopped(n) {
            // A late failure of a step asked to stop drives nothing forward, but the attempt
            // may have applied part of its effect: it is compensated like the others
            // (attempted means compensated, SEMANTICS §5), in the order its attempt ended.
            let seq = self.next_seq();
            let now = self.now;
            let reason = self.stop_reason();
            let run = self.run_mut(n)?;
            run.error = Some(error.clone());
            run.attempts = attempt;
            run.finished_at = Some(now);
            run.completed_seq = Some(seq);
            self.set_status(n, StepStatus::Failed)?;
            self.dequeue(n, WorkKind::Execute);
            self.event(
                EventKind::StepFailed,
                Some(n),
                Some(attempt),
                Some(json!({ "error": error, "late": true })),
            );
            if has_compensation(self, n) {
                self.run_mut(n)?.compensate.get_or_insert(reason);
            }
            return Ok(());
        }
        if retryable && attempt < self.max_calls(n) {
            // The attempt ended now: if a rollback skips the retry, the step is compensated
            // in this place of the order.
            let seq = self.next_seq();
            let run = self.run_mut(n)?;
            run.error = Some(error.clone());
            run.attempts = attempt;
            run.completed_seq = Some(seq);
            if self.inst.status == InstanceStatus::Dlq {
                // Parked instance: keep the attempt count, resume on requeue.
                self.set_status(n, StepStatus::Paused)?;
                self.dequeue(n, WorkKind::Execute);
                self.event(
                    EventKind::StepPaused,
                    Some(n),
                    Some(attempt),
                    Some(json!({ "error": error })),
                );
                return Ok(());
            }
            let def = self.wf.step_def(n);
            let delay = retry_delay_ms(&def.options.retry, attempt, self.inst.id, &def.name);
            let priority = def.options.priority.max(DEFAULT_RETRY_PRIORITY);
            let NodeKind::Task { handler, .. } = &self.wf.node(n).kind else {
                return Err(TransitionError::Corrupt("retry of a non-task".into()));
            };
            self.set_status(n, StepStatus::Retrying)?;
            self.enqueue(
                n,
                WorkKind::Execute,
                handler.clone(),
                delay,
                priority,
                attempt,
            );
            self.event(
                EventKind::StepRetry,
                Some(n),
                Some(attempt),
                Some(json!({ "error": error, "delay_ms": delay })),
            );
            return Ok(());
        }
        self.run_mut(n)?.attempts = attempt;
        self.final_failure(n, error)
    }

    /// `n` failed finally: park in the DLQ or start a rollback.
    pub(super) fn final_failure(
        &mut self,
        n: NodeId,
        error: String,
    ) -> Result<(), TransitionError> {
        let seq = self.next_seq();
        let now = self.now;
        let dlq_mode = self.wf.definition().options.dlq_enabled;
        let run = self.run_mut(n)?;
        run.error = Some(error.clone());
        run.completed_seq = Some(seq);
        run.finished_at = Some(now);
        let input = run.input.clone();
        let attempts = run.attempts;
        self.dequeue(n, WorkKind::Execute);
        self.event(
            EventKind::StepFailed,
            Some(n),
            Some(attempts),
            Some(json!({ "error": error })),
        );
        if dlq_mode {
            self.set_status(n, StepStatus::Paused)?;
            self.dlq_insert.push(NewDlqRecord {
                instance_id: self.inst.id,
                workflow_id: self.wf.id().clone(),
                step: self.wf.node(n).name.clone(),
                kind: WorkKind::Execute,
                input,
                error: error.clone(),
                reason: "step failed finally in DLQ mode".into(),
            });
            self.event(EventKind::StepPaused, Some(n), None, None);
            if self.inst.status == InstanceStatus::Running {
                self.park(n, error);
            }
            return Ok(());
        }
        self.set_status(n, StepStatus::Failed)?;
        if has_compensation(self, n) {
            // The failed step may have partly applied its effect: its own on_failure runs
            // first (it has the latest completion sequence), unless a step asked to stop
            // ends later.
            self.run_mut(n)?.compensate = Some(CompensationReason::Failure);
        }
        self.escalate(n)
    }

    /// Parks the instance in `dlq`: pending work is paused, running work finishes.
    fn park(&mut self, n: NodeId, error: String) {
        self.inst.status = InstanceStatus::Dlq;
        self.inst.failed_step = Some(self.wf.node(n).name.clone());
        self.inst.error = Some(error);
        for id in self.run_ids() {
            match self.status(id) {
                Some(StepStatus::Pending | StepStatus::Retrying) => {
                    self.dequeue(id, WorkKind::Execute);
                    let _ = self.set_status(id, StepStatus::Paused);
                    self.event(EventKind::StepPaused, Some(id), None, None);
                }
                Some(StepStatus::WaitingDecision) => {
                    self.dequeue(id, WorkKind::Timer);
                    let _ = self.set_status(id, StepStatus::Paused);
                    self.event(EventKind::StepPaused, Some(id), None, None);
                }
                _ => {}
            }
        }
        self.event(EventKind::WorkflowDlq, Some(n), None, None);
    }

    /// Decides how far a final failure of `n` reaches: a local rollback of one branch of an
    /// `any` fork while another branch can still succeed, else a rollback of the instance.
    pub(super) fn escalate(&mut self, n: NodeId) -> Result<(), TransitionError> {
        let wf = self.wf;
        let failed_name = wf.node(n).name.clone();
        let mut at = n;
        loop {
            let Some((f, b)) = wf.node(at).branch() else {
                return self.global_rollback(at);
            };
            let NodeKind::Fork { branches, join } = &wf.node(f).kind else {
                return Err(TransitionError::Corrupt("branch of a non-fork".into()));
            };
            let join = *join;
            let any = matches!(
                wf.node(join).kind,
                NodeKind::Join {
                    strategy: JoinStrategy::Any,
                    ..
                }
            );
            if !any {
                return self.global_rollback(at);
            }
            let others_alive = (0..branches.len()).any(|o| {
                let o = u16::try_from(o).unwrap_or(u16::MAX);
                o != b
                    && matches!(
                        self.branch_phase(f, o),
                        Some(BranchPhase::Running | BranchPhase::Succeeded)
                    )
            });
            if let Some(bs) = self.branch_mut(f, b) {
                bs.end_step = Some(failed_name.clone());
                bs.phase = if others_alive {
                    BranchPhase::RollingBack
                } else {
                    BranchPhase::Failed
                };
            }
            if others_alive {
                return self.local_rollback((f, b));
            }
            // Every branch failed: the join fails, one level up.
            if self.run(join).is_none() {
                let input = self.run(f).map(|r| r.input.clone()).unwrap_or_default();
                self.create_run(join, StepStatus::Pending, input);
                let seq = self.next_seq();
                let run = self.run_mut(join)?;
                run.error = Some("every branch failed".into());
                run.completed_seq = Some(seq);
                self.set_status(join, StepStatus::Failed)?;
                self.event(
                    EventKind::StepFailed,
                    Some(join),
                    None,
                    Some(json!({ "error": "every branch failed" })),
                );
            }
            at = join;
        }
    }

    /// The compensation reason of the rollback or cancel in progress.
    fn stop_reason(&self) -> CompensationReason {
        if self.inst.status == InstanceStatus::Cancelling {
            CompensationReason::Cancel
        } else {
            CompensationReason::Failure
        }
    }

    /// Skips the queued, paused or waiting run `id`. One that already made an attempt (it
    /// waited for a retry, or was paused in `dlq` after attempts) is compensated: its
    /// attempts may have applied part of their effect (SEMANTICS §5). Only a run that never
    /// started an attempt is skipped without a compensation.
    fn skip(&mut self, id: NodeId, kind: Option<WorkKind>) -> Result<(), TransitionError> {
        if let Some(k) = kind {
            self.dequeue(id, k);
        }
        self.set_status(id, StepStatus::Skipped)?;
        self.event(EventKind::StepSkipped, Some(id), None, None);
        let attempted = self
            .run(id)
            .is_some_and(|r| r.attempts > 0 || r.started_at.is_some());
        if attempted && has_compensation(self, id) {
            let reason = self.stop_reason();
            if self.run(id).is_some_and(|r| r.completed_seq.is_none()) {
                // Restored by a requeue (its earlier attempts' order is gone): it ends now.
                let seq = self.next_seq();
                self.run_mut(id)?.completed_seq = Some(seq);
            }
            self.run_mut(id)?.compensate.get_or_insert(reason);
        }
        Ok(())
    }

    /// Stops forward work of the runs selected by `within`: queued and waiting work is
    /// skipped (and compensated if it made an attempt), running handlers are asked to stop
    /// (and compensated once they report, whatever they return).
    pub(super) fn stop_forward(
        &mut self,
        within: impl Fn(NodeId) -> bool,
    ) -> Result<(), TransitionError> {
        for id in self.run_ids() {
            if !within(id) {
                continue;
            }
            match self.status(id) {
                Some(StepStatus::Pending | StepStatus::Retrying) => {
                    self.skip(id, Some(WorkKind::Execute))?;
                }
                Some(StepStatus::WaitingDecision) => self.skip(id, Some(WorkKind::Timer))?,
                Some(StepStatus::Paused) => self.skip(id, None)?,
                Some(StepStatus::Running) => {
                    self.run_mut(id)?.cancel_requested = true;
                    self.request_cancel(id, WorkKind::Execute);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Marks every successful run selected by `within` for compensation (once).
    pub(super) fn flag_completed(
        &mut self,
        reason: CompensationReason,
        within: impl Fn(NodeId) -> bool,
    ) -> Result<(), TransitionError> {
        for id in self.run_ids() {
            if within(id) && self.status(id).is_some_and(StepStatus::is_success) {
                self.run_mut(id)?.compensate.get_or_insert(reason);
            }
        }
        Ok(())
    }

    /// Rolls the instance back from a final failure at `failed` to the nearest savepoint on
    /// its path (or the start).
    fn global_rollback(&mut self, failed: NodeId) -> Result<(), TransitionError> {
        let wf = self.wf;
        let sp = wf.node(failed).savepoints.last().copied();
        self.inst.status = InstanceStatus::RollingBack;
        self.inst.failed_step = Some(wf.node(failed).name.clone());
        self.inst.rollback_to = sp.map(|s| wf.node(s).name.clone());
        if self.inst.error.is_none() {
            self.inst.error = self.run(failed).and_then(|r| r.error.clone());
        }
        self.event(
            EventKind::RollbackStarted,
            Some(failed),
            None,
            Some(json!({ "save_point": sp.map(|s| wf.node(s).name.to_string()) })),
        );
        self.stop_forward(|_| true)?;
        self.flag_completed(CompensationReason::Failure, |id| {
            sp.is_none_or(|sp| wf.node(id).after_savepoint(sp))
        })
    }

    /// Rolls back one failed branch of an `any` fork while the others go on.
    fn local_rollback(&mut self, branch: BranchRef) -> Result<(), TransitionError> {
        let wf = self.wf;
        self.event(
            EventKind::BranchFailed,
            Some(branch.0),
            None,
            Some(json!({ "branch": branch.1 })),
        );
        self.stop_forward(|id| wf.node(id).in_branch(branch))?;
        self.flag_completed(CompensationReason::Failure, |id| {
            wf.node(id).in_branch(branch)
        })
    }
}

fn has_compensation(w: &Work<'_>, n: NodeId) -> bool {
    matches!(
        &w.wf.step_def(n).kind,
        StepKind::Task {
            on_failure: Some(_),
            ..
        }
    )
}
