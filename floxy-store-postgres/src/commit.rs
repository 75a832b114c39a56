//! Group commit: `create_instance` and `update_instance` calls are queued and applied by
//! committer tasks, many per transaction.
//!
//! A committer takes up to `max_commit_batch` queued jobs, never two of the same instance
//! (nor two creates with the same idempotency key), nor an instance another committer is
//! working on, and runs them in **one** transaction:
//!
//! 1. `SELECT … FROM workflow_instances WHERE id = ANY($1) ORDER BY id FOR UPDATE`: the
//!    instance locks, taken in id order so that committers of several processes cannot
//!    deadlock.
//! 2. `SELECT … FROM workflow_queue WHERE instance_id = ANY($1) ORDER BY key FOR UPDATE`:
//!    every queue row of those instances, in key order (heartbeats lock in the same order).
//!    A claim in flight on one of them (claims lock queue rows, then update the step run)
//!    finishes first; later claims skip them (`SKIP LOCKED`). So the step runs read next
//!    cannot be changed by a claim before this transaction ends. The rows also give the
//!    current fencing tokens for the lease checks. Then the step runs and DLQ records of
//!    those instances (`= ANY($1)`), and the existing instances holding the idempotency keys
//!    of the creates.
//! 3. Each update's transition function runs on its snapshot (pure and fast; a panic is
//!    caught and reported as [`StoreError::Backend`]); each transition is checked like the
//!    memory store does (version, creation, step compare-and-set, ownership).
//! 4. The fencing checks against the tokens read in step 2.
//! 5. The writes of the surviving transitions, one statement per kind of write for the whole
//!    batch (`INSERT … SELECT FROM UNNEST(…)`, `UPDATE … FROM UNNEST(…)`, `DELETE … USING
//!    UNNEST(…)`), events and DLQ records in transition order (`WITH ORDINALITY … ORDER BY`),
//!    and, when new work was queued, a poke of the notifier, which sends `NOTIFY` after the
//!    commit (never inside it: see the `notify` module).
//! 6. `COMMIT`. Each caller is acknowledged only after the commit; callers whose transition
//!    was rejected (closure error, stale lease, failed check) get their error and change
//!    nothing, without affecting the others.
//!
//! If a write statement fails anyway (a constraint the checks could not see, e.g. an
//! idempotency key taken by a concurrent start in another process), the transaction rolls
//! back and the surviving transitions are applied again one per transaction (re-checked
//! against fresh data), so only the culprit fails. A lost connection fails the whole batch
//! with [`StoreError::Unavailable`].

use crate::codec::{self, DLQ_COLS, INSTANCE_COLS, STEP_COLS};
use crate::error::{is_connection_error, map_sqlx};
use crate::queries::Queries;
use floxy_core::checks;
use floxy_core::eager::{EagerClaim, lease_eagerly, unlease_upserts};
use floxy_core::model::{
    DlqId, FencingToken, InstanceId, InstanceRecord, InstanceSnapshot, QueueItem, QueueKey,
    QueueOp, StepRun, Transition, WorkflowId,
};
use floxy_core::store::{ClaimedItem, CreateOutcome, StoreError, TransitionFn};
use parking_lot::Mutex;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{Notify, oneshot};

/// Upper bound on queued (not yet committed) jobs; beyond it calls fail with
/// [`StoreError::Unavailable`].
pub const MAX_PENDING_COMMITS: usize = 100_000;

/// What a committer needs.
pub(crate) struct Ctx {
    pub(crate) pool: PgPool,
    pub(crate) q: Arc<Queries>,
    /// Sends `NOTIFY` after commits that queued work (`None`: notifications off).
    pub(crate) notifier: Option<Arc<crate::notify::Notifier>>,
    pub(crate) max_batch: usize,
    /// Deadline of one batch transaction (see `PostgresConfig::call_timeout_ms`).
    pub(crate) call_timeout: std::time::Duration,
}

type CreateReply = oneshot::Sender<Result<CreateOutcome, StoreError>>;
type UpdateReply = oneshot::Sender<Result<(Transition, Vec<ClaimedItem>), StoreError>>;

enum Reply {
    Create(CreateReply),
    Update(UpdateReply),
}

/// One queued call.
struct Job {
    id: InstanceId,
    create: bool,
    f: Option<TransitionFn>,
    t: Option<Transition>,
    /// Work of this transition to lease to the caller in the same commit.
    eager: Option<EagerClaim>,
    /// Items leased by `eager` (kept across a retry of the batch: the transition holds the
    /// leases).
    claimed: Vec<ClaimedItem>,
    reply: Reply,
}

impl Job {
    fn idem(&self) -> Option<(WorkflowId, String)> {
        if !self.create {
            return None;
        }
        let t = self.t.as_ref()?;
        Some((
            t.instance.workflow_id.clone(),
            t.instance.idempotency_key.clone()?,
        ))
    }
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    inflight: HashSet<InstanceId>,
    inflight_idem: HashSet<(WorkflowId, String)>,
}

/// The group committer: a job queue shared by `committers` tasks.
pub(crate) struct Committer {
    state: Mutex<QueueState>,
    wake: Notify,
    closed: AtomicBool,
    started: std::sync::Once,
    ctx: Arc<Ctx>,
    tasks: usize,
    transactions: AtomicU64,
    calls: AtomicU64,
}

/// Counters of the group committer (since the store was built).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupCommitStats {
    /// Batches run (each one transaction, plus one per call when a batch fell back to single
    /// commits).
    pub batches: u64,
    /// `create_instance`/`update_instance` calls answered by the batches.
    pub calls: u64,
}

