//! The engine's metrics: names, meanings, and the recording hooks.
//!
//! The runtime records through the [`metrics`](https://docs.rs/metrics) facade (0.24) and
//! ships no exporter: a binary installs a recorder (floxyd renders Prometheus text with
//! `metrics-exporter-prometheus`) and calls [`describe`] once to register the descriptions
//! and units below. Without a recorder every recording is a no-op.
//!
//! Labels are bounded: `workflow` (the definition id, `"<name>-v<version>"`), `step` (a step
//! name of that definition), `kind`, `status`, `outcome`. Never an instance id, an error
//! message or anything else that grows with traffic.
//!
//! Counters and histograms are recorded by the process that did the work (sum them over
//! processes); the store gauges (`floxy_queue_*`, `floxy_instances`, `floxy_dlq_records`)
//! describe the whole store and are sampled by every process that runs workers, every
//! [`DEFAULT_SAMPLE_INTERVAL_MS`] by default ([`crate::EngineBuilder::metrics_sample_interval_ms`];
//! aggregate them with `max`, not `sum`). On `PostgreSQL` one sample counts the instance,
//! queue and DLQ tables (`Store::stats`) and reads the next due item (`Store::next_due`).
//!
//! | Name | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `floxy_instances_started_total` | counter | `workflow` | Instances created (the start's commit). |
//! | `floxy_instances_ended_total` | counter | `workflow`, `status` | Instances that reached a terminal status: `completed`, `failed`, `cancelled`, `aborted`. |
//! | `floxy_instance_duration_seconds` | histogram | `workflow`, `status` | Creation to terminal status, by the engine's clock (millisecond resolution). |
//! | `floxy_step_attempts_total` | counter | `workflow`, `step`, `kind`, `outcome` | Handler calls of forward steps (`kind="execute"`) and compensations (`kind="compensate"`) by how the call ended: `completed`, `failed` (the handler returned an error, or its output was too large), `timeout`, `panicked`, `cancelled` (returned an error after its cancellation token fired), `lease_lost` (abandoned: the heartbeat lost the lease), `abandoned` (hard shutdown), `no_handler` (no handler of that name is registered here). Whether a failure is retried is counted by `floxy_step_retries_total`. |
//! | `floxy_step_duration_seconds` | histogram | `workflow`, `step`, `kind` | Wall time of one handler call that ended (every outcome but `lease_lost`, `abandoned`, `no_handler`). |
//! | `floxy_step_retries_total` | counter | `workflow`, `step`, `kind` | Failed attempts that get another attempt (`step_retry` and `compensation_retry` events), lost leases included. |
//! | `floxy_steps_failed_total` | counter | `workflow`, `step` | Forward steps that failed finally (`step_failed` events): each starts a rollback, a DLQ parking or a local branch rollback. |
//! | `floxy_rollbacks_total` | counter | `workflow` | Rollbacks started (`rollback_started` events). |
//! | `floxy_compensations_total` | counter | `workflow`, `step`, `outcome` | Compensations that ended: `completed`, `failed` (its retry budget exhausted: the step is `compensation_failed`, a DLQ record is written), `no_handler` (the step has no `on_failure` and is marked rolled back without a call). |
//! | `floxy_rollback_depth` | histogram | `workflow`, `status` | Compensation calls started by the rollbacks of an instance, recorded when it ends `failed` or `cancelled`. |
//! | `floxy_lease_expiries_total` | counter | `workflow`, `step`, `kind` | Leases found expired by a later claim (`lease_expired` events: a worker crashed or hung); each counts as a failed attempt. |
//! | `floxy_stale_results_dropped_total` | counter | `kind`, `outcome` | Results this process dropped because the lease was no longer its own: `stale_lease` (the commit was refused for a stale fencing token), `lease_lost` (the heartbeat lost the lease before the commit). |
//! | `floxy_dlq_records_written_total` | counter | `workflow`, `step`, `kind` | DLQ records written: `kind="execute"` (a final failure in DLQ mode), `kind="compensate"` (a compensation failed finally). |
//! | `floxy_dlq_requeued_total` | counter | `workflow` | DLQ records requeued (`dlq_requeued` events). |
//! | `floxy_claims_total` | counter | `outcome` | Claims by result: `items` (leased at least one item), `empty`, `error` (failed after the store retries). Eager leases (the next step of a chain leased in the commit of the previous one, [`crate::EngineBuilder::eager_claims`]) are not claims. |
//! | `floxy_claim_latency_seconds` | histogram | — | Duration of a claim that returned, including store retries. |
//! | `floxy_claim_batch_size` | histogram | — | Items leased by a claim that leased any. |
//! | `floxy_commit_latency_seconds` | histogram | `outcome` | Duration of committing a worker's result (the transition, including store retries): `committed`, `stale_lease`, `rejected` (refused by the state machine, or the instance is gone), `error`. |
//! | `floxy_handlers_in_flight` | gauge | — | Handler calls running in this process now. |
//! | `floxy_heartbeat_failures_total` | counter | — | Heartbeat store calls that failed (the leases are retried sooner; repeated failures let them expire). |
//! | `floxy_queue_depth` | gauge | `status` | Queue items in the store: `ready` (not leased, due now or scheduled later, e.g. a retry's backoff), `leased`. Sampled. |
//! | `floxy_queue_oldest_pending_age_seconds` | gauge | — | How long the longest-waiting claimable item (its run-at time passed, or its lease expired) whose handler this process runs has waited; 0 when none is overdue. Sampled. |
//! | `floxy_instances` | gauge | `status` | Instances in the store per status (every status, zeros included). Sampled. |
//! | `floxy_dlq_records` | gauge | — | DLQ records in the store. Sampled. |
//! | `floxy_metrics_sample_failures_total` | counter | — | Samples of the store gauges that failed (the gauges keep their last value). |
//! | `floxy_store_clock_offset_seconds` | gauge | — | Offset of the store's clock from this process's clock source (store minus own; positive: this process's clock runs behind), as last measured ([`crate::Engine::sync_clock`]). The engine adds it to its clock, so every time it hands the store is in the store's time; above 1 s a warning is logged. Recorded only with a store that has a clock (PostgreSQL). |
//!
//! The names are the `pub const`s of this module; [`METRICS`] lists each with its type,
//! labels, unit, description and suggested histogram buckets, for exporters, dashboards and
//! tests. The repository's `deploy/` folder has Prometheus alert rules and a Grafana
//! dashboard over these names.

