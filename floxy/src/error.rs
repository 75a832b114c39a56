//! Errors of the engine API.

use floxy_core::machine::TransitionError;
use floxy_core::model::{DlqId, InstanceId, PayloadTooLarge, WorkflowId};
use floxy_core::store::StoreError;
use floxy_core::validate::DefinitionErrors;
use std::time::Duration;

/// Errors returned by [`crate::Engine`] methods.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The workflow definition is invalid (every problem found, each naming its step).
    #[error(transparent)]
    Definition(#[from] DefinitionErrors),
    /// A definition with the same id but different content is already registered.
    /// Definitions are immutable: register a new version instead.
    #[error("workflow {0} is already registered with different content; register a new version")]
    DefinitionConflict(WorkflowId),
    /// The store failed (after bounded retries for retryable errors).
    #[error(transparent)]
    Store(StoreError),
    /// The state machine refused the request (terminal instance, step not waiting for a
    /// decision, wrong status, ...). Nothing was written.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// No definition with this id is registered here or stored.
    #[error("unknown workflow {0}")]
    UnknownWorkflow(WorkflowId),
    /// No instance with this id exists.
    #[error("unknown instance {0}")]
    UnknownInstance(InstanceId),
    /// No DLQ record with this id exists.
    #[error("unknown DLQ record {0}")]
    UnknownDlqRecord(DlqId),
    /// A payload given to the engine exceeds the workflow's `max_payload_bytes`.
    #[error(transparent)]
    PayloadTooLarge(#[from] PayloadTooLarge),
    /// A wait ([`crate::Engine::wait_for`], [`crate::Engine::start_and_wait`]) gave up.
    #[error("instance {id} did not settle within {waited:?}")]
    Timeout {
        /// Instance waited for.
        id: InstanceId,
        /// How long the call waited.
        waited: Duration,
    },
    /// The engine is shutting down (or was shut down): no more work is claimed.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// [`crate::Engine::start_workers`] was called while the worker pool already runs.
    #[error("the worker pool is already running")]
    WorkersAlreadyStarted,
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rejected(t) => Self::Transition(t),
            StoreError::DefinitionConflict(id) => Self::DefinitionConflict(id),
            other => Self::Store(other),
        }
    }
}

impl EngineError {
    /// Whether retrying the same call may succeed (a transient store failure or a timeout).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Timeout { .. } => true,
            _ => false,
        }
    }
}
