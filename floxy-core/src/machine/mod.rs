//! The state machine: `(snapshot, input, now) → Transition`.
//!
//! Everything the engine decides is decided here: which step runs next, when to retry, what
//! to compensate and in which order, when a join fires, what cancel, abort, DLQ and requeue
//! do. The functions are pure: no clock, no IO, no randomness (jitter is derived from the
//! instance id, step and attempt).

mod backoff;
mod compensate;
mod errors;
mod failure;
mod forward;
mod inputs;
mod operator;
mod work;

pub use backoff::retry_delay_ms;
pub use errors::TransitionError;
pub use inputs::{Input, WorkOutcome};

use crate::graph::CompiledWorkflow;
use crate::model::{
    EventKind, HumanDecision, InstanceId, InstanceRecord, InstanceSnapshot, InstanceStatus,
    LeaseCheck, Payload, StepStatus, Timestamp, Transition, WorkKind,
};
use work::Work;

/// Computes the transition that creates an instance of `wf` with `input`.
///
/// Structural steps at the start are evaluated at once; a definition made only of them
/// completes in this very transition.
///
/// # Errors
/// [`TransitionError::PayloadTooLarge`] if the input exceeds the workflow's payload bound.
pub fn start(
    wf: &CompiledWorkflow,
    id: InstanceId,
    input: Payload,
    idempotency_key: Option<String>,
    now: Timestamp,
) -> Result<Transition, TransitionError> {
    input.check_size(wf.definition().options.max_payload_bytes)?;
    let inst = InstanceRecord {
        id,
        workflow_id: wf.id().clone(),
        status: InstanceStatus::Running,
        input: input.clone(),
        output: None,
        error: None,
        idempotency_key,
        created_at: now,
        updated_at: now,
        version: 0,
        completion_seq: 0,
        rollback_depth: 0,
        rollback_to: None,
        failed_step: None,
        branches: Vec::new(),
    };
    let mut w = Work::new(wf, inst, now);
    w.event(EventKind::WorkflowStarted, None, None, None);
    w.ready.push_back((0, input));
    settle(&mut w)?;
    Ok(w.finish(true))
}

