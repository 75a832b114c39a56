//! The web console served by a running `floxyd` (a process, on a redb file, bash handlers),
//! in a real headless Chromium, with instances seeded through the API: the overview counts
//! them; an instance page shows its graph and timeline; approving a human step, cancelling a
//! running instance (its script is killed) and requeueing a DLQ record with an edited input
//! through the page change the store (read back through the API); a viewer token sees no
//! action buttons. Screenshots go to `target/screenshots/floxyd-*.png`.
//!
//! Needs the Debian packages `chromium`, `chromium-driver` and `jq` (the test command
//! installs them); without them this test fails, naming them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod common;
#[path = "../../floxy-http/tests/support/webdriver.rs"]
mod webdriver;

use common::{Daemon, write};
use fantoccini::Locator;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use webdriver::*;

const FLOWS: &str = r#"
handlers:
  - name: charge
    exec: |
      echo "$INPUT" | jq -c '. + {charged: (.amount // 0)}'
  - name: ship
    exec: |
      echo "$INPUT"
  - name: address
    exec: |
      if echo "$INPUT" | jq -e '.fixed == true' >/dev/null; then echo "$INPUT"; else echo "address incomplete" >&2; exit 1; fi
  - name: transform
    exec: |
      echo "$$" > "$PID_DIR/$FLOXY_INSTANCE_ID"
      sleep 600
      echo "$INPUT"
flows:
  - name: approval
    steps:
      - charge
      - type: human
        name: approve
      - ship
  - name: shipping
    dlq: true
    steps:
      - name: address
        max_retries: 0
      - ship
  - name: import
    steps:
      - name: transform
        timeout: 10m
"#;
const OPS: &str = "console-ops-2c41";
const VIEWER: &str = "console-viewer-8b17";

