//! The format: Floxy Pro's examples unchanged, every extension, JSON ⇄ YAML round trip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy_core::model::{
    JoinStrategy, RejectPolicy, RetryStrategy, StepKind, TimeoutPolicy, WorkflowDefinition,
};
use floxy_spec::{Exec, Format, StepType, parse_str};
use std::path::PathBuf;

/// Floxy Pro's README YAML example, byte for byte (trailing spaces included).
const FLOXY_PRO: &str = "tls:
  skip_verify: false
  cert_file: /path/to/cert.pem
  key_file: /path/to/key.pem
  ca_file: /path/to/ca.pem

handlers:
  - name: bash_handler
    exec: |
      echo \"$INPUT\" | jq '.value * 2'
  
  - name: script_handler
    exec: ./scripts/process.sh
  
  - name: http_handler
    exec: https://api.example.com/process
    tls:
      skip_verify: true

flows:
  - name: my_workflow
    steps:
      - name: step1
        handler: bash_handler
      - name: step2
        handler: http_handler
";

#[test]
fn floxy_pro_readme_example_parses_unchanged() {
    let f = parse_str(FLOXY_PRO, Format::Yaml, "handlers.yaml").unwrap();
    let global = f.tls.as_ref().unwrap();
    assert!(!global.skip_verify);
    assert_eq!(global.ca_file, Some(PathBuf::from("/path/to/ca.pem")));
    let bash = f.handler("bash_handler").unwrap();
    assert_eq!(
        bash.exec,
        Exec::Inline("echo \"$INPUT\" | jq '.value * 2'\n".into())
    );
    assert_eq!(bash.effective_tls(f.tls.as_ref()), f.tls.as_ref());
    assert_eq!(
        f.handler("script_handler").unwrap().exec,
        Exec::Script("./scripts/process.sh".into())
    );
    let http = f.handler("http_handler").unwrap();
    assert_eq!(
        http.exec,
        Exec::Http("https://api.example.com/process".into())
    );
    assert!(http.effective_tls(f.tls.as_ref()).unwrap().skip_verify);
    let defs = f.definitions().unwrap();
    assert_eq!(defs.len(), 1);
    let d = &defs[0];
    assert_eq!(d.id().as_str(), "my_workflow-v1");
    let StepKind::Task { handler, .. } = &d.steps[1].kind else {
        panic!("task expected")
    };
    assert_eq!(handler, "http_handler");
    assert_eq!(
        d.steps[1].options.metadata.get("exec").map(String::as_str),
        Some("https://api.example.com/process")
    );
}

#[test]
fn the_compat_example_file_is_the_readme_verbatim() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/flows/floxy-pro-compat.yaml"
    );
    assert_eq!(std::fs::read_to_string(path).unwrap(), FLOXY_PRO);
}

