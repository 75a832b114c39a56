//! The writer thread: every write of the store, applied in group commits.
//!
//! Callers send a [`Request`] over a bounded channel and await a oneshot reply. The writer
//! blocks on the channel, drains whatever else is queued (at most [`MAX_GROUP_COMMIT`]
//! requests), applies the requests one after the other inside **one** redb write
//! transaction, commits it, and only then answers every caller of the batch. A request sees
//! the writes of the requests before it in the same batch (they read through the same
//! transaction and the same in-memory claim index), and a request whose checks fail writes
//! nothing, so it never affects the others. A redb failure while applying or committing fails
//! the whole batch: every caller whose request would have been applied gets the error, and the
//! writer rebuilds its in-memory state from the last committed transaction.

use crate::cache::SnapshotCache;
use crate::index::QueueIndex;
use crate::layout::{
    self, Counters, DEFINITIONS, DLQ, DLQ_BY_INSTANCE, EVENTS, IDEMPOTENCY, INSTANCES, META,
    META_COUNTERS, QUEUE, STEPS, TERMINAL, decode_definition, decode_instance, decode_item, encode,
    inst_key, queue_key, redb_err,
};
use crate::read::{self, SnapshotTables};
use crate::{Durability, MAX_GROUP_COMMIT};
use floxy_core::eager::{EagerClaim, lease_eagerly, unlease_upserts};
use floxy_core::model::{
    DlqId, DlqRecord, Event, EventKind, InstanceId, InstanceRecord, InstanceSnapshot,
    InstanceStatus, QueueKey, QueueOp, StepStatus, Timestamp, Transition, WorkKind,
    WorkflowDefinition,
};
use floxy_core::store::{
    ClaimRequest, ClaimedItem, CreateOutcome, LeaseRef, LeaseState, MAX_CLAIM_BATCH, PutDefinition,
    StoreError, TransitionFn,
};
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A reply channel.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Why an update failed: a store error, or the transition function panicked (the caller
/// resumes the panic, as it would have with a store that runs the function on its task).
pub(crate) enum UpdateFailure {
    /// A store error.
    Store(StoreError),
    /// The payload of the transition function's panic.
    Panic(Box<dyn Any + Send>),
}

/// One write request.
pub(crate) enum Request {
    /// [`floxy_core::store::Store::put_definition`].
    PutDefinition {
        def: Box<WorkflowDefinition>,
        reply: Reply<PutDefinition>,
    },
    /// [`floxy_core::store::Store::create_instance`].
    Create {
        t: Box<Transition>,
        reply: Reply<CreateOutcome>,
    },
    /// [`floxy_core::store::Store::update_instance`].
    Update {
        id: InstanceId,
        f: TransitionFn,
        /// Work of the transition to lease to the caller in the same commit
        /// ([`floxy_core::store::Store::update_instance_eager`]).
        eager: Option<Box<EagerClaim>>,
        reply: oneshot::Sender<Result<(Transition, Vec<ClaimedItem>), UpdateFailure>>,
    },
    /// [`floxy_core::store::Store::claim`].
    Claim {
        req: ClaimRequest,
        reply: Reply<Vec<ClaimedItem>>,
    },
    /// [`floxy_core::store::Store::heartbeat`].
    Heartbeat {
        owner: Arc<str>,
        leases: Vec<LeaseRef>,
        now: Timestamp,
        reply: Reply<Vec<LeaseState>>,
    },
    /// One chunk of [`floxy_core::store::Store::cleanup`].
    Cleanup {
        older_than: Timestamp,
        limit: usize,
        reply: Reply<u64>,
    },
    /// Flush (a durable commit in relaxed mode), stop and release the file.
    Close { reply: oneshot::Sender<()> },
}

/// A computed reply, sent once the batch's transaction has committed.
// The update variant carries the applied `Transition` by value: boxing it would cost an
// allocation per update to save stack in a vector that lives for one batch.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Delivery {
    Def(Reply<PutDefinition>, Result<PutDefinition, StoreError>),
    Create(Reply<CreateOutcome>, Result<CreateOutcome, StoreError>),
    Update(
        oneshot::Sender<Result<(Transition, Vec<ClaimedItem>), UpdateFailure>>,
        Result<(Transition, Vec<ClaimedItem>), UpdateFailure>,
    ),
    Claim(
        Reply<Vec<ClaimedItem>>,
        Result<Vec<ClaimedItem>, StoreError>,
    ),
    Heartbeat(Reply<Vec<LeaseState>>, Result<Vec<LeaseState>, StoreError>),
    Cleanup(Reply<u64>, Result<u64, StoreError>),
    Nothing,
}

/// With a failed commit, a successful result becomes the commit error; a refused request
/// keeps its own error (it wrote nothing either way).
fn settle<T>(r: Result<T, StoreError>, commit: Option<&StoreError>) -> Result<T, StoreError> {
    match (r, commit) {
        (Ok(_), Some(e)) => Err(e.clone()),
        (r, _) => r,
    }
}

