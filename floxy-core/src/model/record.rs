//! Persistent records: instances, step runs, queue items, events and DLQ records.

use super::ids::{DlqId, FencingToken, InstanceId, StepName, Timestamp, WorkflowId};
use super::payload::Payload;
use super::status::{InstanceStatus, StepStatus};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A workflow instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Id.
    pub id: InstanceId,
    /// Definition the instance is pinned to.
    pub workflow_id: WorkflowId,
    /// Current status.
    pub status: InstanceStatus,
    /// Input given at start.
    pub input: Payload,
    /// Output once completed.
    pub output: Option<Payload>,
    /// Error that made it fail, cancel or abort.
    pub error: Option<String>,
    /// Caller-chosen idempotency key of the start.
    pub idempotency_key: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Time of the last transition.
    pub updated_at: Timestamp,
    /// Number of transitions applied (1 after start). Every transition writes `version + 1`.
    pub version: u64,
    /// Counter giving each completion (and final failure) its order, for reverse-order
    /// compensation.
    pub completion_seq: u64,
    /// Number of compensation handler calls started by rollbacks of this instance.
    pub rollback_depth: u32,
    /// The savepoint the current rollback stops at (`None`: back to the start).
    pub rollback_to: Option<StepName>,
    /// The step whose final failure started the rollback or parked the instance.
    pub failed_step: Option<StepName>,
    /// State of each fork branch that has started.
    pub branches: Vec<BranchState>,
}

/// State of one branch of one fork.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchState {
    /// The fork step.
    pub fork: StepName,
    /// Branch index within the fork.
    pub branch: u16,
    /// Phase.
    pub phase: BranchPhase,
    /// The step whose completion ended the branch's path (for the join output).
    pub end_step: Option<StepName>,
}

/// Phase of a fork branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchPhase {
    /// Steps still to run.
    Running,
    /// Its path ended successfully.
    Succeeded,
    /// Failed in an `any` fork; its completed steps are being compensated (local rollback).
    RollingBack,
    /// Failed (and, in an `any` fork, compensated).
    Failed,
}

/// Why a step is being compensated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationReason {
    /// A rollback after a final failure.
    Failure,
    /// A cancel.
    Cancel,
}

impl CompensationReason {
    /// `failure` or `cancel`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Failure => "failure",
            Self::Cancel => "cancel",
        }
    }
}

/// A human decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HumanDecision {
    /// Who decided.
    pub decided_by: String,
    /// Confirm or reject.
    pub decision: Decision,
    /// Free-form comment.
    pub comment: Option<String>,
    /// When.
    pub decided_at: Timestamp,
}

/// Confirm or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Continue the flow.
    Confirm,
    /// Reject (abort, or roll back by policy).
    Reject,
}

/// One step run of one instance. A step of a definition runs at most once per instance
/// (the graph has no cycles), so a step run is identified by `(instance_id, step)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    /// Instance.
    pub instance_id: InstanceId,
    /// Step name.
    pub step: StepName,
    /// Status.
    pub status: StepStatus,
    /// Forward handler calls started.
    pub attempts: u32,
    /// Compensation handler calls started.
    pub compensation_attempts: u32,
    /// Input.
    pub input: Payload,
    /// Output once completed.
    pub output: Option<Payload>,
    /// Last error.
    pub error: Option<String>,
    /// Order within the instance in which the run's latest attempt ended: its completion,
    /// its final failure, or the failed attempt it waits to retry after. Compensations run
    /// in the reverse of this order.
    pub completed_seq: Option<u64>,
    /// Set once when a rollback or cancel covers this step; never cleared.
    pub compensate: Option<CompensationReason>,
    /// A running handler was asked to stop.
    pub cancel_requested: bool,
    /// Decision of a human step.
    pub decision: Option<HumanDecision>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Start of the latest attempt.
    pub started_at: Option<Timestamp>,
    /// End of the forward run.
    pub finished_at: Option<Timestamp>,
}

impl StepRun {
    /// A new step run in `status`.
    #[must_use]
    pub fn new(
        instance_id: InstanceId,
        step: StepName,
        status: StepStatus,
        input: Payload,
        now: Timestamp,
    ) -> Self {
        Self {
            instance_id,
            step,
            status,
            attempts: 0,
            compensation_attempts: 0,
            input,
            output: None,
            error: None,
            completed_seq: None,
            compensate: None,
            cancel_requested: false,
            decision: None,
            created_at: now,
            started_at: None,
            finished_at: None,
        }
    }

    /// The idempotency key handed to the handler: stable across retries and compensation.
    #[must_use]
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.instance_id, self.step)
    }
}

