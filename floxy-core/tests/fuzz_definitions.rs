//! Fuzzed definitions: workflow definitions decoded with serde from random JSON (arbitrary
//! values, near-valid definitions with random references and JSON-level mutations, and
//! hostile sizes), then validated by `CompiledWorkflow::compile`; what compiles is started
//! with `machine::start` on a random input. Every input gets `Ok` or a typed error
//! (`serde_json::Error`, `DefinitionErrors`, `TransitionError`) within the guard's time and
//! memory bounds.
//!
//! The PostgreSQL store decodes rows through `sqlx::PgRow`, which only a database makes;
//! its pure parts, the core's column parsers (`InstanceStatus::parse`, `StepStatus::parse`,
//! `WorkKind::parse`, `EventKind::parse`) and the JSON columns it decodes into core types
//! (`Vec<BranchState>`, `HumanDecision`, payloads), are fuzzed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_guard;
use floxy_core::graph::CompiledWorkflow;
use floxy_core::machine;
use floxy_core::model::{
    BranchState, EventKind, HumanDecision, InstanceId, InstanceStatus, Payload, StepStatus,
    Timestamp, WorkKind, WorkflowDefinition,
};
use floxy_core::validate::{DefinitionError, MAX_NESTING_DEPTH, MAX_STEPS};
use fuzz_guard::{excerpt, guarded};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// What one definition JSON gives.
#[derive(Debug)]
enum Outcome {
    /// serde rejected it.
    Undecodable,
    /// It decoded and compile rejected it with these problems.
    Invalid(Vec<DefinitionError>),
    /// It compiled (and `machine::start` gave `Ok` or a typed error).
    Compiled,
}

fn exercise(v: &Value, input: &Value) -> Outcome {
    let def: WorkflowDefinition = match serde_json::from_value(v.clone()) {
        Ok(d) => d,
        Err(e) => {
            let _ = e.to_string();
            return Outcome::Undecodable;
        }
    };
    // The text form decodes the same way (stores keep definitions as JSON text).
    let text = serde_json::to_string(&def).unwrap();
    let back: WorkflowDefinition = serde_json::from_str(&text).unwrap();
    assert_eq!(back, def, "definition does not round-trip through JSON");
    match CompiledWorkflow::compile(def) {
        Err(errs) => {
            assert!(
                !errs.errors().is_empty(),
                "compile failed without a problem"
            );
            let _ = errs.to_string();
            Outcome::Invalid(errs.0)
        }
        Ok(wf) => {
            let _ = wf.handlers();
            for n in wf.nodes() {
                assert!(wf.find(&n.name).is_some());
            }
            match machine::start(
                &wf,
                InstanceId::from_u128(7),
                Payload::new(input.clone()),
                Some("k".to_owned()),
                Timestamp(1_000),
            ) {
                Ok(_) => {}
                Err(e) => {
                    let _ = e.to_string();
                }
            }
            Outcome::Compiled
        }
    }
}

fn run(v: Value, input: Value) -> Outcome {
    let what = format!("definition {}", excerpt(&v.to_string()));
    guarded(&what, move || exercise(&v, &input))
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,8}".prop_map(Value::String),
        name().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kvs| Value::Object(kvs.into_iter().collect())),
        ]
    })
}

/// Keys a definition has, and a few it has not.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "name",
        "version",
        "options",
        "steps",
        "kind",
        "type",
        "next",
        "handler",
        "on_failure",
        "branches",
        "fork",
        "strategy",
        "wait_for",
        "expr",
        "else_first",
        "on_reject",
        "timeout_ms",
        "on_timeout",
        "retry",
        "max_retries",
        "delay_ms",
        "priority",
        "metadata",
        "no_idempotent",
        "jitter_pct",
        "lease_ttl_ms",
        "dlq_enabled",
        "max_payload_bytes",
        "unknown",
        "",
    ])
    .prop_map(str::to_owned)
}

/// Step names: a small pool (so references often resolve, and collide), plus odd ones.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u8..8).prop_map(|i| format!("s{i}")),
        1 => Just("__reserved".to_owned()),
        1 => Just(String::new()),
        1 => Just(" ".to_owned()),
        1 => Just("x".repeat(201)),
        1 => ".{1,6}",
    ]
}

fn expr() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "{{ gt .count 5 }}",
            "{{ eq .status \"ok\" }}",
            ".flag",
            "{{ gt .count }}",
            "{{ nope .a }}",
            "",
            "((((((((((((((((((((((((((((((((((((.a))))))))))))))))))))))))))))))))))))",
        ])
        .prop_map(str::to_owned),
        ".{0,20}",
    ]
}

