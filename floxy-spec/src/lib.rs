//! The YAML and JSON flow-file format of floxy (Floxy Pro compatible), for `floxyctl`,
//! `floxyd` and `POST /api/workflows`.
//!
//! A file declares handlers (`name` + `exec`: a multi-line inline bash script, an
//! `http(s)://` URL, or a script path run as `bash <path>`), optional TLS options for HTTP
//! handlers (global, replaced per handler), and flows. Each flow becomes the core
//! [`WorkflowDefinition`](floxy_core::model::WorkflowDefinition) `"<name>-v<version>"`
//! (version 1 unless `version:`), built with the core's Builder and validated by the core.
//!
//! ```
//! use floxy_spec::{Exec, Format, parse_str};
//!
//! let yaml = r#"
//! tls: { ca_file: ca.pem }          # global TLS of HTTP handlers
//! handlers:
//!   - name: reserve                 # inline script: exec has a newline
//!     exec: |
//!       echo "$INPUT" | jq -c '.reserved = true'
//!   - { name: release, exec: ./scripts/release.sh }   # a script path
//!   - name: notify                  # an HTTP handler, its own TLS block
//!     exec: https://svc.local/notify
//!     tls: { skip_verify: true }
//!   - { name: email, exec: ./scripts/email.sh }
//!   - { name: sms, exec: ./scripts/sms.sh }
//!   - { name: small_order, exec: ./scripts/small.sh }
//!   - { name: ship, exec: ./scripts/ship.sh }
//! flows:
//!   - name: order
//!     version: 2                    # extension (default 1)
//!     dlq: false                    # extension: DLQ mode
//!     lease_ttl: 30s                # extension
//!     steps:
//!       - name: reserve
//!         on_failure: release       # compensation (handler and name)
//!         max_retries: 3
//!         retry_delay: 3000         # ms; "3s" works too
//!         retry_strategy: exponential   # fixed | linear | exponential
//!         timeout: 4500
//!         metadata: { team: shop }
//!       - type: parallel            # two or more tasks, joined (all) by fanout_join
//!         name: fanout
//!         tasks: [ email, sms ]
//!       - type: condition           # never the first step
//!         name: big
//!         expr: "{{ gt .amount 100 }}"  # alias: condition
//!         else: [ small_order ]
//!       - type: save_point          # extension: rollbacks stop here
//!         name: paid
//!       - type: fork                # extension: branches + join
//!         name: deliver
//!         join: any                 # all | any; or join_step: [names]
//!         branches:
//!           - [ { name: ship_a, handler: ship } ]
//!           - [ { name: ship_b, handler: ship, priority: 10 } ]
//!       - type: human               # extension: waits for a decision
//!         name: approve
//!         on_reject: rollback       # abort (default) | rollback
//!         decision_timeout: 1h
//!         on_timeout: reject        # reject | confirm | fail
//!       - name: notify
//!         compensation: { handler: release, max_retries: 5, retry_delay: 1s, timeout: 10s }
//! "#;
//! let file = parse_str(yaml, Format::Yaml, "order.yaml")?;
//! assert!(matches!(file.handler("notify").unwrap().exec, Exec::Http(_)));
//! let defs = file.definitions()?;
//! assert_eq!(defs[0].id().as_str(), "order-v2");
//! // Each task's metadata carries its handler's exec string, as in Floxy.
//! assert_eq!(defs[0].steps[0].options.metadata["exec"], "echo \"$INPUT\" | jq -c '.reserved = true'\n");
//!
//! // Every problem is reported with its place and key path.
//! let bad = "handlers: [{name: a, exec: x}]\nflows:\n  - name: f\n    steps:\n      - {name: a, retry_strategy: expo}\n";
//! let err = parse_str(bad, Format::Yaml, "flow.yaml").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "flow.yaml:5:35: flows[0].steps[0].retry_strategy: unknown value \"expo\", expected fixed, linear or exponential"
//! );
//! # Ok::<(), floxy_spec::SpecErrors>(())
//! ```
//!
//! # Rules
//!
//! - Unknown keys are errors (at the key), as are keys of another step kind (`tasks` on
//!   a task). Booleans are strict (`true`/`false`; `yes`, `on` are not booleans).
//! - A handler needs `name` and `exec`; names are unique. A flow needs `name` and at least
//!   one step; `(name, version)` is unique. `parallel` needs two or more tasks (tasks only);
//!   a condition needs `expr` and is not the first step of a flow or branch; every handler
//!   a step names (`handler`, default the step name; `on_failure`; `compensation.handler`)
//!   is declared. Errors inside `else`, `tasks` and `branches` are reported like any other.
//! - Durations: integers are milliseconds; strings may carry a unit (`1500ms`, `3s`, `2m`,
//!   `1h`, decimals allowed with a unit).
//! - Generated join steps are named `<name>_join` (`join_name:` overrides it). The
//!   compensation of `on_failure: h` is named `h`.
//! - Defaults not set in the file are the core's (retries 3, exponential backoff, ...).
//! - The core's validation runs only when the file has no other error; its problems are
//!   placed at the step they name.
//! - [`load`] resolves script and TLS paths against the file's directory; a missing
//!   script is an error at its handler. [`parse_str`] takes paths as written.
//! - JSON uses the same schema ([`json_schema`], published as `flow.schema.json`).
//!
//! [`graph::render`] draws a definition as text, Mermaid or DOT.
#![warn(unreachable_pub)]

