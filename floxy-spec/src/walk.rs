//! From the located tree to the typed structures, collecting every error.

use crate::error::{Loc, Sink, SpecErrorKind as K};
use crate::spec::{
    CompensationSpec, Exec, FlowFile, FlowSpec, HandlerSpec, JoinSpec, RejectSpec,
    RetryStrategySpec, StepSpec, StepType, TimeoutSpec, TlsSpec,
};
use crate::tree::{Kind, Node};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

/// Keys of the top level.
pub(crate) const FILE_KEYS: &[&str] = &["tls", "handlers", "flows"];
/// Keys of a TLS block.
pub(crate) const TLS_KEYS: &[&str] = &["skip_verify", "cert_file", "key_file", "ca_file"];
/// Keys of a handler.
pub(crate) const HANDLER_KEYS: &[&str] = &["name", "exec", "tls"];
/// Keys of a flow.
pub(crate) const FLOW_KEYS: &[&str] = &["name", "version", "dlq", "lease_ttl", "steps"];
/// Keys of a compensation block.
pub(crate) const COMPENSATION_KEYS: &[&str] = &["handler", "max_retries", "retry_delay", "timeout"];
/// Keys every step kind accepts.
pub(crate) const COMMON_STEP_KEYS: &[&str] = &["name", "type", "priority", "metadata"];
/// Keys of each step kind besides [`COMMON_STEP_KEYS`].
pub(crate) const KIND_KEYS: &[(StepType, &[&str])] = &[
    (
        StepType::Task,
        &[
            "handler",
            "on_failure",
            "compensation",
            "max_retries",
            "no_idempotent",
            "delay",
            "retry_delay",
            "retry_strategy",
            "timeout",
        ],
    ),
    (StepType::Parallel, &["tasks", "join_name"]),
    (StepType::Condition, &["expr", "condition", "else"]),
    (
        StepType::Fork,
        &["branches", "join", "join_step", "join_name"],
    ),
    (StepType::SavePoint, &[]),
    (
        StepType::Human,
        &["on_reject", "decision_timeout", "on_timeout"],
    ),
];

pub(crate) const RETRY_STRATEGIES: &[(RetryStrategySpec, &str)] = &[
    (RetryStrategySpec::Fixed, "fixed"),
    (RetryStrategySpec::Linear, "linear"),
    (RetryStrategySpec::Exponential, "exponential"),
];
pub(crate) const JOINS: &[(JoinSpec, &str)] = &[(JoinSpec::All, "all"), (JoinSpec::Any, "any")];
pub(crate) const REJECTS: &[(RejectSpec, &str)] = &[
    (RejectSpec::Abort, "abort"),
    (RejectSpec::Rollback, "rollback"),
];
pub(crate) const TIMEOUTS: &[(TimeoutSpec, &str)] = &[
    (TimeoutSpec::Reject, "reject"),
    (TimeoutSpec::Confirm, "confirm"),
    (TimeoutSpec::Fail, "fail"),
];

fn kind_keys(t: StepType) -> &'static [&'static str] {
    KIND_KEYS
        .iter()
        .find(|(k, _)| *k == t)
        .map_or(&[], |(_, keys)| keys)
}

/// Every key a step may have, whatever its kind.
fn all_step_keys() -> impl Iterator<Item = &'static str> {
    COMMON_STEP_KEYS
        .iter()
        .copied()
        .chain(KIND_KEYS.iter().flat_map(|(_, k)| k.iter().copied()))
}