impl Committer {
    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.transactions.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn new(ctx: Arc<Ctx>, tasks: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            started: std::sync::Once::new(),
            ctx,
            tasks: tasks.max(1),
            transactions: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        })
    }

    /// Stops the committer tasks once the queue is drained.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Backend("PostgresStore must be used inside a tokio runtime".into())
        })?;
        self.started.call_once(|| {
            for _ in 0..self.tasks {
                // The tasks hold the committer, not the store: dropping the store closes it.
                handle.spawn(Arc::clone(self).run());
            }
        });
        Ok(())
    }

    fn push(self: &Arc<Self>, job: Job) -> Result<(), StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            drop(job);
            return Err(StoreError::Closed);
        }
        self.start()?;
        {
            let mut st = self.state.lock();
            if st.jobs.len() >= MAX_PENDING_COMMITS {
                drop(st);
                drop(job);
                return Err(StoreError::Unavailable("too many commits queued".into()));
            }
            st.jobs.push_back(job);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Queues a creating transition; resolves after its commit.
    pub(crate) async fn create(
        self: &Arc<Self>,
        t: Transition,
    ) -> Result<CreateOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            id: t.instance.id,
            create: true,
            f: None,
            t: Some(t),
            eager: None,
            claimed: Vec::new(),
            reply: Reply::Create(tx),
        };
        self.push(job)?;
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Backend("committer stopped".into())))
    }

    /// Queues an update (with an eager claim of the work it queues); resolves after its
    /// commit.
    pub(crate) async fn update(
        self: &Arc<Self>,
        id: InstanceId,
        f: TransitionFn,
        eager: Option<EagerClaim>,
    ) -> Result<(Transition, Vec<ClaimedItem>), StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            id,
            create: false,
            f: Some(f),
            t: None,
            eager,
            claimed: Vec::new(),
            reply: Reply::Update(tx),
        };
        self.push(job)?;
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Backend("committer stopped".into())))
    }

    /// Takes the next batch: jobs of distinct instances (and idempotency keys) that no other
    /// committer is working on, in queue order.
    fn take_batch(&self) -> Vec<Job> {
        let mut st = self.state.lock();
        let max = self.ctx.max_batch.max(1);
        let mut batch = Vec::new();
        let mut ids: HashSet<InstanceId> = HashSet::new();
        let mut idems: HashSet<(WorkflowId, String)> = HashSet::new();
        let mut rest = VecDeque::with_capacity(st.jobs.len());
        let jobs = std::mem::take(&mut st.jobs);
        for job in jobs {
            let idem = job.idem();
            let busy = batch.len() >= max
                || st.inflight.contains(&job.id)
                || ids.contains(&job.id)
                || idem
                    .as_ref()
                    .is_some_and(|k| st.inflight_idem.contains(k) || idems.contains(k));
            if busy {
                // Keep the order of later jobs of a busy instance behind it.
                ids.insert(job.id);
                if let Some(k) = idem {
                    idems.insert(k);
                }
                rest.push_back(job);
                continue;
            }
            ids.insert(job.id);
            if let Some(k) = idem {
                idems.insert(k);
            }
            batch.push(job);
        }
        st.jobs = rest;
        for job in &batch {
            st.inflight.insert(job.id);
            if let Some(k) = job.idem() {
                st.inflight_idem.insert(k);
            }
        }
        batch
    }

    fn release(&self, ids: &[InstanceId], idems: &[(WorkflowId, String)]) -> bool {
        let mut st = self.state.lock();
        for id in ids {
            st.inflight.remove(id);
        }
        for k in idems {
            st.inflight_idem.remove(k);
        }
        !st.jobs.is_empty()
    }

    async fn run(self: Arc<Self>) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batch = self.take_batch();
            if batch.is_empty() {
                if self.closed.load(Ordering::SeqCst) && self.state.lock().jobs.is_empty() {
                    break;
                }
                notified.await;
                continue;
            }
            if !self.state.lock().jobs.is_empty() {
                // More work queued: let another committer take it while this batch commits.
                self.wake.notify_one();
            }
            let ids: Vec<InstanceId> = batch.iter().map(|j| j.id).collect();
            let idems: Vec<(WorkflowId, String)> = batch.iter().filter_map(Job::idem).collect();
            self.transactions.fetch_add(1, Ordering::Relaxed);
            self.calls.fetch_add(batch.len() as u64, Ordering::Relaxed);
            execute(&self.ctx, batch).await;
            if self.release(&ids, &idems) {
                self.wake.notify_one();
            }
        }
    }
}

/// A batch-level failure.
struct Failure {
    err: StoreError,
    /// The connection is gone: the outcome of the commit is unknown; do not retry here.
    connection: bool,
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Self {
            connection: is_connection_error(&e),
            err: map_sqlx(e),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Self {
            err,
            connection: false,
        }
    }
}

/// How a job ended well.
enum Done {
    /// Its transition was committed.
    Applied,
    /// A create answered with the instance holding its idempotency key (nothing written).
    Existing(InstanceId),
}

/// A job during execution.
struct Item {
    job: Job,
    /// Decided outcome (`Some(Err)`: rejected; `Some(Ok)`: committed or answered).
    result: Option<Result<Done, StoreError>>,
}

impl Item {
    fn undecided(&self) -> bool {
        self.result.is_none()
    }
    fn reject(&mut self, e: StoreError) {
        self.result = Some(Err(e));
    }
}

fn reply(item: Item, fallback_err: &StoreError) {
    let Item { job, result } = item;
    let result = result.unwrap_or_else(|| Err(fallback_err.clone()));
    match job.reply {
        Reply::Create(tx) => {
            let _ = tx.send(result.map(|done| match done {
                Done::Applied => CreateOutcome::Created(job.id),
                Done::Existing(id) => CreateOutcome::Existing(id),
            }));
        }
        Reply::Update(tx) => {
            let claimed = job.claimed;
            let _ = tx.send(result.and_then(|_| {
                job.t
                    .map(|t| (t, claimed))
                    .ok_or_else(|| StoreError::Backend("transition missing after commit".into()))
            }));
        }
    }
}

async fn execute(ctx: &Ctx, jobs: Vec<Job>) {
    let mut items: Vec<Item> = jobs
        .into_iter()
        .map(|job| Item { job, result: None })
        .collect();
    match bounded_batch(ctx, &mut items).await {
        Ok(()) => {
            let none = StoreError::Backend("unreachable: undecided after commit".into());
            for item in items {
                reply(item, &none);
            }
        }
        Err(f) if !f.connection && items.iter().filter(|i| i.undecided()).count() > 1 => {
            tracing::debug!(error = %f.err, "group commit failed; applying one by one");
            for item in items {
                if !item.undecided() {
                    reply(item, &f.err);
                    continue;
                }
                let mut one = vec![item];
                let err = match bounded_batch(ctx, &mut one).await {
                    Ok(()) => f.err.clone(),
                    Err(e) => e.err,
                };
                for item in one {
                    reply(item, &err);
                }
            }
        }
        Err(f) => {
            for item in items {
                reply(item, &f.err);
            }
        }
    }
}

