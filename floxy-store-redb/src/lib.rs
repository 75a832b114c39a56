//! An embedded, durable [`Store`] for floxy: one [redb](https://www.redb.org) file, one
//! pipelined writer, group commit.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use floxy_store_redb::{Durability, RedbOptions, RedbStore};
//! let store = RedbStore::open("/var/lib/myapp/floxy.redb", RedbOptions::default())?;
//! // ... hand `std::sync::Arc::new(store.clone())` to `floxy::Engine::new` ...
//! store.close().await?; // the final flush's error, if any; releases the file
//! # Ok(()) }
//! ```
//!
//! # When to choose it
//!
//! Choose redb when one process owns the workflows and they must survive a crash or a
//! restart, without running a database server: `floxyctl` and `floxyd` on one machine, an
//! edge device, a service that embeds the engine. Choose the memory store for tests and
//! throw-away runs, and PostgreSQL when several processes or machines share the work (redb
//! locks the file: one process at a time; [`Capabilities::multi_process`] is false).
//!
//! # Writes: a two-stage writer, group commit
//!
//! redb transactions are synchronous and a file has one writer at a time, so every write of
//! the store — [`Store::put_definition`], [`Store::create_instance`],
//! [`Store::update_instance`] (the transition function runs there, under the "lock" that is
//! the single writer), [`Store::claim`], [`Store::heartbeat`] and [`Store::cleanup`] — is
//! a request sent over a bounded channel to a dedicated OS thread (`floxy-redb-writer`). No
//! async task ever holds a redb transaction, and no `.await` happens inside one.
//!
//! The writer *prepares* batches: it takes every queued request (at most
//! [`MAX_GROUP_COMMIT`] per batch) and handles them in arrival order against its in-memory
//! state, recording the table writes each one makes:
//!
//! * each request sees the effects of the requests before it (a claim right after a create
//!   finds the new items; two updates of one instance in one batch see each other,
//!   serialised like any two transitions);
//! * each request checks everything (version, fencing token, step compare-and-set,
//!   ownership, idempotency key) *before* recording anything, so a refused request (a
//!   closure error, a stale lease, a failed compare-and-set) writes nothing and does not
//!   disturb the others in its batch.
//!
//! A second thread (`floxy-redb-commit`) applies each prepared batch in **one** redb write
//! transaction and commits it, and only then is every caller of the batch answered: **a
//! caller is acknowledged only once its write is durable** (with [`Durability::Immediate`],
//! the default, the commit is a durable redb commit). A third thread (`floxy-redb-notify`)
//! sends the answers, so waking the callers' tasks overlaps with the next commit.
//!
//! The two stages overlap: while batch `N` commits, the writer prepares the requests that
//! arrive into batch `N + 1`, and hands it over the moment `N` is durable (when nothing is
//! committing, a batch goes once it holds 512 requests even if more are queued, so the rest
//! of a burst is prepared while its start commits). At most one batch commits while one is
//! prepared, so a request waits for at most one commit before its own. The reads a
//! preparation needs come from memory (the claim index, the snapshot cache) or from a read
//! transaction of the last committed batch; everything a not-yet-committed batch wrote —
//! instance snapshots, idempotency keys, DLQ ids — is kept pinned in memory until it is
//! committed, so no preparation reads a stale row. That read transaction is dropped as soon
//! as a later batch commits: a live redb snapshot keeps redb from freeing the pages later
//! commits replace. A definition write and a retention chunk wait for the committing batch
//! and run in a batch of their own.
//!
//! Under load the batches grow on their own: while one commit waits for the disk, the next
//! requests queue up and share the next `fsync`, which is what turns a few thousand durable
//! commits per second into tens of thousands of acknowledged step completions per second.
//!
//! If applying or committing a batch fails (I/O error, disk full), every request of the batch
//! gets that (retryable) error — refusals too, since they may rest on an earlier request of
//! the batch that never became durable — and nothing of it is visible; so does every request
//! of the batch prepared on top of it, which is never committed (a request sent after its
//! caller saw the failure is never in that batch: the writer learns of the failure before
//! any caller does, and settles it before it prepares the next request). The writer then
//! rebuilds its in-memory state from the last committed transaction. A batch that writes
//! nothing (claims that found no work, refused requests) is answered without a transaction.
//!
//! ## Full disk and I/O errors
//!
//! When a `write`, `set_len` or `fsync` of a commit fails (`ENOSPC`, `EIO`), redb fails that
//! commit with the I/O error and *poisons* its database handle: every later operation on it
//! fails with redb's `PreviousIo` until the database is closed and opened again, however
//! the disk fares. The store does that itself: the callers of the failed batch (and of the
//! batch prepared on top of it) get [`StoreError::Unavailable`] (retryable) naming the
//! cause; the writer then drops the handle, reopens the file (or the same storage backend;
//! redb repairs a file that was not closed cleanly, back to its last durable commit),
//! rebuilds its state from it and carries on. While the fault lasts the reopen fails
//! (repairing writes), every call fails at once with [`StoreError::Unavailable`] ("being
//! reopened after an I/O error"), and the writer tries again at most every 100 ms, on the
//! next request. Nothing acknowledged is lost, and no partial batch is ever visible.
//!
//! What *is* uncertain is the failed batch itself when its pages were written but the
//! `fsync` failed: redb's repair then finds its commit complete in the file, so it may be
//! there after the reopen, whole — like a commit cut short by a crash, or a PostgreSQL
//! commit whose connection dropped. A caller that retries finds its create already there
//! (`Conflict`), its step already completed, or its claim's lease taken (it expires). With
//! `ENOSPC` on a write the commit never reaches the file. With [`Durability::Relaxed`] the
//! reopen, like a crash, loses the acknowledged commits not yet synced. (An `fsync` error
//! can also mean the kernel dropped the dirty pages; the store cannot tell, and trusts what
//! the file reads back after the reopen.) `tests/disk_errors.rs` checks all this over a
//! file backend whose writes fail with `ENOSPC` or whose syncs fail with `EIO`.
//!
//! The writer keeps the decoded snapshots of live instances in memory (bounded by
//! [`RedbOptions::snapshot_cache_instances`], default
//! [`DEFAULT_SNAPSHOT_CACHE_INSTANCES`]: keep it above the number of live instances, or
//! claims and transitions read and decode their instances from the file), updated in step
//! with what it writes, so a transition does not re-read and re-decode its instance; the
//! cache is cleared after a failed commit. [`RedbStore::writer_stats`] reports group
//! commits, requests per commit and the time spent preparing and committing.
//!
//! A transition function that panics does not stop the writer: the panic is caught there and
//! resumed on the caller's task, as with a store that runs the function in place. Because it
//! runs on the writer thread, a transition function must be quick and must not block (the
//! state machine's `apply` is pure and takes microseconds); a slow one delays every write.
//!
//! **Eager claims** ([`Store::update_instance_eager`]): after an update's checks pass, the
//! writer leases the caller's share of the work the transition queues
//! ([`floxy_core::eager::lease_eagerly`], tokens from the claim counter) and writes those
//! queue items, step runs and `step_started` events leased, in the same commit: the claim
//! that would have followed (a request, an index scan, a second write of each row) is saved.
//! Every other upsert is stored unleased.
//!
//! # Reads
//!
//! Reads ([`Store::load_instance`], listings, lookups) open a redb read transaction on the
//! calling task and read directly: redb readers never wait for the writer (MVCC snapshots of
//! the last commit), every read is bounded (point lookups and pages of at most
//! [`MAX_PAGE_SIZE`] records), and the store then works under any executor (the conformance
//! suite uses `futures::executor::block_on`, where `spawn_blocking` does not exist).
//! [`Store::next_due`] and [`Store::stats`] read numbers the writer publishes after every
//! commit and touch no transaction.
//!
//! # Durability
//!
//! * [`Durability::Immediate`] (the default): every batch is one durable redb commit
//!   (`redb::Durability::Immediate`: its pages are written and the file is synced) before
//!   any of its callers is answered. A crash loses nothing that was acknowledged.
//! * [`Durability::Relaxed`]: commits are not synced one by one
//!   (`redb::Durability::None`); one commit every `flush_interval_ms` is, and commits left
//!   unsynced are synced once their interval is over even if no request follows, and by
//!   [`RedbStore::close`]. A crash can lose the commits of the last interval — acknowledged
//!   work may run again or an acknowledged start may vanish — but never corrupts the file:
//!   redb reopens at the last durable commit. Use it when re-running recent steps is
//!   acceptable and throughput with few concurrent writers matters more.
//!
//! Crash safety rests on redb's own: its commits are atomic, and after a crash it reopens
//! at the last durable commit (repairing its allocator state if the process died). The
//! store adds nothing on top — no log of its own — and rebuilds its in-memory state (claim
//! index, counters) from the file at open. The tests check it two ways: through a redb
//! storage backend that loses every write not yet synced when it "crashes"
//! (`tests/crash_backend.rs`), and by killing processes running the engine with `SIGKILL`
//! (`floxy/tests/redb_crash.rs`).
//!
//! # On-disk layout (format version [`FORMAT_VERSION`])
//!
//! | table | key | value |
//! |---|---|---|
//! | `floxy_meta` | `"format_version"`, `"counters"` | `u32` BE; last fencing token, last event sequence, last DLQ id, instances per status, DLQ count |
//! | `floxy_definitions` | workflow id | definition (JSON) |
//! | `floxy_instances` | instance id (`u128`) | instance record |
//! | `floxy_steps` | (instance id, step name) | step row: the step run (absent for an item whose step has no run), the step's queue items, each with its lease (owner, fencing token, expiry), and the step marks: the events of the step written with the row (its claims' `step_started`, its transitions' events about it) |
//! | `floxy_live` | instance id | — (instances with at least one queue item) |
//! | `floxy_events` | (instance id, sequence of the row's first event) | the events one transition wrote that no step row keeps (increasing global sequence numbers) |
//! | `floxy_dlq` | DLQ id | DLQ record |
//! | `floxy_dlq_by_instance` | (instance id, DLQ id) | — |
//! | `floxy_idempotency` | (workflow id, key) | instance id |
//! | `floxy_terminal` | (`updated_at` ms, instance id) | — (terminal instances, for cleanup) |
//!
//! Records are `MessagePack` (`rmp-serde`, structs as arrays) of the `floxy-core` model types,
//! JSON payloads embedded as `MessagePack` values; definitions are JSON. Step rows and event
//! rows leave out what their key already holds (the instance id, and the step name of a run
//! or an item): the committing thread's cost grows with the bytes a commit writes. Keys are
//! redb tuples, so a table's order is the order its readers need (`UUIDv7` instance ids keep
//! one instance's rows together and recent instances at the end of each table, which keeps
//! the pages a commit dirties few). The fencing-token counter, the event sequence and the
//! DLQ id counter are persisted by every transaction that advances them, so they never go
//! back after a restart.
//!
//! A step's queue items share its row because they change together: a claim leases the item
//! and marks the run `running`, a completion finishes the run and deletes the item, so each
//! is one row write. A step row also keeps the events of the step that its transitions write
//! with it, as *step marks*: a claim's `step_started` as `[seq, at, attempt]` (kind, step and
//! instance are implied), any other event of the step (a completion's `step_completed`, a
//! failure's `step_failed`) as `[seq, at, attempt, kind, detail]`; so a claim writes one row
//! per item, and a completion writes no event row unless it also ends the instance. A step
//! row keeps its marks for good, and `list_events` merges them with the event rows by
//! sequence number. The price: a heartbeat rewrites the step row, run and marks included.
//!
//! Opening a file checks `format_version`: a file of another version is refused with
//! [`OpenError::UnsupportedFormatVersion`]; a redb file without floxy's meta table, or a file
//! that is not a redb file, is [`OpenError::NotFloxyDatabase`]. Any change to the layout
//! is a new format version; `tests/format.rs` opens a checked-in file of this version and
//! fails if it no longer reads back.
//!
//! ## The claim index lives in memory
//!
//! The queue items in the step rows (lease included) are the durable truth. The *claim
//! index* — per handler, the ready items in `(order_key, key)` order (priority with aging)
//! and every item by the time it becomes claimable (its `run_at`, or its lease expiry) — is
//! derived from them and kept in memory by the writer, which is the only code that changes
//! either. It is rebuilt when the file is opened, from the step rows of the instances
//! `floxy_live` lists (live work only, never finished instances), and after a failed commit.
//! This is sound because redb's file lock makes the opening process the only one that can
//! write the file, and it keeps the rows a step writes down: a claim rewrites one step row
//! instead of also moving an entry between on-disk indexes. Leases themselves are durable
//! (inside the step row), so after a crash every lease that was held is still there and is
//! reclaimed when it expires, counting as an attempt. The algorithm is the memory store's,
//! so both backends claim in the same order (the differential test checks it).
//!
//! # Choices where the contract is silent
//!
//! The same as the memory store's (see its crate docs): an expired but not yet reclaimed
//! lease is still current for heartbeats and fencing checks; claiming an `Execute` item whose
//! step run is not `pending`, `retrying` or `running` leases it without touching the run;
//! several writes to one step in a transition are checked in order; a transition may only
//! touch its own instance's items, step runs and DLQ records (unknown DLQ ids in
//! `dlq_delete` are ignored); reads of an unknown instance return `None` or an empty list;
//! `instances_by_status` lists only statuses with at least one instance. Besides:
//!
//! * [`Store::cleanup`] removes instances in chunks of [`CLEANUP_CHUNK`] per write
//!   transaction, so it is not atomic as a whole (each removed instance is removed whole).
//! * [`RedbStore::close`] releases the file deterministically. Dropping the last clone of a
//!   store also stops the writer and releases the file, but asynchronously (and a relaxed
//!   store's final flush error is then only logged): reopen the same path in the same
//!   process only after `close` returned.
//!
//! # Feature `failpoints`
//!
//! [fail](https://docs.rs/fail) failpoints for fault-injection tests:
//! `floxy-redb::committing` (a callback when a batch starts its commit),
//! `floxy-redb::commit` before each write transaction's commit (`return` fails the commit,
//! `return(MS)` fails it after MS ms) and `floxy-redb::flush` (`return` fails a relaxed
//! store's flush, the periodic one and the final one of [`RedbStore::close`]).
//!
//! # Feature `fuzzing`
//!
//! `floxy_store_redb::fuzzing` exposes the decoders of the file's records, so that fuzz
//! tests can feed them arbitrary bytes (not a stable API).

