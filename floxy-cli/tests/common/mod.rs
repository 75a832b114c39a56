//! Helpers of the binaries' process tests: run `floxyctl`, parse its JSON, build stores with
//! instances in known states.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use floxy::{Builder, Engine, HandlerError, InstanceId, InstanceStatus, Payload, Store};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub const CTL: &str = env!("CARGO_BIN_EXE_floxyctl");
pub const DAEMON: &str = env!("CARGO_BIN_EXE_floxyd");

/// Exit codes (floxy_cli::exit::Exit).
pub const OK: i32 = 0;
pub const ERROR: i32 = 1;
pub const BAD_INPUT: i32 = 2;
pub const FAILED: i32 = 3;
pub const CANCELLED: i32 = 4;
pub const ABORTED: i32 = 5;
pub const DLQ: i32 = 6;
pub const TIMEOUT: i32 = 7;
pub const WAITING: i32 = 8;
pub const REFUSED: i32 = 9;

/// The result of one `floxyctl` call.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing both streams when it differs.
    #[track_caller]
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
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
    pub fn reason_contains(&self, needle: &str) -> &Self {
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
pub fn ctl<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    ctl_in(args, None, &[])
}

/// Runs `floxyctl args` with `stdin` as standard input (closed when `None`) and extra
/// environment variables.
pub fn ctl_in<I, S>(args: I, stdin: Option<&str>, env: &[(&str, &str)]) -> Run
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
    Run::from(child.wait_with_output().expect("wait floxyctl"))
}

/// The instances of the test scenario, with the state each was driven to.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// `ok-v1`, completed.
    pub completed: InstanceId,
    /// `bad-v1` (DLQ mode), parked in the DLQ.
    pub dlq: InstanceId,
    /// `human-v1`, running with `approve` waiting for a decision.
    pub waiting: InstanceId,
    /// `stuck-v1` (its handler is registered nowhere), running.
    pub stuck_a: InstanceId,
    /// Same.
    pub stuck_b: InstanceId,
}

/// Registers four workflows on `store` and drives five instances to known states.
pub async fn scenario(store: Arc<dyn Store>) -> Scenario {
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
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}
