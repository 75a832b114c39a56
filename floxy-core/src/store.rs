//! The storage trait and its contract.
//!
//! A store persists definitions, instances, step runs, the work queue, events and DLQ
//! records. It never decides semantics: every change of an instance comes from the state
//! machine as a [`Transition`] that the store applies atomically. The only place a store is
//! clever is [`Store::claim`], the hot path.
//!
//! # Contract (every backend, checked by the conformance suite)
//!
//! * **Atomicity.** [`Store::create_instance`] and [`Store::update_instance`] apply a
//!   transition all-or-nothing, including its events and DLQ writes.
//! * **Serialisation per instance.** [`Store::update_instance`] runs the transition function
//!   on a snapshot read under an exclusive lock of the instance (a row lock, the single
//!   writer, a mutex) and applies its result before releasing the lock, so one instance's
//!   transitions never interleave.
//! * **Checks.** Before applying, the store verifies the [`Transition`] checks (version,
//!   fencing token, step status compare-and-set). A failed check changes nothing and returns
//!   [`StoreError::StaleLease`] or [`StoreError::Conflict`].
//! * **Claims.** See [`Store::claim`]: leases with fencing tokens, handler filter,
//!   priority-with-aging order, expired leases reclaimed, batches.
//! * **Eager claims** (optional, [`Store::update_instance_eager`]): work a transition queues
//!   may be leased to the committing worker in the same commit, exactly as
//!   [`crate::eager::lease_eagerly`] computes it; a backend without them leaves the work
//!   queued.
//! * **Wakeups** (optional, [`Store::wait_for_work`]): a hint that another process queued
//!   work; callers keep polling.
//! * **Time** is the caller's: every call that needs the current time takes it as an
//!   argument (`now`, [`ClaimRequest::now`], the times inside a [`Transition`]) and the
//!   store honours it as given, even a synthetic one; it never compares lease or due times
//!   with a clock of its own. A store shared by processes whose clocks may disagree offers
//!   its own clock through [`Store::clock`] (optional), so that the runtime can measure how
//!   far its clock is from the store's and pass times in the store's time.
//! * **Events** get a store-wide sequence number increasing in commit order.
//! * **DLQ ids** are assigned by the store, unique and never reused.

use crate::eager::EagerClaim;
use crate::machine::TransitionError;
use crate::model::{
    DlqId, DlqRecord, Event, FencingToken, InstanceId, InstanceRecord, InstanceSnapshot,
    InstanceStatus, QueueItem, QueueKey, StepRun, Timestamp, Transition, WorkflowDefinition,
    WorkflowId,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Largest batch a single claim may ask for.
pub const MAX_CLAIM_BATCH: usize = 1_000;
/// Largest page a listing may ask for.
pub const MAX_PAGE_SIZE: usize = 1_000;

/// The function a store runs under the instance lock to compute a transition.
pub type TransitionFn =
    Box<dyn FnOnce(&InstanceSnapshot) -> Result<Transition, TransitionError> + Send + 'static>;

/// Errors of a store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The fencing token of a write is not the current lease of the item (the item was
    /// reclaimed, completed or removed). Nothing was changed.
    #[error("stale lease on {instance_id}/{step} ({kind}): token {token} is no longer current")]
    StaleLease {
        /// Instance.
        instance_id: InstanceId,
        /// Step.
        step: String,
        /// Work kind.
        kind: &'static str,
        /// The stale token.
        token: FencingToken,
    },
    /// A compare-and-set check failed (status or version). Nothing was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The instance (or record) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A definition with this id exists with different content.
    #[error("definition {0} is already registered with different content")]
    DefinitionConflict(WorkflowId),
    /// The transition function refused the change.
    #[error(transparent)]
    Rejected(#[from] TransitionError),
    /// A transient failure (connection lost, timeout, busy). Retrying may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The stored data cannot be read (bad format, unknown version).
    #[error("corrupt or incompatible data: {0}")]
    Corrupt(String),
    /// Any other backend failure.
    #[error("store backend error: {0}")]
    Backend(String),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// Whether retrying the same call may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Result of registering a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutDefinition {
    /// Stored for the first time.
    Created,
    /// The same content was already stored.
    Unchanged,
}

/// Result of creating an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CreateOutcome {
    /// The instance was created.
    Created(InstanceId),
    /// An instance of the same workflow with the same idempotency key exists; nothing written.
    Existing(InstanceId),
}

