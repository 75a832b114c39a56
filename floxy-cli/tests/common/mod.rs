//! Helpers of the binaries' process tests: run `floxyctl`, parse its JSON, build stores with
//! instances in known states.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use floxy::{Builder, Engine, HandlerError, InstanceId, InstanceStatus, Payload, Store};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub(crate) const CTL: &str = env!("CARGO_BIN_EXE_floxyctl");
pub(crate) const DAEMON: &str = env!("CARGO_BIN_EXE_floxyd");

/// Exit codes (`floxy_cli::exit::Exit`).
pub(crate) const OK: i32 = 0;
pub(crate) const ERROR: i32 = 1;
pub(crate) const BAD_INPUT: i32 = 2;
pub(crate) const FAILED: i32 = 3;
pub(crate) const CANCELLED: i32 = 4;
pub(crate) const ABORTED: i32 = 5;
pub(crate) const DLQ: i32 = 6;
pub(crate) const TIMEOUT: i32 = 7;
pub(crate) const WAITING: i32 = 8;
pub(crate) const REFUSED: i32 = 9;

/// The result of one `floxyctl` call.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    fn from(out: &Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing both streams when it differs.
    #[track_caller]
    pub(crate) fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Stdout as JSON.
    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts that stderr holds a one-line reason containing `needle`, and no panic or
    /// backtrace.
    #[track_caller]
    pub(crate) fn reason_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "a panic:\n{}",
            self.stderr
        );
        self
    }
}

/// Runs `floxyctl args` with stdin closed.
pub(crate) fn ctl<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    ctl_in(args, None, &[])
}

/// Runs `floxyctl args` with `stdin` as standard input (closed when `None`) and extra
/// environment variables.
pub(crate) fn ctl_in<I, S>(args: I, stdin: Option<&str>, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(CTL);
    cmd.args(args)
        .env_remove("FLOXY_DATABASE_URL")
        .env_remove("FLOXY_DB_SCHEMA")
        .env_remove("PG_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn floxyctl");
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    Run::from(&child.wait_with_output().expect("wait floxyctl"))
}

/// The instances of the test scenario, with the state each was driven to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scenario {
    /// `ok-v1`, completed.
    pub(crate) completed: InstanceId,
    /// `bad-v1` (DLQ mode), parked in the DLQ.
    pub(crate) dlq: InstanceId,
    /// `human-v1`, running with `approve` waiting for a decision.
    pub(crate) waiting: InstanceId,
    /// `stuck-v1` (its handler is registered nowhere), running.
    pub(crate) stuck_a: InstanceId,
    /// Same.
    pub(crate) stuck_b: InstanceId,
}

