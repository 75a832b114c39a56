//! `floxyctl` database mode on a redb file, as a process: every command, `--output json`,
//! exit codes, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use floxy::{RedbOptions, RedbStore};
use std::sync::Arc;

/// A redb file holding the scenario's instances (closed: `floxyctl` opens it itself).
async fn redb_scenario(dir: &std::path::Path) -> (String, Scenario) {
    let path = dir.join("floxy.redb");
    let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
    let sc = scenario(Arc::new(store.clone())).await;
    store.close().await.unwrap();
    (format!("redb:{}", path.display()), sc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_commands_on_a_redb_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sc) = redb_scenario(dir.path()).await;
    let s = ["--store", store.as_str()];

    // list: all five, oldest first; JSON parses; filters; pages.
    let all = ctl(["list", "--output", "json"].iter().chain(&s))
        .expect(OK)
        .json();
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(all["next"].is_null());
    let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids[0], sc.completed.to_string());
    let done = ctl(["list", "--status", "completed", "--output", "json"]
        .iter()
        .chain(&s))
    .expect(OK)
    .json();
    assert_eq!(done["items"].as_array().unwrap().len(), 1);
    assert_eq!(done["items"][0]["status"], "completed");
    let stuck = ctl(["list", "--workflow", "stuck-v1", "--output", "json"]
        .iter()
        .chain(&s))
    .expect(OK)
    .json();
    assert_eq!(stuck["items"].as_array().unwrap().len(), 2);
    let page1 = ctl(["list", "--limit", "2", "--output", "json"]
        .iter()
        .chain(&s))
    .expect(OK)
    .json();
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    let next = page1["next"].as_str().expect("a next cursor").to_owned();
    let page2 = ctl(
        ["list", "--limit", "2", "--after", &next, "--output", "json"]
            .iter()
            .chain(&s),
    )
    .expect(OK)
    .json();
    assert_eq!(page2["items"][0]["id"].as_str(), Some(ids[2]));
    let table = ctl(["list", "--limit", "2"].iter().chain(&s)).expect(OK);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", table.stdout);
    assert!(lines[0].contains("WORKFLOW") && lines[0].contains("STATUS"));
    assert!(table.stdout.contains(&format!("more: --after {next}")));
    // Aligned: the STATUS column starts at the same offset on every line.
    let col = lines[0].find("STATUS").unwrap();
    for l in &lines[1..3] {
        assert!(
            l[col..].starts_with("completed") || l[col..].starts_with("dlq"),
            "{l}"
        );
    }

    // show: steps and timeline.
    let shown = ctl(["show", &sc.completed.to_string(), "--output", "json"]
        .iter()
        .chain(&s))
    .expect(OK)
    .json();
    assert_eq!(shown["instance"]["status"], "completed");
    assert_eq!(shown["instance"]["output"]["ok"], true);
    assert_eq!(shown["steps"].as_array().unwrap().len(), 2);
    let kinds: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"workflow_started"));
    assert_eq!(kinds.last(), Some(&"workflow_completed"));
    let text = ctl(["show", &sc.completed.to_string()].iter().chain(&s)).expect(OK);
    for needle in [
        "status",
        "completed",
        "STEP",
        "ATTEMPTS",
        "SEQ",
        "workflow_completed",
    ] {
        assert!(text.stdout.contains(needle), "{needle}: {}", text.stdout);
    }

    // workflows, stats.
    let wfs = ctl(["workflows", "--output", "json"].iter().chain(&s))
        .expect(OK)
        .json();
    let mut names: Vec<&str> = wfs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["bad", "human", "ok", "stuck"]);
    assert!(
        ctl(["workflows"].iter().chain(&s))
            .expect(OK)
            .stdout
            .contains("human-v1")
    );
    let st = ctl(["stats", "--output", "json"].iter().chain(&s))
        .expect(OK)
        .json();
    assert_eq!(st["instances_total"], 5);
    assert_eq!(st["instances_by_status"]["running"], 3);
    assert_eq!(st["dlq"], 1);
    assert!(
        ctl(["stats"].iter().chain(&s))
            .expect(OK)
            .stdout
            .contains("dlq: 1 record(s)")
    );

    // dlq, then requeue the record.
    let dlq = ctl(["dlq", "--output", "json"].iter().chain(&s))
        .expect(OK)
        .json();
    let recs = dlq["items"].as_array().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        recs[0]["instance_id"].as_str(),
        Some(sc.dlq.to_string().as_str())
    );
    assert_eq!(recs[0]["step"], "b");
    let dlq_id = recs[0]["id"].as_u64().unwrap().to_string();
    let input = write(dir.path(), "fixed.json", r#"{"order": 43}"#);
    let rq = ctl(["requeue", &dlq_id, "-i", &input, "--output", "json"]
        .iter()
        .chain(&s))
    .expect(OK)
    .json();
    assert_eq!(rq["status"], "running");
    ctl(["requeue", &dlq_id].iter().chain(&s))
        .expect(REFUSED)
        .reason_contains("unknown DLQ record");

    // decide on the human step.
    let waiting = sc.waiting.to_string();
    let d = ctl([
        "decide",
        "-o",
        &waiting,
        "--step",
        "approve",
        "--confirm",
        "--comment",
        "ok",
    ]
    .iter()
    .chain(&s))
    .expect(OK);
    assert!(d.stdout.contains("confirmed step approve"), "{}", d.stdout);
    ctl(["decide", "-o", &waiting, "--step", "approve", "--reject"]
        .iter()
        .chain(&s))
    .expect(REFUSED);
    let shown = ctl(["show", &waiting, "--output", "json"].iter().chain(&s))
        .expect(OK)
        .json();
    let approve = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["step"] == "approve")
        .unwrap()
        .clone();
    assert_eq!(approve["status"], "confirmed");
    assert_eq!(approve["decision"]["comment"], "ok");

    // cancel and abort.
    let a = sc.stuck_a.to_string();
    let c = ctl([
        "cancel",
        "-o",
        &a,
        "--reason",
        "no longer needed",
        "--requested-by",
        "alice",
        "--output",
        "json",
    ]
    .iter()
    .chain(&s))
    .expect(OK)
    .json();
    assert!(
        c["status"] == "cancelled" || c["status"] == "cancelling",
        "{c}"
    );
    let b = sc.stuck_b.to_string();
    let ab = ctl(["abort", "-o", &b, "--reason", "critical"].iter().chain(&s)).expect(OK);
    assert!(ab.stdout.contains("is now aborted"), "{}", ab.stdout);
    ctl(["abort", "-o", &b].iter().chain(&s))
        .expect(REFUSED)
        .reason_contains("terminal");
    let shown = ctl(["show", &b, "--output", "json"].iter().chain(&s))
        .expect(OK)
        .json();
    assert_eq!(shown["instance"]["status"], "aborted");

    // start: from a file and from stdin; an unknown workflow is refused.
    let started = ctl(["start", "-o", "ok-v1", "-i", &input, "--output", "json"]
        .iter()
        .chain(&s))
    .expect(OK)
    .json();
    let new_id = started["id"].as_str().unwrap().to_owned();
    let piped = ctl_in(
        [
            "start",
            "-o",
            "ok-v1",
            "-i",
            "-",
            "--idempotency-key",
            "k1",
            "--output",
            "json",
        ]
        .iter()
        .chain(&s),
        Some(r#"{"from": "stdin"}"#),
        &[],
    )
    .expect(OK)
    .json();
    let again = ctl_in(
        [
            "start",
            "-o",
            "ok-v1",
            "-i",
            "-",
            "--idempotency-key",
            "k1",
            "--output",
            "json",
        ]
        .iter()
        .chain(&s),
        Some(r#"{"from": "stdin"}"#),
        &[],
    )
    .expect(OK)
    .json();
    assert_eq!(
        piped["id"], again["id"],
        "same idempotency key, same instance"
    );
    let shown = ctl(["show", &new_id, "--output", "json"].iter().chain(&s))
        .expect(OK)
        .json();
    assert_eq!(shown["instance"]["input"]["order"], 43);
    assert_eq!(shown["instance"]["status"], "running");
    ctl(["start", "-o", "nope-v1"].iter().chain(&s))
        .expect(REFUSED)
        .reason_contains("unknown workflow nope-v1");
    ctl(["show", "01936d5e-0000-7000-8000-000000000000"]
        .iter()
        .chain(&s))
    .expect(REFUSED)
    .reason_contains("unknown instance");

    // cleanup: the terminal instances (completed, aborted, maybe cancelled) go.
    let before = ctl(["list", "--output", "json"].iter().chain(&s))
        .expect(OK)
        .json();
    let terminal = before["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            ["completed", "failed", "cancelled", "aborted"].contains(&i["status"].as_str().unwrap())
        })
        .count();
    assert!(terminal >= 2);
    let kept = ctl(["cleanup", "--older-than", "30d", "--output", "json"]
        .iter()
        .chain(&s))
    .expect(OK)
    .json();
    assert_eq!(kept["removed"], 0, "nothing is 30 days old");
    let removed = ctl(["cleanup", "--older-than", "0s", "--output", "json"]
        .iter()
        .chain(&s))
    .expect(OK)
    .json();
    assert_eq!(removed["removed"].as_u64(), Some(terminal as u64));
    let after = ctl(["list", "--output", "json"].iter().chain(&s))
        .expect(OK)
        .json();
    assert_eq!(
        after["items"].as_array().unwrap().len(),
        before["items"].as_array().unwrap().len() - terminal
    );

    // migrate on a redb file: an existing file, and a new one is created.
    ctl(["migrate"].iter().chain(&s)).expect(OK);
    let fresh = format!("redb:{}", dir.path().join("new.redb").display());
    ctl(["migrate", "--store", &fresh]).expect(OK);
    assert!(dir.path().join("new.redb").exists());
    let empty = ctl(["list", "--store", &fresh, "--output", "json"])
        .expect(OK)
        .json();
    assert_eq!(empty["items"].as_array().unwrap().len(), 0);
}

