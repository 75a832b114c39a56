//! HTTP handlers against real local HTTP and HTTPS servers (hyper, tokio-rustls, rcgen
//! certificates): request shape, retry classification, timeouts, TLS with a private CA,
//! mutual TLS, and through a real engine where the engine's part matters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{
    Builder, Engine, Handler, HandlerError, InstanceId, InstanceStatus, MemoryStore, Payload,
    StepContext, WorkKind, WorkflowId,
};
use floxy_cli::handlers::{DebugSink, HandlerSetupError, HttpHandler, HttpTls};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: serde_json::Value,
}

enum Reply {
    Send(u16, String),
    After(Duration, u16, String),
    Hang,
}

type Responder = Arc<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    tls_errors: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/hook", self.addr)
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    tls: Option<Arc<rustls::ServerConfig>>,
    reply: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tls_errors = Arc::new(Mutex::new(Vec::new()));
    let reply: Responder = Arc::new(reply);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (seen2, errors2) = (Arc::clone(&seen), Arc::clone(&tls_errors));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, errors, reply, acceptor) = (
                Arc::clone(&seen2),
                Arc::clone(&errors2),
                Arc::clone(&reply),
                acceptor.clone(),
            );
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, reply) = (Arc::clone(&seen), Arc::clone(&reply));
                    async move {
                        let (parts, body) = req.into_parts();
                        let bytes = body
                            .collect()
                            .await
                            .map(http_body_util::Collected::to_bytes)
                            .unwrap_or_default();
                        let s = Seen {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_owned(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned())
                                })
                                .collect(),
                            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
                        };
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push(s.clone());
                            seen.len()
                        };
                        let (status, body) = match reply(n, &s) {
                            Reply::Send(st, b) => (st, b),
                            Reply::After(d, st, b) => {
                                tokio::time::sleep(d).await;
                                (st, b)
                            }
                            Reply::Hang => std::future::pending().await,
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(a) => match a.accept(stream).await {
                        Ok(tls) => {
                            let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                        }
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    },
                }
            });
        }
    });
    Server {
        addr,
        seen,
        tls_errors,
    }
}

fn ok_json(v: serde_json::Value) -> impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static {
    move |_, _| Reply::Send(200, v.to_string())
}

fn ctx() -> StepContext {
    StepContext::detached(
        InstanceId::from_u128(0xabc),
        WorkflowId::new("wf", 1),
        "s",
        WorkKind::Execute,
    )
}

async fn call(h: &HttpHandler, input: serde_json::Value) -> Result<Payload, HandlerError> {
    h.execute(ctx(), Payload::new(input)).await
}

fn plain(name: &str, server: &Server) -> HttpHandler {
    HttpHandler::new(name, &server.url("http"), HttpTls::default()).unwrap()
}

#[tokio::test]
async fn request_headers_and_body_as_the_server_sees_them() {
    let server = serve(None, ok_json(json!({"ok": true}))).await;
    let h = plain("notify", &server);
    let out = call(&h, json!({"order": 7})).await.unwrap();
    assert_eq!(out.value(), &json!({"ok": true}));
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.headers["x-floxy-instance-id"],
        InstanceId::from_u128(0xabc).to_string()
    );
    assert_eq!(r.headers["x-floxy-step-name"], "s");
    assert_eq!(
        r.headers["x-floxy-idempotency-key"],
        ctx().idempotency_key()
    );
    assert_eq!(r.headers["x-floxy-retry-count"], "0");
    assert_eq!(r.headers["x-floxy-attempt"], "1");
    assert_eq!(r.headers["x-floxy-workflow-id"], "wf-v1");
    assert_eq!(r.body, json!({"metadata": {}, "data": {"order": 7}}));
}

