//! `floxyd` serving the HTTP API and console as a process: refused settings (exit 2, nothing
//! served), tokens from a file and the environment over HTTPS, `--insecure-local` on
//! loopback, a shutdown that does not wait for open event streams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELLO: &str = "handlers:\n  - name: greet\n    exec: |\n      echo \"$INPUT\" | jq -c '{greeting: (\"hello, \" + (.name // \"world\"))}'\nflows:\n  - name: hello\n    steps: [greet]\n";
const OPS: &str = "ops-token-5f1c";
const VIEWER: &str = "viewer-token-9a2e";
const ENV_ADMIN: &str = "env-admin-token-77d0";

fn sha256(token: &str) -> String {
    floxy_http::hash_token(token)
}

/// floxyd with `args` (beyond the flow file) that must refuse to start: exit 2, the
/// message in the log, no API line.
#[track_caller]
fn refused(flows: &str, env: &[(&str, &str)], args: &[&str], needle: &str) {
    let mut d = Daemon::start_with(flows, env, args);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), BAD_INPUT, "{args:?}");
    let log = d.log_text();
    assert!(log.contains(needle), "{args:?}: no {needle:?} in:\n{log}");
    assert!(!log.contains("HTTP API listening"), "{log}");
}

#[test]
fn api_settings_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let flows = write(dir.path(), "hello.yaml", HELLO);
    let store = format!("redb:{}", dir.path().join("d.redb").display());
    let env = [("FLOXY_STORE", store.as_str())];
    let tokens = write(
        dir.path(),
        "tokens",
        &format!("# ops\nops operator {}\n", sha256(OPS)),
    );
    let bad_tokens = write(dir.path(), "bad-tokens", "ops superuser abc\n");
    refused(
        &flows,
        &env,
        &["--http-addr", "127.0.0.1:0"],
        "needs tokens: --http-tokens FILE or FLOXY_HTTP_TOKENS",
    );
    refused(
        &flows,
        &env,
        &["--http-addr", "0.0.0.0:0", "--insecure-local"],
        "only on a loopback address; 0.0.0.0:0 is not one",
    );
    refused(
        &flows,
        &env,
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--insecure-local",
            "--http-tokens",
            &tokens,
        ],
        "choose one",
    );
    refused(
        &flows,
        &env,
        &["--http-addr", "127.0.0.1:0", "--http-tokens", &bad_tokens],
        "--http-tokens: invalid token configuration: line 1",
    );
    refused(&flows, &env, &["--insecure-local"], "without --http-addr");
    let missing = dir.path().join("nope.pem").display().to_string();
    refused(
        &flows,
        &env,
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--http-tokens",
            &tokens,
            "--tls-cert",
            &missing,
            "--tls-key",
            &missing,
        ],
        "cannot read the TLS certificate",
    );
    // A key that is not the certificate's: rustls refuses the pair.
    let a = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = write(dir.path(), "cert.pem", &a.cert.pem());
    let other_key = write(dir.path(), "key.pem", &b.signing_key.serialize_pem());
    refused(
        &flows,
        &env,
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--http-tokens",
            &tokens,
            "--tls-cert",
            &cert,
            "--tls-key",
            &other_key,
        ],
        "TLS configuration",
    );
    // The environment's token list is checked too, naming the variable.
    refused(
        &flows,
        &[
            ("FLOXY_STORE", store.as_str()),
            ("FLOXY_HTTP_TOKENS", "root admin not-a-hash"),
        ],
        &["--http-addr", "127.0.0.1:0"],
        "FLOXY_HTTP_TOKENS: invalid token configuration",
    );
    // clap: --tls-cert needs --tls-key.
    let out = std::process::Command::new(DAEMON)
        .args([&flows, "--http-addr", "127.0.0.1:0", "--tls-cert", &cert])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

