//! Small constructors for hand-built transitions, and helpers that call a store and panic
//! with a clear message when it fails. Time is always explicit: nothing here reads a clock.

use crate::model::{
    EventKind, InstanceId, InstanceRecord, InstanceSnapshot, InstanceStatus, NewDlqRecord,
    NewEvent, Payload, QueueItem, QueueKey, QueueOp, StepDef, StepKind, StepOptions, StepRun,
    StepStatus, StepWrite, Timestamp, Transition, WorkKind, WorkflowDefinition, WorkflowId,
    WorkflowOptions,
};
use crate::store::{
    ClaimRequest, ClaimedItem, CreateOutcome, DlqQuery, Store, StoreError, StoreStats,
};
use std::sync::Arc;

/// Base time of every check: 2023-11-14T22:13:20Z.
pub const T0: Timestamp = Timestamp(1_700_000_000_000);

/// Lease TTL of the items built here.
pub const TTL_MS: u64 = 30_000;

/// `T0 + offset_ms`.
#[must_use]
pub const fn at(offset_ms: i64) -> Timestamp {
    Timestamp(T0.0 + offset_ms)
}

/// The workflow most checks use.
#[must_use]
pub fn wf() -> WorkflowId {
    WorkflowId::new("conformance", 1)
}

/// A second workflow, for filters.
#[must_use]
pub fn wf2() -> WorkflowId {
    WorkflowId::new("conformance-other", 1)
}

/// An instance id from a small number (ids order like the numbers).
#[must_use]
pub const fn iid(n: u128) -> InstanceId {
    InstanceId::from_u128(n)
}

/// A one-task definition named `name` at `version`, whose task runs `handler`.
#[must_use]
pub fn definition(name: &str, version: u32, handler: &str) -> WorkflowDefinition {
    WorkflowDefinition {
        name: name.to_owned(),
        version,
        options: WorkflowOptions::default(),
        steps: vec![StepDef {
            name: "only".into(),
            kind: StepKind::Task {
                handler: handler.to_owned(),
                on_failure: None,
            },
            next: None,
            options: StepOptions::default(),
        }],
    }
}

/// A `version`-1 instance record of `workflow` in `status`, created and updated at `now`.
#[must_use]
pub fn instance(
    id: InstanceId,
    workflow: &WorkflowId,
    status: InstanceStatus,
    now: Timestamp,
) -> InstanceRecord {
    InstanceRecord {
        id,
        workflow_id: workflow.clone(),
        status,
        input: Payload::new(serde_json::json!({ "instance": id.to_string() })),
        output: None,
        error: None,
        idempotency_key: None,
        created_at: now,
        updated_at: now,
        version: 1,
        completion_seq: 0,
        rollback_depth: 0,
        rollback_to: None,
        failed_step: None,
        branches: Vec::new(),
    }
}

/// A new step run.
#[must_use]
pub fn step_run(id: InstanceId, step: &str, status: StepStatus, now: Timestamp) -> StepRun {
    StepRun::new(
        id,
        step.into(),
        status,
        Payload::new(serde_json::json!({ "step": step })),
        now,
    )
}

/// The key of a queue item.
#[must_use]
pub fn key(id: InstanceId, step: &str, kind: WorkKind) -> QueueKey {
    QueueKey {
        instance_id: id,
        step: step.into(),
        kind,
    }
}

/// A queue item of `workflow` due at `run_at`, with `order_key == run_at`, priority 50,
/// attempt 0 and lease TTL [`TTL_MS`].
#[must_use]
pub fn item(workflow: &WorkflowId, key: QueueKey, handler: &str, run_at: Timestamp) -> QueueItem {
    QueueItem {
        key,
        workflow_id: workflow.clone(),
        handler: handler.into(),
        run_at,
        priority: 50,
        order_key: run_at.as_millis(),
        attempt: 0,
        lease_ttl_ms: TTL_MS,
        cancel_requested: false,
        lease: None,
    }
}

