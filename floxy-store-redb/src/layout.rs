//! The on-disk layout (format version [`FORMAT_VERSION`]): table definitions, key
//! encodings and the record codec.
//!
//! Keys are redb tuples whose element-wise order is the order the store needs (instance ids
//! as `u128`, which orders like the UUID bytes; step names as `&str`, which orders like
//! `Arc<str>`). A step's queue items live in its step row, in
//! [`WorkKind`](floxy_core::model::WorkKind) order.
//! Values are `MessagePack` (`rmp-serde`, structs as arrays) of the `floxy-core` model types;
//! step rows and event rows leave out what their key holds (see [`crate::row`]). JSON
//! payloads are embedded as `MessagePack` values. Any change to a key, a value type or a model
//! type's serde shape is a new format version.
//!
//! The format has one version, [`FORMAT_VERSION`]; `tests/format.rs` reads a checked-in
//! file of it back, so a change that breaks it fails there.

use floxy_core::model::{
    DlqRecord, InstanceId, InstanceRecord, QueueItem, StepRun, WorkflowDefinition,
};
use floxy_core::store::StoreError;
use redb::TableDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The on-disk format this version of the crate reads and writes. A file with another
/// version is refused at open.
pub const FORMAT_VERSION: u32 = 1;

/// `meta`: `"format_version"` → `u32` (big endian), `"counters"` → [`Counters`].
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("floxy_meta");
/// `definitions`: workflow id → [`WorkflowDefinition`] (JSON).
pub(crate) const DEFINITIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("floxy_definitions");
/// `instances`: instance id → [`InstanceRecord`].
pub(crate) const INSTANCES: TableDefinition<u128, &[u8]> = TableDefinition::new("floxy_instances");
/// `steps`: (instance id, step name) → [`StepRow`]: the step's run, its queue items (leases
/// included) and its step marks, encoded by [`crate::row::encode_step_row`]. One row per
/// step, so a claim or a completion writes one row.
pub(crate) const STEPS: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("floxy_steps");
/// `live`: instance id → `()`, the instances with at least one queue item (the claim index
/// is rebuilt from their step rows at open).
pub(crate) const LIVE: TableDefinition<u128, ()> = TableDefinition::new("floxy_live");
/// `events`: (instance id, sequence of the row's first event) → the
/// [`Event`](floxy_core::model::Event)s one transition wrote, in sequence order (consecutive
/// numbers), encoded by [`crate::row::encode_events`]. The events a step row keeps
/// (step marks) are not here.
pub(crate) const EVENTS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("floxy_events");
/// `dlq`: DLQ id → [`DlqRecord`].
pub(crate) const DLQ: TableDefinition<u64, &[u8]> = TableDefinition::new("floxy_dlq");
/// `dlq_by_instance`: (instance id, DLQ id) → `()`.
pub(crate) const DLQ_BY_INSTANCE: TableDefinition<(u128, u64), ()> =
    TableDefinition::new("floxy_dlq_by_instance");
/// `idempotency`: (workflow id, key) → instance id.
pub(crate) const IDEMPOTENCY: TableDefinition<(&str, &str), u128> =
    TableDefinition::new("floxy_idempotency");
/// `terminal`: (`updated_at` ms, instance id) → `()`, the terminal instances for cleanup.
pub(crate) const TERMINAL: TableDefinition<(i64, u128), ()> =
    TableDefinition::new("floxy_terminal");

/// Meta key of the format version.
pub(crate) const META_FORMAT_VERSION: &str = "format_version";
/// Meta key of the counters.
pub(crate) const META_COUNTERS: &str = "counters";
/// Store-wide counters, persisted in `meta` by every write transaction that changes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Counters {
    /// Last fencing token issued.
    pub(crate) last_token: u64,
    /// Last event sequence number assigned.
    pub(crate) last_seq: u64,
    /// Last DLQ id assigned.
    pub(crate) last_dlq: u64,
    /// Instances per status, in `InstanceStatus::ALL` order.
    pub(crate) status_counts: Vec<u64>,
    /// DLQ records.
    pub(crate) dlq: u64,
}

