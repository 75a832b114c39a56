//! The JSON shapes of the API (Floxy's field names where Floxy has them).

use crate::auth::Caller;
use crate::graph::Graph;
use floxy::{DlqRecord, Event, InstanceRecord, Payload, StepRun};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// What a redacted payload shows.
pub(crate) const REDACTED: &str = "[redacted]";

/// Keys of event details that carry payloads (redacted for viewers).
const PAYLOAD_KEYS: [&str; 6] = [
    "input",
    "output",
    "outputs",
    "new_input",
    "comment",
    "decision",
];

/// Whether the caller sees payloads, and the redaction when not.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub(crate) payloads: bool,
}

impl View {
    pub(crate) fn of(caller: &Caller) -> Self {
        Self {
            payloads: caller.see_payloads,
        }
    }

    pub(crate) fn payload(self, p: &Payload) -> Value {
        if self.payloads {
            p.value().clone()
        } else {
            Value::String(REDACTED.into())
        }
    }

    fn opt(self, p: Option<&Payload>) -> Option<Value> {
        p.map(|p| self.payload(p))
    }

    fn detail(self, p: &Payload) -> Value {
        let v = p.value().clone();
        if self.payloads {
            return v;
        }
        match v {
            Value::Object(mut map) => {
                for k in PAYLOAD_KEYS {
                    if let Some(x) = map.get_mut(k)
                        && !x.is_null()
                    {
                        *x = Value::String(REDACTED.into());
                    }
                }
                Value::Object(map)
            }
            Value::Null => Value::Null,
            _ => Value::String(REDACTED.into()),
        }
    }
}

/// A workflow definition in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkflowDto {
    /// `"<name>-v<version>"`.
    pub(crate) id: String,
    /// Name.
    pub(crate) name: String,
    /// Version.
    pub(crate) version: u32,
    /// The definition (the engine's JSON form).
    #[schema(value_type = Object)]
    pub(crate) definition: Value,
}

/// A workflow definition with its graph.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkflowDetailDto {
    #[serde(flatten)]
    pub(crate) workflow: WorkflowDto,
    /// Steps as nodes, successions as edges.
    pub(crate) graph: Graph,
}

/// An instance.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InstanceDto {
    /// Instance id (UUID).
    pub(crate) id: String,
    /// Definition id.
    pub(crate) workflow_id: String,
    /// Status (`pending`, `running`, `rolling_back`, `completed`, `failed`, `cancelling`,
    /// `cancelled`, `aborted`, `dlq`).
    pub(crate) status: String,
    /// Input (redacted for viewers).
    #[schema(value_type = Object)]
    pub(crate) input: Value,
    /// Output once completed (redacted for viewers).
    #[schema(value_type = Option<Object>)]
    pub(crate) output: Option<Value>,
    /// Error or reason of the end.
    pub(crate) error: Option<String>,
    /// Idempotency key it was started with.
    pub(crate) idempotency_key: Option<String>,
    /// The step whose failure started a rollback.
    pub(crate) failed_step: Option<String>,
    /// Creation time (ms since the epoch).
    pub(crate) created_at: i64,
    /// Last change (ms since the epoch).
    pub(crate) updated_at: i64,
    /// Version (one per commit).
    pub(crate) version: u64,
}

impl InstanceDto {
    pub(crate) fn new(r: &InstanceRecord, view: View) -> Self {
        Self {
            id: r.id.to_string(),
            workflow_id: r.workflow_id.to_string(),
            status: r.status.as_str().into(),
            input: view.payload(&r.input),
            output: view.opt(r.output.as_ref()),
            error: r.error.clone(),
            idempotency_key: r.idempotency_key.clone(),
            failed_step: r.failed_step.as_deref().map(str::to_owned),
            created_at: r.created_at.as_millis(),
            updated_at: r.updated_at.as_millis(),
            version: r.version,
        }
    }
}

/// A human decision recorded on a step.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DecisionDto {
    /// Who decided.
    pub(crate) decided_by: String,
    /// `confirm` or `reject`.
    pub(crate) decision: String,
    /// Comment (redacted for viewers).
    pub(crate) comment: Option<String>,
    /// When (ms since the epoch).
    pub(crate) decided_at: i64,
}

