//! Bash handlers (CLI.md §2).

use super::debug::DebugSink;
use super::process::{Bounded, ProcessGroup, read_bounded, read_tail};
use super::{HandlerSetupError, STDERR_TAIL_BYTES, STDOUT_READ_FACTOR, head};
use floxy::floxy_core::model::DEFAULT_MAX_PAYLOAD_BYTES;
use floxy::{Handler, HandlerError, Payload, StepContext};
use rustix::process::Signal;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Time between SIGTERM and SIGKILL when a process group is terminated.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// The longest environment string (`NAME=value`) Linux passes to a program
/// (`MAX_ARG_STRLEN`, 32 pages), less one byte for the terminating NUL.
pub const ENV_VALUE_MAX_BYTES: usize = 32 * 4096 - 1;

/// Input keys never turned into variables: they change how bash or the dynamic loader start
/// (a caller could make bash source a file of its choosing before the script runs).
const UNSAFE_NAMES: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "GLOBIGNORE",
    "BASH_XTRACEFD",
    "PROMPT_COMMAND",
];

#[derive(Debug, Clone)]
enum Program {
    /// `bash -c "set -e\n<script>" <handler name>`.
    Inline(Arc<str>),
    /// `bash <path>`.
    Script(PathBuf),
}

/// A handler that runs a bash script: inline or a file.
///
/// # Environment
///
/// The process inherits the parent's environment; the handler's variables are set on top
/// of it (they win over same-named variables of the parent: **fix**, Floxy let the parent's
/// win), in this order, later ones winning:
///
/// 1. one variable per top-level key of an object input, the key upper-cased (ASCII):
///    strings raw, other values as compact JSON. Skipped (logged at debug level): keys that
///    are not a valid variable name once upper-cased (`[A-Z_][A-Z0-9_]*`), the reserved names
///    below, names that change how bash or the loader start (`BASH_ENV`, `ENV`, `SHELLOPTS`,
///    `BASHOPTS`, `PS4`, `GLOBIGNORE`, `BASH_XTRACEFD`, `PROMPT_COMMAND`, `LD_*`), values
///    holding a NUL byte, and values too long for one environment string
///    ([`ENV_VALUE_MAX_BYTES`]).
/// 2. `INPUT` (the input, compact JSON), `FLOXY_INSTANCE_ID`, `FLOXY_WORKFLOW_ID`,
///    `FLOXY_STEP_NAME`, `FLOXY_IDEMPOTENCY_KEY`, `FLOXY_RETRY_COUNT` (0 on the first
///    attempt), `FLOXY_ATTEMPT` (from 1), `FLOXY_DEBUG` (`true`/`false`); for a compensation
///    also `FLOXY_REASON` (`failure` or `cancel`), `FLOXY_STEP_OUTPUT` (compact JSON) and
///    `FLOXY_STEP_ERROR` where the step has them. Input keys cannot override these.
///
/// An input key `path` replaces `PATH` for the script: bash itself still starts (it is run
/// by the absolute path found when the handler was built), its builtins work, but the
/// script's external commands are then looked up in the input's `PATH`. Likewise `home`
/// replaces `HOME`, `user` replaces `USER`.
///
/// # Result
///
/// Stdin is `/dev/null`. Stdout must hold exactly one JSON value (surrounding whitespace is
/// ignored): the output. A non-zero exit, a death by signal, an empty or non-JSON stdout
/// are retryable failures (a non-zero exit carries the code and the last
/// [`STDERR_TAIL_BYTES`] of stderr). An output over the payload bound, or a stdout over
/// [`STDOUT_READ_FACTOR`] times it (reading stops and the group is killed), fails without
/// retry. An `INPUT` too long for the environment fails without retry too.
///
/// # Processes
///
/// The script runs in its own process group. When the step's future is dropped (the
/// runtime's timeout) or its cancellation token fires, the whole group gets SIGTERM, then
/// SIGKILL after the grace period ([`DEFAULT_KILL_GRACE`], see [`BashHandler::kill_grace`]),
/// and bash is reaped. When bash exits by itself, processes it left behind in its group get
/// the same treatment, so none outlives the attempt (a process that moved to a session of its
/// own with `setsid` escapes, as it means to).
#[derive(Debug, Clone)]
pub struct BashHandler {
    name: Arc<str>,
    program: Program,
    bash: PathBuf,
    debug: Option<DebugSink>,
    max_payload_bytes: usize,
    kill_grace: Duration,
}

