//! The preparing thread (`floxy-redb-writer`): the first stage of the store's write
//! pipeline, and the one place where the store's state changes.
//!
//! Callers send a [`Request`] over a bounded channel and await a oneshot reply. The writer
//! blocks on the channel, drains whatever else is queued (at most [`MAX_GROUP_COMMIT`]
//! requests) and *prepares* the batch: one request after the other, it runs the transition
//! functions, checks everything, updates the in-memory state (claim index, snapshot cache,
//! counters) and records the table writes as [`Ops`]. A request sees the effects of the
//! requests before it, and a request whose checks fail records nothing, so it never affects
//! the others. The prepared batch then goes to the committing thread ([`crate::commit`]),
//! which applies it in **one** write transaction, commits it and answers every caller of the
//! batch once it is durable.
//!
//! **Pipelining.** While batch `N` commits (page writes, `fsync`), the writer prepares batch
//! `N + 1` on top of the state `N` leads to. It hands `N + 1` over only once `N`'s outcome is
//! known, so at most one batch is committing and one is being prepared:
//!
//! * reads the preparation needs come from the in-memory state, or from a read transaction
//!   of the last batch known committed; every instance written by a batch not known
//!   committed is pinned in the snapshot cache ([`SnapshotCache`]), and idempotency keys and
//!   DLQ ids written by such batches are kept in small overlays, so those reads never see a
//!   stale row;
//! * the two requests that read tables the overlays do not cover (a definition, the
//!   retention scan) wait for the committing batch and run in a batch of their own;
//! * if a commit fails, the batch prepared on top of it fails too (its callers get the
//!   error, nothing of it was written) and the writer rebuilds its in-memory state from the
//!   last committed transaction. A failure while preparing (an encoding error, a read error)
//!   fails the rest of the batch the same way.

use crate::cache::{Cached, SnapshotCache};
use crate::commit::{Committer, Prepared, ToCommit};
use crate::index::QueueIndex;
use crate::layout::{
    self, Counters, DEFINITIONS, DLQ, DLQ_BY_INSTANCE, IDEMPOTENCY, INSTANCES, LIVE, META,
    META_COUNTERS, STEPS, StepRowRef, TERMINAL, decode_definition, encode, inst_key, redb_err,
};
use crate::ops::Ops;
use crate::read;
use crate::{MAX_GROUP_COMMIT, RedbOptions};
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
use redb::{Database, ReadTransaction, ReadableDatabase};
use std::any::Any;
use std::collections::{HashMap, HashSet};
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
    /// Sent by the committing thread after each commit: the next batch may go.
    Wake,
}

impl Request {
    /// Whether the request reads tables the overlays do not cover, so it must run alone,
    /// on a fully committed state.
    fn runs_alone(&self) -> bool {
        matches!(self, Self::PutDefinition { .. } | Self::Cleanup { .. })
    }
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
}

/// With a failed commit, every answer is the commit error, refusals included: a refusal
/// may rest on an earlier request of the batch (or on the failed batch it was prepared on)
/// that never became durable, and the commit error is retryable, so the caller asks again
/// and gets the answer of the state that exists.
fn settle<T>(r: Result<T, StoreError>, commit: Option<&StoreError>) -> Result<T, StoreError> {
    match commit {
        Some(e) => Err(e.clone()),
        None => r,
    }
}

impl Delivery {
    /// Answers the caller (`commit`: the error of the batch's commit, if it failed).
    pub(crate) fn send(self, commit: Option<&StoreError>) {
        // A caller that went away (dropped its future) does not care about the reply.
        match self {
            Self::Def(tx, r) => drop(tx.send(settle(r, commit))),
            Self::Create(tx, r) => drop(tx.send(settle(r, commit))),
            Self::Claim(tx, r) => drop(tx.send(settle(r, commit))),
            Self::Heartbeat(tx, r) => drop(tx.send(settle(r, commit))),
            Self::Cleanup(tx, r) => drop(tx.send(settle(r, commit))),
            Self::Update(tx, r) => {
                // A transition function's panic is the caller's own, whatever the commit did.
                let r = match (r, commit) {
                    (Err(UpdateFailure::Panic(p)), _) => Err(UpdateFailure::Panic(p)),
                    (_, Some(e)) => Err(UpdateFailure::Store(e.clone())),
                    (r, None) => r,
                };
                let _ = tx.send(r);
            }
        }
    }

    /// The delivery of a request that was not applied because of `e` (`None` for a close
    /// request, which is answered at once).
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
            Request::Wake => return None,
        })
    }
}

/// Counters of the writer threads since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Write transactions (group commits) attempted.
    pub batches: u64,
    /// Requests applied or refused in them.
    pub requests: u64,
    /// The largest batch.
    pub largest_batch: u64,
    /// Time the two writer threads spent on batches: preparing them (transition functions,
    /// checks, encoding) plus applying and committing them. The two overlap, so this can
    /// exceed the wall-clock time.
    pub busy: Duration,
    /// Of `busy`, the time spent preparing batches.
    pub preparing: Duration,
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

/// State published after every commit, for reads that need no transaction.
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

/// An error of a request: the caller's own (nothing recorded) or fatal to the batch (the
/// batch may hold part of the request's writes and must not commit).
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