/// A row of `steps`: the step run (absent when only queue items exist for the step, which
/// the store contract allows), the step's queue items in kind order, and the events the row
/// keeps (step marks; see [`crate::row`]). Rows are encoded and decoded by [`crate::row`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepRow {
    /// The step run.
    pub(crate) run: Option<StepRun>,
    /// Queue items of the step, in [`WorkKind`](floxy_core::model::WorkKind) order (at most
    /// one per kind).
    pub(crate) items: Vec<QueueItem>,
    /// The events the row keeps, in sequence order.
    pub(crate) marks: Vec<crate::row::StepMark>,
}

/// The key of an instance.
pub(crate) const fn inst_key(id: InstanceId) -> u128 {
    id.0.as_u128()
}

/// Encodes a record.
pub(crate) fn encode<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(v).map_err(|e| StoreError::Backend(format!("cannot encode {what}: {e}")))
}

/// Encodes `v` at the end of `arena` (a batch's buffer of records); returns its range.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    arena: &mut Vec<u8>,
    what: &str,
    v: &T,
) -> Result<std::ops::Range<usize>, StoreError> {
    let start = arena.len();
    if let Err(e) = rmp_serde::encode::write(arena, v) {
        arena.truncate(start);
        return Err(StoreError::Backend(format!("cannot encode {what}: {e}")));
    }
    Ok(start..arena.len())
}

/// Deepest nesting of containers a record may have when it is decoded (the record's own
/// levels and those of its JSON payloads together). Decoding recurses once per level: the
/// `rmp-serde` default (1024) overflows a 2 MiB thread stack (tokio's workers, the writer
/// thread) in a debug build, which aborts the process; a damaged or hostile file must give
/// [`StoreError::Corrupt`] instead. JSON that came through `serde_json` (the HTTP API, the
/// CLI) nests at most 128 levels.
pub(crate) const MAX_DECODE_DEPTH: usize = 256;

/// Decodes a record; a record that does not decode (or nests deeper than
/// [`MAX_DECODE_DEPTH`]) is [`StoreError::Corrupt`].
pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DECODE_DEPTH);
    T::deserialize(&mut de).map_err(|e| StoreError::Corrupt(format!("cannot decode {what}: {e}")))
}

/// Typed wrappers so call sites name what they decode.
pub(crate) fn decode_instance(b: &[u8]) -> Result<InstanceRecord, StoreError> {
    decode("instance record", b)
}
/// Decodes a DLQ record.
pub(crate) fn decode_dlq(b: &[u8]) -> Result<DlqRecord, StoreError> {
    decode("DLQ record", b)
}
/// Encodes a definition as JSON (definitions are written once and use serde features, such
/// as internally tagged enums, that only self-describing formats read back reliably).
pub(crate) fn encode_definition(d: &WorkflowDefinition) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(d)
        .map_err(|e| StoreError::Backend(format!("cannot encode workflow definition: {e}")))
}

/// Decodes a definition.
pub(crate) fn decode_definition(b: &[u8]) -> Result<WorkflowDefinition, StoreError> {
    serde_json::from_slice(b)
        .map_err(|e| StoreError::Corrupt(format!("cannot decode workflow definition: {e}")))
}

/// Maps a redb error to a store error: I/O is [`StoreError::Unavailable`] (may pass),
/// corruption is [`StoreError::Corrupt`], anything else [`StoreError::Backend`].
pub(crate) fn redb_err(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Corrupted(msg) => StoreError::Corrupt(format!("redb: {msg}")),
        redb::Error::Io(io) => StoreError::Unavailable(format!("redb I/O error: {io}")),
        // After an I/O error redb refuses the database until it is reopened, which the
        // writer does (see `crate::slot`); a read under way when it closes the old one sees
        // it closed.
        redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
            StoreError::Unavailable(format!("redb: {e}"))
        }
        other => StoreError::Backend(format!("redb: {other}")),
    }
}