impl Delivery {
    fn send(self, commit: Option<&StoreError>) {
        // A caller that went away (dropped its future) does not care about the reply.
        match self {
            Self::Def(tx, r) => drop(tx.send(settle(r, commit))),
            Self::Create(tx, r) => drop(tx.send(settle(r, commit))),
            Self::Claim(tx, r) => drop(tx.send(settle(r, commit))),
            Self::Heartbeat(tx, r) => drop(tx.send(settle(r, commit))),
            Self::Cleanup(tx, r) => drop(tx.send(settle(r, commit))),
            Self::Nothing => {}
            Self::Update(tx, r) => {
                let r = match (r, commit) {
                    (Ok(_), Some(e)) => Err(UpdateFailure::Store(e.clone())),
                    (r, _) => r,
                };
                let _ = tx.send(r);
            }
        }
    }

    /// The delivery of a request that was not applied because of `e`.
    fn failed(req: Request, e: &StoreError) -> Option<Self> {
        Some(match req {
            Request::PutDefinition { reply, .. } => Self::Def(reply, Err(e.clone())),
            Request::Create { reply, .. } => Self::Create(reply, Err(e.clone())),
            Request::Update { reply, .. } => {
                Self::Update(reply, Err(UpdateFailure::Store(e.clone())))
            }
            Request::Claim { reply, .. } => Self::Claim(reply, Err(e.clone())),
            Request::Heartbeat { reply, .. } => Self::Heartbeat(reply, Err(e.clone())),
            Request::Cleanup { reply, .. } => Self::Cleanup(reply, Err(e.clone())),
            Request::Close { reply } => {
                let _ = reply.send(());
                return None;
            }
        })
    }
}

/// Counters of the writer thread since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Write transactions (group commits) attempted.
    pub batches: u64,
    /// Requests applied or refused in them.
    pub requests: u64,
    /// The largest batch.
    pub largest_batch: u64,
    /// Time spent applying and committing batches (the rest of the time the writer waited
    /// for requests).
    pub busy: Duration,
    /// Of `busy`, the time spent in redb's commit (page writes and `fsync`).
    pub committing: Duration,
}

impl WriterStats {
    /// Average number of requests per group commit.
    #[must_use]
    pub fn average_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.requests as f64 / self.batches as f64
        }
    }
}

/// Sends the replies of each committed batch (runs on its own thread).
pub(crate) fn notify(rx: std::sync::mpsc::Receiver<(Vec<Delivery>, Option<StoreError>)>) {
    while let Ok((deliveries, commit_err)) = rx.recv() {
        for d in deliveries {
            d.send(commit_err.as_ref());
        }
    }
}

/// State the writer publishes after every commit, for reads that need no transaction.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// Writer counters.
    pub(crate) stats: WriterStats,
    /// Earliest due time per handler.
    pub(crate) next_due: HashMap<Arc<str>, Timestamp>,
    /// Queue items.
    pub(crate) queue_len: u64,
    /// Leased queue items.
    pub(crate) queue_leased: u64,
    /// Instances per status (`InstanceStatus::ALL` order).
    pub(crate) status_counts: Vec<u64>,
    /// DLQ records.
    pub(crate) dlq: u64,
}

/// An error of a request: the caller's own (nothing written) or fatal to the batch (the
/// transaction may hold partial writes and must not commit).
enum Fail {
    Caller(StoreError),
    Fatal(StoreError),
}

/// Errors of reads before any write: decoding errors concern the caller only.
fn classify(e: StoreError) -> Fail {
    match e {
        StoreError::Corrupt(_) => Fail::Caller(e),
        other => Fail::Fatal(other),
    }
}

/// Encodes `v` into the reusable buffer `buf`.
fn enc<T: serde::Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    what: &str,
    v: &T,
) -> Result<(), StoreError> {
    buf.clear();
    rmp_serde::encode::write(buf, v)
        .map_err(|e| StoreError::Backend(format!("cannot encode {what}: {e}")))
}

fn fatal(e: impl Into<redb::Error>) -> Fail {
    Fail::Fatal(redb_err(e))
}

fn status_index(s: InstanceStatus) -> usize {
    InstanceStatus::ALL
        .iter()
        .position(|x| *x == s)
        .unwrap_or_default()
}

fn status_name(s: Option<StepStatus>) -> &'static str {
    s.map_or("absent", StepStatus::as_str)
}

fn op_key(op: &QueueOp) -> &QueueKey {
    match op {
        QueueOp::Upsert(item) => &item.key,
        QueueOp::Delete(key) | QueueOp::RequestCancel(key) => key,
    }
}

/// Every table, opened once per write transaction.
pub(crate) struct Tables<'t> {
    meta: Table<'t, &'static str, &'static [u8]>,
    defs: Table<'t, &'static str, &'static [u8]>,
    instances: Table<'t, u128, &'static [u8]>,
    steps: Table<'t, (u128, &'static str), &'static [u8]>,
    queue: Table<'t, (u128, &'static str, u8), &'static [u8]>,
    events: Table<'t, (u128, u64), &'static [u8]>,
    dlq: Table<'t, u64, &'static [u8]>,
    dlq_by_instance: Table<'t, (u128, u64), ()>,
    idem: Table<'t, (&'static str, &'static str), u128>,
    terminal: Table<'t, (i64, u128), ()>,
}