fn retry() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![0u32..5, Just(1_001u32), Just(u32::MAX)]),
        prop_oneof![Just(0u64), 1u64..1_000, Just(u64::MAX)],
        prop::sample::select(vec!["fixed", "linear", "exponential", "quadratic"]),
        prop_oneof![Just(0u64), Just(u64::MAX), 0u64..100_000],
        prop_oneof![0u64..=100, Just(101u64), Just(255u64), Just(256u64)],
    )
        .prop_map(|(m, d, s, md, j)| {
            json!({ "max_retries": m, "delay_ms": d, "strategy": s, "max_delay_ms": md, "jitter_pct": j })
        })
}

fn step_options() -> impl Strategy<Value = Value> {
    (
        retry(),
        prop_oneof![Just(0u64), Just(u64::MAX), 0u64..10_000],
        prop::option::of(prop_oneof![Just(0u64), Just(u64::MAX), 1u64..10_000]),
        prop_oneof![0u64..=100, Just(101u64), Just(255u64)],
        any::<bool>(),
    )
        .prop_map(|(r, delay, timeout, prio, no_idem)| {
            json!({ "retry": r, "delay_ms": delay, "timeout_ms": timeout, "priority": prio,
                    "metadata": { "k": "v" }, "no_idempotent": no_idem })
        })
}

fn kind() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (name(), prop::option::of((name(), name(), retry())))
            .prop_map(|(h, c)| match c {
                None => json!({ "type": "task", "handler": h }),
                Some((n, ch, r)) => json!({ "type": "task", "handler": h,
                    "on_failure": { "name": n, "handler": ch, "retry": r, "timeout_ms": 5 } }),
            }),
        1 => Just(json!({ "type": "save_point" })),
        2 => prop::collection::vec(name(), 0..4).prop_map(|b| json!({ "type": "fork", "branches": b })),
        2 => (name(), prop::sample::select(vec!["all", "any", "some"]),
              prop::option::of(prop::collection::vec(name(), 0..3)))
            .prop_map(|(f, s, w)| json!({ "type": "join", "fork": f, "strategy": s, "wait_for": w })),
        2 => (expr(), prop::option::of(name()))
            .prop_map(|(e, el)| json!({ "type": "condition", "expr": e, "else_first": el })),
        1 => (prop::sample::select(vec!["abort", "roll_back", "rollback"]),
              prop::option::of(any::<u64>()),
              prop::sample::select(vec!["reject", "confirm", "fail"]))
            .prop_map(|(r, t, o)| json!({ "type": "human", "on_reject": r, "timeout_ms": t, "on_timeout": o })),
    ]
}

fn step() -> impl Strategy<Value = Value> {
    (
        name(),
        kind(),
        prop::option::of(name()),
        prop::option::of(step_options()),
    )
        .prop_map(|(n, k, next, o)| {
            let mut m = Map::new();
            m.insert("name".into(), json!(n));
            m.insert("kind".into(), k);
            m.insert("next".into(), json!(next));
            if let Some(o) = o {
                m.insert("options".into(), o);
            }
            Value::Object(m)
        })
}

/// A valid chain `s0 → … → sN` (tasks, save points, human steps, conditions without else)
/// with an optional fork `f` of two branches and its join `j` after it.
fn valid_definition() -> impl Strategy<Value = Value> {
    (1usize..8, any::<bool>(), prop::collection::vec(0u8..4, 8)).prop_map(|(n, fork, kinds)| {
        let mut steps = Vec::new();
        for (i, k) in kinds.iter().copied().enumerate().take(n) {
            let next = if i + 1 < n {
                json!(format!("s{}", i + 1))
            } else if fork {
                json!("f")
            } else {
                Value::Null
            };
            let kind = match k {
                0 => json!({ "type": "task", "handler": "h",
                             "on_failure": { "name": "undo", "handler": "undo" } }),
                1 => json!({ "type": "save_point" }),
                2 => json!({ "type": "human", "timeout_ms": 1000, "on_timeout": "confirm" }),
                _ if i > 0 => json!({ "type": "condition", "expr": "{{ gt .count 5 }}" }),
                _ => json!({ "type": "task", "handler": "h" }),
            };
            steps.push(json!({ "name": format!("s{i}"), "kind": kind, "next": next }));
        }
        if fork {
            steps.push(json!({ "name": "f", "kind": { "type": "fork", "branches": ["b0", "b1"] }, "next": "j" }));
            steps.push(json!({ "name": "b0", "kind": { "type": "task", "handler": "h" } }));
            steps.push(json!({ "name": "b1", "kind": { "type": "task", "handler": "h" } }));
            steps.push(json!({ "name": "j", "kind": { "type": "join", "fork": "f", "strategy": "all",
                                                       "wait_for": ["b1"] } }));
        }
        json!({ "name": "wf", "version": 1, "options": { "dlq_enabled": true }, "steps": steps })
    })
}

