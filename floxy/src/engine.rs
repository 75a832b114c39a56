//! The [`Engine`]: registration, starting instances, operator commands and reads.
//!
//! The worker pool lives in [`crate::worker`]; waiting in [`crate::wait`].

use crate::clock::Clock;
use crate::clock_sync::SyncedClock;
use crate::commit::with_store_retry;
use crate::config::{EngineBuilder, EngineConfig};
use crate::error::EngineError;
use crate::handler::{FnHandler, Handler, HandlerError, HandlerRegistry, StepContext};
use crate::heartbeat::LeaseTable;
use crate::worker::Lifecycle;
use crate::workflows::WorkflowCache;
use floxy_core::graph::CompiledWorkflow;
use floxy_core::machine::{self, Input, TransitionError};
use floxy_core::model::{
    Decision, DlqId, DlqRecord, Event, InstanceId, InstanceRecord, Payload, QueueItem, StepRun,
    WorkflowDefinition, WorkflowId,
};
use floxy_core::store::{
    CreateOutcome, DlqQuery, InstanceQuery, MAX_PAGE_SIZE, Page, Store, StoreError, StoreStats,
};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Upper bound on the number of events [`Engine::events`] returns for one instance.
pub const MAX_TIMELINE_EVENTS: usize = 100_000;

/// Options of [`Engine::start_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StartOptions {
    /// Caller-chosen idempotency key: a second start of the same workflow with the same key
    /// returns the existing instance instead of creating another.
    pub idempotency_key: Option<String>,
}

