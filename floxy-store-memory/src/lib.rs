//! An in-memory [`Store`] for floxy: the default backend for embedding and tests, the oracle
//! of the differential tests, and the fastest way to claim work.
//!
//! [`MemoryStore`] keeps everything behind **one mutex** (`parking_lot`, or `loom`'s under
//! `--cfg floxy_loom`). Every trait method takes the lock once, does plain synchronous work,
//! and releases it before returning; nothing is held across an `.await` (the methods never
//! await). One lock for everything makes the contract easy to meet: a transition is checked
//! completely and then applied, with no other operation in between, so atomicity and
//! per-instance serialisation hold by construction. Data is not durable
//! ([`Capabilities::durable`] is false) and lives as long as the last clone of the store.
//!
//! # Data structures
//!
//! * **Instances** live in a slab (`Vec<Option<_>>`) indexed by a small slot number, with a
//!   `BTreeMap<InstanceId, slot>` for lookups and id-ordered paging. Each entry keeps its
//!   [`InstanceSnapshot`] as is, so `update_instance`
//!   hands the transition function a reference instead of building a snapshot, plus a
//!   step-name index, its events (a `Vec`, already in sequence order because sequence
//!   numbers are store-wide and increasing) and the slab ids of its queue items.
//! * **Idempotency keys** are a `HashMap<WorkflowId, HashMap<key, InstanceId>>`; **DLQ
//!   records** live in their instance's snapshot with a `BTreeMap<DlqId, slot>` for paging;
//!   **terminal instances** are indexed by `(updated_at, id)` so `cleanup` never scans the
//!   live ones; per-status counters make `stats` O(1).
//! * **Queue items** live in a second slab; a `HashMap<QueueKey, item id>` resolves the keys
//!   that transitions and heartbeats name. The item remembers its instance's slot and the
//!   index of its step run, so a claim touches no hash map.
//! * **Eager claims** ([`Store::update_instance_eager`]): the transition's upserts are stored
//!   unleased except the ones [`floxy_core::eager::lease_eagerly`] leases to the committing
//!   worker, with tokens from the claim counter, in the same critical section; such an item
//!   is indexed at its lease expiry, as a claimed one is.
//!
//! # Why claims are fast
//!
//! Handler names are interned to small numbers, and each handler owns a claim index (see
//! the `queue` module):
//!
//! * `watermark`: the latest `now` a claim of this handler promoted up to;
//! * `ready: BTreeSet<(order_key, instance, item id)>`: the items already due (due time at
//!   or before the watermark), in claim order. Entries are 32-byte `Copy` values: no string,
//!   no reference count;
//! * `pending: BTreeMap<(due, item id), ready entry>`: the items not due yet, by the time
//!   they become claimable (`run_at`, or the lease expiry while leased).
//!
//! A claim at `now` first promotes the due part of `pending` into `ready` with one
//! `split_off` (each item is promoted once per due time: new items, retries whose `run_at`
//! arrived, expired leases; a large backlog is sorted and built into a tree in bulk). An
//! expired lease comes back to `ready` still carrying its lease, so the claim can report
//! `previous_lease_expired`. Then the claim takes the first `limit` entries of `ready`
//! (with several handlers, up to `limit` from each, merged). Entries with equal
//! `(order_key, instance)` are taken as a group and sorted by step and kind, which restores
//! the exact `(order_key, key)` order. Items not yet due are never looked at.
//!
//! Each claimed item then costs a `pop_first` from `ready`, an insertion into `pending` at
//! its lease expiry (at the right edge of the tree: expiries grow with time), a fencing
//! token from a plain counter under the lock, and, for `Execute` items, a direct slab access
//! to its step run (its index is cached in the item) and a `step_started` event. A batch is
//! committed in passes: one that only reads (candidates, step runs, lease parameters), one
//! that writes the indexes and statuses, one that makes the clones returned to the caller,
//! and one that appends the events. Reading first lets the cache misses of a batch overlap;
//! keeping reference-count updates (locked instructions) out of the first passes keeps them
//! from stalling behind those misses. Claims allocate only their result (scratch buffers are
//! reused), so a batch stays fast even when every item belongs to a different, cold
//! instance (figures: `benches/RESULTS.md`, `cargo bench -p floxy-benches`).
//!
//! A claim whose `now` is older than the watermark (a worker with a lagging clock) checks
//! the due time of each ready entry and skips the ones not due for it. `next_due` reads the
//! first `pending` entry and scans `ready` (which an idle worker's claim has just emptied of
//! everything due for it).
//!
//! # Choices where the contract is silent
//!
//! * A lease whose expiry has passed but that nobody has reclaimed yet is still current: a
//!   heartbeat with its token extends it, and a transition with its token is accepted.
//! * Claiming an `Execute` item whose step run is not `pending`, `retrying` or `running`
//!   leases the item but leaves the step run alone and writes no event. (An item whose step
//!   run is missing fails the whole claim with [`StoreError::Corrupt`], as the contract
//!   says, and nothing is leased.)
//! * Several writes to the same step in one transition are checked in order: each `expect`
//!   is compared with the status the previous write of the transition left.
//! * A transition may only write queue items, step runs and DLQ records of its own
//!   instance, and may delete only its own DLQ records (unknown DLQ ids are ignored);
//!   anything else is a [`StoreError::Conflict`]. Changing the idempotency key to one used
//!   by another instance is a conflict too.
//! * Reads of an unknown instance return `None` or an empty list.
//! * [`StoreStats::instances_by_status`](floxy_core::store::StoreStats) lists only statuses
//!   with at least one instance, in [`InstanceStatus::ALL`](floxy_core::model::InstanceStatus)
//!   order.

