//! Shared helpers of the integration tests: an engine on the memory store with a virtual
//! clock, recording handlers, event helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use floxy::{
    Engine, Event, HandlerError, InstanceId, Payload, StepContext, StepRun, Timestamp, TokioClock,
};
use floxy_store_memory::MemoryStore;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Epoch of the virtual clock.
pub(crate) const EPOCH: Timestamp = Timestamp(1_700_000_000_000);
/// Generous bound for waits on virtual time (auto-advance makes it instant).
pub(crate) const WAIT: Duration = Duration::from_mins(10);

/// An engine on a fresh memory store, reading tokio's (virtual) time.
pub(crate) fn engine() -> (Engine, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    (engine_on(Arc::clone(&store)), store)
}

/// An engine on `store`.
pub(crate) fn engine_on(store: Arc<MemoryStore>) -> Engine {
    engine_with(store)
}

/// An engine on any store.
pub(crate) fn engine_with(store: Arc<dyn floxy::Store>) -> Engine {
    Engine::builder(store)
        .clock(Arc::new(TokioClock::with_epoch(EPOCH)))
        .workers(4)
        .batch_size(8)
        .poll_interval_ms(200)
        .worker_id("test-worker")
        .build()
}

/// A shared call log.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub(crate) fn push(&self, s: impl Into<String>) {
        self.0.lock().push(s.into());
    }
    pub(crate) fn entries(&self) -> Vec<String> {
        self.0.lock().clone()
    }
    pub(crate) fn count(&self, s: &str) -> usize {
        self.0.lock().iter().filter(|e| *e == s).count()
    }
}

/// Registers `name` as a handler that logs its name and appends it to the input's `trail`.
pub(crate) fn trail_handler(engine: &Engine, name: &'static str, log: &Log) {
    let log = log.clone();
    engine.register_fn(name, move |_ctx: StepContext, input: Payload| {
        let log = log.clone();
        async move {
            log.push(name);
            Ok(append_trail(&input, name))
        }
    });
}

/// Registers `name` as a compensation that logs `name(reason)`.
pub(crate) fn compensation_handler(engine: &Engine, name: &'static str, log: &Log) {
    let log = log.clone();
    engine.register_fn(name, move |ctx: StepContext, input: Payload| {
        let log = log.clone();
        async move {
            let info = ctx.compensation().expect("compensation info");
            assert!(ctx.is_compensation());
            log.push(format!("{name}({})", info.reason.as_str()));
            Ok(input)
        }
    });
}

/// Registers `name` as a handler that always fails.
pub(crate) fn failing_handler(engine: &Engine, name: &'static str, retryable: bool, log: &Log) {
    let log = log.clone();
    engine.register_fn(name, move |_ctx: StepContext, _input: Payload| {
        let log = log.clone();
        async move {
            log.push(name);
            Err(if retryable {
                HandlerError::retryable(format!("{name} failed"))
            } else {
                HandlerError::fatal(format!("{name} failed"))
            })
        }
    });
}

/// `input` with `name` appended to its `trail` array.
pub(crate) fn append_trail(input: &Payload, name: &str) -> Payload {
    let mut v = input.value().clone();
    if !v.is_object() {
        v = json!({});
    }
    let trail = v
        .as_object_mut()
        .unwrap()
        .entry("trail")
        .or_insert_with(|| Value::Array(vec![]));
    if let Value::Array(a) = trail {
        a.push(json!(name));
    }
    Payload::new(v)
}

/// Event names of a timeline.
pub(crate) fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// Event names concerning one step.
pub(crate) fn step_events(events: &[Event], step: &str) -> Vec<&'static str> {
    events
        .iter()
        .filter(|e| e.step.as_deref() == Some(step))
        .map(|e| e.kind.as_str())
        .collect()
}

/// The run of `step`.
pub(crate) async fn step(engine: &Engine, id: InstanceId, step: &str) -> StepRun {
    engine
        .steps(id)
        .await
        .unwrap()
        .into_iter()
        .find(|s| &*s.step == step)
        .unwrap_or_else(|| panic!("no run of step {step}"))
}

/// A signal a handler raises once it runs, and a test awaits.
#[derive(Clone, Default)]
pub(crate) struct Started(Arc<tokio::sync::Notify>);

impl Started {
    pub(crate) fn raise(&self) {
        self.0.notify_one();
    }
    pub(crate) async fn wait(&self) {
        tokio::time::timeout(WAIT, self.0.notified())
            .await
            .expect("handler never started");
    }
}