/// A plain-HTTP client (the test talks to floxyd on loopback).
fn http() -> reqwest::Client {
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn api(c: &reqwest::Client, base: &str, path: &str, body: Option<Value>) -> Value {
    let req = match body {
        Some(b) => c
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(b.to_string()),
        None => c.get(format!("{base}{path}")),
    };
    let resp = req.bearer_auth(OPS).send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    serde_json::from_str(&resp.text().await.unwrap()).unwrap()
}

/// Polls the instance until `ok` holds.
async fn wait_instance(
    c: &reqwest::Client,
    base: &str,
    id: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = api(c, base, &format!("/api/instances/{id}"), None).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "instance never got there: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn waiting(v: &Value) -> bool {
    v["steps"].as_array().is_some_and(|steps| {
        steps
            .iter()
            .any(|s| s["step_name"] == "approve" && s["status"] == "waiting_decision")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_served_by_floxyd_in_headless_chromium() {
    assert!(
        std::process::Command::new("jq")
            .arg("--version")
            .output()
            .is_ok(),
        "jq is missing: the example flows' scripts use it (apt-get install -y jq)"
    );
    let driver = start_driver().await;
    let dir = tempfile::tempdir().unwrap();
    let flows = write(dir.path(), "console.yaml", FLOWS);
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let store = format!("redb:{}", dir.path().join("console.redb").display());
    let tokens = write(
        dir.path(),
        "tokens",
        &format!(
            "ops operator {}\nwatcher viewer {}\n",
            floxy_http::hash_token(OPS),
            floxy_http::hash_token(VIEWER)
        ),
    );
    let pid_dir = pids.display().to_string();
    let mut d = Daemon::start_with(
        &flows,
        &[
            ("FLOXY_STORE", store.as_str()),
            ("PID_DIR", pid_dir.as_str()),
        ],
        &["--http-addr", "127.0.0.1:0", "--http-tokens", &tokens],
    );
    d.ready();
    let base = format!("http://{}", d.api_addr());
    let c = http();

    // Seed through the API: two refunds waiting for approval, a shipment in the DLQ, an
    // import whose script runs until it is cancelled.
    let start = async |wf: &str, input: Value| -> String {
        let v = api(
            &c,
            &base,
            &format!("/api/workflows/{wf}/start"),
            Some(json!({ "input": input })),
        )
        .await;
        v["instance_id"].as_str().unwrap().to_owned()
    };
    let approve_id = start("approval-v1", json!({"order": 1, "amount": 120})).await;
    let other = start("approval-v1", json!({"order": 2, "amount": 45})).await;
    let parked = start("shipping-v1", json!({"fixed": false, "street": "Main St"})).await;
    let import = start("import-v1", json!({"file": "a.csv"})).await;
    for id in [&approve_id, &other] {
        wait_instance(&c, &base, id, waiting).await;
    }
    wait_instance(&c, &base, &parked, |v| v["status"] == "dlq").await;
    let pid_file = pids.join(&import);
    let deadline = Instant::now() + WAIT;
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "the import script never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let script_pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();

    let b = browser(&driver).await;
    let mut shots = Vec::new();
    b.goto(&format!("{base}/ui/")).await.unwrap();
    sign_in(&b, OPS, "operator").await;
    wait_loaded(&b).await;
    wait_text(&b, "#card-total .card-value", |t| t == "4").await;
    assert_eq!(
        wait_text(&b, "#card-waiting .card-value", |_| true).await,
        "2"
    );
    assert_eq!(wait_text(&b, "#card-dlq .card-value", |_| true).await, "1");
    let main = wait_text(&b, "main", |_| true).await;
    assert!(
        main.contains("approve waits for a human decision"),
        "{main}"
    );
    assert!(
        main.contains("address incomplete"),
        "the DLQ record's error: {main}"
    );
    shots.push(screenshot(&b, "floxyd-overview.png").await);

    // The instance page: graph with the step statuses, timeline, the decision form.
    goto(&b, &base, &format!("#/instances/{approve_id}")).await;
    for (step, status) in [
        ("charge", "completed"),
        ("approve", "waiting_decision"),
        ("ship", ""),
    ] {
        wait_class(
            &b,
            &format!("#instance-graph g.node[data-step='{step}']"),
            &format!("st-{status}"),
        )
        .await;
    }
    let timeline = wait_text(&b, "#timeline", |_| true).await;
    assert!(timeline.contains("workflow started"), "{timeline}");
    b.find(Locator::Css("#decision-comment-approve"))
        .await
        .unwrap()
        .send_keys("refund agreed with the customer")
        .await
        .unwrap();
    shots.push(screenshot(&b, "floxyd-instance.png").await);
    click(&b, "#decision-confirm").await;
    let done = wait_instance(&c, &base, &approve_id, |v| v["status"] == "completed").await;
    let step = |v: &Value, name: &str| {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step_name"] == name)
            .unwrap()
            .clone()
    };
    let approve = step(&done, "approve");
    assert_eq!(approve["decision"]["decided_by"], "ops", "{approve}");
    assert_eq!(
        approve["decision"]["comment"], "refund agreed with the customer",
        "{approve}"
    );
    wait_text(&b, ".page-header .badge", |t| t == "completed").await;

    // Cancel the running import through the page, with a reason: the script is killed.
    goto(&b, &base, &format!("#/instances/{import}")).await;
    b.find(Locator::Css("#action-reason"))
        .await
        .unwrap()
        .send_keys("wrong file")
        .await
        .unwrap();
    click(&b, "#action-cancel").await;
    click(&b, "#confirm-ok").await;
    wait_instance(&c, &base, &import, |v| v["status"] == "cancelled").await;
    let events = api(&c, &base, &format!("/api/instances/{import}/events"), None).await;
    let text = events.to_string();
    assert!(
        text.contains("\"by\":\"ops\"") && text.contains("wrong file"),
        "{text}"
    );
    wait_text(&b, ".page-header .badge", |t| t == "cancelled").await;
    let deadline = Instant::now() + WAIT;
    while Path::new(&format!("/proc/{script_pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the cancelled script {script_pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Requeue the DLQ record with an edited input, from the DLQ page.
    let rid = api(&c, &base, "/api/dlq", None).await["items"][0]["id"]
        .as_u64()
        .unwrap();
    goto(&b, &base, "#/dlq").await;
    click(&b, &format!("#requeue-open-{rid}")).await;
    let area = b
        .find(Locator::Css(&format!("#requeue-input-{rid}")))
        .await
        .unwrap();
    let shown: Value = serde_json::from_str(&area.prop("value").await.unwrap().unwrap()).unwrap();
    assert_eq!(
        shown["street"], "Main St",
        "the editor shows the stored input"
    );
    area.clear().await.unwrap();
    area.send_keys(r#"{"fixed": true, "street": "Main Street 1"}"#)
        .await
        .unwrap();
    shots.push(screenshot(&b, "floxyd-dlq.png").await);
    click(&b, &format!("#requeue-submit-{rid}")).await;
    let done = wait_instance(&c, &base, &parked, |v| v["status"] == "completed").await;
    assert_eq!(
        step(&done, "address")["output"],
        json!({"fixed": true, "street": "Main Street 1"})
    );

    // A viewer: the other waiting instance has no action buttons and no form.
    click(&b, "#change-token").await;
    sign_in(&b, VIEWER, "viewer").await;
    goto(&b, &base, &format!("#/instances/{other}")).await;
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#no-actions"))
        .await
        .unwrap();
    assert_eq!(count(&b, "main button.action").await, 0);
    assert_eq!(count(&b, "main textarea").await, 0);
    let text = wait_text(&b, "main", |_| true).await;
    assert!(
        !text.contains("\"amount\""),
        "a viewer sees no input: {text}"
    );
    goto(&b, &base, "#/dlq").await;
    assert_eq!(count(&b, "main button.action").await, 0);
    let still = api(&c, &base, &format!("/api/instances/{other}"), None).await;
    assert!(waiting(&still), "{still}");

    b.close().await.unwrap();
    d.signal("TERM");
    assert_eq!(
        tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(30))),
        0,
        "{}",
        d.log_text()
    );
    drop(driver);
    for p in shots {
        println!("screenshot: {}", p.display());
    }
}
