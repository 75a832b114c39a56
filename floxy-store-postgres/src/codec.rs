//! Row decoding and column encoding between the core's records and the schema.
//!
//! Every value read from the database is checked: an unknown status, a negative counter or
//! JSON that does not parse is [`StoreError::Corrupt`], never a panic.

use crate::error::{corrupt, out_of_range};
use floxy_core::model::{
    BranchState, CompensationReason, DlqId, DlqRecord, Event, EventKind, FencingToken,
    HumanDecision, InstanceId, InstanceRecord, InstanceStatus, Lease, NewDlqRecord, Payload,
    QueueItem, QueueKey, StepRun, StepStatus, Timestamp, WorkKind, WorkflowId,
};
use floxy_core::store::StoreError;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use std::sync::Arc;

/// Columns of an instance record, in [`instance`] order.
pub(crate) const INSTANCE_COLS: &str = "id, workflow_id, status, input, output, error, \
     idempotency_key, created_at, updated_at, version, completion_seq, rollback_depth, \
     rollback_to, failed_step, branches";

/// Columns of a step run, in [`step_run`] order.
pub(crate) const STEP_COLS: &str = "instance_id, step, status, attempts, compensation_attempts, \
     input, output, error, completed_seq, compensate, cancel_requested, decision, created_at, \
     started_at, finished_at";

/// Columns of a queue item, in [`queue_item`] order.
pub(crate) const QUEUE_COLS: &str = "instance_id, step, kind, workflow_id, handler, run_at, \
     priority, order_key, attempt, lease_ttl_ms, cancel_requested, lease_owner, lease_token, \
     lease_expires_at";

/// Columns of a DLQ record, in [`dlq_record`] order.
pub(crate) const DLQ_COLS: &str =
    "id, created_at, instance_id, workflow_id, step, kind, input, error, reason";

/// Columns of an event, in [`event`] order.
pub(crate) const EVENT_COLS: &str = "seq, instance_id, created_at, kind, step, attempt, detail";

fn get<'r, T>(row: &'r PgRow, i: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(i).map_err(crate::error::map_sqlx)
}

fn u64_of(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(format!("negative {what}: {v}")))
}

fn u32_of(v: i32, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(format!("negative {what}: {v}")))
}

fn payload(v: Json<serde_json::Value>) -> Payload {
    Payload::new(v.0)
}

/// Decodes an instance record starting at column `o`.
pub(crate) fn instance(row: &PgRow, o: usize) -> Result<InstanceRecord, StoreError> {
    let status: String = get(row, o + 2)?;
    let branches: Json<Vec<BranchState>> = get(row, o + 14)?;
    Ok(InstanceRecord {
        id: InstanceId(get(row, o)?),
        workflow_id: WorkflowId(Arc::from(get::<String>(row, o + 1)?)),
        status: InstanceStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("unknown instance status {status:?}")))?,
        input: payload(get(row, o + 3)?),
        output: get::<Option<Json<serde_json::Value>>>(row, o + 4)?.map(payload),
        error: get(row, o + 5)?,
        idempotency_key: get(row, o + 6)?,
        created_at: Timestamp(get(row, o + 7)?),
        updated_at: Timestamp(get(row, o + 8)?),
        version: u64_of(get(row, o + 9)?, "version")?,
        completion_seq: u64_of(get(row, o + 10)?, "completion_seq")?,
        rollback_depth: u32_of(get(row, o + 11)?, "rollback_depth")?,
        rollback_to: get::<Option<String>>(row, o + 12)?.map(Arc::from),
        failed_step: get::<Option<String>>(row, o + 13)?.map(Arc::from),
        branches: branches.0,
    })
}

fn reason_of(s: &str) -> Result<CompensationReason, StoreError> {
    match s {
        "failure" => Ok(CompensationReason::Failure),
        "cancel" => Ok(CompensationReason::Cancel),
        _ => Err(corrupt(format!("unknown compensation reason {s:?}"))),
    }
}

/// Decodes a step run starting at column `o`.
pub(crate) fn step_run(row: &PgRow, o: usize) -> Result<StepRun, StoreError> {
    let status: String = get(row, o + 2)?;
    let completed_seq: Option<i64> = get(row, o + 8)?;
    let compensate: Option<String> = get(row, o + 9)?;
    let decision: Option<Json<HumanDecision>> = get(row, o + 11)?;
    Ok(StepRun {
        instance_id: InstanceId(get(row, o)?),
        step: Arc::from(get::<String>(row, o + 1)?),
        status: StepStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("unknown step status {status:?}")))?,
        attempts: u32_of(get(row, o + 3)?, "attempts")?,
        compensation_attempts: u32_of(get(row, o + 4)?, "compensation_attempts")?,
        input: payload(get(row, o + 5)?),
        output: get::<Option<Json<serde_json::Value>>>(row, o + 6)?.map(payload),
        error: get(row, o + 7)?,
        completed_seq: completed_seq
            .map(|v| u64_of(v, "completed_seq"))
            .transpose()?,
        compensate: compensate.as_deref().map(reason_of).transpose()?,
        cancel_requested: get(row, o + 10)?,
        decision: decision.map(|d| d.0),
        created_at: Timestamp(get(row, o + 12)?),
        started_at: get::<Option<i64>>(row, o + 13)?.map(Timestamp),
        finished_at: get::<Option<i64>>(row, o + 14)?.map(Timestamp),
    })
}

