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
//!   last committed transaction, after reopening the database if an I/O error poisoned it
//!   ([`crate::slot`]; while that fails, every request fails retryably and the reopen is
//!   tried again, see [`REOPEN_RETRY`]). A failure while preparing (an encoding error, a read error)
//!   fails the rest of the batch the same way.
//!
//! This module holds the pipeline (batches, outcomes, reload; the hand-over protocol itself,
//! which the loom model drives, is in [`crate::handover`]); what a request does is in
//! [`transition`] (definitions, creates, updates and their checks), [`lease`] (claims,
//! heartbeats), [`retention`] (cleanup) and [`overlay`] (the reads a batch may make and the
//! step rows it writes).

mod lease;
mod overlay;
mod retention;
mod transition;

use crate::cache::{Cached, SnapshotCache};
use crate::commit::{Committer, Prepared};
use crate::fast_hash::FastSet;
use crate::handover::{self, HandOver, Prepare};
use crate::index::QueueIndex;
use crate::layout::{
    self, Counters, DEFINITIONS, DLQ, DLQ_BY_INSTANCE, IDEMPOTENCY, INSTANCES, LIVE, META,
    META_COUNTERS, STEPS, TERMINAL, decode_definition, encode, inst_key, redb_err,
};
use crate::ops::Ops;
use crate::read;
use crate::row::StepMark;
use crate::slot::{self, DbSlot, Reopen};
use crate::{MAX_GROUP_COMMIT, RedbOptions};
use floxy_core::checks;
use floxy_core::eager::{EagerClaim, lease_eagerly, unlease_upserts};
use floxy_core::model::{
    DlqId, DlqRecord, Event, InstanceId, InstanceRecord, InstanceSnapshot, InstanceStatus,
    QueueKey, QueueOp, Timestamp, Transition, WorkKind, WorkflowDefinition,
};
use floxy_core::store::{
    ClaimRequest, ClaimedItem, CreateOutcome, LeaseRef, LeaseState, MAX_CLAIM_BATCH, PutDefinition,
    StoreError, TransitionFn,
};
use parking_lot::Mutex;
use redb::{Database, ReadTransaction, ReadableDatabase};
use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
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
    /// Flush (a durable commit in relaxed mode), stop and release the file; the reply is
    /// the flush's outcome.
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
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
                // A second close while the first one runs: closing twice is a no-op.
                let _ = reply.send(Ok(()));
                return None;
            }
            Request::Wake => return None,
        })
    }
}

/// With the committing thread idle, a batch goes as soon as it holds this many requests,
/// even if more are queued: the rest is prepared while it commits.
///
/// Without it, a backlog that arrives at once (every worker answered by one commit sends its
/// next requests together) was prepared whole before anything committed: the committing thread
/// sat idle while up to [`MAX_GROUP_COMMIT`] requests were prepared, and the callers stayed in
/// lockstep, one huge batch of completions, one small batch of claims, commit after commit. In
/// alternating runs of the throughput benchmark at 64 workers (6 each) this took durable step
/// completions from 39.5 k/s to 45.0 k/s (median) and the committing thread from 76 % busy to
/// 88 %. In a first sweep 128 and 256 gained less than 512; 1 024 and 2 048 no more in a
/// second. Loads that never queue this many requests at once are not affected.
const IDLE_HAND_OVER: u64 = 512;

/// While the database is down after an I/O error, the time between two attempts to reopen it
/// (each may have to repair the file; requests in between fail at once, retryably).
const REOPEN_RETRY: Duration = Duration::from_millis(100);

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
    /// Of `busy`, the time spent in redb's commits (page writes, and the `fsync` of durable
    /// commits).
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

