//! The web console served by a running `floxyd` (a process, on a redb file, with the
//! example flow `examples/flows/human.yaml` and its bash scripts), in a real headless
//! Chromium: the overview counts the seeded instances, an instance page shows its graph and
//! timeline, approving the human step through the page completes the instance (read back
//! through the API), and a viewer token sees no action buttons. Screenshots go to
//! `target/screenshots/floxyd-*.png`.
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
    let flows = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("examples/flows/human.yaml")
        .display()
        .to_string();
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
    let mut d = Daemon::start_with(
        &flows,
        &[("FLOXY_STORE", store.as_str())],
        &["--http-addr", "127.0.0.1:0", "--http-tokens", &tokens],
    );
    d.ready();
    let base = format!("http://{}", d.api_addr());
    let c = http();

    // Seed through the API: two refunds waiting for approval.
    let mut ids = Vec::new();
    for (n, amount) in [(1, 120), (2, 45)] {
        let v = api(
            &c,
            &base,
            "/api/workflows/approval-v1/start",
            Some(json!({"input": {"order": n, "amount": amount}})),
        )
        .await;
        ids.push(v["instance_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        wait_instance(&c, &base, id, waiting).await;
    }

    let b = browser(&driver).await;
    let mut shots = Vec::new();
    b.goto(&format!("{base}/ui/")).await.unwrap();
    sign_in(&b, OPS, "operator").await;
    wait_loaded(&b).await;
    wait_text(&b, "#card-total .card-value", |t| t == "2").await;
    assert_eq!(
        wait_text(&b, "#card-waiting .card-value", |_| true).await,
        "2"
    );
    let main = wait_text(&b, "main", |_| true).await;
    assert!(
        main.contains("approve waits for a human decision"),
        "{main}"
    );
    shots.push(screenshot(&b, "floxyd-overview.png").await);

    // The instance page: graph with the step statuses, timeline, the decision form.
    let (approve_id, other) = (&ids[0], &ids[1]);
    goto(&b, &base, &format!("#/instances/{approve_id}")).await;
    for (step, status) in [
        ("charge", "completed"),
        ("approve", "waiting_decision"),
        ("ship", ""),
    ] {
        let node = b
            .find(Locator::Css(&format!(
                "#instance-graph g.node[data-step='{step}']"
            )))
            .await
            .unwrap();
        let class = node.attr("class").await.unwrap().unwrap();
        assert!(class.contains(&format!("st-{status}")), "{step}: {class}");
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
    let done = wait_instance(&c, &base, approve_id, |v| v["status"] == "completed").await;
    let approve = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_name"] == "approve")
        .unwrap()
        .clone();
    assert_eq!(approve["decision"]["decided_by"], "ops", "{approve}");
    wait_text(&b, ".page-header .badge", |t| t == "completed").await;
    shots.push(screenshot(&b, "floxyd-instance-completed.png").await);

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
