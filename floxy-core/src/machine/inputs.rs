//! Inputs of the state machine.

use crate::model::{Decision, DlqId, FencingToken, Payload, QueueKey, StepName};

/// What a worker's handler call produced.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkOutcome {
    /// The handler returned this output (compensations: ignored).
    Succeeded(Payload),
    /// The handler failed.
    Failed {
        /// Error message.
        error: String,
        /// `false` for errors that must not be retried (bad input, oversized output).
        retryable: bool,
    },
}

/// An input to the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A claimed item was worked on (an `Execute` or `Compensate` item).
    WorkDone {
        /// The claimed item.
        key: QueueKey,
        /// Token of the claim (checked by the store).
        token: FencingToken,
        /// Attempt number of the claim.
        attempt: u32,
        /// Outcome.
        outcome: WorkOutcome,
    },
    /// A worker claimed an item whose previous lease had expired: that attempt is lost.
    LeaseExpired {
        /// The claimed item.
        key: QueueKey,
        /// Token of the new claim.
        token: FencingToken,
        /// Attempt number of the new claim.
        attempt: u32,
    },
    /// A claimed timer item (human decision timeout) is due.
    TimerFired {
        /// The timer item.
        key: QueueKey,
        /// Token of the claim.
        token: FencingToken,
    },
    /// Cancel the instance (compensate everything).
    Cancel {
        /// Why.
        reason: Option<String>,
        /// Who asked (an operator's name; recorded in the `cancellation_started` event).
        by: Option<String>,
    },
    /// Abort the instance (no compensation).
    Abort {
        /// Why.
        reason: Option<String>,
        /// Who asked (an operator's name; recorded in the `abort_started` event).
        by: Option<String>,
    },
    /// A human decision.
    Decide {
        /// The human step.
        step: StepName,
        /// Who decided.
        decided_by: String,
        /// Confirm or reject.
        decision: Decision,
        /// Comment.
        comment: Option<String>,
    },
    /// Requeue a DLQ record of this instance, optionally with a new input.
    Requeue {
        /// The record.
        dlq_id: DlqId,
        /// Replaces the step's input when given.
        new_input: Option<Payload>,
        /// Who asked (an operator's name; recorded in the `dlq_requeued` event).
        by: Option<String>,
    },
}
