//! The run: workloads driven against an engine pool under faults, then settled and
//! validated.
//!
//! A run has three phases:
//!
//! 1. **Fault phase** (`duration_ms`): a driver keeps `concurrency` instances in flight,
//!    picking workflows and inputs from the seed; some instances get an operator cancel or
//!    abort at a random moment. Handler and store injectors, failpoints and disruptors
//!    (proxy toxics, process kills, database restarts, in-process engine crashes) fire. A
//!    sampler watches the tokio task count and instances that stop making progress; a stats
//!    line is printed every `stats_interval_ms`.
//! 2. **Settle phase**: every fault is switched off and healed, no new instance starts, and
//!    every instance gets `limits.settle_timeout_ms` to finish.
//! 3. **Validation**: engines shut down, the task count must come back to its baseline, and
//!    every instance is checked ([`crate::validate`]).

use crate::faults::{FaultCounters, FaultSwitch};
use crate::inject::failpoints::{self, FailpointSpec};
use crate::inject::handler::{ChaosArcHandler, HandlerFaults, HandlerInjector};
use crate::inject::store::{ChaosStore, StoreFaults};
use crate::ledger::Ledger;
use crate::report::{Report, Stats, Verdict};
use crate::resources::{Pooled, ResourceSample, Resources, SAMPLE_EVERY_MS};
use crate::rng::{ChaosRng, between, chance, mix, rng_for};
use crate::validate::{InstanceSummary, Limits, Violation, check_instance};
use crate::workload::{self, Builtin, LedgerHandlers, WorkflowSpec, WorkloadOptions};
use floxy::floxy_core::graph::CompiledWorkflow;
use floxy::{
    Clock, Engine, Handler, HandlerError, InstanceId, InstanceQuery, InstanceStatus, Payload,
    StepContext, Store, SystemClock, Timestamp, TokioClock, WorkflowDefinition, WorkflowId,
};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Longest a single store or engine call made by the driver, the watcher or the validators
/// may take before the run reports it as hung (`hung_call`) instead of waiting forever.
pub const CALL_TIMEOUT_MS: u64 = 60_000;

/// With [`Scenario::retention_ms`], how long after it settled an instance is validated
/// (and then forgotten): late work on it, if there were any, would still show.
pub const VALIDATE_DELAY_MS: u64 = 5_000;
/// With [`Scenario::retention_ms`], how often finished instances are removed from the store.
pub const CLEANUP_EVERY_MS: u64 = 5_000;

/// Epoch of the virtual clock of simulations.
pub const SIM_EPOCH: Timestamp = Timestamp(1_700_000_000_000);

/// Everything that shapes a run. Serializable, so a run can be described in JSON; every
/// field has a default ([`Scenario::default`] is a short, moderate run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scenario {
    /// Name shown in reports.
    pub name: String,
    /// The seed: workload, inputs, fault decisions. Same seed, same run.
    pub seed: u64,
    /// Length of the fault phase, ms.
    pub duration_ms: u64,
    /// Instances kept in flight.
    pub concurrency: usize,
    /// Stop starting instances after this many (0: no limit).
    pub max_instances: u64,
    /// Engines (worker pools) in this process sharing the store.
    pub engines: usize,
    /// Concurrent handler executions per engine.
    pub workers: usize,
    /// Claim batch size per engine.
    pub batch_size: usize,
    /// Idle poll interval of the engines, ms.
    pub poll_interval_ms: u64,
    /// Built-in workloads to run (empty: only custom workloads).
    pub workloads: Vec<Builtin>,
    /// Options of the built-in workflow definitions.
    pub workload: WorkloadOptions,
    /// Probability that a task step fails with a business failure.
    pub business_failure_rate: f64,
    /// Probability that an instance gets an operator cancel at a random moment.
    pub cancel_rate: f64,
    /// Probability that an instance gets an operator abort at a random moment.
    pub abort_rate: f64,
    /// Handler faults.
    pub handler_faults: HandlerFaults,
    /// Store faults (on the engines' store; validation reads bypass them).
    pub store_faults: StoreFaults,
    /// Failpoints armed during the fault phase (needs the `failpoints` feature).
    pub failpoints: Vec<FailpointSpec>,
    /// Crash (abandon everything in flight) and restart an in-process engine every
    /// `min..=max` ms; `None`: never.
    pub engine_crash_ms: Option<(u64, u64)>,
    /// Validator limits.
    pub limits: Limits,
    /// Print a stats line this often (0: never), ms.
    pub stats_interval_ms: u64,
    /// Sample the task count and progress this often, ms.
    pub sample_interval_ms: u64,
    /// Run on tokio's virtual time with a virtual clock (the simulation sets this).
    pub virtual_time: bool,
    /// The store is used by this run only: queue items of unknown instances are orphans.
    pub exclusive_store: bool,
    /// Mixed into instance ids and fault decisions (not into the workload): worker
    /// processes of one run set it so they never collide.
    pub salt: u64,
    /// Steady mode, for long runs: every instance is validated [`VALIDATE_DELAY_MS`] after it
    /// settles and then forgotten (its ledger entries and the run's bookkeeping), and every
    /// [`CLEANUP_EVERY_MS`] the terminal instances last updated more than this long ago (and
    /// before every instance still to validate) are removed from the store. The run then
    /// holds about this much finished work whatever its length, so its memory can be checked
    /// for growth ([`Limits::max_resource_growth`]). `None`: keep everything, validate at the
    /// end. Needs the run's own ledger (not worker processes' ledger files).
    pub retention_ms: Option<u64>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "default".into(),
            seed: 1,
            duration_ms: 10_000,
            concurrency: 16,
            max_instances: 0,
            engines: 2,
            workers: 8,
            batch_size: 8,
            poll_interval_ms: 100,
            workloads: Builtin::ALL.to_vec(),
            workload: WorkloadOptions::default(),
            business_failure_rate: 0.05,
            cancel_rate: 0.03,
            abort_rate: 0.01,
            handler_faults: HandlerFaults::stress(),
            store_faults: StoreFaults::moderate(),
            failpoints: Vec::new(),
            engine_crash_ms: Some((2_000, 5_000)),
            limits: Limits::default(),
            stats_interval_ms: 10_000,
            sample_interval_ms: 250,
            virtual_time: false,
            exclusive_store: true,
            salt: 0,
            retention_ms: None,
        }
    }
}

