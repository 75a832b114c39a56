//! The deterministic simulation over a fixed set of seeds (CI), and replay from a seed.
//!
//! Every invariant holds, the ledger without exception: the engine compensates every step
//! run that made an attempt (SEMANTICS §5), so no effect of a never-completed step is left
//! (`ledger_partial`, findings F1/F2 in `tests/findings.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy_chaos::runner::Scenario;
use floxy_chaos::sim;

fn quick(sc: &mut Scenario) {
    sc.duration_ms = 3_000;
    sc.concurrency = 4;
    sc.workload.random_graphs = 2;
}

#[test]
fn quick_scenario_over_200_seeds() {
    let s = sim::sweep(1..=200, quick, |_| {}).unwrap();
    assert!(
        s.failed.is_empty(),
        "failing seeds (replay with `floxy-chaos sim --quick --seed N`): {:?}",
        s.failed
    );
    assert!(s.instances > 5_000, "{} instances", s.instances);
}

#[test]
fn full_scenario_over_8_seeds() {
    let s = sim::sweep(
        1_001..=1_008,
        |_| {},
        |r| {
            assert!(
                r.stats.faults.values().sum::<u64>() > 500,
                "{}",
                r.to_text()
            );
            assert!(
                r.stats.rollbacks > 0 && r.stats.lease_expiries > 0,
                "{}",
                r.to_text()
            );
        },
    )
    .unwrap();
    assert!(
        s.failed.is_empty(),
        "failing seeds (replay with `floxy-chaos sim --seed N`): {:?}",
        s.failed
    );
}

/// Runs the full scenario of `seed` twice and asserts both runs end alike.
fn assert_replays(seed: u64) {
    let a = sim::scenario(seed);
    let b = a.clone();
    let ra = sim::run(a).unwrap();
    let rb = sim::run(b).unwrap();
    assert_eq!(ra.digest, rb.digest, "seed {seed} did not replay");
    assert_eq!(ra.stats, rb.stats, "seed {seed} did not replay");
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 77] {
        assert_replays(seed);
    }
    let other = sim::run_seed(4).unwrap();
    let this = sim::run_seed(3).unwrap();
    assert_ne!(other.digest, this.digest);
}

/// Replays of more seeds of the full scenario. A decision left to chance (an unbiased
/// `select!` polling two ready branches in a random order of its own) made one replay in a few
/// diverge.
#[test]
fn full_seeds_replay_exactly() {
    for seed in 2_001..=2_012 {
        assert_replays(seed);
    }
}

#[test]
fn seeds_that_found_partial_effects_balance_the_ledger() {
    // Seeds 1 and 2 showed `ledger_partial` (findings F1/F2) while retrying steps were
    // skipped and late failures ignored without compensation; they now pass, and their
    // rollbacks compensated steps whose attempts had failed.
    for seed in [1, 2] {
        let r = sim::run_seed(seed).unwrap();
        assert!(r.passed(), "{}", r.to_text());
        assert!(
            r.stats.rollbacks > 0 && r.stats.retries > 0,
            "{}",
            r.to_text()
        );
    }
}
