//! Workflow definitions: the immutable graph a builder (or YAML) produces.
//!
//! A definition is a list of steps; `steps[0]` is the start. Steps form a tree of chains:
//! each step names its sequential successor in `next`; a fork names the first step of each
//! branch and its `next` is its join; a condition's `next` is the step run when the expression
//! is true and `else_first` the first step of the chain run when it is false. A chain ends at a
//! step whose `next` is `None` (the end of a path).

use super::ids::{StepName, WorkflowId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default retries of a step (`max_retries = 3` means up to four handler calls).
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default lease TTL of claimed work: 60 s.
pub const DEFAULT_LEASE_TTL_MS: u64 = 60_000;
/// Default step priority (0..=100).
pub const DEFAULT_PRIORITY: u8 = 50;
/// Highest priority.
pub const MAX_PRIORITY: u8 = 100;
/// Priority floor of retries and compensations ("default high", SEMANTICS §11).
pub const DEFAULT_RETRY_PRIORITY: u8 = 80;
/// Default aging: 0.5 priority point per second of waiting, i.e. one point per 2000 ms.
pub const DEFAULT_AGING_MS_PER_POINT: u64 = 2_000;
/// Default base retry delay.
pub const DEFAULT_RETRY_DELAY_MS: u64 = 100;
/// Default cap on a retry delay.
pub const DEFAULT_RETRY_MAX_DELAY_MS: u64 = 60_000;

/// A workflow definition. Identified by `"<name>-v<version>"`; immutable once registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowDefinition {
    /// Workflow name.
    pub name: String,
    /// Version (≥ 1).
    pub version: u32,
    /// Workflow-wide options.
    #[serde(default)]
    pub options: WorkflowOptions,
    /// The steps; `steps[0]` is the start.
    pub steps: Vec<StepDef>,
}

impl WorkflowDefinition {
    /// The definition's id, `"<name>-v<version>"`.
    #[must_use]
    pub fn id(&self) -> WorkflowId {
        WorkflowId::new(&self.name, self.version)
    }
}

/// Workflow-wide options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkflowOptions {
    /// DLQ mode: a final failure parks the instance in `dlq` instead of rolling back.
    pub dlq_enabled: bool,
    /// Lease TTL of claimed work.
    pub lease_ttl_ms: u64,
    /// Retries of steps that do not set their own.
    pub default_max_retries: u32,
    /// Bound on the size of inputs, outputs and decisions.
    pub max_payload_bytes: usize,
    /// Priority aging: milliseconds of waiting worth one priority point.
    pub aging_ms_per_point: u64,
}

impl Default for WorkflowOptions {
    fn default() -> Self {
        Self {
            dlq_enabled: false,
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
            default_max_retries: DEFAULT_MAX_RETRIES,
            max_payload_bytes: super::payload::DEFAULT_MAX_PAYLOAD_BYTES,
            aging_ms_per_point: DEFAULT_AGING_MS_PER_POINT,
        }
    }
}

/// One step of a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDef {
    /// Unique name within the definition.
    pub name: StepName,
    /// What the step does.
    pub kind: StepKind,
    /// Sequential successor (for a fork: its join; for a condition: the true arm).
    #[serde(default)]
    pub next: Option<StepName>,
    /// Retry, timing and scheduling options.
    #[serde(default)]
    pub options: StepOptions,
}

/// The kinds of step (SEMANTICS §1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepKind {
    /// Runs a named handler.
    Task {
        /// Handler name.
        handler: String,
        /// Compensation run when a rollback covers this step.
        #[serde(default)]
        on_failure: Option<Compensation>,
    },
    /// Rollback boundary: a rollback of a later step stops here.
    SavePoint,
    /// Starts two or more branches at once; `next` is its join.
    Fork {
        /// First step of each branch.
        branches: Vec<StepName>,
    },
    /// Waits for the branches of `fork`.
    Join {
        /// The fork whose branches it joins.
        fork: StepName,
        /// `all` or `any`.
        strategy: JoinStrategy,
        /// Explicit wait list (`join_step`): steps inside the fork's branches.
        #[serde(default)]
        wait_for: Option<Vec<StepName>>,
    },
    /// Evaluates an expression over its input.
    Condition {
        /// Floxy template expression, e.g. `{{ gt .count 5 }}`.
        expr: String,
        /// First step of the chain run when the expression is false.
        #[serde(default)]
        else_first: Option<StepName>,
    },
    /// Waits for a human decision.
    Human {
        /// What a rejection does.
        #[serde(default)]
        on_reject: RejectPolicy,
        /// Optional decision timeout.
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// What the timeout does.
        #[serde(default)]
        on_timeout: TimeoutPolicy,
    },
}

impl StepKind {
    /// Short name of the kind (`task`, `save_point`, ...).
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Task { .. } => "task",
            Self::SavePoint => "save_point",
            Self::Fork { .. } => "fork",
            Self::Join { .. } => "join",
            Self::Condition { .. } => "condition",
            Self::Human { .. } => "human",
        }
    }
}

/// A compensation: the handler run to undo a task, with its own retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compensation {
    /// Name of the compensation (shown in events); defaults to the handler name.
    pub name: String,
    /// Handler run to compensate.
    pub handler: String,
    /// Retry budget and backoff of the compensation.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Timeout of one compensation call.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Join strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JoinStrategy {
    /// Fires when every branch ended successfully.
    #[default]
    All,
    /// Fires on the first branch that ends successfully; tolerates failed branches.
    Any,
}

/// What a rejected human decision does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RejectPolicy {
    /// Abort the instance (Floxy's behaviour).
    #[default]
    Abort,
    /// Treat the rejection as a final failure of the step: roll back.
    RollBack,
}

/// What a human decision timeout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutPolicy {
    /// Reject (then the reject policy applies).
    #[default]
    Reject,
    /// Confirm.
    Confirm,
    /// Fail the step finally.
    Fail,
}

/// How retry delays grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RetryStrategy {
    /// The same delay every time.
    Fixed,
    /// `delay * n` before retry `n`.
    Linear,
    /// `delay * 2^(n-1)` before retry `n`.
    #[default]
    Exponential,
}

/// Retry budget and backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Retries after the first call; `None` uses the workflow default.
    pub max_retries: Option<u32>,
    /// Base delay.
    pub delay_ms: u64,
    /// Growth.
    pub strategy: RetryStrategy,
    /// Cap on one delay.
    pub max_delay_ms: u64,
    /// Jitter as a percentage of the delay (0..=100), applied symmetrically.
    pub jitter_pct: u8,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: None,
            delay_ms: DEFAULT_RETRY_DELAY_MS,
            strategy: RetryStrategy::Exponential,
            max_delay_ms: DEFAULT_RETRY_MAX_DELAY_MS,
            jitter_pct: 20,
        }
    }
}

/// Per-step options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepOptions {
    /// Retry budget and backoff.
    pub retry: RetryPolicy,
    /// Delay before the first run.
    pub delay_ms: u64,
    /// Timeout of one handler call.
    pub timeout_ms: Option<u64>,
    /// Priority 0..=100.
    pub priority: u8,
    /// Free-form metadata handed to the handler.
    pub metadata: BTreeMap<String, String>,
    /// Run at most once: no retry; a lease lost while it runs is a final failure.
    pub no_idempotent: bool,
}

impl Default for StepOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            delay_ms: 0,
            timeout_ms: None,
            priority: DEFAULT_PRIORITY,
            metadata: BTreeMap::new(),
            no_idempotent: false,
        }
    }
}