/// What the writer keeps in memory, loaded from the last committed transaction: the
/// counters, the claim index and the instances that have queue items (`live`).
pub(crate) type State = (Counters, QueueIndex, HashSet<u128>);

/// Loads the [`State`] from the last committed transaction: the claim index from the step
/// rows of the live instances.
pub(crate) fn load_state(db: &Database) -> Result<State, StoreError> {
    let rtx = db.begin_read().map_err(redb_err)?;
    let meta = rtx.open_table(META).map_err(redb_err)?;
    let mut counters: Counters = match meta.get(META_COUNTERS).map_err(redb_err)? {
        Some(v) => layout::decode("counters", v.value())?,
        None => Counters::default(),
    };
    counters.status_counts.resize(InstanceStatus::ALL.len(), 0);
    let live_table = rtx.open_table(LIVE).map_err(redb_err)?;
    let steps = rtx.open_table(STEPS).map_err(redb_err)?;
    let mut index = QueueIndex::default();
    let mut live = HashSet::new();
    for row in live_table.range::<u128>(..).map_err(redb_err)? {
        let (k, _) = row.map_err(redb_err)?;
        let k = k.value();
        live.insert(k);
        for r in read::rows(&steps, InstanceId::from_u128(k))? {
            for item in r.items {
                index.load(item);
            }
        }
    }
    Ok((counters, index, live))
}

/// Reads of the last committed transaction (see the module docs for when they are valid).
struct View {
    db: Arc<Database>,
    rtx: Option<ReadTransaction>,
    /// The last batch the read transaction is known to include.
    seq: u64,
}

impl View {
    /// A read transaction that includes batch `committed` and every batch before it.
    fn txn(&mut self, committed: u64) -> Result<&ReadTransaction, StoreError> {
        if self.rtx.is_none() || self.seq < committed {
            // Release the old snapshot first: it holds pages redb could reuse.
            self.rtx = None;
            self.rtx = Some(self.db.begin_read().map_err(redb_err)?);
            self.seq = committed;
        }
        self.rtx
            .as_ref()
            .ok_or_else(|| StoreError::Backend("no read transaction".to_owned()))
    }
}

/// What a batch wrote that the overlays track, to unpin once it is committed.
#[derive(Debug, Default)]
struct Touched {
    instances: Vec<InstanceId>,
    idempotency: Vec<(String, String)>,
    dlq: Vec<u64>,
}

/// The batch being prepared.
struct Batch {
    seq: u64,
    ops: Ops,
    /// Step rows the request being prepared changed, written once each when it is done.
    rows: Vec<(InstanceId, Arc<str>)>,
    row_set: HashSet<(InstanceId, Arc<str>)>,
    deliveries: Vec<Delivery>,
    touched: Touched,
    /// Set by a failure that forbids committing the batch; later requests are refused with it.
    fatal: Option<StoreError>,
    /// The commit error of the batch this one was prepared on, once known (the in-memory
    /// state it was prepared against has been rebuilt since).
    failed_under: Option<StoreError>,
    requests: u64,
}

/// The preparing thread's state.
pub(crate) struct Writer {
    view: View,
    index: QueueIndex,
    counters: Counters,
    counters_dirty: bool,
    /// The instances the `live` table lists (those with queue items), as committed plus
    /// what prepared batches changed.
    live: HashSet<u128>,
    cache: SnapshotCache,
    /// Idempotency keys written by batches not known committed: key → (batch, instance).
    idem_overlay: HashMap<(String, String), (u64, Option<u128>)>,
    /// DLQ ids written by batches not known committed: id → (batch, exists).
    dlq_overlay: HashMap<u64, (u64, bool)>,
    /// The last batch handed to the committing thread.
    last_seq: u64,
    /// The last batch known committed.
    committed_seq: u64,
    /// The batch being committed and what it touched.
    in_flight: Option<(u64, Touched)>,
    stats: WriterStats,
    /// The size of the last batch handed over (see [`Ops::with_capacity`]).
    ops_size: (usize, usize),
    to_commit: std::sync::mpsc::Sender<ToCommit>,
    outcomes: std::sync::mpsc::Receiver<Option<StoreError>>,
    committer: Option<std::thread::JoinHandle<()>>,
    /// For the replies of batches that never reach the committing thread.
    notifier: std::sync::mpsc::Sender<(Vec<Delivery>, Option<StoreError>)>,
    published: Arc<Mutex<Published>>,
    /// Set when the in-memory state could not be rebuilt after a failure: every request
    /// then fails with this error.
    broken: Option<StoreError>,
}

