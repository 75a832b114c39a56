//! Fuzzed input for the condition expression parser: arbitrary bytes and strings, mutations
//! of valid expressions (flipped bytes, truncations, insertions, duplications) and inputs
//! built to hurt (deep brackets, huge numbers, long paths, escape floods). Every input gets
//! `Ok` or a typed [`ExprError`] within the guard's time and memory bounds; whatever parses
//! evaluates (or fails with a typed [`EvalError`]) against arbitrary JSON, and its canonical
//! form parses back to the same tree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_guard;
use floxy_core::expr::{EvalError, Expr, ExprError, MAX_EXPR_DEPTH, MAX_EXPR_LEN_CHARS};
use fuzz_guard::{excerpt, guarded};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Valid expressions the mutations start from.
const SEEDS: &[&str] = &[
    "{{ gt .count 5 }}",
    "{{ and (gt .count 0) (lt .count 100) }}",
    "{{ eq .status \"active\" }}",
    "{{- or (hasPrefix .sku \"A-\") (contains .tags \"vip\") -}}",
    "{{ not (not .x) }}",
    "{{ len .items }}",
    "{{ eq .a 1.5e3 -2 .5 nil true false }}",
    "{{ ne .order.items.0.sku `raw\\string` \"\\x41\\u00e9\\U0001F600\\101\\n\" }}",
    "gt .count 5",
    "{{ ge (len .s) 9007199254740993 }}",
    "{{ le .a.b.c -0.000001 }}",
    "{{ hasSuffix . \"}}\" }}",
    ".",
    "{{-3}}",
];

/// What parsing and using one source gives: the parse error, or that it parsed.
#[derive(Debug)]
enum Outcome {
    Rejected(ExprError),
    Parsed,
}

/// Parses `src`, and when it parses: evaluates it against `inputs` (typed errors only),
/// renders it and parses the rendering back (same canonical form).
fn exercise(src: &str, inputs: &[Value]) -> Outcome {
    match Expr::parse(src) {
        Err(e) => {
            // The error's column is a place in the source.
            assert!(
                e.column() <= src.chars().count(),
                "column {} past the end of {}",
                e.column(),
                excerpt(src)
            );
            let _ = e.to_string();
            Outcome::Rejected(e)
        }
        Ok(expr) => {
            for input in inputs {
                let b = expr.eval(input);
                let v = expr.eval_value(input);
                match (&b, &v) {
                    (Ok(_), Ok(_)) => {}
                    (Err(e1), Err(e2)) => {
                        assert_eq!(e1, e2);
                        let _: &EvalError = e1;
                        let _ = e1.to_string();
                    }
                    _ => panic!("eval and eval_value disagree: {b:?} vs {v:?}"),
                }
            }
            let canonical = expr.to_string();
            let again = Expr::parse(&canonical).unwrap_or_else(|e| {
                panic!(
                    "canonical form {} of {} does not parse: {e}",
                    excerpt(&canonical),
                    excerpt(src)
                )
            });
            assert_eq!(again.to_string(), canonical, "canonical form is not stable");
            Outcome::Parsed
        }
    }
}

fn run(src: String, inputs: Vec<Value>) -> Outcome {
    let what = format!("Expr::parse({})", excerpt(&src));
    guarded(&what, move || exercise(&src, &inputs))
}

/// Arbitrary JSON (nested, as inputs arrive: parsed JSON, so depth is bounded).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["10", "1.50", "-2e3", "1e400", "", "9007199254740993"])
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "count", "status", "items", "a", "b", "c", "s", "x", "sku", "tags", "0",
                        "order"
                    ]),
                    inner
                ),
                0..6
            )
            .prop_map(|kvs| Value::Object(
                kvs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

fn inputs() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(json_value(), 1..3)
}

/// One mutation of a source's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, text: String },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    Duplicate { at: usize, len: usize, times: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(vec![
        "(",
        ")",
        "{{",
        "}}",
        "\"",
        "`",
        "\\",
        ".",
        "-",
        " ",
        "e",
        "e999999999",
        "9",
        "\\u",
        "\\x",
        "\u{0}",
        "é",
        "😀",
        "nil",
        "not ",
        "eq ",
        "((((((((",
        "))))))))",
    ]);
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (
            any::<usize>(),
            prop_oneof![interesting.prop_map(str::to_owned), ".{0,4}"]
        )
            .prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), 1usize..16, 1usize..64).prop_map(|(at, len, times)| Mutation::Duplicate {
            at,
            len,
            times
        }),
    ]
}