/// A step run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StepDto {
    /// Step name.
    pub(crate) step_name: String,
    /// Status.
    pub(crate) status: String,
    /// Attempts made.
    pub(crate) attempts: u32,
    /// Compensation attempts made.
    pub(crate) compensation_attempts: u32,
    /// Input (redacted for viewers).
    #[schema(value_type = Object)]
    pub(crate) input: Value,
    /// Output (redacted for viewers).
    #[schema(value_type = Option<Object>)]
    pub(crate) output: Option<Value>,
    /// Last error.
    pub(crate) error: Option<String>,
    /// Created (ms since the epoch).
    pub(crate) created_at: i64,
    /// First attempt started (ms since the epoch).
    pub(crate) started_at: Option<i64>,
    /// Ended (ms since the epoch).
    pub(crate) ended_at: Option<i64>,
    /// Human decision, if any.
    pub(crate) decision: Option<DecisionDto>,
}

impl StepDto {
    pub(crate) fn new(r: &StepRun, view: View) -> Self {
        Self {
            step_name: r.step.to_string(),
            status: r.status.as_str().into(),
            attempts: r.attempts,
            compensation_attempts: r.compensation_attempts,
            input: view.payload(&r.input),
            output: view.opt(r.output.as_ref()),
            error: r.error.clone(),
            created_at: r.created_at.as_millis(),
            started_at: r.started_at.map(floxy::Timestamp::as_millis),
            ended_at: r.finished_at.map(floxy::Timestamp::as_millis),
            decision: r.decision.as_ref().map(|d| DecisionDto {
                decided_by: d.decided_by.clone(),
                decision: match d.decision {
                    floxy::Decision::Confirm => "confirm".into(),
                    floxy::Decision::Reject => "reject".into(),
                },
                comment: d.comment.as_ref().map(|c| {
                    if view.payloads {
                        c.clone()
                    } else {
                        REDACTED.into()
                    }
                }),
                decided_at: d.decided_at.as_millis(),
            }),
        }
    }
}

/// An instance with its steps and its workflow's graph.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InstanceDetailDto {
    #[serde(flatten)]
    pub(crate) instance: InstanceDto,
    /// Step runs, by creation time.
    pub(crate) steps: Vec<StepDto>,
    /// The workflow's graph (nodes + edges).
    pub(crate) graph: Option<Graph>,
}

/// An event of an instance's timeline.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventDto {
    /// Store-wide sequence number.
    pub(crate) seq: u64,
    /// Instance.
    pub(crate) instance_id: String,
    /// Event name (`workflow_started`, `step_completed`, ...).
    pub(crate) event_type: String,
    /// Step it concerns.
    pub(crate) step_name: Option<String>,
    /// Attempt it concerns.
    pub(crate) attempt: Option<u32>,
    /// Details (payload fields redacted for viewers).
    #[schema(value_type = Option<Object>)]
    pub(crate) payload: Option<Value>,
    /// Time (ms since the epoch).
    pub(crate) created_at: i64,
}

impl EventDto {
    pub(crate) fn new(e: &Event, view: View) -> Self {
        Self {
            seq: e.seq,
            instance_id: e.instance_id.to_string(),
            event_type: e.kind.as_str().into(),
            step_name: e.step.as_deref().map(str::to_owned),
            attempt: e.attempt,
            payload: e.detail.as_ref().map(|d| view.detail(d)),
            created_at: e.at.as_millis(),
        }
    }
}

/// A live event of the stream.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LiveEventDto {
    /// Instance.
    pub(crate) instance_id: String,
    /// Definition.
    pub(crate) workflow_id: String,
    /// Event name.
    pub(crate) event_type: String,
    /// Step it concerns.
    pub(crate) step_name: Option<String>,
    /// Attempt it concerns.
    pub(crate) attempt: Option<u32>,
    /// Instance status after the commit (absent for a claim's `step_started`).
    pub(crate) status: Option<String>,
    /// Instance version after the commit (orders the commits of one instance).
    pub(crate) version: Option<u64>,
    /// Details (payload fields redacted for viewers).
    #[schema(value_type = Option<Object>)]
    pub(crate) payload: Option<Value>,
    /// Time (ms since the epoch).
    pub(crate) created_at: i64,
}

impl LiveEventDto {
    pub(crate) fn new(e: &floxy::CommittedEvent, view: View) -> Self {
        Self {
            instance_id: e.instance_id.to_string(),
            workflow_id: e.workflow_id.to_string(),
            event_type: e.kind().as_str().into(),
            step_name: e.step().map(std::string::ToString::to_string),
            attempt: e.event.attempt,
            status: e.status.map(|s| s.as_str().to_owned()),
            version: e.version,
            payload: e.detail().map(|d| view.detail(d)),
            created_at: e.at.as_millis(),
        }
    }
}

