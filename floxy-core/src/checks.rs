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

/// Up to this many step writes, [`steps_and_ownership`] scans the earlier writes of a
/// transition instead of building a map of them.
const SCAN_LIMIT: usize = 8;

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
    // The status an earlier write of this transition gave a step. Most transitions write one
    // or two step runs: scanning the writes before costs nothing and allocates nothing (this
    // runs on every write of every store); a transition writing many (a wide fan-out) gets a
    // map instead of a quadratic scan.
    let mut written: Option<HashMap<&str, StepStatus>> =
        (t.steps.len() > SCAN_LIMIT).then(|| HashMap::with_capacity(t.steps.len()));
    for (i, w) in t.steps.iter().enumerate() {
        if w.run.instance_id != id {
            return Err(StoreError::Conflict(format!(
                "step {} of instance {} written by a transition of {id}",
                w.run.step, w.run.instance_id
            )));
        }
        let earlier = match &written {
            Some(map) => map.get(&*w.run.step).copied(),
            None => t
                .steps
                .get(..i)
                .unwrap_or_default()
                .iter()
                .rev()
                .find(|e| e.run.step == w.run.step)
                .map(|e| e.run.status),
        };
        let found = match earlier {
            Some(s) => Some(s),
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
        if let Some(map) = &mut written {
            map.insert(&w.run.step, w.run.status);
        }
    }
    if let Some(key) = t
        .queue
        .iter()
        .map(super::model::transition::QueueOp::key)
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

#[cfg(all(test, feature = "conformance"))]
mod tests {
    use super::*;
    use crate::conformance::fixtures::{start, step_run, write};
    use crate::model::InstanceId;

    const NOW: Timestamp = Timestamp(1_000);

    /// A creating transition writing `writes` (step, status, expected status) in order.
    fn writing(writes: &[(&str, StepStatus, Option<StepStatus>)]) -> Transition {
        let id = InstanceId::from_u128(7);
        let mut t = start(id, NOW, &[]);
        t.steps = writes
            .iter()
            .map(|(step, status, expect)| write(step_run(id, step, *status, NOW), *expect))
            .collect();
        t
    }

    /// `n` steps, each written twice: first created pending, then moved on from pending.
    fn twice(n: usize) -> Vec<(String, StepStatus, Option<StepStatus>)> {
        let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let mut w: Vec<_> = names
            .iter()
            .map(|s| (s.clone(), StepStatus::Pending, None))
            .collect();
        w.extend(
            names
                .iter()
                .map(|s| (s.clone(), StepStatus::Running, Some(StepStatus::Pending))),
        );
        w
    }

    fn check(w: &[(String, StepStatus, Option<StepStatus>)]) -> Result<(), StoreError> {
        let w: Vec<_> = w.iter().map(|(s, a, b)| (s.as_str(), *a, *b)).collect();
        steps_and_ownership(None, &writing(&w))
    }

    #[test]
    fn a_later_write_sees_the_earlier_one_with_few_and_with_many_writes() {
        // Both sides of `SCAN_LIMIT`: the scan of earlier writes and the map.
        for n in [1, 3, SCAN_LIMIT / 2, SCAN_LIMIT, SCAN_LIMIT + 1, 40] {
            let mut w = twice(n);
            assert!(check(&w).is_ok(), "{n} steps written twice in order");
            // The last write expects the status before the earlier write of its step.
            if let Some(last) = w.last_mut() {
                last.2 = None;
            }
            let Err(e) = check(&w) else {
                panic!("{n} steps: a write that ignores an earlier one passed");
            };
            assert!(
                matches!(&e, StoreError::Conflict(m) if m.contains("is pending, expected absent")),
                "{n} steps: {e}"
            );
        }
    }

    #[test]
    fn the_latest_earlier_write_of_a_step_counts() {
        let w = [
            ("a", StepStatus::Pending, None),
            ("a", StepStatus::Running, Some(StepStatus::Pending)),
            ("a", StepStatus::Completed, Some(StepStatus::Running)),
        ];
        assert!(steps_and_ownership(None, &writing(&w)).is_ok());
        let stale = [
            ("a", StepStatus::Pending, None),
            ("a", StepStatus::Running, Some(StepStatus::Pending)),
            ("a", StepStatus::Completed, Some(StepStatus::Pending)),
        ];
        assert!(steps_and_ownership(None, &writing(&stale)).is_err());
    }
}