/// [`try_batch`] under the call deadline. Past it the transaction is dropped (rolled back,
/// or its connection closed) and the outcome counts as unknown, like a lost connection: the
/// undecided callers get [`StoreError::Unavailable`] and nothing is retried here.
async fn bounded_batch(ctx: &Ctx, items: &mut [Item]) -> Result<(), Failure> {
    match tokio::time::timeout(ctx.call_timeout, try_batch(ctx, items)).await {
        Ok(r) => r,
        Err(_) => Err(Failure {
            err: StoreError::Unavailable(format!(
                "group commit: no answer from PostgreSQL within {} ms",
                ctx.call_timeout.as_millis()
            )),
            connection: true,
        }),
    }
}

/// Runs `items` in one transaction. On `Ok`, every item is decided. On `Err`, the
/// transaction rolled back; decided items keep their rejection, undecided ones were not
/// applied (their computed transitions are kept for a retry).
async fn try_batch(ctx: &Ctx, items: &mut [Item]) -> Result<(), Failure> {
    let q = &*ctx.q;
    let mut tx = ctx.pool.begin_with(ctx.q.begin_keyed.clone()).await?;

    // 1. Instance locks, in id order.
    let mut ids: Vec<uuid::Uuid> = items
        .iter()
        .filter(|i| i.undecided())
        .map(|i| i.job.id.0)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query(&q.lock_instances)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
    let mut instances: HashMap<InstanceId, InstanceRecord> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let r = codec::instance(row, 0)?;
        instances.insert(r.id, r);
    }

    // 2. Snapshots of the updated instances; idempotency keys of the creates.
    let upd_ids: Vec<uuid::Uuid> = items
        .iter()
        .filter(|i| i.undecided() && !i.job.create && instances.contains_key(&i.job.id))
        .map(|i| i.job.id.0)
        .collect();
    let mut steps: HashMap<InstanceId, Vec<StepRun>> = HashMap::new();
    let mut dlq: HashMap<InstanceId, Vec<floxy_core::model::DlqRecord>> = HashMap::new();
    let mut tokens: HashMap<QueueKey, Option<i64>> = HashMap::new();
    if !upd_ids.is_empty() {
        // Every queue row of these instances, in key order, before their step runs are read:
        // a claim in flight on one of them finishes first (and its step run change is seen
        // below); later claims skip them until this transaction ends.
        for row in sqlx::query(&q.lock_queue)
            .bind(&upd_ids)
            .fetch_all(&mut *tx)
            .await?
        {
            use sqlx::Row;
            let key = QueueKey {
                instance_id: InstanceId(row.try_get(0).map_err(map_sqlx)?),
                step: Arc::from(row.try_get::<String, _>(1).map_err(map_sqlx)?),
                kind: codec::kind_of(&row.try_get::<String, _>(2).map_err(map_sqlx)?)?,
            };
            tokens.insert(key, row.try_get(3).map_err(map_sqlx)?);
        }
        for row in sqlx::query(&q.batch_steps)
            .bind(&upd_ids)
            .fetch_all(&mut *tx)
            .await?
        {
            let r = codec::step_run(&row, 0)?;
            steps.entry(r.instance_id).or_default().push(r);
        }
        for row in sqlx::query(&q.batch_dlq)
            .bind(&upd_ids)
            .fetch_all(&mut *tx)
            .await?
        {
            let r = codec::dlq_record(&row, 0)?;
            dlq.entry(r.record.instance_id).or_default().push(r);
        }
    }
    let mut idem_found: HashMap<(String, String), InstanceId> = HashMap::new();
    {
        let (mut wfs, mut keys) = (Vec::new(), Vec::new());
        for i in items.iter().filter(|i| i.undecided() && i.job.create) {
            if let Some((w, k)) = i.job.idem() {
                wfs.push(w.as_str().to_owned());
                keys.push(k);
            }
        }
        if !wfs.is_empty() {
            for row in sqlx::query(&q.find_idem_batch)
                .bind(&wfs)
                .bind(&keys)
                .fetch_all(&mut *tx)
                .await?
            {
                use sqlx::Row;
                let w: String = row.try_get(0).map_err(map_sqlx)?;
                let k: String = row.try_get(1).map_err(map_sqlx)?;
                let id: uuid::Uuid = row.try_get(2).map_err(map_sqlx)?;
                idem_found.insert((w, k), InstanceId(id));
            }
        }
    }

    // 3. Transition functions and checks.
    let mut snapshots: HashMap<InstanceId, InstanceSnapshot> = HashMap::new();
    for item in items.iter_mut().filter(|i| i.undecided()) {
        let id = item.job.id;
        if item.job.create {
            let Some(t) = item.job.t.as_ref() else {
                item.reject(StoreError::Backend("create without transition".into()));
                continue;
            };
            if !t.create {
                item.reject(StoreError::Conflict(format!(
                    "create_instance of {id} with a transition that does not create"
                )));
                continue;
            }
            if let Some(key) = &t.instance.idempotency_key
                && let Some(existing) =
                    idem_found.get(&(t.instance.workflow_id.as_str().to_owned(), key.clone()))
            {
                item.result = Some(Ok(Done::Existing(*existing)));
                continue;
            }
            if instances.contains_key(&id) {
                item.reject(StoreError::Conflict(format!(
                    "instance {id} already exists"
                )));
                continue;
            }
            if let Err(e) = check_version(None, t) {
                item.reject(e);
            }
            continue;
        }
        let Some(record) = instances.get(&id) else {
            item.reject(StoreError::NotFound(format!("instance {id}")));
            continue;
        };
        let snap = InstanceSnapshot {
            instance: record.clone(),
            steps: steps.remove(&id).unwrap_or_default(),
            dlq: dlq.remove(&id).unwrap_or_default(),
        };
        if let Some(f) = item.job.f.take() {
            match std::panic::catch_unwind(AssertUnwindSafe(|| f(&snap))) {
                Ok(Ok(t)) => item.job.t = Some(t),
                Ok(Err(e)) => {
                    item.reject(StoreError::Rejected(e));
                    continue;
                }
                Err(_) => {
                    item.reject(StoreError::Backend(format!(
                        "the transition function of instance {id} panicked"
                    )));
                    continue;
                }
            }
        }
        let Some(t) = item.job.t.as_ref() else {
            item.reject(StoreError::Backend("update without transition".into()));
            continue;
        };
        if t.instance.id != id {
            item.reject(StoreError::Conflict(format!(
                "transition for instance {} applied to {id}",
                t.instance.id
            )));
            continue;
        }
        if let Err(e) = check_version(Some(&snap), t) {
            item.reject(e);
            continue;
        }
        snapshots.insert(id, snap);
    }

    // 4. Fencing checks (tokens read under the queue locks of step 2).
    let mut foreign_dlq: Vec<i64> = Vec::new();
    for item in items.iter_mut().filter(|i| i.undecided()) {
        let Some(t) = &item.job.t else { continue };
        // Tokens are stored as BIGINT; one that is not a valid token matches no lease.
        let fenced = checks::fencing(t, |k| {
            tokens
                .get(k)
                .copied()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
                .map(FencingToken)
        });
        if let Err(e) = fenced {
            item.reject(e);
            continue;
        }
        if let Err(e) = checks::steps_and_ownership(snapshots.get(&item.job.id), t) {
            item.reject(e);
            continue;
        }
        let own: HashSet<DlqId> = snapshots
            .get(&item.job.id)
            .map(|s| s.dlq.iter().map(|r| r.id).collect())
            .unwrap_or_default();
        for d in &t.dlq_delete {
            if !own.contains(d)
                && let Ok(v) = i64::try_from(d.0)
            {
                foreign_dlq.push(v);
            }
        }
    }
    if !foreign_dlq.is_empty() {
        use sqlx::Row;
        let found: HashSet<i64> = sqlx::query(&q.dlq_exists)
            .bind(&foreign_dlq)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()
            .map_err(map_sqlx)?;
        for item in items.iter_mut().filter(|i| i.undecided()) {
            let Some(t) = &item.job.t else { continue };
            let own: HashSet<DlqId> = snapshots
                .get(&item.job.id)
                .map(|s| s.dlq.iter().map(|r| r.id).collect())
                .unwrap_or_default();
            if let Some(d) = t
                .dlq_delete
                .iter()
                .find(|d| !own.contains(d) && i64::try_from(d.0).is_ok_and(|v| found.contains(&v)))
            {
                let msg = format!("DLQ record {d} does not belong to instance {}", item.job.id);
                item.reject(StoreError::Conflict(msg));
            }
        }
    }

    // 5. Upserted items are stored unleased (the contract of `QueueOp::Upsert`), except for
    //    eager claims: those leases are made here, with tokens from the claim sequence (one
    //    round trip for the batch); then the writes, which carry the leases. An item whose
    //    eager leases were made by an earlier try of this batch keeps them.
    let wanted: usize = items
        .iter()
        .filter(|i| i.undecided() && i.job.claimed.is_empty())
        .filter_map(|i| {
            Some(
                i.job
                    .eager
                    .as_ref()?
                    .limit
                    .min(i.job.t.as_ref()?.queue.len()),
            )
        })
        .sum();
    let mut tokens = Vec::new().into_iter();
    if wanted > 0 {
        use sqlx::Row;
        let mut fetched = sqlx::query(&q.next_tokens)
            .bind(i64::try_from(wanted).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(map_sqlx)?;
        fetched.sort_unstable();
        tokens = fetched.into_iter();
    }
    for item in items
        .iter_mut()
        .filter(|i| i.undecided() && i.job.claimed.is_empty())
    {
        let Some(t) = item.job.t.as_mut() else {
            continue;
        };
        unlease_upserts(t);
        if let Some(eager) = item.job.eager.as_ref() {
            // `wanted` counted at least one token per lease this can make.
            item.job.claimed = lease_eagerly(t, eager, || {
                FencingToken(
                    tokens
                        .next()
                        .and_then(|v| u64::try_from(v).ok())
                        .unwrap_or(0),
                )
            });
        }
    }
    let mut w = Writes::default();
    for item in items.iter().filter(|i| i.undecided()) {
        if let Some(t) = &item.job.t {
            w.add(t, snapshots.get(&item.job.id))?;
        }
    }
    let new_work = w.new_work;
    if !w.is_empty() {
        w.execute(q, &mut tx).await?;
    }

    // 6. Commit, then wake idle workers elsewhere (see `notify`: never inside the commit).
    tx.commit().await?;
    if new_work && let Some(n) = &ctx.notifier {
        n.poke();
    }
    for item in items.iter_mut().filter(|i| i.undecided()) {
        item.result = Some(Ok(Done::Applied));
    }
    Ok(())
}

