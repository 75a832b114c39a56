//! The checks and claim side effects every store applies the same way, so the backends
//! agree by construction (the conformance suite checks the outcome; this is the one
//! definition). Each store calls them with what it knows of the instance: its current
//! snapshot (`None` when the transition creates it).

use crate::model::{
    FencingToken, InstanceSnapshot, LeaseCheck, QueueKey, StepRun, StepStatus, Timestamp,
    Transition, WorkKind,
};
use crate::store::StoreError;
use std::collections::HashMap;

fn status_name(s: Option<StepStatus>) -> &'static str {
    s.map_or("absent", StepStatus::as_str)
}

/// Creation or version: a creating transition needs an absent instance, any other one the
/// version after the stored one.
///
/// # Errors
/// [`StoreError::Conflict`] naming the instance.
pub fn version(current: Option<&InstanceSnapshot>, t: &Transition) -> Result<(), StoreError> {
    let id = t.instance.id;
    let Some(snap) = current else {
        return Ok(());
    };
    if t.create {
        return Err(StoreError::Conflict(format!(
            "instance {id} already exists"
        )));
    }
    let stored = snap.instance.version;
    if stored.checked_add(1) != Some(t.instance.version) {
        return Err(StoreError::Conflict(format!(
            "instance {id}: version {} does not follow the stored version {stored}",
            t.instance.version
        )));
    }
    Ok(())
}

/// Fencing: a transition that names a lease must hold it, i.e. the item's current lease
/// token (from `current_token`, the store's view of the item) is the one the transition
/// names. A transition without a lease check passes.
///
/// # Errors
/// [`StoreError::StaleLease`] ([`stale_lease`]) when the item is gone, unleased or leased
/// with another token.
pub fn fencing(
    t: &Transition,
    current_token: impl FnOnce(&QueueKey) -> Option<FencingToken>,
) -> Result<(), StoreError> {
    match &t.lease_check {
        Some(lc) if current_token(&lc.key) != Some(lc.token) => Err(stale_lease(lc)),
        _ => Ok(()),
    }
}

/// The error of a fencing check that failed.
#[must_use]
pub fn stale_lease(lc: &LeaseCheck) -> StoreError {
    StoreError::StaleLease {
        instance_id: lc.key.instance_id,
        step: lc.key.step.to_string(),
        kind: lc.key.kind.as_str(),
        token: lc.token,
    }
}

/// The step compare-and-set, in order (a later write to the same step sees the earlier
/// one), and the ownership of everything written: step runs, queue items and new DLQ records
/// must all be the transition's own instance's.
///
/// # Errors
/// [`StoreError::Conflict`] saying which write failed.
pub fn steps_and_ownership(
    current: Option<&InstanceSnapshot>,
    t: &Transition,
) -> Result<(), StoreError> {
    let id = t.instance.id;
    let mut written: HashMap<&str, StepStatus> = HashMap::new();
    for w in &t.steps {
        if w.run.instance_id != id {
            return Err(StoreError::Conflict(format!(
                "step {} of instance {} written by a transition of {id}",
                w.run.step, w.run.instance_id
            )));
        }
        let found = match written.get(&*w.run.step) {
            Some(s) => Some(*s),
            None => current.and_then(|s| {
                s.steps
                    .iter()
                    .find(|r| r.step == w.run.step)
                    .map(|r| r.status)
            }),
        };
        if found != w.expect {
            return Err(StoreError::Conflict(format!(
                "instance {id}: step {} is {}, expected {}",
                w.run.step,
                status_name(found),
                status_name(w.expect)
            )));
        }
        written.insert(&w.run.step, w.run.status);
    }
    if let Some(key) = t
        .queue
        .iter()
        .map(|op| op.key())
        .find(|k| k.instance_id != id)
    {
        return Err(StoreError::Conflict(format!(
            "queue item {}/{} written by a transition of {id}",
            key.instance_id, key.step
        )));
    }
    if let Some(r) = t.dlq_insert.iter().find(|r| r.instance_id != id) {
        return Err(StoreError::Conflict(format!(
            "DLQ record of {} written by a transition of {id}",
            r.instance_id
        )));
    }
    Ok(())
}

/// Whether claiming an item of `kind` starts its step run, now in `status`: an `execute`
/// item of a pending, retrying or (reclaimed) running step. Other claims lease the item and
/// leave the run alone.
#[must_use]
pub fn claim_starts_run(kind: WorkKind, status: StepStatus) -> bool {
    kind == WorkKind::Execute
        && matches!(
            status,
            StepStatus::Pending | StepStatus::Retrying | StepStatus::Running
        )
}

/// What a claim that starts `run` writes into it: `running`, the item's attempt, `now`.
pub fn start_run(run: &mut StepRun, attempt: u32, now: Timestamp) {
    run.status = StepStatus::Running;
    run.attempts = attempt;
    run.started_at = Some(now);
}