/// Sends the replies of each committed batch (runs on its own thread), and hands each
/// batch's emptied list back to the preparing thread for a later batch (`spare`).
///
/// A batch's list of replies holds a few hundred bytes per request: allocated anew for each
/// batch, it was one of the preparing thread's largest allocations, and glibc served each one
/// by first merging every small free chunk of the thread's heap (`malloc_consolidate`): a
/// tenth of that thread's time in `perf`.
pub(crate) fn notify(
    rx: &std::sync::mpsc::Receiver<(Vec<Delivery>, Option<StoreError>)>,
    spare: &std::sync::mpsc::Sender<Vec<Delivery>>,
) {
    while let Ok((mut deliveries, commit_err)) = rx.recv() {
        for d in deliveries.drain(..) {
            d.send(commit_err.as_ref());
        }
        // The writer may be gone (closing): the list is then just dropped.
        let _ = spare.send(deliveries);
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

/// What the writer keeps in memory, loaded from the last committed transaction: the
/// counters, the claim index and the instances that have queue items (`live`).
pub(crate) type State = (Counters, QueueIndex, FastSet<u128>);

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
    let mut live = FastSet::default();
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
/// Its read transaction is dropped as soon as a later batch commits (see the writer's
/// [`Prepare::settle`]).
struct View {
    slot: Arc<DbSlot>,
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
            self.rtx = Some(self.slot.get()?.begin_read().map_err(redb_err)?);
            self.seq = committed;
        }
        self.rtx
            .as_ref()
            .ok_or_else(|| StoreError::Backend("no read transaction".to_owned()))
    }
}

/// What a batch wrote that the overlays track, to unpin once it is committed.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    instances: Vec<InstanceId>,
    idempotency: Vec<(String, String)>,
    dlq: Vec<u64>,
}

/// A step row's key: the instance and the step.
type RowKey = (InstanceId, Arc<str>);

/// The batch being prepared.
pub(crate) struct Batch {
    seq: u64,
    ops: Ops,
    /// Step rows the request being prepared changed, written once each when it is done.
    rows: Vec<RowKey>,
    row_set: FastSet<RowKey>,
    deliveries: Vec<Delivery>,
    touched: Touched,
    /// Set by a failure that forbids committing the batch; later requests are refused with it.
    fatal: Option<StoreError>,
    /// The commit error of the batch this one was prepared on, once known (the in-memory
    /// state it was prepared against has been rebuilt since).
    failed_under: Option<StoreError>,
    requests: u64,
}

/// The preparing thread's end of the hand-over: sealed batches, and what a committing batch
/// touched (unpinned once it is committed).
pub(crate) type Pipe = HandOver<Box<Prepared>, (u64, Touched)>;

/// The preparing thread's state.
pub(crate) struct Writer {
    view: View,
    index: QueueIndex,
    counters: Counters,
    counters_dirty: bool,
    /// The instances the `live` table lists (those with queue items), as committed plus
    /// what prepared batches changed.
    live: FastSet<u128>,
    cache: SnapshotCache,
    /// Idempotency keys written by batches not known committed: key → (batch, instance).
    idem_overlay: HashMap<(String, String), (u64, Option<u128>)>,
    /// DLQ ids written by batches not known committed: id → (batch, exists).
    dlq_overlay: HashMap<u64, (u64, bool)>,
    /// The last batch handed to the committing thread.
    last_seq: u64,
    /// The last batch known committed.
    committed_seq: u64,
    stats: WriterStats,
    /// The size of the last batch handed over (see [`Ops::with_capacity`]).
    ops_size: (usize, usize),
    /// The requests of the last batch handed over: the next batch's vectors start with room
    /// for as many (growing them by doubling copied every reply and id over and over).
    last_requests: usize,
    /// The settled batch's list of written instances, cleared, for the next batch.
    spare_touched: Vec<InstanceId>,
    /// The last batch's (empty) lists of changed step rows, for the next batch: a claim
    /// fills them with a row per item, kilobytes that glibc would otherwise allocate anew
    /// each batch, merging its free chunks first (see [`notify`]).
    spare_rows: (Vec<RowKey>, FastSet<RowKey>),
    /// A claim's candidates (kept for its allocation; empty between claims).
    claim_buf: Vec<QueueKey>,
    /// Buffers of committed batches, cleared, for the next batches (see [`Ops::clear`]).
    spare_ops: std::sync::mpsc::Receiver<Ops>,
    /// Lists of replies the notifier has sent, empty, for the next batches (see [`notify`]).
    spare_deliveries: std::sync::mpsc::Receiver<Vec<Delivery>>,
    committer: Option<std::thread::JoinHandle<Result<(), StoreError>>>,
    /// For the replies of batches that never reach the committing thread.
    notifier: std::sync::mpsc::Sender<(Vec<Delivery>, Option<StoreError>)>,
    published: Arc<Mutex<Published>>,
    /// Set when the in-memory state could not be rebuilt after a failure: every request
    /// then fails with this error.
    broken: Option<StoreError>,
    /// With `broken` retryable (the database is down after an I/O error): when to try to
    /// reopen it again.
    recover_at: Option<Instant>,
    /// Opens the database again after an I/O error poisoned it.
    reopen: Reopen,
}