mod cache;
mod commit;
mod fast_hash;
// `pub` items for the loom model (`tests/loom_writer.rs`), public only under
// `--cfg floxy_loom` (below).
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg_attr(not(floxy_loom), allow(unreachable_pub))]
mod handover;
mod index;
mod layout;
mod open;
mod ops;
mod read;
mod row;
mod slot;
mod sync;
mod writer;

pub use layout::FORMAT_VERSION;
pub use open::OpenError;

use async_trait::async_trait;
use floxy_core::eager::EagerClaim;
use floxy_core::model::{
    DlqId, DlqRecord, Event, InstanceId, InstanceRecord, InstanceSnapshot, InstanceStatus,
    QueueItem, StepRun, Timestamp, Transition, WorkflowDefinition, WorkflowId,
};
use floxy_core::store::{
    Capabilities, ClaimRequest, ClaimedItem, CreateOutcome, DlqQuery, InstanceQuery, LeaseRef,
    LeaseState, MAX_PAGE_SIZE, Page, PutDefinition, Store, StoreError, StoreStats, TransitionFn,
};
use layout::{DEFINITIONS, DLQ, EVENTS, IDEMPOTENCY, INSTANCES, STEPS, redb_err};
use parking_lot::Mutex;
use redb::{Database, ReadTransaction, ReadableDatabase};
use slot::DbSlot;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};
pub use writer::WriterStats;
/// The writer's hand-over protocol, for the loom model only (`tests/loom_writer.rs`); not a
/// stable API.
#[cfg(floxy_loom)]
#[doc(hidden)]
pub mod loom_model {
    pub use crate::handover::{Commit, Committing, HandOver, Prepare, ToCommit, channel};
}
use writer::{Published, Request, UpdateFailure, Writer};