fn join_path(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

fn or_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Reads one mapping: values by key, then reports the keys nobody asked for.
struct MapReader<'a> {
    entries: Vec<(&'a str, &'a Node, &'a Node)>,
    used: Vec<bool>,
    path: String,
}

impl<'a> MapReader<'a> {
    /// `None` (after reporting) when `node` is not a mapping.
    fn new(node: &'a Node, path: &str, what: &str, sink: &mut Sink) -> Option<Self> {
        let Kind::Map(entries) = &node.kind else {
            sink.push(
                K::InvalidValue,
                node.loc,
                path,
                format!("expected {what} (a mapping), found {}", node.describe()),
            );
            return None;
        };
        let mut out: Vec<(&str, &Node, &Node)> = Vec::with_capacity(entries.len());
        // Keys seen, in a set: a scan of `out` per key is quadratic in the mapping's size.
        let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
        for (k, v) in entries {
            match &k.kind {
                Kind::Scalar { text, .. } => {
                    if seen.insert(text.as_str()) {
                        out.push((text.as_str(), k, v));
                    } else {
                        sink.push(
                            K::InvalidValue,
                            k.loc,
                            &join_path(path, text),
                            "duplicate key",
                        );
                    }
                }
                _ => sink.push(K::InvalidValue, k.loc, path, "keys must be strings"),
            }
        }
        let used = vec![false; out.len()];
        Some(Self {
            entries: out,
            used,
            path: path.to_owned(),
        })
    }

    fn get(&mut self, key: &str) -> Option<&'a Node> {
        let i = self.entries.iter().position(|(k, ..)| *k == key)?;
        self.used[i] = true;
        Some(self.entries[i].2)
    }

    fn key_loc(&self, key: &str) -> Option<Loc> {
        self.entries
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(_, kn, _)| kn.loc)
    }

    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, ..)| *k == key)
    }

    fn path(&self, key: &str) -> String {
        join_path(&self.path, key)
    }

    /// Reports unused keys as unknown; `expected` is listed in the message.
    fn finish(self, expected: &[&str], sink: &mut Sink) {
        for ((k, kn, _), used) in self.entries.iter().zip(&self.used) {
            if !used {
                sink.push(
                    K::UnknownKey,
                    kn.loc,
                    &join_path(&self.path, k),
                    format!(
                        "unknown key {k:?}, expected one of: {}",
                        expected.join(", ")
                    ),
                );
            }
        }
    }
}

fn invalid(sink: &mut Sink, node: &Node, path: &str, msg: String) {
    sink.push(K::InvalidValue, node.loc, path, msg);
}

fn string(node: &Node, path: &str, sink: &mut Sink) -> Option<String> {
    match &node.kind {
        Kind::Scalar { text, .. } if !node.is_null() => Some(text.clone()),
        _ => {
            invalid(
                sink,
                node,
                path,
                format!("expected a string, found {}", node.describe()),
            );
            None
        }
    }
}

fn plain(node: &Node) -> Option<&str> {
    match &node.kind {
        Kind::Scalar { text, plain: true } => Some(text),
        _ => None,
    }
}

fn boolean(node: &Node, path: &str, sink: &mut Sink) -> Option<bool> {
    match plain(node) {
        Some("true" | "True" | "TRUE") => Some(true),
        Some("false" | "False" | "FALSE") => Some(false),
        _ => {
            invalid(
                sink,
                node,
                path,
                format!("expected true or false, found {}", node.describe()),
            );
            None
        }
    }
}

fn uint(node: &Node, path: &str, max: u64, sink: &mut Sink) -> Option<u64> {
    let parsed = plain(node).and_then(|t| {
        let t = t.strip_prefix('+').unwrap_or(t);
        if t.bytes().all(|b| b.is_ascii_digit() || b == b'_') && !t.is_empty() {
            t.replace('_', "").parse::<u64>().ok()
        } else {
            None
        }
    });
    match parsed {
        Some(v) if v <= max => Some(v),
        Some(v) => {
            invalid(
                sink,
                node,
                path,
                format!("{v} is too large, the most is {max}"),
            );
            None
        }
        None => {
            invalid(
                sink,
                node,
                path,
                format!("expected a non-negative integer, found {}", node.describe()),
            );
            None
        }
    }
}

fn u32_of(node: &Node, path: &str, sink: &mut Sink) -> Option<u32> {
    uint(node, path, u64::from(u32::MAX), sink).and_then(|v| u32::try_from(v).ok())
}