/// An `Execute` item of [`wf`] for `step` of `id`.
#[must_use]
pub fn execute(id: InstanceId, step: &str, handler: &str, run_at: Timestamp) -> QueueItem {
    item(&wf(), key(id, step, WorkKind::Execute), handler, run_at)
}

/// An event without attempt or detail.
#[must_use]
pub fn event(kind: EventKind, step: Option<&str>) -> NewEvent {
    NewEvent {
        kind,
        step: step.map(Into::into),
        attempt: None,
        detail: None,
    }
}

/// A DLQ record of `step` of `id`.
#[must_use]
pub fn dlq_record(id: InstanceId, workflow: &WorkflowId, step: &str) -> NewDlqRecord {
    NewDlqRecord {
        instance_id: id,
        workflow_id: workflow.clone(),
        step: step.into(),
        kind: WorkKind::Execute,
        input: Payload::new(serde_json::json!({ "step": step })),
        error: format!("{step} failed"),
        reason: "retries exhausted".to_owned(),
    }
}

/// A step write.
#[must_use]
pub fn write(run: StepRun, expect: Option<StepStatus>) -> StepWrite {
    StepWrite { run, expect }
}

/// A creating transition of [`wf`]: the instance `running` at `now`, one `pending` step run
/// and one `Execute` item due at `now` per `(step, handler)`, and a `workflow_started` event.
#[must_use]
pub fn start(id: InstanceId, now: Timestamp, steps: &[(&str, &str)]) -> Transition {
    let mut t = Transition {
        now,
        create: true,
        instance: instance(id, &wf(), InstanceStatus::Running, now),
        steps: Vec::new(),
        queue: Vec::new(),
        events: vec![event(EventKind::WorkflowStarted, None)],
        dlq_insert: Vec::new(),
        dlq_delete: Vec::new(),
        lease_check: None,
    };
    for (step, handler) in steps {
        t.steps
            .push(write(step_run(id, step, StepStatus::Pending, now), None));
        t.queue
            .push(QueueOp::Upsert(execute(id, step, handler, now)));
    }
    t
}

/// The next transition of `snap`: the same record with `version + 1` and `updated_at = now`,
/// and nothing else written.
#[must_use]
pub fn next(snap: &InstanceSnapshot, now: Timestamp) -> Transition {
    let mut instance = snap.instance.clone();
    instance.version += 1;
    instance.updated_at = now;
    Transition {
        now,
        create: false,
        instance,
        steps: Vec::new(),
        queue: Vec::new(),
        events: Vec::new(),
        dlq_insert: Vec::new(),
        dlq_delete: Vec::new(),
        lease_check: None,
    }
}

/// The step run `step` of `snap` (panics if missing).
#[must_use]
pub fn stored_step(snap: &InstanceSnapshot, step: &str) -> StepRun {
    snap.steps
        .iter()
        .find(|r| &*r.step == step)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "step {step} missing from the snapshot of {}",
                snap.instance.id
            )
        })
}

/// Unwraps a store result, panicking with `what` and the error.
pub fn ok<T>(r: Result<T, StoreError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected store error: {e}"))
}

/// Creates an instance, expecting [`CreateOutcome::Created`].
pub async fn create<S: Store>(store: &S, t: Transition) {
    let id = t.instance.id;
    let out = ok(store.create_instance(t).await, "create_instance");
    assert_eq!(
        out,
        CreateOutcome::Created(id),
        "create_instance of a new id"
    );
}

/// Applies `f` to instance `id` through [`Store::update_instance`].
///
/// # Errors
///
/// Whatever [`Store::update_instance`] returns, unchanged (the checks assert on it).
pub async fn update<S, F>(store: &S, id: InstanceId, f: F) -> Result<Transition, StoreError>
where
    S: Store,
    F: FnOnce(&InstanceSnapshot) -> Transition + Send + 'static,
{
    store
        .update_instance(id, Box::new(move |snap| Ok(f(snap))))
        .await
}

