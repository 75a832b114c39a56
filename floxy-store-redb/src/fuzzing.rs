//! (feature `fuzzing`) The decoders the store applies to the bytes it reads from its file,
//! for fuzz tests (`tests/fuzz_decode.rs`): a damaged or hostile file must give
//! [`StoreError::Corrupt`], never a panic, a hang or unbounded memory.
//!
//! Not a stable API: it exists so that the decoders can be fed arbitrary bytes without
//! building a redb file around each input.

use crate::layout::{self, Counters};
use crate::row;
use floxy_core::model::{InstanceId, StepName};
use floxy_core::store::StoreError;

/// Which record the bytes are the value of (one per value-carrying table of the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `floxy_instances`: an instance record.
    Instance,
    /// `floxy_steps`: a step row, decoded whole (run, queue items, step marks).
    StepRow,
    /// `floxy_steps`: a step row's marks alone (what `list_events` decodes).
    StepMarks,
    /// `floxy_events`: a row of events.
    Events,
    /// `floxy_dlq`: a DLQ record.
    Dlq,
    /// `floxy_definitions`: a workflow definition (JSON).
    Definition,
    /// `floxy_meta` `"counters"`: the store-wide counters.
    Counters,
}

impl Record {
    /// Every record kind.
    pub const ALL: [Self; 7] = [
        Self::Instance,
        Self::StepRow,
        Self::StepMarks,
        Self::Events,
        Self::Dlq,
        Self::Definition,
        Self::Counters,
    ];
}

/// Decodes `bytes` as the value of a `record` row, as the store does when it reads one.
/// The step and event rows are decoded for instance `id` and step `step` (their keys).
///
/// # Errors
/// [`StoreError::Corrupt`] when the bytes are not such a record.
pub fn decode(
    record: Record,
    id: InstanceId,
    step: &StepName,
    bytes: &[u8],
) -> Result<(), StoreError> {
    match record {
        Record::Instance => layout::decode_instance(bytes).map(drop),
        Record::StepRow => row::decode_step_row(id, step, bytes).map(drop),
        Record::StepMarks => row::decode_step_marks(bytes).map(drop),
        Record::Events => row::decode_events(id, bytes).map(drop),
        Record::Dlq => layout::decode_dlq(bytes).map(drop),
        Record::Definition => layout::decode_definition(bytes).map(drop),
        Record::Counters => layout::decode::<Counters>("counters", bytes).map(drop),
    }
}
