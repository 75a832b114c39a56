//! Errors of the state machine.

use crate::model::{InstanceStatus, PayloadTooLarge, StepStatus, WorkflowId};

/// Why the state machine refused an input. Nothing is written when it does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The instance is terminal; nothing of it changes again.
    #[error("instance is {status}, which is terminal")]
    InstanceTerminal {
        /// Its status.
        status: InstanceStatus,
    },
    /// The same kind of request (cancel, abort) is already in progress: a no-op.
    #[error("a request is already in progress: instance is {status}")]
    AlreadyInProgress {
        /// Current status.
        status: InstanceStatus,
    },
    /// The operation needs the instance in another status.
    #[error("instance is {status}: {operation} needs it {expected}")]
    WrongInstanceStatus {
        /// Operation attempted.
        operation: &'static str,
        /// Current status.
        status: InstanceStatus,
        /// What it needs.
        expected: &'static str,
    },
    /// The step does not exist in the definition or has no run yet.
    #[error("unknown step {step:?}")]
    UnknownStep {
        /// Step name.
        step: String,
    },
    /// A result arrived for a step that is not in the status the result needs (late or
    /// duplicate delivery).
    #[error("step {step:?} is {status}; a {kind} result is not expected")]
    StaleResult {
        /// Step.
        step: String,
        /// Its status.
        status: StepStatus,
        /// Kind of result.
        kind: &'static str,
    },
    /// A decision for a step that does not wait for one (including a second decision).
    #[error("step {step:?} is {status}, not waiting for a decision")]
    NotWaitingDecision {
        /// Step.
        step: String,
        /// Its status.
        status: StepStatus,
    },
    /// A decision for a step that is not a human step.
    #[error("step {step:?} is not a human step")]
    NotHumanStep {
        /// Step.
        step: String,
    },
    /// The DLQ record does not belong to this instance.
    #[error("unknown DLQ record {id}")]
    UnknownDlqRecord {
        /// Record id.
        id: u64,
    },
    /// The snapshot belongs to another definition.
    #[error("instance runs {found}, not {expected}")]
    WorkflowMismatch {
        /// Definition given.
        expected: WorkflowId,
        /// Definition of the instance.
        found: WorkflowId,
    },
    /// A payload exceeded the bound.
    #[error(transparent)]
    PayloadTooLarge(#[from] PayloadTooLarge),
    /// The snapshot contradicts its definition (a bug or corrupted data).
    #[error("inconsistent instance state: {0}")]
    Corrupt(String),
}
