//! The codecs of step rows and event rows: the model types minus what the row's key already
//! holds, and the step marks.
//!
//! A step row's key is `(instance id, step name)` and an event row's key starts with the
//! instance id, so the runs and items a step row holds leave out the instance id (18 bytes
//! in `MessagePack`) and the step name, and events leave out the instance id. Those rows are
//! most of what a claim or a completion writes, and the committing thread's cost grows with
//! the bytes it writes: a step row is about a quarter smaller, an event a third.
//!
//! **Step marks.** A claim that starts a run writes the step's row (the lease, the run now
//! `running`) and a `step_started` event. The event is kept in the step row the claim writes
//! anyway, as a [`StepMark`] (`[seq, at, attempt]`: kind, step, instance and detail are
//! implied), and every mark of the step stays there for good (one per attempt). Any other
//! event of a step whose row its transition writes is kept there too (a completion's
//! `step_completed`, a failure's `step_failed`), as `[seq, at, attempt, kind, detail]`: a
//! completion then writes its step row and its instance row, no event row. `list_events`
//! merges the marks of an instance's step rows with its event rows by sequence number. A row
//! without marks is encoded as `[run, items]`, one with marks as `[run, items, marks]`.
//!
//! Values stay `MessagePack` arrays (`rmp-serde`). Decoding takes the key and puts the instance
//! id and step name back. The structs list every field of the model types by name, so a new
//! field in `floxy-core` does not compile here until it has a place in the format.

use crate::layout::{StepRow, decode, encode_into};
use floxy_core::model::{
    CompensationReason, Event, EventKind, HumanDecision, InstanceId, Lease, Payload, QueueItem,
    QueueKey, StepName, StepRun, StepStatus, Timestamp, WorkKind, WorkflowId,
};
use floxy_core::store::StoreError;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::Arc;

/// A step run without its instance id and step name.
#[derive(Serialize)]
struct RunOut<'a> {
    status: StepStatus,
    attempts: u32,
    compensation_attempts: u32,
    input: &'a Payload,
    output: &'a Option<Payload>,
    error: &'a Option<String>,
    completed_seq: Option<u64>,
    compensate: Option<CompensationReason>,
    cancel_requested: bool,
    decision: &'a Option<HumanDecision>,
    created_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
}

#[derive(Deserialize)]
struct RunIn {
    status: StepStatus,
    attempts: u32,
    compensation_attempts: u32,
    input: Payload,
    output: Option<Payload>,
    error: Option<String>,
    completed_seq: Option<u64>,
    compensate: Option<CompensationReason>,
    cancel_requested: bool,
    decision: Option<HumanDecision>,
    created_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
}

/// A queue item without its instance id and step name (its kind stays).
#[derive(Serialize)]
struct ItemOut<'a> {
    kind: WorkKind,
    workflow_id: &'a WorkflowId,
    handler: &'a Arc<str>,
    run_at: Timestamp,
    priority: u8,
    order_key: i64,
    attempt: u32,
    lease_ttl_ms: u64,
    cancel_requested: bool,
    lease: &'a Option<Lease>,
}

#[derive(Deserialize)]
struct ItemIn {
    kind: WorkKind,
    workflow_id: WorkflowId,
    handler: Arc<str>,
    run_at: Timestamp,
    priority: u8,
    order_key: i64,
    attempt: u32,
    lease_ttl_ms: u64,
    cancel_requested: bool,
    lease: Option<Lease>,
}

/// An event without its instance id.
#[derive(Serialize)]
struct EventOut<'a> {
    seq: u64,
    at: Timestamp,
    kind: EventKind,
    step: &'a Option<StepName>,
    attempt: Option<u32>,
    detail: &'a Option<Payload>,
}

#[derive(Deserialize)]
struct EventIn {
    seq: u64,
    at: Timestamp,
    kind: EventKind,
    step: Option<StepName>,
    attempt: Option<u32>,
    detail: Option<Payload>,
}

fn run_out(r: &StepRun) -> RunOut<'_> {
    let StepRun {
        instance_id: _,
        step: _,
        status,
        attempts,
        compensation_attempts,
        input,
        output,
        error,
        completed_seq,
        compensate,
        cancel_requested,
        decision,
        created_at,
        started_at,
        finished_at,
    } = r;
    RunOut {
        status: *status,
        attempts: *attempts,
        compensation_attempts: *compensation_attempts,
        input,
        output,
        error,
        completed_seq: *completed_seq,
        compensate: *compensate,
        cancel_requested: *cancel_requested,
        decision,
        created_at: *created_at,
        started_at: *started_at,
        finished_at: *finished_at,
    }
}

