//! The web console of the library router nested in a user's service (under `/ops`), in a
//! real headless Chromium driven over WebDriver (chromedriver + fantoccini), with a memory
//! store, Rust handlers and seeded instances: completed, failed with compensations, waiting
//! for a decision, in the DLQ, running. Checks that the console finds its API under the
//! prefix: the overview's counts, live updates from the event stream, a failed instance's
//! graph and timeline, a cancel through the page, the other pages, a viewer without action
//! buttons. floxyd's console test (`floxy-cli/tests/console_floxyd.rs`) covers deciding and
//! requeueing through the page on a running daemon.
//! Screenshots go to `target/screenshots/`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (the test command installs
//! them); without them this test fails, naming them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

#[path = "support/webdriver.rs"]
mod webdriver;

use fantoccini::{Client, Locator};
use floxy::{
    Builder, Engine, HandlerError, InstanceId, InstanceStatus, MemoryStore, Payload, StepStatus,
};
use floxy_http::{Role, RouterConfig, TokenEntry, Tokens, hash_token};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use webdriver::*;

const OPS: &str = "ops-secret-token";
const VIEWER: &str = "viewer-secret-token";
fn tokens() -> Tokens {
    Tokens::from_entries([
        TokenEntry::new("ops", Role::Operator, hash_token(OPS)).unwrap(),
        TokenEntry::new("watcher", Role::Viewer, hash_token(VIEWER)).unwrap(),
    ])
    .unwrap()
}

async fn engine() -> Engine {
    let engine = Engine::builder(Arc::new(MemoryStore::new()))
        .workers(4)
        .poll_interval_ms(50)
        .worker_id("browser-test")
        .build();
    engine.register_fn("ok", |_ctx, input: Payload| async move { Ok(input) });
    engine.register_fn("boom", |_ctx, _input: Payload| async move {
        Err::<Payload, _>(HandlerError::fatal("card declined by the bank"))
    });
    engine.register_fn("picky", |_ctx, input: Payload| async move {
        if input.value()["fixed"] == json!(true) {
            Ok(input)
        } else {
            Err(HandlerError::retryable("address incomplete"))
        }
    });
    // Runs until cancelled.
    engine.register_fn("slow", |ctx, input: Payload| async move {
        ctx.cancelled().await;
        Ok(input)
    });
    for def in [
        Builder::new("order", 1)
            .step("reserve", "ok")
            .on_failure("release", "ok")
            .then("charge", "ok")
            .then("ship", "ok")
            .build(),
        Builder::new("payment", 1)
            .step("reserve", "ok")
            .on_failure("release", "ok")
            .then("debit", "ok")
            .on_failure("refund", "ok")
            .then("notify", "boom")
            .max_retries(0)
            .build(),
        Builder::new("approval", 1)
            .step("prep", "ok")
            .wait_human("approve")
            .then("ship", "ok")
            .build(),
        Builder::new("shipping", 1)
            .dlq(true)
            .step("label", "ok")
            .then("address", "picky")
            .max_retries(0)
            .then("dispatch", "ok")
            .build(),
        Builder::new("import", 1)
            .step("fetch", "ok")
            .then("transform", "slow")
            .then("store", "ok")
            .build(),
    ] {
        engine.register_workflow(def.unwrap()).await.unwrap();
    }
    engine.start_workers().unwrap();
    engine
}

struct Seeded {
    failed: InstanceId,
    waiting: [InstanceId; 2],
    running: [InstanceId; 2],
}

