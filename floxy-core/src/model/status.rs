//! Instance and step-run statuses, with the allowed transitions between them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Status of a workflow instance (SEMANTICS §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Created, first step not yet dispatched (never persisted by this engine: starts go
    /// straight to `running`; kept for Floxy compatibility of readers).
    Pending,
    /// Forward progress.
    Running,
    /// A step failed finally; compensations are running.
    RollingBack,
    /// Finished successfully. Terminal.
    Completed,
    /// Finished after a rollback. Terminal.
    Failed,
    /// Cancel requested; compensations are running.
    Cancelling,
    /// Finished after a cancel. Terminal.
    Cancelled,
    /// Stopped without compensation. Terminal.
    Aborted,
    /// Parked after a final failure in DLQ mode; resumes on requeue.
    Dlq,
}

impl InstanceStatus {
    /// All statuses, for iteration in tests and stats.
    pub const ALL: [InstanceStatus; 9] = [
        Self::Pending,
        Self::Running,
        Self::RollingBack,
        Self::Completed,
        Self::Failed,
        Self::Cancelling,
        Self::Cancelled,
        Self::Aborted,
        Self::Dlq,
    ];

    /// Whether the status is terminal: the instance never changes again.
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Aborted
        )
    }

    /// The `snake_case` name used in storage, events and metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::RollingBack => "rolling_back",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Aborted => "aborted",
            Self::Dlq => "dlq",
        }
    }

    /// Parses the `snake_case` name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of one step run (SEMANTICS §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Queued for its first attempt (or restored by a requeue).
    Pending,
    /// Claimed by a worker; its handler is running.
    Running,
    /// Its last attempt failed; waiting for the next one (queued with a run-at time).
    Retrying,
    /// Finished successfully.
    Completed,
    /// Failed finally (retries exhausted, not retryable, or cancelled while running).
    Failed,
    /// Never ran: its instance stopped forward progress first.
    Skipped,
    /// Its compensation is queued or running.
    Compensating,
    /// Compensated (or had nothing to compensate).
    RolledBack,
    /// Its compensation failed finally; a DLQ record was written.
    CompensationFailed,
    /// A human step waiting for a decision.
    WaitingDecision,
    /// A human step that was confirmed.
    Confirmed,
    /// A human step that was rejected.
    Rejected,
    /// Parked while its instance is in `dlq`.
    Paused,
}

impl StepStatus {
    /// All statuses.
    pub const ALL: [StepStatus; 13] = [
        Self::Pending,
        Self::Running,
        Self::Retrying,
        Self::Completed,
        Self::Failed,
        Self::Skipped,
        Self::Compensating,
        Self::RolledBack,
        Self::CompensationFailed,
        Self::WaitingDecision,
        Self::Confirmed,
        Self::Rejected,
        Self::Paused,
    ];

    /// The `snake_case` name used in storage and events.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Compensating => "compensating",
            Self::RolledBack => "rolled_back",
            Self::CompensationFailed => "compensation_failed",
            Self::WaitingDecision => "waiting_decision",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Paused => "paused",
        }
    }

    /// Parses the `snake_case` name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Work that still needs the engine: queued, running, waiting or compensating.
    #[must_use]
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            Self::Pending
                | Self::Running
                | Self::Retrying
                | Self::Compensating
                | Self::WaitingDecision
        )
    }

    /// A successful forward run. (Runs that made an attempt without succeeding are
    /// compensated too when a rollback covers them: SEMANTICS §5, "attempted means
    /// compensated".)
    #[must_use]
    pub const fn is_success(self) -> bool {
        matches!(self, Self::Completed | Self::Confirmed)
    }

    /// Whether a write may move a step run from `self` to `to`. Every status write is a
    /// compare-and-set checked against this table; anything else is a bug or a late write.
    #[must_use]
    pub const fn can_become(self, to: StepStatus) -> bool {
        use StepStatus as S;
        // Staying in the same status is always allowed (an idempotent rewrite).
        self as u8 == to as u8
            || matches!(
                (self, to),
                (S::Pending | S::Retrying, S::Running | S::Failed)
                    | (
                        S::Running,
                        S::Completed | S::Failed | S::Retrying | S::Skipped | S::Paused
                    )
                    | (
                        S::Pending | S::Retrying | S::WaitingDecision | S::Paused,
                        S::Skipped | S::Paused
                    )
                    | (S::Paused, S::Pending | S::Retrying)
                    | (S::WaitingDecision, S::Confirmed | S::Rejected | S::Failed)
                    // Compensation; `skipped` too: a step skipped after an attempt
                    // (retrying, or paused in `dlq`) is compensated (SEMANTICS §5,
                    // attempted means compensated).
                    | (
                        S::Completed
                            | S::Confirmed
                            | S::Failed
                            | S::Rejected
                            | S::CompensationFailed
                            | S::Skipped,
                        S::Compensating | S::RolledBack
                    )
                    | (
                        S::Compensating,
                        S::RolledBack | S::CompensationFailed | S::Compensating
                    )
            )
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