impl Writer {
    /// A writer over `db` with the state loaded at open, and its end of the hand-over;
    /// starts the notifier and the committing thread.
    pub(crate) fn new(
        slot: Arc<DbSlot>,
        reopen: Reopen,
        options: &RedbOptions,
        (counters, index, live): State,
        published: Arc<Mutex<Published>>,
        wake: mpsc::WeakSender<Request>,
    ) -> std::io::Result<(Self, Pipe)> {
        let (notifier, notify_rx) = std::sync::mpsc::channel();
        let (spare_lists, spare_deliveries) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("floxy-redb-notify".to_owned())
            .spawn(move || notify(&notify_rx, &spare_lists))?;
        let (pipe, committing) = handover::channel();
        let (spare, spare_ops) = std::sync::mpsc::channel();
        let committer = Committer {
            slot: slot.clone(),
            durability: options.durability,
            last_flush: Instant::now(),
            unflushed: false,
            published: published.clone(),
            notifier: notifier.clone(),
            spare,
            busy: Duration::ZERO,
            committing: Duration::ZERO,
            wake,
        };
        let handle = std::thread::Builder::new()
            .name("floxy-redb-commit".to_owned())
            .spawn(move || committer.run(&committing))?;
        let w = Self {
            view: View {
                slot,
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
            stats: WriterStats::default(),
            ops_size: (0, 0),
            last_requests: 0,
            spare_touched: Vec::new(),
            spare_rows: (Vec::new(), FastSet::default()),
            claim_buf: Vec::new(),
            spare_ops,
            spare_deliveries,
            committer: Some(handle),
            notifier,
            published,
            broken: None,
            recover_at: None,
            reopen,
        };
        *w.published.lock() = w.to_publish();
        Ok((w, pipe))
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
    /// With nothing committing, it prepares what is queued and hands it over at once (after at
    /// most [`IDLE_HAND_OVER`] requests, the rest going into the next batch). While
    /// a batch commits, it keeps preparing the requests that arrive into the next batch and
    /// hands that over as soon as the committing thread reports (a [`Request::Wake`]), so a
    /// request waits for at most one commit before its own.
    pub(crate) fn run(mut self, mut pipe: Pipe, mut rx: mpsc::Receiver<Request>) {
        let mut close: Option<oneshot::Sender<Result<(), StoreError>>> = None;
        let mut batch = self.begin();
        loop {
            let msg = if batch.requests > 0 && !pipe.committing() {
                match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        batch = self.hand_over(&mut pipe, batch);
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
                        batch = self.hand_over(&mut pipe, batch);
                    }
                    pipe.settle_in_flight(&mut self);
                    self.prepare(&mut batch, req, false);
                    batch = self.hand_over(&mut pipe, batch);
                }
                req => {
                    // Settle the committing batch first if its outcome is in: the committing
                    // thread reports it here before it answers that batch's callers, so a
                    // request sent after a caller saw the batch fail is not prepared on top
                    // of it (and failed with it).
                    batch = self.hand_over_if_settled(&mut pipe, batch);
                    if batch.requests >= MAX_GROUP_COMMIT as u64
                        || (!pipe.committing() && batch.requests >= IDLE_HAND_OVER)
                    {
                        batch = self.hand_over(&mut pipe, batch);
                    }
                    self.prepare(&mut batch, req, pipe.committing());
                }
            }
            batch = self.hand_over_if_settled(&mut pipe, batch);
        }
        if batch.requests > 0 {
            self.finish(&mut pipe, batch);
        }
        // Refuse what is still queued, wait for the last commit, stop the committing thread
        // (it makes relaxed commits durable), release the file.
        rx.close();
        while let Ok(req) = rx.try_recv() {
            if let Some(d) = Delivery::failed(req, &StoreError::Closed) {
                d.send(None);
            }
        }
        pipe.close(&mut self);
        let flushed = match self.committer.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(StoreError::Backend(
                "floxy-store-redb: the committing thread panicked".to_owned(),
            )),
            None => Ok(()),
        };
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "floxy-store-redb: final flush failed");
        }
        self.view.rtx = None;
        self.view.slot.close();
        if let Some(reply) = close {
            let _ = reply.send(flushed);
        }
    }

    /// [`Writer::finish`], then a new batch.
    fn hand_over(&mut self, pipe: &mut Pipe, batch: Batch) -> Batch {
        self.finish(pipe, batch);
        self.begin()
    }

    fn begin(&mut self) -> Batch {
        Batch {
            seq: self.last_seq + 1,
            ops: self
                .spare_ops
                .try_recv()
                .unwrap_or_else(|_| Ops::with_capacity(self.ops_size.0, self.ops_size.1)),
            rows: std::mem::take(&mut self.spare_rows.0),
            row_set: std::mem::take(&mut self.spare_rows.1),
            deliveries: match self.spare_deliveries.try_recv() {
                Ok(mut v) => {
                    v.reserve(self.last_requests);
                    v
                }
                Err(_) => Vec::with_capacity(self.last_requests),
            },
            touched: Touched {
                instances: {
                    let mut v = std::mem::take(&mut self.spare_touched);
                    v.reserve(self.last_requests);
                    v
                },
                ..Touched::default()
            },
            fatal: self.broken.clone(),
            failed_under: None,
            requests: 0,
        }
    }

    /// Prepares one request into `batch` (`committing`: whether a batch is committing).
    fn prepare(&mut self, batch: &mut Batch, req: Request, committing: bool) {
        if batch.requests == 0
            && !committing
            && self.recover_at.is_some_and(|t| Instant::now() >= t)
        {
            // The database is down after an I/O error: try to reopen it (an empty batch
            // holds nothing prepared on the old state).
            self.reload(None);
            batch.fatal.clone_from(&self.broken);
        }
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

    /// If the committing batch's outcome is in, settles it and hands `batch` (prepared on top
    /// of it) over, failed with it if it failed; returns the batch to go on with.
    fn hand_over_if_settled(&mut self, pipe: &mut Pipe, mut batch: Batch) -> Batch {
        if pipe.committing()
            && let Poll::Ready(outcome) = pipe.poll_in_flight(self)
            && batch.requests > 0
        {
            batch.failed_under = outcome;
            return self.hand_over(pipe, batch);
        }
        batch
    }

    /// Hands `batch` to the committing thread once the batch before it is committed (or
    /// fails it, if that one or its own preparation failed; see [`HandOver::finish`]).
    fn finish(&mut self, pipe: &mut Pipe, mut batch: Batch) {
        // Empty after each request (see `write_rows`), or left over by a failed one.
        batch.rows.clear();
        batch.row_set.clear();
        self.spare_rows = (
            std::mem::take(&mut batch.rows),
            std::mem::take(&mut batch.row_set),
        );
        self.stats.batches += 1;
        self.stats.requests += batch.requests;
        self.stats.largest_batch = self.stats.largest_batch.max(batch.requests);
        self.stats.busy = self.stats.preparing;
        let failed_under = batch.failed_under.take();
        pipe.finish(self, batch, failed_under);
    }

    /// Rebuilds the in-memory state from the last committed transaction, after reopening
    /// the database if an I/O error poisoned it (nothing is being committed when this
    /// runs). `cause`: the failure, if this follows one (not a retry of a reopen).
    fn reload(&mut self, cause: Option<&StoreError>) {
        self.cache.clear();
        self.idem_overlay.clear();
        self.dlq_overlay.clear();
        self.view.rtx = None;
        self.counters_dirty = false;
        match self.load_or_reopen(cause) {
            Ok((counters, index, live)) => {
                self.broken = None;
                self.recover_at = None;
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
            Err(e) if e.is_retryable() => {
                // The disk is still failing: requests fail (retryably) until a reopen works.
                tracing::warn!(error = %e, "floxy-store-redb: the database is down; retrying");
                self.broken = Some(e);
                self.recover_at = Some(Instant::now() + REOPEN_RETRY);
            }
            Err(e) => {
                tracing::error!(error = %e, "floxy-store-redb: cannot reload after a failed commit");
                self.broken = Some(StoreError::Backend(format!(
                    "the store failed and must be reopened: {e}"
                )));
                self.recover_at = None;
            }
        }
        let mut p = self.to_publish();
        let mut published = self.published.lock();
        // The committing thread's share of the time, as it last published it.
        p.stats.busy = published.stats.busy.max(p.stats.busy);
        p.stats.committing = published.stats.committing;
        *published = p;
    }

    /// Loads the [`State`] from the database, reopened first if an I/O error poisoned it.
    fn load_or_reopen(&mut self, cause: Option<&StoreError>) -> Result<State, StoreError> {
        let poisoned = match self.view.slot.get() {
            Ok(db) => slot::poisoned(&db),
            Err(StoreError::Closed) => return Err(StoreError::Closed),
            Err(_) => true,
        };
        if poisoned {
            let why = cause.map_or_else(
                || "an earlier write or sync failed".to_owned(),
                ToString::to_string,
            );
            tracing::warn!(cause = %why, "floxy-store-redb: an I/O error poisoned the database; reopening it");
            self.view.slot.take_down(&why);
            let db = (self.reopen)().map_err(|e| {
                StoreError::Unavailable(format!(
                    "the redb database failed ({why}) and cannot be reopened yet: {e}"
                ))
            })?;
            self.view.slot.put(db);
        }
        load_state(&*self.view.slot.get()?)
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
                let states = self.heartbeat(b, &owner, &leases, now);
                (Some(Delivery::Heartbeat(reply, Ok(states))), None)
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
                let _ = reply.send(Ok(()));
                (None, None)
            }
            Request::Wake => (None, None),
        }
    }
}

