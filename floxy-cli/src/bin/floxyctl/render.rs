//! Instances, steps, events and DLQ records for people, and their JSON documents.

use floxy::{DlqRecord, Event, InstanceRecord, StepRun, Timestamp};
use floxy_cli::output::{Table, format_ms, format_time, short_json};
use serde::Serialize;

/// An instance with its steps (the final report of `run`, `--output json`).
#[derive(Debug, Serialize)]
pub(crate) struct InstanceReport<'a> {
    #[serde(flatten)]
    pub(crate) instance: &'a InstanceRecord,
    pub(crate) steps: &'a [StepRun],
}

/// The full picture of `show --output json`.
#[derive(Debug, Serialize)]
pub(crate) struct ShowReport<'a> {
    pub(crate) instance: &'a InstanceRecord,
    pub(crate) steps: &'a [StepRun],
    pub(crate) events: &'a [Event],
    pub(crate) dlq: &'a [DlqRecord],
}

/// The instance header: id, workflow, status, output or error, times.
pub(crate) fn instance_header(rec: &InstanceRecord, now: Timestamp) -> String {
    let mut t = Table::new(["", ""]);
    t.row(["instance".to_owned(), rec.id.to_string()]);
    t.row(["workflow".to_owned(), rec.workflow_id.to_string()]);
    t.row(["status".to_owned(), rec.status.to_string()]);
    if let Some(out) = &rec.output {
        t.row(["output".to_owned(), short_json(out.value(), 200)]);
    }
    if let Some(err) = &rec.error {
        t.row(["error".to_owned(), err.clone()]);
    }
    if let Some(step) = &rec.failed_step {
        t.row(["failed step".to_owned(), step.to_string()]);
    }
    t.row(["created".to_owned(), format_time(rec.created_at)]);
    t.row(["updated".to_owned(), format_time(rec.updated_at)]);
    let end = if rec.status.is_terminal() {
        rec.updated_at
    } else {
        now
    };
    t.row(["runtime".to_owned(), format_ms(end.since(rec.created_at))]);
    // The header row of a two-column key/value table is empty: drop it.
    t.render().lines().skip(1).collect::<Vec<_>>().join("\n") + "\n"
}

/// The steps table.
pub(crate) fn steps_table(steps: &[StepRun]) -> String {
    let mut t = Table::new([
        "STEP",
        "STATUS",
        "ATTEMPTS",
        "COMPENSATIONS",
        "DURATION",
        "ERROR",
    ]);
    for s in steps {
        let duration = match (s.started_at, s.finished_at) {
            (Some(a), Some(b)) => format_ms(b.since(a)),
            _ => String::new(),
        };
        t.row([
            s.step.to_string(),
            s.status.to_string(),
            s.attempts.to_string(),
            s.compensation_attempts.to_string(),
            duration,
            s.error.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

/// The event timeline.
pub(crate) fn events_table(events: &[Event]) -> String {
    let mut t = Table::new(["SEQ", "TIME", "EVENT", "STEP", "ATTEMPT", "DETAIL"]);
    for e in events {
        t.row([
            e.seq.to_string(),
            format_time(e.at),
            e.kind.as_str().to_owned(),
            e.step.as_deref().unwrap_or("").to_owned(),
            e.attempt.map(|a| a.to_string()).unwrap_or_default(),
            e.detail
                .as_ref()
                .map(|d| short_json(d.value(), 80))
                .unwrap_or_default(),
        ]);
    }
    t.render()
}

/// A list of instances.
pub(crate) fn instances_table(items: &[InstanceRecord]) -> String {
    let mut t = Table::new(["ID", "WORKFLOW", "STATUS", "CREATED", "UPDATED", "ERROR"]);
    for r in items {
        t.row([
            r.id.to_string(),
            r.workflow_id.to_string(),
            r.status.to_string(),
            format_time(r.created_at),
            format_time(r.updated_at),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

/// DLQ records.
pub(crate) fn dlq_table(items: &[DlqRecord]) -> String {
    let mut t = Table::new([
        "ID", "INSTANCE", "WORKFLOW", "STEP", "KIND", "CREATED", "ERROR",
    ]);
    for r in items {
        t.row([
            r.id.to_string(),
            r.record.instance_id.to_string(),
            r.record.workflow_id.to_string(),
            r.record.step.to_string(),
            r.record.kind.as_str().to_owned(),
            format_time(r.created_at),
            r.record.error.clone(),
        ]);
    }
    t.render()
}