/// Largest number of requests applied in one write transaction (one group commit).
pub const MAX_GROUP_COMMIT: usize = 4_096;
/// Capacity of the writer's request channel; senders wait (asynchronously) when it is full.
pub const WRITER_QUEUE_CAPACITY: usize = 8_192;
/// Instances removed per write transaction by [`Store::cleanup`].
pub const CLEANUP_CHUNK: usize = 1_000;
/// Default redb page cache: 64 MiB.
pub const DEFAULT_CACHE_SIZE_BYTES: usize = 64 * 1024 * 1024;
/// Default number of live instance snapshots the writer keeps decoded in memory. A claim or
/// transition of an instance outside the cache reads and decodes it from the file, which
/// more than doubles the writer's time per request. Memory is spent only on live instances
/// (terminal ones leave the cache): about 1.2 KB each with small payloads, more with large
/// ones; the claim index already holds every live instance's queue items in memory.
pub const DEFAULT_SNAPSHOT_CACHE_INSTANCES: usize = 100_000;
/// The path of a store opened with [`RedbStore::open_with_backend`], in its errors and
/// [`RedbStore::path`].
pub const BACKEND_PATH: &str = "<redb storage backend>";
/// Default interval between durable commits in [`Durability::Relaxed`] mode.
pub const DEFAULT_RELAXED_FLUSH_INTERVAL_MS: u64 = 100;