use crate::engine::{Engine, Inner};
use crate::error::EngineError;
use floxy_core::machine::WorkOutcome;
use floxy_core::model::{
    EventKind, InstanceStatus, QueueItem, StepName, Timestamp, Transition, WorkKind, WorkflowId,
};
use floxy_core::store::{ClaimedItem, StoreError};
use metrics::{SharedString, Unit, counter, gauge, histogram};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Instances created. Labels: `workflow`.
pub const INSTANCES_STARTED: &str = "floxy_instances_started_total";
/// Instances that reached a terminal status. Labels: `workflow`, `status`.
pub const INSTANCES_ENDED: &str = "floxy_instances_ended_total";
/// Creation to terminal status, seconds. Labels: `workflow`, `status`.
pub const INSTANCE_DURATION: &str = "floxy_instance_duration_seconds";
/// Handler calls by outcome. Labels: `workflow`, `step`, `kind`, `outcome`.
pub const STEP_ATTEMPTS: &str = "floxy_step_attempts_total";
/// Wall time of one handler call, seconds. Labels: `workflow`, `step`, `kind`.
pub const STEP_DURATION: &str = "floxy_step_duration_seconds";
/// Failed attempts that get another attempt. Labels: `workflow`, `step`, `kind`.
pub const STEP_RETRIES: &str = "floxy_step_retries_total";
/// Forward steps that failed finally. Labels: `workflow`, `step`.
pub const STEPS_FAILED: &str = "floxy_steps_failed_total";
/// Rollbacks started. Labels: `workflow`.
pub const ROLLBACKS: &str = "floxy_rollbacks_total";
/// Compensations that ended, by outcome. Labels: `workflow`, `step`, `outcome`.
pub const COMPENSATIONS: &str = "floxy_compensations_total";
/// Compensation calls per rolled-back instance. Labels: `workflow`, `status`.
pub const ROLLBACK_DEPTH: &str = "floxy_rollback_depth";
/// Expired leases reported by claims. Labels: `workflow`, `step`, `kind`.
pub const LEASE_EXPIRIES: &str = "floxy_lease_expiries_total";
/// Results dropped for a lease that was no longer held. Labels: `kind`, `outcome`.
pub const STALE_RESULTS_DROPPED: &str = "floxy_stale_results_dropped_total";
/// DLQ records written. Labels: `workflow`, `step`, `kind`.
pub const DLQ_RECORDS_WRITTEN: &str = "floxy_dlq_records_written_total";
/// DLQ records requeued. Labels: `workflow`.
pub const DLQ_REQUEUED: &str = "floxy_dlq_requeued_total";
/// Claims by result. Labels: `outcome`.
pub const CLAIMS: &str = "floxy_claims_total";
/// Duration of a claim, seconds.
pub const CLAIM_LATENCY: &str = "floxy_claim_latency_seconds";
/// Items leased by a non-empty claim.
pub const CLAIM_BATCH_SIZE: &str = "floxy_claim_batch_size";
/// Duration of committing a worker's result, seconds. Labels: `outcome`.
pub const COMMIT_LATENCY: &str = "floxy_commit_latency_seconds";
/// Handler calls running in this process.
pub const HANDLERS_IN_FLIGHT: &str = "floxy_handlers_in_flight";
/// Failed heartbeat store calls.
pub const HEARTBEAT_FAILURES: &str = "floxy_heartbeat_failures_total";
/// Queue items in the store. Labels: `status` (`ready`, `leased`).
pub const QUEUE_DEPTH: &str = "floxy_queue_depth";
/// Wait of the longest-waiting claimable item, seconds.
pub const QUEUE_OLDEST_PENDING_AGE: &str = "floxy_queue_oldest_pending_age_seconds";
/// Instances in the store per status. Labels: `status`.
pub const INSTANCES: &str = "floxy_instances";
/// DLQ records in the store.
pub const DLQ_RECORDS: &str = "floxy_dlq_records";
/// Failed samples of the store gauges.
pub const SAMPLE_FAILURES: &str = "floxy_metrics_sample_failures_total";
/// Measured offset of the store's clock from this process's clock source, seconds.
pub const STORE_CLOCK_OFFSET: &str = "floxy_store_clock_offset_seconds";