/// What a queue item asks a worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkKind {
    /// Run the step's handler.
    Execute,
    /// Run the step's compensation.
    Compensate,
    /// A timer (human decision timeout) fired; no handler runs.
    Timer,
}

impl WorkKind {
    /// `execute`, `compensate` or `timer`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Execute => "execute",
            Self::Compensate => "compensate",
            Self::Timer => "timer",
        }
    }
    /// Parses [`Self::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "execute" => Some(Self::Execute),
            "compensate" => Some(Self::Compensate),
            "timer" => Some(Self::Timer),
            _ => None,
        }
    }
}

/// The handler name under which timer items are queued; every worker claims them.
pub const TIMER_HANDLER: &str = "__floxy.timer";

/// Key of a queue item: at most one item per step run and kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueKey {
    /// Instance.
    pub instance_id: InstanceId,
    /// Step.
    pub step: StepName,
    /// Kind of work.
    pub kind: WorkKind,
}

/// A lease on a claimed queue item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Worker that holds it.
    pub owner: Arc<str>,
    /// Fencing token of this claim.
    pub token: FencingToken,
    /// When it expires unless heartbeated.
    pub expires_at: Timestamp,
}

/// A unit of work in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    /// Key.
    pub key: QueueKey,
    /// Definition of the instance.
    pub workflow_id: WorkflowId,
    /// Handler that must be registered to claim it ([`TIMER_HANDLER`] for timers).
    pub handler: Arc<str>,
    /// Not claimable before this time.
    pub run_at: Timestamp,
    /// Priority 0..=100.
    pub priority: u8,
    /// Claim order: `run_at - priority * aging_ms_per_point`; smaller first. Equals
    /// priority-with-aging order and can be served by an index.
    pub order_key: i64,
    /// Attempts already made; a claim makes attempt `attempt + 1`.
    pub attempt: u32,
    /// Lease TTL given to claims of this item.
    pub lease_ttl_ms: u64,
    /// The holder of the lease was asked to stop (visible through heartbeats).
    pub cancel_requested: bool,
    /// Current lease, if claimed.
    pub lease: Option<Lease>,
}

impl QueueItem {
    /// Computes the claim order key.
    #[must_use]
    pub fn order_key_for(run_at: Timestamp, priority: u8, aging_ms_per_point: u64) -> i64 {
        let head_start = i64::from(priority)
            .saturating_mul(i64::try_from(aging_ms_per_point).unwrap_or(i64::MAX));
        run_at.as_millis().saturating_sub(head_start)
    }
}

/// Event names (Floxy's, plus this engine's additions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// Instance created.
    WorkflowStarted,
    /// Instance completed.
    WorkflowCompleted,
    /// Instance failed (after its rollback).
    WorkflowFailed,
    /// Instance cancelled (after its compensations).
    WorkflowCancelled,
    /// Instance aborted.
    WorkflowAborted,
    /// Instance parked in the DLQ.
    WorkflowDlq,
    /// A rollback started.
    RollbackStarted,
    /// A handler attempt started (written by the claim).
    StepStarted,
    /// A step completed.
    StepCompleted,
    /// A step failed finally.
    StepFailed,
    /// An attempt failed; another will follow.
    StepRetry,
    /// A step was skipped.
    StepSkipped,
    /// A step was paused (DLQ mode).
    StepPaused,
    /// A fork started its branches.
    ForkStarted,
    /// A join's wait condition was met.
    JoinReady,
    /// A join completed.
    JoinCompleted,
    /// A branch of an `any` fork failed and is rolled back locally.
    BranchFailed,
    /// A condition was evaluated.
    ConditionCheck,
    /// A savepoint was passed.
    SavePointReached,
    /// Cancel requested.
    CancellationStarted,
    /// Abort requested.
    AbortStarted,
    /// A DLQ record was requeued.
    DlqRequeued,
    /// A compensation was queued.
    CompensationStarted,
    /// A compensation completed.
    CompensationCompleted,
    /// A compensation attempt failed; another will follow.
    CompensationRetry,
    /// A compensation failed finally.
    CompensationFailed,
    /// A step without compensation handler was marked rolled back.
    StepRolledBack,
    /// A human step waits for a decision.
    HumanDecisionWaiting,
    /// A human step was confirmed.
    HumanDecisionConfirmed,
    /// A human step was rejected.
    HumanDecisionRejected,
    /// A worker's lease expired while it held the step.
    LeaseExpired,
}