/// When a commit is durable. See the [crate docs](crate#durability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Every commit is synced to disk before its callers are answered. The default.
    #[default]
    Immediate,
    /// Commits are synced at most every `flush_interval_ms` (and on close); a crash may
    /// lose the acknowledged commits of the last interval, never the file's consistency.
    Relaxed {
        /// Time between durable commits.
        flush_interval_ms: u64,
    },
}

impl Durability {
    /// [`Durability::Relaxed`] with [`DEFAULT_RELAXED_FLUSH_INTERVAL_MS`].
    #[must_use]
    pub const fn relaxed() -> Self {
        Self::Relaxed {
            flush_interval_ms: DEFAULT_RELAXED_FLUSH_INTERVAL_MS,
        }
    }
}

/// Options of [`RedbStore::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedbOptions {
    /// When commits are durable (default [`Durability::Immediate`]).
    pub durability: Durability,
    /// redb's page cache size in bytes (default [`DEFAULT_CACHE_SIZE_BYTES`]).
    pub cache_size_bytes: usize,
    /// Live instances whose decoded snapshots the writer keeps in memory (default
    /// [`DEFAULT_SNAPSHOT_CACHE_INSTANCES`]; 0 disables the cache).
    pub snapshot_cache_instances: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Immediate,
            cache_size_bytes: DEFAULT_CACHE_SIZE_BYTES,
            snapshot_cache_instances: DEFAULT_SNAPSHOT_CACHE_INSTANCES,
        }
    }
}