/// Computes the transition that `input` causes on the instance in `snapshot`.
///
/// # Errors
/// See [`TransitionError`]: terminal instances, stale results, unknown steps, decisions on
/// steps that do not wait for one, requests already in progress.
pub fn apply(
    wf: &CompiledWorkflow,
    snapshot: &InstanceSnapshot,
    input: &Input,
    now: Timestamp,
) -> Result<Transition, TransitionError> {
    let mut w = Work::from_snapshot(wf, snapshot, now)?;
    let terminal = w.inst.status.is_terminal();
    // A requeued compensation may still repair a terminal (failed) instance; nothing else
    // changes a terminal instance.
    let repair = match input {
        Input::WorkDone { key, .. } | Input::LeaseExpired { key, .. } => {
            key.kind == WorkKind::Compensate
        }
        Input::Requeue { dlq_id, .. } => snapshot
            .dlq
            .iter()
            .any(|r| r.id == *dlq_id && r.record.kind == WorkKind::Compensate),
        _ => false,
    };
    if terminal && !repair {
        return Err(TransitionError::InstanceTerminal {
            status: w.inst.status,
        });
    }
    match input {
        Input::WorkDone {
            key,
            token,
            attempt,
            outcome,
        } => {
            let n = step_of(wf, &key.step)?;
            w.lease_check = Some(LeaseCheck {
                key: key.clone(),
                token: *token,
            });
            let status = w.status(n).ok_or_else(|| unknown(&key.step))?;
            match key.kind {
                WorkKind::Execute => {
                    if status != StepStatus::Running {
                        return Err(stale(&key.step, status, "execute"));
                    }
                    match outcome {
                        WorkOutcome::Succeeded(out) => {
                            w.step_succeeded(n, *attempt, out.clone())?;
                        }
                        WorkOutcome::Failed { error, retryable } => {
                            w.attempt_failed(n, *attempt, error.clone(), *retryable)?;
                        }
                    }
                }
                WorkKind::Compensate => {
                    if status != StepStatus::Compensating {
                        return Err(stale(&key.step, status, "compensate"));
                    }
                    let err = match outcome {
                        WorkOutcome::Succeeded(_) => None,
                        WorkOutcome::Failed { error, retryable } => {
                            Some((error.clone(), *retryable))
                        }
                    };
                    w.compensation_done(n, *attempt, err)?;
                }
                WorkKind::Timer => return Err(stale(&key.step, status, "timer")),
            }
        }
        Input::LeaseExpired {
            key,
            token,
            attempt,
        } => {
            let n = step_of(wf, &key.step)?;
            w.lease_check = Some(LeaseCheck {
                key: key.clone(),
                token: *token,
            });
            let status = w.status(n).ok_or_else(|| unknown(&key.step))?;
            let lost = attempt.saturating_sub(1);
            w.event(
                EventKind::LeaseExpired,
                Some(n),
                Some(lost),
                Some(serde_json::json!({ "kind": key.kind.as_str() })),
            );
            match key.kind {
                WorkKind::Execute => {
                    if status != StepStatus::Running {
                        return Err(stale(&key.step, status, "lease expiry"));
                    }
                    if wf.step_def(n).options.no_idempotent {
                        w.run_mut(n)?.attempts = lost;
                        let cancelled = w.run(n).is_some_and(|r| r.cancel_requested);
                        if cancelled || w.forward_stopped(n) {
                            w.attempt_failed(n, lost, "lease expired".into(), false)?;
                        } else {
                            w.final_failure(
                                n,
                                "lease expired while a no_idempotent step was running".into(),
                            )?;
                        }
                    } else {
                        w.attempt_failed(n, lost, "lease expired (worker lost)".into(), true)?;
                    }
                }
                WorkKind::Compensate => {
                    if status != StepStatus::Compensating {
                        return Err(stale(&key.step, status, "lease expiry"));
                    }
                    w.compensation_done(
                        n,
                        lost,
                        Some(("lease expired (worker lost)".into(), true)),
                    )?;
                }
                WorkKind::Timer => w.timer_fired(n)?,
            }
        }
        Input::TimerFired { key, token } => {
            let n = step_of(wf, &key.step)?;
            w.lease_check = Some(LeaseCheck {
                key: key.clone(),
                token: *token,
            });
            w.timer_fired(n)?;
        }
        Input::Cancel { reason, by } => w.cancel(reason.as_deref(), by.as_deref())?,
        Input::Abort { reason, by } => w.abort(reason.clone(), by.as_deref())?,
        Input::Decide {
            step,
            decided_by,
            decision,
            comment,
        } => {
            let n = step_of(wf, step)?;
            let d = HumanDecision {
                decided_by: decided_by.clone(),
                decision: *decision,
                comment: comment.clone(),
                decided_at: now,
            };
            w.decide(n, &d)?;
        }
        Input::Requeue {
            dlq_id,
            new_input,
            by,
        } => w.requeue(*dlq_id, new_input.clone(), by.as_deref())?,
    }
    settle(&mut w)?;
    Ok(w.finish(false))
}

/// Runs everything an input set in motion to a fixed point: ready steps, the next
/// compensation, and the end of the instance.
fn settle(w: &mut Work<'_>) -> Result<(), TransitionError> {
    w.drain_ready()?;
    if !w.inst.status.is_terminal() || w.inst.status == InstanceStatus::Failed {
        w.drive_compensation()?;
    }
    w.finalize();
    Ok(())
}

fn step_of(wf: &CompiledWorkflow, name: &str) -> Result<usize, TransitionError> {
    wf.find(name).ok_or_else(|| unknown(name))
}

fn unknown(name: &str) -> TransitionError {
    TransitionError::UnknownStep {
        step: name.to_string(),
    }
}

fn stale(name: &str, status: StepStatus, kind: &'static str) -> TransitionError {
    TransitionError::StaleResult {
        step: name.to_string(),
        status,
        kind,
    }
}