#[tokio::test]
async fn status_and_body_classification() {
    let cases: Vec<(u16, &str, bool, &str)> = vec![
        (
            500,
            "database down",
            true,
            "HTTP 500 Internal Server Error: database down",
        ),
        (503, "", true, "HTTP 503 Service Unavailable (empty body)"),
        (
            429,
            "slow down",
            true,
            "HTTP 429 Too Many Requests: slow down",
        ),
        (
            400,
            "bad field x",
            false,
            "HTTP 400 Bad Request: bad field x",
        ),
        (
            404,
            "no such hook",
            false,
            "HTTP 404 Not Found: no such hook",
        ),
        (200, "", true, "HTTP 200 OK: empty body"),
        (200, "not json", true, "HTTP 200 OK: body is not JSON"),
    ];
    for (status, body, retryable, msg) in cases {
        let body = body.to_owned();
        let server = serve(None, move |_, _| Reply::Send(status, body.clone())).await;
        let e = call(&plain("h", &server), json!({})).await.unwrap_err();
        assert_eq!(e.retryable, retryable, "{status}: {e}");
        assert!(e.message.starts_with(msg), "{status}: {e}");
    }
    // The start of an error body only.
    let server = serve(None, |_, _| Reply::Send(502, "x".repeat(100_000))).await;
    let e = call(&plain("h", &server), json!({})).await.unwrap_err();
    assert!(e.retryable && e.message.len() < 2200, "{}", e.message.len());
    // Nobody listening: a retryable connection error naming the handler.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let h = HttpHandler::new("gone", &format!("http://{addr}/"), HttpTls::default()).unwrap();
    let e = call(&h, json!({})).await.unwrap_err();
    assert!(
        e.retryable && e.message.starts_with("handler gone: "),
        "{e}"
    );
}

#[tokio::test]
async fn outputs_over_the_payload_bound_fail_without_retry() {
    let big = serde_json::Value::String("a".repeat(1000)).to_string();
    let server = serve(None, move |_, _| Reply::Send(200, big.clone())).await;
    let e = call(&plain("h", &server).max_payload_bytes(500), json!({}))
        .await
        .unwrap_err();
    assert!(
        !e.retryable && e.message.contains("exceeds the limit of 500 bytes"),
        "{e}"
    );
    // Past four times the bound the body is not read.
    let e = call(&plain("h", &server).max_payload_bytes(100), json!({}))
        .await
        .unwrap_err();
    assert!(
        !e.retryable && e.message.contains("exceeds 400 bytes"),
        "{e}"
    );
}

#[tokio::test]
async fn own_timeout_and_per_step_timeouts() {
    let server = serve(None, |_, _| {
        Reply::After(Duration::from_millis(300), 200, "{}".into())
    })
    .await;
    let h = plain("slow", &server).timeout(Duration::from_millis(100));
    let e = call(&h, json!({})).await.unwrap_err();
    assert!(e.retryable, "{e:?}");
    assert_eq!(e.message, "handler slow: timed out after 100 ms");
    // A step registered with a longer timeout gets it (the runtime bounds it by the step's).
    let h = h.step_timeout("s", Duration::from_secs(5));
    assert_eq!(call(&h, json!({})).await.unwrap().value(), &json!({}));
}