/// The first checks of a transition (before the fencing check): creation and version, and
/// nothing of a new instance is leased.
fn check_version(current: Option<&InstanceSnapshot>, t: &Transition) -> Result<(), StoreError> {
    checks::version(current, t)?;
    match (current, &t.lease_check) {
        (None, Some(lc)) => Err(checks::stale_lease(lc)),
        _ => Ok(()),
    }
}

fn key_arrays(keys: &[QueueKey]) -> (Vec<uuid::Uuid>, Vec<String>, Vec<String>) {
    (
        keys.iter().map(|k| k.instance_id.0).collect(),
        keys.iter().map(|k| k.step.to_string()).collect(),
        keys.iter().map(|k| k.kind.as_str().to_owned()).collect(),
    )
}

// ----- batched writes -----------------------------------------------------------------------

/// Columns of instance rows to write.
#[derive(Default)]
struct InstanceCols {
    id: Vec<uuid::Uuid>,
    workflow_id: Vec<String>,
    status: Vec<String>,
    /// `None`: unchanged (updates keep the stored value).
    input: Vec<Option<String>>,
    output: Vec<Option<String>>,
    error: Vec<Option<String>>,
    idempotency_key: Vec<Option<String>>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    version: Vec<i64>,
    completion_seq: Vec<i64>,
    rollback_depth: Vec<i32>,
    rollback_to: Vec<Option<String>>,
    failed_step: Vec<Option<String>>,
    /// `None`: unchanged.
    branches: Vec<Option<String>>,
}