/// A JSON-level mutation: at the `at`-th node (pre-order), replace it, drop a key of it,
/// add an unknown key to it or duplicate an element of it.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    DropKey(usize, usize),
    AddKey(usize, String, Value),
    DuplicateElement(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), arbitrary_json()).prop_map(|(a, v)| Mutation::Replace(a, v)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, k)| Mutation::DropKey(a, k)),
        (any::<usize>(), key(), arbitrary_json()).prop_map(|(a, k, v)| Mutation::AddKey(a, k, v)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, i)| Mutation::DuplicateElement(a, i)),
    ]
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

fn nth(v: &mut Value, mut n: usize) -> Option<&mut Value> {
    fn go<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
        if *n == 0 {
            return Some(v);
        }
        *n -= 1;
        let children: Vec<&'a mut Value> = match v {
            Value::Array(a) => a.iter_mut().collect(),
            Value::Object(o) => o.values_mut().collect(),
            _ => return None,
        };
        for c in children {
            let size = count(c);
            if *n < size {
                return go(c, n);
            }
            *n -= size;
        }
        None
    }
    go(v, &mut n)
}

fn apply(mut v: Value, muts: &[Mutation]) -> Value {
    for m in muts {
        let total = count(&v);
        let at = match m {
            Mutation::Replace(a, _)
            | Mutation::DropKey(a, _)
            | Mutation::AddKey(a, ..)
            | Mutation::DuplicateElement(a, _) => a % total,
        };
        let Some(node) = nth(&mut v, at) else {
            continue;
        };
        match (m, node) {
            (Mutation::Replace(_, r), node) => *node = r.clone(),
            (Mutation::DropKey(_, k), Value::Object(o)) if !o.is_empty() => {
                let key = o.keys().nth(k % o.len()).cloned().unwrap();
                o.remove(&key);
            }
            (Mutation::AddKey(_, k, x), Value::Object(o)) => {
                o.insert(k.clone(), x.clone());
            }
            (Mutation::DuplicateElement(_, i), Value::Array(a)) if !a.is_empty() => {
                let e = a[i % a.len()].clone();
                a.insert(i % a.len(), e);
            }
            _ => {}
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_guard::cases(2_000), ..ProptestConfig::default() })]

    /// Arbitrary JSON, and objects with a definition's keys holding arbitrary values.
    #[test]
    fn arbitrary_json_gets_ok_or_a_typed_error(v in arbitrary_json(), input in arbitrary_json()) {
        run(v, input);
    }

    /// Random steps with references into a small pool of names: duplicates, unknown and
    /// reserved names, cycles, shared steps, misplaced joins, bad expressions and options.
    #[test]
    fn random_step_graphs_get_ok_or_a_typed_error(
        steps in prop::collection::vec(step(), 0..12),
        version in prop_oneof![Just(0u64), Just(1u64), Just(u64::from(u32::MAX)), Just(u64::from(u32::MAX) + 1)],
        options in prop::option::of(arbitrary_json()),
        input in arbitrary_json(),
    ) {
        let mut def = json!({ "name": "wf", "version": version, "steps": steps });
        if let Some(o) = options {
            def["options"] = o;
        }
        run(def, input);
    }

    /// Valid definitions with one to three JSON-level mutations.
    #[test]
    fn mutated_valid_definitions_get_ok_or_a_typed_error(
        def in valid_definition(),
        muts in prop::collection::vec(mutation(), 0..4),
        input in arbitrary_json(),
    ) {
        let unmutated = muts.is_empty();
        let out = run(apply(def, &muts), input);
        if unmutated {
            prop_assert!(matches!(out, Outcome::Compiled), "{out:?}");
        }
    }

    /// The PostgreSQL store's column parsers and the core types it decodes JSON columns
    /// into, on arbitrary text and JSON.
    #[test]
    fn row_column_parsers_get_some_or_none(
        text in prop_oneof![any::<String>(), "[a-z_]{0,16}"],
        v in arbitrary_json(),
    ) {
        let text2 = text.clone();
        guarded("column parsers", move || {
            for s in [&text2, &text2.to_uppercase(), &format!("{text2}\0")] {
                if let Some(x) = InstanceStatus::parse(s) { assert_eq!(x.as_str(), s); }
                if let Some(x) = StepStatus::parse(s) { assert_eq!(x.as_str(), s); }
                if let Some(x) = WorkKind::parse(s) { assert_eq!(x.as_str(), s); }
                if let Some(x) = EventKind::parse(s) { assert_eq!(x.as_str(), s); }
            }
            let _ = serde_json::from_value::<Vec<BranchState>>(v.clone());
            let _ = serde_json::from_value::<HumanDecision>(v.clone());
            let _ = serde_json::from_str::<Vec<BranchState>>(&text2);
            let _ = serde_json::from_str::<HumanDecision>(&text2);
            let p: Payload = serde_json::from_value(v).unwrap();
            let _ = p.check_size(16);
        });
    }
}