async fn seed(engine: &Engine) -> Seeded {
    let start = |wf: &'static str, input: Value| async move {
        engine
            .start(&format!("{wf}-v1").as_str().into(), input)
            .await
            .unwrap()
    };
    let mut completed = Vec::new();
    for n in 0..3 {
        let id = start(
            "order",
            json!({"order": 1000 + n, "items": ["book", "pen"]}),
        )
        .await;
        completed.push(id);
    }
    let failed = start("payment", json!({"amount": 4200, "currency": "EUR"})).await;
    let waiting = [
        start("approval", json!({"request": "refund", "amount": 99})).await,
        start("approval", json!({"request": "discount", "amount": 15})).await,
    ];
    let dlq = [
        start("shipping", json!({"fixed": false, "street": "Main St"})).await,
        start("shipping", json!({"fixed": false, "street": "Side St"})).await,
    ];
    let running = [
        start("import", json!({"file": "a.csv"})).await,
        start("import", json!({"file": "b.csv"})).await,
    ];
    for id in completed
        .iter()
        .chain([&failed])
        .chain(&waiting)
        .chain(&dlq)
    {
        engine.wait_for(*id, WAIT).await.unwrap();
    }
    for id in running {
        engine
            .wait_until(id, WAIT, |s| {
                s.steps
                    .iter()
                    .any(|r| r.step.as_ref() == "transform" && r.status == StepStatus::Running)
            })
            .await
            .unwrap();
    }
    let status = |id| async move { engine.instance(id).await.unwrap().unwrap().status };
    for id in &completed {
        assert_eq!(status(*id).await, InstanceStatus::Completed);
    }
    assert_eq!(status(failed).await, InstanceStatus::Failed);
    for id in dlq {
        assert_eq!(status(id).await, InstanceStatus::Dlq);
    }
    Seeded {
        failed,
        waiting,
        running,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let driver = start_driver().await;
    let engine = engine().await;
    let seeded = seed(&engine).await;
    // Nested in a service under /ops, as a user would mount it (floxyd's own browser test
    // covers the router at the root).
    let router = axum::Router::new().nest(
        "/ops",
        floxy_http::router(engine.clone(), RouterConfig::new(tokens())).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = tokio::spawn(floxy_http::serve(listener, router));
    let base = format!("http://{addr}/ops");
    let c = browser(&driver).await;
    let result = run(&c, &base, &engine, &seeded).await;
    c.close().await.unwrap();
    server.abort();
    engine.shutdown(Duration::from_secs(5)).await;
    drop(driver);
    for p in result {
        println!("screenshot: {}", p.display());
    }
}

async fn run(c: &Client, base: &str, engine: &Engine, seeded: &Seeded) -> Vec<PathBuf> {
    let mut shots = Vec::new();

    // ----- the token prompt, then the overview and its counts
    c.goto(&format!("{base}/ui/")).await.unwrap();
    sign_in(c, OPS, "operator").await;
    wait_loaded(c).await;
    wait_text(c, "#card-total .card-value", |t| t == "10").await;
    assert_eq!(
        wait_text(c, "#card-completed .card-value", |_| true).await,
        "3"
    );
    assert_eq!(
        wait_text(c, "#card-failed .card-value", |_| true).await,
        "1"
    );
    assert_eq!(wait_text(c, "#card-dlq .card-value", |_| true).await, "2");
    assert_eq!(
        wait_text(c, "#card-waiting .card-value", |_| true).await,
        "2"
    );
    assert_eq!(
        wait_text(c, "#card-active .card-value", |_| true).await,
        "6"
    );
    // Needs attention: the two DLQ records and the two waiting decisions.
    let attention = wait_text(c, "main", |_| true).await;
    assert!(
        attention.contains("approve waits for a human decision"),
        "{attention}"
    );
    assert!(attention.contains("address (execute)"), "{attention}");
    wait_text(c, "#live", |t| t == "Live").await;
    shots.push(screenshot(c, "overview.png").await);

    // ----- live: an instance started outside the page shows up from the event stream,
    // well before the 10 s fallback poll.
    let extra = engine
        .start(&"order-v1".into(), json!({"order": 2000}))
        .await
        .unwrap();
    engine.wait_for(extra, WAIT).await.unwrap();
    let t0 = Instant::now();
    wait_text(c, "#card-total .card-value", |t| t == "11").await;
    wait_text(c, "#card-completed .card-value", |t| t == "4").await;
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "the overview took {:?} to follow the stream",
        t0.elapsed()
    );

    // ----- the failed instance: graph with a node per step, statuses, timeline
    goto(c, base, &format!("#/instances/{}", seeded.failed)).await;
    for (step, status) in [
        ("reserve", "rolled_back"),
        ("debit", "rolled_back"),
        ("notify", "failed"),
    ] {
        wait_class(
            c,
            &format!("#instance-graph g.node[data-step='{step}']"),
            &format!("st-{status}"),
        )
        .await;
    }
    assert_eq!(count(c, "#instance-graph g.node").await, 3);
    assert_eq!(count(c, "#instance-graph path.edge").await, 2);
    let timeline = wait_text(c, "#timeline", |_| true).await;
    for kind in [
        "workflow started",
        "step failed",
        "rollback started",
        "workflow failed",
    ] {
        assert!(timeline.contains(kind), "timeline lacks {kind}: {timeline}");
    }
    assert!(count(c, "#timeline li[data-event='compensation_completed']").await >= 2);
    let header = wait_text(c, "main", |_| true).await;
    assert!(header.contains("card declined by the bank"), "{header}");
    assert_eq!(
        count(c, "#action-cancel").await,
        0,
        "a failed instance is terminal"
    );
    shots.push(screenshot(c, "instance-failed.png").await);

    let [approve_id, other_waiting] = seeded.waiting;
    // ----- cancel a running instance through the page (with a reason, confirmed)
    let [cancel_id, still_running] = seeded.running;
    goto(c, base, &format!("#/instances/{cancel_id}")).await;
    c.find(Locator::Css("#action-reason"))
        .await
        .unwrap()
        .send_keys("wrong file")
        .await
        .unwrap();
    click(c, "#action-cancel").await;
    click(c, "#confirm-ok").await;
    let r = engine
        .wait_until(cancel_id, WAIT, |s| s.instance.status.is_terminal())
        .await
        .unwrap();
    assert_eq!(r.status, InstanceStatus::Cancelled);
    let events = engine.events(cancel_id).await.unwrap();
    let by_ops = events.iter().any(|e| {
        e.detail.as_ref().is_some_and(|d| {
            d.value()["by"] == "ops" && d.value().to_string().contains("wrong file")
        })
    });
    assert!(by_ops, "the cancel names ops and the reason: {events:?}");
    wait_text(c, ".page-header .badge", |t| t == "cancelled").await;

    // ----- the other pages render
    goto(c, base, "#/decisions").await;
    let text = wait_text(c, "main", |t| t.contains("approve")).await;
    let other = other_waiting.to_string();
    assert!(text.contains(&other[other.len() - 8..]), "{text}");
    assert!(count(c, "main button.action").await >= 2);
    goto(c, base, "#/instances?status=completed").await;
    assert_eq!(count(c, "tr[data-instance]").await, 4);
    goto(c, base, "#/workflows").await;
    assert_eq!(count(c, ".wf-card").await, 5);
    goto(c, base, "#/workflows/payment-v1").await;
    assert_eq!(count(c, "svg.graph g.node").await, 3);
    shots.push(screenshot(c, "workflow.png").await);

    // ----- a viewer: no action buttons (floxyd's browser test goes through every page)
    click(c, "#change-token").await;
    sign_in(c, VIEWER, "viewer").await;
    goto(c, base, &format!("#/instances/{still_running}")).await;
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#no-actions"))
        .await
        .unwrap();
    assert_eq!(count(c, "main button.action").await, 0);
    assert_eq!(
        engine.instance(approve_id).await.unwrap().unwrap().status,
        InstanceStatus::Running
    );
    shots
}