impl<'t> Tables<'t> {
    /// Opens (and creates, in a new file) every table.
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            meta: txn.open_table(META).map_err(redb_err)?,
            defs: txn.open_table(DEFINITIONS).map_err(redb_err)?,
            instances: txn.open_table(INSTANCES).map_err(redb_err)?,
            steps: txn.open_table(STEPS).map_err(redb_err)?,
            queue: txn.open_table(QUEUE).map_err(redb_err)?,
            events: txn.open_table(EVENTS).map_err(redb_err)?,
            dlq: txn.open_table(DLQ).map_err(redb_err)?,
            dlq_by_instance: txn.open_table(DLQ_BY_INSTANCE).map_err(redb_err)?,
            idem: txn.open_table(IDEMPOTENCY).map_err(redb_err)?,
            terminal: txn.open_table(TERMINAL).map_err(redb_err)?,
        })
    }

    fn snapshot(&self, id: InstanceId) -> Result<Option<InstanceSnapshot>, StoreError> {
        SnapshotTables {
            instances: &self.instances,
            steps: &self.steps,
            dlq_by_instance: &self.dlq_by_instance,
            dlq: &self.dlq,
        }
        .snapshot(id)
    }
}

/// Loads the counters and the claim index from the last committed transaction.
pub(crate) fn load_state(db: &Database) -> Result<(Counters, QueueIndex), StoreError> {
    let rtx = db.begin_read().map_err(redb_err)?;
    let meta = rtx.open_table(META).map_err(redb_err)?;
    let mut counters: Counters = match meta.get(META_COUNTERS).map_err(redb_err)? {
        Some(v) => layout::decode("counters", v.value())?,
        None => Counters::default(),
    };
    counters.status_counts.resize(InstanceStatus::ALL.len(), 0);
    let queue = rtx.open_table(QUEUE).map_err(redb_err)?;
    let mut index = QueueIndex::default();
    for row in queue.range::<(u128, &str, u8)>(..).map_err(redb_err)? {
        let (_, v) = row.map_err(redb_err)?;
        index.load(decode_item(v.value())?);
    }
    Ok((counters, index))
}

/// The writer thread's state.
pub(crate) struct Writer {
    db: Arc<Database>,
    durability: Durability,
    last_flush: Instant,
    index: QueueIndex,
    counters: Counters,
    counters_dirty: bool,
    cache: SnapshotCache,
    buf: Vec<u8>,
    stats: WriterStats,
    /// Sends the replies of committed batches, so the writer starts the next batch at once.
    notifier: std::sync::mpsc::Sender<(Vec<Delivery>, Option<StoreError>)>,
    published: Arc<Mutex<Published>>,
    /// Set when the in-memory state could not be rebuilt after a failed commit: every
    /// request then fails with this error.
    broken: Option<StoreError>,
}

impl Writer {
    /// A writer over `db` with the state loaded at open.
    pub(crate) fn new(
        db: Arc<Database>,
        durability: Durability,
        counters: Counters,
        index: QueueIndex,
        published: Arc<Mutex<Published>>,
        cache_instances: usize,
        notifier: std::sync::mpsc::Sender<(Vec<Delivery>, Option<StoreError>)>,
    ) -> Self {
        let w = Self {
            db,
            durability,
            last_flush: Instant::now(),
            index,
            counters,
            counters_dirty: false,
            cache: SnapshotCache::new(cache_instances),
            buf: Vec::with_capacity(4096),
            stats: WriterStats::default(),
            notifier,
            published,
            broken: None,
        };
        w.publish();
        w
    }

    fn publish(&self) {
        let p = Published {
            stats: self.stats,
            next_due: self.index.next_due_by_handler(),
            queue_len: self.index.len(),
            queue_leased: self.index.leased(),
            status_counts: self.counters.status_counts.clone(),
            dlq: self.counters.dlq,
        };
        *self.published.lock() = p;
    }

