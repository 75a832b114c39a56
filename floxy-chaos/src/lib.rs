//! Chaos testing for the floxy saga workflow engine.
//!
//! Nobody knows how a workflow engine behaves until it has been tested under chaos: step
//! crashes, worker restarts, partial rollbacks, fork/join races, compensation overlap,
//! database failover, latency spikes, message loss. This crate makes that a command
//! (`floxy-chaos`) and a library: it drives Floxy's stress-test workloads (or your own
//! workflows and handlers) against any [`floxy::Store`] while injecting seeded faults, then
//! checks every invariant of the engine's specification.
//!
//! # Injectors ([`inject`], [`proxy`], [`process`])
//!
//! All seeded (same seed, same decisions) and none blocks the async runtime:
//!
//! * **Handler faults** ([`inject::handler`]): wrap any handler to panic, return an error,
//!   sleep (a range) or hang past its timeout, each with its own probability, before or
//!   after the wrapped handler's side effects.
//! * **Store faults** ([`inject::store`]): a decorator around any store adding latency and
//!   transient (retryable) errors, including *lost replies* (the call took effect, the
//!   caller sees an error).
//! * **Failpoints** ([`inject::failpoints`], feature `failpoints`): fail-rs failpoints at the
//!   runtime's named crash points (after a claim, before a commit, inside a store's commit,
//!   after a commit, in heartbeats; names in [`floxy::floxy_core::failpoints`]).
//! * **Network faults** ([`proxy`]): a real TCP proxy speaking the Toxiproxy HTTP API
//!   (latency with jitter, bandwidth, timeout/blackhole, `reset_peer`, `slow_close`, `limit_data`,
//!   down), driven with the `toxiproxy_rust` client; set `FLOXY_TOXIPROXY_URL` to drive a real
//!   Toxiproxy instead.
//! * **Process faults** ([`process`], [`backend::PgRestarter`]): SIGKILL and restart of
//!   worker processes, `pg_ctl restart -m immediate` mid-run, SIGKILL of the process holding
//!   a redb file; and in-process engine crashes (everything in flight abandoned).
//!
//! # Workloads ([`workload`])
//!
//! Floxy's four stress workflows — a linear order saga with compensations, the same with two
//! savepoints, a fork/join of payment and inventory, a nested fork after a savepoint — with
//! business failures at a configurable rate, plus seeded random graphs (nested forks with
//! `all`/`any` joins, conditions, savepoints). Every handler writes its effect to a
//! [`ledger::Ledger`] and every compensation reverses it, so the end state can be audited.
//! Operator cancels and aborts hit random instances at random moments.
//!
//! # Validators ([`validate`])
//!
//! A violation fails the run: rollback depth under a limit (default 50); tokio task count
//! bounded during the run and back to its baseline after; no stuck runs (every instance
//! settles once faults stop, and no instance goes without progress for the stall timeout);
//! no queue item for a terminal instance; a completed instance has only completed steps on
//! its path; a failed or cancelled instance has every step after its savepoint rolled back,
//! skipped, failed or compensation-failed; the other SEMANTICS §13 invariants (compensation
//! at most once, in reverse completion order, one at a time; every step run that made an
//! attempt compensated once a rollback covers it, and none that never made one; handler
//! calls within `max_retries + 1`; no duplicate completion); the ledger balances, without
//! exception.
//!
//! # Runs, reports, simulation
//!
//! A [`runner::Run`] has a fault phase, a settle phase (faults off) and a validation;
//! it prints a stats line every 10 s and returns a [`report::Report`] (text and JSON, with
//! the seed and a verdict) that also records the process's resident memory, open
//! descriptors and tokio tasks over time ([`resources`]). Long runs use *steady mode*
//! ([`runner::Scenario::retention_ms`], the `soak` profile): instances are validated as they
//! settle and finished ones removed from the store, so a run of any length holds about the same
//! amount of work, and its resources at the end of the fault phase must be within 20 % of their
//! one-minute figures. [`sim`] runs the same thing on the memory store on virtual time:
//! thousands of seeds in seconds, each replayable from its seed. [`profiles`] has ready-made
//! scenarios per backend.
//!
//! # Running against your own handlers
//!
//! ```no_run
//! use floxy::{Builder, FnHandler, Handler, Payload, StepContext};
//! use floxy_chaos::runner::{CustomWorkload, Run, Scenario};
//! use std::sync::Arc;
//!
//! # async fn demo() -> Result<(), floxy_chaos::runner::ChaosError> {
//! let definition = Builder::new("checkout", 1)
//!     .step("charge", "payments.charge")
//!     .on_failure("refund", "payments.refund")
//!     .timeout_ms(2_000)
//!     .then("ship", "shipping.create")
//!     .timeout_ms(2_000)
//!     .build()
//!     .expect("valid workflow");
//! let echo = |_ctx: StepContext, p: Payload| async move { Ok(p) };
//! let handlers: Vec<(String, Arc<dyn Handler>)> = vec![
//!     ("payments.charge".into(), Arc::new(FnHandler::new(echo))),
//!     ("payments.refund".into(), Arc::new(FnHandler::new(echo))),
//!     ("shipping.create".into(), Arc::new(FnHandler::new(echo))),
//! ];
//! let scenario = Scenario {
//!     workloads: vec![], // only yours
//!     duration_ms: 60_000,
//!     ..Scenario::default()
//! };
//! let report = Run::new(scenario, Arc::new(floxy::MemoryStore::new()), "memory")
//!     .custom_workload(CustomWorkload {
//!         definition,
//!         handlers,
//!         input: Arc::new(|n, _rng| serde_json::json!({ "order": n })),
//!     })
//!     .execute()
//!     .await?;
//! println!("{}", report.to_text());
//! assert!(report.passed());
//! # Ok(()) }
//! ```
//!
//! Your handlers are wrapped with the fault injector and a call recorder; every validator
//! but the ledger applies (give your steps timeouts: injected hangs rely on them).

pub mod backend;
pub mod faults;
pub mod inject;
pub mod ledger;
pub mod panics;
pub mod process;
pub mod profiles;
pub mod proxy;
pub mod report;
pub mod resources;
pub mod rng;
pub mod runner;
pub mod sim;
pub mod validate;
pub mod workload;

pub use faults::{FaultCounters, FaultSwitch};
pub use report::{Report, Verdict};
pub use runner::{ChaosError, Run, Scenario};