mod convert;
mod error;
pub mod graph;
mod schema;
mod spec;
mod tree;
mod walk;

pub use error::{SpecError, SpecErrorKind, SpecErrors};
pub use schema::json_schema;
pub use spec::{
    CompensationSpec, Exec, FlowFile, FlowSpec, Format, HandlerSpec, JoinSpec, RejectSpec,
    RetryStrategySpec, StepSpec, StepType, TimeoutSpec, TlsSpec,
};

use error::{Loc, Sink};
use std::path::Path;

/// Parses a flow file from `text`. `file` names it in error messages.
///
/// Every problem is reported (syntax, unknown keys, bad values, the format's rules and the
/// core's validation of the definitions each flow produces), each with its line, column
/// and key path. Script paths are taken as written; [`load`] resolves and checks them.
///
/// # Errors
/// All problems found, in the order of the text.
pub fn parse_str(text: &str, format: Format, file: &str) -> Result<FlowFile, SpecErrors> {
    let mut sink = Sink::new(file);
    let root = match format {
        Format::Yaml => tree::parse_yaml(text, &mut sink),
        Format::Json => tree::parse_json(text, &mut sink),
    };
    let Some(root) = root else {
        if sink.errors.is_empty() {
            sink.push(
                SpecErrorKind::Syntax,
                Loc { line: 1, column: 1 },
                "",
                "the file is empty",
            );
        }
        sink.finish()?;
        return Err(SpecErrors(Vec::new()));
    };
    let parsed = walk::file(&root, file, &mut sink);
    if let Some(f) = &parsed {
        walk::semantic(f, &mut sink);
        if sink.errors.is_empty() {
            f.definitions_into(&mut sink);
        }
    }
    sink.finish()?;
    parsed.ok_or_else(|| SpecErrors(Vec::new()))
}

/// Reads and parses the flow file at `path` (format from its extension: `.yaml`, `.yml`,
/// `.json`). Script paths are resolved against the file's directory and must exist; TLS
/// file paths are resolved the same way.
///
/// # Errors
/// An unreadable file, an unknown extension, or every problem [`parse_str`] finds, plus
/// each missing script (named, at its handler's place).
pub fn load(path: &Path) -> Result<FlowFile, SpecErrors> {
    let name = path.display().to_string();
    let mut sink = Sink::new(&name);
    let Some(format) = Format::from_path(path) else {
        sink.push(
            SpecErrorKind::Io,
            Loc::default(),
            "",
            "unknown file type: expected a .yaml, .yml or .json file",
        );
        sink.finish()?;
        return Err(SpecErrors(Vec::new()));
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            sink.push(
                SpecErrorKind::Io,
                Loc::default(),
                "",
                format!("cannot read: {e}"),
            );
            sink.finish()?;
            return Err(SpecErrors(Vec::new()));
        }
    };
    let dir = path.parent().unwrap_or_else(|| Path::new(""));
    let mut file = match parse_str(&text, format, &name) {
        Ok(f) => f,
        Err(mut e) => {
            // Missing scripts are problems too: report them with the others.
            let mut extra = Sink::new(&name);
            if let Ok(partial) = parse_lenient(&text, format, &name) {
                check_scripts(&partial, dir, &mut extra);
            }
            e.0.extend(extra.errors);
            e.0.sort_by_key(|x| (x.line == 0, x.line, x.column));
            return Err(e);
        }
    };
    resolve(&mut file, dir);
    check_scripts(&file, Path::new(""), &mut sink);
    sink.finish().map(|()| file)
}

/// The file's structure even when it has semantic problems (for the script check).
fn parse_lenient(text: &str, format: Format, file: &str) -> Result<FlowFile, ()> {
    let mut sink = Sink::new(file);
    let root = match format {
        Format::Yaml => tree::parse_yaml(text, &mut sink),
        Format::Json => tree::parse_json(text, &mut sink),
    }
    .ok_or(())?;
    walk::file(&root, file, &mut sink).ok_or(())
}

fn resolve(file: &mut FlowFile, dir: &Path) {
    let fix = |p: &mut std::path::PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    let fix_tls = |t: &mut TlsSpec| {
        for p in [&mut t.cert_file, &mut t.key_file, &mut t.ca_file]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
    };
    if let Some(t) = &mut file.tls {
        fix_tls(t);
    }
    for h in &mut file.handlers {
        if let Exec::Script(p) = &mut h.exec {
            fix(p);
        }
        if let Some(t) = &mut h.tls {
            fix_tls(t);
        }
    }
}

fn check_scripts(file: &FlowFile, dir: &Path, sink: &mut Sink) {
    for h in &file.handlers {
        if let Exec::Script(p) = &h.exec {
            let full = if p.is_relative() {
                dir.join(p)
            } else {
                p.clone()
            };
            if !full.is_file() {
                sink.push(
                    SpecErrorKind::MissingScript,
                    h.loc,
                    &format!("{}.exec", h.path),
                    format!(
                        "handler {:?}: script {} does not exist",
                        h.name,
                        full.display()
                    ),
                );
            }
        }
    }
}
