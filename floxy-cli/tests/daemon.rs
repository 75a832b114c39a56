//! `floxyd` as a process: the tech server, the statistics, flow registration, graceful
//! shutdown on a redb file and on PostgreSQL, bad configuration.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    clippy::many_single_char_names,
    clippy::similar_names,
    clippy::doc_markdown
)]

mod common;

use common::*;
use std::time::{Duration, Instant};

const HELLO: &str = "handlers:\n  - name: greet\n    exec: |\n      echo \"$INPUT\" | jq -c '{greeting: (\"hello, \" + (.name // \"world\"))}'\nflows:\n  - name: hello\n    steps: [greet]\n";

#[test]
fn on_a_redb_file_serves_health_ready_metrics_runs_instances_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let flows = write(dir.path(), "hello.yaml", HELLO);
    let db = dir.path().join("d.redb");
    let store = format!("redb:{}", db.display());
    let env = [("FLOXY_STORE", store.as_str())];

    // First start: registers the flow; the tech server answers.
    let mut d = Daemon::start(&flows, &env);
    d.ready();
    let (status, body) = d.get("/health");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"healthy"}"#));
    let (status, body) = d.get("/ready");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ready"
    );
    let (status, metrics) = d.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE floxy_claims_total counter"),
        "{metrics}"
    );
    assert!(metrics.contains("floxyd_build_info{version="), "{metrics}");
    assert_eq!(d.get("/nope").0, 404);
    let registered = d.log_text();
    assert!(registered.contains("hello-v1"), "{registered}");
    assert!(
        !registered.contains('\u{1b}'),
        "no terminal colours in a log file"
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0, "{}", d.log_text());
    assert!(d.log_text().contains("floxyd stopped"));

    // Instances started while it is down (the file is locked while it runs) are run at the
    // next start; the statistics event counts them.
    for name in ["a", "b"] {
        let input = write(
            dir.path(),
            &format!("{name}.json"),
            &format!(r#"{{"name": "{name}"}}"#),
        );
        ctl(["start", "-o", "hello-v1", "-i", &input, "--store", &store]).expect(OK);
    }
    let mut d = Daemon::start(&flows, &env);
    d.ready();
    let stats = d.wait_for(
        "statistics with two completed",
        Duration::from_secs(30),
        |v| v["message"] == "workflow statistics" && v["completed"] == 2,
    );
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["active"], 0);
    let (_, metrics) = d.get("/metrics");
    let ended = metrics
        .lines()
        .find(|l| {
            l.starts_with("floxy_instances_ended_total{") && l.contains("status=\"completed\"")
        })
        .unwrap_or_else(|| panic!("no ended counter in:\n{metrics}"));
    assert!(ended.ends_with(" 2"), "{ended}");
    assert!(
        metrics.contains("# TYPE floxy_step_duration_seconds histogram"),
        "{metrics}"
    );
    assert!(
        metrics.contains("floxy_instances{status=\"completed\"}"),
        "{metrics}"
    );
    d.signal("INT");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0, "{}", d.log_text());
    let listed = ctl(["list", "--store", &store, "--output", "json"])
        .expect(OK)
        .json();
    let greetings: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["output"]["greeting"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(greetings, ["hello, a", "hello, b"]);

    // A changed flow under the same version is refused, naming it.
    let changed = write(dir.path(), "hello.yaml", &HELLO.replace("hello, ", "hi, "));
    let mut d = Daemon::start(&changed, &env);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), BAD_INPUT);
    let log = d.log_text();
    assert!(
        log.contains("flow \\\"hello\\\" (hello-v1) differs") && log.contains("new `version:`"),
        "{log}"
    );
}

#[test]
fn pretty_logs_print_floxys_statistics_block() {
    let dir = tempfile::tempdir().unwrap();
    let flows = write(dir.path(), "hello.yaml", HELLO);
    let store = format!("redb:{}", dir.path().join("p.redb").display());
    let out = std::process::Command::new(DAEMON)
        .arg(&flows)
        .env("FLOXY_STORE", &store)
        .env("FLOXY_TECH_ADDR", "127.0.0.1:0")
        .env("FLOXY_STATS_INTERVAL", "100ms")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id().to_string();
    // Let a few statistics periods pass, then stop it.
    let t = Instant::now();
    let mut child = out;
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    while t.elapsed() < Duration::from_millis(800) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let text = reader.join().unwrap();
    assert!(text.contains("=== Workflow Statistics ==="), "{text}");
    assert!(
        text.contains("Total: 0 | Completed: 0 | Failed: 0 | Running: 0 | Pending: 0 | Active: 0"),
        "{text}"
    );
}