fn chain(n: usize, kind: &Value) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let next = if i + 1 < n {
                json!(format!("s{}", i + 1))
            } else {
                Value::Null
            };
            json!({ "name": format!("s{i}"), "kind": kind, "next": next })
        })
        .collect();
    json!({ "name": "wf", "version": 1, "steps": steps })
}

/// Forks nested `depth` deep: each fork's first branch is the next fork.
fn nested_forks(depth: usize) -> Value {
    let mut steps = Vec::new();
    for d in 0..depth {
        steps.push(json!({ "name": format!("f{d}"), "next": format!("j{d}"),
            "kind": { "type": "fork", "branches": [
                if d + 1 < depth { format!("f{}", d + 1) } else { "leaf".to_owned() },
                format!("t{d}")] } }));
        steps.push(json!({ "name": format!("t{d}"), "kind": { "type": "task", "handler": "h" } }));
        steps.push(json!({ "name": format!("j{d}"), "kind": { "type": "join", "fork": format!("f{d}"), "strategy": "all" } }));
    }
    steps.push(json!({ "name": "leaf", "kind": { "type": "task", "handler": "h" } }));
    json!({ "name": "wf", "version": 1, "steps": steps })
}

#[test]
fn hostile_sizes_are_rejected_or_bounded() {
    let task = json!({ "type": "task", "handler": "h" });
    // The limit itself compiles; far past it is one error, fast.
    assert!(matches!(
        run(chain(MAX_STEPS, &task), Value::Null),
        Outcome::Compiled
    ));
    match run(chain(20 * MAX_STEPS, &task), Value::Null) {
        Outcome::Invalid(e) => {
            assert!(
                e.iter()
                    .any(|e| matches!(e, DefinitionError::TooManySteps { .. })),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A chain of save points (every step's scope holds all before it).
    assert!(matches!(
        run(
            chain(MAX_STEPS, &json!({ "type": "save_point" })),
            Value::Null
        ),
        Outcome::Compiled
    ));
    // Conditions all the way down, with a long expression each.
    let cond = json!({ "type": "condition", "expr": format!("{{{{ and {} }}}}", vec![".a"; 1_000].join(" ")) });
    let mut c = chain(MAX_STEPS, &cond);
    c["steps"][0]["kind"] = task.clone();
    assert!(matches!(run(c, json!({ "a": 1 })), Outcome::Compiled));
    // Forks nested at the limit compile; deeper is NestingTooDeep; far deeper is bounded.
    assert!(matches!(
        run(nested_forks(MAX_NESTING_DEPTH), Value::Null),
        Outcome::Compiled
    ));
    for depth in [MAX_NESTING_DEPTH + 1, 300] {
        match run(nested_forks(depth), Value::Null) {
            Outcome::Invalid(e) => assert!(
                e.iter()
                    .any(|e| matches!(e, DefinitionError::NestingTooDeep { .. })),
                "{e:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
    // A fork of a hundred thousand branches, a name of a megabyte, a cycle.
    let branches: Vec<String> = (0..100_000).map(|i| format!("b{i}")).collect();
    let wide = json!({ "name": "wf", "version": 1, "steps": [
        { "name": "f", "next": "j", "kind": { "type": "fork", "branches": branches } },
        { "name": "j", "kind": { "type": "join", "fork": "f", "strategy": "any" } } ] });
    assert!(matches!(run(wide, Value::Null), Outcome::Invalid(_)));
    let mut long = chain(2, &task);
    long["steps"][1]["name"] = json!("n".repeat(1 << 20));
    assert!(matches!(run(long, Value::Null), Outcome::Invalid(_)));
    let mut cycle = chain(3, &task);
    cycle["steps"][2]["next"] = json!("s0");
    assert!(matches!(run(cycle, Value::Null), Outcome::Invalid(_)));
}
