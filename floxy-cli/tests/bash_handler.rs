//! Bash handlers on real processes: the environment contract, results, bounds, timeouts and
//! cancellation killing whole process groups, debug lines; through a real engine on the
//! memory store where the engine's part matters (timeouts, retries, compensations).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{
    Builder, Engine, Handler, HandlerError, InstanceId, InstanceStatus, MemoryStore, Payload,
    StepContext, StepStatus, WorkKind, WorkflowId,
};
use floxy_cli::handlers::{BashHandler, DebugSink, HandlerSetupError};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn ctx() -> StepContext {
    StepContext::detached(
        InstanceId::from_u128(0x1234),
        WorkflowId::new("wf", 1),
        "s",
        WorkKind::Execute,
    )
}

async fn call(h: &BashHandler, input: serde_json::Value) -> Result<Payload, HandlerError> {
    h.execute(ctx(), Payload::new(input)).await
}

/// `/proc/<pid>/stat` state, `None` when the process does not exist (reaped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Whether the process runs. A zombie does not: it was killed and waits for its parent (for
/// a reparented grandchild, init; this machine's init never reaps, so `kill -0` alone would
/// see killed grandchildren forever).
fn running(pid: u32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// Waits (bounded) for a condition that another task brings about.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn env_file(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Copies bash's initial environment (NUL-separated) to `$ENV_OUT` with builtins only (the
/// input may have replaced PATH).
const DUMP_ENV: &str = r#"
while IFS= read -r -d '' e; do printf '%s\0' "$e"; done < /proc/$$/environ > "$ENV_OUT"
"#;

#[tokio::test]
async fn environment_contract_input_wins_over_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let script = format!(
        "{DUMP_ENV}\nif command -v cat >/dev/null; then c=true; else c=false; fi\n\
         printf '{{\"cat_found\": %s, \"path\": \"%s\"}}' \"$c\" \"$PATH\""
    );
    let h = BashHandler::inline("envtest", script);
    assert!(h.bash_path().is_absolute());
    let input = json!({
        "env_out": out.to_str().unwrap(),
        "user_id": "U-1",
        "amount": 100.5,
        "nested": {"a": [1, "two"]},
        "flag": true,
        "nothing": null,
        "path": "/nonexistent-floxy-bin",
        "home": "/tmp/floxy-home",
        "user": "alice",
        "bad-key": "skipped",
        "1abc": "skipped",
        "floxy_step_name": "spoofed",
        "input": "spoofed",
        "bash_env": "/tmp/evil.sh",
        "ld_preload": "/tmp/evil.so",
    });
    let output = call(&h, input.clone()).await.unwrap();
    // bash started (absolute path) although PATH is the input's; external commands are then
    // looked up in that PATH and not found.
    assert_eq!(
        output.value(),
        &json!({"cat_found": false, "path": "/nonexistent-floxy-bin"})
    );
    let env = env_file(&out);
    assert_eq!(env["USER_ID"], "U-1");
    assert_eq!(env["AMOUNT"], "100.5");
    assert_eq!(env["NESTED"], r#"{"a":[1,"two"]}"#);
    assert_eq!(env["FLAG"], "true");
    assert_eq!(env["NOTHING"], "null");
    assert_eq!(env["PATH"], "/nonexistent-floxy-bin");
    assert_eq!(env["HOME"], "/tmp/floxy-home");
    assert_eq!(env["USER"], "alice");
    assert!(!env.contains_key("BAD-KEY") && !env.contains_key("1ABC"));
    assert!(!env.contains_key("BASH_ENV") || std::env::var_os("BASH_ENV").is_some());
    assert!(!env.contains_key("LD_PRELOAD") || std::env::var_os("LD_PRELOAD").is_some());
    // Reserved names are ours, whatever the input says.
    assert_eq!(env["INPUT"], input.to_string());
    assert_eq!(env["FLOXY_STEP_NAME"], "s");
    assert_eq!(
        env["FLOXY_INSTANCE_ID"],
        InstanceId::from_u128(0x1234).to_string()
    );
    assert_eq!(env["FLOXY_WORKFLOW_ID"], "wf-v1");
    assert_eq!(env["FLOXY_IDEMPOTENCY_KEY"], ctx().idempotency_key());
    assert_eq!(env["FLOXY_RETRY_COUNT"], "0");
    assert_eq!(env["FLOXY_ATTEMPT"], "1");
    assert_eq!(env["FLOXY_DEBUG"], "false");
    assert!(!env.contains_key("FLOXY_REASON"));
    // The rest of the parent's environment is inherited.
    let ours = [
        "PATH",
        "HOME",
        "USER",
        "INPUT",
        "BASH_ENV",
        "LD_PRELOAD",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    ];
    let (k, v) = std::env::vars()
        .find(|(k, _)| !ours.contains(&k.as_str()) && !k.starts_with("FLOXY_"))
        .expect("the test process has some environment variable");
    assert_eq!(env.get(&k), Some(&v), "parent variable {k} not inherited");
}

#[tokio::test]
async fn results_non_json_empty_multiple_and_exit_codes() {
    let e = call(&BashHandler::inline("t", "echo hello"), json!({}))
        .await
        .unwrap_err();
    assert!(e.retryable, "{e:?}");
    assert!(
        e.message.contains("not one JSON value") && e.message.contains("hello"),
        "{e}"
    );

    let e = call(&BashHandler::inline("t", "true"), json!({}))
        .await
        .unwrap_err();
    assert!(e.retryable && e.message.contains("printed nothing"), "{e}");

    let e = call(&BashHandler::inline("t", "echo 1; echo 2"), json!({}))
        .await
        .unwrap_err();
    assert!(
        e.retryable && e.message.contains("not one JSON value"),
        "{e}"
    );

    let e = call(
        &BashHandler::inline("t", "echo '{}'; echo oops >&2; exit 3"),
        json!({}),
    )
    .await
    .unwrap_err();
    assert!(e.retryable, "{e:?}");
    assert!(
        e.message.contains("exit code 3") && e.message.contains("oops"),
        "{e}"
    );

    // `set -e` is on for inline scripts: a failing command ends the script.
    let e = call(&BashHandler::inline("t", "false\necho '{}'"), json!({}))
        .await
        .unwrap_err();
    assert!(e.message.contains("exit code 1"), "{e}");

    // The stderr in the error is a bounded tail.
    let e = call(
        &BashHandler::inline(
            "t",
            "for i in $(seq 1 20000); do printf 'noise ' >&2; done; echo THE-END >&2; exit 9",
        ),
        json!({}),
    )
    .await
    .unwrap_err();
    assert!(
        e.message.contains("exit code 9") && e.message.contains("THE-END"),
        "{e}"
    );
    assert!(
        e.message.len() < 3000,
        "stderr not bounded: {} bytes",
        e.message.len()
    );

    let ok = call(
        &BashHandler::inline("t", r#"echo "$INPUT" | sed 's/1/2/'"#),
        json!({"v": 1}),
    )
    .await
    .unwrap();
    assert_eq!(ok.value(), &json!({"v": 2}));
}

#[tokio::test]
async fn oversized_output_fails_without_retry() {
    // Compact output above the bound (but stdout within the read bound).
    let h = BashHandler::inline("big", r#"printf '"%s"' "$(printf 'a%.0s' $(seq 1 2000))""#)
        .max_payload_bytes(1000);
    let e = call(&h, json!({})).await.unwrap_err();
    assert!(!e.retryable, "{e:?}");
    assert!(e.message.contains("exceeds the limit of 1000 bytes"), "{e}");

    // Endless stdout: reading stops past the bound, the process is killed, the call ends.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let h = BashHandler::inline(
        "flood",
        r#"echo $$ > "$PID_FILE"; while :; do echo '"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"'; done"#,
    )
    .max_payload_bytes(10_000);
    let e = tokio::time::timeout(WAIT, call(&h, json!({"pid_file": pid_file})))
        .await
        .expect("a flooding script is cut off")
        .unwrap_err();
    assert!(
        !e.retryable && e.message.contains("stdout exceeded 40000 bytes"),
        "{e}"
    );
    let pid = read_pid(&pid_file).unwrap();
    assert_eq!(proc_state(pid), None, "bash was killed and reaped");
}

#[tokio::test]
async fn cancellation_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let child_pid = dir.path().join("child");
    let bash_pid = dir.path().join("bash");
    let h = BashHandler::inline(
        "hang",
        r#"sleep 1000 & echo $! > "$CHILD_PID.tmp"; mv "$CHILD_PID.tmp" "$CHILD_PID"
           echo $$ > "$BASH_PID"; wait"#,
    );
    let ctx = ctx();
    let token = ctx.cancellation_token().clone();
    let input = Payload::new(json!({"child_pid": child_pid, "bash_pid": bash_pid}));
    let call = tokio::spawn(async move { h.execute(ctx, input).await });
    eventually("the script started its child", || {
        read_pid(&child_pid).is_some() && read_pid(&bash_pid).is_some()
    })
    .await;
    let (child, bash) = (read_pid(&child_pid).unwrap(), read_pid(&bash_pid).unwrap());
    assert!(running(child) && running(bash));
    token.cancel();
    let e = tokio::time::timeout(WAIT, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(e.message.contains("cancelled"), "{e}");
    // The handler returns once the group is gone: no waiting here.
    assert!(
        !running(child),
        "the script's child survived the cancellation"
    );
    assert_eq!(proc_state(bash), None, "bash was not reaped");
}

#[tokio::test]
async fn leftover_background_processes_are_killed_when_bash_exits() {
    let dir = tempfile::tempdir().unwrap();
    let child_pid = dir.path().join("child");
    // The background sleep holds stdout open: without killing the group the call would wait
    // for it.
    let h = BashHandler::inline(
        "bg",
        r#"sleep 1000 & echo $! > "$CHILD_PID"; echo '{"ok":1}'"#,
    );
    let out = tokio::time::timeout(WAIT, call(&h, json!({"child_pid": child_pid})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.value(), &json!({"ok": 1}));
    assert!(!running(read_pid(&child_pid).unwrap()));
}

fn engine() -> Engine {
    Engine::new(Arc::new(MemoryStore::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_timeout_kills_the_script_and_its_child_even_when_they_ignore_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let child_pid = dir.path().join("child");
    let bash_pid = dir.path().join("bash");
    let engine = engine();
    // Both ignore SIGTERM (the child inherits the ignored disposition): only the SIGKILL
    // after the grace period ends them.
    engine.register_handler(
        "hang",
        BashHandler::inline(
            "hang",
            r#"trap '' TERM; sleep 1000 & echo $! > "$CHILD_PID"; echo $$ > "$BASH_PID"; wait; wait"#,
        )
        .kill_grace(Duration::from_millis(300)),
    );
    let wf = engine
        .register_workflow(
            Builder::new("timeout", 1)
                .step("hang", "hang")
                .timeout_ms(1000)
                .max_retries(0)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let started = Instant::now();
    let done = engine
        .start_and_wait(
            &wf,
            json!({"child_pid": child_pid, "bash_pid": bash_pid}),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let steps = engine.steps(done.id).await.unwrap();
    assert!(
        steps[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("timed out after 1000 ms")),
        "{:?}",
        steps[0].error
    );
    let (child, bash) = (read_pid(&child_pid).unwrap(), read_pid(&bash_pid).unwrap());
    // The runtime dropped the handler's future; its guard kills the group in the background.
    eventually("the child is killed", || !running(child)).await;
    eventually("bash is killed and reaped", || proc_state(bash).is_none()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_retries_a_failing_script_and_compensates_with_the_floxy_variables() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    // Fails on its first attempt, succeeds on its second.
    engine.register_handler(
        "flaky",
        BashHandler::inline(
            "flaky",
            r#"if [ ! -e "$MARK" ]; then : > "$MARK"; echo "first try fails" >&2; exit 7; fi
               printf '{"charged": true, "retry": %s}' "$FLOXY_RETRY_COUNT""#,
        ),
    );
    engine.register_handler(
        "boom",
        BashHandler::inline("boom", r#"echo "card declined" >&2; exit 1"#),
    );
    engine.register_handler(
        "refund",
        BashHandler::inline(
            "refund",
            format!("ENV_OUT=$REFUND_ENV\n{DUMP_ENV}\necho '{{}}'"),
        ),
    );
    let wf = engine
        .register_workflow(
            Builder::new("charge", 1)
                .step("charge", "flaky")
                .max_retries(2)
                .retry_delay_ms(10)
                .on_failure("refund", "refund")
                .then("ship", "boom")
                .max_retries(0)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    engine.start_workers().unwrap();
    let refund_env = dir.path().join("refund-env");
    let done = engine
        .start_and_wait(
            &wf,
            json!({"mark": dir.path().join("mark"), "refund_env": refund_env}),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    let steps = engine.steps(done.id).await.unwrap();
    let charge = steps.iter().find(|s| &*s.step == "charge").unwrap();
    assert_eq!(charge.attempts, 2, "the engine retried the failed script");
    assert_eq!(charge.status, StepStatus::RolledBack);
    let ship = steps.iter().find(|s| &*s.step == "ship").unwrap();
    assert!(
        ship.error
            .as_deref()
            .is_some_and(|e| e.contains("card declined"))
    );
    let env = env_file(&refund_env);
    assert_eq!(env["FLOXY_REASON"], "failure");
    assert_eq!(env["FLOXY_STEP_NAME"], "charge");
    let output: serde_json::Value = serde_json::from_str(&env["FLOXY_STEP_OUTPUT"]).unwrap();
    assert_eq!(output, json!({"charged": true, "retry": 1}));
    assert!(
        !env.contains_key("FLOXY_STEP_ERROR"),
        "charge completed: no error"
    );
    assert_eq!(env["FLOXY_IDEMPOTENCY_KEY"], format!("{}:charge", done.id));
}

#[tokio::test]
async fn script_files_and_setup_errors() {
    let err = BashHandler::script("charge", "/nonexistent/floxy/charge.sh").unwrap_err();
    assert!(matches!(err, HandlerSetupError::ScriptNotFound { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("charge") && msg.contains("/nonexistent/floxy/charge.sh"),
        "{msg}"
    );

    let dir = tempfile::tempdir().unwrap();
    let err = BashHandler::script("d", dir.path()).unwrap_err();
    assert!(
        matches!(err, HandlerSetupError::ScriptNotAFile { .. }),
        "{err}"
    );

    // Run as `bash <path>`: no exec bit needed; `set -e` is not added.
    let path = dir.path().join("s.sh");
    std::fs::write(
        &path,
        "false\nprintf '{\"step\": \"%s\", \"arg0\": \"%s\"}' \"$FLOXY_STEP_NAME\" \"$0\"\n",
    )
    .unwrap();
    let h = BashHandler::script("file", &path).unwrap();
    let out = call(&h, json!({})).await.unwrap();
    assert_eq!(
        out.value(),
        &json!({"step": "s", "arg0": path.to_str().unwrap()})
    );
}

#[tokio::test]
async fn debug_lines_show_input_stderr_and_output() {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = {
        let lines = Arc::clone(&lines);
        DebugSink::new(move |l| lines.lock().unwrap().push(l.to_owned()))
    };
    let h = BashHandler::inline(
        "dbg",
        r#"echo "warming up" >&2; printf '{"debug": "%s"}' "$FLOXY_DEBUG""#,
    )
    .debug_sink(Some(sink));
    let out = call(&h, json!({"n": 1})).await.unwrap();
    assert_eq!(out.value(), &json!({"debug": "true"}));
    let lines = lines.lock().unwrap().clone();
    assert_eq!(
        lines,
        [
            r#"[DEBUG] Handler 'dbg' input: {"n":1}"#,
            "[DEBUG] Handler 'dbg' stderr: warming up",
            r#"[DEBUG] Handler 'dbg' output: {"debug":"true"}"#,
        ]
    );
}