/// Default period of the store-gauge sampler that runs with the workers.
pub const DEFAULT_SAMPLE_INTERVAL_MS: u64 = 5_000;

/// Suggested buckets (seconds) for the duration histograms: 1 ms to 1 h.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];
/// Suggested buckets for [`CLAIM_BATCH_SIZE`] (up to [`floxy_core::store::MAX_CLAIM_BATCH`]).
pub const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Suggested buckets for [`ROLLBACK_DEPTH`].
pub const ROLLBACK_DEPTH_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 50.0];

/// Type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricKind {
    /// Monotonic count.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Distribution of observed values.
    Histogram,
}

impl MetricKind {
    /// `counter`, `gauge` or `histogram`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One metric the engine records.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct MetricDef {
    /// Name (one of this module's constants).
    pub name: &'static str,
    /// Type.
    pub kind: MetricKind,
    /// Label names it is recorded with.
    pub labels: &'static [&'static str],
    /// Unit, if any.
    pub unit: Option<Unit>,
    /// Suggested histogram buckets (histograms only).
    pub buckets: Option<&'static [f64]>,
    /// One-line meaning (the table above has the details).
    pub description: &'static str,
}

const fn def(
    name: &'static str,
    kind: MetricKind,
    labels: &'static [&'static str],
    unit: Option<Unit>,
    description: &'static str,
) -> MetricDef {
    let buckets = match (kind, unit) {
        (MetricKind::Histogram, Some(Unit::Seconds)) => Some(DURATION_BUCKETS),
        _ => None,
    };
    MetricDef {
        name,
        kind,
        labels,
        unit,
        buckets,
        description,
    }
}

const fn with_buckets(mut d: MetricDef, buckets: &'static [f64]) -> MetricDef {
    d.buckets = Some(buckets);
    d
}

const C: MetricKind = MetricKind::Counter;
const G: MetricKind = MetricKind::Gauge;
const H: MetricKind = MetricKind::Histogram;
const SECONDS: Option<Unit> = Some(Unit::Seconds);