/// Errors that stop a run before it can produce a report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// A workflow could not be built or registered.
    #[error("workload setup failed: {0}")]
    Setup(String),
    /// The store failed outside the fault phase.
    #[error(transparent)]
    Store(#[from] floxy::StoreError),
    /// The engine failed outside the fault phase.
    #[error(transparent)]
    Engine(#[from] floxy::EngineError),
    /// Failpoints could not be armed.
    #[error(transparent)]
    Failpoints(#[from] failpoints::FailpointError),
    /// An injector or disruptor failed.
    #[error("injector failed: {0}")]
    Injector(String),
}

/// Something that disrupts the system from outside during the fault phase: proxy toxics,
/// process kills, database restarts. The runner calls [`Disruptor::disrupt`] after a random
/// pause in [`Disruptor::interval_ms`], at most [`Disruptor::max_count`] times, and
/// [`Disruptor::heal`] when the fault phase ends.
#[floxy::async_trait]
pub trait Disruptor: Send + Sync {
    /// Name for reports.
    fn name(&self) -> String;
    /// Pause before each disruption, ms (`min..=max`).
    fn interval_ms(&self) -> (u64, u64);
    /// Most disruptions per run (`None`: no limit).
    fn max_count(&self) -> Option<u32> {
        None
    }
    /// Performs one disruption (it may last a while, e.g. a toxic held for some seconds).
    ///
    /// # Errors
    /// A message; the run records it as a note and goes on.
    async fn disrupt(&self, rng: &mut ChaosRng, counters: &FaultCounters) -> Result<(), String>;
    /// Undoes every disruption still in effect.
    ///
    /// # Errors
    /// A message; the run records it as a note.
    async fn heal(&self) -> Result<(), String>;
}

/// Inputs of a custom workflow: called with the instance's ordinal and a seeded generator.
pub type InputFn = Arc<dyn Fn(u64, &mut ChaosRng) -> serde_json::Value + Send + Sync>;

/// A workload made of one's own workflow and handlers. The runner wraps every handler with
/// the fault injector and the call recorder, drives instances with inputs from `input`, and
/// applies every validator except the ledger (which needs ledger-writing handlers).
#[derive(Clone)]
pub struct CustomWorkload {
    /// The workflow.
    pub definition: WorkflowDefinition,
    /// Its handlers, by name.
    pub handlers: Vec<(String, Arc<dyn Handler>)>,
    /// Inputs of instances.
    pub input: InputFn,
}

impl std::fmt::Debug for CustomWorkload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomWorkload")
            .field("workflow", &self.definition.id())
            .field(
                "handlers",
                &self.handlers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// One workflow a run can start.
struct Entry {
    id: WorkflowId,
    compiled: Arc<CompiledWorkflow>,
    spec: Option<WorkflowSpec>,
    input: Option<InputFn>,
    group: usize,
}

/// Records every handler call in the ledger, then delegates.
struct Recorded {
    inner: Arc<dyn Handler>,
    ledger: Arc<Ledger>,
}

#[floxy::async_trait]
impl Handler for Recorded {
    async fn execute(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError> {
        self.ledger
            .record_call(ctx.instance_id(), ctx.step(), ctx.kind(), ctx.attempt());
        self.inner.execute(ctx, input).await
    }
}

/// An instance the driver watches.
struct InFlight {
    ordinal: u64,
    entry: usize,
    command_at: Option<(Timestamp, bool)>,
    last_version: u64,
    last_change: Timestamp,
    stalled: bool,
    _permit: OwnedSemaphorePermit,
}

/// Shared state of a run.
struct Shared {
    scenario: Scenario,
    raw: Arc<dyn Store>,
    /// The engines' stores (engine `k` uses the `k % len`-th), fault-injecting.
    chaos: Vec<Arc<dyn Store>>,
    clock: Arc<dyn Clock>,
    ledger: Arc<Ledger>,
    counters: FaultCounters,
    handlers: Vec<(String, Arc<dyn Handler>)>,
    entries: Vec<Entry>,
    groups: usize,
    engines: Mutex<Vec<Engine>>,
    engine_gen: AtomicUsize,
    inflight: Mutex<BTreeMap<InstanceId, InFlight>>,
    /// Instances not validated yet, by ordinal: `(id, entry)`.
    started: Mutex<BTreeMap<u64, (InstanceId, usize)>>,
    /// Steady mode: settled instances waiting for their validation, `(settled at, ordinal)`.
    to_validate: Mutex<VecDeque<(Timestamp, u64)>>,
    /// Instances validated during the run (steady mode).
    tally: Mutex<Tally>,
    /// Instances removed from the store by the steady mode's cleanup.
    cleaned: AtomicU64,
    /// Start of the watcher's last pass that read every instance in flight: an instance
    /// that was terminal before it has been seen settling (ms of the run's clock).
    watched_through: AtomicI64,
    /// Resource samples.
    resources: Mutex<Resources>,
    /// What the store's connection pools hold ([`Run::pooled`]).
    pooled: Option<Pooled>,
    settled: Mutex<Stats>,
    violations: Mutex<Vec<Violation>>,
    notes: Mutex<Vec<String>>,
    settle_deadline: AtomicI64,
    baseline_tasks: usize,
    max_tasks: AtomicUsize,
    start_ms: Timestamp,
}

/// A configured run. Build it with [`Run::new`], add disruptors and custom workloads, then
/// [`Run::execute`] it inside a tokio runtime.
pub struct Run {
    scenario: Scenario,
    store: Arc<dyn Store>,
    engine_store: Option<Arc<dyn Store>>,
    engine_stores: Vec<Arc<dyn Store>>,
    adopt: bool,
    backend: String,
    disruptors: Vec<Arc<dyn Disruptor>>,
    custom: Vec<CustomWorkload>,
    ledger: Arc<Ledger>,
    counters: FaultCounters,
    notes: Vec<String>,
    pooled: Option<Pooled>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("scenario", &self.scenario)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

fn tasks_now() -> usize {
    tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks())
}

impl Run {
    /// A run of `scenario` on `store` (a fresh store is best: see
    /// [`Scenario::exclusive_store`]); `backend` names it in reports.
    #[must_use]
    pub fn new(scenario: Scenario, store: Arc<dyn Store>, backend: impl Into<String>) -> Self {
        Self {
            scenario,
            store,
            engine_store: None,
            engine_stores: Vec::new(),
            adopt: false,
            backend: backend.into(),
            disruptors: Vec::new(),
            custom: Vec::new(),
            ledger: Arc::new(Ledger::new()),
            counters: FaultCounters::default(),
            notes: Vec::new(),
            pooled: None,
        }
    }

    /// Tells the resource sampler what the store's connection pools hold at any instant
    /// (descriptors, tasks), so that descriptors and tasks are checked for growth net of
    /// them ([`crate::resources`]).
    #[must_use]
    pub fn pooled(mut self, pooled: Pooled) -> Self {
        self.pooled = Some(pooled);
        self
    }

    /// Counts faults into `counters` (shared with injectors outside the run).
    #[must_use]
    pub fn counters(mut self, counters: FaultCounters) -> Self {
        self.counters = counters;
        self
    }

    /// Adds notes to the report.
    #[must_use]
    pub fn notes(mut self, notes: Vec<String>) -> Self {
        self.notes.extend(notes);
        self
    }

    /// The engines use `store` instead of the run's store (e.g. a connection through a
    /// fault-injecting proxy), while the watcher and the validators keep reading the run's
    /// store directly. Both must see the same data.
    #[must_use]
    pub fn engine_store(mut self, store: Arc<dyn Store>) -> Self {
        self.engine_store = Some(store);
        self
    }

    /// Gives each engine its own store: engine `k` (and its restarts after a crash) uses
    /// `stores[k % stores.len()]`, e.g. one connection pool per engine, each behind its own
    /// proxy, to partition one worker from the database while the others keep going.
    /// Overrides [`Run::engine_store`]; the watcher and the validators keep reading the run's
    /// store directly. All must see the same data.
    #[must_use]
    pub fn engine_stores(mut self, stores: Vec<Arc<dyn Store>>) -> Self {
        self.engine_stores = stores;
        self
    }

    /// Also drives and validates the instances already in the store when the run starts
    /// (instances started by worker processes that were killed, a previous run on the same
    /// file). Their workflows must be among the run's workloads.
    #[must_use]
    pub fn adopt_existing(mut self, on: bool) -> Self {
        self.adopt = on;
        self
    }

    /// Adds a disruptor (proxy toxics, process faults, ...).
    #[must_use]
    pub fn disruptor(mut self, d: Arc<dyn Disruptor>) -> Self {
        self.disruptors.push(d);
        self
    }

    /// Adds a workload of one's own workflow and handlers.
    #[must_use]
    pub fn custom_workload(mut self, w: CustomWorkload) -> Self {
        self.custom.push(w);
        self
    }

    /// Uses `ledger` (e.g. one that merges the files of worker processes).
    #[must_use]
    pub fn ledger(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Runs the three phases and returns the report.
    ///
    /// # Errors
    /// Setup failed (a workflow could not be registered, failpoints could not be armed):
    /// no report. Violations are not errors: they are in the report.
    pub async fn execute(self) -> Result<Report, ChaosError> {
        let sc = self.scenario.clone();
        crate::panics::quiet_injected_panics();
        let baseline_tasks = tasks_now();
        let clock: Arc<dyn Clock> = if sc.virtual_time {
            Arc::new(TokioClock::with_epoch(SIM_EPOCH))
        } else {
            Arc::new(SystemClock)
        };
        let switch = FaultSwitch::new(true);
        let counters = self.counters.clone();
        let targets: Vec<Arc<dyn Store>> = if self.engine_stores.is_empty() {
            vec![Arc::clone(
                self.engine_store.as_ref().unwrap_or(&self.store),
            )]
        } else {
            self.engine_stores.clone()
        };
        let chaos: Vec<Arc<dyn Store>> = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| -> Arc<dyn Store> {
                // The first store keeps the run's seed, so single-store runs replay as before.
                let seed = if i == 0 {
                    sc.seed ^ sc.salt
                } else {
                    mix(sc.seed ^ sc.salt, &[b"engine-store", &i.to_le_bytes()])
                };
                Arc::new(ChaosStore::new(
                    target,
                    sc.store_faults.clone(),
                    seed,
                    switch.clone(),
                    counters.clone(),
                ))
            })
            .collect();

        // Workflows.
        let mut entries = Vec::new();
        let mut handlers: Vec<(String, Arc<dyn Handler>)> = Vec::new();
        let mut group = 0;
        if !sc.workloads.is_empty() {
            let lh = LedgerHandlers::new(Arc::clone(&self.ledger));
            for name in workload::HANDLERS {
                if let Some(h) = lh.handler(name) {
                    handlers.push((name.to_owned(), h));
                }
            }
            for w in &sc.workloads {
                for spec in
                    workload::definitions(*w, &sc.workload, sc.seed).map_err(ChaosError::Setup)?
                {
                    let compiled = CompiledWorkflow::compile(spec.definition.clone())
                        .map_err(|e| ChaosError::Setup(e.to_string()))?;
                    entries.push(Entry {
                        id: spec.definition.id(),
                        compiled: Arc::new(compiled),
                        spec: Some(spec),
                        input: None,
                        group,
                    });
                }
                group += 1;
            }
        }
        for c in &self.custom {
            let compiled = CompiledWorkflow::compile(c.definition.clone())
                .map_err(|e| ChaosError::Setup(e.to_string()))?;
            entries.push(Entry {
                id: c.definition.id(),
                compiled: Arc::new(compiled),
                spec: None,
                input: Some(Arc::clone(&c.input)),
                group,
            });
            group += 1;
            handlers.extend(c.handlers.iter().cloned());
        }
        if entries.is_empty() {
            return Err(ChaosError::Setup("no workload to run".into()));
        }
        let observer = Engine::builder(Arc::clone(&self.store))
            .clock(Arc::clone(&clock))
            .worker_id(format!("chaos-observer-{:x}", sc.seed))
            .build();
        for e in &entries {
            observer
                .register_workflow(e.compiled.definition().clone())
                .await?;
        }

        let start_ms = clock.now();
        let shared = Arc::new(Shared {
            scenario: sc.clone(),
            raw: Arc::clone(&self.store),
            chaos,
            clock: Arc::clone(&clock),
            ledger: Arc::clone(&self.ledger),
            counters: counters.clone(),
            handlers,
            entries,
            groups: group,
            engines: Mutex::new(Vec::new()),
            engine_gen: AtomicUsize::new(0),
            inflight: Mutex::new(BTreeMap::new()),
            started: Mutex::new(BTreeMap::new()),
            to_validate: Mutex::new(VecDeque::new()),
            tally: Mutex::new(Tally::default()),
            cleaned: AtomicU64::new(0),
            watched_through: AtomicI64::new(start_ms.as_millis()),
            resources: Mutex::new(Resources::default()),
            pooled: self.pooled.clone(),
            settled: Mutex::new(Stats::default()),
            violations: Mutex::new(Vec::new()),
            notes: Mutex::new(self.notes.clone()),
            settle_deadline: AtomicI64::new(i64::MAX),
            baseline_tasks,
            max_tasks: AtomicUsize::new(baseline_tasks),
            start_ms,
        });
        let injector = HandlerInjector::new(
            sc.handler_faults.clone(),
            sc.seed ^ sc.salt,
            switch.clone(),
            counters.clone(),
        );
        for k in 0..sc.engines.max(1) {
            let e = shared.new_engine(k, &injector, sc.engines > 0)?;
            shared.engines.lock().push(e);
        }
        if self.adopt {
            shared.adopt().await?;
        }
        let mut fp_guard = failpoints::arm(&sc.failpoints)?;

        // Background loops.
        let stop_faults = CancellationToken::new();
        let stop_all = CancellationToken::new();
        let mut faults_tasks = tokio::task::JoinSet::new();
        let mut bg_tasks = tokio::task::JoinSet::new();
        if let Some(range) = sc.engine_crash_ms.filter(|_| sc.engines > 0) {
            let (s, stop, inj) = (
                Arc::clone(&shared),
                stop_faults.clone(),
                Arc::clone(&injector),
            );
            faults_tasks.spawn(async move { s.crash_loop(range, stop, inj).await });
        }
        for (i, d) in self.disruptors.iter().enumerate() {
            let (s, stop, d) = (Arc::clone(&shared), stop_faults.clone(), Arc::clone(d));
            faults_tasks.spawn(async move { s.disrupt_loop(i, d, stop).await });
        }
        {
            let (s, stop) = (Arc::clone(&shared), stop_all.clone());
            bg_tasks.spawn(async move { s.sample_loop(stop).await });
        }
        if sc.stats_interval_ms > 0 {
            let (s, stop) = (Arc::clone(&shared), stop_all.clone());
            bg_tasks.spawn(async move { s.stats_loop(stop).await });
        }
        if let Some(retention) = sc.retention_ms {
            let (s, stop) = (Arc::clone(&shared), stop_all.clone());
            bg_tasks.spawn(async move { s.steady_loop(retention, stop).await });
        }
        let watcher = {
            let (s, stop) = (Arc::clone(&shared), stop_all.clone());
            tokio::spawn(async move { s.watch_loop(stop).await })
        };

        // Fault phase: drive.
        shared.drive().await;

        // Settle phase.
        switch.set(false);
        fp_guard.disarm();
        stop_faults.cancel();
        while faults_tasks.join_next().await.is_some() {}
        for d in &self.disruptors {
            match tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), d.heal()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => shared.note(format!("heal of {} failed: {e}", d.name())),
                Err(_) => shared.note(format!("heal of {} timed out", d.name())),
            }
        }
        let deadline = clock.now().add_ms(sc.limits.settle_timeout_ms);
        shared
            .settle_deadline
            .store(deadline.as_millis(), Ordering::SeqCst);
        let _ = watcher.await;
        stop_all.cancel();
        while bg_tasks.join_next().await.is_some() {}

        // Shutdown and task drain.
        let engines: Vec<Engine> = std::mem::take(&mut *shared.engines.lock());
        for e in &engines {
            // `shutdown` promises to give up on handlers after its timeout; waiting much
            // longer than that is a hang of the engine (e.g. a store call that never returns).
            let limit = Duration::from_secs(10 + 30);
            match tokio::time::timeout(limit, e.shutdown(Duration::from_secs(10))).await {
                Ok(r) if r.abandoned > 0 => {
                    shared.note(format!("shutdown abandoned {} handlers", r.abandoned));
                }
                Ok(_) => {}
                Err(_) => shared.violate(Violation::new(
                    "hung_shutdown",
                    format!(
                        "Engine::shutdown(10 s) of {} did not return within {limit:?}",
                        e.worker_id()
                    ),
                )),
            }
        }
        drop(engines);
        drop(observer);
        drop(injector);
        let final_tasks = shared.drain_tasks().await;
        let max_tasks = shared.max_tasks.load(Ordering::Relaxed);
        if sc.limits.check_task_leak && final_tasks > baseline_tasks {
            shared.violate(Violation::new(
                "task_leak",
                format!(
                    "{final_tasks} tokio tasks alive after shutdown, {baseline_tasks} before the run"
                ),
            ));
        }

        // Validation.
        let summaries = shared.validate().await?;
        Ok(shared.report(&self.backend, &summaries, final_tasks, max_tasks))
    }
}

impl Shared {
    fn note(&self, s: String) {
        tracing::info!("{s}");
        let mut n = self.notes.lock();
        if n.len() < 100 {
            n.push(s);
        }
    }

    fn violate(&self, v: Violation) {
        tracing::warn!(violation = %v, "invariant violated");
        self.violations.lock().push(v);
    }

    fn new_engine(
        &self,
        k: usize,
        injector: &Arc<HandlerInjector>,
        workers: bool,
    ) -> Result<Engine, ChaosError> {
        let sc = &self.scenario;
        let generation = self.engine_gen.fetch_add(1, Ordering::Relaxed) as u64;
        let store = Arc::clone(&self.chaos[k % self.chaos.len()]);
        let engine = Engine::builder(store)
            .clock(Arc::clone(&self.clock))
            .workers(sc.workers)
            .batch_size(sc.batch_size)
            .poll_interval_ms(sc.poll_interval_ms)
            // Half the workers take the next step of a chain in their commit (a no-op on
            // backends without eager claims), so faults hit both paths.
            .eager_claims(k % 2 == 1)
            .shutdown_timeout_ms(5_000)
            .worker_id(format!(
                "chaos-{:x}-{:x}-{k}-{generation}",
                sc.seed, sc.salt
            ))
            .deterministic_ids(mix(
                sc.seed,
                &[b"ids", &generation.to_le_bytes(), &sc.salt.to_le_bytes()],
            ))
            .build();
        for (name, h) in &self.handlers {
            let wrapped = ChaosArcHandler::new(Arc::clone(h), Arc::clone(injector));
            engine.register_handler(
                name.clone(),
                Recorded {
                    inner: Arc::new(wrapped),
                    ledger: Arc::clone(&self.ledger),
                },
            );
        }
        if workers {
            engine.start_workers()?;
        }
        Ok(engine)
    }

    /// Takes over every instance already in the store.
    async fn adopt(&self) -> Result<(), ChaosError> {
        let mut q = InstanceQuery {
            limit: floxy::MAX_PAGE_SIZE,
            ..InstanceQuery::default()
        };
        let extra = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS / 2));
        let now = self.clock.now();
        let mut n = 0u64;
        loop {
            let page = self.raw.list_instances(&q).await?;
            for rec in &page.items {
                let Some(entry) = self.entries.iter().position(|e| e.id == rec.workflow_id) else {
                    self.note(format!(
                        "instance {} of unknown workflow {} not adopted",
                        rec.id, rec.workflow_id
                    ));
                    continue;
                };
                let ordinal = 1_000_000_000 + n;
                n += 1;
                self.started.lock().insert(ordinal, (rec.id, entry));
                self.settled.lock().started += 1;
                if let Ok(permit) = Arc::clone(&extra).try_acquire_owned() {
                    self.inflight.lock().insert(
                        rec.id,
                        InFlight {
                            ordinal,
                            entry,
                            command_at: None,
                            last_version: rec.version,
                            last_change: now,
                            stalled: false,
                            _permit: permit,
                        },
                    );
                }
            }
            match page.next {
                Some(next) => q.after = Some(next),
                None => break,
            }
        }
        self.note(format!("adopted {n} instances already in the store"));
        Ok(())
    }

    fn engine(&self, i: u64) -> Option<Engine> {
        let e = self.engines.lock();
        if e.is_empty() {
            None
        } else {
            // The remainder is below `e.len()`, itself a usize.
            let at = usize::try_from(i % e.len() as u64).unwrap_or(0);
            Some(e[at].clone())
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.clock.now().since(self.start_ms)
    }

    /// The fault phase: keeps `concurrency` instances in flight until the duration is over.
    async fn drive(self: &Arc<Self>) {
        let sc = &self.scenario;
        let permits = Arc::new(Semaphore::new(sc.concurrency.max(1)));
        let mut rng = rng_for(sc.seed, "driver", &[&sc.salt.to_le_bytes()]);
        let mut ordinal: u64 = 0;
        let end = self.start_ms.add_ms(sc.duration_ms);
        loop {
            if self.clock.now() >= end || (sc.max_instances > 0 && ordinal >= sc.max_instances) {
                break;
            }
            let wait = end.since(self.clock.now());
            let permit = tokio::select! {
                biased;
                p = Arc::clone(&permits).acquire_owned() => p,
                () = tokio::time::sleep(Duration::from_millis(wait)) => break,
            };
            let Ok(permit) = permit else { break };
            let group = rng.random_range(0..self.groups.max(1));
            let members: Vec<usize> = (0..self.entries.len())
                .filter(|&i| self.entries[i].group == group)
                .collect();
            let Some(&entry_ix) = members.get(rng.random_range(0..members.len().max(1))) else {
                continue;
            };
            let entry = &self.entries[entry_ix];
            let input = match (&entry.spec, &entry.input) {
                (Some(spec), _) => {
                    workload::input_for(spec, sc.seed, ordinal, sc.business_failure_rate)
                }
                (None, Some(f)) => {
                    let mut r = rng_for(sc.seed, "custom-input", &[&ordinal.to_le_bytes()]);
                    f(ordinal, &mut r)
                }
                (None, None) => serde_json::Value::Null,
            };
            let command = if chance(&mut rng, sc.cancel_rate) {
                Some(true)
            } else if chance(&mut rng, sc.abort_rate) {
                Some(false)
            } else {
                None
            };
            let command_delay = between(&mut rng, 0, 3_000);
            let Some(engine) = self.engine(ordinal) else {
                break;
            };
            let mut id = None;
            for attempt in 0..8u32 {
                let call = tokio::time::timeout(
                    Duration::from_millis(CALL_TIMEOUT_MS),
                    engine.start(&entry.id, input.clone()),
                )
                .await;
                let Ok(call) = call else {
                    self.violate(Violation::new(
                        "hung_call",
                        format!(
                            "Engine::start of {} did not return within {CALL_TIMEOUT_MS} ms",
                            entry.id
                        ),
                    ));
                    break;
                };
                match call {
                    Ok(i) => {
                        id = Some(i);
                        break;
                    }
                    Err(e) if e.is_retryable() || matches!(e, floxy::EngineError::Store(_)) => {
                        tracing::debug!(error = %e, attempt, "start failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
                    }
                    Err(e) => {
                        self.note(format!("start of {} failed: {e}", entry.id));
                        break;
                    }
                }
            }
            let Some(id) = id else {
                self.counters.add("driver.start_failed");
                continue;
            };
            let now = self.clock.now();
            self.started.lock().insert(ordinal, (id, entry_ix));
            self.settled.lock().started += 1;
            self.inflight.lock().insert(
                id,
                InFlight {
                    ordinal,
                    entry: entry_ix,
                    command_at: command.map(|c| (now.add_ms(command_delay), c)),
                    last_version: 0,
                    last_change: now,
                    stalled: false,
                    _permit: permit,
                },
            );
            ordinal += 1;
        }
    }

    /// Watches in-flight instances: settles them, issues operator commands, flags stalls.
    /// Ends when nothing is in flight after the fault phase, or at the settle deadline.
    async fn watch_loop(self: Arc<Self>, stop: CancellationToken) {
        let poll = Duration::from_millis(self.scenario.poll_interval_ms.clamp(10, 200));
        loop {
            let deadline = Timestamp(self.settle_deadline.load(Ordering::SeqCst));
            let fault_phase = deadline.as_millis() == i64::MAX;
            let ids: Vec<InstanceId> = self.inflight.lock().keys().copied().collect();
            if ids.is_empty() && !fault_phase {
                return;
            }
            if self.clock.now() >= deadline {
                return;
            }
            let pass_start = self.clock.now();
            let mut read_all = true;
            for chunk in ids.chunks(32) {
                let loads = futures::future::join_all(chunk.iter().map(|id| {
                    tokio::time::timeout(
                        Duration::from_millis(CALL_TIMEOUT_MS),
                        self.raw.load_instance(*id),
                    )
                }))
                .await;
                for (id, r) in chunk.iter().zip(loads) {
                    let snap = match r {
                        Ok(Ok(Some(s))) => s,
                        Ok(Ok(None)) => {
                            // Gone although its start was acknowledged (a failover to a
                            // standby that never got it): nothing will settle it; the
                            // validation reports it (`lost_instance`).
                            self.inflight.lock().remove(id);
                            continue;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "watcher read failed");
                            read_all = false;
                            continue;
                        }
                        Err(_) => {
                            read_all = false;
                            self.violate(Violation::new(
                                "hung_call",
                                format!("Store::load_instance({id}) did not return within {CALL_TIMEOUT_MS} ms"),
                            ));
                            continue;
                        }
                    };
                    if floxy::settled(&snap).is_some() {
                        let gone = self.inflight.lock().remove(id);
                        self.count_settled(&snap.instance);
                        if let Some(f) = gone
                            && self.scenario.retention_ms.is_some()
                        {
                            self.to_validate
                                .lock()
                                .push_back((self.clock.now(), f.ordinal));
                        }
                        continue;
                    }
                    self.watch_one(*id, &snap.instance, fault_phase);
                }
            }
            if read_all {
                self.watched_through
                    .store(pass_start.as_millis(), Ordering::SeqCst);
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    fn count_settled(&self, rec: &floxy::InstanceRecord) {
        let mut s = self.settled.lock();
        match rec.status {
            InstanceStatus::Completed => s.completed += 1,
            InstanceStatus::Failed => s.failed += 1,
            InstanceStatus::Cancelled => s.cancelled += 1,
            InstanceStatus::Aborted => s.aborted += 1,
            InstanceStatus::Dlq => s.dlq += 1,
            _ => {}
        }
        if rec.rollback_depth > 0 {
            s.rollbacks += 1;
        }
        s.max_rollback_depth = s.max_rollback_depth.max(rec.rollback_depth);
    }

    fn watch_one(self: &Arc<Self>, id: InstanceId, rec: &floxy::InstanceRecord, fault_phase: bool) {
        let now = self.clock.now();
        let stall = self.scenario.limits.stall_timeout_ms;
        let mut command = None;
        let mut stalled = None;
        {
            let mut inflight = self.inflight.lock();
            let Some(f) = inflight.get_mut(&id) else {
                return;
            };
            if rec.version != f.last_version {
                f.last_version = rec.version;
                f.last_change = now;
            } else if !f.stalled && now.since(f.last_change) > stall {
                f.stalled = true;
                stalled = Some((f.ordinal, now.since(f.last_change)));
            }
            if fault_phase
                && let Some((at, cancel)) = f.command_at
                && now >= at
            {
                f.command_at = None;
                command = Some((cancel, f.ordinal));
            }
            let _ = f.entry;
        }
        if let Some((ordinal, ms)) = stalled {
            self.violate(
                Violation::new(
                    "no_progress",
                    format!(
                        "instance #{ordinal} is {} and unchanged (version {}) for {ms} ms",
                        rec.status, rec.version
                    ),
                )
                .on(id, rec.workflow_id.as_str()),
            );
        }
        if let Some((cancel, ordinal)) = command
            && let Some(engine) = self.engine(ordinal)
        {
            self.settled.lock().operator_commands += 1;
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let cmd = async {
                    if cancel {
                        engine.cancel(id, Some("chaos: operator cancel")).await
                    } else {
                        engine.abort(id, Some("chaos: operator abort")).await
                    }
                };
                match tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), cmd).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "operator command refused"),
                    Err(_) => me.violate(Violation::new(
                        "hung_call",
                        format!(
                            "operator command on {id} did not return within {CALL_TIMEOUT_MS} ms"
                        ),
                    )),
                }
            });
        }
    }

    /// Samples the task count.
    async fn sample_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = Duration::from_millis(self.scenario.sample_interval_ms.max(10));
        let limit = self.baseline_tasks + self.scenario.limits.max_tasks;
        let mut flagged = false;
        let mut next_resources = 0u64;
        loop {
            let n = tasks_now();
            self.max_tasks.fetch_max(n, Ordering::Relaxed);
            let t = self.elapsed_ms();
            if t >= next_resources {
                next_resources = t + SAMPLE_EVERY_MS;
                let pooled = self.pooled.as_ref().map_or((0, 0), |f| f());
                self.resources
                    .lock()
                    .push(ResourceSample::now(t, n, pooled));
            }
            if n > limit && !flagged {
                flagged = true;
                self.violate(Violation::new(
                    "task_bound",
                    format!("{n} tokio tasks alive, limit {limit}"),
                ));
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// The live stats.
    fn live_stats(&self) -> Stats {
        let mut s = self.settled.lock().clone();
        s.unsettled = self.inflight.lock().len() as u64;
        let t = self.ledger.totals();
        s.handler_calls = t.calls;
        s.retries = t.retried_calls;
        s.faults = self.counters.snapshot();
        s.validated_during_run = self.tally.lock().instances;
        s.cleaned = self.cleaned.load(Ordering::Relaxed);
        s
    }

    async fn stats_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = Duration::from_millis(self.scenario.stats_interval_ms.max(100));
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let mut line = self.live_stats().line(self.elapsed_ms() / 1_000);
            if let Some(r) = self.resources.lock().samples.last() {
                let _ = write!(line, " [{}]", r.describe());
            }
            eprintln!("{line}");
        }
    }

    /// Crashes and restarts in-process engines at random moments.
    async fn crash_loop(
        self: Arc<Self>,
        range: (u64, u64),
        stop: CancellationToken,
        injector: Arc<HandlerInjector>,
    ) {
        let mut rng = rng_for(self.scenario.seed ^ self.scenario.salt, "engine-crash", &[]);
        loop {
            let wait = between(&mut rng, range.0, range.1);
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
            let n = self.engines.lock().len();
            if n == 0 {
                return;
            }
            let k = rng.random_range(0..n);
            let victim = self.engines.lock()[k].clone();
            // Abandon everything in flight at once: leases are left to expire, like a crash.
            let limit = Duration::from_secs(30);
            match tokio::time::timeout(limit, victim.shutdown(Duration::ZERO)).await {
                Ok(report) => tracing::info!(
                    engine = k,
                    abandoned = report.abandoned,
                    "engine crashed (simulated)"
                ),
                Err(_) => self.violate(Violation::new(
                    "hung_shutdown",
                    format!(
                        "Engine::shutdown(0) of {} (a simulated crash) did not return within {limit:?}",
                        victim.worker_id()
                    ),
                )),
            }
            self.counters.add("engine.crash");
            match self.new_engine(k, &injector, true) {
                Ok(e) => self.engines.lock()[k] = e,
                Err(e) => self.note(format!("engine restart failed: {e}")),
            }
        }
    }

    async fn disrupt_loop(
        self: Arc<Self>,
        i: usize,
        d: Arc<dyn Disruptor>,
        stop: CancellationToken,
    ) {
        let mut rng = rng_for(self.scenario.seed, "disruptor", &[&i.to_le_bytes()]);
        let (lo, hi) = d.interval_ms();
        let mut count = 0u32;
        loop {
            if d.max_count().is_some_and(|m| count >= m) {
                return;
            }
            let wait = between(&mut rng, lo, hi);
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
            count += 1;
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                r = d.disrupt(&mut rng, &self.counters) => {
                    if let Err(e) = r {
                        self.note(format!("{} failed: {e}", d.name()));
                    }
                }
            }
        }
    }

    /// Waits for the task count to come back to the baseline (bounded).
    async fn drain_tasks(&self) -> usize {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.scenario.limits.task_drain_timeout_ms);
        loop {
            let n = tasks_now();
            if n <= self.baseline_tasks || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Validates instance `ordinal`: its violations are recorded; returns its summary (if it
    /// still exists) and how many queue items it has. `Err` if the store could not be read
    /// (a hung call is a violation and answers `Ok((None, 0))`).
    async fn check_one(
        &self,
        ordinal: u64,
        id: InstanceId,
        entry: usize,
    ) -> Result<(Option<InstanceSummary>, u64), ChaosError> {
        let e = &self.entries[entry];
        let checked = tokio::time::timeout(
            Duration::from_millis(CALL_TIMEOUT_MS),
            check_instance(
                self.raw.as_ref(),
                &e.compiled,
                e.spec.as_ref(),
                Some(&self.ledger),
                id,
                &self.scenario.limits,
            ),
        )
        .await;
        let Ok(checked) = checked else {
            self.violate(Violation::new(
                "hung_call",
                format!(
                    "reading instance #{ordinal} ({id}) for validation did not return within {CALL_TIMEOUT_MS} ms"
                ),
            ));
            return Ok((None, 0));
        };
        let (summary, v) = checked?;
        for mut x in v {
            x.detail = format!("#{ordinal}: {}", x.detail);
            if x.kind.starts_with("note:") {
                x.kind.drain(.."note:".len());
                self.note(x.to_string());
            } else {
                self.violate(x);
            }
        }
        let queued = match tokio::time::timeout(
            Duration::from_millis(CALL_TIMEOUT_MS),
            self.raw.list_queue(id),
        )
        .await
        {
            Ok(q) => q?.len() as u64,
            Err(_) => 0,
        };
        Ok((summary, queued))
    }

    /// Steady mode ([`Scenario::retention_ms`]): validates and forgets settled instances,
    /// removes old finished ones from the store, until `stop` fires. Store errors (a
    /// database restart) only postpone the work.
    async fn steady_loop(self: Arc<Self>, retention_ms: u64, stop: CancellationToken) {
        let tick = Duration::from_millis(500);
        let mut next_cleanup = self.clock.now().add_ms(CLEANUP_EVERY_MS);
        let mut next_rotation = self.clock.now().add_ms(retention_ms.max(VALIDATE_DELAY_MS));
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(tick) => {}
            }
            let now = self.clock.now();
            let mut forgotten = HashSet::new();
            loop {
                let due = {
                    let mut q = self.to_validate.lock();
                    match q.front() {
                        Some(&(at, ordinal)) if now.since(at) >= VALIDATE_DELAY_MS => {
                            q.pop_front();
                            Some((at, ordinal))
                        }
                        _ => None,
                    }
                };
                let Some((at, ordinal)) = due else { break };
                let Some((id, entry)) = self.started.lock().get(&ordinal).copied() else {
                    continue;
                };
                match self.check_one(ordinal, id, entry).await {
                    Ok((summary, _)) => {
                        if let Some(sm) = summary {
                            self.tally.lock().add(ordinal, &sm, &self.ledger);
                        }
                        self.started.lock().remove(&ordinal);
                        forgotten.insert(id);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "validation read failed; retrying later");
                        self.to_validate.lock().push_front((at, ordinal));
                        break;
                    }
                }
                if stop.is_cancelled() {
                    break;
                }
            }
            self.ledger.forget(&forgotten);
            if now >= next_rotation {
                next_rotation = now.add_ms(retention_ms.max(VALIDATE_DELAY_MS));
                self.ledger.rotate_forgotten();
            }
            if now >= next_cleanup {
                next_cleanup = now.add_ms(CLEANUP_EVERY_MS);
                // Never an instance still to validate, nor one that may have ended unseen
                // (the watcher could not read it: a database restart): stay a margin (for
                // clocks of the processes writing `updated_at`) before the oldest instance
                // still to validate and before the watcher's last complete pass.
                let margin = |t: i64| Timestamp(t.saturating_sub(10_000));
                let mut older_than = Timestamp(
                    now.as_millis()
                        .saturating_sub(i64::try_from(retention_ms).unwrap_or(i64::MAX)),
                );
                older_than = older_than.min(margin(self.watched_through.load(Ordering::SeqCst)));
                if let Some(&(oldest, _)) = self.to_validate.lock().front() {
                    older_than = older_than.min(margin(oldest.as_millis()));
                }
                match tokio::time::timeout(
                    Duration::from_millis(CALL_TIMEOUT_MS),
                    self.raw.cleanup(older_than),
                )
                .await
                {
                    Ok(Ok(n)) => {
                        self.cleaned.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "cleanup failed; retrying later"),
                    Err(_) => self.violate(Violation::new(
                        "hung_call",
                        format!("Store::cleanup did not return within {CALL_TIMEOUT_MS} ms"),
                    )),
                }
            }
        }
    }

    async fn validate(&self) -> Result<Vec<(u64, InstanceSummary)>, ChaosError> {
        let started: Vec<(u64, (InstanceId, usize))> =
            self.started.lock().iter().map(|(o, v)| (*o, *v)).collect();
        let mut out = Vec::with_capacity(started.len());
        let mut queue_total = 0u64;
        for (ordinal, (id, entry)) in started {
            let (summary, queued) = self.check_one(ordinal, id, entry).await?;
            queue_total += queued;
            if let Some(s) = summary {
                out.push((ordinal, s));
            }
        }
        let late = self.ledger.totals().after_forget;
        if late > 0 {
            self.violate(Violation::new(
                "late_work",
                format!(
                    "{late} handler calls or effects arrived for instances already validated as settled"
                ),
            ));
        }
        if self.scenario.exclusive_store {
            let st = self.raw.stats().await?;
            let in_store = st.queue_ready + st.queue_leased;
            if in_store > queue_total {
                self.violate(Violation::new(
                    "orphan_queue",
                    format!(
                        "the store holds {in_store} queue items, the run's instances {queue_total}"
                    ),
                ));
            }
            let mut listed = 0u64;
            let mut q = InstanceQuery {
                limit: floxy::MAX_PAGE_SIZE,
                ..InstanceQuery::default()
            };
            loop {
                let page = self.raw.list_instances(&q).await?;
                listed += page.items.len() as u64;
                match page.next {
                    Some(n) => q.after = Some(n),
                    None => break,
                }
            }
            // Validated during the run and not removed since are still listed.
            let expected = (out.len() as u64 + self.tally.lock().instances)
                .saturating_sub(self.cleaned.load(Ordering::Relaxed));
            if listed != expected {
                self.note(format!(
                    "the store lists {listed} instances, the run expected {expected}"
                ));
            }
        }
        Ok(out)
    }

    fn report(
        &self,
        backend: &str,
        summaries: &[(u64, InstanceSummary)],
        final_tasks: usize,
        max_tasks: usize,
    ) -> Report {
        let sc = &self.scenario;
        let mut stats = self.live_stats();
        // Final counts from the validated end state: what was validated during the run and
        // what was validated at the end.
        let mut tally = self.tally.lock().clone();
        for (ordinal, s) in summaries {
            tally.add(*ordinal, s, &self.ledger);
        }
        stats.completed = tally.completed;
        stats.failed = tally.failed;
        stats.cancelled = tally.cancelled;
        stats.aborted = tally.aborted;
        stats.dlq = tally.dlq;
        stats.unsettled = tally.unsettled;
        stats.rollbacks = tally.rollbacks;
        stats.max_rollback_depth = tally.max_depth;
        stats.steps_completed = tally.steps;
        stats.compensations = tally.compensations;
        stats.lease_expiries = tally.lease_expiries;
        let mut resources = self.resources.lock().clone();
        resources.summarise(sc.duration_ms);
        if let Some(limit) = sc.limits.max_resource_growth {
            if resources.at_one_minute.is_some()
                && sc.duration_ms >= 2 * crate::resources::FIRST_FIGURE_AT_MS
            {
                for v in resources.growth_violations(limit) {
                    self.violate(v);
                }
            } else {
                self.note(format!(
                    "resource growth not checked: the fault phase ({} ms) is shorter than two minutes",
                    sc.duration_ms
                ));
            }
        }
        let violations = self.violations.lock().clone();
        let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
        for v in &violations {
            *by_kind.entry(v.kind.clone()).or_default() += 1;
        }
        let total = violations.len();
        Report {
            seed: sc.seed,
            backend: backend.to_owned(),
            scenario: sc.name.clone(),
            virtual_time: sc.virtual_time,
            fault_phase_ms: sc.duration_ms,
            elapsed_ms: self.elapsed_ms(),
            verdict: if total == 0 {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
            stats,
            ledger: self.ledger.totals(),
            baseline_tasks: self.baseline_tasks,
            max_tasks,
            final_tasks,
            resources,
            violations: violations.into_iter().take(200).collect(),
            violations_total: total,
            violations_by_kind: by_kind,
            digest: format!("{:016x}", tally.digest),
            notes: self.notes.lock().clone(),
        }
    }
}

