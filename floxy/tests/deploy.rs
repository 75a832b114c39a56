//! The shipped Prometheus alert rules and Grafana dashboard (repository `deploy/`): they
//! parse, every rule has the required fields, every expression references only metrics the
//! library defines (with their documented labels), and `promtool` accepts the rules, their
//! unit tests and the dashboard's queries. `promtool` (Debian package `prometheus`) is
//! required: without it the promtool test fails, it does not skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::metrics::{METRICS, MetricKind, find};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(rel: &str) -> String {
    let p = deploy().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// The floxy metric names an expression references, each checked against
/// [`floxy::metrics::METRICS`]: a defined name, or a histogram's `_bucket`/`_sum`/`_count`
/// series; label matchers only use the metric's labels (plus `le` on buckets and the target
/// labels); `by (...)` / `on (...)` clauses only use labels of the referenced metrics.
/// Returns the base names referenced.
fn check_expr(context: &str, expr: &str) -> BTreeSet<&'static str> {
    let bytes = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut names = BTreeSet::new();
    let mut grouping_labels: Vec<String> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let word = &expr[start..i];
        if matches!(word, "by" | "on" | "without" | "ignoring") {
            let rest = expr[i..].trim_start();
            if let Some(inner) = rest.strip_prefix('(') {
                let close = inner.find(')').unwrap();
                grouping_labels.extend(
                    inner[..close]
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
            }
            continue;
        }
        if !word.starts_with("floxy_") {
            continue;
        }
        let (def, suffix) = if let Some(d) = find(word) {
            (d, "")
        } else {
            let (base, suffix) = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s).map(|b| (b, *s)))
                .unwrap_or_else(|| panic!("{context}: {word} is not a floxy metric"));
            let def =
                find(base).unwrap_or_else(|| panic!("{context}: {word} is not a floxy metric"));
            assert_eq!(
                def.kind,
                MetricKind::Histogram,
                "{context}: {word}: only histograms have {suffix} series"
            );
            (def, suffix)
        };
        names.insert(def.name);
        if bytes.get(i) == Some(&b'{') {
            let close = expr[i..].find('}').unwrap() + i;
            for matcher in expr[i + 1..close].split(',') {
                let label = matcher.split(['=', '!']).next().unwrap().trim().to_owned();
                if label.is_empty() {
                    continue;
                }
                let ok = def.labels.contains(&label.as_str())
                    || TARGET_LABELS.contains(&label.as_str())
                    || (suffix == "_bucket" && label == "le");
                assert!(ok, "{context}: {word} has no label {label:?}");
            }
            i = close + 1;
        }
    }
    assert!(!names.is_empty(), "{context}: references no floxy metric");
    for label in grouping_labels {
        let ok = label == "le"
            || TARGET_LABELS.contains(&label.as_str())
            || names
                .iter()
                .any(|n| find(n).unwrap().labels.contains(&label.as_str()));
        assert!(
            ok,
            "{context}: groups by {label:?}, a label none of {names:?} has"
        );
    }
    names
}

