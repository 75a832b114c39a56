//! Operator and timer inputs: cancel, abort, human decisions and their timeouts, requeue.

use super::TransitionError;
use super::work::Work;
use crate::graph::{NodeId, NodeKind};
use crate::model::{
    CompensationReason, Decision, DlqId, EventKind, HumanDecision, InstanceStatus, Payload,
    RejectPolicy, StepStatus, TimeoutPolicy, WorkKind,
};
use serde_json::{Value, json};

impl Work<'_> {
    fn delete_forward_dlq_records(&mut self) {
        let ids: Vec<DlqId> = self
            .dlq
            .iter()
            .filter(|r| r.record.kind == WorkKind::Execute)
            .map(|r| r.id)
            .collect();
        self.dlq_delete.extend(ids);
    }

    /// Cancel: stop forward work, compensate every step that made an attempt (completed,
    /// failed, skipped while it waited for a retry, or still running and reporting late),
    /// savepoints ignored.
    pub(super) fn cancel(
        &mut self,
        reason: Option<&str>,
        by: Option<&str>,
    ) -> Result<(), TransitionError> {
        match self.inst.status {
            s if s.is_terminal() => return Err(TransitionError::InstanceTerminal { status: s }),
            InstanceStatus::Cancelling => {
                return Err(TransitionError::AlreadyInProgress {
                    status: self.inst.status,
                });
            }
            _ => {}
        }
        self.inst.status = InstanceStatus::Cancelling;
        self.inst.rollback_to = None;
        self.inst.error = Some(reason.unwrap_or("cancelled").to_owned());
        self.event(
            EventKind::CancellationStarted,
            None,
            None,
            Some(with_by(json!({ "reason": reason }), by)),
        );
        self.stop_forward(|_| true)?;
        self.delete_forward_dlq_records();
        self.flag_completed(CompensationReason::Cancel, |_| true)
    }

    /// Abort: stop everything at once, no compensation.
    pub(super) fn abort(
        &mut self,
        reason: Option<String>,
        by: Option<&str>,
    ) -> Result<(), TransitionError> {
        if self.inst.status.is_terminal() {
            return Err(TransitionError::InstanceTerminal {
                status: self.inst.status,
            });
        }
        let reason = reason.unwrap_or_else(|| "aborted".into());
        self.event(
            EventKind::AbortStarted,
            None,
            None,
            Some(with_by(json!({ "reason": reason }), by)),
        );
        for id in self.run_ids() {
            let (to, kinds): (StepStatus, &[WorkKind]) = match self.status(id) {
                Some(StepStatus::Pending | StepStatus::Retrying | StepStatus::Paused) => {
                    (StepStatus::Skipped, &[WorkKind::Execute])
                }
                Some(StepStatus::WaitingDecision) => (StepStatus::Skipped, &[WorkKind::Timer]),
                Some(StepStatus::Running) => (StepStatus::Failed, &[WorkKind::Execute]),
                Some(StepStatus::Compensating) => {
                    (StepStatus::CompensationFailed, &[WorkKind::Compensate])
                }
                _ => continue,
            };
            for k in kinds {
                // A running handler (forward or compensation) is told to stop in the same
                // moment as for a cancel: the request fires its token in the committing
                // process; elsewhere the heartbeat finds the item gone and fires it.
                if to != StepStatus::Skipped {
                    self.request_cancel(id, *k);
                }
                self.dequeue(id, *k);
            }
            if to != StepStatus::Skipped {
                self.run_mut(id)?.error = Some(format!("aborted: {reason}"));
            }
            self.set_status(id, to)?;
            if to == StepStatus::Skipped {
                self.event(EventKind::StepSkipped, Some(id), None, None);
            }
        }
        self.delete_forward_dlq_records();
        self.inst.status = InstanceStatus::Aborted;
        self.inst.error = Some(reason.clone());
        self.event(
            EventKind::WorkflowAborted,
            None,
            None,
            Some(json!({ "reason": reason })),
        );
        Ok(())
    }

    /// A human decision on step `n`.
    pub(super) fn decide(
        &mut self,
        n: NodeId,
        decision: &HumanDecision,
    ) -> Result<(), TransitionError> {
        let name = self.wf.node(n).name.to_string();
        let NodeKind::Human { on_reject, .. } = self.wf.node(n).kind else {
            return Err(TransitionError::NotHumanStep { step: name });
        };
        let status = self.status(n).ok_or(TransitionError::NotWaitingDecision {
            step: name.clone(),
            status: StepStatus::Pending,
        })?;
        if status != StepStatus::WaitingDecision {
            return Err(TransitionError::NotWaitingDecision { step: name, status });
        }
        if self.inst.status != InstanceStatus::Running {
            return Err(TransitionError::WrongInstanceStatus {
                operation: "decide",
                status: self.inst.status,
                expected: "running",
            });
        }
        self.dequeue(n, WorkKind::Timer);
        let seq = self.next_seq();
        let now = self.now;
        let detail = json!({
            "decided_by": decision.decided_by,
            "comment": decision.comment,
            "decided_at": decision.decided_at.as_millis(),
        });
        let run = self.run_mut(n)?;
        run.completed_seq = Some(seq);
        run.finished_at = Some(now);
        let input = run.input.value().clone();
        run.decision = Some(decision.clone());
        match decision.decision {
            Decision::Confirm => {
                let output = Payload::new(merge_decision(input, &detail));
                self.run_mut(n)?.output = Some(output.clone());
                self.set_status(n, StepStatus::Confirmed)?;
                self.event(
                    EventKind::HumanDecisionConfirmed,
                    Some(n),
                    None,
                    Some(detail),
                );
                self.advance(n, output)?;
                self.notify_wait_lists(n)
            }
            Decision::Reject => {
                let why = format!("rejected by {}", decision.decided_by);
                self.run_mut(n)?.error = Some(why.clone());
                self.set_status(n, StepStatus::Rejected)?;
                self.event(
                    EventKind::HumanDecisionRejected,
                    Some(n),
                    None,
                    Some(detail),
                );
                match on_reject {
                    RejectPolicy::Abort => self.abort(Some(why), None),
                    RejectPolicy::RollBack => {
                        self.inst.error = Some(why);
                        self.escalate(n)
                    }
                }
            }
        }
    }

    /// The decision timeout of human step `n` fired.
    pub(super) fn timer_fired(&mut self, n: NodeId) -> Result<(), TransitionError> {
        self.dequeue(n, WorkKind::Timer);
        if self.status(n) != Some(StepStatus::WaitingDecision)
            || self.inst.status != InstanceStatus::Running
        {
            // Decided (or parked) meanwhile: the timer is obsolete.
            return Ok(());
        }
        let NodeKind::Human { on_timeout, .. } = self.wf.node(n).kind else {
            return Err(TransitionError::NotHumanStep {
                step: self.wf.node(n).name.to_string(),
            });
        };
        let decided = |decision| HumanDecision {
            decided_by: "system:timeout".into(),
            decision,
            comment: Some("decision timeout".into()),
            decided_at: self.now,
        };
        match on_timeout {
            TimeoutPolicy::Confirm => self.decide(n, &decided(Decision::Confirm)),
            TimeoutPolicy::Reject => self.decide(n, &decided(Decision::Reject)),
            TimeoutPolicy::Fail => self.final_failure(n, "decision timeout".into()),
        }
    }

    /// Requeues DLQ record `id`, optionally with a new input.
    pub(super) fn requeue(
        &mut self,
        id: DlqId,
        new_input: Option<Payload>,
        by: Option<&str>,
    ) -> Result<(), TransitionError> {
        let rec = self
            .dlq
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or(TransitionError::UnknownDlqRecord { id: id.0 })?;
        let n = self
            .wf
            .find(&rec.record.step)
            .ok_or_else(|| TransitionError::UnknownStep {
                step: rec.record.step.to_string(),
            })?;
        if let Some(p) = &new_input {
            p.check_size(self.wf.definition().options.max_payload_bytes)?;
        }
        match rec.record.kind {
            WorkKind::Compensate => {
                let status = self.status(n).unwrap_or(StepStatus::Pending);
                if status != StepStatus::CompensationFailed {
                    return Err(TransitionError::StaleResult {
                        step: rec.record.step.to_string(),
                        status,
                        kind: "requeue",
                    });
                }
                // Compensations run strictly one at a time: a repair waits for the
                // compensation in flight.
                if self
                    .run_ids()
                    .into_iter()
                    .any(|o| self.status(o) == Some(StepStatus::Compensating))
                {
                    return Err(TransitionError::WrongInstanceStatus {
                        operation: "requeue of a compensation",
                        status: self.inst.status,
                        expected: "no other compensation in flight",
                    });
                }
                let NodeKind::Task {
                    compensation: Some(handler),
                    ..
                } = &self.wf.node(n).kind
                else {
                    return Err(TransitionError::Corrupt(
                        "compensation record of a step without on_failure".into(),
                    ));
                };
                let priority = self
                    .wf
                    .step_def(n)
                    .options
                    .priority
                    .max(crate::model::DEFAULT_RETRY_PRIORITY);
                self.enqueue(n, WorkKind::Compensate, handler.clone(), 0, priority, 0);
                let run = self.run_mut(n)?;
                run.compensation_attempts = 0;
                if let Some(p) = new_input {
                    run.input = p;
                }
                self.set_status(n, StepStatus::Compensating)?;
            }
            WorkKind::Execute | WorkKind::Timer => {
                if self.inst.status != InstanceStatus::Dlq {
                    return Err(TransitionError::WrongInstanceStatus {
                        operation: "requeue",
                        status: self.inst.status,
                        expected: "dlq",
                    });
                }
                let status = self.status(n).unwrap_or(StepStatus::Pending);
                if status != StepStatus::Paused {
                    return Err(TransitionError::StaleResult {
                        step: rec.record.step.to_string(),
                        status,
                        kind: "requeue",
                    });
                }
                self.inst.status = InstanceStatus::Running;
                self.inst.failed_step = None;
                self.inst.error = None;
                let input = new_input
                    .unwrap_or_else(|| self.run(n).map(|r| r.input.clone()).unwrap_or_default());
                // Fresh run with a fresh retry budget.
                self.restart(n, input, 0)?;
                let others: Vec<NodeId> = self
                    .run_ids()
                    .into_iter()
                    .filter(|&o| o != n && self.status(o) == Some(StepStatus::Paused))
                    .filter(|&o| {
                        !self
                            .dlq
                            .iter()
                            .any(|r| r.id != id && *r.record.step == *self.wf.node(o).name)
                    })
                    .collect();
                for o in others {
                    let (input, attempts) = self
                        .run(o)
                        .map(|r| (r.input.clone(), r.attempts))
                        .unwrap_or_default();
                    self.restart(o, input, attempts)?;
                }
            }
        }
        self.dlq_delete.push(id);
        self.event(
            EventKind::DlqRequeued,
            Some(n),
            None,
            Some(with_by(json!({ "dlq_id": id.0 }), by)),
        );
        Ok(())
    }

    /// Puts a paused step back to work.
    fn restart(&mut self, n: NodeId, input: Payload, attempts: u32) -> Result<(), TransitionError> {
        match &self.wf.node(n).kind {
            NodeKind::Task { handler, .. } => {
                let handler = handler.clone();
                let o = &self.wf.step_def(n).options;
                let priority = o.priority;
                let run = self.run_mut(n)?;
                run.input = input;
                run.attempts = attempts;
                run.error = None;
                run.completed_seq = None;
                run.finished_at = None;
                self.set_status(n, StepStatus::Pending)?;
                self.enqueue(n, WorkKind::Execute, handler, 0, priority, attempts);
            }
            NodeKind::Human { timeout_ms, .. } => {
                let t = *timeout_ms;
                self.wait_for_human(n, input, t);
            }
            _ => {
                // Structural steps (a condition that failed to evaluate) run again.
                self.ready.push_back((n, input));
            }
        }
        Ok(())
    }
}

fn merge_decision(input: Value, decision: &Value) -> Value {
    match input {
        Value::Object(mut m) => {
            if let Value::Object(d) = decision {
                for (k, v) in d {
                    m.insert(k.clone(), v.clone());
                }
            }
            Value::Object(m)
        }
        other => json!({ "input": other, "decision": decision }),
    }
}

/// Adds `"by": <name>` to an operator event's detail when the operator is known (the key is
/// absent otherwise, so events of unnamed callers keep their shape).
fn with_by(mut detail: Value, by: Option<&str>) -> Value {
    if let (Some(by), Some(map)) = (by, detail.as_object_mut()) {
        map.insert("by".into(), Value::String(by.to_owned()));
    }
    detail
}
