//! `floxyctl run` and `resume` as processes: the example flows to their documented ends,
//! progress lines, exit codes, timeouts, and a crash (SIGKILL) resumed from a redb file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/flows")
        .join(name)
        .display()
        .to_string()
}

/// `run --output json` of an example; returns the report.
fn run_json(file: &str, extra: &[&str], input: Option<&str>, code: i32) -> serde_json::Value {
    let f = example(file);
    let mut args = vec![
        "run",
        "-f",
        f.as_str(),
        "--output",
        "json",
        "--completion-timeout",
        "60s",
    ];
    args.extend_from_slice(extra);
    ctl_in(&args, input, &[]).expect(code).json()
}

fn step<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
}

#[test]
fn examples_run_to_their_documented_end() {
    let r = run_json("hello.yaml", &[], None, OK);
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"]["greeting"], "hello, world");
    // Input from stdin (piped, no -i).
    let r = run_json("hello.yaml", &[], Some(r#"{"name": "floxy"}"#), OK);
    assert_eq!(r["output"]["greeting"], "hello, floxy");

    let r = run_json("order.yaml", &[], None, FAILED);
    assert_eq!(r["status"], "failed");
    for s in ["reserve", "charge"] {
        assert_eq!(step(&r, s)["status"], "rolled_back", "{s}");
        assert_eq!(step(&r, s)["compensation_attempts"], 1, "{s}");
    }
    assert_eq!(step(&r, "ship")["status"], "failed");

    let r = run_json("parallel.yaml", &[], None, OK);
    assert_eq!(r["status"], "completed");

    let r = run_json("condition.yaml", &[], Some(r#"{"amount": 150}"#), OK);
    assert_eq!(r["output"]["big_order"], true);
    assert!(r["output"].get("small_order").is_none(), "{r}");
    let r = run_json("condition.yaml", &[], Some(r#"{"amount": 5}"#), OK);
    assert_eq!(r["output"]["small_order"], true);

    let r = run_json("fork.yaml", &["--flow", "fanout_all"], None, OK);
    assert_eq!(r["status"], "completed");
    let r = run_json("fork.yaml", &["--flow", "race"], None, OK);
    assert_eq!(r["status"], "completed");
    assert_eq!(step(&r, "broken")["status"], "rolled_back");
    ctl(["run", "-f", &example("fork.yaml")])
        .expect(BAD_INPUT)
        .reason_contains("name one with --flow");

    let r = run_json("savepoint.yaml", &[], None, FAILED);
    assert_eq!(step(&r, "prepare")["status"], "completed");
    assert_eq!(step(&r, "publish")["status"], "rolled_back");

    let r = run_json("dlq.yaml", &[], None, DLQ);
    assert_eq!(r["status"], "dlq");
    assert_eq!(r["workflow_id"], "importer-v2");
    assert_eq!(step(&r, "validate")["status"], "paused");

    let r = run_json("human.yaml", &[], None, WAITING);
    assert_eq!(r["status"], "running");
    assert_eq!(step(&r, "approve")["status"], "waiting_decision");

    ctl(["validate", "-f", &example("floxy-pro-compat.yaml")]).expect(OK);
}

#[test]
fn progress_lines_and_table_report() {
    let r = ctl(["run", "-f", &example("order.yaml")]).expect(FAILED);
    // Not a terminal: plain lines, each step as it starts and ends, in order.
    let out = &r.stdout;
    let pos = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{out}"))
    };
    assert!(pos("started      reserve (attempt 1)") < pos("completed    reserve"));
    assert!(pos("completed    reserve") < pos("started      charge (attempt 1)"));
    assert!(pos("retry        ship (attempt 1) failed") < pos("failed       ship (attempt 2)"));
    assert!(
        pos("rolled back  charge") < pos("rolled back  reserve"),
        "reverse order"
    );
    assert!(pos("instance     failed") < pos("STEP "));
    assert!(
        !out.contains('\u{1b}'),
        "no terminal escapes when not a tty"
    );
    // The final table: status and attempts per step.
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("STEP "))
        .collect();
    assert!(table[0].contains("ATTEMPTS"));
    assert!(
        table
            .iter()
            .any(|l| l.starts_with("ship ") && l.contains("failed") && l.contains(" 2 "))
    );
    assert!(out.contains("status       failed"), "{out}");
    // --quiet: only the report.
    let q = ctl(["run", "-f", &example("hello.yaml"), "-q"]).expect(OK);
    assert!(!q.stdout.contains("started "), "{}", q.stdout);
    assert!(q.stdout.contains("status    completed"), "{}", q.stdout);
    // --output json: progress on stderr, one JSON document on stdout.
    let j = ctl(["run", "-f", &example("hello.yaml"), "--output", "json"]).expect(OK);
    assert!(j.stderr.contains("completed    greet"), "{}", j.stderr);
    assert_eq!(j.json()["status"], "completed");
    // -D: the handler's input and output on stderr, prefixed with its name.
    let d = ctl(["run", "-f", &example("hello.yaml"), "-q", "-D"]).expect(OK);
    assert!(d.stderr.contains("greet"), "{}", d.stderr);
}

#[test]
fn a_step_that_outlasts_the_completion_timeout_exits_7() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "slow.yaml",
        "handlers:\n  - name: slow\n    exec: |\n      sleep 5\n      echo '{}'\nflows:\n  - name: slow\n    steps: [slow]\n",
    );
    let t = Instant::now();
    let r = ctl(["run", "-f", &f, "--completion-timeout", "700ms"]).expect(TIMEOUT);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    r.reason_contains("did not settle in time (still running)");
}

/// Bad input to `run`: a bad input file, an invalid flow, an unknown --flow.
#[test]
fn run_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.json", "{");
    ctl(["run", "-f", &example("hello.yaml"), "-i", &bad])
        .expect(BAD_INPUT)
        .reason_contains("is not valid JSON");
    ctl(["run", "-f", &example("hello.yaml"), "--flow", "nope"])
        .expect(BAD_INPUT)
        .reason_contains("no flow named \"nope\"");
    let invalid = write(
        dir.path(),
        "invalid.yaml",
        "flows:\n  - name: x\n    steps: []\n",
    );
    let r = ctl(["run", "-f", &invalid]).expect(BAD_INPUT);
    assert!(r.stderr.contains("invalid.yaml:"), "{}", r.stderr);
    // A bad file never creates the redb file.
    let db = dir.path().join("never.redb");
    ctl([
        "run",
        "-f",
        &invalid,
        "--store",
        &format!("redb:{}", db.display()),
    ])
    .expect(BAD_INPUT);
    assert!(!db.exists());
}

#[test]
fn human_step_decided_later_then_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("redb:{}", dir.path().join("h.redb").display());
    let f = example("human.yaml");
    let waiting = ctl(["run", "-f", &f, "--store", &store, "--output", "json"]).expect(WAITING);
    waiting.reason_contains("floxyctl decide -o");
    let id = waiting.json()["id"].as_str().unwrap().to_owned();
    ctl([
        "decide", "-o", &id, "--step", "approve", "--reject", "--store", &store,
    ])
    .expect(OK);
    // The rejection rolls back (on_reject: rollback): resume runs the refund.
    let r = ctl(["resume", "-f", &f, "--store", &store, "--output", "json"]).expect(FAILED);
    let reports = r.json();
    assert_eq!(reports.as_array().unwrap().len(), 1);
    assert_eq!(reports[0]["status"], "failed");
    assert_eq!(step(&reports[0], "charge")["status"], "rolled_back");
    // Nothing left.
    let again = ctl(["resume", "-f", &f, "--store", &store]).expect(OK);
    assert!(
        again.stdout.contains("nothing to resume"),
        "{}",
        again.stdout
    );

    // Confirm instead: completes.
    let waiting = ctl(["run", "-f", &f, "--store", &store, "--output", "json"]).expect(WAITING);
    let id = waiting.json()["id"].as_str().unwrap().to_owned();
    ctl([
        "decide",
        "-o",
        &id,
        "--step",
        "approve",
        "--confirm",
        "--store",
        &store,
    ])
    .expect(OK);
    let r = ctl(["resume", "-f", &f, "--store", &store]).expect(OK);
    assert!(r.stdout.contains("completed    ship"), "{}", r.stdout);
}

#[test]
fn a_run_killed_mid_flight_is_resumed_from_its_redb_file() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("second-attempt");
    let flow = format!(
        "handlers:\n  - name: quick\n    exec: |\n      echo \"$INPUT\" | jq -c '. + {{quick: true}}'\n  - name: slow\n    exec: |\n      if [ ! -e '{m}' ]; then touch '{m}'; sleep 30; fi\n      echo \"$INPUT\" | jq -c '. + {{slow: true}}'\nflows:\n  - name: crash\n    lease_ttl: 1s\n    steps: [quick, slow, quick2]\n",
        m = marker.display()
    )
    .replace("[quick, slow, quick2]", "[quick, slow, {name: quick2, handler: quick}]");
    let f = write(dir.path(), "crash.yaml", &flow);
    let store = format!("redb:{}", dir.path().join("crash.redb").display());
    let mut child = Command::new(CTL)
        .args(["run", "-f", &f, "--store", &store])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the slow step has started (its first attempt never ends), then SIGKILL.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines.next().expect("floxyctl ended early").unwrap();
        if line.contains("started      slow (attempt 1)") {
            break;
        }
        assert!(Instant::now() < deadline, "slow never started");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let listed = ctl(["list", "--store", &store, "--output", "json"])
        .expect(OK)
        .json();
    assert_eq!(listed["items"][0]["status"], "running");
    // Resume: the lease of the killed run expires (1 s), the step runs again and the
    // instance completes.
    let r = ctl([
        "resume",
        "-f",
        &f,
        "--store",
        &store,
        "--output",
        "json",
        "--completion-timeout",
        "60s",
    ])
    .expect(OK)
    .json();
    assert_eq!(r[0]["status"], "completed");
    assert_eq!(r[0]["output"]["slow"], true);
    assert_eq!(r[0]["output"]["quick"], true);
    assert_eq!(
        step(&r[0], "slow")["attempts"],
        2,
        "the lost attempt counts"
    );
    let shown = ctl([
        "show",
        r[0]["id"].as_str().unwrap(),
        "--store",
        &store,
        "--output",
        "json",
    ])
    .expect(OK)
    .json();
    let kinds: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"lease_expired"), "{kinds:?}");
}