mod queue;
mod state;
mod sync;

use async_trait::async_trait;
use floxy_core::eager::EagerClaim;
use floxy_core::model::{
    DlqId, DlqRecord, Event, InstanceId, InstanceRecord, InstanceSnapshot, QueueItem, StepRun,
    Timestamp, Transition, WorkflowDefinition, WorkflowId,
};
use floxy_core::store::{
    Capabilities, ClaimRequest, ClaimedItem, CreateOutcome, DlqQuery, InstanceQuery, LeaseRef,
    LeaseState, Page, PutDefinition, Store, StoreError, StoreStats, TransitionFn,
};
use state::State;
use std::fmt;
use sync::{Arc, Mutex};

/// The in-memory store. Cloning is cheap and shares the data (an inner `Arc`).
///
/// ```
/// use floxy_store_memory::MemoryStore;
/// let store = MemoryStore::new();
/// let shared = store.clone(); // same data
/// # drop(shared);
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(State::new())),
        }
    }
}

/// What the `floxy::inside_commit` failpoint asked `update_instance` to do instead.
#[cfg(feature = "failpoints")]
type FailpointCommit = fn(&MemoryStore, InstanceId, TransitionFn) -> Result<Transition, StoreError>;

#[cfg(feature = "failpoints")]
impl MemoryStore {
    /// Evaluates [`floxy_core::failpoints::INSIDE_COMMIT`]: `return` fails the commit with
    /// [`StoreError::Unavailable`] and writes nothing; `return(applied)` applies it and then
    /// reports `Unavailable` (a lost acknowledgement); `return(exit)` aborts the process;
    /// `return(N)` is ignored (this store never waits inside a commit).
    fn inside_commit_failpoint() -> Option<FailpointCommit> {
        let arg = fail::eval(floxy_core::failpoints::INSIDE_COMMIT, |a| {
            a.unwrap_or_default()
        })?;
        match arg.trim() {
            "exit" => std::process::abort(),
            "applied" => Some(|store, id, f| {
                store.inner.lock().update_instance(id, f)?;
                Err(StoreError::Unavailable(
                    "failpoint floxy::inside_commit: committed, acknowledgement lost".into(),
                ))
            }),
            a if a.parse::<u64>().is_ok() => None,
            _ => Some(|_, _, _| {
                Err(StoreError::Unavailable(
                    "failpoint floxy::inside_commit: commit failed, nothing written".into(),
                ))
            }),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn capabilities(&self) -> Capabilities {
        // `Capabilities` is `#[non_exhaustive]` with no constructor in `floxy_core::store`:
        // build it through the conformance module's helper until the core has one.
        floxy_core::store::Capabilities::new(false, false)
    }

    async fn put_definition(&self, def: &WorkflowDefinition) -> Result<PutDefinition, StoreError> {
        self.inner.lock().put_definition(def)
    }

    async fn get_definition(
        &self,
        id: &WorkflowId,
    ) -> Result<Option<WorkflowDefinition>, StoreError> {
        Ok(self.inner.lock().get_definition(id))
    }

    async fn list_definitions(&self) -> Result<Vec<WorkflowDefinition>, StoreError> {
        Ok(self.inner.lock().list_definitions())
    }

    async fn create_instance(&self, t: Transition) -> Result<CreateOutcome, StoreError> {
        self.inner.lock().create_instance(t)
    }

    async fn update_instance(
        &self,
        id: InstanceId,
        f: TransitionFn,
    ) -> Result<Transition, StoreError> {
        #[cfg(feature = "failpoints")]
        if let Some(r) = Self::inside_commit_failpoint() {
            return r(self, id, f);
        }
        self.inner.lock().update_instance(id, f)
    }

    async fn update_instance_eager(
        &self,
        id: InstanceId,
        f: TransitionFn,
        eager: &EagerClaim,
    ) -> Result<(Transition, Vec<ClaimedItem>), StoreError> {
        #[cfg(feature = "failpoints")]
        if let Some(r) = Self::inside_commit_failpoint() {
            // An injected fault applies the plain update (or nothing) and leases nothing.
            return r(self, id, f).map(|t| (t, Vec::new()));
        }
        self.inner.lock().update_instance_eager(id, f, Some(eager))
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<ClaimedItem>, StoreError> {
        self.inner.lock().claim(req)
    }

    async fn heartbeat(
        &self,
        owner: &str,
        leases: &[LeaseRef],
        now: Timestamp,
    ) -> Result<Vec<LeaseState>, StoreError> {
        Ok(self.inner.lock().heartbeat(owner, leases, now))
    }

    async fn load_instance(&self, id: InstanceId) -> Result<Option<InstanceSnapshot>, StoreError> {
        Ok(self.inner.lock().load_instance(id))
    }

    async fn get_instance(&self, id: InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        Ok(self.inner.lock().get_instance(id))
    }

    async fn list_steps(&self, id: InstanceId) -> Result<Vec<StepRun>, StoreError> {
        Ok(self.inner.lock().list_steps(id))
    }

    async fn find_by_idempotency_key(
        &self,
        workflow_id: &WorkflowId,
        key: &str,
    ) -> Result<Option<InstanceId>, StoreError> {
        Ok(self.inner.lock().find_by_idempotency_key(workflow_id, key))
    }

    async fn list_instances(
        &self,
        q: &InstanceQuery,
    ) -> Result<Page<InstanceRecord, InstanceId>, StoreError> {
        Ok(self.inner.lock().list_instances(q))
    }

    async fn list_events(
        &self,
        id: InstanceId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        Ok(self.inner.lock().list_events(id, after_seq, limit))
    }

    async fn list_dlq(&self, q: &DlqQuery) -> Result<Page<DlqRecord, DlqId>, StoreError> {
        Ok(self.inner.lock().list_dlq(q))
    }

    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqRecord>, StoreError> {
        Ok(self.inner.lock().get_dlq(id))
    }

    async fn list_queue(&self, id: InstanceId) -> Result<Vec<QueueItem>, StoreError> {
        Ok(self.inner.lock().list_queue(id))
    }

    async fn next_due(
        &self,
        handlers: &[std::sync::Arc<str>],
    ) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.inner.lock().next_due(handlers))
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(self.inner.lock().stats())
    }

    async fn cleanup(&self, older_than: Timestamp) -> Result<u64, StoreError> {
        Ok(self.inner.lock().cleanup(older_than))
    }
}
