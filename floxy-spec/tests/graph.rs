//! Graph rendering snapshots of a small flow (exact strings).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy_spec::graph::{GraphFormat, render};
use floxy_spec::{Format, parse_str};

const FLOW: &str = r#"
handlers:
  - { name: reserve, exec: ./r.sh }
  - { name: release, exec: ./rl.sh }
  - { name: email, exec: ./e.sh }
  - { name: sms, exec: ./s.sh }
  - { name: small, exec: ./sm.sh }
flows:
  - name: order
    steps:
      - name: reserve
        on_failure: release
      - type: parallel
        name: notify
        tasks: [email, sms]
      - type: condition
        name: big
        expr: "{{ gt .amount 100 }}"
        else: [small]
      - type: save_point
        name: done
"#;

fn def() -> floxy_core::model::WorkflowDefinition {
    let f = parse_str(FLOW, Format::Yaml, "g.yaml").unwrap();
    f.definitions().unwrap().remove(0)
}

#[test]
fn text() {
    let got = render(&def(), GraphFormat::Text);
    assert_eq!(
        got,
        r"workflow order-v1
  reserve [task: reserve] (on failure: release)
  notify [fork]
    branch 1:
      email [task: email]
    branch 2:
      sms [task: sms]
  notify_join [join all]
  big [condition: {{ gt .amount 100 }}]
    else:
      small [task: small]
  done [save point]
"
    );
}

#[test]
fn mermaid() {
    let got = render(&def(), GraphFormat::Mermaid);
    assert_eq!(
        got,
        r#"flowchart TD
    s0["reserve<br/>task: reserve"]
    c0(["release<br/>compensation"])
    s1{{"notify<br/>fork"}}
    s2["email<br/>task: email"]
    s3["sms<br/>task: sms"]
    s4{{"notify_join<br/>join all"}}
    s5{"big<br/>condition: {{ gt .amount 100 }}"}
    s6["small<br/>task: small"]
    s7[("done<br/>save point")]
    s0 -.->|compensate| c0
    s0 --> s1
    s1 --> s2
    s2 --> s4
    s1 --> s3
    s3 --> s4
    s4 --> s5
    s5 -->|false| s6
    s5 -->|true| s7
"#
    );
}

#[test]
fn dot() {
    let got = render(&def(), GraphFormat::Dot);
    assert_eq!(
        got,
        r#"digraph "order-v1" {
    rankdir=TB;
    node [shape=box, fontname="Helvetica"];
    s0 [label="reserve\ntask: reserve", shape=box];
    c0 [label="release\ncompensation", style="rounded,dashed"];
    s1 [label="notify\nfork", shape=hexagon];
    s2 [label="email\ntask: email", shape=box];
    s3 [label="sms\ntask: sms", shape=box];
    s4 [label="notify_join\njoin all", shape=hexagon];
    s5 [label="big\ncondition: {{ gt .amount 100 }}", shape=diamond];
    s6 [label="small\ntask: small", shape=box];
    s7 [label="done\nsave point", shape=cylinder];
    s0 -> c0 [style=dashed, label="compensate"];
    s0 -> s1;
    s1 -> s2;
    s2 -> s4;
    s1 -> s3;
    s3 -> s4;
    s4 -> s5;
    s5 -> s6 [label="false"];
    s5 -> s7 [label="true"];
}
"#
    );
}

#[test]
fn deterministic_and_fork_with_nested_chain() {
    let src = r"
handlers: [ { name: h, exec: ./h.sh } ]
flows:
  - name: f
    steps:
      - { name: a, handler: h }
      - type: fork
        name: split
        join: any
        join_step: [b2]
        branches:
          - [ { name: b1, handler: h }, { name: b2, handler: h } ]
          - [ { name: c1, handler: h } ]
";
    let f = parse_str(src, Format::Yaml, "f.yaml").unwrap();
    let d = f.definitions().unwrap().remove(0);
    let a = render(&d, GraphFormat::Text);
    assert_eq!(a, render(&d, GraphFormat::Text));
    assert_eq!(
        a,
        "workflow f-v1\n  a [task: h]\n  split [fork]\n    branch 1:\n      b1 [task: h]\n      b2 [task: h]\n    branch 2:\n      c1 [task: h]\n  split_join [join any of b2]\n"
    );
    let m = render(&d, GraphFormat::Mermaid);
    assert!(
        m.contains("    s3 --> s5\n") && m.contains("    s4 --> s5\n"),
        "{m}"
    );
}