/// Parses a duration: an integer of milliseconds, or a string with a unit
/// (`1500ms`, `3s`, `2m`, `1h`; decimals allowed: `1.5s`).
pub(crate) fn parse_duration_text(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let factor: f64 = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?}, expected ms, s, m or h"
            ));
        }
    };
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(format!(
            "invalid duration {text:?}: expected milliseconds or a number with a unit (1500ms, 3s, 2m, 1h)"
        ));
    }
    if unit.trim().is_empty() && num.contains('.') {
        return Err(format!(
            "invalid duration {text:?}: milliseconds must be a whole number"
        ));
    }
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let ms = (v * factor).round();
    // 2^53: exactly representable; far beyond any sensible duration.
    if !(0.0..=9_007_199_254_740_992.0).contains(&ms) {
        return Err(format!("invalid duration {text:?}: out of range"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(ms as u64)
}

fn duration(node: &Node, path: &str, sink: &mut Sink) -> Option<u64> {
    match &node.kind {
        Kind::Scalar { text, .. } if !node.is_null() => match parse_duration_text(text) {
            Ok(v) => Some(v),
            Err(msg) => {
                invalid(sink, node, path, msg);
                None
            }
        },
        _ => {
            invalid(
                sink,
                node,
                path,
                format!(
                    "expected a duration (milliseconds or \"3s\"), found {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

fn enumeration<T: Copy>(
    node: &Node,
    path: &str,
    values: &[(T, &str)],
    sink: &mut Sink,
) -> Option<T> {
    let names: Vec<&str> = values.iter().map(|(_, n)| *n).collect();
    match &node.kind {
        Kind::Scalar { text, .. } if !node.is_null() => {
            if let Some((v, _)) = values.iter().find(|(_, n)| n == text) {
                Some(*v)
            } else {
                invalid(
                    sink,
                    node,
                    path,
                    format!("unknown value {text:?}, expected {}", or_list(&names)),
                );
                None
            }
        }
        _ => {
            invalid(
                sink,
                node,
                path,
                format!("expected {}, found {}", or_list(&names), node.describe()),
            );
            None
        }
    }
}

fn list<'a>(node: &'a Node, path: &str, sink: &mut Sink) -> Option<&'a [Node]> {
    match &node.kind {
        Kind::Seq(items) => Some(items),
        _ if node.is_null() => Some(&[]),
        _ => {
            invalid(
                sink,
                node,
                path,
                format!("expected a list, found {}", node.describe()),
            );
            None
        }
    }
}

/// Reads the whole file. `None` only when the document is not a mapping at all.
pub(crate) fn file(root: &Node, file_name: &str, sink: &mut Sink) -> Option<FlowFile> {
    let mut m = MapReader::new(root, "", "a flow file", sink)?;
    let tls = m.get("tls").and_then(|n| tls(n, "tls", sink));
    let mut handlers = Vec::new();
    if let Some(n) = m.get("handlers")
        && let Some(items) = list(n, "handlers", sink)
    {
        for (i, item) in items.iter().enumerate() {
            if let Some(h) = handler(item, &format!("handlers[{i}]"), sink) {
                handlers.push(h);
            }
        }
    }
    let mut flows = Vec::new();
    if let Some(n) = m.get("flows")
        && let Some(items) = list(n, "flows", sink)
    {
        for (i, item) in items.iter().enumerate() {
            if let Some(f) = flow(item, &format!("flows[{i}]"), sink) {
                flows.push(f);
            }
        }
    }
    m.finish(FILE_KEYS, sink);
    Some(FlowFile {
        tls,
        handlers,
        flows,
        file: file_name.to_owned(),
    })
}

fn tls(node: &Node, path: &str, sink: &mut Sink) -> Option<TlsSpec> {
    let mut m = MapReader::new(node, path, "a TLS block", sink)?;
    let mut t = TlsSpec::default();
    if let Some(n) = m.get("skip_verify") {
        t.skip_verify = boolean(n, &m.path("skip_verify"), sink).unwrap_or(false);
    }
    for (key, slot) in [
        ("cert_file", &mut t.cert_file),
        ("key_file", &mut t.key_file),
        ("ca_file", &mut t.ca_file),
    ] {
        if let Some(n) = m.get(key) {
            *slot = string(n, &m.path(key), sink).map(PathBuf::from);
        }
    }
    m.finish(TLS_KEYS, sink);
    Some(t)
}

fn handler(node: &Node, path: &str, sink: &mut Sink) -> Option<HandlerSpec> {
    let mut m = MapReader::new(node, path, "a handler", sink)?;
    let name = m.get("name").and_then(|n| string(n, &m.path("name"), sink));
    let exec = m.get("exec").and_then(|n| string(n, &m.path("exec"), sink));
    let tls = m.get("tls").and_then(|n| tls(n, &m.path("tls"), sink));
    let (has_name, has_exec) = (m.has("name"), m.has("exec"));
    m.finish(HANDLER_KEYS, sink);
    if !has_name {
        sink.push(K::MissingKey, node.loc, path, "a handler needs a name");
    }
    if !has_exec {
        sink.push(K::MissingKey, node.loc, path, "a handler needs exec");
    }
    if let Some(e) = &exec
        && e.trim().is_empty()
    {
        sink.push(
            K::InvalidValue,
            node.loc,
            &join_path(path, "exec"),
            "exec is empty",
        );
    }
    let name = name?;
    let exec_text = exec?;
    if name.is_empty() {
        sink.push(
            K::InvalidValue,
            node.loc,
            &join_path(path, "name"),
            "name is empty",
        );
    }
    Some(HandlerSpec {
        name,
        exec: Exec::classify(&exec_text),
        tls,
        exec_text,
        loc: node.loc,
        path: path.to_owned(),
    })
}

fn flow(node: &Node, path: &str, sink: &mut Sink) -> Option<FlowSpec> {
    let mut m = MapReader::new(node, path, "a flow", sink)?;
    let name = m.get("name").and_then(|n| string(n, &m.path("name"), sink));
    let version = m.get("version").and_then(|n| {
        let p = m.path("version");
        let v = u32_of(n, &p, sink)?;
        if v == 0 {
            invalid(sink, n, &p, "version must be at least 1".to_owned());
            return None;
        }
        Some(v)
    });
    let dlq = m
        .get("dlq")
        .and_then(|n| boolean(n, &m.path("dlq"), sink))
        .unwrap_or(false);
    let lease_ttl = m
        .get("lease_ttl")
        .and_then(|n| duration(n, &m.path("lease_ttl"), sink));
    let steps_node = m.get("steps");
    let steps = steps_node
        .map(|n| step_list(n, &m.path("steps"), sink))
        .unwrap_or_default();
    m.finish(FLOW_KEYS, sink);
    match &name {
        None if !m_has_key(node, "name") => {
            sink.push(K::MissingKey, node.loc, path, "a flow needs a name");
        }
        Some(n) if n.is_empty() => {
            sink.push(
                K::InvalidValue,
                node.loc,
                &join_path(path, "name"),
                "name is empty",
            );
        }
        _ => {}
    }
    if steps.is_empty() {
        let loc = steps_node.map_or(node.loc, |n| n.loc);
        sink.push(
            K::MissingKey,
            loc,
            &join_path(path, "steps"),
            "a flow needs at least one step",
        );
    }
    if let Some(first) = steps.first()
        && first.kind == StepType::Condition
    {
        sink.push(
            K::Semantic,
            first.loc,
            &first.path,
            "a condition cannot be the first step (it has no input to test)",
        );
    }
    Some(FlowSpec {
        name: name?,
        version,
        dlq,
        lease_ttl,
        steps,
        loc: node.loc,
        path: path.to_owned(),
    })
}

fn m_has_key(node: &Node, key: &str) -> bool {
    matches!(&node.kind, Kind::Map(e) if e.iter().any(|(k, _)| matches!(&k.kind, Kind::Scalar { text, .. } if text == key)))
}

fn step_list(node: &Node, path: &str, sink: &mut Sink) -> Vec<StepSpec> {
    let Some(items) = list(node, path, sink) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| step(item, &format!("{path}[{i}]"), sink))
        .collect()
}

#[allow(clippy::too_many_lines)]
fn step(node: &Node, path: &str, sink: &mut Sink) -> Option<StepSpec> {
    if let Kind::Scalar { .. } = &node.kind {
        let name = string(node, path, sink)?;
        if name.is_empty() {
            invalid(sink, node, path, "step name is empty".to_owned());
        }
        return Some(StepSpec {
            name,
            loc: node.loc,
            path: path.to_owned(),
            handler_loc: (node.loc, path.to_owned()),
            ..StepSpec::default()
        });
    }
    let mut m = MapReader::new(node, path, "a step (a name or a mapping)", sink)?;
    let kind = m
        .get("type")
        .map(|n| enumeration(n, &m.path("type"), &StepType::ALL, sink));
    let mut s = StepSpec {
        kind: kind.flatten().unwrap_or_default(),
        bad_type: matches!(kind, Some(None)),
        loc: node.loc,
        path: path.to_owned(),
        ..StepSpec::default()
    };
    match m.get("name") {
        Some(n) => {
            s.name = string(n, &m.path("name"), sink).unwrap_or_default();
            if s.name.is_empty() && !n.is_null() {
                invalid(sink, n, &m.path("name"), "step name is empty".to_owned());
            }
        }
        None => sink.push(K::MissingKey, node.loc, path, "a step needs a name"),
    }
    s.handler_loc = (node.loc, path.to_owned());
    s.on_failure_loc = (node.loc, path.to_owned());
    if let Some(n) = m.get("handler") {
        s.handler = string(n, &m.path("handler"), sink);
        s.handler_loc = (n.loc, m.path("handler"));
    }
    if let Some(n) = m.get("on_failure") {
        s.on_failure = string(n, &m.path("on_failure"), sink);
        s.on_failure_loc = (n.loc, m.path("on_failure"));
    }
    if let Some(n) = m.get("compensation") {
        s.compensation = compensation(n, &m.path("compensation"), sink);
    }
    if let Some(n) = m.get("max_retries") {
        s.max_retries = u32_of(n, &m.path("max_retries"), sink);
    }
    if let Some(n) = m.get("no_idempotent") {
        s.no_idempotent = boolean(n, &m.path("no_idempotent"), sink).unwrap_or(false);
    }
    for (key, slot) in [
        ("delay", &mut s.delay),
        ("retry_delay", &mut s.retry_delay),
        ("timeout", &mut s.timeout),
        ("decision_timeout", &mut s.decision_timeout),
    ] {
        if let Some(n) = m.get(key) {
            *slot = duration(n, &m.path(key), sink);
        }
    }
    if let Some(n) = m.get("retry_strategy") {
        s.retry_strategy = enumeration(n, &m.path("retry_strategy"), RETRY_STRATEGIES, sink);
    }
    if let Some(n) = m.get("priority") {
        s.priority = uint(n, &m.path("priority"), 100, sink).and_then(|v| u8::try_from(v).ok());
    }
    if let Some(n) = m.get("metadata") {
        s.metadata = metadata(n, &m.path("metadata"), sink);
    }
    if let Some(n) = m.get("tasks") {
        let p = m.path("tasks");
        s.tasks = step_list(n, &p, sink);
        if s.kind == StepType::Parallel {
            for t in &s.tasks {
                if t.kind != StepType::Task {
                    sink.push(
                        K::Semantic,
                        t.loc,
                        &t.path,
                        format!(
                            "the tasks of a parallel step are tasks, not {}",
                            t.kind.as_str()
                        ),
                    );
                }
            }
        }
    }
    match (m.get("expr"), m.get("condition")) {
        (Some(a), Some(_)) => {
            let loc = m.key_loc("condition").unwrap_or(a.loc);
            sink.push(
                K::Semantic,
                loc,
                &m.path("condition"),
                "expr and condition are the same key; give one",
            );
            s.expr = string(a, &m.path("expr"), sink);
        }
        (Some(n), None) => s.expr = string(n, &m.path("expr"), sink),
        (None, Some(n)) => s.expr = string(n, &m.path("condition"), sink),
        (None, None) => {}
    }
    if let Some(n) = m.get("else") {
        s.else_steps = step_list(n, &m.path("else"), sink);
    }
    if let Some(n) = m.get("branches") {
        let p = m.path("branches");
        if let Some(items) = list(n, &p, sink) {
            for (i, b) in items.iter().enumerate() {
                let bp = format!("{p}[{i}]");
                let steps = step_list(b, &bp, sink);
                if steps.is_empty() && list(b, &bp, &mut Sink::new("")).is_some() {
                    sink.push(K::Semantic, b.loc, &bp, "a branch needs at least one step");
                }
                if let Some(first) = steps.first()
                    && first.kind == StepType::Condition
                {
                    sink.push(
                        K::Semantic,
                        first.loc,
                        &first.path,
                        "a condition cannot be the first step of a branch",
                    );
                }
                s.branches.push(steps);
            }
        }
    }
    if let Some(n) = m.get("join") {
        s.join = enumeration(n, &m.path("join"), JOINS, sink);
    }
    if let Some(n) = m.get("join_step") {
        let p = m.path("join_step");
        s.join_step = list(n, &p, sink).map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, x)| string(x, &format!("{p}[{i}]"), sink))
                .collect()
        });
    }
    if let Some(n) = m.get("join_name") {
        s.join_name = string(n, &m.path("join_name"), sink);
    }
    if let Some(n) = m.get("on_reject") {
        s.on_reject = enumeration(n, &m.path("on_reject"), REJECTS, sink);
    }
    if let Some(n) = m.get("on_timeout") {
        s.on_timeout = enumeration(n, &m.path("on_timeout"), TIMEOUTS, sink);
    }
    // Keys of another kind of step.
    let allowed: Vec<&str> = COMMON_STEP_KEYS
        .iter()
        .chain(kind_keys(s.kind))
        .copied()
        .collect();
    for key in all_step_keys() {
        if !s.bad_type
            && !allowed.contains(&key)
            && let Some(loc) = m.key_loc(key)
        {
            sink.push(
                K::UnknownKey,
                loc,
                &m.path(key),
                format!(
                    "key {key:?} does not apply to a {} step (type: {})",
                    s.kind.as_str(),
                    s.kind.as_str()
                ),
            );
        }
    }
    let expected: Vec<&str> = if s.bad_type {
        all_step_keys().collect()
    } else {
        allowed.clone()
    };
    let step_loc = s.loc;
    match s.kind {
        _ if s.bad_type => {}
        StepType::Parallel if s.tasks.len() < 2 => sink.push(
            K::Semantic,
            m.key_loc("tasks").unwrap_or(step_loc),
            &m.path("tasks"),
            format!(
                "a parallel step needs two or more tasks, has {}",
                s.tasks.len()
            ),
        ),
        StepType::Condition if s.expr.is_none() && !m.has("expr") && !m.has("condition") => {
            sink.push(K::MissingKey, step_loc, path, "a condition needs expr");
        }
        StepType::Fork if s.branches.len() < 2 && !m.has("branches") => sink.push(
            K::MissingKey,
            step_loc,
            path,
            "a fork needs branches (two or more lists of steps)",
        ),
        StepType::Fork if s.join.is_some() && s.join_step.is_some() => {}
        StepType::Task => {
            if let Some(c) = &s.compensation
                && c.handler.is_some()
                && s.on_failure.is_some()
            {
                sink.push(
                    K::Semantic,
                    m.key_loc("compensation").unwrap_or(step_loc),
                    &m.path("compensation.handler"),
                    "on_failure and compensation.handler both name the compensation; give one",
                );
            } else if let Some(c) = &s.compensation
                && c.handler.is_none()
                && s.on_failure.is_none()
            {
                sink.push(
                    K::MissingKey,
                    m.key_loc("compensation").unwrap_or(step_loc),
                    &m.path("compensation"),
                    "a compensation needs a handler (compensation.handler or on_failure)",
                );
            }
        }
        _ => {}
    }
    m.finish(&expected, sink);
    Some(s)
}