/// Every metric the engine records, in the order of the table above.
pub const METRICS: &[MetricDef] = &[
    def(
        INSTANCES_STARTED,
        C,
        &["workflow"],
        None,
        "Instances created.",
    ),
    def(
        INSTANCES_ENDED,
        C,
        &["workflow", "status"],
        None,
        "Instances that reached a terminal status.",
    ),
    def(
        INSTANCE_DURATION,
        H,
        &["workflow", "status"],
        SECONDS,
        "Instance creation to terminal status.",
    ),
    def(
        STEP_ATTEMPTS,
        C,
        &["workflow", "step", "kind", "outcome"],
        None,
        "Handler calls by how they ended.",
    ),
    def(
        STEP_DURATION,
        H,
        &["workflow", "step", "kind"],
        SECONDS,
        "Wall time of one handler call.",
    ),
    def(
        STEP_RETRIES,
        C,
        &["workflow", "step", "kind"],
        None,
        "Failed attempts that get another attempt.",
    ),
    def(
        STEPS_FAILED,
        C,
        &["workflow", "step"],
        None,
        "Forward steps that failed finally.",
    ),
    def(ROLLBACKS, C, &["workflow"], None, "Rollbacks started."),
    def(
        COMPENSATIONS,
        C,
        &["workflow", "step", "outcome"],
        None,
        "Compensations that ended, by outcome.",
    ),
    with_buckets(
        def(
            ROLLBACK_DEPTH,
            H,
            &["workflow", "status"],
            None,
            "Compensation calls started by the rollbacks of an instance that ended failed or cancelled.",
        ),
        ROLLBACK_DEPTH_BUCKETS,
    ),
    def(
        LEASE_EXPIRIES,
        C,
        &["workflow", "step", "kind"],
        None,
        "Leases found expired (crashed or hung worker); each is a failed attempt.",
    ),
    def(
        STALE_RESULTS_DROPPED,
        C,
        &["kind", "outcome"],
        None,
        "Results dropped because the lease was no longer held.",
    ),
    def(
        DLQ_RECORDS_WRITTEN,
        C,
        &["workflow", "step", "kind"],
        None,
        "DLQ records written.",
    ),
    def(
        DLQ_REQUEUED,
        C,
        &["workflow"],
        None,
        "DLQ records requeued.",
    ),
    def(CLAIMS, C, &["outcome"], None, "Claims by result."),
    def(
        CLAIM_LATENCY,
        H,
        &[],
        SECONDS,
        "Duration of a claim, store retries included.",
    ),
    with_buckets(
        def(
            CLAIM_BATCH_SIZE,
            H,
            &[],
            Some(Unit::Count),
            "Items leased by a claim that leased any.",
        ),
        BATCH_SIZE_BUCKETS,
    ),
    def(
        COMMIT_LATENCY,
        H,
        &["outcome"],
        SECONDS,
        "Duration of committing a worker's result, store retries included.",
    ),
    def(
        HANDLERS_IN_FLIGHT,
        G,
        &[],
        Some(Unit::Count),
        "Handler calls running in this process.",
    ),
    def(
        HEARTBEAT_FAILURES,
        C,
        &[],
        None,
        "Heartbeat store calls that failed.",
    ),
    def(
        QUEUE_DEPTH,
        G,
        &["status"],
        Some(Unit::Count),
        "Queue items in the store (ready or leased), sampled.",
    ),
    def(
        QUEUE_OLDEST_PENDING_AGE,
        G,
        &[],
        SECONDS,
        "Wait of the longest-waiting claimable item, sampled.",
    ),
    def(
        INSTANCES,
        G,
        &["status"],
        Some(Unit::Count),
        "Instances in the store per status, sampled.",
    ),
    def(
        DLQ_RECORDS,
        G,
        &[],
        Some(Unit::Count),
        "DLQ records in the store, sampled.",
    ),
    def(
        SAMPLE_FAILURES,
        C,
        &[],
        None,
        "Failed samples of the store gauges.",
    ),
    def(
        STORE_CLOCK_OFFSET,
        G,
        &[],
        SECONDS,
        "Measured offset of the store's clock from this process's clock (store minus own).",
    ),
];

