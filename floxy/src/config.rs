//! Engine configuration and its builder.

use crate::clock::{Clock, SystemClock};
use crate::engine::Engine;
use floxy_core::store::{MAX_CLAIM_BATCH, Store};
use std::sync::Arc;

/// Default number of concurrent handler executions of the worker pool.
pub const DEFAULT_WORKERS: usize = 4;
/// Default number of items asked for by one claim.
pub const DEFAULT_BATCH_SIZE: usize = 16;
/// Default upper bound on an idle worker's sleep (and on [`Engine::wait_for`]'s poll period,
/// which catches commits made by other processes).
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 500;
/// Default time [`Engine::shutdown`] waits for in-flight handlers.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 30_000;
/// Upper bound on the number of concurrent handler executions.
pub const MAX_WORKERS: usize = 10_000;
/// Smallest poll interval accepted (smaller values are raised to it).
pub const MIN_POLL_INTERVAL_MS: u64 = 1;

/// Settings of an [`Engine`]; built with [`EngineBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub(crate) workers: usize,
    pub(crate) batch_size: usize,
    pub(crate) poll_interval_ms: u64,
    pub(crate) shutdown_timeout_ms: u64,
    pub(crate) worker_id: Arc<str>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) id_seed: Option<u64>,
    pub(crate) eager_claims: bool,
    pub(crate) metrics_sample_interval_ms: u64,
    pub(crate) clock_sync_interval_ms: u64,
}

/// Builds an [`Engine`]. Out-of-range values are clamped to their bounds (documented on each
/// method), so [`EngineBuilder::build`] cannot fail.
#[must_use]
pub struct EngineBuilder {
    store: Arc<dyn Store>,
    config: EngineConfig,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            config: EngineConfig {
                workers: DEFAULT_WORKERS,
                batch_size: DEFAULT_BATCH_SIZE,
                poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
                shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
                worker_id: format!("floxy-{}", uuid::Uuid::now_v7()).into(),
                clock: Arc::new(SystemClock),
                id_seed: None,
                eager_claims: true,
                metrics_sample_interval_ms: crate::metrics::DEFAULT_SAMPLE_INTERVAL_MS,
                clock_sync_interval_ms: crate::clock_sync::DEFAULT_CLOCK_SYNC_INTERVAL_MS,
            },
        }
    }

    /// Number of handler executions the worker pool runs at once (1..=[`MAX_WORKERS`]).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n.clamp(1, MAX_WORKERS);
        self
    }

    /// Largest number of items one claim asks for (1..=[`MAX_CLAIM_BATCH`]). The pool never
    /// claims more than it has free workers for.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n.clamp(1, MAX_CLAIM_BATCH);
        self
    }

    /// Upper bound on an idle worker's sleep when the store reports no due work, and the
    /// poll period of [`Engine::wait_for`] (at least [`MIN_POLL_INTERVAL_MS`]). Local commits
    /// wake both at once; the poll only matters for work created by other processes.
    pub fn poll_interval_ms(mut self, ms: u64) -> Self {
        self.config.poll_interval_ms = ms.max(MIN_POLL_INTERVAL_MS);
        self
    }

    /// Time [`Engine::shutdown`] waits for in-flight handlers when called without a timeout.
    pub fn shutdown_timeout_ms(mut self, ms: u64) -> Self {
        self.config.shutdown_timeout_ms = ms;
        self
    }

    /// The lease owner name of this engine's claims and heartbeats (default
    /// `floxy-<uuid>`). Must be unique among the processes sharing a store.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.config.worker_id = id.into().into();
        self
    }

    /// Derives instance ids from `seed` and a counter instead of random bits (still `UUIDv7`,
    /// time-ordered). For seeded simulations that must replay exactly; never share a seed
    /// between engines on one store.
    pub fn deterministic_ids(mut self, seed: u64) -> Self {
        self.config.id_seed = Some(seed);
        self
    }

    /// Whether a pool worker asks the store to lease it the next step of a chain in the
    /// commit of the current one ([`floxy_core::store::Store::update_instance_eager`];
    /// default **on**) and runs that step in the same task, without a claim in between:
    /// lower latency from one step to the next, and less work for the store. Every bundled
    /// store offers eager claims; with a store that does not, nothing is leased and the
    /// step goes through a claim. Turn it off to send every step through a
    /// claim (e.g. to spread the steps of one instance over many processes). How much it
    /// gains per backend: `benches/RESULTS.md` and `docs/perf-notes.md`.
    pub fn eager_claims(mut self, on: bool) -> Self {
        self.config.eager_claims = on;
        self
    }

    /// Period of the sampler of the store gauges ([`crate::metrics`]: queue depth, oldest
    /// pending age, instances per status, DLQ records) that runs with the worker pool
    /// (default [`crate::metrics::DEFAULT_SAMPLE_INTERVAL_MS`]; 0: no sampler, e.g. when the
    /// process exports no metrics, or an exporter calls [`Engine::sample_metrics`] itself).
    pub fn metrics_sample_interval_ms(mut self, ms: u64) -> Self {
        self.config.metrics_sample_interval_ms = ms;
        self
    }

    /// The time source (default [`SystemClock`]). Over a store with a clock of its own
    /// ([`Store::clock`], e.g. PostgreSQL) the engine's clock is this source corrected by
    /// the measured offset to the store's clock (see
    /// [`EngineBuilder::clock_sync_interval_ms`]); over any other store it is this source
    /// as is.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config.clock = clock;
        self
    }

    /// Period of the measurement of the offset between the clock source and the store's
    /// clock ([`Store::clock`]; default [`crate::DEFAULT_CLOCK_SYNC_INTERVAL_MS`]). The
    /// first measurement happens before the engine's first claim, start or operator
    /// command; from then on the engine's clock is `source + offset`, so processes whose
    /// clocks disagree still agree on lease expiries (the [crate docs](crate) say more).
    /// Stores without a clock are asked once and then never again. 0: never measure on
    /// its own (only [`Engine::sync_clock`] does): the source is used as is, e.g. a virtual
    /// clock over a store that has a real one, or hosts whose clocks are known to agree.
    pub fn clock_sync_interval_ms(mut self, ms: u64) -> Self {
        self.config.clock_sync_interval_ms = ms;
        self
    }

    /// Builds the engine. Workers do not run until [`Engine::start_workers`].
    #[must_use]
    pub fn build(self) -> Engine {
        Engine::from_parts(self.store, self.config)
    }
}
