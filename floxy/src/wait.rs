//! Waiting for an instance to settle.

use crate::engine::Engine;
use crate::error::EngineError;
use floxy_core::model::{InstanceId, InstanceRecord, InstanceSnapshot, InstanceStatus, StepStatus};
use std::time::Duration;

/// Stand-in deadline for timeouts too large to represent (about 30 years).
const FAR_FUTURE: Duration = Duration::from_hours(262_800);

/// Why [`Engine::wait_for`] returned (see [`settled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// The instance is terminal (`completed`, `failed`, `cancelled`, `aborted`).
    Terminal,
    /// The instance is parked in `dlq` and waits for a requeue, cancel or abort.
    Dlq,
    /// The instance is `running` and one of its human steps is `waiting_decision`.
    WaitingDecision,
}

/// Whether an instance has settled: nothing will change without an outside action (or it
/// never changes again). `None` while the engine still has work to do for it.
///
/// An instance with a human step waiting counts as settled even if another fork branch still
/// runs: a person has to act on it.
#[must_use]
pub fn settled(snapshot: &InstanceSnapshot) -> Option<Settled> {
    let status = snapshot.instance.status;
    if status.is_terminal() {
        Some(Settled::Terminal)
    } else if status == InstanceStatus::Dlq {
        Some(Settled::Dlq)
    } else if status == InstanceStatus::Running
        && snapshot
            .steps
            .iter()
            .any(|s| s.status == StepStatus::WaitingDecision)
    {
        Some(Settled::WaitingDecision)
    } else {
        None
    }
}

impl Engine {
    /// Waits until instance `id` [settles](settled) and returns its record: it is terminal,
    /// parked in `dlq`, or `running` with a human step `waiting_decision`. Returns at once if
    /// it already has.
    ///
    /// Wakes after every commit of this instance made by this engine, and polls every
    /// `poll_interval_ms` to see commits of other processes. Waiting does not drive the instance: workers must run
    /// ([`Engine::start_workers`]) here or elsewhere.
    ///
    /// # Errors
    /// [`EngineError::Timeout`] after `timeout`, [`EngineError::UnknownInstance`],
    /// [`EngineError::Store`].
    pub async fn wait_for(
        &self,
        id: InstanceId,
        timeout: Duration,
    ) -> Result<InstanceRecord, EngineError> {
        self.wait_until(id, timeout, |s| settled(s).is_some()).await
    }

    /// Waits until `done` holds for the snapshot of instance `id` and returns its record.
    /// `done` is checked at once, after every local commit of the instance and every
    /// `poll_interval_ms`.
    ///
    /// ```
    /// # async fn f(engine: &floxy::Engine, id: floxy::InstanceId) -> Result<(), floxy::EngineError> {
    /// // Wait past human steps and the DLQ: only a terminal status counts.
    /// let rec = engine
    ///     .wait_until(id, std::time::Duration::from_secs(30), |s| s.instance.status.is_terminal())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Engine::wait_for`].
    pub async fn wait_until(
        &self,
        id: InstanceId,
        timeout: Duration,
        done: impl Fn(&InstanceSnapshot) -> bool,
    ) -> Result<InstanceRecord, EngineError> {
        let start = tokio::time::Instant::now();
        let deadline = start.checked_add(timeout).unwrap_or(start + FAR_FUTURE);
        let poll = Duration::from_millis(self.inner.config.poll_interval_ms);
        let mut commits = self.inner.waiters.subscribe(id);
        loop {
            // Mark the current commit count seen before reading, so a commit made after the
            // read wakes us.
            commits.rx.borrow_and_update();
            let snapshot = self
                .inner
                .store
                .load_instance(id)
                .await?
                .ok_or(EngineError::UnknownInstance(id))?;
            if done(&snapshot) {
                return Ok(snapshot.instance);
            }
            // `biased`: polled in order, so a run on a paused clock (the chaos simulation) replays
            // exactly; an unbiased `select!` polls its branches in a random order of its own.
            tokio::select! {
                biased;
                changed = commits.rx.changed() => {
                    if changed.is_err() {
                        // The sender lives as long as the engine; poll if it is ever gone.
                        tokio::time::sleep(poll).await;
                    }
                }
                () = tokio::time::sleep(poll) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(EngineError::Timeout { id, waited: timeout });
                }
            }
        }
    }
}
