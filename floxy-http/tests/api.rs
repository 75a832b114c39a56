//! The HTTP API end to end: every route on the memory store and on PostgreSQL (a throwaway
//! cluster), happy paths and each error status, roles, redaction, paging bounds, body
//! limits; the event stream over a real TCP listener.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    // Requests and responses in a row: r, a, b read as what they are.
    clippy::many_single_char_names,
    clippy::similar_names
)]

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use floxy::{
    Builder, Engine, HandlerError, InstanceId, InstanceStatus, MemoryStore, Payload, Store,
};
use floxy_http::{ConfigError, Role, RouterConfig, TokenEntry, Tokens, hash_token};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const ADMIN: &str = "admin-secret";
const OPS: &str = "ops-secret";
const VIEWER: &str = "viewer-secret";
const AUDITOR: &str = "auditor-secret";
const WAIT: Duration = Duration::from_secs(30);

fn tokens() -> Tokens {
    Tokens::from_entries([
        TokenEntry::new("root", Role::Admin, hash_token(ADMIN)).unwrap(),
        TokenEntry::new("ops", Role::Operator, hash_token(OPS)).unwrap(),
        TokenEntry::new("watcher", Role::Viewer, hash_token(VIEWER)).unwrap(),
        TokenEntry::new("auditor", Role::Viewer, hash_token(AUDITOR))
            .unwrap()
            .see_payloads(true),
    ])
    .unwrap()
}

