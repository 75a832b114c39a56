//! Store faults: a decorator around any [`Store`] adding latency and transient, retryable
//! errors ([`StoreError::Unavailable`]) at chosen rates.
//!
//! Two kinds of error are injected:
//!
//! * **error**: the call fails *before* reaching the wrapped store (nothing happened);
//! * **lost reply**: the call reaches the wrapped store and takes effect, then its answer is
//!   replaced by an error (a commit whose acknowledgement was lost, a claim whose items never
//!   reach the worker). Only for calls that change something (create, update, claim,
//!   heartbeat, register).
//!
//! With [`ChaosStore::observe`] the decorator also counts the answers of the wrapped store
//! that show fencing at work, per call (`<call>.<outcome>`, e.g.
//! `update_instance.stale_lease`), so a test can tell that a partitioned worker's late
//! writes were refused. Wrapping each engine's store in its own observing decorator
//! attributes them to that engine.
//!
//! | outcome | the wrapped store answered |
//! |---|---|
//! | `stale_lease` | [`StoreError::StaleLease`]: the write's fencing token is no longer the item's lease (another worker holds it now) |
//! | `stale_result` | the state machine refused a result for a step that moved on (another worker's attempt finished it) |
//! | `instance_terminal` | the state machine refused a write to an instance that already ended |
//! | `unavailable` | [`StoreError::Unavailable`] (e.g. a call into a silent connection timed out) |
//! | `lease_lost` (`heartbeat` only) | one per lease the heartbeat reported as no longer held |
//!
//! ```
//! use floxy_chaos::inject::store::{ChaosStore, StoreFaults};
//! use floxy_chaos::{FaultCounters, FaultSwitch};
//! use std::sync::Arc;
//!
//! let store = ChaosStore::new(
//!     Arc::new(floxy::MemoryStore::new()),
//!     StoreFaults { error: 0.02, latency: 0.2, latency_ms: (1, 20), ..StoreFaults::default() },
//!     7,
//!     FaultSwitch::new(true),
//!     FaultCounters::default(),
//! );
//! # let _ = store;
//! ```