/// The definition of the metric `name`, if the engine records it.
#[must_use]
pub fn find(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|m| m.name == name)
}

/// Registers the description and unit of every metric in [`METRICS`] with the installed
/// recorder (call it once, after installing the recorder).
pub fn describe() {
    for m in METRICS {
        match (m.kind, m.unit) {
            (MetricKind::Counter, Some(u)) => metrics::describe_counter!(m.name, u, m.description),
            (MetricKind::Counter, None) => metrics::describe_counter!(m.name, m.description),
            (MetricKind::Gauge, Some(u)) => metrics::describe_gauge!(m.name, u, m.description),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(m.name, m.description),
            (MetricKind::Histogram, Some(u)) => {
                metrics::describe_histogram!(m.name, u, m.description);
            }
            (MetricKind::Histogram, None) => metrics::describe_histogram!(m.name, m.description),
        }
    }
}

// ----- recording hooks (crate-internal) -----------------------------------------------------

// Label values of `outcome`.
pub(crate) const COMPLETED: &str = "completed";
pub(crate) const FAILED: &str = "failed";
pub(crate) const TIMEOUT: &str = "timeout";
pub(crate) const PANICKED: &str = "panicked";
pub(crate) const CANCELLED: &str = "cancelled";
pub(crate) const LEASE_LOST: &str = "lease_lost";
pub(crate) const ABANDONED: &str = "abandoned";
pub(crate) const NO_HANDLER: &str = "no_handler";
pub(crate) const STALE_LEASE: &str = "stale_lease";
pub(crate) const COMMITTED: &str = "committed";
pub(crate) const REJECTED: &str = "rejected";
pub(crate) const ERROR: &str = "error";

/// A label value shared with the definition (a reference count, no copy).
fn wf(id: &WorkflowId) -> SharedString {
    SharedString::from(Arc::clone(&id.0))
}

