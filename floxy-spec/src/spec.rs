//! The typed flow-file structures.
//!
//! They mirror the file format one to one; [`serde::Serialize`] writes them back in that
//! format (YAML or JSON). Parsing goes through [`crate::parse_str`] / [`crate::load`],
//! which report every problem with its place.

use crate::error::Loc;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The format of a flow file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// JSON (`.json`), same schema.
    Json,
}

impl Format {
    /// The format a file name's extension implies (`.yaml`, `.yml`, `.json`).
    #[must_use]
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Self::Yaml),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// A whole flow file: TLS defaults, handlers and flows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FlowFile {
    /// Global TLS options of HTTP handlers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// The handlers, by name.
    pub handlers: Vec<HandlerSpec>,
    /// The flows.
    pub flows: Vec<FlowSpec>,
    /// File name used in error messages.
    #[serde(skip)]
    pub(crate) file: String,
}

impl FlowFile {
    /// The flow named `name` (the first of that name when several versions exist).
    #[must_use]
    pub fn flow(&self, name: &str) -> Option<&FlowSpec> {
        self.flows.iter().find(|f| f.name == name)
    }

    /// The handler named `name`.
    #[must_use]
    pub fn handler(&self, name: &str) -> Option<&HandlerSpec> {
        self.handlers.iter().find(|h| h.name == name)
    }

    /// The file name errors are reported against.
    #[must_use]
    pub fn file(&self) -> &str {
        &self.file
    }
}

/// TLS options of HTTP handlers (rustls): extra roots, client certificate, skip verify.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct TlsSpec {
    /// Accept any server certificate (logged as a warning).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skip_verify: bool,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Extra trusted root certificates (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// A handler: a name and what runs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HandlerSpec {
    /// Name steps refer to.
    pub name: String,
    /// What runs.
    pub exec: Exec,
    /// TLS options of an HTTP handler; replace the global block when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// `exec` as written in the file (steps' `exec` metadata).
    #[serde(skip)]
    pub(crate) exec_text: String,
    #[serde(skip)]
    pub(crate) loc: Loc,
    #[serde(skip)]
    pub(crate) path: String,
}

impl HandlerSpec {
    /// The TLS options in force: this handler's block if it has one, else the global one.
    #[must_use]
    pub fn effective_tls<'a>(&'a self, global: Option<&'a TlsSpec>) -> Option<&'a TlsSpec> {
        self.tls.as_ref().or(global)
    }

    /// `exec` as written in the file (before script paths were resolved).
    #[must_use]
    pub fn exec_text(&self) -> &str {
        &self.exec_text
    }
}

/// What a handler runs, classified from its `exec` string.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exec {
    /// A multi-line string: an inline bash script (run with `bash -c` under `set -e`).
    Inline(String),
    /// An `http://` or `https://` URL: an HTTP handler.
    Http(String),
    /// Anything else: a script path, run as `bash <path>`. [`crate::load`] resolves it
    /// against the file's directory and checks that it exists.
    Script(PathBuf),
}

impl Exec {
    /// Classifies an `exec` string: a newline makes an inline script, an `http://` or
    /// `https://` prefix an HTTP handler, anything else a script path.
    #[must_use]
    pub fn classify(exec: &str) -> Self {
        if exec.contains('\n') {
            Self::Inline(exec.to_owned())
        } else if exec.starts_with("http://") || exec.starts_with("https://") {
            Self::Http(exec.to_owned())
        } else {
            Self::Script(PathBuf::from(exec))
        }
    }

    /// The exec string (a script path lossily converted).
    #[must_use]
    pub fn to_text(&self) -> String {
        match self {
            Self::Inline(s) | Self::Http(s) => s.clone(),
            Self::Script(p) => p.to_string_lossy().into_owned(),
        }
    }
}

impl Serialize for Exec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_text())
    }
}

/// One flow: becomes the workflow definition `"<name>-v<version>"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FlowSpec {
    /// Workflow name.
    pub name: String,
    /// Version (1 when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// DLQ mode: a final failure parks the instance in `dlq` instead of rolling back.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dlq: bool,
    /// Lease TTL of claimed work, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<u64>,
    /// The steps, in order.
    pub steps: Vec<StepSpec>,
    #[serde(skip)]
    pub(crate) loc: Loc,
    #[serde(skip)]
    pub(crate) path: String,
}

impl FlowSpec {
    /// The version this flow registers under (1 unless `version:` says otherwise).
    #[must_use]
    pub fn effective_version(&self) -> u32 {
        self.version.unwrap_or(1)
    }
}

