//! `floxyd` as a fleet and through crashes, as real processes on real stores: two daemons
//! with disjoint handler sets on one PostgreSQL database, SIGKILL mid-run then a restart (on
//! PostgreSQL and on a redb file), and `/ready` recovering once PostgreSQL is back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    clippy::doc_markdown
)]

mod common;

use common::*;
use floxy_store_postgres::testing::{TestCluster, database_url, fresh_schema};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// Two handlers that log `instance step handler` to `$NODE_LOG` (set per daemon), and a
/// flow that needs `a`, then `b`, then `a` again.
const RELAY: &str = r#"handlers:
  - name: a
    exec: |
      echo "$FLOXY_INSTANCE_ID $FLOXY_STEP_NAME a" >> "$NODE_LOG"
      echo '{"by": "a"}'
  - name: b
    exec: |
      echo "$FLOXY_INSTANCE_ID $FLOXY_STEP_NAME b" >> "$NODE_LOG"
      echo '{"by": "b"}'
flows:
  - name: relay
    steps:
      - { name: first, handler: a }
      - { name: second, handler: b }
      - { name: third, handler: a }
"#;

/// Three slow steps; each logs `run instance step` to `$STARTS` when it starts and, after
/// the sleep, to `$EFFECTS` (its side effect). A short lease so a crashed daemon's work is
/// reclaimed within a second.
const SLOW: &str = r#"handlers:
  - name: work
    exec: |
      echo "$RUN $FLOXY_INSTANCE_ID $FLOXY_STEP_NAME" >> "$STARTS"
      sleep 0.3
      echo "$RUN $FLOXY_INSTANCE_ID $FLOXY_STEP_NAME" >> "$EFFECTS"
      echo '{}'
flows:
  - name: slow
    lease_ttl: 1s
    steps:
      - { name: one, handler: work, retry_delay: 100 }
      - { name: two, handler: work, retry_delay: 100 }
      - { name: three, handler: work, retry_delay: 100 }
"#;