impl Writer {
    /// A writer over `db` with the state loaded at open; starts the committing thread.
    pub(crate) fn new(
        db: Arc<Database>,
        options: &RedbOptions,
        (counters, index, live): State,
        published: Arc<Mutex<Published>>,
        notifier: std::sync::mpsc::Sender<(Vec<Delivery>, Option<StoreError>)>,
        wake: mpsc::WeakSender<Request>,
    ) -> std::io::Result<Self> {
        let (to_commit, commit_rx) = std::sync::mpsc::channel();
        let (outcome_tx, outcomes) = std::sync::mpsc::channel();
        let committer = Committer {
            db: db.clone(),
            durability: options.durability,
            last_flush: Instant::now(),
            unflushed: false,
            published: published.clone(),
            notifier: notifier.clone(),
            busy: Duration::ZERO,
            committing: Duration::ZERO,
        };
        let handle = std::thread::Builder::new()
            .name("floxy-redb-commit".to_owned())
            .spawn(move || committer.run(commit_rx, outcome_tx, wake))?;
        let w = Self {
            view: View {
                db,
                rtx: None,
                seq: 0,
            },
            index,
            counters,
            counters_dirty: false,
            live,
            cache: SnapshotCache::new(options.snapshot_cache_instances),
            idem_overlay: HashMap::new(),
            dlq_overlay: HashMap::new(),
            last_seq: 0,
            committed_seq: 0,
            in_flight: None,
            stats: WriterStats::default(),
            ops_size: (0, 0),
            to_commit,
            outcomes,
            committer: Some(handle),
            notifier,
            published,
            broken: None,
        };
        *w.published.lock() = w.to_publish();
        Ok(w)
    }

    fn to_publish(&self) -> Published {
        Published {
            stats: self.stats,
            next_due: self.index.next_due_by_handler(),
            queue_len: self.index.len(),
            queue_leased: self.index.leased(),
            status_counts: self.counters.status_counts.clone(),
            dlq: self.counters.dlq,
        }
    }