impl InstanceCols {
    /// Adds `r`; `old` is the stored record (unchanged JSON columns are not sent).
    fn push(&mut self, r: &InstanceRecord, old: Option<&InstanceRecord>) -> Result<(), StoreError> {
        self.id.push(r.id.0);
        self.workflow_id.push(r.workflow_id.as_str().to_owned());
        self.status.push(r.status.as_str().to_owned());
        self.input
            .push((old.map(|o| &o.input) != Some(&r.input)).then(|| codec::json(&r.input)));
        self.output.push(r.output.as_ref().map(codec::json));
        self.error.push(r.error.clone());
        self.idempotency_key.push(r.idempotency_key.clone());
        self.created_at.push(r.created_at.as_millis());
        self.updated_at.push(r.updated_at.as_millis());
        self.version
            .push(codec::i64_of(r.version, "instance version")?);
        self.completion_seq
            .push(codec::i64_of(r.completion_seq, "completion_seq")?);
        self.rollback_depth
            .push(codec::i32_of(r.rollback_depth, "rollback_depth")?);
        self.rollback_to
            .push(r.rollback_to.as_deref().map(str::to_owned));
        self.failed_step
            .push(r.failed_step.as_deref().map(str::to_owned));
        self.branches
            .push(if old.map(|o| &o.branches) == Some(&r.branches) {
                None
            } else {
                Some(codec::json_of(&r.branches)?)
            });
        Ok(())
    }

    fn bind(
        self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.id)
            .bind(self.workflow_id)
            .bind(self.status)
            .bind(self.input)
            .bind(self.output)
            .bind(self.error)
            .bind(self.idempotency_key)
            .bind(self.created_at)
            .bind(self.updated_at)
            .bind(self.version)
            .bind(self.completion_seq)
            .bind(self.rollback_depth)
            .bind(self.rollback_to)
            .bind(self.failed_step)
            .bind(self.branches)
    }
}

/// Columns of step rows to write.
#[derive(Default)]
struct StepCols {
    instance_id: Vec<uuid::Uuid>,
    step: Vec<String>,
    status: Vec<String>,
    attempts: Vec<i32>,
    compensation_attempts: Vec<i32>,
    /// `None`: unchanged.
    input: Vec<Option<String>>,
    output: Vec<Option<String>>,
    error: Vec<Option<String>>,
    completed_seq: Vec<Option<i64>>,
    compensate: Vec<Option<String>>,
    cancel_requested: Vec<bool>,
    decision: Vec<Option<String>>,
    created_at: Vec<i64>,
    started_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
}

impl StepCols {
    /// Adds `r`; `old` is the stored run (an unchanged input is not sent).
    fn push(&mut self, r: &StepRun, old: Option<&StepRun>) -> Result<(), StoreError> {
        self.instance_id.push(r.instance_id.0);
        self.step.push(r.step.to_string());
        self.status.push(r.status.as_str().to_owned());
        self.attempts.push(codec::i32_of(r.attempts, "attempts")?);
        self.compensation_attempts.push(codec::i32_of(
            r.compensation_attempts,
            "compensation_attempts",
        )?);
        self.input
            .push((old.map(|o| &o.input) != Some(&r.input)).then(|| codec::json(&r.input)));
        self.output.push(r.output.as_ref().map(codec::json));
        self.error.push(r.error.clone());
        self.completed_seq.push(
            r.completed_seq
                .map(|v| codec::i64_of(v, "completed_seq"))
                .transpose()?,
        );
        self.compensate
            .push(r.compensate.map(|c| c.as_str().to_owned()));
        self.cancel_requested.push(r.cancel_requested);
        self.decision
            .push(r.decision.as_ref().map(codec::json_of).transpose()?);
        self.created_at.push(r.created_at.as_millis());
        self.started_at
            .push(r.started_at.map(floxy_core::model::Timestamp::as_millis));
        self.finished_at
            .push(r.finished_at.map(floxy_core::model::Timestamp::as_millis));
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.instance_id.is_empty()
    }

    fn bind(
        self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.instance_id)
            .bind(self.step)
            .bind(self.status)
            .bind(self.attempts)
            .bind(self.compensation_attempts)
            .bind(self.input)
            .bind(self.output)
            .bind(self.error)
            .bind(self.completed_seq)
            .bind(self.compensate)
            .bind(self.cancel_requested)
            .bind(self.decision)
            .bind(self.created_at)
            .bind(self.started_at)
            .bind(self.finished_at)
    }
}

/// Columns of queue rows to insert or replace.
#[derive(Default)]
struct QueueCols {
    instance_id: Vec<uuid::Uuid>,
    step: Vec<String>,
    kind: Vec<String>,
    workflow_id: Vec<String>,
    handler: Vec<String>,
    run_at: Vec<i64>,
    priority: Vec<i16>,
    order_key: Vec<i64>,
    attempt: Vec<i32>,
    lease_ttl_ms: Vec<i64>,
    cancel_requested: Vec<bool>,
    /// Lease of an item queued already leased (an eager claim); `None`: not leased.
    lease_owner: Vec<Option<String>>,
    lease_token: Vec<Option<i64>>,
    lease_expires_at: Vec<Option<i64>>,
}