/// Applies mutations to the bytes of `seed`; invalid UTF-8 becomes U+FFFD (the parser takes
/// `&str`: callers hand it text).
fn mutate(seed: &str, muts: &[Mutation]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for m in muts {
        let n = b.len();
        let pos = |at: usize| if n == 0 { 0 } else { at % (n + 1) };
        match m {
            Mutation::Flip { at, bit } if n > 0 => b[at % n] ^= 1 << bit,
            Mutation::Set { at, byte } if n > 0 => b[at % n] = *byte,
            Mutation::Insert { at, text } => {
                let p = pos(*at);
                b.splice(p..p, text.bytes());
            }
            Mutation::Delete { at, len } if n > 0 => {
                let p = at % n;
                b.drain(p..(p + len).min(n));
            }
            Mutation::Truncate { at } => b.truncate(pos(*at)),
            Mutation::Duplicate { at, len, times } if n > 0 => {
                let p = at % n;
                let slice = b[p..(p + len).min(n)].to_vec();
                for _ in 0..*times {
                    b.splice(p..p, slice.iter().copied());
                }
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_guard::cases(2_000), ..ProptestConfig::default() })]

    /// Arbitrary bytes (as text, lossily) and arbitrary strings.
    #[test]
    fn arbitrary_text_gets_ok_or_a_typed_error(
        src in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            any::<String>(),
            r#"[{}() .a-z0-9"`\\\-+eExu]{0,80}"#,
        ],
        inputs in inputs(),
    ) {
        run(src, inputs);
    }

    /// Valid expressions with one to four mutations.
    #[test]
    fn mutated_valid_expressions_get_ok_or_a_typed_error(
        seed in prop::sample::select(SEEDS.to_vec()),
        muts in prop::collection::vec(mutation(), 1..5),
        inputs in inputs(),
    ) {
        run(mutate(seed, &muts), inputs);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_guard::cases(64), ..ProptestConfig::default() })]

    /// Inputs of hostile size and shape: nesting, numbers, paths and escapes far past any
    /// limit, in the middle of an otherwise valid expression.
    #[test]
    fn hostile_shapes_are_rejected_or_bounded(
        n in prop_oneof![Just(100_000usize), 1usize..5_000, Just(MAX_EXPR_DEPTH), Just(MAX_EXPR_DEPTH + 1)],
        shape in 0usize..10,
    ) {
        let src = match shape {
            0 => "(".repeat(n),
            1 => format!("{{{{ {}.a{} }}}}", "(".repeat(n), ")".repeat(n)),
            2 => format!("{{{{ gt .a {} }}}}", "9".repeat(n)),
            3 => format!("{{{{ gt .a 1e{} }}}}", "9".repeat(n)),
            4 => format!("{{{{ eq .a \"{}\" }}}}", "\\u00e9".repeat(n)),
            5 => format!("{{{{ len .{} }}}}", vec!["a"; n].join(".")),
            6 => format!("{{{{ and {} }}}}", vec![".a"; n.max(2)].join(" ")),
            7 => format!("{{{{ {} .a }}}}", "not (".repeat(n) + &")".repeat(n)),
            8 => "{{".repeat(n) + &"}}".repeat(n),
            _ => format!("{{{{ eq .a `{}` }}}}", "\r".repeat(n)),
        };
        let long = src.chars().count() > MAX_EXPR_LEN_CHARS;
        let outcome = run(src, vec![json!({ "a": 1 })]);
        if long {
            prop_assert!(
                matches!(outcome, Outcome::Rejected(ExprError::TooLong { .. })),
                "a source over the length limit must be TooLong: {outcome:?}"
            );
        }
    }
}

/// The classic shapes, once each at full size.
#[test]
fn a_hundred_thousand_brackets_are_rejected() {
    for src in [
        "(".repeat(100_000),
        ")".repeat(100_000),
        format!(
            "{{{{ not {}.a{} }}}}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        ),
        format!("gt .a {}", "9".repeat(1_000_000)),
    ] {
        let out = run(src, vec![Value::Null]);
        assert!(
            matches!(out, Outcome::Rejected(ExprError::TooLong { .. })),
            "{out:?}"
        );
    }
    // Just past the depth limit, within the length limit.
    let deep = format!(
        "{{{{ not {}.a{} }}}}",
        "(not ".repeat(MAX_EXPR_DEPTH + 1),
        ")".repeat(MAX_EXPR_DEPTH + 1)
    );
    let out = run(deep, vec![Value::Null]);
    assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
}