#[test]
fn bad_input_exits_2_with_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing_store = format!("redb:{}", dir.path().join("missing.redb").display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["list"], "no database"),
        (
            vec!["list", "--store", "memory"],
            "holds nothing between runs",
        ),
        (vec!["list", "--store", "sqlite:x"], "invalid store"),
        (vec!["list", "--store", &missing_store], "does not exist"),
        (
            vec!["list", "--status", "bogus", "--store", &missing_store],
            "unknown status",
        ),
        (
            vec!["list", "--limit", "0", "--store", &missing_store],
            "between 1 and 1000",
        ),
        (
            vec!["show", "not-a-uuid", "--store", &missing_store],
            "invalid instance id",
        ),
        (
            vec!["cleanup", "--older-than", "10", "--store", &missing_store],
            "a number needs a unit",
        ),
        (
            vec![
                "cleanup",
                "--older-than",
                "3 parsecs",
                "--store",
                &missing_store,
            ],
            "invalid duration",
        ),
        (
            vec!["list", "--output", "xml", "--store", &missing_store],
            "invalid value 'xml'",
        ),
        (
            vec!["run", "-f", "/nonexistent/flow.yaml"],
            "cannot read the flow file",
        ),
        (
            vec!["run", "-f", "x.yaml", "--completion-timeout", "soon"],
            "invalid duration",
        ),
        (vec!["run", "-f", "x.yaml", "-w", "0"], "-w"),
        (
            vec![
                "decide",
                "-o",
                "01936d5e-0000-7000-8000-000000000000",
                "--step",
                "s",
                "--store",
                &missing_store,
            ],
            "--confirm",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (
            vec!["graph", "-f", "x.yaml", "--format", "png"],
            "invalid value 'png'",
        ),
    ];
    for (args, needle) in cases {
        let r = ctl(&args);
        assert_eq!(r.code, BAD_INPUT, "{args:?}: {r:?}");
        r.reason_contains(needle);
        let first = r.stderr.lines().next().unwrap_or_default();
        assert!(!first.is_empty(), "{args:?}: empty reason");
        assert!(r.stdout.is_empty(), "{args:?}: stdout {:?}", r.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_files() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = redb_scenario(dir.path()).await;
    let s = ["--store", store.as_str()];
    ctl(["start", "-o", "ok-v1", "-i", "/nonexistent/input.json"]
        .iter()
        .chain(&s))
    .expect(BAD_INPUT)
    .reason_contains("input file /nonexistent/input.json");
    let broken = write(dir.path(), "broken.json", "{\"order\": ");
    ctl(["start", "-o", "ok-v1", "-i", &broken].iter().chain(&s))
        .expect(BAD_INPUT)
        .reason_contains("is not valid JSON");
    ctl_in(
        ["start", "-o", "ok-v1", "-i", "-"].iter().chain(&s),
        Some("nope"),
        &[],
    )
    .expect(BAD_INPUT)
    .reason_contains("standard input is not valid JSON");
    let not_redb = write(dir.path(), "junk.redb", "this is not a database");
    ctl(["list", "--store", &format!("redb:{not_redb}")])
        .expect(BAD_INPUT)
        .reason_contains("is not a floxy database");
}

#[test]
fn validate_reports_every_error_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "handlers:\n  - {name: a, exec: \"echo {}\\n\"}\nflows:\n  - name: f\n    steps:\n      - {name: a, retry_strategy: expo}\n      - {name: a2, handler: a, bogus: 1}\n",
    );
    let r = ctl(["validate", "-f", &bad]).expect(BAD_INPUT);
    assert!(
        r.stderr.contains("bad.yaml:6:")
            && r.stderr.contains("retry_strategy: unknown value \"expo\""),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("bad.yaml:7:") && r.stderr.contains("unknown key \"bogus\""),
        "{}",
        r.stderr
    );
    let j = ctl(["validate", "-f", &bad, "--output", "json"])
        .expect(BAD_INPUT)
        .json();
    assert_eq!(j["valid"], false);
    assert_eq!(j["errors"].as_array().unwrap().len(), 2);

    let good = write(
        dir.path(),
        "good.yaml",
        "handlers:\n  - {name: a, exec: \"echo {}\\n\"}\nflows:\n  - name: f\n    steps: [a]\n  - name: g\n    version: 3\n    steps: [a]\n",
    );
    let ok = ctl(["validate", "-f", &good, "--output", "json"])
        .expect(OK)
        .json();
    assert_eq!(ok["valid"], true);
    assert_eq!(ok["flows"], serde_json::json!(["f-v1", "g-v3"]));
    // graph needs --flow when the file has several flows.
    ctl(["graph", "-f", &good])
        .expect(BAD_INPUT)
        .reason_contains("name one with --flow");
    let g = ctl(["graph", "-f", &good, "--flow", "g", "--format", "mermaid"]).expect(OK);
    assert!(g.stdout.contains("flowchart"), "{}", g.stdout);
    let d = ctl(["graph", "-f", &good, "--flow", "f", "--format", "dot"]).expect(OK);
    assert!(d.stdout.contains("digraph"), "{}", d.stdout);
    ctl(["graph", "-f", &good, "--flow", "zzz"])
        .expect(BAD_INPUT)
        .reason_contains("no flow named \"zzz\"");
}