/// A page of instances.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InstancePageDto {
    /// The instances, oldest first.
    pub(crate) items: Vec<InstanceDto>,
    /// Page number (page-numbered requests).
    pub(crate) page: Option<usize>,
    /// Page size.
    pub(crate) page_size: usize,
    /// Cursor of the next page (`?cursor=`), absent on the last.
    pub(crate) next_cursor: Option<String>,
}

/// A DLQ record.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DlqDto {
    /// Record id.
    pub(crate) id: u64,
    /// Instance.
    pub(crate) instance_id: String,
    /// Definition.
    pub(crate) workflow_id: String,
    /// Step.
    pub(crate) step_name: String,
    /// `execute` or `compensate`.
    pub(crate) step_type: String,
    /// The step's input (redacted for viewers).
    #[schema(value_type = Object)]
    pub(crate) input: Value,
    /// The final error.
    pub(crate) error: Option<String>,
    /// Why it was parked.
    pub(crate) reason: String,
    /// Written (ms since the epoch).
    pub(crate) created_at: i64,
}

impl DlqDto {
    pub(crate) fn new(r: &DlqRecord, view: View) -> Self {
        Self {
            id: r.id.0,
            instance_id: r.record.instance_id.to_string(),
            workflow_id: r.record.workflow_id.to_string(),
            step_name: r.record.step.to_string(),
            step_type: r.record.kind.as_str().into(),
            input: view.payload(&r.record.input),
            error: Some(r.record.error.clone()),
            reason: r.record.reason.clone(),
            created_at: r.created_at.as_millis(),
        }
    }
}

/// A page of DLQ records.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DlqPageDto {
    /// The records, by id.
    pub(crate) items: Vec<DlqDto>,
    /// Page number (page-numbered requests).
    pub(crate) page: Option<usize>,
    /// Page size.
    pub(crate) page_size: usize,
    /// Cursor of the next page (`?cursor=`), absent on the last.
    pub(crate) next_cursor: Option<String>,
}

/// Store counts.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatsDto {
    /// Instances per status.
    pub(crate) instances_by_status: BTreeMap<String, u64>,
    /// Queue items ready (not leased).
    pub(crate) queue_ready: u64,
    /// Queue items leased.
    pub(crate) queue_leased: u64,
    /// DLQ records.
    pub(crate) dlq: u64,
}

/// Summary counts (Floxy's field names).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SummaryDto {
    /// Registered definitions.
    pub(crate) total_workflows: u64,
    /// Instances of every status.
    pub(crate) total_instances: u64,
    /// Non-terminal instances (DLQ included).
    pub(crate) active_instances: u64,
    /// Completed instances.
    pub(crate) completed_instances: u64,
    /// Failed instances.
    pub(crate) failed_instances: u64,
    /// Cancelled instances.
    pub(crate) cancelled_instances: u64,
    /// Aborted instances.
    pub(crate) aborted_instances: u64,
    /// Instances parked in the DLQ.
    pub(crate) dlq_instances: u64,
}

/// Body of `POST /api/workflows/{id}/start`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRequest {
    /// The instance's input (JSON; `null` if absent).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub(crate) input: Value,
    /// A second start with the same key returns the first instance.
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
}

/// Answer of a start.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StartResponse {
    /// The instance (new, or the existing one of the idempotency key).
    pub(crate) instance_id: String,
}

/// Body of cancel and abort.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonRequest {
    /// Why (recorded in the instance's events with the token's name).
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// Body of a human decision.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionRequest {
    /// Comment (Floxy's field name).
    #[serde(default)]
    pub(crate) message: Option<String>,
    /// The human step (when the instance waits on several); the path form names it too.
    #[serde(default)]
    pub(crate) step: Option<String>,
}

/// Body of a requeue.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequeueRequest {
    /// Replaces the step's input when given and not `null`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) new_input: Option<Value>,
}

/// Body of a cleanup.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CleanupRequest {
    /// Remove terminal instances last updated more than this many days ago (Floxy's field).
    #[serde(default)]
    pub(crate) days_to_keep: Option<u32>,
    /// Or: more than this many milliseconds ago.
    #[serde(default)]
    pub(crate) older_than_ms: Option<u64>,
}

/// Answer of a cleanup.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CleanupResponse {
    /// Instances removed.
    pub(crate) deleted_count: u64,
    /// The age bound used, in days (when given in days).
    pub(crate) days_to_keep: Option<u32>,
    /// The age bound used, in milliseconds.
    pub(crate) older_than_ms: u64,
}

/// Answer of a flow registration.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegisterResponse {
    /// Ids of the definitions registered (or already registered with the same content).
    pub(crate) registered: Vec<String>,
}