impl CreateOutcome {
    /// The id of the created or existing instance.
    #[must_use]
    pub fn id(self) -> InstanceId {
        match self {
            Self::Created(id) | Self::Existing(id) => id,
        }
    }
}

/// A claim request.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Worker id (recorded in the lease).
    pub owner: Arc<str>,
    /// Handler names the worker can run. Only items whose handler is in this list are
    /// claimed. Include [`crate::model::TIMER_HANDLER`] to take timers.
    pub handlers: Vec<Arc<str>>,
    /// Maximum number of items (≤ [`MAX_CLAIM_BATCH`]).
    pub limit: usize,
    /// Current time.
    pub now: Timestamp,
}

/// A claimed item.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedItem {
    /// The item with its new lease; `attempt` already counts this claim.
    pub item: QueueItem,
    /// The item was leased before and that lease expired (a crashed or hung worker): the
    /// previous attempt is lost and must be counted as failed by the state machine.
    pub previous_lease_expired: bool,
    /// The step run of the item as it is after the claim (input, output, error, status), so
    /// the worker needs no second read before calling the handler.
    pub run: StepRun,
}

/// One lease to extend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    /// Item.
    pub key: QueueKey,
    /// Token of the claim.
    pub token: FencingToken,
}

/// State of a lease reported by a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseState {
    /// Still held; extended to `expires_at`.
    Held {
        /// New expiry.
        expires_at: Timestamp,
        /// The holder was asked to stop (cancel, abort, rollback).
        cancel_requested: bool,
    },
    /// No longer held (reclaimed, removed or token changed): stop and drop the result.
    Lost,
}

/// Filter and page of an instance listing, ordered by id (creation order for `UUIDv7` ids).
#[derive(Debug, Clone, Default)]
pub struct InstanceQuery {
    /// Only this workflow.
    pub workflow_id: Option<WorkflowId>,
    /// Only this status.
    pub status: Option<InstanceStatus>,
    /// Start after this id (the previous page's `next`).
    pub after: Option<InstanceId>,
    /// Page size (≤ [`MAX_PAGE_SIZE`]; 0 means the maximum).
    pub limit: usize,
}

/// Filter and page of a DLQ listing, ordered by id.
#[derive(Debug, Clone, Default)]
pub struct DlqQuery {
    /// Only this instance.
    pub instance_id: Option<InstanceId>,
    /// Only this workflow.
    pub workflow_id: Option<WorkflowId>,
    /// Start after this id.
    pub after: Option<DlqId>,
    /// Page size (≤ [`MAX_PAGE_SIZE`]; 0 means the maximum).
    pub limit: usize,
}

/// A page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T, C> {
    /// Items.
    pub items: Vec<T>,
    /// Cursor of the next page (`None`: this was the last).
    pub next: Option<C>,
}

/// Counts for dashboards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Instances per status (`InstanceStatus::as_str` → count).
    pub instances_by_status: Vec<(String, u64)>,
    /// Queue items not leased.
    pub queue_ready: u64,
    /// Queue items leased.
    pub queue_leased: u64,
    /// DLQ records.
    pub dlq: u64,
}

/// Capability flags (instead of probing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Data survives a process crash.
    pub durable: bool,
    /// Several processes may share it.
    pub multi_process: bool,
}

impl Capabilities {
    /// Capability flags of a backend (the struct is `#[non_exhaustive]` so that flags can be
    /// added; backends outside this crate build it here).
    #[must_use]
    pub const fn new(durable: bool, multi_process: bool) -> Self {
        Self {
            durable,
            multi_process,
        }
    }
}