/// A store that answers the next `lose` heartbeats with `Lost` (a partitioned worker whose
/// leases were taken over), and delegates everything else to a memory store.
pub(crate) struct LosingStore {
    pub inner: MemoryStore,
    pub lose: std::sync::atomic::AtomicUsize,
    /// `load_instance` calls so far.
    pub loads: std::sync::atomic::AtomicUsize,
}

#[floxy::async_trait]
impl floxy::Store for LosingStore {
    fn capabilities(&self) -> floxy::Capabilities {
        self.inner.capabilities()
    }
    async fn put_definition(
        &self,
        def: &floxy::WorkflowDefinition,
    ) -> Result<floxy::PutDefinition, floxy::StoreError> {
        self.inner.put_definition(def).await
    }
    async fn get_definition(
        &self,
        id: &floxy::WorkflowId,
    ) -> Result<Option<floxy::WorkflowDefinition>, floxy::StoreError> {
        self.inner.get_definition(id).await
    }
    async fn list_definitions(&self) -> Result<Vec<floxy::WorkflowDefinition>, floxy::StoreError> {
        self.inner.list_definitions().await
    }
    async fn create_instance(
        &self,
        t: floxy::Transition,
    ) -> Result<floxy::CreateOutcome, floxy::StoreError> {
        self.inner.create_instance(t).await
    }
    async fn update_instance(
        &self,
        id: InstanceId,
        f: floxy::TransitionFn,
    ) -> Result<floxy::Transition, floxy::StoreError> {
        self.inner.update_instance(id, f).await
    }
    async fn claim(
        &self,
        req: &floxy::ClaimRequest,
    ) -> Result<Vec<floxy::ClaimedItem>, floxy::StoreError> {
        self.inner.claim(req).await
    }
    async fn heartbeat(
        &self,
        owner: &str,
        leases: &[floxy::LeaseRef],
        now: Timestamp,
    ) -> Result<Vec<floxy::LeaseState>, floxy::StoreError> {
        use std::sync::atomic::Ordering;
        let lose = self
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            Ok(vec![floxy::LeaseState::Lost; leases.len()])
        } else {
            self.inner.heartbeat(owner, leases, now).await
        }
    }
    async fn load_instance(
        &self,
        id: InstanceId,
    ) -> Result<Option<floxy::InstanceSnapshot>, floxy::StoreError> {
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.load_instance(id).await
    }
    async fn get_instance(
        &self,
        id: InstanceId,
    ) -> Result<Option<floxy::InstanceRecord>, floxy::StoreError> {
        self.inner.get_instance(id).await
    }
    async fn list_steps(&self, id: InstanceId) -> Result<Vec<StepRun>, floxy::StoreError> {
        self.inner.list_steps(id).await
    }
    async fn find_by_idempotency_key(
        &self,
        workflow_id: &floxy::WorkflowId,
        key: &str,
    ) -> Result<Option<InstanceId>, floxy::StoreError> {
        self.inner.find_by_idempotency_key(workflow_id, key).await
    }
    async fn list_instances(
        &self,
        q: &floxy::InstanceQuery,
    ) -> Result<floxy::Page<floxy::InstanceRecord, InstanceId>, floxy::StoreError> {
        self.inner.list_instances(q).await
    }
    async fn list_events(
        &self,
        id: InstanceId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, floxy::StoreError> {
        self.inner.list_events(id, after_seq, limit).await
    }
    async fn list_dlq(
        &self,
        q: &floxy::DlqQuery,
    ) -> Result<floxy::Page<floxy::DlqRecord, floxy::DlqId>, floxy::StoreError> {
        self.inner.list_dlq(q).await
    }
    async fn get_dlq(
        &self,
        id: floxy::DlqId,
    ) -> Result<Option<floxy::DlqRecord>, floxy::StoreError> {
        self.inner.get_dlq(id).await
    }
    async fn list_queue(&self, id: InstanceId) -> Result<Vec<floxy::QueueItem>, floxy::StoreError> {
        self.inner.list_queue(id).await
    }
    async fn next_due(
        &self,
        handlers: &[Arc<str>],
    ) -> Result<Option<Timestamp>, floxy::StoreError> {
        self.inner.next_due(handlers).await
    }
    async fn stats(&self) -> Result<floxy::StoreStats, floxy::StoreError> {
        self.inner.stats().await
    }
    async fn cleanup(&self, older_than: Timestamp) -> Result<u64, floxy::StoreError> {
        self.inner.cleanup(older_than).await
    }
}
