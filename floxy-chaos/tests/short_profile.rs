//! The short chaos profile on every backend, through the `floxy-chaos` binary (CI). Each run
//! has a 20 s fault phase; PostgreSQL runs behind the proxy with network faults and one
//! `pg_ctl restart -m immediate`; the process variants SIGKILL worker processes.
//!
//! The ledger is strict: the engine compensates every attempt (SEMANTICS §5, "attempted
//! means compensated"), so an effect left by a step that never completed is a violation.
//!
//! Ignored by default (they take a while); run them with
//! `cargo nextest run -p floxy-chaos --all-features --test short_profile --run-ignored ignored-only`
//! or `cargo test -p floxy-chaos --all-features --test short_profile -- --ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(name: &str, args: &[&str]) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!("floxy-chaos-{name}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_floxy-chaos"))
        .args([
            "run",
            "--profile",
            "short",
            "--seed",
            "20251122",
            "--stats-interval",
            "10s",
        ])
        .arg("--json")
        .arg(&json)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{name}: exit {:?}\n{stdout}\n{}",
        out.status.code(),
        stderr
            .chars()
            .rev()
            .take(4_000)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(report["verdict"], "pass", "{name}: {stdout}");
    assert!(
        report["stats"]["started"].as_u64().unwrap() > 50,
        "{name}: {stdout}"
    );
    report
}

fn fault(report: &serde_json::Value, kind: &str) -> u64 {
    report["stats"]["faults"][kind].as_u64().unwrap_or(0)
}

#[test]
#[ignore = "chaos short profile (about 20-40 s each): scripts/test.sh runs it with --run-ignored ignored-only"]
fn short_profile_memory() {
    let r = run("memory", &["--backend", "memory"]);
    assert!(fault(&r, "handler.panic") > 0 && fault(&r, "store.error") > 0);
    assert!(fault(&r, "engine.crash") > 0);
}

#[test]
#[ignore = "chaos short profile (about 20-40 s each): scripts/test.sh runs it with --run-ignored ignored-only"]
fn short_profile_redb() {
    let r = run("redb", &["--backend", "redb"]);
    assert!(fault(&r, "handler.panic") > 0 && fault(&r, "engine.crash") > 0);
}

#[test]
#[ignore = "chaos short profile (about 20-40 s each): scripts/test.sh runs it with --run-ignored ignored-only"]
fn short_profile_redb_process_killed() {
    let r = run(
        "redb-kill",
        &[
            "--backend",
            "redb",
            "--worker-processes",
            "1",
            "--kill-every",
            "3s..6s",
        ],
    );
    assert!(fault(&r, "process.sigkill") >= 2);
}

#[test]
#[ignore = "chaos short profile (about 20-40 s each): scripts/test.sh runs it with --run-ignored ignored-only"]
fn short_profile_postgres_proxy_and_restart() {
    let r = run("postgres", &["--backend", "postgres"]);
    assert_eq!(fault(&r, "postgres.restart_immediate"), 1);
    let proxy: u64 = r["stats"]["faults"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("proxy."))
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum();
    assert!(proxy > 0, "no network fault injected");
}

#[test]
#[ignore = "chaos short profile (about 20-40 s each): scripts/test.sh runs it with --run-ignored ignored-only"]
fn short_profile_postgres_worker_processes_killed() {
    let r = run(
        "postgres-kill",
        &[
            "--backend",
            "postgres",
            "--worker-processes",
            "2",
            "--kill-every",
            "2s..5s",
            "--pg-restarts",
            "0",
        ],
    );
    assert!(fault(&r, "process.sigkill") >= 2);
}

/// Steady mode on `backend`: instances validated as they settle, finished ones removed from
/// the store, and the run still balances.
fn steady(backend: &str) {
    let r = run(
        &format!("steady-{backend}"),
        &[
            "--backend",
            backend,
            "--retention",
            "3s",
            "--duration",
            "16s",
        ],
    );
    let s = &r["stats"];
    let started = s["started"].as_u64().unwrap();
    let validated = s["validated_during_run"].as_u64().unwrap();
    let cleaned = s["cleaned"].as_u64().unwrap();
    assert!(
        validated > started / 4,
        "{backend}: only {validated} of {started} validated during the run"
    );
    assert!(
        cleaned > 0 && cleaned <= validated,
        "{backend}: cleaned {cleaned}, validated {validated}"
    );
    // Every instance was validated, during the run or at its end.
    let settled: u64 = [
        "completed",
        "failed",
        "cancelled",
        "aborted",
        "dlq",
        "unsettled",
    ]
    .iter()
    .map(|k| s[*k].as_u64().unwrap())
    .sum();
    assert_eq!(settled, started, "{backend}: {s}");
    assert_eq!(r["ledger"]["after_forget"], 0);
    assert!(r["resources"]["at_end"]["rss_bytes"].as_u64().unwrap() > 1 << 20);
    assert!(r["resources"]["samples"].as_array().unwrap().len() >= 3);
}

#[test]
#[ignore = "chaos short profile (about 20-40 s each): scripts/test.sh runs it with --run-ignored ignored-only"]
fn steady_mode_memory() {
    steady("memory");
}

#[test]
#[ignore = "chaos short profile (about 20-40 s each): scripts/test.sh runs it with --run-ignored ignored-only"]
fn steady_mode_redb() {
    steady("redb");
}

#[test]
#[ignore = "chaos short profile (about 20-40 s each): scripts/test.sh runs it with --run-ignored ignored-only"]
fn steady_mode_postgres() {
    steady("postgres");
}