impl BashHandler {
    /// An inline script, run as `bash -c` under `set -e` (`$0` is the handler's name).
    pub fn inline(name: impl Into<String>, script: impl Into<String>) -> Self {
        let name: String = name.into();
        Self {
            name: name.into(),
            program: Program::Inline(format!("set -e\n{}", script.into()).into()),
            bash: locate_bash(),
            debug: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }

    /// A script file, run as `bash <path>` (the path made absolute against the current
    /// directory now, symlinks kept).
    ///
    /// # Errors
    /// [`HandlerSetupError::ScriptNotFound`] when the file does not exist or cannot be
    /// inspected, [`HandlerSetupError::ScriptNotAFile`] for a directory.
    pub fn script(
        name: impl Into<String>,
        path: impl AsRef<Path>,
    ) -> Result<Self, HandlerSetupError> {
        let name: String = name.into();
        let path = path.as_ref();
        let not_found = |source| HandlerSetupError::ScriptNotFound {
            handler: name.clone(),
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(not_found)?;
        if meta.is_dir() {
            return Err(HandlerSetupError::ScriptNotAFile {
                handler: name,
                path: path.to_path_buf(),
            });
        }
        let absolute = std::path::absolute(path).map_err(not_found)?;
        Ok(Self {
            name: name.into(),
            program: Program::Script(absolute),
            bash: locate_bash(),
            debug: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            kill_grace: DEFAULT_KILL_GRACE,
        })
    }

    /// Debug mode (CLI.md §2 `-D`): input, output and stderr of each call printed to stderr,
    /// prefixed with the handler name. Also sets `FLOXY_DEBUG=true` for the script.
    #[must_use]
    pub fn debug(self, on: bool) -> Self {
        self.debug_sink(on.then(DebugSink::stderr))
    }

    /// Debug mode with the lines sent to `sink` (`None`: off).
    #[must_use]
    pub fn debug_sink(mut self, sink: Option<DebugSink>) -> Self {
        self.debug = sink;
        self
    }

    /// The payload bound for outputs (the workflow's `max_payload_bytes`).
    #[must_use]
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.max_payload_bytes = n;
        self
    }

    /// Time between SIGTERM and SIGKILL.
    #[must_use]
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// The handler's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bash binary the handler runs.
    #[must_use]
    pub fn bash_path(&self) -> &Path {
        &self.bash
    }

    /// The variables the handler sets, in the order they are set (later ones win).
    fn environment(
        &self,
        ctx: &StepContext,
        input: &Payload,
    ) -> Result<Vec<(String, String)>, HandlerError> {
        let compact = input.value().to_string();
        if "INPUT=".len() + compact.len() > ENV_VALUE_MAX_BYTES {
            return Err(HandlerError::fatal(format!(
                "input of {} bytes is too large for the INPUT environment variable \
                 (at most {} bytes)",
                compact.len(),
                ENV_VALUE_MAX_BYTES - "INPUT=".len()
            )));
        }
        let mut env = Vec::new();
        if let serde_json::Value::Object(map) = input.value() {
            for (key, value) in map {
                let name = key.to_ascii_uppercase();
                let value = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if let Some(why) = skip_reason(&name, &value) {
                    tracing::debug!(handler = %self.name, key = %key, why, "input key not passed as a variable");
                    continue;
                }
                env.push((name, value));
            }
        }
        env.push(("INPUT".into(), compact));
        env.push(("FLOXY_INSTANCE_ID".into(), ctx.instance_id().to_string()));
        env.push(("FLOXY_WORKFLOW_ID".into(), ctx.workflow_id().to_string()));
        env.push(("FLOXY_STEP_NAME".into(), ctx.step().to_owned()));
        env.push((
            "FLOXY_IDEMPOTENCY_KEY".into(),
            ctx.idempotency_key().to_owned(),
        ));
        env.push((
            "FLOXY_RETRY_COUNT".into(),
            ctx.attempt().saturating_sub(1).to_string(),
        ));
        env.push(("FLOXY_ATTEMPT".into(), ctx.attempt().to_string()));
        env.push(("FLOXY_DEBUG".into(), self.debug.is_some().to_string()));
        if let Some(c) = ctx.compensation() {
            env.push(("FLOXY_REASON".into(), c.reason.as_str().to_owned()));
            if let Some(out) = &c.output {
                let out = out.value().to_string();
                if out.len() + "FLOXY_STEP_OUTPUT=".len() <= ENV_VALUE_MAX_BYTES {
                    env.push(("FLOXY_STEP_OUTPUT".into(), out));
                }
            }
            if let Some(err) = &c.error {
                let err = head(&err.replace('\0', " "), ENV_VALUE_MAX_BYTES / 2).to_owned();
                env.push(("FLOXY_STEP_ERROR".into(), err));
            }
        }
        Ok(env)
    }

    fn command(&self, env: Vec<(String, String)>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bash);
        match &self.program {
            Program::Inline(script) => {
                cmd.arg("-c").arg(&**script).arg(&*self.name);
            }
            Program::Script(path) => {
                cmd.arg(path);
            }
        }
        cmd.envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }

    async fn run(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError> {
        let env = self.environment(&ctx, &input)?;
        if let Some(d) = &self.debug {
            d.line(&self.name, "input", &input.value().to_string());
        }
        let result = self.run_process(&ctx, env).await;
        if let Some(d) = &self.debug {
            match &result {
                Ok(out) => d.line(&self.name, "output", &out.value().to_string()),
                Err(e) => d.line(&self.name, "error", &e.message),
            }
        }
        result
    }

    async fn run_process(
        &self,
        ctx: &StepContext,
        env: Vec<(String, String)>,
    ) -> Result<Payload, HandlerError> {
        let child = self.command(env).spawn().map_err(|e| {
            let msg = format!("cannot start {}: {e}", self.bash.display());
            if e.raw_os_error() == Some(rustix::io::Errno::TOOBIG.raw_os_error()) {
                HandlerError::fatal(format!(
                    "{msg} (the input is too large for the environment)"
                ))
            } else {
                HandlerError::retryable(msg)
            }
        })?;
        let mut group = ProcessGroup::new(child, self.kill_grace);
        let (stdout, stderr) = match group.child_mut() {
            Some(c) => (c.stdout.take(), c.stderr.take()),
            None => (None, None),
        };
        let stdout_limit = self.max_payload_bytes.saturating_mul(STDOUT_READ_FACTOR);
        let name = Arc::clone(&self.name);
        let sink = self.debug.clone();
        let on_line = sink.map(|s| move |line: &str| s.line(&name, "stderr", line));
        let mut out_fut = std::pin::pin!(read_bounded(stdout, stdout_limit));
        let mut err_fut = std::pin::pin!(read_tail(stderr, STDERR_TAIL_BYTES, on_line));
        let mut out: Option<Vec<u8>> = None;
        let mut err = None;
        let mut status: Option<ExitStatus> = None;
        // After bash exits: SIGTERM to what it left in its group, SIGKILL at `leftover`,
        // and stop waiting for the pipes at `give_up`.
        let mut leftover: Option<Instant> = None;
        let mut give_up: Option<Instant> = None;
        let far = Instant::now() + Duration::from_hours(24 * 365);
        while out.is_none() || err.is_none() || status.is_none() {
            tokio::select! {
                biased;
                () = ctx.cancelled() => {
                    group.terminate().await;
                    return Err(HandlerError::retryable("cancelled: the process group was terminated"));
                }
                r = &mut out_fut, if out.is_none() => match r {
                    Ok(Bounded::Complete(bytes)) => out = Some(bytes),
                    Ok(Bounded::Overflow) => {
                        group.terminate().await;
                        return Err(HandlerError::fatal(format!(
                            "stdout exceeded {stdout_limit} bytes ({STDOUT_READ_FACTOR} times the payload \
                             bound of {} bytes); the process group was killed",
                            self.max_payload_bytes
                        )));
                    }
                    Err(e) => {
                        group.terminate().await;
                        return Err(HandlerError::retryable(format!("reading stdout: {e}")));
                    }
                },
                t = &mut err_fut, if err.is_none() => err = Some(t),
                s = group.wait(), if status.is_none() => match s {
                    Ok(s) => {
                        status = Some(s);
                        group.signal(Signal::TERM);
                        leftover = Some(Instant::now() + self.kill_grace);
                    }
                    Err(e) => {
                        group.terminate().await;
                        return Err(HandlerError::retryable(format!("waiting for bash: {e}")));
                    }
                },
                () = tokio::time::sleep_until(leftover.unwrap_or(far)), if leftover.is_some() => {
                    group.signal(Signal::KILL);
                    leftover = None;
                    give_up = Some(Instant::now() + self.kill_grace);
                }
                () = tokio::time::sleep_until(give_up.unwrap_or(far)), if give_up.is_some() => {
                    group.finish();
                    return Err(HandlerError::retryable(
                        "bash exited but its stdout or stderr stayed open (held by a process \
                         outside its process group)",
                    ));
                }
            }
        }
        // What bash left behind got SIGTERM when it exited; the pipes may close before those
        // processes are fully gone: make sure none runs on when the call returns.
        group.terminate().await;
        let (Some(out), Some(err), Some(status)) = (out, err, status) else {
            return Err(HandlerError::retryable(
                "internal: process state incomplete",
            ));
        };
        if !status.success() {
            let tail = err.text();
            let what = match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => format!("failed ({status})"),
            };
            return Err(HandlerError::retryable(if tail.is_empty() {
                format!("script failed with {what} (stderr empty)")
            } else {
                format!("script failed with {what}; stderr: {tail}")
            }));
        }
        parse_output(&out, self.max_payload_bytes)
    }
}