/// Counts over validated instances, added up one instance at a time (during the run in
/// steady mode, at the end otherwise); the digest is order-independent.
#[derive(Debug, Clone, Default)]
struct Tally {
    instances: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
    aborted: u64,
    dlq: u64,
    unsettled: u64,
    rollbacks: u64,
    max_depth: u32,
    steps: u64,
    compensations: u64,
    lease_expiries: u64,
    digest: u64,
}

impl Tally {
    fn add(&mut self, ordinal: u64, s: &InstanceSummary, ledger: &Ledger) {
        self.instances += 1;
        match s.status {
            InstanceStatus::Completed => self.completed += 1,
            InstanceStatus::Failed => self.failed += 1,
            InstanceStatus::Cancelled => self.cancelled += 1,
            InstanceStatus::Aborted => self.aborted += 1,
            InstanceStatus::Dlq => self.dlq += 1,
            _ => self.unsettled += 1,
        }
        if s.rollback_depth > 0 {
            self.rollbacks += 1;
        }
        self.max_depth = self.max_depth.max(s.rollback_depth);
        self.steps += u64::from(s.steps_completed);
        self.compensations += u64::from(s.compensations);
        self.lease_expiries += u64::from(s.lease_expiries);
        let mut line = format!(
            "{ordinal}:{}:{}:{}:{};",
            s.workflow, s.status, s.rollback_depth, s.steps_completed
        );
        for (step, eff) in ledger.effects_of(s.id) {
            // Writing to a String cannot fail.
            let _ = write!(line, "{step}={};", eff.net());
        }
        self.digest = self.digest.wrapping_add(mix(0, &[line.as_bytes()]));
    }
}