/// Registers four workflows on `store` and drives five instances to known states.
pub(crate) async fn scenario(store: Arc<dyn Store>) -> Scenario {
    let engine = Engine::builder(store).poll_interval_ms(20).build();
    engine.register_fn("ok", |_ctx, input: Payload| async move {
        let mut v = input.value().clone();
        v["ok"] = serde_json::Value::Bool(true);
        Ok(Payload::new(v))
    });
    engine.register_fn("boom", |_ctx, _input| async move {
        Err(HandlerError::fatal("boom: the handler refused"))
    });
    let ok = engine
        .register_workflow(
            Builder::new("ok", 1)
                .step("a", "ok")
                .then("b", "ok")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let bad = engine
        .register_workflow(
            Builder::new("bad", 1)
                .dlq(true)
                .step("a", "ok")
                .then("b", "boom")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let human = engine
        .register_workflow(
            Builder::new("human", 1)
                .step("a", "ok")
                .wait_human("approve")
                .then("c", "ok")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let stuck = engine
        .register_workflow(
            Builder::new("stuck", 1)
                .step("a", "nowhere")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let wait = Duration::from_secs(30);
    let input = serde_json::json!({ "order": 42 });
    let completed = engine.start(&ok, input.clone()).await.unwrap();
    let dlq = engine.start(&bad, input.clone()).await.unwrap();
    let waiting = engine.start(&human, input.clone()).await.unwrap();
    let stuck_a = engine.start(&stuck, input.clone()).await.unwrap();
    let stuck_b = engine.start(&stuck, input).await.unwrap();
    assert_eq!(
        engine.wait_for(completed, wait).await.unwrap().status,
        InstanceStatus::Completed
    );
    assert_eq!(
        engine.wait_for(dlq, wait).await.unwrap().status,
        InstanceStatus::Dlq
    );
    assert_eq!(
        engine.wait_for(waiting, wait).await.unwrap().status,
        InstanceStatus::Running
    );
    engine.shutdown(Duration::from_secs(5)).await;
    Scenario {
        completed,
        dlq,
        waiting,
        stuck_a,
        stuck_b,
    }
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A running `floxyd` with its log lines collected.
pub(crate) struct Daemon {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub(crate) log: Vec<String>,
    pub(crate) addr: Option<String>,
}

impl Daemon {
    /// Starts `floxyd flows` with JSON logs, the tech server on a free loopback port and
    /// the statistics every 200 ms, plus `env`.
    pub(crate) fn start(flows: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(flows, env, &[])
    }

    /// As [`Daemon::start`], with more command-line arguments after the flow file.
    pub(crate) fn start_with(flows: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut cmd = Command::new(DAEMON);
        cmd.arg(flows)
            .args(args)
            .env_remove("FLOXY_HTTP_TOKENS")
            .env_remove("FLOXY_DATABASE_URL")
            .env_remove("FLOXY_DB_HOST")
            .env_remove("FLOXY_DB_PORT")
            .env_remove("FLOXY_DB_USER")
            .env_remove("FLOXY_DB_PASSWORD")
            .env_remove("FLOXY_DB_NAME")
            .env_remove("FLOXY_DB_SCHEMA")
            .env_remove("FLOXY_STORE")
            .env("FLOXY_LOG_FORMAT", "json")
            .env("FLOXY_TECH_ADDR", "127.0.0.1:0")
            .env("FLOXY_STATS_INTERVAL", "200ms")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn floxyd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines: rx,
            log: Vec::new(),
            addr: None,
        }
    }

    /// Waits for a log line satisfying `pred` (JSON lines are parsed); panics with the log
    /// so far after `timeout` or when the process ends first.
    #[track_caller]
    pub(crate) fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    let v = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                    if pred(&v) {
                        return v;
                    }
                }
                Err(e) => panic!(
                    "floxyd: no {what} within {timeout:?} ({e}); log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits until the tech server listens; returns its address.
    #[track_caller]
    pub(crate) fn ready(&mut self) -> String {
        let v = self.wait_for("tech server", Duration::from_mins(1), |v| {
            v["message"] == "tech server listening"
        });
        let addr = v["addr"].as_str().expect("addr").to_owned();
        self.wait_for("ready line", Duration::from_secs(10), |v| {
            v["message"] == "floxyd ready"
        });
        self.addr = Some(addr.clone());
        addr
    }

    /// The HTTP API's address, from its log line (after [`Daemon::ready`]).
    #[track_caller]
    pub(crate) fn api_addr(&self) -> String {
        self.log
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "HTTP API listening")
            .and_then(|v| v["addr"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no API line in:\n{}", self.log.join("\n")))
    }

    /// GET `path` on the tech server: (status, body).
    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr.as_deref().expect("not ready"), path)
    }

    /// Sends `sig` (`TERM`, `INT`).
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the exit (at most `timeout`) and returns the code; the remaining log
    /// lines are collected into `log`.
    #[track_caller]
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = std::time::Instant::now() + timeout;
        let code = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "floxyd still running after {timeout:?}; log:\n{}",
                self.log.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.log.push(line);
        }
        code
    }

    /// The whole log so far, one string.
    pub(crate) fn log_text(&self) -> String {
        self.log.join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the tech server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