#[test]
fn sigint_stops_a_run_with_130_and_keeps_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "wait.yaml",
        "handlers:\n  - name: wait\n    exec: |\n      sleep 30\n      echo '{}'\nflows:\n  - name: wait\n    steps: [wait]\n",
    );
    let store = format!("redb:{}", dir.path().join("w.redb").display());
    let mut child = Command::new(CTL)
        .args(["run", "-f", &f, "--store", &store])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("floxyctl ended early").unwrap();
        if line.contains("started      wait") {
            break;
        }
    }
    let t = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap().code();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("continue it with `floxyctl resume`"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let listed = ctl(["list", "--store", &store, "--output", "json"])
        .expect(OK)
        .json();
    assert_eq!(listed["items"][0]["status"], "running");
    let _ = std::io::stdout().flush();
}

/// A minimal HTTP/1.1 server on 127.0.0.1:18089 (the address `http.yaml` names): answers
/// every POST with the request's `data` plus `{"enriched": true}`.
fn enrich_server() -> std::thread::JoinHandle<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:18089").expect("port 18089 is free");
    std::thread::spawn(move || {
        // One request per attempt; the flow makes at most two.
        if let Ok((mut conn, _)) = listener.accept() {
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = conn.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break text[end + 4..end + 4 + len].to_owned();
                    }
                }
                assert!(n > 0, "client closed early");
            };
            let req: serde_json::Value = serde_json::from_str(&body).unwrap();
            let mut data = req["data"].clone();
            data["enriched"] = serde_json::Value::Bool(true);
            let out = data.to_string();
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                out.len()
            )
            .unwrap();
        }
    })
}

#[test]
fn http_example_completes_against_a_real_server() {
    let server = enrich_server();
    let r = run_json("http.yaml", &[], Some(r#"{"id": 7}"#), OK);
    server.join().unwrap();
    assert_eq!(r["output"]["enriched"], true);
    assert_eq!(r["output"]["finished"], true);
    assert_eq!(r["output"]["id"], 7);
    // And without a server: the step fails (connection refused is retried once, then final).
    let r = run_json("http.yaml", &[], None, FAILED);
    assert_eq!(step(&r, "enrich")["status"], "failed");
}