fn step(name: &StepName) -> SharedString {
    SharedString::from(Arc::clone(name))
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn as_f64(n: u64) -> f64 {
    n as f64
}

fn ms_between(from: Timestamp, to: Timestamp) -> f64 {
    let ms = to.0.saturating_sub(from.0).max(0);
    as_f64(u64::try_from(ms).unwrap_or(0)) / 1_000.0
}

/// Records the counters a committed transition implies (its events and DLQ writes). Called
/// once per local commit.
pub(crate) fn transition(t: &Transition) {
    let inst = &t.instance;
    for e in &t.events {
        match e.kind {
            EventKind::WorkflowStarted => {
                counter!(INSTANCES_STARTED, "workflow" => wf(&inst.workflow_id)).increment(1);
            }
            EventKind::WorkflowCompleted
            | EventKind::WorkflowFailed
            | EventKind::WorkflowCancelled
            | EventKind::WorkflowAborted => ended(t, e.kind),
            EventKind::RollbackStarted => {
                counter!(ROLLBACKS, "workflow" => wf(&inst.workflow_id)).increment(1);
            }
            EventKind::StepFailed => {
                if let Some(s) = &e.step {
                    counter!(STEPS_FAILED, "workflow" => wf(&inst.workflow_id), "step" => step(s))
                        .increment(1);
                }
            }
            EventKind::StepRetry | EventKind::CompensationRetry => {
                let kind = if e.kind == EventKind::StepRetry {
                    WorkKind::Execute
                } else {
                    WorkKind::Compensate
                };
                if let Some(s) = &e.step {
                    counter!(STEP_RETRIES, "workflow" => wf(&inst.workflow_id), "step" => step(s),
                        "kind" => kind.as_str())
                    .increment(1);
                }
            }
            EventKind::CompensationCompleted
            | EventKind::CompensationFailed
            | EventKind::StepRolledBack => {
                let outcome = match e.kind {
                    EventKind::CompensationCompleted => COMPLETED,
                    EventKind::CompensationFailed => FAILED,
                    _ => NO_HANDLER,
                };
                if let Some(s) = &e.step {
                    counter!(COMPENSATIONS, "workflow" => wf(&inst.workflow_id), "step" => step(s),
                        "outcome" => outcome)
                    .increment(1);
                }
            }
            EventKind::LeaseExpired => {
                let kind = e
                    .detail
                    .as_ref()
                    .and_then(|d| d.value().get("kind").and_then(|k| k.as_str()))
                    .and_then(WorkKind::parse)
                    .unwrap_or(WorkKind::Execute);
                if let Some(s) = &e.step {
                    counter!(LEASE_EXPIRIES, "workflow" => wf(&inst.workflow_id), "step" => step(s),
                        "kind" => kind.as_str())
                    .increment(1);
                }
            }
            EventKind::DlqRequeued => {
                counter!(DLQ_REQUEUED, "workflow" => wf(&inst.workflow_id)).increment(1);
            }
            _ => {}
        }
    }
    for d in &t.dlq_insert {
        counter!(DLQ_RECORDS_WRITTEN, "workflow" => wf(&d.workflow_id), "step" => step(&d.step),
            "kind" => d.kind.as_str())
        .increment(1);
    }
}

fn ended(t: &Transition, kind: EventKind) {
    let status = match kind {
        EventKind::WorkflowCompleted => InstanceStatus::Completed,
        EventKind::WorkflowFailed => InstanceStatus::Failed,
        EventKind::WorkflowCancelled => InstanceStatus::Cancelled,
        _ => InstanceStatus::Aborted,
    };
    let inst = &t.instance;
    let status = status.as_str();
    counter!(INSTANCES_ENDED, "workflow" => wf(&inst.workflow_id), "status" => status).increment(1);
    histogram!(INSTANCE_DURATION, "workflow" => wf(&inst.workflow_id), "status" => status)
        .record(ms_between(inst.created_at, t.now));
    if matches!(
        kind,
        EventKind::WorkflowFailed | EventKind::WorkflowCancelled
    ) {
        histogram!(ROLLBACK_DEPTH, "workflow" => wf(&inst.workflow_id), "status" => status)
            .record(f64::from(inst.rollback_depth));
    }
}

/// A handler call in progress: counted in [`HANDLERS_IN_FLIGHT`] until dropped.
pub(crate) struct HandlerCall {
    started: Instant,
}

impl HandlerCall {
    /// Starts timing a handler call.
    pub(crate) fn start() -> Self {
        gauge!(HANDLERS_IN_FLIGHT).increment(1.0);
        Self {
            started: Instant::now(),
        }
    }

    /// Records the end of the call: its outcome and (for a call that ended) its duration.
    pub(crate) fn end(self, item: &QueueItem, outcome: &'static str) {
        let kind = item.key.kind.as_str();
        counter!(STEP_ATTEMPTS, "workflow" => wf(&item.workflow_id), "step" => step(&item.key.step),
            "kind" => kind, "outcome" => outcome)
        .increment(1);
        if !matches!(outcome, LEASE_LOST | ABANDONED) {
            histogram!(STEP_DURATION, "workflow" => wf(&item.workflow_id),
                "step" => step(&item.key.step), "kind" => kind)
            .record(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for HandlerCall {
    fn drop(&mut self) {
        gauge!(HANDLERS_IN_FLIGHT).decrement(1.0);
    }
}

/// The label of a call that ended as `label` once its result became `outcome` (an output
/// too large for the workflow turns a completed call into a failure).
pub(crate) fn settle(label: &'static str, outcome: &WorkOutcome) -> &'static str {
    match outcome {
        WorkOutcome::Failed { .. } if label == COMPLETED => FAILED,
        _ => label,
    }
}

/// Records an attempt that found no handler (no call, no duration).
pub(crate) fn no_handler(item: &QueueItem) {
    counter!(STEP_ATTEMPTS, "workflow" => wf(&item.workflow_id), "step" => step(&item.key.step),
        "kind" => item.key.kind.as_str(), "outcome" => NO_HANDLER)
    .increment(1);
}

/// Records a claim that returned (`started`: when it was sent).
pub(crate) fn claim(started: Instant, result: &Result<Vec<ClaimedItem>, StoreError>) {
    let outcome = match result {
        Ok(items) if items.is_empty() => "empty",
        Ok(items) => {
            histogram!(CLAIM_BATCH_SIZE).record(as_f64(items.len() as u64));
            "items"
        }
        Err(_) => ERROR,
    };
    if result.is_ok() {
        histogram!(CLAIM_LATENCY).record(started.elapsed().as_secs_f64());
    }
    counter!(CLAIMS, "outcome" => outcome).increment(1);
}

/// Records the commit of a worker's result (`started`: when it was sent).
pub(crate) fn commit<T>(started: Instant, result: &Result<T, StoreError>) {
    let outcome = match result {
        Ok(_) => COMMITTED,
        Err(StoreError::StaleLease { .. }) => STALE_LEASE,
        Err(StoreError::Rejected(_) | StoreError::NotFound(_)) => REJECTED,
        Err(_) => ERROR,
    };
    histogram!(COMMIT_LATENCY, "outcome" => outcome).record(started.elapsed().as_secs_f64());
}

/// Records a result dropped for a lease no longer held (`outcome`: [`STALE_LEASE`] or
/// [`LEASE_LOST`]).
pub(crate) fn stale_result(kind: WorkKind, outcome: &'static str) {
    counter!(STALE_RESULTS_DROPPED, "kind" => kind.as_str(), "outcome" => outcome).increment(1);
}

/// Records a failed heartbeat store call.
pub(crate) fn heartbeat_failed() {
    counter!(HEARTBEAT_FAILURES).increment(1);
}

/// A store clock offset was measured and put in use.
#[allow(clippy::cast_precision_loss)] // offsets are far below 2^52 ms
pub(crate) fn store_clock_offset(offset_ms: i64) {
    gauge!(STORE_CLOCK_OFFSET).set(offset_ms as f64 / 1_000.0);
}

// ----- the store-gauge sampler --------------------------------------------------------------

impl Engine {
    /// Samples the store gauges once ([`QUEUE_DEPTH`], [`QUEUE_OLDEST_PENDING_AGE`],
    /// [`INSTANCES`], [`DLQ_RECORDS`]) from [`floxy_core::store::Store::stats`] and
    /// [`floxy_core::store::Store::next_due`]. The worker pool does this every
    /// [`DEFAULT_SAMPLE_INTERVAL_MS`] (see
    /// [`crate::EngineBuilder::metrics_sample_interval_ms`]); an exporter may also call it
    /// just before rendering.
    ///
    /// # Errors
    /// [`EngineError::Store`]; the gauges keep their previous values.
    pub async fn sample_metrics(&self) -> Result<(), EngineError> {
        sample(&self.inner).await.map_err(EngineError::from)
    }
}

async fn sample(inner: &Inner) -> Result<(), StoreError> {
    let stats = inner.store.stats().await?;
    let handlers = inner.handlers.claim_filter();
    let due = inner.store.next_due(&handlers).await?;
    gauge!(QUEUE_DEPTH, "status" => "ready").set(as_f64(stats.queue_ready));
    gauge!(QUEUE_DEPTH, "status" => "leased").set(as_f64(stats.queue_leased));
    gauge!(DLQ_RECORDS).set(as_f64(stats.dlq));
    for s in InstanceStatus::ALL {
        let n = stats
            .instances_by_status
            .iter()
            .find(|(name, _)| name == s.as_str())
            .map_or(0, |(_, n)| *n);
        gauge!(INSTANCES, "status" => s.as_str()).set(as_f64(n));
    }
    let now = inner.config.clock.now();
    let age = due
        .filter(|at| *at < now)
        .map_or(0.0, |at| ms_between(at, now));
    gauge!(QUEUE_OLDEST_PENDING_AGE).set(age);
    Ok(())
}

/// Spawns the sampler of the store gauges: one sample at once, then one every `interval_ms`
/// until the engine stops (or is dropped: the task holds no strong reference in between).
pub(crate) fn spawn_sampler(engine: &Engine, interval_ms: u64) {
    if interval_ms == 0 {
        return;
    }
    let weak: Weak<Inner> = Arc::downgrade(&engine.inner);
    let stop = engine.inner.lifecycle.stopping.clone();
    let period = Duration::from_millis(interval_ms);
    tokio::spawn(async move {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            if let Err(e) = sample(&inner).await {
                counter!(SAMPLE_FAILURES).increment(1);
                tracing::debug!(error = %e, "sampling the store gauges failed");
            }
            drop(inner);
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
        }
    });
}