impl EventKind {
    /// The `snake_case` name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkflowStarted => "workflow_started",
            Self::WorkflowCompleted => "workflow_completed",
            Self::WorkflowFailed => "workflow_failed",
            Self::WorkflowCancelled => "workflow_cancelled",
            Self::WorkflowAborted => "workflow_aborted",
            Self::WorkflowDlq => "workflow_dlq",
            Self::RollbackStarted => "rollback_started",
            Self::StepStarted => "step_started",
            Self::StepCompleted => "step_completed",
            Self::StepFailed => "step_failed",
            Self::StepRetry => "step_retry",
            Self::StepSkipped => "step_skipped",
            Self::StepPaused => "step_paused",
            Self::ForkStarted => "fork_started",
            Self::JoinReady => "join_ready",
            Self::JoinCompleted => "join_completed",
            Self::BranchFailed => "branch_failed",
            Self::ConditionCheck => "condition_check",
            Self::SavePointReached => "save_point_reached",
            Self::CancellationStarted => "cancellation_started",
            Self::AbortStarted => "abort_started",
            Self::DlqRequeued => "dlq_requeued",
            Self::CompensationStarted => "compensation_started",
            Self::CompensationCompleted => "compensation_completed",
            Self::CompensationRetry => "compensation_retry",
            Self::CompensationFailed => "compensation_failed",
            Self::StepRolledBack => "step_rolled_back",
            Self::HumanDecisionWaiting => "human_decision_waiting",
            Self::HumanDecisionConfirmed => "human_decision_confirmed",
            Self::HumanDecisionRejected => "human_decision_rejected",
            Self::LeaseExpired => "lease_expired",
        }
    }

    /// Parses [`Self::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        ALL_EVENT_KINDS.iter().copied().find(|k| k.as_str() == s)
    }
}

/// Every event kind, for parsing and tests.
pub const ALL_EVENT_KINDS: [EventKind; 31] = [
    EventKind::WorkflowStarted,
    EventKind::WorkflowCompleted,
    EventKind::WorkflowFailed,
    EventKind::WorkflowCancelled,
    EventKind::WorkflowAborted,
    EventKind::WorkflowDlq,
    EventKind::RollbackStarted,
    EventKind::StepStarted,
    EventKind::StepCompleted,
    EventKind::StepFailed,
    EventKind::StepRetry,
    EventKind::StepSkipped,
    EventKind::StepPaused,
    EventKind::ForkStarted,
    EventKind::JoinReady,
    EventKind::JoinCompleted,
    EventKind::BranchFailed,
    EventKind::ConditionCheck,
    EventKind::SavePointReached,
    EventKind::CancellationStarted,
    EventKind::AbortStarted,
    EventKind::DlqRequeued,
    EventKind::CompensationStarted,
    EventKind::CompensationCompleted,
    EventKind::CompensationRetry,
    EventKind::CompensationFailed,
    EventKind::StepRolledBack,
    EventKind::HumanDecisionWaiting,
    EventKind::HumanDecisionConfirmed,
    EventKind::HumanDecisionRejected,
    EventKind::LeaseExpired,
];

/// An event as produced by a transition (the store adds sequence, instance and time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Kind.
    pub kind: EventKind,
    /// Step it concerns.
    pub step: Option<StepName>,
    /// Attempt number it concerns.
    pub attempt: Option<u32>,
    /// Details (errors, decisions, results of conditions).
    pub detail: Option<Payload>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Store-wide sequence number, increasing in commit order.
    pub seq: u64,
    /// Instance.
    pub instance_id: InstanceId,
    /// Time of the transition that wrote it.
    pub at: Timestamp,
    /// Kind.
    pub kind: EventKind,
    /// Step it concerns.
    pub step: Option<StepName>,
    /// Attempt number it concerns.
    pub attempt: Option<u32>,
    /// Details.
    pub detail: Option<Payload>,
}

/// A DLQ record as produced by a transition (the store assigns the id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewDlqRecord {
    /// Instance.
    pub instance_id: InstanceId,
    /// Definition.
    pub workflow_id: WorkflowId,
    /// Step.
    pub step: StepName,
    /// `execute` (forward step failed in DLQ mode) or `compensate` (compensation failed).
    pub kind: WorkKind,
    /// Input of the step.
    pub input: Payload,
    /// Last error.
    pub error: String,
    /// Why it was written.
    pub reason: String,
}

/// A stored DLQ record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqRecord {
    /// Id.
    pub id: DlqId,
    /// When it was written.
    pub created_at: Timestamp,
    /// Contents.
    #[serde(flatten)]
    pub record: NewDlqRecord,
}

/// Everything the state machine needs to know about one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSnapshot {
    /// The instance.
    pub instance: InstanceRecord,
    /// Its step runs (any order).
    pub steps: Vec<StepRun>,
    /// Its DLQ records.
    pub dlq: Vec<DlqRecord>,
}