#[test]
fn version_and_help() {
    let v = ctl(["version"]).expect(OK);
    assert_eq!(
        v.stdout.trim(),
        format!("floxyctl {}", env!("CARGO_PKG_VERSION"))
    );
    let j = ctl(["version", "--output", "json"]).expect(OK).json();
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    let help = ctl(["--help"]).expect(OK);
    assert!(help.stdout.contains("Exit codes:"), "{}", help.stdout);
    for cmd in [
        "run",
        "resume",
        "start",
        "cancel",
        "abort",
        "decide",
        "requeue",
        "list",
        "show",
        "dlq",
        "workflows",
        "stats",
        "cleanup",
        "migrate",
        "validate",
        "graph",
        "version",
    ] {
        let h = ctl([cmd, "--help"]).expect(OK);
        assert!(
            h.stdout.contains("Examples:"),
            "{cmd} --help has no examples"
        );
        assert!(h.stdout.contains("floxyctl "), "{cmd} --help");
    }
    let h = ctl(["run", "--help"]).expect(OK);
    for flag in [
        "--file",
        "--input",
        "--flow",
        "--workers",
        "--completion-timeout",
        "--debug",
        "--store",
        "--output",
    ] {
        assert!(h.stdout.contains(flag), "run --help lacks {flag}");
    }
}