use crate::faults::{FaultCounters, FaultSwitch};
use crate::rng::{ChaosRng, between, chance, rng_for};
use floxy::floxy_core::machine::TransitionError;
use floxy::{
    Capabilities, ClaimRequest, ClaimedItem, CreateOutcome, DlqId, DlqQuery, DlqRecord, Event,
    InstanceId, InstanceQuery, InstanceRecord, InstanceSnapshot, LeaseRef, LeaseState, Page,
    PutDefinition, QueueItem, StepRun, Store, StoreError, StoreStats, Timestamp, Transition,
    TransitionFn, WorkflowDefinition, WorkflowId,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Rates (each `0.0..=1.0`, per store call) and shapes of store faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreFaults {
    /// Probability of added latency.
    pub latency: f64,
    /// Range of added latency, in ms (inclusive).
    pub latency_ms: (u64, u64),
    /// Probability of a transient error before the call.
    pub error: f64,
    /// Probability of a lost reply after a changing call took effect.
    pub lost_reply: f64,
    /// Whether read-only calls (loads, lists, stats) get faults too.
    pub reads: bool,
}

impl Default for StoreFaults {
    /// No faults.
    fn default() -> Self {
        Self {
            latency: 0.0,
            latency_ms: (1, 50),
            error: 0.0,
            lost_reply: 0.0,
            reads: false,
        }
    }
}

impl StoreFaults {
    /// A moderate profile: 10 % of calls delayed 1–50 ms, 2 % errors, 0.5 % lost replies.
    #[must_use]
    pub fn moderate() -> Self {
        Self {
            latency: 0.10,
            error: 0.02,
            lost_reply: 0.005,
            ..Self::default()
        }
    }

    /// Whether any fault can fire.
    #[must_use]
    pub fn any(&self) -> bool {
        self.latency > 0.0 || self.error > 0.0 || self.lost_reply > 0.0
    }
}

/// Kind of store call, for fault selection and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

/// A [`Store`] decorator injecting seeded latency and transient errors.
pub struct ChaosStore {
    inner: Arc<dyn Store>,
    faults: StoreFaults,
    rng: Mutex<ChaosRng>,
    switch: FaultSwitch,
    counters: FaultCounters,
    observed: Option<FaultCounters>,
    on_commit: Option<CommitHook>,
}

/// Called with every transition the wrapped store acknowledged (see [`ChaosStore::on_commit`]).
pub type CommitHook = Arc<dyn Fn(&Transition) + Send + Sync>;

impl std::fmt::Debug for ChaosStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosStore")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

/// What to do around one call.
struct Plan {
    delay_ms: u64,
    fail_before: bool,
    lose_reply: bool,
}

impl ChaosStore {
    /// Wraps `inner`; decisions are drawn from `seed`; faults fire while `switch` is armed.
    #[must_use]
    pub fn new(
        inner: Arc<dyn Store>,
        faults: StoreFaults,
        seed: u64,
        switch: FaultSwitch,
        counters: FaultCounters,
    ) -> Self {
        Self {
            inner,
            faults,
            rng: Mutex::new(rng_for(seed, "store-faults", &[])),
            switch,
            counters,
            observed: None,
            on_commit: None,
        }
    }

    /// Calls `hook` with every transition the wrapped store acknowledged (a
    /// `create_instance` that created the instance, an `update_instance` that returned
    /// `Ok`), before a lost reply may hide the acknowledgement from the caller: what a
    /// failover test must find again afterwards.
    #[must_use]
    pub fn on_commit(mut self, hook: CommitHook) -> Self {
        self.on_commit = Some(hook);
        self
    }

    fn acknowledged(&self, t: &Transition) {
        if let Some(h) = &self.on_commit {
            h(t);
        }
    }

    /// Also counts, into `outcomes`, the answers of the wrapped store that show fencing at
    /// work (`<call>.<outcome>`, see the [module docs](self)). Counted whether or not the
    /// switch is armed.
    #[must_use]
    pub fn observe(mut self, outcomes: FaultCounters) -> Self {
        self.observed = Some(outcomes);
        self
    }

    /// The wrapped store.
    #[must_use]
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    fn plan(&self, op: Op) -> Plan {
        let f = &self.faults;
        let none = Plan {
            delay_ms: 0,
            fail_before: false,
            lose_reply: false,
        };
        if !self.switch.is_armed() || !f.any() || (op == Op::Read && !f.reads) {
            return none;
        }
        let mut r = self.rng.lock();
        let delay_ms = if chance(&mut *r, f.latency) {
            between(&mut *r, f.latency_ms.0, f.latency_ms.1)
        } else {
            0
        };
        let fail_before = chance(&mut *r, f.error);
        let lose_reply = !fail_before && op == Op::Write && chance(&mut *r, f.lost_reply);
        Plan {
            delay_ms,
            fail_before,
            lose_reply,
        }
    }

    async fn around<T, Fut>(&self, what: &'static str, op: Op, call: Fut) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let plan = self.plan(op);
        if plan.delay_ms > 0 {
            self.counters.add("store.latency");
            tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
        }
        if plan.fail_before {
            self.counters.add("store.error");
            return Err(StoreError::Unavailable(format!(
                "chaos: injected error before {what}"
            )));
        }
        let result = call.await;
        if let (Some(o), Err(e)) = (&self.observed, &result) {
            let outcome = match e {
                StoreError::StaleLease { .. } => Some("stale_lease"),
                StoreError::Rejected(TransitionError::StaleResult { .. }) => Some("stale_result"),
                StoreError::Rejected(TransitionError::InstanceTerminal { .. }) => {
                    Some("instance_terminal")
                }
                StoreError::Unavailable(_) => Some("unavailable"),
                _ => None,
            };
            if let Some(outcome) = outcome {
                o.add(&format!("{what}.{outcome}"));
            }
        }
        if plan.lose_reply {
            self.counters.add("store.lost_reply");
            return Err(StoreError::Unavailable(format!(
                "chaos: reply of {what} lost (the call took effect)"
            )));
        }
        result
    }
}

#[floxy::async_trait]
impl Store for ChaosStore {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put_definition(&self, def: &WorkflowDefinition) -> Result<PutDefinition, StoreError> {
        self.around("put_definition", Op::Write, self.inner.put_definition(def))
            .await
    }
    async fn get_definition(
        &self,
        id: &WorkflowId,
    ) -> Result<Option<WorkflowDefinition>, StoreError> {
        self.around("get_definition", Op::Read, self.inner.get_definition(id))
            .await
    }
    async fn list_definitions(&self) -> Result<Vec<WorkflowDefinition>, StoreError> {
        self.around("list_definitions", Op::Read, self.inner.list_definitions())
            .await
    }
    async fn create_instance(&self, t: Transition) -> Result<CreateOutcome, StoreError> {
        let copy = self.on_commit.as_ref().map(|_| t.clone());
        self.around("create_instance", Op::Write, async {
            let r = self.inner.create_instance(t).await;
            if let (Ok(CreateOutcome::Created(_)), Some(t)) = (&r, &copy) {
                self.acknowledged(t);
            }
            r
        })
        .await
    }
    async fn update_instance(
        &self,
        id: InstanceId,
        f: TransitionFn,
    ) -> Result<Transition, StoreError> {
        self.around("update_instance", Op::Write, async {
            let r = self.inner.update_instance(id, f).await;
            if let Ok(t) = &r {
                self.acknowledged(t);
            }
            r
        })
        .await
    }
    async fn update_instance_eager(
        &self,
        id: InstanceId,
        f: TransitionFn,
        eager: &floxy_core::eager::EagerClaim,
    ) -> Result<(Transition, Vec<ClaimedItem>), StoreError> {
        // Same faults as an update: a lost reply also loses the eager leases, which then
        // expire and are reclaimed like those of a crashed worker.
        self.around("update_instance", Op::Write, async {
            let r = self.inner.update_instance_eager(id, f, eager).await;
            if let Ok((t, _)) = &r {
                self.acknowledged(t);
            }
            r
        })
        .await
    }
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<ClaimedItem>, StoreError> {
        self.around("claim", Op::Write, self.inner.claim(req)).await
    }
    async fn heartbeat(
        &self,
        owner: &str,
        leases: &[LeaseRef],
        now: Timestamp,
    ) -> Result<Vec<LeaseState>, StoreError> {
        let states = self
            .around(
                "heartbeat",
                Op::Write,
                self.inner.heartbeat(owner, leases, now),
            )
            .await?;
        if let Some(o) = &self.observed {
            let lost = states
                .iter()
                .filter(|s| !matches!(s, LeaseState::Held { .. }))
                .count();
            if lost > 0 {
                o.add_n("heartbeat.lease_lost", lost as u64);
            }
        }
        Ok(states)
    }
    async fn load_instance(&self, id: InstanceId) -> Result<Option<InstanceSnapshot>, StoreError> {
        self.around("load_instance", Op::Read, self.inner.load_instance(id))
            .await
    }
    async fn get_instance(&self, id: InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        self.around("get_instance", Op::Read, self.inner.get_instance(id))
            .await
    }
    async fn list_steps(&self, id: InstanceId) -> Result<Vec<StepRun>, StoreError> {
        self.around("list_steps", Op::Read, self.inner.list_steps(id))
            .await
    }
    async fn find_by_idempotency_key(
        &self,
        workflow_id: &WorkflowId,
        key: &str,
    ) -> Result<Option<InstanceId>, StoreError> {
        self.around(
            "find_by_idempotency_key",
            Op::Read,
            self.inner.find_by_idempotency_key(workflow_id, key),
        )
        .await
    }
    async fn list_instances(
        &self,
        q: &InstanceQuery,
    ) -> Result<Page<InstanceRecord, InstanceId>, StoreError> {
        self.around("list_instances", Op::Read, self.inner.list_instances(q))
            .await
    }
    async fn list_events(
        &self,
        id: InstanceId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.around(
            "list_events",
            Op::Read,
            self.inner.list_events(id, after_seq, limit),
        )
        .await
    }
    async fn list_dlq(&self, q: &DlqQuery) -> Result<Page<DlqRecord, DlqId>, StoreError> {
        self.around("list_dlq", Op::Read, self.inner.list_dlq(q))
            .await
    }
    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqRecord>, StoreError> {
        self.around("get_dlq", Op::Read, self.inner.get_dlq(id))
            .await
    }
    async fn list_queue(&self, id: InstanceId) -> Result<Vec<QueueItem>, StoreError> {
        self.around("list_queue", Op::Read, self.inner.list_queue(id))
            .await
    }
    async fn next_due(&self, handlers: &[Arc<str>]) -> Result<Option<Timestamp>, StoreError> {
        self.around("next_due", Op::Read, self.inner.next_due(handlers))
            .await
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.around("stats", Op::Read, self.inner.stats()).await
    }
    async fn wait_for_work(&self, timeout_ms: u64) -> floxy_core::store::WorkWait {
        // A hint with no result to corrupt: passed through untouched.
        self.inner.wait_for_work(timeout_ms).await
    }
    async fn clock(&self) -> Result<Option<Timestamp>, StoreError> {
        // Passed through untouched, like the wakeup hint: a fault plan drawn here would shift
        // the seeded fault sequence of every simulation (whose memory store has no clock).
        // Network latency in front of a real database still reaches it (a slow sample is
        // ignored by the engine).
        self.inner.clock().await
    }
    async fn cleanup(&self, older_than: Timestamp) -> Result<u64, StoreError> {
        self.around("cleanup", Op::Write, self.inner.cleanup(older_than))
            .await
    }
}