impl QueueCols {
    fn push(&mut self, i: &QueueItem) -> Result<(), StoreError> {
        self.instance_id.push(i.key.instance_id.0);
        self.step.push(i.key.step.to_string());
        self.kind.push(i.key.kind.as_str().to_owned());
        self.workflow_id.push(i.workflow_id.as_str().to_owned());
        self.handler.push(i.handler.to_string());
        self.run_at.push(i.run_at.as_millis());
        self.priority.push(i16::from(i.priority));
        self.order_key.push(i.order_key);
        self.attempt.push(codec::i32_of(i.attempt, "attempt")?);
        self.lease_ttl_ms
            .push(codec::i64_of(i.lease_ttl_ms, "lease_ttl_ms")?);
        self.cancel_requested.push(i.cancel_requested);
        self.lease_owner
            .push(i.lease.as_ref().map(|l| l.owner.to_string()));
        self.lease_token.push(
            i.lease
                .as_ref()
                .map(|l| codec::i64_of(l.token.0, "fencing token"))
                .transpose()?,
        );
        self.lease_expires_at
            .push(i.lease.as_ref().map(|l| l.expires_at.as_millis()));
        Ok(())
    }
}

/// The final effect of a transition's queue ops on one key.
enum QueueEffect {
    Put(QueueItem),
    Remove,
    Cancel,
}

#[derive(Default)]
struct Writes {
    new_instances: InstanceCols,
    instances: InstanceCols,
    new_steps: StepCols,
    steps: StepCols,
    queue_put: QueueCols,
    queue_del: Vec<QueueKey>,
    queue_cancel: Vec<QueueKey>,
    ev_instance: Vec<uuid::Uuid>,
    ev_at: Vec<i64>,
    ev_kind: Vec<String>,
    ev_step: Vec<Option<String>>,
    ev_attempt: Vec<Option<i32>>,
    ev_detail: Vec<Option<String>>,
    dlq_instance: Vec<uuid::Uuid>,
    dlq_workflow: Vec<String>,
    dlq_step: Vec<String>,
    dlq_kind: Vec<String>,
    dlq_input: Vec<String>,
    dlq_error: Vec<String>,
    dlq_reason: Vec<String>,
    dlq_at: Vec<i64>,
    dlq_delete: Vec<i64>,
    hd_instance: Vec<uuid::Uuid>,
    hd_step: Vec<String>,
    hd_by: Vec<String>,
    hd_decision: Vec<String>,
    hd_comment: Vec<Option<String>>,
    hd_at: Vec<i64>,
    new_work: bool,
}

impl Writes {
    fn is_empty(&self) -> bool {
        self.new_instances.id.is_empty()
            && self.instances.id.is_empty()
            && self.new_steps.is_empty()
            && self.steps.is_empty()
            && self.queue_put.instance_id.is_empty()
            && self.queue_del.is_empty()
            && self.queue_cancel.is_empty()
            && self.ev_instance.is_empty()
            && self.dlq_instance.is_empty()
            && self.dlq_delete.is_empty()
    }