/// Parses a work kind column.
pub(crate) fn kind_of(s: &str) -> Result<WorkKind, StoreError> {
    WorkKind::parse(s).ok_or_else(|| corrupt(format!("unknown work kind {s:?}")))
}

/// Decodes a queue item starting at column `o`.
pub(crate) fn queue_item(row: &PgRow, o: usize) -> Result<QueueItem, StoreError> {
    let kind: String = get(row, o + 2)?;
    let priority: i16 = get(row, o + 6)?;
    let owner: Option<String> = get(row, o + 11)?;
    let token: Option<i64> = get(row, o + 12)?;
    let expires: Option<i64> = get(row, o + 13)?;
    let lease = match (owner, token, expires) {
        (Some(owner), Some(token), Some(expires_at)) => Some(Lease {
            owner: Arc::from(owner),
            token: FencingToken(u64_of(token, "lease token")?),
            expires_at: Timestamp(expires_at),
        }),
        (None, None, None) => None,
        _ => return Err(corrupt("queue item with a partial lease")),
    };
    Ok(QueueItem {
        key: QueueKey {
            instance_id: InstanceId(get(row, o)?),
            step: Arc::from(get::<String>(row, o + 1)?),
            kind: kind_of(&kind)?,
        },
        workflow_id: WorkflowId(Arc::from(get::<String>(row, o + 3)?)),
        handler: Arc::from(get::<String>(row, o + 4)?),
        run_at: Timestamp(get(row, o + 5)?),
        priority: u8::try_from(priority)
            .map_err(|_| corrupt(format!("priority {priority} out of range")))?,
        order_key: get(row, o + 7)?,
        attempt: u32_of(get(row, o + 8)?, "attempt")?,
        lease_ttl_ms: u64_of(get(row, o + 9)?, "lease_ttl_ms")?,
        cancel_requested: get(row, o + 10)?,
        lease,
    })
}

/// Decodes a DLQ record starting at column `o`.
pub(crate) fn dlq_record(row: &PgRow, o: usize) -> Result<DlqRecord, StoreError> {
    let kind: String = get(row, o + 5)?;
    Ok(DlqRecord {
        id: DlqId(u64_of(get(row, o)?, "dlq id")?),
        created_at: Timestamp(get(row, o + 1)?),
        record: NewDlqRecord {
            instance_id: InstanceId(get(row, o + 2)?),
            workflow_id: WorkflowId(Arc::from(get::<String>(row, o + 3)?)),
            step: Arc::from(get::<String>(row, o + 4)?),
            kind: kind_of(&kind)?,
            input: payload(get(row, o + 6)?),
            error: get(row, o + 7)?,
            reason: get(row, o + 8)?,
        },
    })
}

/// Decodes an event starting at column `o`.
pub(crate) fn event(row: &PgRow, o: usize) -> Result<Event, StoreError> {
    let kind: String = get(row, o + 3)?;
    let attempt: Option<i32> = get(row, o + 5)?;
    Ok(Event {
        seq: u64_of(get(row, o)?, "event seq")?,
        instance_id: InstanceId(get(row, o + 1)?),
        at: Timestamp(get(row, o + 2)?),
        kind: EventKind::parse(&kind).ok_or_else(|| corrupt(format!("unknown event {kind:?}")))?,
        step: get::<Option<String>>(row, o + 4)?.map(Arc::from),
        attempt: attempt.map(|a| u32_of(a, "event attempt")).transpose()?,
        detail: get::<Option<Json<serde_json::Value>>>(row, o + 6)?.map(payload),
    })
}

// ----- encoding ---------------------------------------------------------------------------

/// JSON text of a payload (cast to `jsonb` in SQL).
pub(crate) fn json(p: &Payload) -> String {
    p.value().to_string()
}

/// JSON text of any serializable value.
pub(crate) fn json_of<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("cannot encode JSON: {e}")))
}

/// A `u64` for a `bigint` column.
pub(crate) fn i64_of(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| out_of_range(what))
}

/// A `u32` for an `integer` column.
pub(crate) fn i32_of(v: u32, what: &str) -> Result<i32, StoreError> {
    i32::try_from(v).map_err(|_| out_of_range(what))
}