fn compensation(node: &Node, path: &str, sink: &mut Sink) -> Option<CompensationSpec> {
    let mut m = MapReader::new(node, path, "a compensation", sink)?;
    let mut c = CompensationSpec::default();
    if let Some(n) = m.get("handler") {
        c.handler = string(n, &m.path("handler"), sink);
        c.handler_loc = n.loc;
    }
    if let Some(n) = m.get("max_retries") {
        c.max_retries = u32_of(n, &m.path("max_retries"), sink);
    }
    if let Some(n) = m.get("retry_delay") {
        c.retry_delay = duration(n, &m.path("retry_delay"), sink);
    }
    if let Some(n) = m.get("timeout") {
        c.timeout = duration(n, &m.path("timeout"), sink);
    }
    m.finish(COMPENSATION_KEYS, sink);
    Some(c)
}

fn metadata(node: &Node, path: &str, sink: &mut Sink) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(m) = MapReader::new(node, path, "metadata", sink) else {
        return out;
    };
    for (k, _, v) in &m.entries {
        let p = join_path(path, k);
        match &v.kind {
            Kind::Scalar { text, .. } if !v.is_null() => {
                out.insert((*k).to_owned(), text.clone());
            }
            _ => invalid(
                sink,
                v,
                &p,
                format!("metadata values are scalars, found {}", v.describe()),
            ),
        }
    }
    out
}