/// The kind of a step (`type:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepType {
    /// Runs a handler (the default).
    #[default]
    Task,
    /// Two or more tasks run at once, joined (all) after them.
    Parallel,
    /// An expression; the flow continues when true, `else` runs when false.
    Condition,
    /// Branches (each a list of steps) run at once, then a join.
    Fork,
    /// A rollback boundary.
    SavePoint,
    /// Waits for a human decision.
    Human,
}

impl StepType {
    /// Every value, in the order of the documentation.
    pub const ALL: [(Self, &'static str); 6] = [
        (Self::Task, "task"),
        (Self::Parallel, "parallel"),
        (Self::Condition, "condition"),
        (Self::Fork, "fork"),
        (Self::SavePoint, "save_point"),
        (Self::Human, "human"),
    ];

    /// The name used in files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("task", |(_, s)| s)
    }
}

/// Retry delay growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetryStrategySpec {
    /// The same delay every time.
    Fixed,
    /// `retry_delay * n`.
    Linear,
    /// `retry_delay * 2^(n-1)`.
    Exponential,
}

/// Join strategy of a fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JoinSpec {
    /// Every branch must succeed.
    All,
    /// The first branch that succeeds fires the join; failed branches are tolerated.
    Any,
}

/// What rejecting a human step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectSpec {
    /// Abort the instance (Floxy's behaviour, the default).
    Abort,
    /// Fail the step: the saga rolls back.
    Rollback,
}

/// What a human step's decision timeout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TimeoutSpec {
    /// Reject (then `on_reject` applies). The default.
    Reject,
    /// Confirm.
    Confirm,
    /// Fail the step finally.
    Fail,
}

/// A compensation with its own retry options (extension; `on_failure: handler` is the
/// short form).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct CompensationSpec {
    /// Handler run to compensate (may be omitted when `on_failure` names it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Retries of the compensation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Base retry delay, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<u64>,
    /// Timeout of one call, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(skip)]
    pub(crate) handler_loc: Loc,
}

/// One step. A scalar (`- validate`) is a task whose name and handler are that string.
///
/// Durations are in milliseconds (written as integers, or as strings with a unit:
/// `"1500ms"`, `"3s"`, `"2m"`, `"1h"`).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[non_exhaustive]
pub struct StepSpec {
    /// Step name (unique in the flow).
    pub name: String,
    /// Kind of step.
    #[serde(rename = "type")]
    pub kind: StepType,
    /// Task: handler run (default: the step name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Task: compensation handler (also the compensation's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// Task: compensation with retry options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationSpec>,
    /// Task: retries after the first call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Task: run at most once.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_idempotent: bool,
    /// Task: delay before the first run, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<u64>,
    /// Task: base retry delay, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<u64>,
    /// Task: retry delay growth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<RetryStrategySpec>,
    /// Task: timeout of one call, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Priority 0..=100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Free-form metadata handed to the handler.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Parallel: the tasks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<StepSpec>,
    /// Condition: the expression (`expr`, alias `condition`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// Condition: steps run when the expression is false.
    #[serde(rename = "else", skip_serializing_if = "Vec::is_empty")]
    pub else_steps: Vec<StepSpec>,
    /// Fork: the branches, each a list of steps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<Vec<StepSpec>>,
    /// Fork: join strategy (default all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSpec>,
    /// Fork: explicit wait list of the join (steps of the branches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_step: Option<Vec<String>>,
    /// Fork and parallel: name of the join step (default `<name>_join`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_name: Option<String>,
    /// Human: what a rejection does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_reject: Option<RejectSpec>,
    /// Human: decision timeout, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_timeout: Option<u64>,
    /// Human: what the decision timeout does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<TimeoutSpec>,
    #[serde(skip)]
    pub(crate) loc: Loc,
    #[serde(skip)]
    pub(crate) path: String,
    /// Where the handler is named (the `handler:` value, else the step).
    #[serde(skip)]
    pub(crate) handler_loc: (Loc, String),
    #[serde(skip)]
    pub(crate) on_failure_loc: (Loc, String),
    /// `type:` had an unknown value (already reported): kind checks are skipped.
    #[serde(skip)]
    pub(crate) bad_type: bool,
}

impl StepSpec {
    /// The handler a task runs: `handler`, or the step name.
    #[must_use]
    pub fn effective_handler(&self) -> &str {
        self.handler.as_deref().unwrap_or(&self.name)
    }

    /// The join step's name of a fork or parallel step.
    #[must_use]
    pub fn effective_join_name(&self) -> String {
        self.join_name
            .clone()
            .unwrap_or_else(|| format!("{}_join", self.name))
    }
}