    fn add(&mut self, t: &Transition, snap: Option<&InstanceSnapshot>) -> Result<(), StoreError> {
        if t.create {
            self.new_instances.push(&t.instance, None)?;
        } else {
            self.instances
                .push(&t.instance, snap.map(|s| &s.instance))?;
        }
        // Steps: the last write of each step wins (the checks saw them in order).
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, w) in t.steps.iter().enumerate() {
            last.insert(&w.run.step, i);
        }
        for (i, w) in t.steps.iter().enumerate() {
            if last.get(&*w.run.step) != Some(&i) {
                continue;
            }
            let old = snap.and_then(|s| s.steps.iter().find(|r| r.step == w.run.step));
            if old.is_some() {
                self.steps.push(&w.run, old)?;
            } else {
                self.new_steps.push(&w.run, None)?;
            }
            if let Some(d) = &w.run.decision
                && old.is_none_or(|o| o.decision.is_none())
            {
                self.hd_instance.push(w.run.instance_id.0);
                self.hd_step.push(w.run.step.to_string());
                self.hd_by.push(d.decided_by.clone());
                self.hd_decision.push(
                    match d.decision {
                        floxy_core::model::Decision::Confirm => "confirm",
                        floxy_core::model::Decision::Reject => "reject",
                    }
                    .to_owned(),
                );
                self.hd_comment.push(d.comment.clone());
                self.hd_at.push(d.decided_at.as_millis());
            }
        }
        // Queue: reduce the ops on each key to their final effect.
        let mut effects: Vec<(QueueKey, QueueEffect)> = Vec::new();
        for op in &t.queue {
            let key = op.key();
            let pos = effects.iter().position(|(k, _)| k == key);
            let next = match (op, pos.map(|p| &effects[p].1)) {
                (QueueOp::Upsert(item), _) => QueueEffect::Put(item.clone()),
                // A delete, or a cancel request for an item deleted earlier in the transition.
                (QueueOp::Delete(_), _)
                | (QueueOp::RequestCancel(_), Some(QueueEffect::Remove)) => QueueEffect::Remove,
                (QueueOp::RequestCancel(_), Some(QueueEffect::Put(item))) => {
                    let mut item = item.clone();
                    item.cancel_requested = true;
                    QueueEffect::Put(item)
                }
                (QueueOp::RequestCancel(_), _) => QueueEffect::Cancel,
            };
            match pos {
                Some(p) => effects[p].1 = next,
                None => effects.push((key.clone(), next)),
            }
        }
        for (key, effect) in effects {
            match effect {
                QueueEffect::Put(item) => {
                    self.new_work = true;
                    self.queue_put.push(&item)?;
                }
                QueueEffect::Remove => self.queue_del.push(key),
                QueueEffect::Cancel => self.queue_cancel.push(key),
            }
        }
        for e in &t.events {
            self.ev_instance.push(t.instance.id.0);
            self.ev_at.push(t.now.as_millis());
            self.ev_kind.push(e.kind.as_str().to_owned());
            self.ev_step.push(e.step.as_deref().map(str::to_owned));
            self.ev_attempt
                .push(e.attempt.map(|a| codec::i32_of(a, "attempt")).transpose()?);
            self.ev_detail.push(e.detail.as_ref().map(codec::json));
        }
        for r in &t.dlq_insert {
            self.dlq_instance.push(r.instance_id.0);
            self.dlq_workflow.push(r.workflow_id.as_str().to_owned());
            self.dlq_step.push(r.step.to_string());
            self.dlq_kind.push(r.kind.as_str().to_owned());
            self.dlq_input.push(codec::json(&r.input));
            self.dlq_error.push(r.error.clone());
            self.dlq_reason.push(r.reason.clone());
            self.dlq_at.push(t.now.as_millis());
        }
        for d in &t.dlq_delete {
            if let Ok(v) = i64::try_from(d.0) {
                self.dlq_delete.push(v);
            }
        }
        Ok(())
    }

    async fn execute(self, q: &Queries, tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if !self.new_instances.id.is_empty() {
            self.new_instances
                .bind(sqlx::query(&q.insert_instances))
                .execute(&mut *tx)
                .await?;
        }
        if !self.instances.id.is_empty() {
            self.instances
                .bind(sqlx::query(&q.update_instances))
                .execute(&mut *tx)
                .await?;
        }
        if !self.new_steps.is_empty() {
            self.new_steps
                .bind(sqlx::query(&q.insert_steps))
                .execute(&mut *tx)
                .await?;
        }
        if !self.steps.is_empty() {
            self.steps
                .bind(sqlx::query(&q.update_steps))
                .execute(&mut *tx)
                .await?;
        }
        if !self.queue_del.is_empty() {
            let (a, b, c) = key_arrays(&self.queue_del);
            sqlx::query(&q.delete_queue)
                .bind(a)
                .bind(b)
                .bind(c)
                .execute(&mut *tx)
                .await?;
        }
        if !self.queue_put.instance_id.is_empty() {
            let c = self.queue_put;
            sqlx::query(&q.upsert_queue)
                .bind(c.instance_id)
                .bind(c.step)
                .bind(c.kind)
                .bind(c.workflow_id)
                .bind(c.handler)
                .bind(c.run_at)
                .bind(c.priority)
                .bind(c.order_key)
                .bind(c.attempt)
                .bind(c.lease_ttl_ms)
                .bind(c.cancel_requested)
                .bind(c.lease_owner)
                .bind(c.lease_token)
                .bind(c.lease_expires_at)
                .execute(&mut *tx)
                .await?;
        }
        if !self.queue_cancel.is_empty() {
            let (a, b, c) = key_arrays(&self.queue_cancel);
            sqlx::query(&q.cancel_queue)
                .bind(a)
                .bind(b)
                .bind(c)
                .execute(&mut *tx)
                .await?;
        }
        if !self.ev_instance.is_empty() {
            sqlx::query(&q.insert_events)
                .bind(self.ev_instance)
                .bind(self.ev_at)
                .bind(self.ev_kind)
                .bind(self.ev_step)
                .bind(self.ev_attempt)
                .bind(self.ev_detail)
                .execute(&mut *tx)
                .await?;
        }
        if !self.dlq_delete.is_empty() {
            sqlx::query(&q.delete_dlq)
                .bind(self.dlq_delete)
                .execute(&mut *tx)
                .await?;
        }
        if !self.dlq_instance.is_empty() {
            sqlx::query(&q.insert_dlq)
                .bind(self.dlq_instance)
                .bind(self.dlq_workflow)
                .bind(self.dlq_step)
                .bind(self.dlq_kind)
                .bind(self.dlq_input)
                .bind(self.dlq_error)
                .bind(self.dlq_reason)
                .bind(self.dlq_at)
                .execute(&mut *tx)
                .await?;
        }
        if !self.hd_instance.is_empty() {
            sqlx::query(&q.insert_decisions)
                .bind(self.hd_instance)
                .bind(self.hd_step)
                .bind(self.hd_by)
                .bind(self.hd_decision)
                .bind(self.hd_comment)
                .bind(self.hd_at)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

/// SQL of this module (schema placeholder `{s}`).
pub(crate) mod sql {
    use super::{DLQ_COLS, INSTANCE_COLS, STEP_COLS};

    pub(crate) fn lock_instances() -> String {
        format!(
            "SELECT {INSTANCE_COLS} FROM UNNEST($1::uuid[]) AS k(kid) \
             JOIN {{s}}.workflow_instances i ON i.id = k.kid ORDER BY id FOR UPDATE OF i"
        )
    }
    pub(crate) fn batch_steps() -> String {
        format!(
            "SELECT {STEP_COLS} FROM UNNEST($1::uuid[]) AS k(kid) \
             JOIN {{s}}.workflow_steps s ON s.instance_id = k.kid \
             ORDER BY instance_id, created_at, step"
        )
    }
    pub(crate) fn batch_dlq() -> String {
        format!(
            "SELECT {DLQ_COLS} FROM UNNEST($1::uuid[]) AS k(kid) \
             JOIN {{s}}.workflow_dlq d ON d.instance_id = k.kid ORDER BY id"
        )
    }
    pub(crate) const FIND_IDEM_BATCH: &str = "SELECT u.workflow_id, u.key, i.id \
        FROM UNNEST($1::text[], $2::text[]) AS u(workflow_id, key) \
        JOIN {s}.workflow_instances i ON i.workflow_id = u.workflow_id \
         AND i.idempotency_key = u.key";
    pub(crate) const LOCK_QUEUE: &str = "SELECT q.instance_id, q.step, q.kind, q.lease_token \
        FROM UNNEST($1::uuid[]) AS k(kid) JOIN {s}.workflow_queue q ON q.instance_id = k.kid \
        ORDER BY q.instance_id, q.step, q.kind_ord FOR UPDATE OF q";
    pub(crate) const DLQ_EXISTS: &str =
        "SELECT id FROM {s}.workflow_dlq WHERE id = ANY($1::int8[])";

    const INSTANCE_UNNEST: &str = "UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
        $5::text[], $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], \
        $12::int4[], $13::text[], $14::text[], $15::text[]) AS u(id, workflow_id, status, input, \
        output, error, idempotency_key, created_at, updated_at, version, completion_seq, \
        rollback_depth, rollback_to, failed_step, branches)";

    pub(crate) fn insert_instances() -> String {
        format!(
            "INSERT INTO {{s}}.workflow_instances ({INSTANCE_COLS}) \
             SELECT u.id, u.workflow_id, u.status, u.input::jsonb, u.output::jsonb, u.error, \
                    u.idempotency_key, u.created_at, u.updated_at, u.version, u.completion_seq, \
                    u.rollback_depth, u.rollback_to, u.failed_step, u.branches::jsonb \
             FROM {INSTANCE_UNNEST}"
        )
    }
    pub(crate) fn update_instances() -> String {
        format!(
            "UPDATE {{s}}.workflow_instances i SET workflow_id = u.workflow_id, \
                status = u.status, input = coalesce(u.input::jsonb, i.input), \
                output = u.output::jsonb, \
                error = u.error, idempotency_key = u.idempotency_key, \
                created_at = u.created_at, updated_at = u.updated_at, version = u.version, \
                completion_seq = u.completion_seq, rollback_depth = u.rollback_depth, \
                rollback_to = u.rollback_to, failed_step = u.failed_step, \
                branches = coalesce(u.branches::jsonb, i.branches) \
             FROM {INSTANCE_UNNEST} WHERE i.id = u.id"
        )
    }

    const STEP_UNNEST: &str = "UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], \
        $5::int4[], $6::text[], $7::text[], $8::text[], $9::int8[], $10::text[], $11::bool[], \
        $12::text[], $13::int8[], $14::int8[], $15::int8[]) AS u(instance_id, step, status, \
        attempts, compensation_attempts, input, output, error, completed_seq, compensate, \
        cancel_requested, decision, created_at, started_at, finished_at)";

    pub(crate) fn insert_steps() -> String {
        format!(
            "INSERT INTO {{s}}.workflow_steps ({STEP_COLS}) \
             SELECT u.instance_id, u.step, u.status, u.attempts, u.compensation_attempts, \
                    u.input::jsonb, u.output::jsonb, u.error, u.completed_seq, u.compensate, \
                    u.cancel_requested, u.decision::jsonb, u.created_at, u.started_at, \
                    u.finished_at \
             FROM {STEP_UNNEST}"
        )
    }
    pub(crate) fn update_steps() -> String {
        format!(
            "UPDATE {{s}}.workflow_steps s SET status = u.status, attempts = u.attempts, \
                compensation_attempts = u.compensation_attempts, \
                input = coalesce(u.input::jsonb, s.input), \
                output = u.output::jsonb, error = u.error, completed_seq = u.completed_seq, \
                compensate = u.compensate, cancel_requested = u.cancel_requested, \
                decision = u.decision::jsonb, created_at = u.created_at, \
                started_at = u.started_at, finished_at = u.finished_at \
             FROM {STEP_UNNEST} \
             WHERE s.instance_id = u.instance_id \
               AND s.step = u.step"
        )
    }

    pub(crate) const UPSERT_QUEUE: &str = "INSERT INTO {s}.workflow_queue (instance_id, step, \
            kind, workflow_id, handler, run_at, priority, order_key, attempt, lease_ttl_ms, \
            cancel_requested, lease_owner, lease_token, lease_expires_at) \
        SELECT u.* FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
            $5::text[], $6::int8[], $7::int2[], $8::int8[], $9::int4[], $10::int8[], \
            $11::bool[], $12::text[], $13::int8[], $14::int8[]) AS u(instance_id, step, kind, \
            workflow_id, handler, run_at, priority, order_key, attempt, lease_ttl_ms, \
            cancel_requested, lease_owner, lease_token, lease_expires_at) \
        ON CONFLICT (instance_id, step, kind) DO UPDATE SET \
            workflow_id = EXCLUDED.workflow_id, handler = EXCLUDED.handler, \
            run_at = EXCLUDED.run_at, priority = EXCLUDED.priority, \
            order_key = EXCLUDED.order_key, attempt = EXCLUDED.attempt, \
            lease_ttl_ms = EXCLUDED.lease_ttl_ms, cancel_requested = EXCLUDED.cancel_requested, \
            lease_owner = EXCLUDED.lease_owner, lease_token = EXCLUDED.lease_token, \
            lease_expires_at = EXCLUDED.lease_expires_at";
    /// Fencing tokens for eager claims, from the same sequence as claims.
    pub(crate) const NEXT_TOKENS: &str =
        "SELECT nextval('{s}.workflow_lease_tokens') FROM generate_series(1, $1::int8)";
    pub(crate) const DELETE_QUEUE: &str = "DELETE FROM {s}.workflow_queue q \
        USING UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(instance_id, step, kind) \
        WHERE q.instance_id = u.instance_id AND q.step = u.step AND q.kind = u.kind";
    pub(crate) const CANCEL_QUEUE: &str = "UPDATE {s}.workflow_queue q \
        SET cancel_requested = true \
        FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(instance_id, step, kind) \
        WHERE q.instance_id = u.instance_id AND q.step = u.step AND q.kind = u.kind";
    pub(crate) const INSERT_EVENTS: &str = "INSERT INTO {s}.workflow_events (instance_id, \
            created_at, kind, step, attempt, detail) \
        SELECT u.instance_id, u.created_at, u.kind, u.step, u.attempt, u.detail::jsonb \
        FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::int4[], $6::text[]) \
             WITH ORDINALITY AS u(instance_id, created_at, kind, step, attempt, detail, ord) \
        ORDER BY u.ord";
    pub(crate) const DELETE_DLQ: &str = "DELETE FROM {s}.workflow_dlq WHERE id = ANY($1::int8[])";
    pub(crate) const INSERT_DLQ: &str = "INSERT INTO {s}.workflow_dlq (instance_id, \
            workflow_id, step, kind, input, error, reason, created_at) \
        SELECT u.instance_id, u.workflow_id, u.step, u.kind, u.input::jsonb, u.error, \
               u.reason, u.created_at \
        FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::int8[]) WITH ORDINALITY AS u(instance_id, workflow_id, step, kind, \
             input, error, reason, created_at, ord) \
        ORDER BY u.ord";
    pub(crate) const INSERT_DECISIONS: &str = "INSERT INTO {s}.workflow_human_decisions \
            (instance_id, step, decided_by, decision, comment, decided_at) \
        SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::int8[]) \
        ON CONFLICT DO NOTHING";
    pub(crate) const NOTIFY: &str = "SELECT pg_notify($1, '')";
}