/// Checks across the file: unique handler names, declared handlers, unique flows.
pub(crate) fn semantic(f: &FlowFile, sink: &mut Sink) {
    let mut seen: HashMap<&str, &HandlerSpec> = HashMap::new();
    for h in &f.handlers {
        if let Some(first) = seen.get(h.name.as_str()) {
            sink.push(
                K::Semantic,
                h.loc,
                &join_path(&h.path, "name"),
                format!(
                    "handler {:?} is declared twice (first at line {})",
                    h.name, first.loc.line
                ),
            );
        } else {
            seen.insert(&h.name, h);
        }
    }
    let mut flows: HashMap<(&str, u32), &FlowSpec> = HashMap::new();
    for fl in &f.flows {
        let key = (fl.name.as_str(), fl.effective_version());
        if let Some(first) = flows.get(&key) {
            sink.push(
                K::Semantic,
                fl.loc,
                &fl.path,
                format!(
                    "flow {:?} version {} is declared twice (first at line {})",
                    fl.name, key.1, first.loc.line
                ),
            );
        } else {
            flows.insert(key, fl);
        }
        for s in &fl.steps {
            check_handlers(s, &seen, sink);
        }
    }
}

fn check_handlers(s: &StepSpec, handlers: &HashMap<&str, &HandlerSpec>, sink: &mut Sink) {
    let unknown = |name: &str, what: &str, loc: Loc, path: &str, sink: &mut Sink| {
        if !handlers.contains_key(name) {
            sink.push(
                K::Semantic,
                loc,
                path,
                format!("{what} {name:?} is not declared in handlers"),
            );
        }
    };
    if s.kind == StepType::Task && !s.name.is_empty() && !s.bad_type {
        unknown(
            s.effective_handler(),
            "handler",
            s.handler_loc.0,
            &s.handler_loc.1,
            sink,
        );
        if let Some(h) = &s.on_failure {
            unknown(
                h,
                "compensation handler",
                s.on_failure_loc.0,
                &s.on_failure_loc.1,
                sink,
            );
        }
        if let Some(c) = &s.compensation
            && let Some(h) = &c.handler
        {
            let p = join_path(&s.path, "compensation.handler");
            unknown(h, "compensation handler", c.handler_loc, &p, sink);
        }
    }
    for t in s
        .tasks
        .iter()
        .chain(&s.else_steps)
        .chain(s.branches.iter().flatten())
    {
        check_handlers(t, handlers, sink);
    }
}