/// The lines of `p` (none when it does not exist yet).
fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// `floxyctl start -o workflow` `n` times; the instance ids.
fn start_instances(n: usize, workflow: &str, store: &[&str]) -> Vec<String> {
    (0..n)
        .map(|_| {
            ctl(["start", "-o", workflow, "--output", "json"]
                .iter()
                .chain(store))
            .expect(OK)
            .json()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// `floxyctl show id --output json`.
fn show(id: &str, store: &[&str]) -> serde_json::Value {
    ctl(["show", id, "--output", "json"].iter().chain(store))
        .expect(OK)
        .json()
}

/// Step name → attempts of a shown instance, asserting every step completed.
fn attempts(shown: &serde_json::Value) -> BTreeMap<String, u64> {
    shown["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {shown}"))
        .iter()
        .map(|s| {
            assert_eq!(s["status"], "completed", "{shown}");
            (
                s["step"].as_str().unwrap().to_owned(),
                s["attempts"].as_u64().unwrap_or_else(|| panic!("{s}")),
            )
        })
        .collect()
}

/// Waits until a statistics event of `d` counts `n` completed instances.
#[track_caller]
fn wait_completed(d: &mut Daemon, n: u64, timeout: Duration) {
    d.wait_for(&format!("{n} completed instances"), timeout, |v| {
        v["message"] == "workflow statistics" && v["completed"] == n
    });
}

#[test]
fn two_daemons_with_disjoint_handlers_share_a_database_and_claim_only_their_steps() {
    let dir = tempfile::tempdir().unwrap();
    let flows = write(dir.path(), "relay.yaml", RELAY);
    let url = database_url();
    let schema = fresh_schema();
    let store = ["--database-url", url.as_str(), "--schema", schema.as_str()];
    let log_a = dir.path().join("a.log");
    let log_b = dir.path().join("b.log");
    let node = |handlers: &str, log: &Path| {
        let log = log.display().to_string();
        let env = [
            ("FLOXY_DATABASE_URL", url.as_str()),
            ("FLOXY_DB_SCHEMA", schema.as_str()),
            ("FLOXY_HANDLERS", handlers),
            ("NODE_LOG", log.as_str()),
        ];
        Daemon::start(&flows, &env)
    };

    // A handler name the file does not declare is bad configuration.
    let mut bad = node("a,nope", &log_a);
    assert_eq!(bad.wait_exit(Duration::from_secs(30)), BAD_INPUT);
    assert!(
        bad.log_text()
            .contains("the flow file declares no handler \\\"nope\\\""),
        "{}",
        bad.log_text()
    );

    // Node A runs `a`, node B runs `b`; both load the same file, so the definition agrees.
    let mut a = node("a", &log_a);
    a.ready();
    let mut b = node("b", &log_b);
    b.ready();
    for (d, name) in [(&a, "a"), (&b, "b")] {
        let line = d
            .log
            .iter()
            .find(|l| l.contains("registered handlers"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["handlers"], name, "{line}");
    }

    let ids = start_instances(20, "relay-v1", &store);
    wait_completed(&mut a, 20, Duration::from_mins(1));

    // No claim-and-release churn: every step ran exactly once, at its first attempt.
    for id in &ids {
        let shown = show(id, &store);
        assert_eq!(shown["instance"]["status"], "completed", "{shown}");
        assert_eq!(shown["instance"]["output"]["by"], "a", "{shown}");
        let got = attempts(&shown);
        let want: BTreeMap<String, u64> = ["first", "second", "third"]
            .iter()
            .map(|s| ((*s).to_owned(), 1))
            .collect();
        assert_eq!(got, want, "{id}: {shown}");
    }
    // Each node ran only its own handler, each step once.
    let expect = |steps: &[&str], handler: &str| -> BTreeSet<String> {
        ids.iter()
            .flat_map(|id| steps.iter().map(move |s| format!("{id} {s} {handler}")))
            .collect()
    };
    let (ran_a, ran_b) = (lines(&log_a), lines(&log_b));
    assert_eq!(ran_a.len(), 40, "{ran_a:#?}");
    assert_eq!(ran_b.len(), 20, "{ran_b:#?}");
    assert_eq!(
        ran_a.into_iter().collect::<BTreeSet<_>>(),
        expect(&["first", "third"], "a")
    );
    assert_eq!(
        ran_b.into_iter().collect::<BTreeSet<_>>(),
        expect(&["second"], "b")
    );

    for d in [&mut a, &mut b] {
        d.signal("TERM");
        assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.log_text());
    }
}

/// SIGKILL `floxyd` while steps run, restart it with the same configuration: every instance
/// completes, every side effect happened, and twice only for steps in flight at the kill.
fn sigkill_mid_run_then_restart(daemon_env: &[(&str, &str)], store: &[&str]) {
    const INSTANCES: usize = 10;
    const WORKERS: usize = 3;
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let flows = write(dir.path(), "slow.yaml", SLOW);
    let starts = dir.path().join("starts.log");
    let effects = dir.path().join("effects.log");
    let (starts_s, effects_s) = (starts.display().to_string(), effects.display().to_string());
    let workers = WORKERS.to_string();
    let run_env = |run: &'static str| {
        let mut env = daemon_env.to_vec();
        env.extend([
            ("RUN", run),
            ("STARTS", starts_s.as_str()),
            ("EFFECTS", effects_s.as_str()),
            ("FLOXY_WORKERS", workers.as_str()),
        ]);
        env
    };

    // Register the flow (a redb file is locked while floxyd runs: start the instances
    // between two runs, as an operator would on a stopped node).
    let mut d = Daemon::start(&flows, &run_env("0"));
    d.ready();
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.log_text());
    let ids = start_instances(INSTANCES, "slow-v1", store);

    // Run 1: SIGKILL right after a handler started (it sleeps 0.3 s: surely in flight).
    let mut d = Daemon::start(&flows, &run_env("1"));
    d.ready();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&starts).len() < 4 {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    d.signal("KILL");
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)),
        -1,
        "killed by a signal"
    );
    let at_kill = lines(&effects).len();
    assert!(
        at_kill < INSTANCES * 3,
        "the kill landed before the end ({at_kill} effects)"
    );

    // Run 2, same configuration: the dead run's leases expire and its steps are re-run.
    let mut d = Daemon::start(&flows, &run_env("2"));
    d.ready();
    wait_completed(&mut d, INSTANCES as u64, Duration::from_secs(30));
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.log_text());

    // Side effects: `run instance step` lines.
    let parse = |l: &String| {
        let mut it = l.split(' ');
        let (run, id, step) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        (run.to_owned(), format!("{id} {step}"))
    };
    let started_in_run1: BTreeSet<String> = lines(&starts)
        .iter()
        .map(parse)
        .filter(|(run, _)| run == "1")
        .map(|(_, k)| k)
        .collect();
    let mut done: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (run, key) in lines(&effects).iter().map(parse) {
        done.entry(key).or_default().push(run);
    }
    let mut twice = BTreeSet::new();
    for id in &ids {
        let shown = show(id, store);
        assert_eq!(shown["instance"]["status"], "completed", "{shown}");
        let tries = attempts(&shown);
        assert_eq!(tries.len(), 3, "{shown}");
        for (step, n) in tries {
            let key = format!("{id} {step}");
            let runs = done.get(&key).map(Vec::as_slice).unwrap_or_default();
            // At least once.
            assert!(!runs.is_empty(), "{key}: no side effect");
            if runs.len() > 1 {
                // More than once only for a step the killed run had started, once by it
                // (its orphaned script finished) and once by the restart; the engine
                // counted the lost attempt.
                assert_eq!(runs, ["1", "2"], "{key}");
                assert!(started_in_run1.contains(&key), "{key} was not in flight");
                assert!(n >= 2, "{key}: {n} attempts, the lost one not counted");
                twice.insert(key);
            }
        }
    }
    assert!(
        !twice.is_empty(),
        "the kill landed mid-run, so some step ran twice"
    );
    assert!(
        twice.len() <= WORKERS,
        "at most {WORKERS} handlers were in flight: {twice:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(40),
        "slow: {:?}",
        t0.elapsed()
    );
}