/// The writer's side of the hand-over ([`crate::handover`]).
impl Prepare for Writer {
    type Batch = Batch;
    type Sealed = Box<Prepared>;
    type Tag = (u64, Touched);

    /// The committing batch's outcome: on success its pins are released; on failure the
    /// in-memory state is rebuilt.
    fn settle(&mut self, (seq, touched): (u64, Touched), err: Option<&StoreError>) {
        match err {
            None => {
                self.committed_seq = seq;
                // The read snapshot is stale now: release it at once rather than at the next
                // read, which may be many commits away (a run of completions reads nothing).
                // While a snapshot lives, redb cannot free the pages later commits replace, so
                // they stay in its write buffer until it overflows and writes them out one
                // `pwrite` each: with the snapshot of the last create kept through a run of
                // completions, 16 workers made 23 600 `pwrite`s instead of 5 500 and durable
                // completions ran at 37.1 k/s against 47.7 k/s (medians of 5 alternating runs).
                self.view.rtx = None;
                let mut instances = touched.instances;
                for id in instances.drain(..) {
                    self.cache.unpin(id, seq);
                }
                self.spare_touched = instances;
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
                self.reload(Some(e));
            }
        }
    }

    fn seal(
        &mut self,
        mut batch: Batch,
    ) -> Result<(Box<Prepared>, (u64, Touched)), (Batch, StoreError)> {
        if batch.fatal.is_none() && self.counters_dirty {
            match encode("counters", &self.counters) {
                Ok(bytes) => batch.ops.meta(META_COUNTERS, &bytes),
                Err(e) => batch.fatal = Some(e),
            }
        }
        self.counters_dirty = false;
        if let Some(e) = batch.fatal.take() {
            // The batch's writes stay unwritten; rebuild what its preparation changed.
            tracing::error!(error = %e, "floxy-store-redb: batch failed before its commit");
            self.reload(Some(&e));
            return Err((batch, e));
        }
        self.last_seq = batch.seq;
        self.ops_size = batch.ops.size();
        self.last_requests = usize::try_from(batch.requests)
            .unwrap_or(0)
            .min(MAX_GROUP_COMMIT);
        let prepared = Prepared {
            ops: batch.ops,
            deliveries: batch.deliveries,
            published: self.to_publish(),
        };
        Ok((Box::new(prepared), (batch.seq, batch.touched)))
    }

    fn fail(&mut self, batch: Batch, e: StoreError) {
        let _ = self.notifier.send((batch.deliveries, Some(e)));
    }

    fn fail_sealed(&mut self, batch: Box<Prepared>, e: StoreError) {
        let _ = self.notifier.send((batch.deliveries, Some(e.clone())));
        self.broken = Some(e);
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
