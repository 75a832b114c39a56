//! The deterministic simulation over a fixed set of seeds (CI), and replay from a seed.
//!
//! Effects left by never-completed steps (`ledger_partial`, finding F1/F2 in
//! `tests/findings.rs`) are reported as notes here until the engine compensates them; every
//! other invariant must hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy_chaos::runner::Scenario;
use floxy_chaos::sim;

fn lenient(sc: &mut Scenario) {
    sc.limits.partial_effects = false;
}

fn quick(sc: &mut Scenario) {
    lenient(sc);
    sc.duration_ms = 3_000;
    sc.concurrency = 4;
    sc.workload.random_graphs = 2;
}

#[test]
fn quick_scenario_over_200_seeds() {
    let s = sim::sweep(1..=200, quick, |_| {}).unwrap();
    assert!(
        s.failed.is_empty(),
        "failing seeds (replay with `floxy-chaos sim --quick --allow-partial-effects --seed N`): {:?}",
        s.failed
    );
    assert!(s.instances > 5_000, "{} instances", s.instances);
}

#[test]
fn full_scenario_over_8_seeds() {
    let s = sim::sweep(1_001..=1_008, lenient, |r| {
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
    })
    .unwrap();
    assert!(
        s.failed.is_empty(),
        "failing seeds (replay with `floxy-chaos sim --allow-partial-effects --seed N`): {:?}",
        s.failed
    );
}

/// Runs the full scenario of `seed` twice and asserts both runs end alike.
fn assert_replays(seed: u64) {
    let mut a = sim::scenario(seed);
    lenient(&mut a);
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
fn strict_ledger_flags_partial_effects() {
    // The same runs with the strict ledger: the finding shows up as `ledger_partial` and
    // only as that (seed 1 is one of them).
    let r = sim::run_seed(1).unwrap();
    for k in r.violations_by_kind.keys() {
        assert_eq!(k, "ledger_partial", "{}", r.to_text());
    }
}