/// Counts of started instances per workflow (for tests and reports).
#[must_use]
pub fn count_by_workflow(report_summaries: &[(u64, InstanceSummary)]) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for (_, s) in report_summaries {
        *m.entry(s.workflow.clone()).or_default() += 1;
    }
    m
}

/// Runs only engines (no driver, no validation) with the built-in workloads' handlers under
/// the scenario's handler and store faults, until the process is killed: the body of a
/// worker process in a multi-process run.
///
/// # Errors
/// The engines could not start.
pub async fn work_only(
    scenario: Scenario,
    store: Arc<dyn Store>,
    ledger: Arc<Ledger>,
) -> Result<(), ChaosError> {
    crate::panics::quiet_injected_panics();
    let sc = scenario;
    let counters = FaultCounters::default();
    let switch = FaultSwitch::new(true);
    let chaos: Arc<dyn Store> = Arc::new(ChaosStore::new(
        store,
        sc.store_faults.clone(),
        sc.seed ^ sc.salt,
        switch.clone(),
        counters.clone(),
    ));
    let injector = HandlerInjector::new(
        sc.handler_faults.clone(),
        sc.seed ^ sc.salt,
        switch,
        counters,
    );
    let lh = LedgerHandlers::new(Arc::clone(&ledger));
    let mut engines = Vec::new();
    for k in 0..sc.engines.max(1) {
        let engine = Engine::builder(Arc::clone(&chaos))
            .workers(sc.workers)
            .batch_size(sc.batch_size)
            .poll_interval_ms(sc.poll_interval_ms)
            .eager_claims(k % 2 == 1)
            .worker_id(format!("chaos-worker-{:x}-{k}", sc.salt))
            .build();
        for name in workload::HANDLERS {
            if let Some(h) = lh.handler(name) {
                let wrapped = ChaosArcHandler::new(h, Arc::clone(&injector));
                engine.register_handler(
                    name,
                    Recorded {
                        inner: Arc::new(wrapped),
                        ledger: Arc::clone(&ledger),
                    },
                );
            }
        }
        engine.start_workers()?;
        engines.push(engine);
    }
    std::future::pending::<()>().await;
    drop(engines);
    Ok(())
}
