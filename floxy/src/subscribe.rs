//! The in-process lifecycle event stream: [`crate::Engine::subscribe`].
//!
//! After each successful local commit the runtime publishes the events the commit wrote
//! (an eager claim's `step_started` included, and a `step_started` per attempt a claim
//! started) to a bounded
//! [`tokio::sync::broadcast`] channel of [`SUBSCRIPTION_CAPACITY`] events. Publishing never
//! waits: a subscriber that falls more than the capacity behind loses the oldest events and
//! is told how many with [`SubscriptionError::Lagged`]; commits never slow down for it. With
//! no subscriber, publishing costs one atomic load.
//!
//! # Ordering
//!
//! The events of one commit are published together, in the order they were written. The
//! commits of one instance made by one task (a sequential chain, an operator command) are
//! published in commit order. Two commits of the same instance made at the same moment by
//! two workers (two fork branches finishing together) may be published in either order:
//! [`CommittedEvent::version`] (the instance's version after the commit) gives their commit
//! order. Events committed by other processes sharing the store are not seen here: read them
//! from the store ([`crate::Engine::events`]).

use floxy_core::model::{
    EventKind, InstanceId, InstanceStatus, NewEvent, Payload, StepName, StepStatus, Timestamp,
    Transition, WorkKind, WorkflowId,
};
use floxy_core::store::ClaimedItem;
use tokio::sync::broadcast;

/// Capacity of the event channel: a subscriber more than this many events behind lags.
pub const SUBSCRIPTION_CAPACITY: usize = 4_096;

/// One committed lifecycle event, as published to subscribers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CommittedEvent {
    /// The instance.
    pub instance_id: InstanceId,
    /// Its definition.
    pub workflow_id: WorkflowId,
    /// The instance's status after the commit (`None` for the `step_started` of a claim,
    /// which does not read the instance).
    pub status: Option<InstanceStatus>,
    /// The instance's version after the commit, ordering the commits of one instance
    /// (`None` for the `step_started` of a claim, which does not change the instance).
    pub version: Option<u64>,
    /// Time of the commit (the engine clock).
    pub at: Timestamp,
    /// The event as written.
    pub event: NewEvent,
}

impl CommittedEvent {
    /// The event's kind.
    #[must_use]
    pub fn kind(&self) -> EventKind {
        self.event.kind
    }

    /// The step it concerns.
    #[must_use]
    pub fn step(&self) -> Option<&StepName> {
        self.event.step.as_ref()
    }

    /// Its details.
    #[must_use]
    pub fn detail(&self) -> Option<&Payload> {
        self.event.detail.as_ref()
    }
}

/// Why [`EventSubscription::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// The subscriber fell behind and this many events were dropped for it; the next call
    /// returns the oldest event still buffered.
    #[error("subscriber lagged: {0} events missed")]
    Lagged(u64),
    /// The engine was dropped: no more events will come.
    #[error("the engine is gone")]
    Closed,
}

/// A subscription to the engine's committed events ([`crate::Engine::subscribe`]). Events
/// published before the subscription was made are not delivered.
#[derive(Debug)]
pub struct EventSubscription {
    rx: broadcast::Receiver<CommittedEvent>,
}

impl EventSubscription {
    /// The next event, waiting for it.
    ///
    /// # Errors
    /// [`SubscriptionError::Lagged`] when events were dropped for this subscriber (call again
    /// to continue), [`SubscriptionError::Closed`] when the engine is gone.
    pub async fn recv(&mut self) -> Result<CommittedEvent, SubscriptionError> {
        self.rx.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => SubscriptionError::Lagged(n),
            broadcast::error::RecvError::Closed => SubscriptionError::Closed,
        })
    }

    /// The next event if one is buffered, without waiting (`Ok(None)`: none yet).
    ///
    /// # Errors
    /// As [`EventSubscription::recv`].
    pub fn try_recv(&mut self) -> Result<Option<CommittedEvent>, SubscriptionError> {
        match self.rx.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(SubscriptionError::Lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Err(SubscriptionError::Closed),
        }
    }

    /// Events published since the last one this subscriber received (more than
    /// [`SUBSCRIPTION_CAPACITY`] when it lags: the excess is what the next `recv` reports
    /// missed).
    #[must_use]
    pub fn pending(&self) -> usize {
        self.rx.len()
    }
}

/// The publishing side, owned by the engine.
pub(crate) struct EventBus {
    tx: broadcast::Sender<CommittedEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::Sender::new(SUBSCRIPTION_CAPACITY),
        }
    }
}

impl EventBus {
    pub(crate) fn subscribe(&self) -> EventSubscription {
        EventSubscription {
            rx: self.tx.subscribe(),
        }
    }

    /// Publishes the events of a committed transition.
    pub(crate) fn publish(&self, t: &Transition) {
        if self.tx.receiver_count() == 0 || t.events.is_empty() {
            return;
        }
        for event in &t.events {
            // An error only means every subscriber is gone meanwhile.
            let _ = self.tx.send(CommittedEvent {
                instance_id: t.instance.id,
                workflow_id: t.instance.workflow_id.clone(),
                status: Some(t.instance.status),
                version: Some(t.instance.version),
                at: t.now,
                event: event.clone(),
            });
        }
    }

    /// Publishes the `step_started` events a claim wrote (one per attempt it started).
    pub(crate) fn publish_claims(&self, claimed: &[ClaimedItem], now: Timestamp) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        for c in claimed {
            if c.item.key.kind != WorkKind::Execute || c.run.status != StepStatus::Running {
                continue;
            }
            let _ = self.tx.send(CommittedEvent {
                instance_id: c.item.key.instance_id,
                workflow_id: c.item.workflow_id.clone(),
                status: None,
                version: None,
                at: now,
                event: NewEvent {
                    kind: EventKind::StepStarted,
                    step: Some(c.item.key.step.clone()),
                    attempt: Some(c.item.attempt),
                    detail: None,
                },
            });
        }
    }
}