fn run_in(id: InstanceId, step: &StepName, r: RunIn) -> StepRun {
    StepRun {
        instance_id: id,
        step: step.clone(),
        status: r.status,
        attempts: r.attempts,
        compensation_attempts: r.compensation_attempts,
        input: r.input,
        output: r.output,
        error: r.error,
        completed_seq: r.completed_seq,
        compensate: r.compensate,
        cancel_requested: r.cancel_requested,
        decision: r.decision,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
    }
}

fn item_out(i: &QueueItem) -> ItemOut<'_> {
    let QueueItem {
        key,
        workflow_id,
        handler,
        run_at,
        priority,
        order_key,
        attempt,
        lease_ttl_ms,
        cancel_requested,
        lease,
    } = i;
    ItemOut {
        kind: key.kind,
        workflow_id,
        handler,
        run_at: *run_at,
        priority: *priority,
        order_key: *order_key,
        attempt: *attempt,
        lease_ttl_ms: *lease_ttl_ms,
        cancel_requested: *cancel_requested,
        lease,
    }
}

fn item_in(id: InstanceId, step: &StepName, i: ItemIn) -> QueueItem {
    QueueItem {
        key: QueueKey {
            instance_id: id,
            step: step.clone(),
            kind: i.kind,
        },
        workflow_id: i.workflow_id,
        handler: i.handler,
        run_at: i.run_at,
        priority: i.priority,
        order_key: i.order_key,
        attempt: i.attempt,
        lease_ttl_ms: i.lease_ttl_ms,
        cancel_requested: i.cancel_requested,
        lease: i.lease,
    }
}

fn event_out(e: &Event) -> EventOut<'_> {
    let Event {
        seq,
        instance_id: _,
        at,
        kind,
        step,
        attempt,
        detail,
    } = e;
    EventOut {
        seq: *seq,
        at: *at,
        kind: *kind,
        step,
        attempt: *attempt,
        detail,
    }
}

/// A slice encoded as a sequence of `f(element)`, without collecting them first (this runs
/// for every row a batch writes).
struct Seq<'a, T, F>(&'a [T], F);

impl<'a, T, O: Serialize, F: Fn(&'a T) -> O> Serialize for Seq<'a, T, F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(&self.1))
    }
}

/// Encodes the step row of `run`, `items` (in kind order) and `marks` (the step marks, in
/// sequence order) at the end of `arena`: `[run, items]` when `marks` is empty, else
/// `[run, items, marks]`.
pub(crate) fn encode_step_row<'a>(
    arena: &mut Vec<u8>,
    run: Option<&StepRun>,
    items: &'a [&'a QueueItem],
    marks: &[StepMark],
) -> Result<Range<usize>, StoreError> {
    if marks.is_empty() {
        let row = (
            run.map(run_out),
            Seq(items, |i: &&'a QueueItem| item_out(i)),
        );
        encode_into(arena, "step row", &row)
    } else {
        let row = (
            run.map(run_out),
            Seq(items, |i: &&'a QueueItem| item_out(i)),
            marks,
        );
        encode_into(arena, "step row", &row)
    }
}

/// An event of a step kept in that step's row (the `step_started` events of claims, and
/// every event of a step whose row its transition writes): the step (the row's) and the
/// instance (the key's) are implied. A claim's `step_started` event without detail is stored
/// as `[seq, at, attempt]` (kind implied), any other as `[seq, at, attempt, kind, detail]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepMark {
    /// The event's sequence number.
    pub(crate) seq: u64,
    /// When it happened.
    pub(crate) at: Timestamp,
    /// What happened.
    pub(crate) kind: EventKind,
    /// The attempt it concerns.
    pub(crate) attempt: Option<u32>,
    /// Its detail.
    pub(crate) detail: Option<Payload>,
}

impl StepMark {
    /// The mark of `e`, an event of the step whose row keeps it.
    pub(crate) fn of(e: &Event) -> Self {
        Self {
            seq: e.seq,
            at: e.at,
            kind: e.kind,
            attempt: e.attempt,
            detail: e.detail.clone(),
        }
    }

    /// The event it stands for.
    pub(crate) fn event(&self, id: InstanceId, step: &StepName) -> Event {
        Event {
            seq: self.seq,
            instance_id: id,
            at: self.at,
            kind: self.kind,
            step: Some(step.clone()),
            attempt: self.attempt,
            detail: self.detail.clone(),
        }
    }
}

impl Serialize for StepMark {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.kind, self.attempt, &self.detail) {
            (EventKind::StepStarted, Some(attempt), None) => {
                (self.seq, self.at, attempt).serialize(s)
            }
            (kind, attempt, detail) => (self.seq, self.at, attempt, kind, detail).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for StepMark {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MarkVisitor;
        impl<'de> serde::de::Visitor<'de> for MarkVisitor {
            type Value = StepMark;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a step mark: [seq, at, attempt] or [seq, at, attempt, kind, detail]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<StepMark, A::Error> {
                use serde::de::Error;
                let seq = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let at = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let attempt = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(2, &self))?;
                let (kind, detail) = match a.next_element()? {
                    // The short form: a claim's `step_started`.
                    None => (EventKind::StepStarted, None),
                    Some(kind) => (
                        kind,
                        a.next_element()?
                            .ok_or_else(|| A::Error::invalid_length(4, &self))?,
                    ),
                };
                if a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(6, &self));
                }
                Ok(StepMark {
                    seq,
                    at,
                    kind,
                    attempt,
                    detail,
                })
            }
        }
        d.deserialize_seq(MarkVisitor)
    }
}

