//! What the web console needs from the server, over a real TCP listener: its files under
//! `/ui` (content types, CSP, `ETag` revalidation), `GET /api/whoami`, `GET
//! /api/decisions/waiting`, and the event stream authenticated by `?access_token=`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{Builder, Engine, MemoryStore, Payload};
use floxy_http::{Role, RouterConfig, TokenEntry, Tokens, hash_token};
use futures::StreamExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const OPS: &str = "ops-secret";
const VIEWER: &str = "viewer-secret";
const WAIT: Duration = Duration::from_secs(30);

fn tokens() -> Tokens {
    Tokens::from_entries([
        TokenEntry::new("ops", Role::Operator, hash_token(OPS)).unwrap(),
        TokenEntry::new("watcher", Role::Viewer, hash_token(VIEWER)).unwrap(),
    ])
    .unwrap()
}

async fn engine() -> Engine {
    let engine = Engine::builder(Arc::new(MemoryStore::new()))
        .workers(2)
        .poll_interval_ms(50)
        .build();
    engine.register_fn("ok", |_ctx, input: Payload| async move { Ok(input) });
    engine
        .register_workflow(
            Builder::new("approval", 1)
                .step("prep", "ok")
                .wait_human("approve")
                .then("ship", "ok")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    engine
}

async fn serve(engine: &Engine, config: RouterConfig) -> SocketAddr {
    let router = floxy_http::router(engine.clone(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(floxy_http::serve(listener, router));
    addr
}

async fn json(r: reqwest::Response) -> Value {
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_files_are_served_with_types_policy_and_etags() {
    let engine = engine().await;
    let addr = serve(&engine, RouterConfig::new(tokens())).await;
    let client = no_redirects();

    let r = client
        .get(format!("http://{addr}/ui"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "ui/");

    for (path, mime, needle) in [
        (
            "/ui/",
            "text/html; charset=utf-8",
            "<script type=\"module\" src=\"app.js\">",
        ),
        ("/ui/index.html", "text/html; charset=utf-8", "token-dialog"),
        ("/ui/style.css", "text/css; charset=utf-8", ":root"),
        ("/ui/app.js", "text/javascript; charset=utf-8", "import"),
        (
            "/ui/graph.js",
            "text/javascript; charset=utf-8",
            "export function layout",
        ),
        ("/ui/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        // Files are served without a token: the page asks for one.
        let r = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], mime, "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-cache");
        let etag = h["etag"].to_str().unwrap().to_owned();
        let body = r.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle:?}");

        let again = client
            .get(format!("http://{addr}{path}"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
        let stale = client
            .get(format!("http://{addr}{path}"))
            .header("if-none-match", "\"other\"")
            .send()
            .await
            .unwrap();
        assert_eq!(stale.status(), 200, "{path}");
    }
    // No inline script or style in the page: the policy would block them.
    let page = client
        .get(format!("http://{addr}/ui/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<script>") && !page.contains("style="));

    let r = client
        .get(format!("http://{addr}/ui/missing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .get(format!("http://{addr}/ui/..%2FCargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_token_and_its_role() {
    let engine = engine().await;
    let addr = serve(&engine, RouterConfig::new(tokens())).await;
    let client = reqwest::Client::new();
    let who = |t: Option<&'static str>| {
        let mut req = client.get(format!("http://{addr}/api/whoami"));
        if let Some(t) = t {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), json(r).await)
        }
    };
    assert_eq!(
        who(Some(OPS)).await,
        (
            200,
            json!({"name": "ops", "role": "operator", "see_payloads": true})
        )
    );
    assert_eq!(
        who(Some(VIEWER)).await,
        (
            200,
            json!({"name": "watcher", "role": "viewer", "see_payloads": false})
        )
    );
    let (status, body) = who(None).await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(who(Some("nope")).await.0, 401);

    let open = serve(&engine, RouterConfig::insecure_local()).await;
    let r = client
        .get(format!("http://{open}/api/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json(r).await,
        json!({"name": "local", "role": "admin", "see_payloads": true})
    );

    let doc: Value = client
        .get(format!("http://{addr}/api/openapi.json"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .map(json)
        .unwrap()
        .await;
    assert!(doc["paths"]["/api/whoami"]["get"].is_object());
    assert!(doc["paths"]["/api/decisions/waiting"]["get"].is_object());
    let stream_params = doc["paths"]["/api/events/stream"]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(stream_params.iter().any(|p| p["name"] == "access_token"));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_decisions_lists_the_human_steps_that_wait() {
    let engine = engine().await;
    let addr = serve(&engine, RouterConfig::new(tokens())).await;
    let client = reqwest::Client::new();
    let list = || async {
        let r = client
            .get(format!("http://{addr}/api/decisions/waiting"))
            .bearer_auth(VIEWER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        json(r).await
    };
    assert_eq!(list().await["items"], json!([]));
    let wf = "approval-v1".into();
    let a = engine.start(&wf, json!({"n": 1})).await.unwrap();
    let b = engine.start(&wf, json!({"n": 2})).await.unwrap();
    engine.wait_for(a, WAIT).await.unwrap();
    engine.wait_for(b, WAIT).await.unwrap();
    let v = list().await;
    assert_eq!(v["scanned"], 2);
    assert_eq!(v["truncated"], false);
    let items = v["items"].as_array().unwrap();
    let ids: Vec<&str> = items
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.to_string(), b.to_string()]);
    assert!(items.iter().all(|i| i["step_name"] == "approve"
        && i["workflow_id"] == "approval-v1"
        && i["waiting_since"].as_i64().unwrap() >= i["instance_created_at"].as_i64().unwrap()));

    engine
        .decide(a, "approve", "ops", floxy::Decision::Confirm, None)
        .await
        .unwrap();
    engine.wait_for(a, WAIT).await.unwrap();
    let v = list().await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["instance_id"], b.to_string());
    let r = client
        .get(format!("http://{addr}/api/decisions/waiting"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_accepts_the_token_as_a_query_parameter() {
    let engine = engine().await;
    let addr = serve(&engine, RouterConfig::new(tokens())).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/events/stream");
    let bad = client
        .get(format!("{url}?access_token=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let none = client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);

    let resp = client
        .get(format!("{url}?access_token={VIEWER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = engine
        .start(&"approval-v1".into(), json!({"secret": 7}))
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let first = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if let Some(end) = text.find("\n\n") {
                let frame = &text[..end];
                let data = frame.lines().find_map(|l| l.strip_prefix("data: "));
                if let Some(data) = data {
                    return serde_json::from_str::<Value>(data).unwrap();
                }
                text.drain(..end + 2);
            }
        }
        panic!("the stream ended");
    })
    .await
    .unwrap();
    assert_eq!(first["instance_id"], id.to_string());
    assert_eq!(first["event_type"], "workflow_started");
    // The query token's role applies: a viewer sees payloads redacted.
    assert!(!first.to_string().contains("\"secret\":7"), "{first}");
    engine.shutdown(Duration::from_secs(5)).await;
}
