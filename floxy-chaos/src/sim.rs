//! Deterministic simulation: the same workloads, injectors and validators on the memory
//! store, on a single-threaded tokio runtime with paused (virtual) time and the engines on a
//! [`floxy::TokioClock`]. Timeouts, retry delays, lease expiries, injected sleeps and hangs
//! take no real time, so a run of many virtual seconds takes milliseconds, and thousands of
//! seeds run in seconds. Every decision comes from the seed, so a failing seed replays. That
//! holds only while nothing else decides: every `tokio::select!` on the path of a run (the
//! engine's loops, this crate's drivers) is `biased`, because an unbiased one polls its
//! branches in a random order that no seed controls, and two branches ready at the same
//! virtual instant then made replays of one seed diverge now and then:
//!
//! ```
//! use floxy_chaos::sim;
//!
//! let report = sim::run_seed(7).expect("simulation runs");
//! assert!(report.virtual_time);
//! // The same seed gives the same end state.
//! assert_eq!(report.digest, sim::run_seed(7).expect("simulation runs").digest);
//! ```

use crate::inject::handler::HandlerFaults;
use crate::inject::store::StoreFaults;
use crate::report::Report;
use crate::runner::{ChaosError, Run, Scenario};
use crate::validate::Limits;
use crate::workload::WorkloadOptions;
use std::sync::Arc;

/// The simulation scenario of `seed`: 20 virtual seconds of faults on two engines, eight
/// instances in flight, every workload, handler and store faults, engine crashes.
#[must_use]
pub fn scenario(seed: u64) -> Scenario {
    Scenario {
        name: "simulation".into(),
        seed,
        duration_ms: 20_000,
        concurrency: 8,
        max_instances: 0,
        engines: 2,
        workers: 4,
        batch_size: 4,
        poll_interval_ms: 100,
        workload: WorkloadOptions {
            random_graphs: 3,
            ..WorkloadOptions::default()
        },
        business_failure_rate: 0.08,
        cancel_rate: 0.05,
        abort_rate: 0.02,
        handler_faults: HandlerFaults::stress(),
        store_faults: StoreFaults::moderate(),
        engine_crash_ms: Some((3_000, 8_000)),
        limits: Limits {
            settle_timeout_ms: 120_000,
            ..Limits::default()
        },
        stats_interval_ms: 0,
        sample_interval_ms: 500,
        virtual_time: true,
        exclusive_store: true,
        ..Scenario::default()
    }
}

/// Runs `scenario` (forced onto virtual time) on a fresh memory store, on a fresh
/// single-threaded runtime with paused time. Must not be called from inside a tokio runtime.
///
/// # Errors
/// The runtime could not be built, or the run could not be set up.
pub fn run(mut scenario: Scenario) -> Result<Report, ChaosError> {
    scenario.virtual_time = true;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| ChaosError::Injector(format!("cannot build the runtime: {e}")))?;
    rt.block_on(async move {
        let store = Arc::new(floxy::MemoryStore::new());
        Run::new(scenario, store, "memory (simulation)")
            .execute()
            .await
    })
}

/// Runs the simulation scenario of `seed`.
///
/// # Errors
/// As [`run`].
pub fn run_seed(seed: u64) -> Result<Report, ChaosError> {
    run(scenario(seed))
}

/// The outcome of a sweep over many seeds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sweep {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds that passed.
    pub passed: u64,
    /// Seeds that failed, with their violation kinds.
    pub failed: Vec<(u64, Vec<String>)>,
    /// Instances run in total.
    pub instances: u64,
}

/// Runs the simulation scenario for every seed of `seeds` (with `adjust` applied to each
/// scenario), calling `on_report` after each.
///
/// # Errors
/// The first seed whose run could not be set up.
pub fn sweep(
    seeds: impl IntoIterator<Item = u64>,
    adjust: impl Fn(&mut Scenario),
    mut on_report: impl FnMut(&Report),
) -> Result<Sweep, ChaosError> {
    let mut out = Sweep::default();
    for seed in seeds {
        let mut sc = scenario(seed);
        adjust(&mut sc);
        let r = run(sc)?;
        out.seeds += 1;
        out.instances += r.stats.started;
        if r.passed() {
            out.passed += 1;
        } else {
            out.failed
                .push((seed, r.violations_by_kind.keys().cloned().collect()));
        }
        on_report(&r);
    }
    Ok(out)
}