/// Claims as `owner` for `handlers`, panicking on a store error.
pub async fn claim<S: Store>(
    store: &S,
    owner: &str,
    handlers: &[&str],
    limit: usize,
    now: Timestamp,
) -> Vec<ClaimedItem> {
    ok(
        store.claim(&request(owner, handlers, limit, now)).await,
        "claim",
    )
}

/// A claim request.
#[must_use]
pub fn request(owner: &str, handlers: &[&str], limit: usize, now: Timestamp) -> ClaimRequest {
    ClaimRequest {
        owner: Arc::from(owner),
        handlers: handlers.iter().map(|h| Arc::from(*h)).collect(),
        limit,
        now,
    }
}

/// Loads a snapshot that must exist.
pub async fn snapshot<S: Store>(store: &S, id: InstanceId) -> InstanceSnapshot {
    ok(store.load_instance(id).await, "load_instance")
        .unwrap_or_else(|| panic!("instance {id} should exist"))
}

/// Everything a store shows about one instance, plus the store-wide counters, in a
/// comparable form (steps sorted by name, queue by key).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// `load_instance` (steps sorted by name, DLQ by id).
    pub snapshot: Option<InstanceSnapshot>,
    /// `get_instance`.
    pub record: Option<InstanceRecord>,
    /// `list_steps`.
    pub steps: Vec<StepRun>,
    /// `list_queue`, sorted by key.
    pub queue: Vec<QueueItem>,
    /// `list_events`.
    pub events: Vec<crate::model::Event>,
    /// `list_dlq` of the instance.
    pub dlq: Vec<crate::model::DlqRecord>,
    /// `stats`.
    pub stats: StoreStats,
}

/// Observes instance `id`.
pub async fn observe<S: Store>(store: &S, id: InstanceId) -> Observation {
    let mut snapshot = ok(store.load_instance(id).await, "load_instance");
    if let Some(s) = &mut snapshot {
        s.steps.sort_by(|a, b| a.step.cmp(&b.step));
        s.dlq.sort_by_key(|r| r.id);
    }
    let mut queue = ok(store.list_queue(id).await, "list_queue");
    queue.sort_by(|a, b| a.key.cmp(&b.key));
    let dlq = ok(
        store
            .list_dlq(&DlqQuery {
                instance_id: Some(id),
                ..DlqQuery::default()
            })
            .await,
        "list_dlq",
    )
    .items;
    Observation {
        snapshot,
        record: ok(store.get_instance(id).await, "get_instance"),
        steps: ok(store.list_steps(id).await, "list_steps"),
        queue,
        events: ok(store.list_events(id, None, 0).await, "list_events"),
        dlq,
        stats: ok(store.stats().await, "stats"),
    }
}

/// Asserts `r` is a [`StoreError::Conflict`].
pub fn assert_conflict<T: std::fmt::Debug>(r: &Result<T, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::Conflict(_))),
        "{what}: expected StoreError::Conflict, got {r:?}"
    );
}

/// Asserts `r` is a [`StoreError::StaleLease`].
pub fn assert_stale<T: std::fmt::Debug>(r: &Result<T, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::StaleLease { .. })),
        "{what}: expected StoreError::StaleLease, got {r:?}"
    );
}

/// Instance counts of `stats` as a sorted list without zero entries.
#[must_use]
pub fn status_counts(stats: &StoreStats) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = stats
        .instances_by_status
        .iter()
        .filter(|(_, n)| *n > 0)
        .cloned()
        .collect();
    v.sort();
    v
}

/// Creates a bare instance of `workflow` in `status` with `updated_at = now` and no steps.
pub async fn create_bare<S: Store>(
    store: &S,
    id: InstanceId,
    workflow: &WorkflowId,
    status: InstanceStatus,
    now: Timestamp,
) {
    let mut t = start(id, now, &[]);
    t.instance = instance(id, workflow, status, now);
    create(store, t).await;
}