/// A step row as stored: two elements (no marks) or three.
#[derive(Deserialize)]
struct RowIn {
    run: Option<RunIn>,
    items: Vec<ItemIn>,
    #[serde(default)]
    marks: Vec<StepMark>,
}

/// Decodes the step row of `(id, step)`.
pub(crate) fn decode_step_row(
    id: InstanceId,
    step: &StepName,
    bytes: &[u8],
) -> Result<StepRow, StoreError> {
    let row: RowIn = decode("step row", bytes)?;
    Ok(StepRow {
        run: row.run.map(|r| run_in(id, step, r)),
        items: row
            .items
            .into_iter()
            .map(|i| item_in(id, step, i))
            .collect(),
        marks: row.marks,
    })
}

/// A step row's claim marks alone (the run and the items are skipped, not decoded).
#[derive(Deserialize)]
struct MarksIn {
    _run: serde::de::IgnoredAny,
    _items: serde::de::IgnoredAny,
    #[serde(default)]
    marks: Vec<StepMark>,
}

/// Decodes only the claim marks of a step row (all that `list_events` needs of it).
pub(crate) fn decode_step_marks(bytes: &[u8]) -> Result<Vec<StepMark>, StoreError> {
    let row: MarksIn = decode("step row", bytes)?;
    Ok(row.marks)
}

/// Encodes a row of events (all of one instance) at the end of `arena`.
pub(crate) fn encode_events(
    arena: &mut Vec<u8>,
    events: &[Event],
) -> Result<Range<usize>, StoreError> {
    encode_into(arena, "events", &Seq(events, event_out))
}

/// Decodes a row of events of instance `id`.
pub(crate) fn decode_events(id: InstanceId, bytes: &[u8]) -> Result<Vec<Event>, StoreError> {
    let row: Vec<EventIn> = decode("events", bytes)?;
    Ok(row.into_iter().map(|e| event_in(id, e)).collect())
}

