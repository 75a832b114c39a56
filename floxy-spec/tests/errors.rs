//! Every error case with its exact line, column and key path; all errors are collected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy_spec::{Format, SpecErrorKind, SpecErrors, load, parse_str};

fn errors(src: &str, format: Format) -> SpecErrors {
    match parse_str(src, format, "flow.yaml") {
        Ok(f) => panic!("expected errors, parsed {f:?}"),
        Err(e) => e,
    }
}

fn lines(src: &str, format: Format) -> Vec<String> {
    errors(src, format)
        .errors()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn malformed_yaml() {
    let e = errors("handlers:\n  - name: a\n   exec: x\n", Format::Yaml);
    assert_eq!(e.len(), 1);
    let first = &e.errors()[0];
    assert_eq!((first.line, first.column), (3, 4));
    assert_eq!(first.kind, SpecErrorKind::Syntax);
    assert!(first.message.starts_with("invalid YAML: "), "{first}");
}

#[test]
fn unknown_key_at_top_level() {
    assert_eq!(
        lines("handlers: []\nflow: []\n", Format::Yaml),
        ["flow.yaml:2:1: flow: unknown key \"flow\", expected one of: tls, handlers, flows"]
    );
}

const MANY: &str = r#"handlers:
  - name: a
    exec: ./a.sh
  - name: b
flows:
  - name: f
    steps:
      - a
      - name: x
        handler: a
        colour: red
      - name: y
        handler: a
        retry_strategy: expo
        delay: 3 parsecs
      - type: condition
        name: c
        expr: "{{ gt .n 1 }}"
        else:
          - name: e
            handler: nope
            bogus: 1
      - type: parallel
        name: p
        tasks: [a]
"#;

#[test]
fn every_error_is_collected_with_its_place() {
    let task_keys = "name, type, priority, metadata, handler, on_failure, compensation, \
                     max_retries, no_idempotent, delay, retry_delay, retry_strategy, timeout";
    assert_eq!(
        lines(MANY, Format::Yaml),
        [
            "flow.yaml:4:5: handlers[1]: a handler needs exec".to_owned(),
            format!(
                "flow.yaml:11:9: flows[0].steps[1].colour: unknown key \"colour\", expected one of: {task_keys}"
            ),
            "flow.yaml:14:25: flows[0].steps[2].retry_strategy: unknown value \"expo\", expected fixed, linear or exponential".to_owned(),
            "flow.yaml:15:16: flows[0].steps[2].delay: invalid duration \"3 parsecs\": unknown unit \"parsecs\", expected ms, s, m or h".to_owned(),
            "flow.yaml:21:22: flows[0].steps[3].else[0].handler: handler \"nope\" is not declared in handlers".to_owned(),
            format!(
                "flow.yaml:22:13: flows[0].steps[3].else[0].bogus: unknown key \"bogus\", expected one of: {task_keys}"
            ),
            "flow.yaml:25:9: flows[0].steps[4].tasks: a parallel step needs two or more tasks, has 1".to_owned(),
        ]
    );
}

#[test]
fn display_prints_one_error_per_line() {
    let e = errors(MANY, Format::Yaml);
    assert_eq!(e.to_string().lines().count(), e.len());
    let first = &e.errors()[0];
    assert_eq!(first.file, "flow.yaml");
    assert_eq!(first.path, "handlers[1]");
    assert_eq!(first.kind, SpecErrorKind::MissingKey);
}

#[test]
fn handler_without_name_or_exec() {
    assert_eq!(
        lines(
            "handlers:\n  - exec: ./x.sh\n  - name: b\nflows: []\n",
            Format::Yaml
        ),
        [
            "flow.yaml:2:5: handlers[0]: a handler needs a name",
            "flow.yaml:3:5: handlers[1]: a handler needs exec",
        ]
    );
}

#[test]
fn unknown_handlers_in_task_on_failure_and_compensation() {
    let src = "handlers: [{name: a, exec: x}]
flows:
  - name: f
    steps:
      - ghost
      - {name: s, handler: a, on_failure: undo}
      - {name: t, handler: a, compensation: {handler: back, max_retries: 2}}
";
    assert_eq!(
        lines(src, Format::Yaml),
        [
            "flow.yaml:5:9: flows[0].steps[0]: handler \"ghost\" is not declared in handlers",
            "flow.yaml:6:43: flows[0].steps[1].on_failure: compensation handler \"undo\" is not declared in handlers",
            "flow.yaml:7:55: flows[0].steps[2].compensation.handler: compensation handler \"back\" is not declared in handlers",
        ]
    );
}

#[test]
fn condition_first_and_condition_without_expr() {
    let src = "handlers: [{name: a, exec: x}]
flows:
  - name: f
    steps:
      - {type: condition, name: c, expr: \"{{ gt .n 1 }}\"}
      - a
      - {type: condition, name: d}
";
    assert_eq!(
        lines(src, Format::Yaml),
        [
            "flow.yaml:5:9: flows[0].steps[0]: a condition cannot be the first step (it has no input to test)",
            "flow.yaml:7:9: flows[0].steps[2]: a condition needs expr",
        ]
    );
}

#[test]
fn flow_without_name_or_steps() {
    assert_eq!(
        lines("flows:\n  - steps: []\n  - name: g\n", Format::Yaml),
        [
            "flow.yaml:2:5: flows[0]: a flow needs a name",
            "flow.yaml:2:12: flows[0].steps: a flow needs at least one step",
            "flow.yaml:3:5: flows[1].steps: a flow needs at least one step",
        ]
    );
}

#[test]
fn bad_values() {
    let src = "handlers: [{name: a, exec: x, tls: {skip_verify: yes}}]
flows:
  - name: f
    version: 0
    dlq: 1
    lease_ttl: soon
    steps:
      - {name: a, max_retries: -1, priority: 101, timeout: \"1.5\"}
      - {name: h, type: human, on_reject: maybe}
      - {name: k, type: loop}
";
    assert_eq!(
        lines(src, Format::Yaml),
        [
            "flow.yaml:1:50: handlers[0].tls.skip_verify: expected true or false, found \"yes\"",
            "flow.yaml:4:14: flows[0].version: version must be at least 1",
            "flow.yaml:5:10: flows[0].dlq: expected true or false, found \"1\"",
            "flow.yaml:6:16: flows[0].lease_ttl: invalid duration \"soon\": unknown unit \"soon\", expected ms, s, m or h",
            "flow.yaml:8:32: flows[0].steps[0].max_retries: expected a non-negative integer, found \"-1\"",
            "flow.yaml:8:46: flows[0].steps[0].priority: 101 is too large, the most is 100",
            "flow.yaml:8:60: flows[0].steps[0].timeout: invalid duration \"1.5\": milliseconds must be a whole number",
            "flow.yaml:9:43: flows[0].steps[1].on_reject: unknown value \"maybe\", expected abort or rollback",
            "flow.yaml:10:25: flows[0].steps[2].type: unknown value \"loop\", expected task, parallel, condition, fork, save_point or human",
        ]
    );
}

#[test]
fn keys_of_another_step_kind() {
    let src = "handlers: [{name: a, exec: x}]
flows:
  - name: f
    steps:
      - {name: a, tasks: [a, a]}
      - {name: s, type: save_point, handler: a}
";
    let got = lines(src, Format::Yaml);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(
        got[0],
        "flow.yaml:5:19: flows[0].steps[0].tasks: key \"tasks\" does not apply to a task step (type: task)"
    );
    assert_eq!(
        got[1],
        "flow.yaml:6:37: flows[0].steps[1].handler: key \"handler\" does not apply to a save_point step (type: save_point)"
    );
}

#[test]
fn duplicates() {
    let src = "handlers: [{name: a, exec: x}, {name: a, exec: y}]
flows:
  - {name: f, steps: [a]}
  - {name: f, steps: [a]}
  - {name: f, version: 2, steps: [a]}
  - {name: g, steps: [a, a], name: h}
";
    assert_eq!(
        lines(src, Format::Yaml),
        [
            "flow.yaml:1:32: handlers[1].name: handler \"a\" is declared twice (first at line 1)",
            "flow.yaml:4:5: flows[1]: flow \"f\" version 1 is declared twice (first at line 3)",
            "flow.yaml:6:30: flows[3].name: duplicate key",
        ]
    );
}

#[test]
fn core_validation_errors_are_placed_at_the_step() {
    let src = "handlers: [{name: a, exec: x}]
flows:
  - name: f
    steps:
      - a
      - a
";
    assert_eq!(
        lines(src, Format::Yaml),
        ["flow.yaml:6:9: flows[0].steps[1]: step \"a\": name is used more than once"]
    );
    let src = "handlers: [{name: a, exec: x}]
flows:
  - name: f
    steps:
      - a
      - {type: condition, name: c, expr: \"{{ gt .n\"}
";
    let e = errors(src, Format::Yaml);
    assert_eq!(e.len(), 1, "{e}");
    let e = &e.errors()[0];
    assert_eq!(
        (e.line, e.column, e.path.as_str()),
        (6, 9, "flows[0].steps[1]")
    );
    assert_eq!(e.kind, SpecErrorKind::Definition);
    assert!(e.message.starts_with("condition \"c\": "), "{e}");
}

#[test]
fn empty_and_non_mapping_documents() {
    assert_eq!(
        lines("", Format::Yaml),
        ["flow.yaml:1:1: the file is empty"]
    );
    assert_eq!(
        lines("- a\n", Format::Yaml),
        ["flow.yaml:1:1: expected a flow file (a mapping), found a list"]
    );
}

#[test]
fn json_reports_the_same_errors() {
    let src = "{\"handlers\": [{\"name\": \"a\", \"exec\": \"x\"}],
 \"flows\": [{\"name\": \"f\", \"steps\": [
   {\"name\": \"a\", \"retry_strategy\": \"expo\", \"zzz\": 1},
   {\"type\": \"condition\", \"name\": \"c\", \"expr\": \"{{ gt .n 1 }}\",
    \"else\": [{\"name\": \"e\", \"handler\": \"nope\"}]}]}],
 \"extra\": true}";
    let got = lines(src, Format::Json);
    assert_eq!(
        got,
        [
            "flow.yaml:3:36: flows[0].steps[0].retry_strategy: unknown value \"expo\", expected fixed, linear or exponential".to_owned(),
            format!(
                "flow.yaml:3:44: flows[0].steps[0].zzz: unknown key \"zzz\", expected one of: {}",
                "name, type, priority, metadata, handler, on_failure, compensation, max_retries, no_idempotent, delay, retry_delay, retry_strategy, timeout"
            ),
            "flow.yaml:5:39: flows[0].steps[1].else[0].handler: handler \"nope\" is not declared in handlers".to_owned(),
            "flow.yaml:6:2: extra: unknown key \"extra\", expected one of: tls, handlers, flows".to_owned(),
        ]
    );
}

#[test]
fn malformed_json() {
    assert_eq!(
        lines("{\"handlers\": [\n  {\"name\": \"a\",}\n]}", Format::Json),
        ["flow.yaml:2:16: invalid JSON: key must be a string"]
    );
}

#[test]
fn missing_script_file_is_named_at_its_handler() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    std::fs::write(dir.path().join("scripts/ok.sh"), "echo '{}'\n").unwrap();
    let path = dir.path().join("flow.yaml");
    std::fs::write(
        &path,
        "handlers:\n  - name: ok\n    exec: ./scripts/ok.sh\n  - name: gone\n    exec: ./scripts/gone.sh\nflows:\n  - {name: f, steps: [ok, gone]}\n",
    )
    .unwrap();
    let e = load(&path).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    let e = &e.errors()[0];
    assert_eq!(e.kind, SpecErrorKind::MissingScript);
    assert_eq!(
        (e.line, e.column, e.path.as_str()),
        (4, 5, "handlers[1].exec")
    );
    let expected = dir.path().join("./scripts/gone.sh");
    assert_eq!(
        e.message,
        format!(
            "handler \"gone\": script {} does not exist",
            expected.display()
        )
    );
    // With the script in place the file loads and the path is resolved against its folder.
    std::fs::write(dir.path().join("scripts/gone.sh"), "echo '{}'\n").unwrap();
    let f = load(&path).unwrap();
    assert_eq!(
        f.handler("gone").unwrap().exec,
        floxy_spec::Exec::Script(expected)
    );
    assert_eq!(f.handler("gone").unwrap().exec_text(), "./scripts/gone.sh");
}

#[test]
fn missing_script_is_reported_alongside_other_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flow.yml");
    std::fs::write(
        &path,
        "handlers:\n  - {name: gone, exec: gone.sh}\nflows:\n  - {name: f, steps: [gone], colour: 1}\n",
    )
    .unwrap();
    let e = load(&path).unwrap_err();
    let kinds: Vec<SpecErrorKind> = e.errors().iter().map(|x| x.kind).collect();
    assert_eq!(
        kinds,
        [SpecErrorKind::MissingScript, SpecErrorKind::UnknownKey],
        "{e}"
    );
}

#[test]
fn load_refuses_unknown_extensions_and_unreadable_files() {
    let e = load(std::path::Path::new("/nonexistent/flow.txt")).unwrap_err();
    assert_eq!(e.errors()[0].kind, SpecErrorKind::Io);
    let e = load(std::path::Path::new("/nonexistent/flow.yaml")).unwrap_err();
    assert_eq!(e.errors()[0].kind, SpecErrorKind::Io);
    assert!(
        e.to_string()
            .starts_with("/nonexistent/flow.yaml: cannot read: "),
        "{e}"
    );
}