#[test]
fn bad_configuration_exits_2_and_a_busy_tech_address_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let flows = write(dir.path(), "hello.yaml", HELLO);
    let store = format!("redb:{}", dir.path().join("c.redb").display());
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("FLOXY_WORKER_INTERVAL", "fast")],
            "invalid duration \"fast\"",
        ),
        (vec![("FLOXY_WORKERS", "0")], "--workers"),
        (
            vec![("FLOXY_SHUTDOWN_TIMEOUT", "30")],
            "a number needs a unit",
        ),
        (vec![("FLOXY_TECH_ADDR", "nowhere")], "invalid address"),
        (vec![("FLOXY_STORE", "sqlite:x")], "invalid store"),
        (vec![("FLOXY_LOG_FORMAT", "xml")], "invalid value 'xml'"),
        (vec![("FLOXY_DB_PORT", "5432")], "FLOXY_DB_HOST is required"),
    ];
    for (env, needle) in cases {
        let mut all = vec![("FLOXY_STORE", store.as_str())];
        all.extend(env.iter().copied());
        let mut d = Daemon::start(&flows, &all);
        let code = d.wait_exit(Duration::from_secs(20));
        assert_eq!(code, BAD_INPUT, "{env:?}: {}", d.log_text());
        assert!(d.log_text().contains(needle), "{env:?}: {}", d.log_text());
    }
    let mut d = Daemon::start(
        "/nonexistent/flows.yaml",
        &[("FLOXY_STORE", store.as_str())],
    );
    assert_eq!(d.wait_exit(Duration::from_secs(20)), BAD_INPUT);
    assert!(
        d.log_text().contains("cannot read the flow file"),
        "{}",
        d.log_text()
    );
    assert!(
        !dir.path().join("c.redb").exists(),
        "nothing opened before the file is read"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut d = Daemon::start(
        &flows,
        &[
            ("FLOXY_STORE", store.as_str()),
            ("FLOXY_TECH_ADDR", addr.as_str()),
        ],
    );
    assert_eq!(d.wait_exit(Duration::from_secs(20)), ERROR);
    assert!(
        d.log_text().contains(&format!("cannot listen on {addr}")),
        "{}",
        d.log_text()
    );

    let help = std::process::Command::new(DAEMON)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "Examples:",
        "FLOXY_DB_HOST",
        "FLOXY_WORKER_INTERVAL",
        "/ready",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

mod postgres {
    use super::*;
    use floxy_store_postgres::testing::{TestCluster, database_url, fresh_schema};

    const SLOW: &str = "handlers:\n  - name: slow\n    exec: |\n      touch \"$MARKER\"\n      sleep \"$SECONDS_TO_SLEEP\"\n      echo '{\"slept\": true}'\nflows:\n  - name: slow\n    steps: [slow]\n";

    fn slow_input(dir: &std::path::Path, name: &str, secs: u32) -> (String, std::path::PathBuf) {
        let marker = dir.join(format!("{name}.started"));
        let input = write(
            dir,
            &format!("{name}.json"),
            &serde_json::json!({ "marker": marker, "seconds_to_sleep": secs }).to_string(),
        );
        (input, marker)
    }

    fn wait_file(p: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !p.exists() {
            assert!(Instant::now() < deadline, "{} never appeared", p.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn sigterm_lets_a_running_handler_finish_and_a_second_signal_stops_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let flows = write(dir.path(), "slow.yaml", SLOW);
        let url = database_url();
        let schema = fresh_schema();
        let env = [
            ("FLOXY_DATABASE_URL", url.as_str()),
            ("FLOXY_DB_SCHEMA", schema.as_str()),
            ("FLOXY_SHUTDOWN_TIMEOUT", "20s"),
        ];
        let db = ["--database-url", url.as_str(), "--schema", schema.as_str()];
        let mut d = Daemon::start(&flows, &env);
        d.ready();
        assert!(d.log_text().contains("migrated"), "{}", d.log_text());
        assert_eq!(d.get("/ready").0, 200);

        // Started from outside while it runs (NOTIFY wakes the workers); SIGTERM while the
        // handler sleeps: it finishes and commits, then the daemon exits 0.
        let (input, marker) = slow_input(dir.path(), "one", 1);
        let id = ctl(["start", "-o", "slow-v1", "-i", &input, "--output", "json"]
            .iter()
            .chain(&db))
        .expect(OK)
        .json()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        wait_file(&marker);
        d.signal("TERM");
        assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.log_text());
        let log = d.log_text();
        assert!(
            log.contains("\"in_flight\":1") && log.contains("\"finished\":1"),
            "{log}"
        );
        let shown = ctl(["show", &id, "--output", "json"].iter().chain(&db))
            .expect(OK)
            .json();
        assert_eq!(shown["instance"]["status"], "completed");
        assert_eq!(shown["instance"]["output"]["slept"], true);

        // A second signal stops at once (exit 130); the lease is left to expire.
        let mut d = Daemon::start(&flows, &env);
        d.ready();
        let (input, marker) = slow_input(dir.path(), "two", 60);
        ctl(["start", "-o", "slow-v1", "-i", &input].iter().chain(&db)).expect(OK);
        wait_file(&marker);
        d.signal("TERM");
        d.wait_for("shutdown", Duration::from_secs(10), |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("shutting down"))
        });
        let t = Instant::now();
        d.signal("TERM");
        assert_eq!(
            d.wait_exit(Duration::from_secs(10)),
            130,
            "{}",
            d.log_text()
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(d.log_text().contains("second signal"), "{}", d.log_text());
    }

    #[test]
    fn floxy_db_parts_connect_and_the_password_is_never_logged() {
        let dir = tempfile::tempdir().unwrap();
        let flows = write(dir.path(), "hello.yaml", HELLO);
        let cluster = floxy_store_postgres::testing::shared_cluster();
        let port = cluster.port().to_string();
        let schema = fresh_schema();
        let secret = "s3cr3t-do-not-log";
        let env = [
            ("FLOXY_DB_HOST", "127.0.0.1"),
            ("FLOXY_DB_PORT", port.as_str()),
            ("FLOXY_DB_USER", "postgres"),
            ("FLOXY_DB_PASSWORD", secret),
            ("FLOXY_DB_NAME", "postgres"),
            ("FLOXY_DB_SCHEMA", schema.as_str()),
        ];
        let mut d = Daemon::start(&flows, &env);
        d.ready();
        let start = d
            .log
            .iter()
            .find(|l| l.contains("floxyd starting"))
            .unwrap()
            .clone();
        assert!(
            start.contains("postgres://postgres:***@127.0.0.1:"),
            "{start}"
        );
        // floxyctl with Floxy's flags and PG_PASSWORD: the same database.
        let r = ctl_in(
            [
                "start",
                "-o",
                "hello-v1",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--user",
                "postgres",
                "--database",
                "postgres",
                "--schema",
                &schema,
                "--output",
                "json",
            ],
            None,
            &[("PG_PASSWORD", secret)],
        )
        .expect(OK);
        let id = r.json()["id"].as_str().unwrap().to_owned();
        d.wait_for("a completed instance", Duration::from_secs(30), |v| {
            v["message"] == "workflow statistics" && v["completed"] == 1
        });
        d.signal("TERM");
        assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
        assert!(
            !d.log_text().contains(secret),
            "the password leaked:\n{}",
            d.log_text()
        );
        let url = database_url();
        let shown = ctl([
            "show",
            &id,
            "--database-url",
            &url,
            "--schema",
            &schema,
            "--output",
            "json",
        ])
        .expect(OK)
        .json();
        assert_eq!(shown["instance"]["output"]["greeting"], "hello, world");
        // --help never shows the password taken from the environment.
        let help = std::process::Command::new(DAEMON)
            .arg("--help")
            .env("FLOXY_DB_PASSWORD", secret)
            .env("FLOXY_DATABASE_URL", format!("postgres://u:{secret}@h/db"))
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&help.stdout).contains(secret));
    }

    #[test]
    fn ready_turns_503_with_the_reason_when_the_database_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let flows = write(dir.path(), "hello.yaml", HELLO);
        let mut cluster = TestCluster::start().expect("a throwaway PostgreSQL cluster");
        let url = cluster.url("postgres");
        let mut d = Daemon::start(
            &flows,
            &[
                ("FLOXY_DATABASE_URL", url.as_str()),
                ("FLOXY_SHUTDOWN_TIMEOUT", "3s"),
            ],
        );
        d.ready();
        assert_eq!(d.get("/ready").0, 200);
        cluster.stop();
        let t = Instant::now();
        let (status, body) = d.get("/ready");
        assert_eq!(status, 503, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "unavailable");
        assert!(!v["reason"].as_str().unwrap().is_empty(), "{body}");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "bounded: {:?}",
            t.elapsed()
        );
        assert_eq!(
            d.get("/health").0,
            200,
            "liveness does not depend on the store"
        );
        d.signal("TERM");
        assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.log_text());
    }

    #[test]
    fn ctl_database_commands_on_postgresql() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = rt.block_on(floxy_store_postgres::testing::test_store(
            floxy::PostgresLayout::Plain,
        ));
        let schema = store.schema().to_owned();
        let sc = rt.block_on(scenario(std::sync::Arc::new(store.clone())));
        let url = database_url();
        let db = ["--database-url", url.as_str(), "--schema", schema.as_str()];
        let all = ctl(["list", "--output", "json"].iter().chain(&db))
            .expect(OK)
            .json();
        assert_eq!(all["items"].as_array().unwrap().len(), 5);
        let st = ctl(["stats", "--output", "json"].iter().chain(&db))
            .expect(OK)
            .json();
        assert_eq!(st["instances_by_status"]["completed"], 1);
        let dlq = ctl(["dlq", "--output", "json"].iter().chain(&db))
            .expect(OK)
            .json();
        let dlq_id = dlq["items"][0]["id"].as_u64().unwrap().to_string();
        ctl(["requeue", &dlq_id].iter().chain(&db)).expect(OK);
        ctl([
            "decide",
            "-o",
            &sc.waiting.to_string(),
            "--step",
            "approve",
            "--reject",
        ]
        .iter()
        .chain(&db))
        .expect(OK);
        let ab = ctl(["abort", "-o", &sc.stuck_a.to_string(), "--output", "json"]
            .iter()
            .chain(&db))
        .expect(OK)
        .json();
        assert_eq!(ab["status"], "aborted");
        let c = ctl([
            "cancel",
            "-o",
            &sc.stuck_b.to_string(),
            "--reason",
            "r",
            "--output",
            "json",
        ]
        .iter()
        .chain(&db))
        .expect(OK)
        .json();
        assert!(
            c["status"] == "cancelled" || c["status"] == "cancelling",
            "{c}"
        );
        let shown = ctl(["show", &sc.completed.to_string(), "--output", "json"]
            .iter()
            .chain(&db))
        .expect(OK)
        .json();
        assert_eq!(shown["instance"]["status"], "completed");
        assert!(shown["events"].as_array().unwrap().len() >= 4);
        let wfs = ctl(["workflows", "--output", "json"].iter().chain(&db))
            .expect(OK)
            .json();
        assert_eq!(wfs.as_array().unwrap().len(), 4);
        ctl(["start", "-o", "ok-v1"].iter().chain(&db)).expect(OK);
        ctl(["start", "-o", "missing-v1"].iter().chain(&db)).expect(REFUSED);
        let removed = ctl(["cleanup", "--older-than", "0s", "--output", "json"]
            .iter()
            .chain(&db))
        .expect(OK)
        .json();
        assert!(removed["removed"].as_u64().unwrap() >= 2, "{removed}");
        ctl(["migrate"].iter().chain(&db)).expect(OK);
        // A fresh schema is created by migrate (and by any command, as in Floxy).
        let fresh = fresh_schema();
        let m = ctl(["migrate", "--database-url", &url, "--schema", &fresh]).expect(OK);
        assert!(
            m.stdout
                .contains(&format!("schema {fresh} migrated (plain layout)")),
            "{}",
            m.stdout
        );
        let r = ctl(["list", "--database-url", &url, "--schema", "Bad-Schema"]);
        assert_ne!(r.code, 0);
        // Unreachable: exit 1 within the connect bound, the password never shown.
        let t = Instant::now();
        let r = ctl([
            "list",
            "--database-url",
            "postgres://u:hunter2@127.0.0.1:1/db",
        ])
        .expect(ERROR);
        assert!(t.elapsed() < Duration::from_secs(15));
        r.reason_contains("postgres://u:***@127.0.0.1:1/db");
        assert!(!r.stderr.contains("hunter2"));
    }
}