fn event_in(id: InstanceId, e: EventIn) -> Event {
    Event {
        seq: e.seq,
        instance_id: id,
        at: e.at,
        kind: e.kind,
        step: e.step,
        attempt: e.attempt,
        detail: e.detail,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_the_key_put_back() {
        let id = InstanceId::from_u128(7);
        let step: StepName = Arc::from("charge");
        let mut run = StepRun::new(
            id,
            step.clone(),
            StepStatus::Running,
            Payload::new(serde_json::json!({"a": 1})),
            Timestamp(5),
        );
        run.attempts = 2;
        run.error = Some("boom".into());
        run.started_at = Some(Timestamp(6));
        let item = QueueItem {
            key: QueueKey {
                instance_id: id,
                step: step.clone(),
                kind: WorkKind::Compensate,
            },
            workflow_id: WorkflowId::new("w", 3),
            handler: Arc::from("h"),
            run_at: Timestamp(9),
            priority: 80,
            order_key: -4,
            attempt: 1,
            lease_ttl_ms: 30_000,
            cancel_requested: true,
            lease: Some(Lease {
                owner: Arc::from("w1"),
                token: floxy_core::model::FencingToken(11),
                expires_at: Timestamp(99),
            }),
        };
        let mut arena = Vec::new();
        let r = encode_step_row(&mut arena, Some(&run), &[&item], &[]).unwrap();
        assert!(decode_step_marks(&arena[r.clone()]).unwrap().is_empty());
        let back = decode_step_row(id, &Arc::from("charge"), &arena[r]).unwrap();
        assert_eq!(back.run.as_ref(), Some(&run));
        assert_eq!(back.items, vec![item.clone()]);
        assert!(back.marks.is_empty());
        let ev = Event {
            seq: 42,
            instance_id: id,
            at: Timestamp(8),
            kind: EventKind::StepRetry,
            step: Some(step),
            attempt: Some(2),
            detail: Some(Payload::new(serde_json::json!("x"))),
        };
        // A row with the marks of two claims and of a retry.
        let claim = |seq, at, attempt| StepMark {
            seq,
            at: Timestamp(at),
            kind: EventKind::StepStarted,
            attempt: Some(attempt),
            detail: None,
        };
        let marks = [claim(40, 6, 1), StepMark::of(&ev), claim(44, 10, 2)];
        let mut arena = Vec::new();
        let r = encode_step_row(&mut arena, Some(&run), &[&item], &marks).unwrap();
        assert_eq!(
            decode_step_marks(&arena[r.clone()]).unwrap(),
            marks.to_vec()
        );
        let back = decode_step_row(id, &Arc::from("charge"), &arena[r]).unwrap();
        assert_eq!(back.run.as_ref(), Some(&run));
        assert_eq!(back.items, vec![item.clone()]);
        assert_eq!(back.marks, marks.to_vec());
        assert_eq!(marks[1].event(id, &Arc::from("charge")), ev);
        // A claim's mark has the short form, `[seq, at, attempt]`; the others
        // carry their kind and detail.
        assert_eq!(
            rmp_serde::to_vec(&marks[0]).unwrap(),
            rmp_serde::to_vec(&(40_u64, Timestamp(6), 1_u32)).unwrap()
        );
        let long: (u64, Timestamp, Option<u32>, EventKind, Option<Payload>) =
            rmp_serde::from_slice(&rmp_serde::to_vec(&marks[1]).unwrap()).unwrap();
        assert_eq!(
            long,
            (
                42,
                Timestamp(8),
                Some(2),
                EventKind::StepRetry,
                ev.detail.clone()
            )
        );
        // A `step_started` with a detail or without an attempt is not a claim's: long form.
        let odd = StepMark {
            detail: None,
            attempt: None,
            ..claim(50, 11, 0)
        };
        let bytes = rmp_serde::to_vec(&odd).unwrap();
        assert_eq!(rmp_serde::from_slice::<StepMark>(&bytes).unwrap(), odd);
        // Marks of another length are refused.
        for bad in [
            rmp_serde::to_vec(&(1_u64, Timestamp(2))).unwrap(),
            rmp_serde::to_vec(&(1_u64, Timestamp(2), 3_u32, EventKind::StepRetry)).unwrap(),
            rmp_serde::to_vec(&(
                1_u64,
                Timestamp(2),
                3_u32,
                EventKind::StepRetry,
                None::<Payload>,
                7_u8,
            ))
            .unwrap(),
        ] {
            assert!(rmp_serde::from_slice::<StepMark>(&bad).is_err());
        }
        let started = marks[2].event(id, &Arc::from("charge"));
        assert_eq!(
            (started.kind, started.step.as_deref(), started.attempt),
            (EventKind::StepStarted, Some("charge"), Some(2))
        );
        assert_eq!(
            (started.seq, started.at, started.detail),
            (44, Timestamp(10), None)
        );
        let mut arena = Vec::new();
        let r = encode_events(&mut arena, std::slice::from_ref(&ev)).unwrap();
        assert_eq!(decode_events(id, &arena[r]).unwrap(), vec![ev]);
    }
}