/// An HTTPS client trusting `ca` (or a plain-HTTP one), on the ring provider.
fn client(ca: Option<&rustls::pki_types::CertificateDer<'static>>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        roots.add(ca.clone()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_api_with_file_and_env_tokens_and_a_shutdown_that_cuts_event_streams() {
    let dir = tempfile::tempdir().unwrap();
    let flows = write(dir.path(), "hello.yaml", HELLO);
    let store = format!("redb:{}", dir.path().join("d.redb").display());
    let pki = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = write(dir.path(), "cert.pem", &pki.cert.pem());
    let key = write(dir.path(), "key.pem", &pki.signing_key.serialize_pem());
    let tokens = write(
        dir.path(),
        "tokens",
        &format!(
            "ops operator {}\nwatcher viewer {}\n",
            sha256(OPS),
            sha256(VIEWER)
        ),
    );
    let env_tokens = format!("root admin {}", sha256(ENV_ADMIN));
    let mut d = Daemon::start_with(
        &flows,
        &[
            ("FLOXY_STORE", store.as_str()),
            ("FLOXY_HTTP_TOKENS", env_tokens.as_str()),
        ],
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--http-tokens",
            &tokens,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    d.ready();
    let api = d.api_addr();
    let base = format!("https://{api}");
    let https = client(Some(pki.cert.der()));
    let log = d.log_text();
    assert!(log.contains(&format!("https://{api}/ui/")), "{log}");
    for secret in [OPS, VIEWER, ENV_ADMIN] {
        assert!(!log.contains(secret), "a token in the log:\n{log}");
    }

    // Who is who: file tokens and the environment's token.
    for (token, name, role) in [
        (OPS, "ops", "operator"),
        (VIEWER, "watcher", "viewer"),
        (ENV_ADMIN, "root", "admin"),
    ] {
        let (s, who) = call(
            &https,
            reqwest::Method::GET,
            &format!("{base}/api/whoami"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(s, 200, "{who}");
        assert_eq!(
            (who["name"].as_str(), who["role"].as_str()),
            (Some(name), Some(role))
        );
    }
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    assert_eq!(
        call(
            &https,
            get.clone(),
            &format!("{base}/api/workflows"),
            None,
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(
            &https,
            get.clone(),
            &format!("{base}/api/workflows"),
            Some("wrong"),
            None
        )
        .await
        .0,
        401
    );
    let (s, wfs) = call(
        &https,
        get.clone(),
        &format!("{base}/api/workflows"),
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(wfs.to_string().contains("hello-v1"), "{wfs}");

    // A viewer cannot start; an operator can, and the bash handler runs it.
    let start = format!("{base}/api/workflows/hello-v1/start");
    let body = json!({"input": {"name": "api"}});
    assert_eq!(
        call(
            &https,
            post.clone(),
            &start,
            Some(VIEWER),
            Some(body.clone())
        )
        .await
        .0,
        403
    );
    let (s, started) = call(&https, post.clone(), &start, Some(OPS), Some(body)).await;
    assert_eq!(s, 201, "{started}");
    let id = started["instance_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let inst = loop {
        let (s, inst) = call(
            &https,
            get.clone(),
            &format!("{base}/api/instances/{id}"),
            Some(OPS),
            None,
        )
        .await;
        assert_eq!(s, 200, "{inst}");
        if inst["status"] == "completed" {
            break inst;
        }
        assert!(Instant::now() < deadline, "not completed: {inst}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(inst["output"]["greeting"], "hello, api", "{inst}");
    // A viewer sees it redacted.
    let (_, seen) = call(
        &https,
        get.clone(),
        &format!("{base}/api/instances/{id}"),
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(seen["output"], "[redacted]", "{seen}");

    // The console is served, embedded.
    let resp = https.get(format!("{base}/ui/")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await.unwrap().contains("<html"));

    // Plain HTTP on the HTTPS port gets no answer from the API.
    let plain = client(None);
    assert!(
        plain
            .get(format!("http://{api}/api/workflows"))
            .bearer_auth(OPS)
            .send()
            .await
            .is_err(),
        "plain HTTP must not be served on the TLS port"
    );

    // An open event stream does not hold the shutdown up beyond its bound.
    let stream = https
        .get(format!("{base}/api/events/stream"))
        .bearer_auth(VIEWER)
        .timeout(Duration::from_mins(2))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let t0 = Instant::now();
    d.signal("TERM");
    let code = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(30)));
    assert_eq!(code, 0, "{}", d.log_text());
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        t0.elapsed()
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_local_serves_loopback_without_tokens_as_admin_local() {
    let dir = tempfile::tempdir().unwrap();
    let flows = write(dir.path(), "hello.yaml", HELLO);
    let store = format!("redb:{}", dir.path().join("d.redb").display());
    let mut d = Daemon::start_with(
        &flows,
        &[("FLOXY_STORE", store.as_str())],
        &["--http-addr", "127.0.0.1:0", "--insecure-local"],
    );
    d.ready();
    let base = format!("http://{}", d.api_addr());
    let c = client(None);
    let (s, who) = call(
        &c,
        reqwest::Method::GET,
        &format!("{base}/api/whoami"),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{who}");
    assert_eq!(
        (who["name"].as_str(), who["role"].as_str()),
        (Some("local"), Some("admin"))
    );
    let (s, started) = call(
        &c,
        reqwest::Method::POST,
        &format!("{base}/api/workflows/hello-v1/start"),
        None,
        Some(json!({"input": {"name": "local"}})),
    )
    .await;
    assert_eq!(s, 201, "{started}");
    d.signal("INT");
    assert_eq!(
        tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(30))),
        0
    );
    // The instance started through the API is in the file.
    let listed = ctl(["list", "--store", &store, "--output", "json"])
        .expect(OK)
        .json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
}