#[test]
fn sigkill_mid_run_on_a_redb_file_then_restart_completes_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("redb:{}", dir.path().join("k.redb").display());
    sigkill_mid_run_then_restart(&[("FLOXY_STORE", store.as_str())], &["--store", &store]);
}

#[test]
fn sigkill_mid_run_on_postgresql_then_restart_completes_every_instance() {
    let url = database_url();
    let schema = fresh_schema();
    sigkill_mid_run_then_restart(
        &[
            ("FLOXY_DATABASE_URL", url.as_str()),
            ("FLOXY_DB_SCHEMA", schema.as_str()),
        ],
        &["--database-url", &url, "--schema", &schema],
    );
}

#[test]
fn ready_recovers_when_postgresql_comes_back_and_new_instances_complete() {
    const HELLO: &str = "handlers:\n  - name: greet\n    exec: |\n      echo '{\"hi\": true}'\nflows:\n  - name: hello\n    steps: [greet]\n";
    let dir = tempfile::tempdir().unwrap();
    let flows = write(dir.path(), "hello.yaml", HELLO);
    let mut cluster = TestCluster::start().expect("a throwaway PostgreSQL cluster");
    let url = cluster.url("postgres");
    let store = ["--database-url", url.as_str()];
    let mut d = Daemon::start(
        &flows,
        &[
            ("FLOXY_DATABASE_URL", url.as_str()),
            ("FLOXY_SHUTDOWN_TIMEOUT", "3s"),
        ],
    );
    d.ready();
    assert_eq!(d.get("/ready").0, 200);
    start_instances(1, "hello-v1", &store);
    wait_completed(&mut d, 1, Duration::from_secs(30));

    // The database goes away (as a crash would): 503 with the reason, within the bound.
    cluster.stop_server().unwrap();
    let t = Instant::now();
    let (status, body) = d.get("/ready");
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "unavailable");
    assert!(!v["reason"].as_str().unwrap().is_empty(), "{body}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // Long enough for the workers and the statistics to fail against it.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(d.get("/ready").0, 503);

    // Back on the same port and data directory: ready again within a bound, and a new
    // instance completes on the same daemon.
    cluster.restart().unwrap();
    let t = Instant::now();
    loop {
        let (status, body) = d.get("/ready");
        if status == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "/ready still {status} {body} after {:?}; log:\n{}",
            t.elapsed(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ids = start_instances(1, "hello-v1", &store);
    wait_completed(&mut d, 2, Duration::from_secs(30));
    let shown = show(&ids[0], &store);
    assert_eq!(shown["instance"]["status"], "completed", "{shown}");
    assert_eq!(shown["instance"]["output"]["hi"], true, "{shown}");
    assert_eq!(d.get("/health").0, 200);
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.log_text());
}