#[test]
fn cli_md_contract_example_parses() {
    let src = r#"
tls:
  skip_verify: false
  cert_file: client.pem
  key_file: client.key
  ca_file: ca.pem
handlers:
  - name: reserve
    exec: |
      echo "$INPUT" | jq '.reserved = true'
  - { name: validate, exec: ./v.sh }
  - { name: release, exec: ./r.sh }
  - { name: email, exec: ./e.sh }
  - { name: sms, exec: ./s.sh }
  - { name: small_order, exec: ./so.sh }
  - name: notify
    exec: https://svc.local/notify
    tls: { skip_verify: true }
flows:
  - name: order
    steps:
      - validate
      - name: reserve
        handler: reserve
        on_failure: release
        max_retries: 3
        no_idempotent: false
        delay: 1500
        retry_delay: 3000
        retry_strategy: exponential
        timeout: 4500
        metadata: { team: shop }
      - type: parallel
        name: fanout
        tasks: [ { name: email }, { name: sms } ]
      - type: condition
        name: big
        condition: "{{ gt .amount 100 }}"
        else: [ { name: small_order } ]
"#;
    let f = parse_str(src, Format::Yaml, "order.yaml").unwrap();
    let d = f.definitions().unwrap().remove(0);
    assert_eq!(d.id().as_str(), "order-v1");
    let names: Vec<&str> = d.steps.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "validate",
            "reserve",
            "fanout",
            "email",
            "sms",
            "fanout_join",
            "big",
            "small_order"
        ]
    );
    let reserve = &d.steps[1];
    assert_eq!(reserve.options.retry.max_retries, Some(3));
    assert_eq!(reserve.options.delay_ms, 1500);
    assert_eq!(reserve.options.retry.delay_ms, 3000);
    assert_eq!(reserve.options.retry.strategy, RetryStrategy::Exponential);
    assert_eq!(reserve.options.timeout_ms, Some(4500));
    assert_eq!(reserve.options.metadata["team"], "shop");
    assert_eq!(
        reserve.options.metadata["exec"],
        "echo \"$INPUT\" | jq '.reserved = true'\n"
    );
    let StepKind::Task {
        on_failure: Some(c),
        ..
    } = &reserve.kind
    else {
        panic!()
    };
    assert_eq!(
        (c.name.as_str(), c.handler.as_str()),
        ("release", "release")
    );
    assert!(matches!(
        &d.steps[5].kind,
        StepKind::Join {
            strategy: JoinStrategy::All,
            ..
        }
    ));
    let StepKind::Condition { expr, else_first } = &d.steps[6].kind else {
        panic!()
    };
    assert_eq!(expr, "{{ gt .amount 100 }}");
    assert_eq!(else_first.as_deref(), Some("small_order"));
    assert_eq!(f.flow("order").unwrap().steps[3].kind, StepType::Condition);
    let notify = f.handler("notify").unwrap();
    assert!(notify.effective_tls(f.tls.as_ref()).unwrap().skip_verify);
    assert_eq!(notify.effective_tls(f.tls.as_ref()).unwrap().ca_file, None);
}

const EXTENSIONS: &str = r#"
handlers:
  - { name: h, exec: ./h.sh }
  - { name: undo, exec: ./u.sh }
flows:
  - name: ext
    version: 3
    dlq: true
    lease_ttl: 2m
    steps:
      - name: first
        handler: h
        priority: 90
        delay: "1500ms"
        retry_delay: 1.5s
        timeout: "3s"
        retry_strategy: linear
        no_idempotent: true
        compensation: { handler: undo, max_retries: 7, retry_delay: 250, timeout: 1s }
      - type: save_point
        name: sp
      - type: fork
        name: split
        join: any
        join_name: joined
        branches:
          - - { name: a1, handler: h, on_failure: undo, compensation: { max_retries: 1 } }
            - { name: a2, handler: h }
          - - { name: b1, handler: h }
      - type: fork
        name: split2
        join_step: [c2]
        branches:
          - [ { name: c1, handler: h }, { name: c2, handler: h } ]
          - [ { name: d1, handler: h } ]
      - type: human
        name: approve
        on_reject: rollback
        decision_timeout: 1h
        on_timeout: confirm
        metadata: { who: ops }
      - { type: human, name: approve2 }
"#;

fn step<'a>(d: &'a WorkflowDefinition, name: &str) -> &'a floxy_core::model::StepDef {
    d.steps.iter().find(|s| s.name.as_ref() == name).unwrap()
}