/// What [`Store::wait_for_work`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkWait {
    /// Another process may have queued work: claim now.
    Notified,
    /// Nothing was signalled before the timeout (work may still be due: a hint only).
    TimedOut,
    /// This backend has no cross-process signal; the caller must poll.
    Unsupported,
}

/// A durable store for floxy. See the [module docs](self) for the contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// What this backend offers.
    fn capabilities(&self) -> Capabilities;

    /// Stores a definition. Same id and same content: [`PutDefinition::Unchanged`]. Same id,
    /// different content: [`StoreError::DefinitionConflict`] and nothing changes.
    async fn put_definition(&self, def: &WorkflowDefinition) -> Result<PutDefinition, StoreError>;

    /// Reads a definition.
    async fn get_definition(
        &self,
        id: &WorkflowId,
    ) -> Result<Option<WorkflowDefinition>, StoreError>;

    /// Lists all definitions, ordered by id.
    async fn list_definitions(&self) -> Result<Vec<WorkflowDefinition>, StoreError>;

    /// Applies a creating transition (`create == true`). If the instance has an idempotency
    /// key and an instance of the same workflow with that key exists, nothing is written and
    /// [`CreateOutcome::Existing`] names it. An existing id is a [`StoreError::Conflict`].
    async fn create_instance(&self, t: Transition) -> Result<CreateOutcome, StoreError>;

    /// Reads the snapshot of `id` under its exclusive lock, calls `f`, checks and applies the
    /// returned transition, releases the lock and returns the applied transition. If `f`
    /// returns an error nothing is written and it is returned as [`StoreError::Rejected`].
    /// Unknown id: [`StoreError::NotFound`]. A failed check: [`StoreError::StaleLease`] or
    /// [`StoreError::Conflict`], nothing written.
    async fn update_instance(
        &self,
        id: InstanceId,
        f: TransitionFn,
    ) -> Result<Transition, StoreError>;

    /// [`Store::update_instance`], and in the same atomic commit a claim of the work it
    /// queues for the committing worker: up to `eager.limit` items leased exactly as
    /// [`crate::eager::lease_eagerly`] says (the lease, attempt, running step run and
    /// `step_started` event a [`Store::claim`] right after the commit would give), returned
    /// with the applied transition. Saves the worker a claim per step of a chain. Backends
    /// that do not offer it use this default: the update, and no item (the work stays
    /// queued for any claim).
    async fn update_instance_eager(
        &self,
        id: InstanceId,
        f: TransitionFn,
        eager: &EagerClaim,
    ) -> Result<(Transition, Vec<ClaimedItem>), StoreError> {
        let _ = eager;
        Ok((self.update_instance(id, f).await?, Vec::new()))
    }

    /// Claims up to `limit` items, atomically, in ascending `(order_key, key)` order, among
    /// items whose handler is in `handlers`, whose `run_at <= now`, and that are either not
    /// leased or hold a lease with `expires_at <= now` (reclaimed: `previous_lease_expired`).
    /// Each claimed item gets a new lease (owner, a fresh fencing token greater than every
    /// token issued before, `expires_at = now + lease_ttl_ms`), `attempt + 1`, and
    /// `cancel_requested` kept. For an [`crate::model::WorkKind::Execute`] item the step run
    /// becomes `running` (from `pending`, `retrying` or `running`), its `attempts` is set to
    /// the item's new `attempt`, `started_at = now`, and a `step_started` event is appended
    /// with that attempt number. Every claimed item comes with its step run as it is after the
    /// claim. Two concurrent claims never return the same item with the same token. An item
    /// whose step run is missing is a corrupt store ([`StoreError::Corrupt`]).
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<ClaimedItem>, StoreError>;

    /// Extends the leases that `owner` still holds with these tokens to
    /// `now + lease_ttl_ms`, in one operation; reports each as held (with its cancel flag) or
    /// lost. Result order matches `leases`.
    async fn heartbeat(
        &self,
        owner: &str,
        leases: &[LeaseRef],
        now: Timestamp,
    ) -> Result<Vec<LeaseState>, StoreError>;

    /// Reads the snapshot of an instance (not locked).
    async fn load_instance(&self, id: InstanceId) -> Result<Option<InstanceSnapshot>, StoreError>;

    /// Reads an instance record.
    async fn get_instance(&self, id: InstanceId) -> Result<Option<InstanceRecord>, StoreError>;

    /// Reads the step runs of an instance, ordered by creation time then name.
    async fn list_steps(&self, id: InstanceId) -> Result<Vec<StepRun>, StoreError>;

    /// Finds the instance started with an idempotency key.
    async fn find_by_idempotency_key(
        &self,
        workflow_id: &WorkflowId,
        key: &str,
    ) -> Result<Option<InstanceId>, StoreError>;

    /// Lists instances (filters, paging by id).
    async fn list_instances(
        &self,
        q: &InstanceQuery,
    ) -> Result<Page<InstanceRecord, InstanceId>, StoreError>;

    /// Events of an instance in sequence order, after `after_seq`, at most `limit`
    /// (≤ [`MAX_PAGE_SIZE`]; 0 means the maximum).
    async fn list_events(
        &self,
        id: InstanceId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// Lists DLQ records.
    async fn list_dlq(&self, q: &DlqQuery) -> Result<Page<DlqRecord, DlqId>, StoreError>;

    /// Reads one DLQ record.
    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqRecord>, StoreError>;

    /// The queue items of one instance (inspection and invariant checks).
    async fn list_queue(&self, id: InstanceId) -> Result<Vec<QueueItem>, StoreError>;

    /// The earliest time at which an item with one of `handlers` becomes claimable (its
    /// `run_at`, or its lease expiry if leased); `None` if there is none. Lets idle workers
    /// sleep exactly as long as needed.
    async fn next_due(&self, handlers: &[Arc<str>]) -> Result<Option<Timestamp>, StoreError>;

    /// Counts for dashboards.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Waits up to `timeout_ms` for a sign that another process queued work in this store
    /// (PostgreSQL: `LISTEN`/`NOTIFY`), so idle workers wake at once instead of polling hard.
    /// A **hint**: a signal can be lost (a reconnect) or arrive for work another worker takes,
    /// so callers keep polling [`Store::next_due`] at a slow interval as well. Work committed
    /// through this same store value is not necessarily signalled: the runtime wakes its own
    /// workers on its own commits. The default (single-process backends) returns
    /// [`WorkWait::Unsupported`] at once.
    async fn wait_for_work(&self, timeout_ms: u64) -> WorkWait {
        let _ = timeout_ms;
        WorkWait::Unsupported
    }

    /// The store's own clock, if it has one that every process sharing the store reads
    /// (PostgreSQL: the database server's `clock_timestamp()`), in milliseconds since the
    /// Unix epoch; `None` if it has none (the default: an in-process or single-process
    /// store, whose only clock is the caller's).
    ///
    /// The runtime calls it at start and periodically to measure the offset between its
    /// own clock and this one (corrected by half the round trip of this call, which should
    /// therefore be one cheap round trip) and then passes `own clock + offset` as `now` to
    /// every other call, so that processes whose clocks disagree still agree on lease
    /// expiries. A store must keep honouring the `now` it is given and never substitute
    /// this clock for it. Once a store answered `None` it must always answer `None`.
    async fn clock(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(None)
    }

    /// Removes terminal instances last updated before `older_than`, with their step runs,
    /// events, queue items and DLQ records. Never touches a non-terminal or `dlq` instance.
    /// Returns the number of instances removed.
    async fn cleanup(&self, older_than: Timestamp) -> Result<u64, StoreError>;
}