#[tokio::test]
async fn cancellation_aborts_the_request() {
    let server = serve(None, |_, _| Reply::Hang).await;
    let h = plain("hang", &server);
    let ctx = ctx();
    let token = ctx.cancellation_token().clone();
    let call = tokio::spawn(async move { h.execute(ctx, Payload::new(json!({}))).await });
    let seen = Arc::clone(&server.seen);
    while seen.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    token.cancel();
    let e = tokio::time::timeout(WAIT, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(e.message.contains("cancelled"), "{e}");
}

fn engine() -> Engine {
    Engine::new(Arc::new(MemoryStore::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_retries_500_and_429_but_not_400() {
    // 500, then 429, then 200.
    let server = serve(None, |n, _| match n {
        1 => Reply::Send(500, "oops".into()),
        2 => Reply::Send(429, "later".into()),
        _ => Reply::Send(200, r#"{"done": true}"#.into()),
    })
    .await;
    let bad = serve(None, |_, _| Reply::Send(400, "invalid order".into())).await;
    let engine = engine();
    engine.register_handler("flaky", plain("flaky", &server));
    engine.register_handler("strict", plain("strict", &bad));
    let flaky = engine
        .register_workflow(
            Builder::new("flaky", 1)
                .step("call", "flaky")
                .max_retries(3)
                .retry_delay_ms(10)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let strict = engine
        .register_workflow(
            Builder::new("strict", 1)
                .step("call", "strict")
                .max_retries(3)
                .retry_delay_ms(10)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let done = engine
        .start_and_wait(&flaky, json!({}), WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(done.output.unwrap().value(), &json!({"done": true}));
    let steps = engine.steps(done.id).await.unwrap();
    assert_eq!(steps[0].attempts, 3);
    let retries: Vec<_> = server
        .seen()
        .iter()
        .map(|s| s.headers["x-floxy-retry-count"].clone())
        .collect();
    assert_eq!(retries, ["0", "1", "2"]);

    let done = engine
        .start_and_wait(&strict, json!({}), WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    let steps = engine.steps(done.id).await.unwrap();
    assert_eq!(steps[0].attempts, 1, "a 400 is not retried");
    assert_eq!(
        steps[0].error.as_deref(),
        Some("HTTP 400 Bad Request: invalid order")
    );
    assert_eq!(bad.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_step_timeout_and_compensation_metadata() {
    let slow = serve(None, |_, _| Reply::Hang).await;
    let hooks = serve(None, ok_json(json!({"ok": 1}))).await;
    let engine = engine();
    engine.register_handler("slow", plain("slow", &slow));
    engine.register_handler("hook", plain("hook", &hooks));
    let wf = engine
        .register_workflow(
            Builder::new("timeouts", 1)
                .step("reserve", "hook")
                .metadata("team", "shop")
                .on_failure("release", "hook")
                .then("pay", "slow")
                .timeout_ms(300)
                .max_retries(1)
                .retry_delay_ms(10)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let done = engine
        .start_and_wait(&wf, json!({"id": 1}), WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    let steps = engine.steps(done.id).await.unwrap();
    let pay = steps.iter().find(|s| &*s.step == "pay").unwrap();
    assert_eq!(pay.attempts, 2, "the timed-out call was retried");
    assert_eq!(pay.error.as_deref(), Some("timed out after 300 ms"));
    assert_eq!(slow.seen().len(), 2);
    let seen = hooks.seen();
    assert_eq!(seen.len(), 2, "reserve, then its compensation");
    assert_eq!(
        seen[0].body,
        json!({"metadata": {"team": "shop"}, "data": {"id": 1}})
    );
    assert_eq!(
        seen[1].body,
        json!({
            "metadata": {
                "team": "shop",
                "reason": "compensation",
                "compensation_reason": "failure",
                "step_output": {"ok": 1},
            },
            "data": {"id": 1},
        })
    );
    assert_eq!(seen[1].headers["x-floxy-step-name"], "reserve");
}

// ----- TLS ------------------------------------------------------------------------------

struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    client_cert: PathBuf,
    client_key: PathBuf,
    roots: rustls::RootCertStore,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = ca("floxy test CA");
    let ca2 = ca("some other CA");
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca1)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name
        .push(DnType::CommonName, "floxy client");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &ca1).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca1.der().clone()).unwrap();
    Pki {
        ca: write(dir.path(), "ca.pem", &ca1.pem()),
        other_ca: write(dir.path(), "other-ca.pem", &ca2.pem()),
        server_chain: vec![server.der().clone()],
        server_key: PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
        client_cert: write(dir.path(), "client.pem", &client.pem()),
        client_key: write(dir.path(), "client.key", &client_key.serialize_pem()),
        roots,
        dir,
    }
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(pki: &Pki, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = if require_client_cert {
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(pki.roots.clone()),
            provider(),
        )
        .build()
        .unwrap();
        b.with_client_cert_verifier(v)
    } else {
        b.with_no_client_auth()
    };
    Arc::new(
        b.with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
            .unwrap(),
    )
}

#[tokio::test]
async fn https_with_a_private_ca_wrong_ca_and_skip_verify() {
    let pki = pki();
    let server = serve(
        Some(server_config(&pki, false)),
        ok_json(json!({"tls": true})),
    )
    .await;
    let url = server.url("https");
    let tls = HttpTls {
        ca_file: Some(pki.ca.clone()),
        ..HttpTls::default()
    };
    let h = HttpHandler::new("notify", &url, tls).unwrap();
    assert_eq!(
        call(&h, json!({})).await.unwrap().value(),
        &json!({"tls": true})
    );

    for tls in [
        HttpTls {
            ca_file: Some(pki.other_ca.clone()),
            ..HttpTls::default()
        },
        HttpTls::default(),
    ] {
        let h = HttpHandler::new("notify", &url, tls).unwrap();
        let e = call(&h, json!({})).await.unwrap_err();
        assert_eq!(
            e.message,
            "handler notify: TLS: invalid peer certificate: UnknownIssuer"
        );
        assert!(e.retryable);
    }

    let tls = HttpTls {
        skip_verify: true,
        ..HttpTls::default()
    };
    let h = HttpHandler::new("insecure", &url, tls).unwrap();
    assert_eq!(
        call(&h, json!({})).await.unwrap().value(),
        &json!({"tls": true})
    );
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn mutual_tls_with_and_without_a_client_certificate() {
    let pki = pki();
    let server = serve(
        Some(server_config(&pki, true)),
        ok_json(json!({"mtls": true})),
    )
    .await;
    let url = server.url("https");
    let with_cert = HttpTls {
        ca_file: Some(pki.ca.clone()),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
        skip_verify: false,
    };
    let h = HttpHandler::new("mtls", &url, with_cert).unwrap();
    assert_eq!(
        call(&h, json!({})).await.unwrap().value(),
        &json!({"mtls": true})
    );

    let without = HttpTls {
        ca_file: Some(pki.ca.clone()),
        ..HttpTls::default()
    };
    let h = HttpHandler::new("mtls", &url, without).unwrap();
    let e = call(&h, json!({})).await.unwrap_err();
    assert!(e.message.starts_with("handler mtls: TLS: "), "{e}");
    assert!(e.message.contains("CertificateRequired"), "{e}");
    assert_eq!(
        server.seen().len(),
        1,
        "the request without a certificate never arrived"
    );
    assert!(!server.tls_errors.lock().unwrap().is_empty());
}

#[tokio::test]
async fn setup_errors_name_the_handler_and_the_file() {
    let pki = pki();
    let url = "https://127.0.0.1:1/";
    let missing = pki.dir.path().join("missing.pem");
    let e = HttpHandler::new(
        "notify",
        url,
        HttpTls {
            ca_file: Some(missing.clone()),
            ..HttpTls::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            HandlerSetupError::TlsFile {
                what: "ca_file",
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("handler notify: TLS: cannot read ca_file"),
        "{msg}"
    );
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");

    let garbage = write(pki.dir.path(), "garbage.pem", "hello\n");
    let e = HttpHandler::new(
        "notify",
        url,
        HttpTls {
            ca_file: Some(garbage),
            ..HttpTls::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, HandlerSetupError::TlsPem { .. }), "{e}");
    assert!(e.to_string().contains("no certificate"), "{e}");

    let e = HttpHandler::new(
        "notify",
        url,
        HttpTls {
            cert_file: Some(pki.client_cert.clone()),
            ..HttpTls::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "handler notify: TLS: cert_file is set without key_file"
    );

    // A key that is not the certificate's.
    let other_key = write(
        pki.dir.path(),
        "other.key",
        &KeyPair::generate().unwrap().serialize_pem(),
    );
    let e = HttpHandler::new(
        "notify",
        url,
        HttpTls {
            cert_file: Some(pki.client_cert.clone()),
            key_file: Some(other_key),
            ..HttpTls::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, HandlerSetupError::Tls { .. }), "{e}");

    let e = HttpHandler::new(
        "notify",
        url,
        HttpTls {
            cert_file: Some(pki.client_cert.clone()),
            key_file: Some(pki.ca.clone()),
            ..HttpTls::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            HandlerSetupError::TlsPem {
                what: "key_file",
                ..
            }
        ),
        "{e}"
    );

    for bad in ["ftp://x/", "not a url"] {
        let e = HttpHandler::new("n", bad, HttpTls::default()).unwrap_err();
        assert!(matches!(e, HandlerSetupError::InvalidUrl { .. }), "{e}");
        assert!(e.to_string().starts_with("handler n: invalid URL"), "{e}");
    }
}

#[tokio::test]
async fn debug_lines() {
    let server = serve(None, ok_json(json!({"a": 1}))).await;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = {
        let lines = Arc::clone(&lines);
        DebugSink::new(move |l| lines.lock().unwrap().push(l.to_owned()))
    };
    let h = plain("dbg", &server).debug_sink(Some(sink));
    call(&h, json!({"n": 1})).await.unwrap();
    assert_eq!(
        *lines.lock().unwrap(),
        [
            r#"[DEBUG] Handler 'dbg' input: {"n":1}"#,
            r#"[DEBUG] Handler 'dbg' output: {"a":1}"#,
        ]
    );
}