impl StartOptions {
    /// No options.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// The floxy runtime. Cheap to clone (an `Arc` inside); every clone is the same engine.
///
/// See the [crate docs](crate) for the model and the drive loop.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

/// The shared state of an engine.
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: EngineConfig,
    pub(crate) handlers: HandlerRegistry,
    pub(crate) workflows: WorkflowCache,
    pub(crate) leases: Arc<LeaseTable>,
    /// The engine's clock (also `config.clock`): the source plus the store clock offset.
    pub(crate) clock: Arc<SyncedClock>,
    /// Bumped after every local commit; wakes idle workers.
    pub(crate) commits: watch::Sender<u64>,
    /// Wakes the waiters of an instance after its local commits.
    pub(crate) waiters: Arc<crate::waiters::Waiters>,
    pub(crate) lifecycle: Lifecycle,
    /// Committed events for [`Engine::subscribe`].
    pub(crate) events: crate::subscribe::EventBus,
    ids: Mutex<uuid::timestamp::context::ContextV7>,
    /// Counter of deterministic ids (used when `config.id_seed` is set).
    id_counter: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops the heartbeat task (it holds no reference to the engine).
        self.lifecycle.stop_all();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("worker_id", &self.inner.config.worker_id)
            .field("workers", &self.inner.config.workers)
            .field("batch_size", &self.inner.config.batch_size)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `store` with default settings.
    #[must_use]
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::builder(store).build()
    }

    /// A builder for an engine over `store`.
    pub fn builder(store: Arc<dyn Store>) -> EngineBuilder {
        EngineBuilder::new(store)
    }

    pub(crate) fn from_parts(store: Arc<dyn Store>, mut config: EngineConfig) -> Self {
        let (commits, _) = watch::channel(0);
        let clock = Arc::new(SyncedClock::new(Arc::clone(&config.clock)));
        config.clock = Arc::clone(&clock) as Arc<dyn Clock>;
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                clock,
                handlers: HandlerRegistry::default(),
                workflows: WorkflowCache::default(),
                leases: Arc::new(LeaseTable::default()),
                commits,
                waiters: Arc::default(),
                lifecycle: Lifecycle::default(),
                events: crate::subscribe::EventBus::default(),
                ids: Mutex::new(uuid::timestamp::context::ContextV7::new()),
                id_counter: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The engine's clock: the configured source ([`EngineBuilder::clock`]) plus the
    /// measured offset to the store's clock, if the store has one ([`Engine::sync_clock`]).
    /// Every time the engine hands the store comes from it.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.config.clock
    }

    /// The offset (ms, store minus clock source) the engine's clock currently adds to its
    /// source; `None` until a measurement succeeded, and always with a store that has no
    /// clock ([`Store::clock`]).
    #[must_use]
    pub fn clock_offset_ms(&self) -> Option<i64> {
        self.inner.clock.offset_ms()
    }

    /// Measures the offset between the clock source and the store's clock now
    /// ([`crate::CLOCK_SAMPLES`] round trips; the engine does this by itself, see
    /// [`EngineBuilder::clock_sync_interval_ms`]) and returns the offset in use afterwards
    /// (as [`Engine::clock_offset_ms`]: a measurement slower than
    /// [`crate::MAX_CLOCK_SAMPLE_RTT_MS`] leaves a known offset unchanged).
    ///
    /// # Errors
    /// [`EngineError::Store`] (the offset is unchanged).
    pub async fn sync_clock(&self) -> Result<Option<i64>, EngineError> {
        let inner = &self.inner;
        inner
            .clock
            .measure(inner.store.as_ref(), &inner.leases)
            .await?;
        Ok(self.clock_offset_ms())
    }

    /// The lease owner name of this engine.
    #[must_use]
    pub fn worker_id(&self) -> &str {
        &self.inner.config.worker_id
    }

    /// Subscribes to the events this engine commits from now on (each with its instance
    /// and workflow ids), for live views without polling:
    ///
    /// ```
    /// # async fn f(engine: floxy::Engine) {
    /// let mut events = engine.subscribe();
    /// while let Ok(e) = events.recv().await {
    ///     println!("{} {} {:?}", e.instance_id, e.kind().as_str(), e.step());
    /// }
    /// # }
    /// ```
    ///
    /// The channel is bounded ([`crate::SUBSCRIPTION_CAPACITY`] events): a subscriber that
    /// falls behind gets [`crate::SubscriptionError::Lagged`] with the number it missed, and
    /// never slows commits. Only local commits are seen; see [`crate::CommittedEvent`] for
    /// ordering.
    #[must_use]
    pub fn subscribe(&self) -> crate::EventSubscription {
        self.inner.events.subscribe()
    }

    // ----- registration -------------------------------------------------------------------

    /// Registers `handler` under `name` (replacing any handler of that name). Workers claim
    /// only items whose handler is registered; registering after
    /// [`Engine::start_workers`] takes effect at the next claim.
    pub fn register_handler(&self, name: impl Into<String>, handler: impl Handler) {
        self.inner
            .handlers
            .insert(name.into().into(), Arc::new(handler));
    }

    /// Whether a handler named `name` is registered in this engine (this process).
    #[must_use]
    pub fn has_handler(&self, name: &str) -> bool {
        self.inner.handlers.get(name).is_some()
    }

    /// Registers an already shared handler under `name`.
    pub fn register_handler_arc(&self, name: impl Into<String>, handler: Arc<dyn Handler>) {
        self.inner.handlers.insert(name.into().into(), handler);
    }

    /// Registers an async closure as the handler `name`:
    ///
    /// ```
    /// # fn f(engine: &floxy::Engine) {
    /// engine.register_fn("echo", |_ctx, input| async move { Ok(input) });
    /// # }
    /// ```
    pub fn register_fn<F, Fut>(&self, name: impl Into<String>, f: F)
    where
        F: Fn(StepContext, floxy_core::model::Payload) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<floxy_core::model::Payload, HandlerError>> + Send + 'static,
    {
        self.register_handler(name, FnHandler::new(f));
    }

    /// Validates `def`, stores it ([`Store::put_definition`]) and caches its compiled form.
    /// Registering the same content again is a no-op.
    ///
    /// # Errors
    /// [`EngineError::Definition`] for an invalid definition,
    /// [`EngineError::DefinitionConflict`] if the id is stored with different content,
    /// [`EngineError::Store`].
    pub async fn register_workflow(
        &self,
        def: WorkflowDefinition,
    ) -> Result<WorkflowId, EngineError> {
        self.inner
            .workflows
            .register(self.inner.store.as_ref(), def)
            .await
    }

    /// The compiled definition `id` (from the cache, or loaded from the store and compiled).
    ///
    /// # Errors
    /// [`EngineError::UnknownWorkflow`], [`EngineError::Definition`] (a stored definition
    /// that no longer validates), [`EngineError::Store`].
    pub async fn workflow(&self, id: &WorkflowId) -> Result<Arc<CompiledWorkflow>, EngineError> {
        self.inner
            .workflows
            .get(self.inner.store.as_ref(), id)
            .await
    }

    // ----- starting -----------------------------------------------------------------------

    /// Starts an instance of `workflow_id` with `input`; returns its id (a `UUIDv7` from the
    /// engine's clock). The instance is committed `running` with its first work queued.
    ///
    /// # Errors
    /// [`EngineError::UnknownWorkflow`], [`EngineError::PayloadTooLarge`] (input above the
    /// workflow's `max_payload_bytes`), [`EngineError::Store`].
    pub async fn start(
        &self,
        workflow_id: &WorkflowId,
        input: impl Into<Payload>,
    ) -> Result<InstanceId, EngineError> {
        self.start_with(workflow_id, input, StartOptions::default())
            .await
    }

    /// [`Engine::start`] with options. With an idempotency key, a second start of the same
    /// workflow with the same key returns the first instance's id and writes nothing.
    ///
    /// # Errors
    /// As [`Engine::start`].
    pub async fn start_with(
        &self,
        workflow_id: &WorkflowId,
        input: impl Into<Payload>,
        options: StartOptions,
    ) -> Result<InstanceId, EngineError> {
        let wf = self.workflow(workflow_id).await?;
        let input = input.into();
        input.check_size(wf.definition().options.max_payload_bytes)?;
        self.inner.ensure_clock_synced().await;
        let id = self.new_instance_id();
        let t = machine::start(&wf, id, input, options.idempotency_key, self.clock().now())?;
        let store = &self.inner.store;
        let outcome =
            with_store_retry("create_instance", || store.create_instance(t.clone())).await;
        match outcome {
            Ok(CreateOutcome::Created(id)) => {
                self.inner.after_commit(&t);
                tracing::debug!(instance = %id, workflow = %workflow_id, "instance started");
                Ok(id)
            }
            Ok(existing) => Ok(existing.id()),
            // Ids are fresh UUIDv7s: a conflict on our id means a retried call had already
            // committed it.
            Err(StoreError::Conflict(msg)) => match store.get_instance(id).await? {
                Some(_) => {
                    self.inner.after_commit(&t);
                    Ok(id)
                }
                None => Err(EngineError::Store(StoreError::Conflict(msg))),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Starts an instance and waits until it settles (see [`Engine::wait_for`]).
    ///
    /// # Errors
    /// As [`Engine::start`] and [`Engine::wait_for`].
    pub async fn start_and_wait(
        &self,
        workflow_id: &WorkflowId,
        input: impl Into<Payload>,
        timeout: Duration,
    ) -> Result<InstanceRecord, EngineError> {
        let id = self.start(workflow_id, input).await?;
        self.wait_for(id, timeout).await
    }

    fn new_instance_id(&self) -> InstanceId {
        let ms = u64::try_from(self.clock().now().as_millis()).unwrap_or(0);
        if let Some(seed) = self.inner.config.id_seed {
            let n = self
                .inner
                .id_counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut bits = [0u8; 10];
            bits[..8].copy_from_slice(&splitmix64(seed ^ n.rotate_left(32)).to_le_bytes());
            // The counter's low 16 bits, little-endian.
            bits[8..].copy_from_slice(&n.to_le_bytes()[..2]);
            return InstanceId(uuid::Builder::from_unix_timestamp_millis(ms, &bits).into_uuid());
        }
        let ctx = self.inner.ids.lock();
        let ts = uuid::Timestamp::from_unix(&*ctx, ms / 1_000, (ms % 1_000) as u32 * 1_000_000);
        InstanceId(uuid::Uuid::new_v7(ts))
    }

    // ----- operator commands --------------------------------------------------------------

    /// Cancels the instance: pending and waiting steps are skipped, running handlers are
    /// asked to stop, every step that made an attempt is compensated (completed, failed,
    /// skipped while waiting for a retry, or reporting late after the stop; savepoints
    /// ignored) and the instance ends `cancelled`. Works on any non-terminal instance, `dlq` included.
    ///
    /// Returns the instance as the command left it. A cancel while a cancel (or abort) is
    /// already in progress is a no-op that returns the current state.
    ///
    /// # Errors
    /// [`EngineError::UnknownInstance`]; [`EngineError::Transition`] with
    /// [`TransitionError::InstanceTerminal`] on a terminal instance; [`EngineError::Store`].
    pub async fn cancel(
        &self,
        id: InstanceId,
        reason: Option<&str>,
    ) -> Result<InstanceRecord, EngineError> {
        self.cancel_by(id, reason, None).await
    }

    /// [`Engine::cancel`] on behalf of operator `by`, whose name is recorded in the
    /// `cancellation_started` event (`detail.by`) next to the reason.
    ///
    /// # Errors
    /// As [`Engine::cancel`].
    pub async fn cancel_by(
        &self,
        id: InstanceId,
        reason: Option<&str>,
        by: Option<&str>,
    ) -> Result<InstanceRecord, EngineError> {
        let input = Input::Cancel {
            reason: reason.map(str::to_owned),
            by: by.map(str::to_owned),
        };
        self.command(id, input, true).await
    }

    /// Aborts the instance: pending and waiting steps are skipped, running handlers are asked
    /// to stop, nothing is compensated, and the instance ends `aborted`.
    ///
    /// Returns the instance as the command left it; a request while one is in progress is a
    /// no-op that returns the current state.
    ///
    /// # Errors
    /// As [`Engine::cancel`].
    pub async fn abort(
        &self,
        id: InstanceId,
        reason: Option<&str>,
    ) -> Result<InstanceRecord, EngineError> {
        self.abort_by(id, reason, None).await
    }

    /// [`Engine::abort`] on behalf of operator `by`, whose name is recorded in the
    /// `abort_started` event (`detail.by`) next to the reason.
    ///
    /// # Errors
    /// As [`Engine::abort`].
    pub async fn abort_by(
        &self,
        id: InstanceId,
        reason: Option<&str>,
        by: Option<&str>,
    ) -> Result<InstanceRecord, EngineError> {
        let input = Input::Abort {
            reason: reason.map(str::to_owned),
            by: by.map(str::to_owned),
        };
        self.command(id, input, true).await
    }

    /// Records a human decision on `step`, which must be `waiting_decision`. Confirm
    /// continues the flow at once; reject aborts the instance (or rolls back, by the step's
    /// reject policy). Exactly one decision wins.
    ///
    /// # Errors
    /// [`EngineError::UnknownInstance`]; [`EngineError::Transition`] with
    /// [`TransitionError::NotWaitingDecision`] (including a second decision),
    /// [`TransitionError::NotHumanStep`], [`TransitionError::UnknownStep`];
    /// [`EngineError::Store`].
    pub async fn decide(
        &self,
        id: InstanceId,
        step: &str,
        decided_by: &str,
        decision: Decision,
        comment: Option<&str>,
    ) -> Result<InstanceRecord, EngineError> {
        let input = Input::Decide {
            step: step.into(),
            decided_by: decided_by.to_owned(),
            decision,
            comment: comment.map(str::to_owned),
        };
        self.command(id, input, false).await
    }

    /// Requeues a DLQ record: the step returns to `pending` with a fresh retry budget (and
    /// `new_input` as its input when given), paused work is restored, the instance returns
    /// to `running` and the record is removed. For a record of a failed compensation, the
    /// compensation is re-run (never the forward handler).
    ///
    /// # Errors
    /// [`EngineError::UnknownDlqRecord`], [`EngineError::PayloadTooLarge`],
    /// [`EngineError::Transition`], [`EngineError::Store`].
    pub async fn requeue(
        &self,
        dlq_id: DlqId,
        new_input: Option<Payload>,
    ) -> Result<InstanceRecord, EngineError> {
        self.requeue_by(dlq_id, new_input, None).await
    }

    /// [`Engine::requeue`] on behalf of operator `by`, whose name is recorded in the
    /// `dlq_requeued` event (`detail.by`).
    ///
    /// # Errors
    /// As [`Engine::requeue`].
    pub async fn requeue_by(
        &self,
        dlq_id: DlqId,
        new_input: Option<Payload>,
        by: Option<&str>,
    ) -> Result<InstanceRecord, EngineError> {
        let record = self
            .inner
            .store
            .get_dlq(dlq_id)
            .await?
            .ok_or(EngineError::UnknownDlqRecord(dlq_id))?;
        if let Some(p) = &new_input {
            let wf = self.workflow(&record.record.workflow_id).await?;
            p.check_size(wf.definition().options.max_payload_bytes)?;
        }
        let input = Input::Requeue {
            dlq_id,
            new_input,
            by: by.map(str::to_owned),
        };
        self.command(record.record.instance_id, input, false).await
    }

    /// Applies an operator input to `id` as one transition.
    async fn command(
        &self,
        id: InstanceId,
        input: Input,
        in_progress_is_ok: bool,
    ) -> Result<InstanceRecord, EngineError> {
        let record = self
            .instance(id)
            .await?
            .ok_or(EngineError::UnknownInstance(id))?;
        let wf = self.workflow(&record.workflow_id).await?;
        self.inner.ensure_clock_synced().await;
        match self.inner.apply_input(&wf, id, input).await {
            Ok(t) => Ok(t.instance),
            Err(StoreError::Rejected(TransitionError::AlreadyInProgress { .. }))
                if in_progress_is_ok =>
            {
                self.instance(id)
                    .await?
                    .ok_or(EngineError::UnknownInstance(id))
            }
            Err(StoreError::NotFound(_)) => Err(EngineError::UnknownInstance(id)),
            Err(e) => Err(e.into()),
        }
    }

    // ----- reads --------------------------------------------------------------------------

    /// The instance record, if it exists.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn instance(&self, id: InstanceId) -> Result<Option<InstanceRecord>, EngineError> {
        Ok(self.inner.store.get_instance(id).await?)
    }

    /// The step runs of an instance, ordered by creation time then name.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn steps(&self, id: InstanceId) -> Result<Vec<StepRun>, EngineError> {
        Ok(self.inner.store.list_steps(id).await?)
    }

    /// The timeline of an instance: all its events in commit order (at most
    /// [`MAX_TIMELINE_EVENTS`]).
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn events(&self, id: InstanceId) -> Result<Vec<Event>, EngineError> {
        let mut out: Vec<Event> = Vec::new();
        let mut after = None;
        while out.len() < MAX_TIMELINE_EVENTS {
            let page = self
                .inner
                .store
                .list_events(id, after, MAX_PAGE_SIZE)
                .await?;
            let full = page.len() >= MAX_PAGE_SIZE;
            after = page.last().map(|e| e.seq).or(after);
            out.extend(page);
            if !full {
                break;
            }
        }
        out.truncate(MAX_TIMELINE_EVENTS);
        Ok(out)
    }

    /// The queue items of an instance (inspection).
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn queue(&self, id: InstanceId) -> Result<Vec<QueueItem>, EngineError> {
        Ok(self.inner.store.list_queue(id).await?)
    }

    /// A page of DLQ records.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn dlq(&self, query: &DlqQuery) -> Result<Page<DlqRecord, DlqId>, EngineError> {
        Ok(self.inner.store.list_dlq(query).await?)
    }

    /// A page of instances.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<Page<InstanceRecord, InstanceId>, EngineError> {
        Ok(self.inner.store.list_instances(query).await?)
    }

    /// Counts for dashboards.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn stats(&self) -> Result<StoreStats, EngineError> {
        Ok(self.inner.store.stats().await?)
    }

    /// Retention: removes terminal instances (with their steps, events, queue items and DLQ
    /// records) last updated more than `older_than` ago by the engine's clock. Never removes
    /// a non-terminal or `dlq` instance. Returns how many instances were removed.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn cleanup(&self, older_than: Duration) -> Result<u64, EngineError> {
        let age_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        self.inner.ensure_clock_synced().await;
        let cutoff =
            floxy_core::model::Timestamp(self.clock().now().as_millis().saturating_sub(age_ms));
        Ok(self.inner.store.cleanup(cutoff).await?)
    }
}

impl Inner {
    /// Before the first use of the clock for a store write: measures the store clock offset
    /// once and starts the periodic measurement (unless the interval is 0 or the store has
    /// no clock). Later calls return at once; concurrent first calls wait for the first.
    pub(crate) async fn ensure_clock_synced(&self) {
        let interval_ms = self.config.clock_sync_interval_ms;
        if interval_ms == 0 {
            return;
        }
        self.clock
            .first
            .get_or_init(|| async {
                crate::clock_sync::measure_logged(&self.clock, self.store.as_ref(), &self.leases)
                    .await;
                if self.clock.store_has_no_clock() {
                    return;
                }
                // Holds no reference to the engine: stops when the engine is dropped.
                tokio::spawn(crate::clock_sync::run(
                    Arc::clone(&self.clock),
                    Arc::clone(&self.store),
                    Arc::clone(&self.leases),
                    interval_ms,
                    self.lifecycle.clock_sync_stop.clone(),
                ));
            })
            .await;
    }
}

/// splitmix64 finaliser: spreads a counter over 64 bits.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