/// Stdout as the step's output: exactly one JSON value within the bound.
fn parse_output(out: &[u8], max_payload_bytes: usize) -> Result<Payload, HandlerError> {
    let text = String::from_utf8_lossy(out);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(HandlerError::retryable(
            "script printed nothing on stdout (one JSON value is expected)",
        ));
    }
    let value: serde_json::Value = serde_json::from_str(trimmed).map_err(|e| {
        HandlerError::retryable(format!(
            "script stdout is not one JSON value ({e}); stdout starts with: {:?}",
            head(trimmed, 200)
        ))
    })?;
    let payload = Payload::new(value);
    payload
        .check_size(max_payload_bytes)
        .map_err(|e| HandlerError::fatal(format!("script output rejected: {e}")))?;
    Ok(payload)
}

/// Why an input key is not passed as a variable, if it is not.
fn skip_reason(name: &str, value: &str) -> Option<&'static str> {
    let mut bytes = name.bytes();
    let valid = bytes
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Some("not a valid variable name");
    }
    if name == "INPUT" || name.starts_with("FLOXY_") {
        return Some("reserved name");
    }
    if UNSAFE_NAMES.contains(&name) || name.starts_with("LD_") {
        return Some("changes how bash or the loader start");
    }
    if value.contains('\0') {
        return Some("value holds a NUL byte");
    }
    if name.len() + 1 + value.len() > ENV_VALUE_MAX_BYTES {
        return Some("value too long for the environment");
    }
    None
}

/// `bash` from the parent's `PATH` (as an absolute path), else `/bin/bash`.
fn locate_bash() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("bash"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| PathBuf::from("/bin/bash"))
}

#[floxy::async_trait]
impl Handler for BashHandler {
    async fn execute(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError> {
        self.run(ctx, input).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names() {
        assert_eq!(skip_reason("USER_ID", "x"), None);
        assert_eq!(skip_reason("_X1", "x"), None);
        assert!(skip_reason("1X", "x").is_some());
        assert!(skip_reason("A-B", "x").is_some());
        assert!(skip_reason("", "x").is_some());
        assert!(skip_reason("ÄB", "x").is_some());
        assert!(skip_reason("INPUT", "x").is_some());
        assert!(skip_reason("FLOXY_STEP_NAME", "x").is_some());
        assert!(skip_reason("BASH_ENV", "x").is_some());
        assert!(skip_reason("LD_PRELOAD", "x").is_some());
        assert!(skip_reason("A", "a\0b").is_some());
        assert_eq!(skip_reason("PATH", "/nowhere"), None);
    }

    #[test]
    fn output_rules() {
        assert!(parse_output(b"  {\"a\":1}\n", 100).is_ok());
        let e = parse_output(b"\n \n", 100).err();
        assert!(e.is_some_and(|e| e.retryable && e.message.contains("nothing")));
        let e = parse_output(b"{} {}", 100).err();
        assert!(e.is_some_and(|e| e.retryable && e.message.contains("not one JSON value")));
        let e = parse_output(b"\"0123456789\"", 5).err();
        assert!(e.is_some_and(|e| !e.retryable));
    }
}