    /// The thread's loop, until the channel closes or a [`Request::Close`] arrives.
    ///
    /// With nothing committing, it prepares what is queued and hands it over at once. While
    /// a batch commits, it keeps preparing the requests that arrive into the next batch and
    /// hands that over as soon as the committing thread reports (a [`Request::Wake`]), so a
    /// request waits for at most one commit before its own.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut close: Option<oneshot::Sender<()>> = None;
        let mut batch = self.begin();
        loop {
            let msg = if batch.requests > 0 && self.in_flight.is_none() {
                match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        batch = self.hand_over(batch);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            } else {
                rx.blocking_recv()
            };
            let Some(msg) = msg else { break };
            match msg {
                Request::Wake => {}
                Request::Close { reply } => {
                    close = Some(reply);
                    break;
                }
                req if req.runs_alone() => {
                    // Commit what came before, wait for it, then this request on its own.
                    if batch.requests > 0 {
                        batch = self.hand_over(batch);
                    }
                    self.settle_in_flight();
                    self.prepare(&mut batch, req);
                    batch = self.hand_over(batch);
                }
                req => {
                    if batch.requests >= MAX_GROUP_COMMIT as u64 {
                        batch = self.hand_over(batch);
                    }
                    self.prepare(&mut batch, req);
                }
            }
            // The committing batch is done: the prepared one goes (or fails with it).
            if self.in_flight.is_some()
                && let Some(outcome) = self.poll_in_flight()
                && batch.requests > 0
            {
                batch.failed_under = outcome;
                batch = self.hand_over(batch);
            }
        }
        if batch.requests > 0 {
            self.finish(batch);
        }
        // Refuse what is still queued, wait for the last commit, stop the committing thread
        // (it makes relaxed commits durable), release the file.
        rx.close();
        while let Ok(req) = rx.try_recv() {
            if let Some(d) = Delivery::failed(req, &StoreError::Closed) {
                d.send(None);
            }
        }
        self.settle_in_flight();
        let _ = self.to_commit.send(ToCommit::Close);
        if let Some(h) = self.committer.take()
            && h.join().is_err()
        {
            tracing::error!("floxy-store-redb: the committing thread panicked");
        }
        let Self { view, .. } = self;
        drop(view);
        if let Some(reply) = close {
            let _ = reply.send(());
        }
    }

    /// [`Writer::finish`], then a new batch.
    fn hand_over(&mut self, batch: Batch) -> Batch {
        self.finish(batch);
        self.begin()
    }

    fn begin(&mut self) -> Batch {
        Batch {
            seq: self.last_seq + 1,
            ops: Ops::with_capacity(self.ops_size.0, self.ops_size.1),
            rows: Vec::new(),
            row_set: HashSet::new(),
            deliveries: Vec::new(),
            touched: Touched::default(),
            fatal: self.broken.clone(),
            failed_under: None,
            requests: 0,
        }
    }

    /// Prepares one request into `batch`.
    fn prepare(&mut self, batch: &mut Batch, req: Request) {
        batch.requests += 1;
        if batch.fatal.is_none() {
            // A reload that failed since the batch began leaves no state to prepare on.
            batch.fatal.clone_from(&self.broken);
        }
        if let Some(e) = &batch.fatal {
            batch.deliveries.extend(Delivery::failed(req, e));
            return;
        }
        let started = Instant::now();
        let (d, f) = self.handle(batch, req);
        batch.deliveries.extend(d);
        batch.fatal = f;
        // The request's step rows are encoded now, while the batch before commits, not when
        // this batch is handed over (the committing thread would wait for it).
        if batch.fatal.is_none()
            && let Err(e) = self.write_rows(batch)
        {
            batch.fatal = Some(e);
        }
        self.stats.preparing += started.elapsed();
    }

    /// Waits for the committing batch, if any, and settles it. Returns its commit error.
    fn settle_in_flight(&mut self) -> Option<StoreError> {
        self.in_flight.as_ref()?;
        let err = match self.outcomes.recv() {
            Ok(err) => err,
            Err(_) => Some(StoreError::Backend(
                "the redb committing thread stopped".to_owned(),
            )),
        };
        self.settle(err)
    }

    /// Settles the committing batch if its outcome is in: `Some(commit error)`, or `None`
    /// while it is still committing.
    fn poll_in_flight(&mut self) -> Option<Option<StoreError>> {
        let err = match self.outcomes.try_recv() {
            Ok(err) => err,
            Err(std::sync::mpsc::TryRecvError::Empty) => return None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(StoreError::Backend(
                "the redb committing thread stopped".to_owned(),
            )),
        };
        Some(self.settle(err))
    }

    /// The committing batch's outcome: on success its pins are released; on failure the
    /// in-memory state is rebuilt. Returns the commit error.
    fn settle(&mut self, err: Option<StoreError>) -> Option<StoreError> {
        let (seq, touched) = self.in_flight.take()?;
        match &err {
            None => {
                self.committed_seq = seq;
                for id in touched.instances {
                    self.cache.unpin(id, seq);
                }
                for k in touched.idempotency {
                    if self.idem_overlay.get(&k).is_some_and(|(s, _)| *s == seq) {
                        self.idem_overlay.remove(&k);
                    }
                }
                for d in touched.dlq {
                    if self.dlq_overlay.get(&d).is_some_and(|(s, _)| *s == seq) {
                        self.dlq_overlay.remove(&d);
                    }
                }
            }
            Some(e) => {
                tracing::error!(error = %e, "floxy-store-redb: write transaction failed");
                self.reload();
            }
        }
        err
    }

    /// Hands `batch` to the committing thread once the batch before it is committed (or
    /// fails it, if that one or its own preparation failed).
    fn finish(&mut self, mut batch: Batch) {
        self.stats.batches += 1;
        self.stats.requests += batch.requests;
        self.stats.largest_batch = self.stats.largest_batch.max(batch.requests);
        if batch.fatal.is_none() && self.counters_dirty {
            match encode("counters", &self.counters) {
                Ok(bytes) => batch.ops.meta(META_COUNTERS, &bytes),
                Err(e) => batch.fatal = Some(e),
            }
        }
        self.counters_dirty = false;
        self.stats.busy = self.stats.preparing;
        // The batch was prepared on top of the committing one: it can go only if that
        // one is durable.
        let before = self.settle_in_flight().or(batch.failed_under.take());
        let err = match (before, batch.fatal.take()) {
            (Some(e), _) => Some(e),
            (None, Some(e)) => {
                // The batch's writes stay unwritten; rebuild what its preparation changed.
                tracing::error!(error = %e, "floxy-store-redb: batch failed before its commit");
                self.reload();
                Some(e)
            }
            (None, None) => None,
        };
        if let Some(e) = err {
            let _ = self.notifier.send((batch.deliveries, Some(e)));
            return;
        }
        self.last_seq = batch.seq;
        self.ops_size = batch.ops.size();
        let prepared = Prepared {
            ops: batch.ops,
            deliveries: batch.deliveries,
            published: self.to_publish(),
        };
        match self.to_commit.send(ToCommit::Batch(Box::new(prepared))) {
            Ok(()) => self.in_flight = Some((batch.seq, batch.touched)),
            Err(std::sync::mpsc::SendError(msg)) => {
                let e = StoreError::Backend("the redb committing thread stopped".to_owned());
                if let ToCommit::Batch(p) = msg {
                    let _ = self.notifier.send((p.deliveries, Some(e.clone())));
                }
                self.broken = Some(e);
            }
        }
    }

    /// Rebuilds the in-memory state from the last committed transaction (nothing is being
    /// committed when this runs).
    fn reload(&mut self) {
        self.cache.clear();
        self.idem_overlay.clear();
        self.dlq_overlay.clear();
        self.view.rtx = None;
        self.counters_dirty = false;
        match load_state(&self.view.db) {
            Ok((counters, index, live)) => {
                self.live = live;
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
        let mut p = self.to_publish();
        let mut published = self.published.lock();
        // The committing thread's share of the time, as it last published it.
        p.stats.busy = published.stats.busy.max(p.stats.busy);
        p.stats.committing = published.stats.committing;
        *published = p;
    }

    /// Handles one request; returns its delivery and, if it failed fatally, the error.
    fn handle(&mut self, b: &mut Batch, req: Request) -> (Option<Delivery>, Option<StoreError>) {
        fn split<T>(r: Result<T, Fail>) -> (Result<T, StoreError>, Option<StoreError>) {
            match r {
                Ok(v) => (Ok(v), None),
                Err(Fail::Caller(e)) => (Err(e), None),
                Err(Fail::Fatal(e)) => (Err(e.clone()), Some(e)),
            }
        }
        match req {
            Request::PutDefinition { def, reply } => {
                let (r, f) = split(self.put_definition(b, &def));
                (Some(Delivery::Def(reply, r)), f)
            }
            Request::Create { t: tr, reply } => {
                let (r, f) = split(self.create(b, *tr));
                (Some(Delivery::Create(reply, r)), f)
            }
            Request::Update {
                id,
                f,
                eager,
                reply,
            } => {
                let (r, f) = match self.update(b, id, f, eager.as_deref()) {
                    Ok(tr) => (Ok(tr), None),
                    Err(UpdateFail::Panic(p)) => (Err(UpdateFailure::Panic(p)), None),
                    Err(UpdateFail::Fail(Fail::Caller(e))) => (Err(UpdateFailure::Store(e)), None),
                    Err(UpdateFail::Fail(Fail::Fatal(e))) => {
                        (Err(UpdateFailure::Store(e.clone())), Some(e))
                    }
                };
                (Some(Delivery::Update(reply, r)), f)
            }
            Request::Claim { req, reply } => {
                let (r, f) = split(self.claim(b, &req));
                (Some(Delivery::Claim(reply, r)), f)
            }
            Request::Heartbeat {
                owner,
                leases,
                now,
                reply,
            } => {
                let (r, f) = split(self.heartbeat(b, &owner, &leases, now));
                (Some(Delivery::Heartbeat(reply, r)), f)
            }
            Request::Cleanup {
                older_than,
                limit,
                reply,
            } => {
                let (r, f) = split(self.cleanup(b, older_than, limit));
                (Some(Delivery::Cleanup(reply, r)), f)
            }
            Request::Close { reply } => {
                // `run` takes close requests out first; answer anyway.
                let _ = reply.send(());
                (None, None)
            }
            Request::Wake => (None, None),
        }
    }

    // ----- reads -----------------------------------------------------------------------------

    /// The snapshot of `id` as the batch sees it, taken out of the cache (with its pin) or
    /// read from the last committed transaction (pin 0). The caller puts it back with
    /// [`SnapshotCache::put`].
    fn take_snapshot(
        &mut self,
        id: InstanceId,
    ) -> Result<Option<(InstanceSnapshot, u64)>, StoreError> {
        match self.cache.take(id) {
            Some((Some(s), pin)) => Ok(Some((s, pin))),
            Some((None, pin)) => {
                self.cache.tombstone(id, pin);
                Ok(None)
            }
            None => Ok(self.read_snapshot(id)?.map(|s| (s, 0))),
        }
    }

    /// Reads the snapshot of an instance no pending batch wrote.
    fn read_snapshot(&mut self, id: InstanceId) -> Result<Option<InstanceSnapshot>, StoreError> {
        read::snapshot_in(self.view.txn(self.committed_seq)?, id)
    }

    /// Whether instance `id` exists.
    fn instance_exists(&mut self, id: InstanceId) -> Result<bool, StoreError> {
        match self.cache.get(id) {
            Cached::Live(_) => Ok(true),
            Cached::Gone => Ok(false),
            Cached::Miss => {
                let rtx = self.view.txn(self.committed_seq)?;
                let t = rtx.open_table(INSTANCES).map_err(redb_err)?;
                Ok(t.get(inst_key(id)).map_err(redb_err)?.is_some())
            }
        }
    }

    /// The instance an idempotency key maps to.
    fn idempotency(&mut self, workflow: &str, key: &str) -> Result<Option<u128>, StoreError> {
        // The overlay is keyed by owned strings; this lookup allocates only on this
        // (rare) path: transitions whose key does not change skip it.
        if let Some((_, v)) = self
            .idem_overlay
            .get(&(workflow.to_owned(), key.to_owned()))
        {
            return Ok(*v);
        }
        let rtx = self.view.txn(self.committed_seq)?;
        let t = rtx.open_table(IDEMPOTENCY).map_err(redb_err)?;
        Ok(t.get((workflow, key)).map_err(redb_err)?.map(|v| v.value()))
    }

    /// Whether DLQ record `id` exists.
    fn dlq_exists(&mut self, id: u64) -> Result<bool, StoreError> {
        if let Some((_, exists)) = self.dlq_overlay.get(&id) {
            return Ok(*exists);
        }
        let rtx = self.view.txn(self.committed_seq)?;
        let t = rtx.open_table(DLQ).map_err(redb_err)?;
        Ok(t.get(id).map_err(redb_err)?.is_some())
    }

    // ----- overlay-tracked writes ------------------------------------------------------------

    fn write_idempotency(&mut self, b: &mut Batch, workflow: &str, key: &str, v: Option<u128>) {
        b.ops.idempotency(workflow, key, v);
        let k = (workflow.to_owned(), key.to_owned());
        self.idem_overlay.insert(k.clone(), (b.seq, v));
        b.touched.idempotency.push(k);
    }

    fn write_dlq_exists(&mut self, b: &mut Batch, id: u64, exists: bool) {
        self.dlq_overlay.insert(id, (b.seq, exists));
        b.touched.dlq.push(id);
    }

    /// Puts `snap` back into the cache pinned to this batch (it wrote it).
    fn keep_written(&mut self, b: &mut Batch, snap: InstanceSnapshot) {
        b.touched.instances.push(snap.instance.id);
        self.cache.put(snap, b.seq);
    }

    /// Records that the step row `(id, step)` changed in this batch.
    fn mark_row(b: &mut Batch, id: InstanceId, step: &Arc<str>) {
        let key = (id, step.clone());
        if !b.row_set.contains(&key) {
            b.row_set.insert(key.clone());
            b.rows.push(key);
        }
    }

    /// Writes the step rows the last request changed, once each, from the state it leads to
    /// (the run from the instance's snapshot, the items from the claim index), and the `live`
    /// entries of the instances whose items came or went.
    fn write_rows(&mut self, b: &mut Batch) -> Result<(), StoreError> {
        let rows = std::mem::take(&mut b.rows);
        let mut instances: Vec<InstanceId> = Vec::new();
        for (id, step) in &rows {
            if instances.last() != Some(id) {
                instances.push(*id);
            }
            // The run: from the snapshot (every instance a batch wrote is pinned in the
            // cache), else — a heartbeat only touched the item — from the last commit.
            let read_run;
            let run = match self.cache.get(*id) {
                Cached::Live(s) => s.steps.iter().find(|r| r.step == *step),
                Cached::Gone => continue,
                Cached::Miss => {
                    let rtx = self.view.txn(self.committed_seq)?;
                    let t = rtx.open_table(STEPS).map_err(redb_err)?;
                    read_run = read::row(&t, *id, step)?.and_then(|r| r.run);
                    read_run.as_ref()
                }
            };
            // In `WorkKind` order, as `StepRow` keeps them.
            let mut items = Vec::with_capacity(1);
            for kind in [WorkKind::Execute, WorkKind::Compensate, WorkKind::Timer] {
                let key = QueueKey {
                    instance_id: *id,
                    step: step.clone(),
                    kind,
                };
                if let Some(item) = self.index.get(&key) {
                    items.push(item);
                }
            }
            let k = inst_key(*id);
            if run.is_none() && items.is_empty() {
                b.ops.remove_step(k, step);
            } else {
                b.ops.step(k, step, &StepRowRef { run, items })?;
            }
        }
        instances.dedup();
        for id in instances {
            let k = inst_key(id);
            let has = self.index.has_items(id);
            if has != self.live.contains(&k) {
                b.ops.live(k, has);
                if has {
                    self.live.insert(k);
                } else {
                    self.live.remove(&k);
                }
            }
        }
        b.row_set.clear();
        Ok(())
    }

    // ----- definitions ---------------------------------------------------------------------

    fn put_definition(
        &mut self,
        b: &mut Batch,
        def: &WorkflowDefinition,
    ) -> Result<PutDefinition, Fail> {
        // Runs alone, after every earlier batch committed: the read transaction is current.
        let id = def.id();
        let stored = {
            let rtx = self.view.txn(self.committed_seq).map_err(classify)?;
            let t = rtx.open_table(DEFINITIONS).map_err(fatal)?;
            match t.get(id.as_str()).map_err(fatal)? {
                Some(v) => Some(decode_definition(v.value()).map_err(Fail::Caller)?),
                None => None,
            }
        };
        match stored {
            Some(s) if s == *def => Ok(PutDefinition::Unchanged),
            Some(_) => Err(Fail::Caller(StoreError::DefinitionConflict(id))),
            None => {
                let bytes = layout::encode_definition(def).map_err(Fail::Caller)?;
                b.ops.definition(id.as_str(), &bytes);
                Ok(PutDefinition::Created)
            }
        }
    }

    // ----- transitions ---------------------------------------------------------------------

    fn create(&mut self, b: &mut Batch, mut tr: Transition) -> Result<CreateOutcome, Fail> {
        let id = tr.instance.id;
        if !tr.create {
            return Err(Fail::Caller(StoreError::Conflict(format!(
                "create_instance of {id} with a transition that does not create"
            ))));
        }
        if let Some(key) = &tr.instance.idempotency_key
            && let Some(existing) = self
                .idempotency(tr.instance.workflow_id.as_str(), key)
                .map_err(classify)?
        {
            return Ok(CreateOutcome::Existing(InstanceId::from_u128(existing)));
        }
        if self.instance_exists(id).map_err(classify)? {
            return Err(Fail::Caller(StoreError::Conflict(format!(
                "instance {id} already exists"
            ))));
        }
        self.check(None, &tr)?;
        unlease_upserts(&mut tr);
        let mut snap = InstanceSnapshot {
            instance: tr.instance.clone(),
            steps: Vec::with_capacity(tr.steps.len()),
            dlq: Vec::new(),
        };
        self.apply(b, None, &tr, &mut snap).map_err(Fail::Fatal)?;
        self.keep_written(b, snap);
        Ok(CreateOutcome::Created(id))
    }

    fn update(
        &mut self,
        b: &mut Batch,
        id: InstanceId,
        f: TransitionFn,
        eager: Option<&EagerClaim>,
    ) -> Result<(Transition, Vec<ClaimedItem>), UpdateFail> {
        let (mut snap, pin) = match self.take_snapshot(id) {
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
                self.cache.put(snap, pin);
                return Err(UpdateFail::Fail(Fail::Caller(StoreError::Rejected(e))));
            }
            Err(panic) => {
                self.cache.put(snap, pin);
                return Err(UpdateFail::Panic(panic));
            }
        };
        if tr.instance.id != id {
            self.cache.put(snap, pin);
            return Err(UpdateFail::Fail(Fail::Caller(StoreError::Conflict(
                format!("transition for instance {} applied to {id}", tr.instance.id),
            ))));
        }
        if let Err(e) = self.check(Some(&snap), &tr) {
            self.cache.put(snap, pin);
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
        self.apply(b, Some(&old), &tr, &mut snap)
            .map_err(|e| UpdateFail::Fail(Fail::Fatal(e)))?;
        self.keep_written(b, snap);
        Ok((tr, claimed))
    }

    /// Every check of a transition, before anything is recorded (`current` is `None` when
    /// creating).
    fn check(&mut self, current: Option<&InstanceSnapshot>, tr: &Transition) -> Result<(), Fail> {
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
            if !own && self.dlq_exists(d.0).map_err(classify)? {
                return Err(conflict(format!(
                    "DLQ record {d} does not belong to instance {id}"
                )));
            }
        }
        // 5. The idempotency key stays unique (unchanged keys are known to be this
        // instance's).
        if let Some(key) = &tr.instance.idempotency_key {
            let unchanged = current.is_some_and(|s| {
                s.instance.idempotency_key.as_ref() == Some(key)
                    && s.instance.workflow_id == tr.instance.workflow_id
            });
            if !unchanged
                && let Some(other) = self
                    .idempotency(tr.instance.workflow_id.as_str(), key)
                    .map_err(classify)?
            {
                let other = InstanceId::from_u128(other);
                if other != id {
                    return Err(conflict(format!(
                        "idempotency key {key:?} of {} is used by instance {other}",
                        tr.instance.workflow_id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Records a checked transition and applies it to the in-memory state and to `snap` (the
    /// instance's snapshot, whose record is already the new one). Any error leaves the batch
    /// partly recorded: the caller fails the batch.
    fn apply(
        &mut self,
        b: &mut Batch,
        old: Option<&InstanceRecord>,
        tr: &Transition,
        snap: &mut InstanceSnapshot,
    ) -> Result<(), StoreError> {
        let r = &tr.instance;
        let k = inst_key(r.id);
        b.ops.instance(k, r)?;
        // Status counts and the terminal index.
        if let Some(o) = old {
            if let Some(c) = self.counters.status_counts.get_mut(status_index(o.status)) {
                *c = c.saturating_sub(1);
            }
            if o.status.is_terminal() {
                b.ops.terminal(o.updated_at.as_millis(), k, false);
            }
        }
        if let Some(c) = self.counters.status_counts.get_mut(status_index(r.status)) {
            *c += 1;
        }
        if r.status.is_terminal() {
            b.ops.terminal(r.updated_at.as_millis(), k, true);
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
            if let Some((o, key)) = old_key
                && self.idempotency(o.workflow_id.as_str(), key)? == Some(k)
            {
                self.write_idempotency(b, o.workflow_id.as_str(), key, None);
            }
            if let Some(key) = &r.idempotency_key {
                self.write_idempotency(b, r.workflow_id.as_str(), key, Some(k));
            }
        }
        // Step runs (the snapshot keeps them in name order, like the table).
        for w in &tr.steps {
            Self::mark_row(b, r.id, &w.run.step);
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
                    Self::mark_row(b, r.id, &item.key.step);
                    self.index.upsert(item.clone());
                }
                QueueOp::Delete(key) => {
                    if self.index.remove(key) {
                        Self::mark_row(b, r.id, &key.step);
                    }
                }
                QueueOp::RequestCancel(key) => {
                    if self.index.request_cancel(key).is_some() {
                        Self::mark_row(b, r.id, &key.step);
                    }
                }
            }
        }
        // Events.
        // One row holds the transition's events (consecutive sequence numbers).
        if !tr.events.is_empty() {
            let first = self.counters.last_seq + 1;
            let mut events = Vec::with_capacity(tr.events.len());
            for ev in &tr.events {
                self.counters.last_seq += 1;
                events.push(Event {
                    seq: self.counters.last_seq,
                    instance_id: r.id,
                    at: tr.now,
                    kind: ev.kind,
                    step: ev.step.clone(),
                    attempt: ev.attempt,
                    detail: ev.detail.clone(),
                });
            }
            b.ops.events(k, first, &events)?;
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
            b.ops.dlq(id.0, &d)?;
            b.ops.dlq_by_instance(k, id.0, true);
            self.write_dlq_exists(b, id.0, true);
            self.counters.dlq += 1;
            snap.dlq.push(d);
        }
        for d in &tr.dlq_delete {
            // Unknown ids are ignored; a record of another instance was refused by `check`.
            if snap.dlq.iter().any(|x| x.id == *d) {
                b.ops.remove_dlq(d.0);
                b.ops.dlq_by_instance(k, d.0, false);
                self.write_dlq_exists(b, d.0, false);
                self.counters.dlq = self.counters.dlq.saturating_sub(1);
                snap.dlq.retain(|x| x.id != *d);
            }
        }
        Ok(())
    }

    // ----- claims and leases ---------------------------------------------------------------

    fn claim(&mut self, b: &mut Batch, req: &ClaimRequest) -> Result<Vec<ClaimedItem>, Fail> {
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
                Cached::Live(s) => has_run(s),
                Cached::Gone => false,
                Cached::Miss => {
                    let snap = self.read_snapshot(key.instance_id).map_err(classify)?;
                    let exists = snap.as_ref().is_some_and(has_run);
                    if let Some(s) = snap {
                        self.cache.put(s, 0);
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
        // From here on every error is fatal: the batch holds this claim's writes.
        let mut out = Vec::with_capacity(cands.len());
        for key in cands {
            let k = inst_key(key.instance_id);
            let Some((mut snap, pin)) = self.take_snapshot(key.instance_id).map_err(Fail::Fatal)?
            else {
                continue;
            };
            self.counters.last_token += 1;
            self.counters_dirty = true;
            let token = floxy_core::model::FencingToken(self.counters.last_token);
            let Some((item, previous_lease_expired)) =
                self.index.lease(&key, &req.owner, token, now)
            else {
                self.cache.put(snap, pin);
                continue;
            };
            let item = item.clone();
            Self::mark_row(b, key.instance_id, &key.step);
            let Some(run) = snap.steps.iter_mut().find(|r| r.step == key.step) else {
                self.cache.put(snap, pin);
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
                b.ops
                    .events(k, seq, std::slice::from_ref(&e))
                    .map_err(Fail::Fatal)?;
                let run = run.clone();
                self.keep_written(b, snap);
                out.push(ClaimedItem {
                    item,
                    previous_lease_expired,
                    run,
                });
            } else {
                let run = run.clone();
                self.cache.put(snap, pin);
                out.push(ClaimedItem {
                    item,
                    previous_lease_expired,
                    run,
                });
            }
        }
        Ok(out)
    }

    fn heartbeat(
        &mut self,
        b: &mut Batch,
        owner: &str,
        leases: &[LeaseRef],
        now: Timestamp,
    ) -> Result<Vec<LeaseState>, Fail> {
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            match self.index.heartbeat(owner, &l.key, l.token, now) {
                Some((item, expires_at)) => {
                    let cancel_requested = item.cancel_requested;
                    Self::mark_row(b, l.key.instance_id, &l.key.step);
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

    fn cleanup(&mut self, b: &mut Batch, older_than: Timestamp, limit: usize) -> Result<u64, Fail> {
        // Runs alone, after every earlier batch committed: the read transaction is current.
        let mut victims: Vec<(i64, u128)> = Vec::new();
        {
            let rtx = self.view.txn(self.committed_seq).map_err(classify)?;
            let terminal = rtx.open_table(TERMINAL).map_err(fatal)?;
            for row in terminal
                .range::<(i64, u128)>(..(older_than.as_millis(), 0_u128))
                .map_err(fatal)?
            {
                if victims.len() >= limit {
                    break;
                }
                let (key, _) = row.map_err(fatal)?;
                victims.push(key.value());
            }
        }
        // From here on every error is fatal: the batch holds partial removals.
        let mut removed = 0;
        for (ts, k) in victims {
            self.remove_instance(b, ts, k).map_err(Fail::Fatal)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn remove_instance(&mut self, b: &mut Batch, ts: i64, k: u128) -> Result<(), StoreError> {
        b.ops.terminal(ts, k, false);
        let id = InstanceId::from_u128(k);
        let rtx = self.view.txn(self.committed_seq)?;
        let Some(rec) = read::instance(&rtx.open_table(INSTANCES).map_err(redb_err)?, id)? else {
            return Ok(());
        };
        let rows = read::rows(&rtx.open_table(STEPS).map_err(redb_err)?, id)?;
        let dlq_ids = read::dlq_ids(&rtx.open_table(DLQ_BY_INSTANCE).map_err(redb_err)?, id)?;
        let dlq = rtx.open_table(DLQ).map_err(redb_err)?;
        let mut dlq_present = Vec::with_capacity(dlq_ids.len());
        for d in dlq_ids {
            dlq_present.push((d, dlq.get(d.0).map_err(redb_err)?.is_some()));
        }
        drop(dlq);
        b.ops.remove_instance(k);
        self.cache.tombstone(id, b.seq);
        b.touched.instances.push(id);
        if let Some(c) = self
            .counters
            .status_counts
            .get_mut(status_index(rec.status))
        {
            *c = c.saturating_sub(1);
        }
        self.counters_dirty = true;
        if let Some(key) = &rec.idempotency_key
            && self.idempotency(rec.workflow_id.as_str(), key)? == Some(k)
        {
            self.write_idempotency(b, rec.workflow_id.as_str(), key, None);
        }
        for row in rows {
            let step = row
                .run
                .as_ref()
                .map(|r| r.step.clone())
                .or_else(|| row.items.first().map(|i| i.key.step.clone()));
            if let Some(step) = step {
                b.ops.remove_step(k, &step);
            }
            for item in row.items {
                self.index.remove(&item.key);
            }
        }
        if self.live.remove(&k) {
            b.ops.live(k, false);
        }
        b.ops.remove_events(k);
        for (d, present) in dlq_present {
            if present {
                b.ops.remove_dlq(d.0);
                self.write_dlq_exists(b, d.0, false);
                self.counters.dlq = self.counters.dlq.saturating_sub(1);
            }
            b.ops.dlq_by_instance(k, d.0, false);
        }
        Ok(())
    }
}

fn fatal(e: impl Into<redb::Error>) -> Fail {
    Fail::Fatal(redb_err(e))
}

/// Why an update failed inside the writer.
enum UpdateFail {
    Fail(Fail),
    Panic(Box<dyn Any + Send>),
}