    /// The thread's loop: one group commit per wake-up until the channel closes or a
    /// [`Request::Close`] arrives.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch: Vec<Request> = Vec::with_capacity(MAX_GROUP_COMMIT);
        let mut close: Option<oneshot::Sender<()>> = None;
        while close.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            batch.push(first);
            while batch.len() < MAX_GROUP_COMMIT {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            self.stats.batches += 1;
            self.stats.requests += batch.len() as u64;
            self.stats.largest_batch = self.stats.largest_batch.max(batch.len() as u64);
            close = self.commit_batch(&mut batch);
            self.stats.busy += started.elapsed();
        }
        // Refuse what is still queued, make relaxed commits durable, release the file.
        rx.close();
        while let Ok(req) = rx.try_recv() {
            if let Some(d) = Delivery::failed(req, &StoreError::Closed) {
                d.send(None);
            }
        }
        if self.durability != Durability::Immediate
            && let Err(e) = self.flush()
        {
            tracing::error!(error = %e, "floxy-store-redb: final flush failed");
        }
        let Self { db, .. } = self;
        drop(db);
        if let Some(reply) = close {
            let _ = reply.send(());
        }
    }

    /// A durable empty commit (makes earlier relaxed commits durable).
    fn flush(&mut self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| StoreError::Backend(format!("redb: {e}")))?;
        txn.commit().map_err(redb_err)?;
        self.last_flush = Instant::now();
        Ok(())
    }

    fn txn_durability(&mut self) -> redb::Durability {
        match self.durability {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::Relaxed { flush_interval_ms } => {
                if self.last_flush.elapsed() >= Duration::from_millis(flush_interval_ms) {
                    self.last_flush = Instant::now();
                    redb::Durability::Immediate
                } else {
                    redb::Durability::None
                }
            }
        }
    }

    /// Applies `batch` in one transaction, commits, answers. Returns the reply channel of a
    /// close request, if the batch held one.
    fn commit_batch(&mut self, batch: &mut Vec<Request>) -> Option<oneshot::Sender<()>> {
        let mut close = None;
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(batch.len());
        if let Some(e) = self.broken.clone() {
            for req in batch.drain(..) {
                if let Request::Close { reply } = req {
                    close = Some(reply);
                } else if let Some(d) = Delivery::failed(req, &e) {
                    d.send(None);
                }
            }
            return close;
        }
        let mut fatal: Option<StoreError> = None;
        let durability = self.txn_durability();
        let txn = self.db.begin_write().map_err(redb_err).and_then(|mut txn| {
            txn.set_durability(durability)
                .map_err(|e| StoreError::Backend(format!("redb: {e}")))?;
            Ok(txn)
        });
        let txn = match txn {
            Ok(txn) => Some(txn),
            Err(e) => {
                fatal = Some(e);
                None
            }
        };
        if let Some(txn) = &txn {
            match Tables::open(txn) {
                Ok(mut tables) => {
                    for req in batch.drain(..) {
                        if let Request::Close { reply } = req {
                            close = Some(reply);
                            continue;
                        }
                        if let Some(e) = &fatal {
                            deliveries.extend(Delivery::failed(req, e));
                            continue;
                        }
                        let (d, f) = self.handle(&mut tables, req);
                        deliveries.push(d);
                        fatal = f;
                    }
                    if fatal.is_none()
                        && self.counters_dirty
                        && let Err(e) = self.write_counters(&mut tables)
                    {
                        fatal = Some(e);
                    }
                }
                Err(e) => fatal = Some(e),
            }
        }
        // Requests left when the transaction could not even start.
        for req in batch.drain(..) {
            if let Request::Close { reply } = req {
                close = Some(reply);
            } else if let Some(d) =
                Delivery::failed(req, fatal.as_ref().unwrap_or(&StoreError::Closed))
            {
                deliveries.push(d);
            }
        }
        let tc = Instant::now();
        let commit_err = match (txn, fatal) {
            (Some(txn), None) => {
                let r = txn.commit().err().map(redb_err);
                self.stats.committing += tc.elapsed();
                r
            }
            (Some(txn), Some(e)) => {
                drop(txn.abort());
                Some(e)
            }
            (None, Some(e)) => Some(e),
            (None, None) => None,
        };
        self.counters_dirty = false;
        if let Some(e) = &commit_err {
            tracing::error!(error = %e, "floxy-store-redb: write transaction failed");
            self.reload();
        }
        self.publish();
        if let Err(std::sync::mpsc::SendError((deliveries, commit_err))) =
            self.notifier.send((deliveries, commit_err))
        {
            // The notifier thread is gone (it never exits first); answer here.
            for d in deliveries {
                d.send(commit_err.as_ref());
            }
        }
        close
    }

    /// Rebuilds the in-memory state from the last committed transaction.
    fn reload(&mut self) {
        self.cache.clear();
        match load_state(&self.db) {
            Ok((counters, index)) => {
                let keep = self.counters.clone();
                self.counters = counters;
                // Never hand out a token, sequence number or DLQ id twice.
                self.counters.last_token = self.counters.last_token.max(keep.last_token);
                self.counters.last_seq = self.counters.last_seq.max(keep.last_seq);
                self.counters.last_dlq = self.counters.last_dlq.max(keep.last_dlq);
                self.counters_dirty = true;
                self.index = index;
            }
            Err(e) => {
                tracing::error!(error = %e, "floxy-store-redb: cannot reload after a failed commit");
                self.broken = Some(StoreError::Backend(format!(
                    "the store failed and must be reopened: {e}"
                )));
            }
        }
    }

    fn write_counters(&mut self, t: &mut Tables<'_>) -> Result<(), StoreError> {
        let bytes = encode("counters", &self.counters)?;
        t.meta
            .insert(META_COUNTERS, bytes.as_slice())
            .map_err(redb_err)?;
        Ok(())
    }

    /// Handles one request; returns its delivery and, if it failed fatally, the error.
    fn handle(&mut self, t: &mut Tables<'_>, req: Request) -> (Delivery, Option<StoreError>) {
        fn split<T>(r: Result<T, Fail>) -> (Result<T, StoreError>, Option<StoreError>) {
            match r {
                Ok(v) => (Ok(v), None),
                Err(Fail::Caller(e)) => (Err(e), None),
                Err(Fail::Fatal(e)) => (Err(e.clone()), Some(e)),
            }
        }
        match req {
            Request::PutDefinition { def, reply } => {
                let (r, f) = split(self.put_definition(t, &def));
                (Delivery::Def(reply, r), f)
            }
            Request::Create { t: tr, reply } => {
                let (r, f) = split(self.create(t, *tr));
                (Delivery::Create(reply, r), f)
            }
            Request::Update {
                id,
                f,
                eager,
                reply,
            } => match self.update(t, id, f, eager.as_deref()) {
                Ok(tr) => (Delivery::Update(reply, Ok(tr)), None),
                Err(UpdateFail::Panic(p)) => {
                    (Delivery::Update(reply, Err(UpdateFailure::Panic(p))), None)
                }
                Err(UpdateFail::Fail(Fail::Caller(e))) => {
                    (Delivery::Update(reply, Err(UpdateFailure::Store(e))), None)
                }
                Err(UpdateFail::Fail(Fail::Fatal(e))) => (
                    Delivery::Update(reply, Err(UpdateFailure::Store(e.clone()))),
                    Some(e),
                ),
            },
            Request::Claim { req, reply } => {
                let (r, f) = split(self.claim(t, &req));
                (Delivery::Claim(reply, r), f)
            }
            Request::Heartbeat {
                owner,
                leases,
                now,
                reply,
            } => {
                let (r, f) = split(self.heartbeat(t, &owner, &leases, now));
                (Delivery::Heartbeat(reply, r), f)
            }
            Request::Cleanup {
                older_than,
                limit,
                reply,
            } => {
                let (r, f) = split(self.cleanup(t, older_than, limit));
                (Delivery::Cleanup(reply, r), f)
            }
            Request::Close { reply } => {
                // `commit_batch` takes close requests out first; answer anyway.
                let _ = reply.send(());
                (Delivery::Nothing, None)
            }
        }
    }

    // ----- definitions ---------------------------------------------------------------------

    fn put_definition(
        &mut self,
        t: &mut Tables<'_>,
        def: &WorkflowDefinition,
    ) -> Result<PutDefinition, Fail> {
        let id = def.id();
        let stored = match t.defs.get(id.as_str()).map_err(fatal)? {
            Some(v) => Some(decode_definition(v.value()).map_err(Fail::Caller)?),
            None => None,
        };
        match stored {
            Some(s) if s == *def => Ok(PutDefinition::Unchanged),
            Some(_) => Err(Fail::Caller(StoreError::DefinitionConflict(id))),
            None => {
                let bytes = layout::encode_definition(def).map_err(Fail::Caller)?;
                t.defs
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(fatal)?;
                Ok(PutDefinition::Created)
            }
        }
    }

    // ----- transitions ---------------------------------------------------------------------

    /// The snapshot of `id`, taken out of the cache or read through the transaction. The
    /// caller puts it back with [`SnapshotCache::put`] if it is still valid.
    fn take_snapshot(
        &mut self,
        t: &Tables<'_>,
        id: InstanceId,
    ) -> Result<Option<InstanceSnapshot>, StoreError> {
        match self.cache.take(id) {
            Some(s) => Ok(Some(s)),
            None => t.snapshot(id),
        }
    }

    fn create(&mut self, t: &mut Tables<'_>, mut tr: Transition) -> Result<CreateOutcome, Fail> {
        let id = tr.instance.id;
        if !tr.create {
            return Err(Fail::Caller(StoreError::Conflict(format!(
                "create_instance of {id} with a transition that does not create"
            ))));
        }
        if let Some(key) = &tr.instance.idempotency_key
            && let Some(existing) = t
                .idem
                .get((tr.instance.workflow_id.as_str(), key.as_str()))
                .map_err(fatal)?
        {
            return Ok(CreateOutcome::Existing(InstanceId::from_u128(
                existing.value(),
            )));
        }
        if self.cache.contains(id) || t.instances.get(inst_key(id)).map_err(fatal)?.is_some() {
            return Err(Fail::Caller(StoreError::Conflict(format!(
                "instance {id} already exists"
            ))));
        }
        self.check(t, None, &tr)?;
        unlease_upserts(&mut tr);
        let mut snap = InstanceSnapshot {
            instance: tr.instance.clone(),
            steps: Vec::with_capacity(tr.steps.len()),
            dlq: Vec::new(),
        };
        self.apply(t, None, &tr, &mut snap).map_err(Fail::Fatal)?;
        self.cache.put(snap);
        Ok(CreateOutcome::Created(id))
    }

    fn update(
        &mut self,
        t: &mut Tables<'_>,
        id: InstanceId,
        f: TransitionFn,
        eager: Option<&EagerClaim>,
    ) -> Result<(Transition, Vec<ClaimedItem>), UpdateFail> {
        let mut snap = match self.take_snapshot(t, id) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(UpdateFail::Fail(Fail::Caller(StoreError::NotFound(
                    format!("instance {id}"),
                ))));
            }
            Err(e) => return Err(UpdateFail::Fail(classify(e))),
        };
        let mut tr = match std::panic::catch_unwind(AssertUnwindSafe(|| f(&snap))) {
            Ok(Ok(tr)) => tr,
            Ok(Err(e)) => {
                self.cache.put(snap);
                return Err(UpdateFail::Fail(Fail::Caller(StoreError::Rejected(e))));
            }
            Err(panic) => {
                self.cache.put(snap);
                return Err(UpdateFail::Panic(panic));
            }
        };
        if tr.instance.id != id {
            self.cache.put(snap);
            return Err(UpdateFail::Fail(Fail::Caller(StoreError::Conflict(
                format!("transition for instance {} applied to {id}", tr.instance.id),
            ))));
        }
        if let Err(e) = self.check(t, Some(&snap), &tr) {
            self.cache.put(snap);
            return Err(UpdateFail::Fail(e));
        }
        // Checked: upserts are stored unleased, but for the caller's share of the queued
        // work, leased in this same commit (tokens from the claim counter).
        unlease_upserts(&mut tr);
        let claimed = match eager {
            Some(e) => {
                let counters = &mut self.counters;
                let claimed = lease_eagerly(&mut tr, e, || {
                    counters.last_token += 1;
                    floxy_core::model::FencingToken(counters.last_token)
                });
                if !claimed.is_empty() {
                    self.counters_dirty = true;
                }
                claimed
            }
            None => Vec::new(),
        };
        let old = std::mem::replace(&mut snap.instance, tr.instance.clone());
        // On a fatal error the snapshot is dropped (the whole cache is cleared anyway).
        self.apply(t, Some(&old), &tr, &mut snap)
            .map_err(|e| UpdateFail::Fail(Fail::Fatal(e)))?;
        self.cache.put(snap);
        Ok((tr, claimed))
    }
    /// Every check of a transition, before anything is written (`current` is `None` when
    /// creating).
    fn check(
        &self,
        t: &Tables<'_>,
        current: Option<&InstanceSnapshot>,
        tr: &Transition,
    ) -> Result<(), Fail> {
        let id = tr.instance.id;
        let conflict = |msg: String| Fail::Caller(StoreError::Conflict(msg));
        // 1. Creation or version.
        if let Some(s) = current {
            if tr.create {
                return Err(conflict(format!("instance {id} already exists")));
            }
            let stored = s.instance.version;
            if stored.checked_add(1) != Some(tr.instance.version) {
                return Err(conflict(format!(
                    "instance {id}: version {} does not follow the stored version {stored}",
                    tr.instance.version
                )));
            }
        }
        // 2. Fencing.
        if let Some(lc) = &tr.lease_check {
            let token = self
                .index
                .get(&lc.key)
                .and_then(|i| i.lease.as_ref())
                .map(|l| l.token);
            if token != Some(lc.token) {
                return Err(Fail::Caller(StoreError::StaleLease {
                    instance_id: lc.key.instance_id,
                    step: lc.key.step.to_string(),
                    kind: lc.key.kind.as_str(),
                    token: lc.token,
                }));
            }
        }
        // 3. Step compare-and-set, in order.
        let mut written: HashMap<&str, StepStatus> = HashMap::new();
        for w in &tr.steps {
            if w.run.instance_id != id {
                return Err(conflict(format!(
                    "step {} of instance {} written by a transition of {id}",
                    w.run.step, w.run.instance_id
                )));
            }
            let found = match written.get(&*w.run.step) {
                Some(s) => Some(*s),
                None => current.and_then(|s| {
                    s.steps
                        .iter()
                        .find(|r| r.step == w.run.step)
                        .map(|r| r.status)
                }),
            };
            if found != w.expect {
                return Err(conflict(format!(
                    "instance {id}: step {} is {}, expected {}",
                    w.run.step,
                    status_name(found),
                    status_name(w.expect)
                )));
            }
            written.insert(&w.run.step, w.run.status);
        }
        // 4. Everything else belongs to this instance.
        if let Some(op) = tr.queue.iter().find(|op| op_key(op).instance_id != id) {
            let key = op_key(op);
            return Err(conflict(format!(
                "queue item {}/{} written by a transition of {id}",
                key.instance_id, key.step
            )));
        }
        if let Some(r) = tr.dlq_insert.iter().find(|r| r.instance_id != id) {
            return Err(conflict(format!(
                "DLQ record of {} written by a transition of {id}",
                r.instance_id
            )));
        }
        for d in &tr.dlq_delete {
            let own = current.is_some_and(|s| s.dlq.iter().any(|r| r.id == *d));
            if !own && t.dlq.get(d.0).map_err(fatal)?.is_some() {
                return Err(conflict(format!(
                    "DLQ record {d} does not belong to instance {id}"
                )));
            }
        }
        // 5. The idempotency key stays unique.
        if let Some(key) = &tr.instance.idempotency_key
            && let Some(other) = t
                .idem
                .get((tr.instance.workflow_id.as_str(), key.as_str()))
                .map_err(fatal)?
        {
            let other = InstanceId::from_u128(other.value());
            if other != id {
                return Err(conflict(format!(
                    "idempotency key {key:?} of {} is used by instance {other}",
                    tr.instance.workflow_id
                )));
            }
        }
        Ok(())
    }

    /// Applies a checked transition to the tables and to `snap` (the instance's cached
    /// snapshot, whose record is already the new one). Any error leaves the transaction
    /// partly written: the caller fails the batch.
    fn apply(
        &mut self,
        t: &mut Tables<'_>,
        old: Option<&InstanceRecord>,
        tr: &Transition,
        snap: &mut InstanceSnapshot,
    ) -> Result<(), StoreError> {
        let r = &tr.instance;
        let k = inst_key(r.id);
        enc(&mut self.buf, "instance record", r)?;
        t.instances
            .insert(k, self.buf.as_slice())
            .map_err(redb_err)?;
        // Status counts and the terminal index.
        if let Some(o) = old {
            if let Some(c) = self.counters.status_counts.get_mut(status_index(o.status)) {
                *c = c.saturating_sub(1);
            }
            if o.status.is_terminal() {
                t.terminal
                    .remove((o.updated_at.as_millis(), k))
                    .map_err(redb_err)?;
            }
        }
        if let Some(c) = self.counters.status_counts.get_mut(status_index(r.status)) {
            *c += 1;
        }
        if r.status.is_terminal() {
            t.terminal
                .insert((r.updated_at.as_millis(), k), ())
                .map_err(redb_err)?;
        }
        self.counters_dirty = true;
        // Idempotency key.
        let old_key = old.and_then(|o| o.idempotency_key.as_deref().map(|key| (o, key)));
        let same = match (old_key, &r.idempotency_key) {
            (Some((o, a)), Some(b)) => o.workflow_id == r.workflow_id && a == b,
            (None, None) => true,
            _ => false,
        };
        if !same {
            if let Some((o, key)) = old_key {
                let mine = t
                    .idem
                    .get((o.workflow_id.as_str(), key))
                    .map_err(redb_err)?
                    .is_some_and(|v| v.value() == k);
                if mine {
                    t.idem
                        .remove((o.workflow_id.as_str(), key))
                        .map_err(redb_err)?;
                }
            }
            if let Some(key) = &r.idempotency_key {
                t.idem
                    .insert((r.workflow_id.as_str(), key.as_str()), k)
                    .map_err(redb_err)?;
            }
        }
        // Step runs (the snapshot keeps them in name order, like the table).
        for w in &tr.steps {
            enc(&mut self.buf, "step run", &w.run)?;
            t.steps
                .insert((k, &*w.run.step), self.buf.as_slice())
                .map_err(redb_err)?;
            match snap.steps.binary_search_by(|s| s.step.cmp(&w.run.step)) {
                Ok(i) => {
                    if let Some(s) = snap.steps.get_mut(i) {
                        *s = w.run.clone();
                    }
                }
                Err(i) => snap.steps.insert(i, w.run.clone()),
            }
        }
        // Queue.
        for op in &tr.queue {
            match op {
                QueueOp::Upsert(item) => {
                    // Leases were settled before (`unlease_upserts`, then any eager claim).
                    let item = item.clone();
                    enc(&mut self.buf, "queue item", &item)?;
                    t.queue
                        .insert(queue_key(&item.key), self.buf.as_slice())
                        .map_err(redb_err)?;
                    self.index.upsert(item);
                }
                QueueOp::Delete(key) => {
                    if self.index.remove(key) {
                        t.queue.remove(queue_key(key)).map_err(redb_err)?;
                    }
                }
                QueueOp::RequestCancel(key) => {
                    if let Some(item) = self.index.request_cancel(key) {
                        enc(&mut self.buf, "queue item", item)?;
                        t.queue
                            .insert(queue_key(key), self.buf.as_slice())
                            .map_err(redb_err)?;
                    }
                }
            }
        }
        // Events.
        for ev in &tr.events {
            self.counters.last_seq += 1;
            let seq = self.counters.last_seq;
            let e = Event {
                seq,
                instance_id: r.id,
                at: tr.now,
                kind: ev.kind,
                step: ev.step.clone(),
                attempt: ev.attempt,
                detail: ev.detail.clone(),
            };
            enc(&mut self.buf, "event", &e)?;
            t.events
                .insert((k, seq), self.buf.as_slice())
                .map_err(redb_err)?;
        }
        // DLQ.
        for rec in &tr.dlq_insert {
            self.counters.last_dlq += 1;
            let id = DlqId(self.counters.last_dlq);
            let d = DlqRecord {
                id,
                created_at: tr.now,
                record: rec.clone(),
            };
            enc(&mut self.buf, "DLQ record", &d)?;
            t.dlq.insert(id.0, self.buf.as_slice()).map_err(redb_err)?;
            t.dlq_by_instance.insert((k, id.0), ()).map_err(redb_err)?;
            self.counters.dlq += 1;
            snap.dlq.push(d);
        }
        for d in &tr.dlq_delete {
            if t.dlq.remove(d.0).map_err(redb_err)?.is_some() {
                t.dlq_by_instance.remove((k, d.0)).map_err(redb_err)?;
                self.counters.dlq = self.counters.dlq.saturating_sub(1);
                snap.dlq.retain(|x| x.id != *d);
            }
        }
        Ok(())
    }

    // ----- claims and leases ---------------------------------------------------------------

    fn claim(&mut self, t: &mut Tables<'_>, req: &ClaimRequest) -> Result<Vec<ClaimedItem>, Fail> {
        let limit = req.limit.min(MAX_CLAIM_BATCH);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = req.now;
        let cands = self.index.candidates(&req.handlers, limit, now);
        // Every candidate must have its step run before anything changes.
        // A cached snapshot is only looked at here (taking it out and putting it back costs
        // two map updates per candidate); an uncached one is read once and cached for the
        // loop below.
        for key in &cands {
            let has_run = |s: &InstanceSnapshot| s.steps.iter().any(|r| r.step == key.step);
            let exists = match self.cache.get(key.instance_id) {
                Some(s) => has_run(s),
                None => {
                    let snap = t.snapshot(key.instance_id).map_err(classify)?;
                    let exists = snap.as_ref().is_some_and(has_run);
                    if let Some(s) = snap {
                        self.cache.put(s);
                    }
                    exists
                }
            };
            if !exists {
                return Err(Fail::Caller(StoreError::Corrupt(format!(
                    "queue item {}/{} ({}) has no step run",
                    key.instance_id,
                    key.step,
                    key.kind.as_str()
                ))));
            }
        }
        // From here on every error is fatal: the transaction holds this claim's writes.
        let mut out = Vec::with_capacity(cands.len());
        for key in cands {
            let k = inst_key(key.instance_id);
            let Some(mut snap) = self
                .take_snapshot(t, key.instance_id)
                .map_err(Fail::Fatal)?
            else {
                continue;
            };
            self.counters.last_token += 1;
            self.counters_dirty = true;
            let token = floxy_core::model::FencingToken(self.counters.last_token);
            let Some((item, previous_lease_expired)) =
                self.index.lease(&key, &req.owner, token, now)
            else {
                continue;
            };
            let item = item.clone();
            enc(&mut self.buf, "queue item", &item).map_err(Fail::Fatal)?;
            t.queue
                .insert(queue_key(&key), self.buf.as_slice())
                .map_err(fatal)?;
            let Some(run) = snap.steps.iter_mut().find(|r| r.step == key.step) else {
                self.cache.put(snap);
                continue;
            };
            if key.kind == WorkKind::Execute
                && matches!(
                    run.status,
                    StepStatus::Pending | StepStatus::Retrying | StepStatus::Running
                )
            {
                run.status = StepStatus::Running;
                run.attempts = item.attempt;
                run.started_at = Some(now);
                enc(&mut self.buf, "step run", &*run).map_err(Fail::Fatal)?;
                t.steps
                    .insert((k, &*key.step), self.buf.as_slice())
                    .map_err(fatal)?;
                self.counters.last_seq += 1;
                let seq = self.counters.last_seq;
                let e = Event {
                    seq,
                    instance_id: key.instance_id,
                    at: now,
                    kind: EventKind::StepStarted,
                    step: Some(key.step.clone()),
                    attempt: Some(item.attempt),
                    detail: None,
                };
                enc(&mut self.buf, "event", &e).map_err(Fail::Fatal)?;
                t.events
                    .insert((k, seq), self.buf.as_slice())
                    .map_err(fatal)?;
            }
            let run = run.clone();
            self.cache.put(snap);
            out.push(ClaimedItem {
                item,
                previous_lease_expired,
                run,
            });
        }
        Ok(out)
    }

    fn heartbeat(
        &mut self,
        t: &mut Tables<'_>,
        owner: &str,
        leases: &[LeaseRef],
        now: Timestamp,
    ) -> Result<Vec<LeaseState>, Fail> {
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            match self.index.heartbeat(owner, &l.key, l.token, now) {
                Some((item, expires_at)) => {
                    let cancel_requested = item.cancel_requested;
                    let bytes = encode("queue item", item).map_err(Fail::Fatal)?;
                    t.queue
                        .insert(queue_key(&l.key), bytes.as_slice())
                        .map_err(fatal)?;
                    out.push(LeaseState::Held {
                        expires_at,
                        cancel_requested,
                    });
                }
                None => out.push(LeaseState::Lost),
            }
        }
        Ok(out)
    }

    // ----- retention -----------------------------------------------------------------------

    fn cleanup(
        &mut self,
        t: &mut Tables<'_>,
        older_than: Timestamp,
        limit: usize,
    ) -> Result<u64, Fail> {
        let mut victims: Vec<(i64, u128)> = Vec::new();
        for row in t
            .terminal
            .range::<(i64, u128)>(..(older_than.as_millis(), 0_u128))
            .map_err(fatal)?
        {
            if victims.len() >= limit {
                break;
            }
            let (key, _) = row.map_err(fatal)?;
            victims.push(key.value());
        }
        // From here on every error is fatal: the transaction holds partial removals.
        let mut removed = 0;
        for (ts, k) in victims {
            self.remove_instance(t, ts, k).map_err(Fail::Fatal)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn remove_instance(&mut self, t: &mut Tables<'_>, ts: i64, k: u128) -> Result<(), StoreError> {
        t.terminal.remove((ts, k)).map_err(redb_err)?;
        let Some(bytes) = t.instances.remove(k).map_err(redb_err)? else {
            return Ok(());
        };
        let rec = decode_instance(bytes.value())?;
        drop(bytes);
        self.cache.remove(rec.id);
        if let Some(c) = self
            .counters
            .status_counts
            .get_mut(status_index(rec.status))
        {
            *c = c.saturating_sub(1);
        }
        self.counters_dirty = true;
        if let Some(key) = &rec.idempotency_key {
            let mine = t
                .idem
                .get((rec.workflow_id.as_str(), key.as_str()))
                .map_err(redb_err)?
                .is_some_and(|v| v.value() == k);
            if mine {
                t.idem
                    .remove((rec.workflow_id.as_str(), key.as_str()))
                    .map_err(redb_err)?;
            }
        }
        for run in read::steps(&t.steps, rec.id)? {
            t.steps.remove((k, &*run.step)).map_err(redb_err)?;
        }
        t.events
            .retain_in((k, 0_u64)..=(k, u64::MAX), |_, _| false)
            .map_err(redb_err)?;
        for item in read::queue(&t.queue, rec.id)? {
            self.index.remove(&item.key);
            t.queue.remove(queue_key(&item.key)).map_err(redb_err)?;
        }
        for d in read::dlq_ids(&t.dlq_by_instance, rec.id)? {
            if t.dlq.remove(d.0).map_err(redb_err)?.is_some() {
                self.counters.dlq = self.counters.dlq.saturating_sub(1);
            }
            t.dlq_by_instance.remove((k, d.0)).map_err(redb_err)?;
        }
        Ok(())
    }
}

/// Why an update failed inside the writer.
enum UpdateFail {
    Fail(Fail),
    Panic(Box<dyn Any + Send>),
}