/// GitHub-style anchors of the Markdown headings of `md`.
fn anchors(md: &str) -> BTreeSet<String> {
    md.lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn the_alert_rules_are_complete_and_reference_only_defined_metrics() {
    let file: RuleFile = serde_saphyr::from_str(&read("prometheus/alerts.yaml")).unwrap();
    let readme_anchors = anchors(&read("README.md"));
    let mut alerts = BTreeSet::new();
    let mut referenced = BTreeSet::new();
    assert!(!file.groups.is_empty());
    for g in &file.groups {
        assert!(!g.name.is_empty());
        assert!(!g.rules.is_empty(), "group {} has no rule", g.name);
        for r in &g.rules {
            let ctx = format!("alert {}", r.alert);
            assert!(r.alert.starts_with("Floxy"), "{ctx}: name");
            assert!(alerts.insert(r.alert.clone()), "{ctx}: twice");
            let severity = r.labels.get("severity").map(String::as_str);
            assert!(
                matches!(severity, Some("warning" | "critical")),
                "{ctx}: severity {severity:?}"
            );
            for key in ["summary", "description", "runbook"] {
                let v = r.annotations.get(key).map_or("", |s| s.trim());
                assert!(!v.is_empty(), "{ctx}: annotation {key} missing");
            }
            let runbook = &r.annotations["runbook"];
            let anchor = runbook
                .strip_prefix("deploy/README.md#")
                .and_then(|s| s.split(':').next())
                .unwrap_or_else(|| panic!("{ctx}: runbook must point into deploy/README.md"));
            assert!(
                readme_anchors.contains(anchor),
                "{ctx}: deploy/README.md has no section #{anchor}"
            );
            if let Some(f) = &r.for_ {
                assert!(
                    f.ends_with('m') || f.ends_with('s') || f.ends_with('h'),
                    "{ctx}: for {f}"
                );
            }
            referenced.extend(check_expr(&ctx, &r.expr));
        }
    }
    // The situations the alerts must cover (CLI.md §6, the safety guide).
    for (what, metric) in [
        (
            "stuck instances / oldest pending age",
            "floxy_queue_oldest_pending_age_seconds",
        ),
        ("retry storms", "floxy_step_retries_total"),
        ("compensation failures", "floxy_compensations_total"),
        ("queue starvation", "floxy_claims_total"),
        ("queue growth", "floxy_queue_depth"),
        ("DLQ growth", "floxy_dlq_records_written_total"),
        ("lease expiries", "floxy_lease_expiries_total"),
    ] {
        assert!(
            referenced.contains(metric),
            "no alert for {what} ({metric})"
        );
    }
}

/// Every `expr` (and templating query) of the dashboard, with its panel title.
fn dashboard_queries(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            let title = map
                .get("title")
                .and_then(|t| t.as_str())
                .unwrap_or(title)
                .to_owned();
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("expr" | "definition", serde_json::Value::String(q)) => {
                        out.push((title.clone(), q.clone()));
                    }
                    _ => dashboard_queries(x, &title, out),
                }
            }
        }
        serde_json::Value::Array(xs) => {
            for x in xs {
                dashboard_queries(x, title, out);
            }
        }
        _ => {}
    }
}

fn dashboard() -> (serde_json::Value, Vec<(String, String)>) {
    let v: serde_json::Value = serde_json::from_str(&read("grafana/floxy-dashboard.json")).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&v, "dashboard", &mut queries);
    (v, queries)
}

#[test]
fn the_dashboard_parses_and_queries_only_defined_metrics() {
    let (v, queries) = dashboard();
    assert_eq!(v["uid"], "floxy-engine");
    let panels = v["panels"].as_array().unwrap();
    assert!(panels.len() > 10);
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel ids unique");
        if p["type"] != "row" {
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "panel {} has no query",
                p["title"]
            );
        }
    }
    let mut referenced = BTreeSet::new();
    for (title, q) in &queries {
        let q = q.replace('\n', " ");
        let q = q
            .strip_prefix("label_values(")
            .map_or(q.as_str(), |rest| rest.split(',').next().unwrap());
        referenced.extend(check_expr(&format!("panel {title:?}"), q));
    }
    let missing: Vec<&str> = METRICS
        .iter()
        .map(|m| m.name)
        .filter(|n| !referenced.contains(n))
        .collect();
    assert!(missing.is_empty(), "metrics on no panel: {missing:?}");
}

fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "promtool not found on PATH: install it (`apt-get install -y --no-install-recommends prometheus`)"
        )
    })
}

fn run_promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules_their_unit_tests_and_the_dashboard_queries() {
    let dir = deploy().join("prometheus");
    let checked = run_promtool(&["check", "rules", "alerts.yaml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_promtool(&["test", "rules", "alerts_test.yaml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // The dashboard's queries, with Grafana's variables filled in, as recording rules:
    // `promtool check rules` parses each PromQL expression.
    let (_, queries) = dashboard();
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: floxy-dashboard\n    rules:\n");
    for (n, (_, q)) in queries
        .iter()
        .filter(|(_, q)| !q.starts_with("label_values("))
        .enumerate()
    {
        let q = q
            .replace("$__rate_interval", "5m")
            .replace("$workflow", ".*");
        let quoted = serde_json::to_string(&q).unwrap();
        writeln!(
            rules,
            "      - record: floxy_dashboard:q{n}\n        expr: {quoted}"
        )
        .unwrap();
    }
    std::fs::write(tmp.path().join("dashboard.yaml"), rules).unwrap();
    let checked = run_promtool(&["check", "rules", "dashboard.yaml"], tmp.path());
    assert!(checked.contains("SUCCESS"), "{checked}");
}