impl RedbOptions {
    /// Sets the durability mode.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the page cache size.
    #[must_use]
    pub fn cache_size_bytes(mut self, bytes: usize) -> Self {
        self.cache_size_bytes = bytes;
        self
    }

    /// Sets the number of live instances whose snapshots the writer caches.
    #[must_use]
    pub fn snapshot_cache_instances(mut self, n: usize) -> Self {
        self.snapshot_cache_instances = n;
        self
    }
}

/// The redb store. Cloning is cheap and shares the file (an inner `Arc`).
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The database (replaced after an I/O error poisoned it).
    slot: Arc<DbSlot>,
    /// Set by [`RedbStore::close`].
    closed: AtomicBool,
    tx: mpsc::Sender<Request>,
    published: Arc<Mutex<Published>>,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the floxy database at `path`, creating the file if it does not exist, and
    /// starts its writer threads.
    ///
    /// # Errors
    /// [`OpenError::MissingDirectory`], [`OpenError::ReadOnly`],
    /// [`OpenError::NotFloxyDatabase`], [`OpenError::UnsupportedFormatVersion`],
    /// [`OpenError::AlreadyOpen`], or [`OpenError::Other`] for I/O and redb failures. Each
    /// names the path. `StoreError: From<OpenError>` for callers that want one error type.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "options by value, as built; a later option need not be `Copy`"
    )]
    pub fn open(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_owned();
        let db = open::open_database(&path, options.cache_size_bytes)?;
        let reopen = slot::reopen_path(path.clone(), options.cache_size_bytes);
        Self::start(path, db, reopen, &options)
    }

    /// Opens the floxy database held by a redb storage backend (an in-memory one such as
    /// `redb::backends::InMemoryBackend`, or a wrapper around a file that injects faults),
    /// initialising it if it is empty, and starts its writer threads. Errors name the path
    /// [`BACKEND_PATH`]; [`RedbStore::path`] returns it too.
    ///
    /// After an I/O error (see the [crate docs](crate#full-disk-and-io-errors)) the store
    /// opens a new redb database on the same backend, after the old one called its
    /// [`close`](redb::StorageBackend::close): the backend must stay usable after `close`
    /// (redb's file and in-memory backends do; `close` releases their locks).
    ///
    /// # Errors
    /// As [`RedbStore::open`], less the path checks.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "options by value, as built; a later option need not be `Copy`"
    )]
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        options: RedbOptions,
    ) -> Result<Self, OpenError> {
        let path = PathBuf::from(BACKEND_PATH);
        let backend = Arc::new(backend);
        let db = open::open_backend(
            &path,
            slot::SharedBackend(backend.clone()),
            options.cache_size_bytes,
        )?;
        let reopen = slot::reopen_backend(path.clone(), backend, options.cache_size_bytes);
        Self::start(path, db, reopen, &options)
    }

    /// Loads the writer's state from `db` and starts the writer threads (`reopen` opens the
    /// database again after an I/O error poisoned it).
    fn start(
        path: PathBuf,
        db: Database,
        reopen: slot::Reopen,
        options: &RedbOptions,
    ) -> Result<Self, OpenError> {
        let state = writer::load_state(&db).map_err(|e| OpenError::Other {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let slot = Arc::new(DbSlot::new(db));
        let published = Arc::new(Mutex::new(Published::default()));
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_CAPACITY);
        let (w, pipe) = Writer::new(
            slot.clone(),
            reopen,
            options,
            state,
            published.clone(),
            tx.downgrade(),
        )
        .map_err(|e| OpenError::Other {
            path: path.clone(),
            reason: format!("cannot start the notifier or the committing thread: {e}"),
        })?;
        std::thread::Builder::new()
            .name("floxy-redb-writer".to_owned())
            .spawn(move || w.run(pipe, rx))
            .map_err(|e| OpenError::Other {
                path: path.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                slot,
                closed: AtomicBool::new(false),
                tx,
                published,
            }),
        })
    }

    /// The path of the file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Finishes the queued writes, makes them durable, stops the writer threads and releases
    /// the file (and its lock). Every clone of the store is closed: later calls fail with
    /// [`StoreError::Closed`]. Closing twice is a no-op.
    ///
    /// The file is released whatever the outcome.
    ///
    /// # Errors
    /// The error of the final flush: with [`Durability::Relaxed`], commits not yet synced
    /// are synced here, and if that fails they may be lost (as after a crash; the file stays
    /// consistent). [`StoreError::Backend`] if the committing thread panicked.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let (reply, done) = oneshot::channel();
        let r = if self.inner.tx.send(Request::Close { reply }).await.is_ok() {
            // The writer answers after dropping its handle of the database.
            done.await.unwrap_or_else(|_| {
                Err(StoreError::Backend(
                    "floxy-store-redb: the writer thread stopped before it closed the store"
                        .to_owned(),
                ))
            })
        } else {
            Ok(())
        };
        // The writer closed it before it answered; a writer that was gone did not.
        self.inner.slot.close();
        r
    }

    /// Counters of the writer threads since the store was opened (group commits, requests,
    /// time busy and committing), as of the last commit.
    #[must_use]
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.published.lock().stats
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.inner.slot.get()
    }

    fn read_txn(&self) -> Result<ReadTransaction, StoreError> {
        self.db()?.begin_read().map_err(redb_err)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn page_limit(limit: usize) -> usize {
    if limit == 0 {
        MAX_PAGE_SIZE
    } else {
        limit.min(MAX_PAGE_SIZE)
    }
}

impl RedbStore {
    /// An update through the writer thread, with an eager claim if asked.
    async fn update(
        &self,
        id: InstanceId,
        f: TransitionFn,
        eager: Option<Box<EagerClaim>>,
    ) -> Result<(Transition, Vec<ClaimedItem>), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Request::Update {
                id,
                f,
                eager,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(UpdateFailure::Store(e))) => Err(e),
            Ok(Err(UpdateFailure::Panic(p))) => std::panic::resume_unwind(p),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    fn capabilities(&self) -> Capabilities {
        floxy_core::store::Capabilities::new(true, false)
    }

    async fn put_definition(&self, def: &WorkflowDefinition) -> Result<PutDefinition, StoreError> {
        let def = Box::new(def.clone());
        self.call(|reply| Request::PutDefinition { def, reply })
            .await
    }

    async fn get_definition(
        &self,
        id: &WorkflowId,
    ) -> Result<Option<WorkflowDefinition>, StoreError> {
        let rtx = self.read_txn()?;
        let t = rtx.open_table(DEFINITIONS).map_err(redb_err)?;
        match t.get(id.as_str()).map_err(redb_err)? {
            Some(v) => layout::decode_definition(v.value()).map(Some),
            None => Ok(None),
        }
    }

    async fn list_definitions(&self) -> Result<Vec<WorkflowDefinition>, StoreError> {
        let rtx = self.read_txn()?;
        let t = rtx.open_table(DEFINITIONS).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in t.range::<&str>(..).map_err(redb_err)? {
            let (_, v) = row.map_err(redb_err)?;
            out.push(layout::decode_definition(v.value())?);
        }
        Ok(out)
    }

    async fn create_instance(&self, t: Transition) -> Result<CreateOutcome, StoreError> {
        let t = Box::new(t);
        self.call(|reply| Request::Create { t, reply }).await
    }

    async fn update_instance(
        &self,
        id: InstanceId,
        f: TransitionFn,
    ) -> Result<Transition, StoreError> {
        Ok(self.update(id, f, None).await?.0)
    }

    async fn update_instance_eager(
        &self,
        id: InstanceId,
        f: TransitionFn,
        eager: &EagerClaim,
    ) -> Result<(Transition, Vec<ClaimedItem>), StoreError> {
        let eager = (eager.limit > 0).then(|| Box::new(eager.clone()));
        self.update(id, f, eager).await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<ClaimedItem>, StoreError> {
        if req.limit == 0 || req.handlers.is_empty() {
            return Ok(Vec::new());
        }
        let req = req.clone();
        self.call(|reply| Request::Claim { req, reply }).await
    }

    async fn heartbeat(
        &self,
        owner: &str,
        leases: &[LeaseRef],
        now: Timestamp,
    ) -> Result<Vec<LeaseState>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let owner: Arc<str> = Arc::from(owner);
        let leases = leases.to_vec();
        self.call(|reply| Request::Heartbeat {
            owner,
            leases,
            now,
            reply,
        })
        .await
    }

    async fn load_instance(&self, id: InstanceId) -> Result<Option<InstanceSnapshot>, StoreError> {
        read::snapshot_in(&self.read_txn()?, id)
    }

    async fn get_instance(&self, id: InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        let rtx = self.read_txn()?;
        let t = rtx.open_table(INSTANCES).map_err(redb_err)?;
        read::instance(&t, id)
    }

    async fn list_steps(&self, id: InstanceId) -> Result<Vec<StepRun>, StoreError> {
        let rtx = self.read_txn()?;
        let t = rtx.open_table(STEPS).map_err(redb_err)?;
        let mut steps = read::steps(&t, id)?;
        steps.sort_by(|a, b| (a.created_at, &a.step).cmp(&(b.created_at, &b.step)));
        Ok(steps)
    }

    async fn find_by_idempotency_key(
        &self,
        workflow_id: &WorkflowId,
        key: &str,
    ) -> Result<Option<InstanceId>, StoreError> {
        let rtx = self.read_txn()?;
        let t = rtx.open_table(IDEMPOTENCY).map_err(redb_err)?;
        Ok(t.get((workflow_id.as_str(), key))
            .map_err(redb_err)?
            .map(|v| InstanceId::from_u128(v.value())))
    }

    async fn list_instances(
        &self,
        q: &InstanceQuery,
    ) -> Result<Page<InstanceRecord, InstanceId>, StoreError> {
        let limit = page_limit(q.limit);
        let rtx = self.read_txn()?;
        let t = rtx.open_table(INSTANCES).map_err(redb_err)?;
        let start = q
            .after
            .map_or(Bound::Unbounded, |a| Bound::Excluded(layout::inst_key(a)));
        let mut items: Vec<InstanceRecord> = Vec::new();
        let mut more = false;
        for row in t
            .range::<u128>((start, Bound::Unbounded))
            .map_err(redb_err)?
        {
            let (_, v) = row.map_err(redb_err)?;
            let r = layout::decode_instance(v.value())?;
            if q.workflow_id.as_ref().is_some_and(|w| *w != r.workflow_id)
                || q.status.is_some_and(|s| s != r.status)
            {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(r);
        }
        let next = if more {
            items.last().map(|r| r.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn list_events(
        &self,
        id: InstanceId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let rtx = self.read_txn()?;
        let t = rtx.open_table(EVENTS).map_err(redb_err)?;
        let steps = rtx.open_table(STEPS).map_err(redb_err)?;
        read::events(&t, &steps, id, after_seq, page_limit(limit))
    }

    async fn list_dlq(&self, q: &DlqQuery) -> Result<Page<DlqRecord, DlqId>, StoreError> {
        let limit = page_limit(q.limit);
        let rtx = self.read_txn()?;
        let t = rtx.open_table(DLQ).map_err(redb_err)?;
        let start = q.after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.0));
        let mut items: Vec<DlqRecord> = Vec::new();
        let mut more = false;
        for row in t
            .range::<u64>((start, Bound::Unbounded))
            .map_err(redb_err)?
        {
            let (_, v) = row.map_err(redb_err)?;
            let r = layout::decode_dlq(v.value())?;
            if q.instance_id.is_some_and(|i| i != r.record.instance_id)
                || q.workflow_id
                    .as_ref()
                    .is_some_and(|w| *w != r.record.workflow_id)
            {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(r);
        }
        let next = if more {
            items.last().map(|r| r.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqRecord>, StoreError> {
        let rtx = self.read_txn()?;
        let t = rtx.open_table(DLQ).map_err(redb_err)?;
        read::dlq(&t, id)
    }

    async fn list_queue(&self, id: InstanceId) -> Result<Vec<QueueItem>, StoreError> {
        let rtx = self.read_txn()?;
        let t = rtx.open_table(STEPS).map_err(redb_err)?;
        read::queue(&t, id)
    }

    async fn next_due(&self, handlers: &[Arc<str>]) -> Result<Option<Timestamp>, StoreError> {
        self.db()?;
        let p = self.inner.published.lock();
        Ok(handlers
            .iter()
            .filter_map(|h| p.next_due.get(&**h).copied())
            .min())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.db()?;
        let p = self.inner.published.lock();
        let instances_by_status = InstanceStatus::ALL
            .iter()
            .zip(p.status_counts.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (s.as_str().to_owned(), *n))
            .collect();
        Ok(StoreStats {
            instances_by_status,
            queue_ready: p.queue_len.saturating_sub(p.queue_leased),
            queue_leased: p.queue_leased,
            dlq: p.dlq,
        })
    }

    async fn cleanup(&self, older_than: Timestamp) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .call(|reply| Request::Cleanup {
                    older_than,
                    limit: CLEANUP_CHUNK,
                    reply,
                })
                .await?;
            total += n;
            if n < CLEANUP_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}
