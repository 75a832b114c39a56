//! floxy: a durable saga workflow engine.
//!
//! A workflow is a graph of steps (tasks with compensations, savepoints, fork/join,
//! conditions, human approvals) declared with the [`Builder`] DSL. The engine runs it
//! at-least-once on a pluggable durable [`Store`], rolls back with compensations when a step
//! finally fails, and survives crashes of workers: the behaviour is specified in the
//! project's `SEMANTICS.md`.
//!
//! # Model
//!
//! * A **definition** ([`WorkflowDefinition`], id `"<name>-v<version>"`) is registered once
//!   with [`Engine::register_workflow`] and never changes; instances are pinned to it.
//! * An **instance** ([`InstanceRecord`]) is started with an input payload and moves through
//!   [`InstanceStatus`]es. Each step it reaches gets a **step run** ([`StepRun`]).
//! * **Handlers** ([`Handler`], or closures via [`Engine::register_fn`]) are the user code of
//!   tasks and compensations, looked up by name. They run at least once per attempt: use
//!   [`StepContext::idempotency_key`].
//! * Every decision (what runs next, retries, rollback order, joins, cancel, DLQ) is made by
//!   the pure state machine in [`floxy_core::machine`]; the [`Store`] applies its decisions
//!   atomically; this crate is the async shell around both.
//!
//! # The drive loop
//!
//! ```text
//!   claim a batch ──► for each item, outside any store transaction:
//!   (leases +           previous lease expired? ─► Input::LeaseExpired (handler not run)
//!    fencing tokens)    timer?                  ─► Input::TimerFired
//!                       execute / compensate    ─► run the handler with a timeout, a
//!                                                  cancellation token and heartbeats,
//!                                                  catching panics ─► Input::WorkDone
//!                  ──► Store::update_instance(id, |snapshot| machine::apply(wf, snapshot,
//!                        &input, now)): the store runs the pure transition under the
//!                        instance lock, checks the fencing token, commits it atomically
//!                  ──► wake local waiters and idle workers; repeat
//! ```
//!
//! * **Workers** ([`Engine::start_workers`]): up to `workers` handler executions at once;
//!   claims ask for at most `batch_size` items and only for registered handler names (plus
//!   timers). Idle workers sleep until the store's next due item or `poll_interval_ms`, or
//!   until a local commit or the store's signal of work queued by another process
//!   ([`Store::wait_for_work`]: PostgreSQL `LISTEN`/`NOTIFY`) wakes them. [`Engine::run_once`]
//!   claims and processes one batch without a pool.
//! * **Eager claims** (on by default, [`EngineBuilder::eager_claims`]): a pool worker
//!   commits its result with [`Store::update_instance_eager`], which may lease it the next
//!   step of the chain in the same commit; the worker runs that step at once, in the same
//!   task and on the same permit. Backends without eager claims lease nothing and the step
//!   goes through a claim as usual.
//! * **Timeouts**: a step's `timeout_ms` (a compensation's own `timeout_ms`) bounds each
//!   call; at the deadline the handler's future is dropped and the attempt fails
//!   (retryable) with "timed out after N ms". A call that returns only after its deadline
//!   (a handler that blocked its thread, so the timer could not fire first) is treated the
//!   same: the elapsed time is checked and the late result discarded.
//! * **Heartbeats**: one task extends every held lease in one [`Store::heartbeat`] call each
//!   third of the shortest lease TTL. A lost lease cancels the handler and drops its result;
//!   a cancel request (cancel, abort, rollback) fires its token, and a result it still
//!   returns is reported (after an abort, which removes the item, it is dropped). The
//!   engine that commits the request fires the token of its own running handler at once;
//!   other engines learn of it at their next heartbeat.
//! * **Stale results**: a commit rejected for a stale fencing token
//!   ([`StoreError::StaleLease`]) is dropped: another worker owns the item now. Retryable
//!   store errors are retried with a bounded backoff.
//! * **Event stream** ([`Engine::subscribe`]): after each successful local commit the
//!   events it wrote are published to a bounded channel ([`SUBSCRIPTION_CAPACITY`]); a
//!   subscriber that falls behind is told how many it missed
//!   ([`SubscriptionError::Lagged`]) and never slows commits. Ordering and scope: see
//!   [`CommittedEvent`].
//! * **Time** comes only from the engine's [`Clock`]; use [`TokioClock`] with a paused tokio
//!   runtime for deterministic tests on virtual time.
//! * **Clock skew**: processes sharing a store must agree on time, or one whose clock runs
//!   ahead reclaims the live leases of one whose clock runs behind. When the store has a
//!   clock of its own ([`Store::clock`]: PostgreSQL's `clock_timestamp()`), the engine
//!   **measures its offset from the store's clock and corrects its own**: at start and every
//!   [`EngineBuilder::clock_sync_interval_ms`] (default [`DEFAULT_CLOCK_SYNC_INTERVAL_MS`])
//!   it reads the store's clock, corrects the reading by half the round trip (slow samples
//!   are ignored), and then uses `clock source + offset` for every time it hands the store.
//!   All processes on one database thus work in the database's time; the stores keep
//!   honouring the `now` they are given. The offset is the gauge
//!   `floxy_store_clock_offset_seconds` ([`metrics`]); above [`CLOCK_OFFSET_WARN_MS`] it is
//!   logged as a warning. Stores without a clock (memory, redb) get no correction, so
//!   virtual clocks stay deterministic. See [`Engine::sync_clock`].
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), floxy::EngineError> {
//! use floxy::{Builder, Engine, InstanceStatus, MemoryStore, Payload};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! let engine = Engine::new(Arc::new(MemoryStore::new()));
//! engine.register_fn("greet", |_ctx, input: Payload| async move {
//!     let name = input.value()["name"].as_str().unwrap_or("world").to_owned();
//!     Ok(Payload::from(serde_json::json!({ "greeting": format!("hello {name}") })))
//! });
//! let wf = engine
//!     .register_workflow(Builder::new("hello", 1).step("greet", "greet").build()?)
//!     .await?;
//! engine.start_workers()?;
//! let done = engine
//!     .start_and_wait(&wf, serde_json::json!({ "name": "floxy" }), Duration::from_secs(5))
//!     .await?;
//! assert_eq!(done.status, InstanceStatus::Completed);
//! engine.shutdown(Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
//! ```
//!
//! # Features
//!
//! * `memory` (default): re-exports [`MemoryStore`], the in-process store.
//! * `redb`: re-exports `RedbStore` (with `RedbOptions` and `RedbDurability`), the durable
//!   single-file embedded store: one process, no server; each group-commit batch is one
//!   durable redb transaction.
//! * `postgres`: re-exports `PostgresStore` (with `PostgresConfig` and `PostgresLayout`), for
//!   several processes on several machines sharing one database.
//! * `failpoints`: evaluates [fail-rs](https://docs.rs/fail) failpoints at the runtime's
//!   crash points (after a claim, before a commit, after a commit, in heartbeats), named in
//!   [`floxy_core::failpoints`]. For fault-injection tests only; off by default (and then the
//!   points compile to nothing).
//!
//! # Metrics
//!
//! The engine records counters, gauges and histograms through the `metrics` facade (no
//! exporter here; labels are bounded, never instance ids): the list of names, types, labels
//! and meanings is in [`metrics`], with [`metrics::describe`] to register their descriptions.

mod attempt;
mod clock;
mod clock_sync;
mod commit;
mod config;
mod engine;
mod error;
mod failpoints;
mod handler;
mod heartbeat;
// `pub` items for the loom model (`tests/loom_leases.rs`), public only under
// `--cfg floxy_loom` (below).
#[cfg_attr(not(floxy_loom), allow(unreachable_pub))]
mod lease_table;
pub mod metrics;
mod subscribe;
mod sync;
mod wait;
mod waiters;
mod worker;
mod workflows;

pub use attempt::EAGER_CLAIMS_PER_COMMIT;
pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use clock_sync::{
    CLOCK_OFFSET_WARN_MS, CLOCK_SAMPLES, CLOCK_SYNC_RETRY_MS, DEFAULT_CLOCK_SYNC_INTERVAL_MS,
    MAX_CLOCK_SAMPLE_RTT_MS,
};
pub use commit::{STORE_RETRY_ATTEMPTS, STORE_RETRY_BASE_MS, STORE_RETRY_MAX_MS};
pub use config::{
    DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL_MS, DEFAULT_SHUTDOWN_TIMEOUT_MS, DEFAULT_WORKERS,
    EngineBuilder, MAX_WORKERS, MIN_POLL_INTERVAL_MS,
};
pub use engine::{Engine, MAX_TIMELINE_EVENTS, StartOptions};
pub use error::EngineError;
pub use handler::{CompensationInfo, FnHandler, Handler, HandlerError, StepContext};
pub use heartbeat::MIN_HEARTBEAT_PERIOD_MS;
/// The lease table, for the loom model only (`tests/loom_leases.rs`); not a stable API.
#[cfg(floxy_loom)]
#[doc(hidden)]
pub mod loom_model {
    pub use crate::lease_table::{
        LeaseGuard, LeaseTable, MAX_PENDING_CANCELS, PENDING_CANCEL_MS, Token, Wake,
    };
}
pub use subscribe::{CommittedEvent, EventSubscription, SUBSCRIPTION_CAPACITY, SubscriptionError};
pub use wait::{Settled, settled};
pub use worker::{ABANDON_GRACE_MS, MIN_IDLE_SLEEP_MS, ShutdownReport};

pub use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;

/// The pure core, for everything not re-exported here.
pub use floxy_core;
pub use floxy_core::builder::{Builder, ForkBuilder};
pub use floxy_core::graph::CompiledWorkflow;
pub use floxy_core::machine::{Input, TransitionError, WorkOutcome};
pub use floxy_core::model::*;
pub use floxy_core::store::{
    Capabilities, ClaimRequest, ClaimedItem, CreateOutcome, DlqQuery, InstanceQuery, LeaseRef,
    LeaseState, MAX_CLAIM_BATCH, MAX_PAGE_SIZE, Page, PutDefinition, Store, StoreError, StoreStats,
    TransitionFn,
};
pub use floxy_core::validate::{DefinitionError, DefinitionErrors};

#[cfg(feature = "memory")]
pub use floxy_store_memory::MemoryStore;
/// The PostgreSQL store (feature `postgres`).
#[cfg(feature = "postgres")]
pub use floxy_store_postgres::{Layout as PostgresLayout, PostgresConfig, PostgresStore};
/// The embedded single-file store (feature `redb`).
#[cfg(feature = "redb")]
pub use floxy_store_redb::{Durability as RedbDurability, RedbOptions, RedbStore};