#[test]
fn every_extension() {
    let f = parse_str(EXTENSIONS, Format::Yaml, "ext.yaml").unwrap();
    let d = f.definitions().unwrap().remove(0);
    assert_eq!(d.id().as_str(), "ext-v3");
    assert!(d.options.dlq_enabled);
    assert_eq!(d.options.lease_ttl_ms, 120_000);
    let first = step(&d, "first");
    assert_eq!(first.options.priority, 90);
    assert_eq!(first.options.delay_ms, 1500);
    assert_eq!(first.options.retry.delay_ms, 1500);
    assert_eq!(first.options.timeout_ms, Some(3000));
    assert_eq!(first.options.retry.strategy, RetryStrategy::Linear);
    assert!(first.options.no_idempotent);
    let StepKind::Task {
        on_failure: Some(c),
        ..
    } = &first.kind
    else {
        panic!()
    };
    assert_eq!(c.handler, "undo");
    assert_eq!(c.retry.max_retries, Some(7));
    assert_eq!(c.retry.delay_ms, 250);
    assert_eq!(c.timeout_ms, Some(1000));
    assert!(matches!(step(&d, "sp").kind, StepKind::SavePoint));
    let StepKind::Task {
        on_failure: Some(c),
        ..
    } = &step(&d, "a1").kind
    else {
        panic!()
    };
    assert_eq!((c.handler.as_str(), c.retry.max_retries), ("undo", Some(1)));
    let StepKind::Join {
        fork,
        strategy,
        wait_for,
    } = &step(&d, "joined").kind
    else {
        panic!()
    };
    assert_eq!(
        (fork.as_ref(), *strategy, wait_for),
        ("split", JoinStrategy::Any, &None)
    );
    let StepKind::Join {
        strategy, wait_for, ..
    } = &step(&d, "split2_join").kind
    else {
        panic!()
    };
    assert_eq!(*strategy, JoinStrategy::All);
    assert_eq!(wait_for.as_ref().unwrap().len(), 1);
    let approve = step(&d, "approve");
    let StepKind::Human {
        on_reject,
        timeout_ms,
        on_timeout,
    } = &approve.kind
    else {
        panic!()
    };
    assert_eq!(
        (*on_reject, *timeout_ms, *on_timeout),
        (
            RejectPolicy::RollBack,
            Some(3_600_000),
            TimeoutPolicy::Confirm
        )
    );
    assert_eq!(approve.options.metadata["who"], "ops");
    let StepKind::Human {
        on_reject,
        timeout_ms,
        ..
    } = &step(&d, "approve2").kind
    else {
        panic!()
    };
    assert_eq!((*on_reject, *timeout_ms), (RejectPolicy::Abort, None));
}

#[test]
fn json_yaml_round_trip_gives_the_same_definitions() {
    for src in [EXTENSIONS, FLOXY_PRO] {
        let yaml = parse_str(src, Format::Yaml, "a.yaml").unwrap();
        let defs = yaml.definitions().unwrap();
        let json_text = serde_json::to_string_pretty(&yaml).unwrap();
        let json = parse_str(&json_text, Format::Json, "a.json")
            .unwrap_or_else(|e| panic!("{e}\n{json_text}"));
        assert_eq!(json.definitions().unwrap(), defs);
        let yaml_text = serde_saphyr::to_string(&json).unwrap();
        let back = parse_str(&yaml_text, Format::Yaml, "b.yaml")
            .unwrap_or_else(|e| panic!("{e}\n{yaml_text}"));
        assert_eq!(back.definitions().unwrap(), defs);
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&yaml).unwrap()
        );
    }
}

#[test]
fn yaml_anchors_and_merge_keys() {
    let src = "
handlers: [{name: h, exec: x}]
defaults: &d
  handler: h
  max_retries: 9
flows:
  - name: f
    steps:
      - { <<: *d, name: a }
";
    // `defaults` is not a key of the format: anchors live inside known keys.
    assert!(parse_str(src, Format::Yaml, "f.yaml").is_err());
    let src = "
handlers: [{name: h, exec: x}]
flows:
  - name: f
    steps:
      - &d { name: a, handler: h, max_retries: 9 }
      - { <<: *d, name: b }
";
    let d = parse_str(src, Format::Yaml, "f.yaml")
        .unwrap()
        .definitions()
        .unwrap()
        .remove(0);
    assert_eq!(step(&d, "b").options.retry.max_retries, Some(9));
}

#[test]
fn strict_booleans() {
    let src = "handlers: [{name: h, exec: x}]\nflows: [{name: f, dlq: on, steps: [h]}]\n";
    assert!(parse_str(src, Format::Yaml, "f.yaml").is_err());
    let src = "handlers: [{name: h, exec: x}]\nflows: [{name: f, dlq: true, steps: [h]}]\n";
    assert!(parse_str(src, Format::Yaml, "f.yaml").unwrap().flows[0].dlq);
}