/// An engine on `store` with the test handlers and workflows registered, workers running.
async fn engine(store: Arc<dyn Store>) -> Engine {
    let engine = Engine::builder(store)
        .workers(4)
        .poll_interval_ms(50)
        .worker_id("http-test")
        .build();
    engine.register_fn("ok", |_ctx, input: Payload| async move { Ok(input) });
    engine.register_fn("picky", |_ctx, input: Payload| async move {
        if input.value()["fixed"] == json!(true) {
            Ok(input)
        } else {
            Err(HandlerError::retryable("not fixed"))
        }
    });
    engine
        .register_workflow(
            Builder::new("order", 1)
                .step("reserve", "ok")
                .on_failure("release", "ok")
                .then("charge", "ok")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
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
    engine
        .register_workflow(
            Builder::new("parked", 1)
                .dlq(true)
                .step("picky", "picky")
                .max_retries(0)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    engine
}

struct Api {
    router: Router,
    engine: Engine,
}

struct Resp {
    status: StatusCode,
    json: Value,
}

impl Api {
    fn new(engine: Engine) -> Self {
        let router = floxy_http::router(engine.clone(), RouterConfig::new(tokens())).unwrap();
        Self { router, engine }
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Resp { status, json }
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.raw(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.raw(
            Method::POST,
            path,
            Some(token),
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }

    /// Starts an instance over HTTP and waits until it settles.
    async fn start(&self, wf: &str, input: Value) -> InstanceId {
        let r = self
            .post(
                &format!("/api/workflows/{wf}/start"),
                OPS,
                json!({ "input": input }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        let id: InstanceId = r.json["instance_id"].as_str().unwrap().parse().unwrap();
        self.engine.wait_for(id, WAIT).await.unwrap();
        id
    }

    async fn total_instances(&self) -> u64 {
        let r = self.get("/api/stats/summary", VIEWER).await;
        assert_eq!(r.status, StatusCode::OK);
        r.json["total_instances"].as_u64().unwrap()
    }

    async fn status(&self, id: InstanceId) -> InstanceStatus {
        self.engine.instance(id).await.unwrap().unwrap().status
    }
}

#[track_caller]
fn expect(r: &Resp, status: StatusCode) {
    assert_eq!(r.status, status, "body: {}", r.json);
    if !status.is_success() {
        assert!(
            r.json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "an error names its reason: {}",
            r.json
        );
    }
}

fn event_kinds(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_owned())
        .collect()
}

async fn suite(store: Arc<dyn Store>) {
    let engine = engine(store).await;
    let api = Api::new(engine.clone());

    // ----- configuration and authentication
    assert!(matches!(
        floxy_http::router(engine.clone(), RouterConfig::new(Tokens::new())),
        Err(ConfigError::NoTokens)
    ));
    let open = floxy_http::router(engine.clone(), RouterConfig::insecure_local()).unwrap();
    let r = open
        .oneshot(Request::get("/api/workflows").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    expect(
        &api.raw(Method::GET, "/api/workflows", None, None).await,
        StatusCode::UNAUTHORIZED,
    );
    expect(
        &api.get("/api/workflows", "not-a-token").await,
        StatusCode::UNAUTHORIZED,
    );
    expect(&api.get("/api/nope", VIEWER).await, StatusCode::NOT_FOUND);

    // ----- workflows
    let r = api.get("/api/workflows", VIEWER).await;
    expect(&r, StatusCode::OK);
    let ids: Vec<&str> = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["approval-v1", "order-v1", "parked-v1"]);
    let r = api.get("/api/workflows/order-v1", VIEWER).await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["name"], "order");
    assert_eq!(r.json["version"], 1);
    assert_eq!(r.json["graph"]["nodes"][0]["id"], "reserve");
    assert_eq!(r.json["graph"]["nodes"][0]["compensation"], "ok");
    assert_eq!(
        r.json["graph"]["edges"],
        json!([{"from": "reserve", "to": "charge", "kind": "next"}])
    );
    expect(
        &api.get("/api/workflows/no-version", VIEWER).await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.get("/api/workflows/ghost-v1", VIEWER).await,
        StatusCode::NOT_FOUND,
    );

    // ----- start: roles, bodies, idempotency
    let before = api.total_instances().await;
    let start = "/api/workflows/order-v1/start";
    expect(
        &api.post(start, VIEWER, json!({"input": {}})).await,
        StatusCode::FORBIDDEN,
    );
    expect(
        &api.post(start, AUDITOR, json!({"input": {}})).await,
        StatusCode::FORBIDDEN,
    );
    expect(
        &api.raw(Method::POST, start, Some(OPS), Some(b"{not json".to_vec()))
            .await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.post(start, OPS, json!({"input": {}, "bogus": 1})).await,
        StatusCode::BAD_REQUEST,
    );
    let big = vec![b' '; floxy_http::DEFAULT_MAX_BODY_BYTES + 1];
    expect(
        &api.raw(Method::POST, start, Some(OPS), Some(big)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    let big_input = json!({ "input": { "blob": "x".repeat(1024 * 1024 + 16) } });
    expect(
        &api.post(start, OPS, big_input).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    // Nested past the engine's bound (64 levels) but within the JSON parser's: a bad body.
    let deep = (0..70).fold(json!(1), |v, _| serde_json::Value::Array(vec![v]));
    let reply = api.post(start, OPS, json!({ "input": deep })).await;
    expect(&reply, StatusCode::BAD_REQUEST);
    assert!(
        reply.json.to_string().contains("deeper than"),
        "{}",
        reply.json
    );
    expect(
        &api.post("/api/workflows/ghost-v1/start", OPS, json!({}))
            .await,
        StatusCode::NOT_FOUND,
    );
    expect(
        &api.post("/api/workflows/ghost/start", OPS, json!({})).await,
        StatusCode::BAD_REQUEST,
    );
    assert_eq!(
        api.total_instances().await,
        before,
        "refused starts wrote nothing"
    );
    let a = api
        .post(
            start,
            OPS,
            json!({"input": {"n": 1}, "idempotency_key": "k1"}),
        )
        .await;
    expect(&a, StatusCode::CREATED);
    let b = api
        .post(
            start,
            ADMIN,
            json!({"input": {"n": 2}, "idempotency_key": "k1"}),
        )
        .await;
    expect(&b, StatusCode::CREATED);
    assert_eq!(a.json["instance_id"], b.json["instance_id"]);
    let first: InstanceId = a.json["instance_id"].as_str().unwrap().parse().unwrap();
    let done = engine.wait_for(first, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);

    // ----- instance detail, steps, events, redaction
    let path = format!("/api/instances/{first}");
    let r = api.get(&path, OPS).await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["status"], "completed");
    assert_eq!(r.json["input"], json!({"n": 1}));
    assert_eq!(r.json["output"], json!({"n": 1}));
    let steps = r.json["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    let reserve = steps.iter().find(|s| s["step_name"] == "reserve").unwrap();
    assert_eq!(reserve["status"], "completed");
    assert_eq!(reserve["attempts"], 1);
    assert!(reserve["started_at"].is_i64() && reserve["ended_at"].is_i64());
    assert_eq!(r.json["graph"]["nodes"].as_array().unwrap().len(), 2);
    let r = api.get(&path, VIEWER).await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["input"], "[redacted]");
    assert_eq!(r.json["output"], "[redacted]");
    assert_eq!(r.json["steps"][0]["input"], "[redacted]");
    assert_eq!(r.json["steps"][0]["output"], "[redacted]");
    let r = api.get(&path, AUDITOR).await;
    assert_eq!(r.json["input"], json!({"n": 1}));
    let r = api.get(&format!("{path}/steps"), VIEWER).await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json.as_array().unwrap().len(), 2);
    assert_eq!(r.json[1]["output"], "[redacted]");
    let r = api.get(&format!("{path}/events"), VIEWER).await;
    expect(&r, StatusCode::OK);
    let kinds = event_kinds(&r.json);
    assert_eq!(kinds.first().map(String::as_str), Some("workflow_started"));
    assert_eq!(kinds.last().map(String::as_str), Some("workflow_completed"));
    let seq1 = r.json[0]["seq"].as_u64().unwrap();
    let r = api
        .get(&format!("{path}/events?after={seq1}&limit=1"), VIEWER)
        .await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json.as_array().unwrap().len(), 1);
    assert_eq!(r.json[0]["event_type"], kinds[1]);
    expect(
        &api.get(&format!("{path}/events?limit=1001"), VIEWER).await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.get(&format!("{path}/events?limit=x"), VIEWER).await,
        StatusCode::BAD_REQUEST,
    );
    for suffix in ["", "/steps", "/events"] {
        expect(
            &api.get(&format!("/api/instances/not-a-uuid{suffix}"), VIEWER)
                .await,
            StatusCode::BAD_REQUEST,
        );
        expect(
            &api.get(
                &format!("/api/instances/{}{suffix}", InstanceId::from_u128(7)),
                VIEWER,
            )
            .await,
            StatusCode::NOT_FOUND,
        );
    }

    // ----- listings and paging
    let mut started = vec![first];
    for n in 0..4 {
        started.push(api.start("order-v1", json!({ "n": n + 10 })).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => {
                format!("/api/instances?workflow=order-v1&status=completed&page_size=2&cursor={c}")
            }
            None => "/api/instances?workflow=order-v1&status=completed&page_size=2".to_owned(),
        };
        let r = api.get(&q, VIEWER).await;
        expect(&r, StatusCode::OK);
        pages += 1;
        let items = r.json["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        for i in items {
            assert_eq!(i["input"], "[redacted]");
            seen.push(i["id"].as_str().unwrap().parse::<InstanceId>().unwrap());
        }
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    started.sort();
    assert_eq!(
        seen, started,
        "the cursor walk sees every instance once, in id order"
    );
    assert_eq!(pages, 3);
    let r = api
        .get("/api/instances?workflow=order-v1&page=2&page_size=2", OPS)
        .await;
    expect(&r, StatusCode::OK);
    let page2: Vec<&str> = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(page2, [started[2].to_string(), started[3].to_string()]);
    assert_eq!(r.json["page"], 2);
    let r = api
        .get("/api/instances?workflow=order-v1&page=9&page_size=2", OPS)
        .await;
    expect(&r, StatusCode::OK);
    assert!(r.json["items"].as_array().unwrap().is_empty());
    let r = api
        .get("/api/workflows/order-v1/instances?page_size=10", VIEWER)
        .await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["items"].as_array().unwrap().len(), 5);
    expect(
        &api.get("/api/workflows/ghost-v1/instances", VIEWER).await,
        StatusCode::NOT_FOUND,
    );
    let created = engine
        .instance(started[1])
        .await
        .unwrap()
        .unwrap()
        .created_at
        .0;
    let r = api
        .get(
            &format!("/api/instances?workflow=order-v1&created_from={created}&page_size=100"),
            VIEWER,
        )
        .await;
    expect(&r, StatusCode::OK);
    let from: Vec<InstanceId> = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut want = Vec::new();
    for id in &started {
        if engine.instance(*id).await.unwrap().unwrap().created_at.0 >= created {
            want.push(*id);
        }
    }
    assert_eq!(from, want);
    let r = api
        .get(
            &format!(
                "/api/instances?workflow=order-v1&created_to={}",
                created - 1_000_000
            ),
            VIEWER,
        )
        .await;
    expect(&r, StatusCode::OK);
    assert!(r.json["items"].as_array().unwrap().is_empty());
    for bad in [
        "page_size=0",
        "page_size=1001",
        "page=0",
        "page=10000&page_size=1000",
        "page=2&cursor=x",
        "status=bogus",
        "workflow=bogus",
        "cursor=not-a-uuid",
        "created_from=5&created_to=4",
        "created_from=soon",
    ] {
        expect(
            &api.get(&format!("/api/instances?{bad}"), VIEWER).await,
            StatusCode::BAD_REQUEST,
        );
    }
    expect(
        &api.get("/api/instances/active?page_size=5000", VIEWER)
            .await,
        StatusCode::BAD_REQUEST,
    );

    // ----- human decisions
    let wait1 = api.start("approval-v1", json!({"order": 1})).await;
    let wait2 = api.start("approval-v1", json!({"order": 2})).await;
    let wait3 = api.start("approval-v1", json!({"order": 3})).await;
    let r = api.get("/api/instances/active", VIEWER).await;
    expect(&r, StatusCode::OK);
    let active: BTreeSet<String> = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    for w in [wait1, wait2, wait3] {
        assert!(active.contains(&w.to_string()));
    }
    assert!(!active.contains(&first.to_string()));
    let r = api.get("/api/instances/active?page_size=1", VIEWER).await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    assert!(r.json["next_cursor"].is_string());
    let confirm = format!("/api/instances/{wait1}/make-decision/confirm");
    expect(
        &api.post(&confirm, VIEWER, json!({"message": "lgtm"})).await,
        StatusCode::FORBIDDEN,
    );
    assert_eq!(
        engine
            .steps(wait1)
            .await
            .unwrap()
            .iter()
            .find(|s| &*s.step == "approve")
            .unwrap()
            .status,
        floxy::StepStatus::WaitingDecision,
        "a viewer's decision changed nothing"
    );
    expect(
        &api.post(&confirm, OPS, json!({"message": "lgtm"})).await,
        StatusCode::OK,
    );
    expect(
        &api.post(&confirm, OPS, json!({"message": "again"})).await,
        StatusCode::CONFLICT,
    );
    let done = engine.wait_for(wait1, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    let r = api.get(&format!("/api/instances/{wait1}"), OPS).await;
    let step = |json: &Value, name: &str| {
        json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step_name"] == name)
            .unwrap()
            .clone()
    };
    let approve = step(&r.json, "approve");
    assert_eq!(approve["decision"]["decided_by"], "ops");
    assert_eq!(approve["decision"]["decision"], "confirm");
    assert_eq!(approve["decision"]["comment"], "lgtm");
    let r = api.get(&format!("/api/instances/{wait1}"), VIEWER).await;
    assert_eq!(
        step(&r.json, "approve")["decision"]["comment"],
        "[redacted]"
    );
    let reject_step = format!("/api/instances/{wait2}/steps/approve/make-decision/reject");
    expect(
        &api.post(&reject_step, VIEWER, json!({})).await,
        StatusCode::FORBIDDEN,
    );
    expect(
        &api.post(
            &format!("/api/instances/{wait2}/steps/nope/make-decision/reject"),
            OPS,
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
    );
    expect(
        &api.post(
            &format!("/api/instances/{wait2}/steps/prep/make-decision/confirm"),
            OPS,
            json!({}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.post(&reject_step, OPS, json!({"message": "no"})).await,
        StatusCode::OK,
    );
    assert_eq!(api.status(wait2).await, InstanceStatus::Aborted);
    expect(
        &api.post(
            &format!("/api/instances/{first}/make-decision/reject"),
            OPS,
            json!({}),
        )
        .await,
        StatusCode::CONFLICT,
    );
    expect(
        &api.post("/api/instances/xyz/make-decision/reject", OPS, json!({}))
            .await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.post(
            &format!(
                "/api/instances/{}/make-decision/confirm",
                InstanceId::from_u128(9)
            ),
            OPS,
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
    );
    expect(
        &api.post(
            &format!("/api/instances/{wait3}/steps/approve/make-decision/confirm"),
            OPS,
            json!({"bogus": true}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    );

    // ----- cancel and abort
    let cancel = format!("/api/instances/{wait3}/cancel");
    expect(
        &api.post(&cancel, VIEWER, json!({"reason": "x"})).await,
        StatusCode::FORBIDDEN,
    );
    assert_eq!(api.status(wait3).await, InstanceStatus::Running);
    expect(
        &api.post(&cancel, OPS, json!({"reason": "customer left"}))
            .await,
        StatusCode::OK,
    );
    let done = engine.wait_for(wait3, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Cancelled);
    let r = api
        .get(&format!("/api/instances/{wait3}/events"), VIEWER)
        .await;
    let started_ev = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "cancellation_started")
        .unwrap();
    assert_eq!(
        started_ev["payload"],
        json!({"reason": "customer left", "by": "ops"})
    );
    expect(
        &api.post(&cancel, OPS, json!({})).await,
        StatusCode::CONFLICT,
    );
    let wait4 = api.start("approval-v1", json!({})).await;
    let abort = format!("/api/instances/{wait4}/abort");
    expect(
        &api.post(&abort, VIEWER, json!({})).await,
        StatusCode::FORBIDDEN,
    );
    assert_eq!(api.status(wait4).await, InstanceStatus::Running);
    // Floxy's clients may send no body at all.
    expect(
        &api.raw(Method::POST, &abort, Some(ADMIN), None).await,
        StatusCode::OK,
    );
    assert_eq!(api.status(wait4).await, InstanceStatus::Aborted);
    let r = api
        .get(&format!("/api/instances/{wait4}/events"), VIEWER)
        .await;
    let ev = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "abort_started")
        .unwrap();
    assert_eq!(ev["payload"]["by"], "root");
    expect(
        &api.post(&abort, OPS, json!({})).await,
        StatusCode::CONFLICT,
    );
    expect(
        &api.post("/api/instances/1/abort", OPS, json!({})).await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.post(
            &format!("/api/instances/{}/cancel", InstanceId::from_u128(5)),
            OPS,
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
    );
    expect(
        &api.post(&abort, OPS, json!({"reason": 5})).await,
        StatusCode::BAD_REQUEST,
    );

    // ----- DLQ
    let parked = api
        .start("parked-v1", json!({"fixed": false, "card": "4111"}))
        .await;
    assert_eq!(api.status(parked).await, InstanceStatus::Dlq);
    let r = api.get("/api/dlq", VIEWER).await;
    expect(&r, StatusCode::OK);
    let items = r.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["input"], "[redacted]");
    assert_eq!(items[0]["step_name"], "picky");
    assert_eq!(items[0]["instance_id"], parked.to_string());
    let dlq = items[0]["id"].as_u64().unwrap();
    let r = api.get(&format!("/api/dlq/{dlq}"), AUDITOR).await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["input"]["card"], "4111");
    assert_eq!(r.json["error"], "not fixed");
    let r = api
        .get(
            &format!("/api/dlq?instance={parked}&page=1&page_size=1"),
            OPS,
        )
        .await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    let r = api.get("/api/dlq?workflow=order-v1", OPS).await;
    assert!(r.json["items"].as_array().unwrap().is_empty());
    let r = api.get("/api/dlq?page=3&page_size=1", OPS).await;
    expect(&r, StatusCode::OK);
    assert!(r.json["items"].as_array().unwrap().is_empty());
    expect(
        &api.get("/api/dlq?page_size=0", OPS).await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.get("/api/dlq?instance=zz", OPS).await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.get("/api/dlq/abc", VIEWER).await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.get("/api/dlq/999999", VIEWER).await,
        StatusCode::NOT_FOUND,
    );
    let requeue = format!("/api/dlq/{dlq}/requeue");
    let fixed = json!({"new_input": {"fixed": true}});
    expect(
        &api.post(&requeue, VIEWER, fixed.clone()).await,
        StatusCode::FORBIDDEN,
    );
    assert_eq!(api.status(parked).await, InstanceStatus::Dlq);
    expect(
        &api.post("/api/dlq/999999/requeue", OPS, fixed.clone())
            .await,
        StatusCode::NOT_FOUND,
    );
    expect(
        &api.post("/api/dlq/x/requeue", OPS, fixed.clone()).await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.raw(Method::POST, &requeue, Some(OPS), Some(b"[1,".to_vec()))
            .await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.post(&requeue, OPS, fixed.clone()).await,
        StatusCode::OK,
    );
    let done = engine.wait_for(parked, WAIT).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    let r = api
        .get(&format!("/api/instances/{parked}/events"), VIEWER)
        .await;
    let ev = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "dlq_requeued")
        .unwrap();
    assert_eq!(ev["payload"]["by"], "ops");
    expect(&api.post(&requeue, OPS, fixed).await, StatusCode::NOT_FOUND);

    // ----- stats
    let r = api.get("/api/stats", VIEWER).await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["instances_by_status"]["completed"], 7);
    assert_eq!(r.json["dlq"], 0);
    let r = api.get("/api/stats/summary", VIEWER).await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["total_workflows"], 3);
    assert_eq!(r.json["total_instances"], 10);
    assert_eq!(r.json["completed_instances"], 7);
    assert_eq!(r.json["aborted_instances"], 2);
    assert_eq!(r.json["cancelled_instances"], 1);
    assert_eq!(r.json["active_instances"], 0);

    // ----- OpenAPI: every documented route answers (not "no such route"), and the
    // document lists exactly the router's routes.
    let r = api.get("/api/openapi.json", VIEWER).await;
    expect(&r, StatusCode::OK);
    let doc = &r.json;
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = ROUTES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(documented, expected);
    for route in ROUTES {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{id}", "not-an-id")
            .replace("{step}", "approve");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let r = if path.ends_with("/stream") {
            // The stream does not end: only its status matters.
            let req = Request::get(&path)
                .header("authorization", format!("Bearer {VIEWER}"))
                .body(Body::empty())
                .unwrap();
            let resp = api.router.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            continue;
        } else {
            api.raw(method, &path, Some(VIEWER), Some(b"{}".to_vec()))
                .await
        };
        assert_ne!(r.json["message"], "no such route", "{route}");
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{route}");
    }

    // ----- registering flows at run time (admin; handlers of this process only)
    let yaml = "handlers:\n  - { name: ok, exec: ./ok.sh }\nflows:\n  - name: shipping\n    steps:\n      - { name: pack, handler: ok }\n      - { name: send, handler: ok }\n";
    let post_yaml = |token: &'static str, text: String| {
        let router = api.router.clone();
        async move {
            let req = Request::post("/api/workflows")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/yaml")
                .body(Body::from(text))
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            Resp {
                status,
                json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            }
        }
    };
    for token in [VIEWER, OPS] {
        expect(
            &post_yaml(token, yaml.to_owned()).await,
            StatusCode::FORBIDDEN,
        );
    }
    expect(
        &api.get("/api/workflows/shipping-v1", VIEWER).await,
        StatusCode::NOT_FOUND,
    );
    let r = post_yaml(ADMIN, yaml.to_owned()).await;
    expect(&r, StatusCode::CREATED);
    assert_eq!(r.json["registered"], json!(["shipping-v1"]));
    let r = api.get("/api/workflows/shipping-v1", VIEWER).await;
    expect(&r, StatusCode::OK);
    assert_eq!(
        r.json["graph"]["edges"],
        json!([{"from": "pack", "to": "send", "kind": "next"}])
    );
    let shipped = api.start("shipping-v1", json!({"box": 1})).await;
    assert_eq!(api.status(shipped).await, InstanceStatus::Completed);
    // The same content again is fine; other content under the same id is a conflict.
    expect(
        &post_yaml(ADMIN, yaml.to_owned()).await,
        StatusCode::CREATED,
    );
    let changed = yaml.replace("name: send, handler: ok", "name: post, handler: ok");
    expect(&post_yaml(ADMIN, changed).await, StatusCode::CONFLICT);
    // A handler this process does not have is refused, whatever the file's exec says.
    let foreign = yaml
        .replace("shipping", "evil")
        .replace(
            "{ name: send, handler: ok }",
            "{ name: send, handler: rm_rf }",
        )
        .replace(
            "  - { name: ok, exec: ./ok.sh }",
            "  - { name: ok, exec: ./ok.sh }\n  - { name: rm_rf, exec: ./rm.sh }",
        );
    let r = post_yaml(ADMIN, foreign).await;
    expect(&r, StatusCode::BAD_REQUEST);
    assert!(
        r.json["message"].as_str().unwrap().contains("rm_rf"),
        "{}",
        r.json
    );
    expect(
        &api.get("/api/workflows/evil-v1", VIEWER).await,
        StatusCode::NOT_FOUND,
    );
    // Spec errors carry their place.
    let r = post_yaml(
        ADMIN,
        yaml.replace("handler: ok }", "handler: ok, max_retries: many }"),
    )
    .await;
    expect(&r, StatusCode::BAD_REQUEST);
    assert!(
        r.json["message"].as_str().unwrap().starts_with("request:"),
        "{}",
        r.json
    );
    // JSON: wrapped text, or the flow file itself.
    let wrapped = json!({"format": "yaml", "text": yaml.replace("shipping", "wrapped")});
    let r = api.post("/api/workflows", ADMIN, wrapped).await;
    expect(&r, StatusCode::CREATED);
    assert_eq!(r.json["registered"], json!(["wrapped-v1"]));
    let as_json = json!({
        "handlers": [{"name": "ok", "exec": "./ok.sh"}],
        "flows": [{"name": "plain", "version": 3, "steps": [{"name": "only", "handler": "ok"}]}]
    });
    let r = api.post("/api/workflows", ADMIN, as_json).await;
    expect(&r, StatusCode::CREATED);
    assert_eq!(r.json["registered"], json!(["plain-v3"]));
    expect(
        &api.post(
            "/api/workflows",
            ADMIN,
            json!({"format": "toml", "text": ""}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    );
    expect(
        &api.raw(
            Method::POST,
            "/api/workflows",
            Some(ADMIN),
            Some(b"{".to_vec()),
        )
        .await,
        StatusCode::BAD_REQUEST,
    );
    let huge = format!(
        "{yaml}#{}\n",
        "x".repeat(floxy_http::DEFAULT_MAX_BODY_BYTES)
    );
    expect(&post_yaml(ADMIN, huge).await, StatusCode::PAYLOAD_TOO_LARGE);

    // ----- cleanup (last: it removes the ended instances)
    expect(
        &api.post("/api/cleanup", OPS, json!({"days_to_keep": 0}))
            .await,
        StatusCode::FORBIDDEN,
    );
    assert_eq!(api.total_instances().await, 11);
    expect(
        &api.post(
            "/api/cleanup",
            ADMIN,
            json!({"days_to_keep": 1, "older_than_ms": 1}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    );
    let r = api
        .post("/api/cleanup", ADMIN, json!({"days_to_keep": 30}))
        .await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["deleted_count"], 0);
    tokio::time::sleep(Duration::from_millis(5)).await; // updated_at strictly before the cutoff
    let r = api
        .post("/api/cleanup", ADMIN, json!({"older_than_ms": 0}))
        .await;
    expect(&r, StatusCode::OK);
    assert_eq!(r.json["deleted_count"], 11);
    assert_eq!(api.total_instances().await, 0);

    engine.shutdown(Duration::from_secs(5)).await;
}

/// Every route of the router, as `METHOD path`.
const ROUTES: [&str; 26] = [
    "GET /api/workflows",
    "POST /api/workflows",
    "GET /api/workflows/{id}",
    "GET /api/workflows/{id}/instances",
    "POST /api/workflows/{id}/start",
    "GET /api/instances",
    "GET /api/instances/active",
    "GET /api/instances/{id}",
    "GET /api/instances/{id}/steps",
    "GET /api/instances/{id}/events",
    "POST /api/instances/{id}/cancel",
    "POST /api/instances/{id}/abort",
    "POST /api/instances/{id}/make-decision/confirm",
    "POST /api/instances/{id}/make-decision/reject",
    "POST /api/instances/{id}/steps/{step}/make-decision/confirm",
    "POST /api/instances/{id}/steps/{step}/make-decision/reject",
    "GET /api/stats",
    "GET /api/stats/summary",
    "GET /api/dlq",
    "GET /api/dlq/{id}",
    "POST /api/dlq/{id}/requeue",
    "POST /api/cleanup",
    "GET /api/events/stream",
    "GET /api/openapi.json",
    "GET /api/whoami",
    "GET /api/decisions/waiting",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_the_memory_store() {
    suite(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_postgres() {
    let store = floxy_store_postgres::testing::test_store(floxy::PostgresLayout::Plain).await;
    suite(Arc::new(store)).await;
}

#[test]
fn token_files() {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("tokens");
    std::fs::write(
        &lines,
        format!(
            "# name role sha256\nroot admin {}\nwatch viewer {} see_payloads\n",
            hash_token("a"),
            hash_token("b")
        ),
    )
    .unwrap();
    let t = Tokens::from_file(&lines).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t.check("a").unwrap().role, Role::Admin);
    assert_eq!(t.check("b").unwrap().see_payloads, Some(true));
    assert!(t.check("c").is_none());
    let json = dir.path().join("tokens.json");
    std::fs::write(
        &json,
        json!([{"name": "ops", "role": "operator", "sha256": hash_token("o")}]).to_string(),
    )
    .unwrap();
    let t = Tokens::from_file(&json).unwrap();
    assert_eq!(t.check("o").unwrap().name, "ops");
    for bad in [
        "root admin 1234",
        "root boss 0000000000000000000000000000000000000000000000000000000000000000",
        "root",
        "a admin 0000000000000000000000000000000000000000000000000000000000000000 x",
    ] {
        assert!(Tokens::parse(bad).is_err(), "{bad}");
    }
    let twice = format!("a admin {h}\na viewer {h}", h = hash_token("z"));
    assert!(Tokens::parse(&twice).is_err());
    assert!(Tokens::from_file(dir.path().join("missing")).is_err());
}

/// The event stream over a real TCP listener: a client sees an instance's lifecycle events
/// live, in commit order, filtered by instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_over_tcp() {
    use futures::StreamExt;
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let router = floxy_http::router(engine.clone(), RouterConfig::new(tokens())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(floxy_http::serve(listener, router));
    let client = reqwest::Client::new();
    let unauth = client
        .get(format!("http://{addr}/api/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    // Subscribe to workflow order-v1, then start one approval (filtered out) and one order.
    let resp = client
        .get(format!("http://{addr}/api/events/stream?workflow=order-v1"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // The subscription exists once the response headers are in: start now.
    let other = engine
        .start(&"approval-v1".into(), json!({}))
        .await
        .unwrap();
    let id = engine
        .start(&"order-v1".into(), json!({"secret": 1}))
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut live: Vec<Value> = Vec::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                    let v: Value = serde_json::from_str(data).unwrap();
                    let event_line = frame.lines().find_map(|l| l.strip_prefix("event: "));
                    assert_eq!(event_line, v["event_type"].as_str());
                    let last = v["event_type"] == "workflow_completed";
                    live.push(v);
                    if last {
                        return;
                    }
                }
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.unwrap();
    assert!(live.iter().all(|e| e["instance_id"] == id.to_string()));
    assert!(live.iter().all(|e| e["instance_id"] != other.to_string()));
    let kinds: Vec<&str> = live
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    let stored: Vec<String> = engine
        .events(id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind.as_str().to_owned())
        .collect();
    assert_eq!(
        kinds, stored,
        "the stream shows the instance's events in commit order"
    );

    // Filter by instance.
    let resp = client
        .get(format!("http://{addr}/api/events/stream?instance={other}"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    engine
        .decide(other, "approve", "me", floxy::Decision::Confirm, None)
        .await
        .unwrap();
    let mut text = String::new();
    let first = async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("human_decision_confirmed") {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, first).await.unwrap();
    assert!(text.contains(&other.to_string()));
    assert!(!text.contains(&id.to_string()));
    let bad = client
        .get(format!("http://{addr}/api/events/stream?instance=nope"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    server.abort();
    engine.shutdown(Duration::from_secs(5)).await;
}
