//! Property tests: random well-formed expressions round-trip through
//! `Display`, and evaluation never panics on random inputs.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Number, Value};

use super::Expr;
use super::eval::truthy;
use super::parser::{Func, Node};

const KEYS: [&str; 8] = ["a", "b", "count", "status", "items", "s", "x", "0"];

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&KEYS[..7]).prop_map(str::to_owned),
        "[a-zA-Z_][a-zA-Z0-9_]{0,5}",
    ]
}

fn path() -> impl Strategy<Value = Vec<String>> {
    (
        proptest::option::of(segment()),
        vec(prop_oneof![segment(), "[0-2]".prop_map(String::from)], 0..3),
    )
        .prop_map(|(first, rest)| match first {
            None => Vec::new(),
            Some(f) => std::iter::once(f).chain(rest).collect(),
        })
}

fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        (-1000i32..1000, 0u32..4).prop_map(|(m, e)| f64::from(m) / f64::from(10u32.pow(e))),
    ]
}

fn short_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-c]{0,3}",
        Just("10".to_owned()),
        Just("1.50".to_owned()),
        Just("-3".to_owned()),
        Just("9007199254740993".to_owned()),
        Just("1e400".to_owned()),
        Just("}} {{ `\"\\".to_owned()),
    ]
}

fn literal() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-5i64..20).prop_map(Value::from),
        finite_f64().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        short_string().prop_map(Value::String),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        literal().prop_map(Node::Literal),
        path().prop_map(Node::Path)
    ];
    leaf.prop_recursive(5, 48, 4, |inner| {
        select(Func::ALL.to_vec()).prop_flat_map(move |func| {
            let min = func.min_args();
            let max = if func.variadic() { min + 2 } else { min };
            vec(inner.clone(), min..=max).prop_map(move |args| Node::Call { func, args })
        })
    })
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..20).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        short_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            vec((select(KEYS.to_vec()), inner), 0..6).prop_map(|kvs| Value::Object(
                kvs.into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<Map<_, _>>()
            )),
        ]
    })
}

fn input_object() -> impl Strategy<Value = Value> {
    vec((select(KEYS.to_vec()), json()), 0..8)
        .prop_map(|kvs| Value::Object(kvs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn expr_of(root: Node) -> Expr {
    Expr {
        source: String::new(),
        root,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn render_then_parse_round_trips(root in node()) {
        let rendered = expr_of(root.clone()).to_string();
        let parsed = Expr::parse(&rendered);
        prop_assert!(parsed.is_ok(), "{rendered:?} failed: {parsed:?}");
        if let Ok(parsed) = parsed {
            prop_assert_eq!(&parsed.root, &root, "rendered: {}", rendered);
            prop_assert_eq!(parsed.to_string(), rendered.clone());
            prop_assert_eq!(parsed.source(), rendered.as_str());
        }
        // The bare form (without braces) parses to the same tree.
        let bare = root.to_string();
        prop_assert_eq!(Expr::parse(&bare).map(|e| e.root), Ok(root));
    }

    #[test]
    fn eval_is_total_and_consistent(root in node(), input in input_object()) {
        let expr = expr_of(root);
        let as_bool = expr.eval(&input);
        let as_value = expr.eval_value(&input);
        match (&as_bool, &as_value) {
            (Ok(b), Ok(v)) => prop_assert_eq!(*b, truthy(v)),
            (Err(e1), Err(e2)) => prop_assert_eq!(e1, e2),
            _ => prop_assert!(false, "eval and eval_value disagree: {as_bool:?} vs {as_value:?}"),
        }
        // `not x` is the negation; `eq x x` is reflexive.
        let negated = expr_of(Node::Call { func: Func::Not, args: vec![expr.root.clone()] });
        let reflexive = expr_of(Node::Call { func: Func::Eq, args: vec![expr.root.clone(), expr.root.clone()] });
        match as_bool {
            Ok(b) => {
                prop_assert_eq!(negated.eval(&input), Ok(!b));
                prop_assert_eq!(reflexive.eval(&input), Ok(true));
            }
            Err(e) => {
                prop_assert_eq!(negated.eval(&input), Err(e.clone()));
                prop_assert_eq!(reflexive.eval(&input), Err(e));
            }
        }
    }

    #[test]
    fn parse_never_panics(src in prop_oneof![
        any::<String>(),
        r#"[{}() .a-z0-9"`\\\-+eE]{0,40}"#,
        r#"\{\{-? ?(gt|eq|and|not|len|contains) [ .a-z0-9"()\-]{0,30} ?-?\}\}"#,
    ]) {
        match Expr::parse(&src) {
            Ok(e) => {
                // Anything that parses renders to something that parses back.
                let again = Expr::parse(&e.to_string());
                prop_assert_eq!(again.map(|a| a.root), Ok(e.root.clone()));
                let _ = e.eval(&Value::Null);
            }
            Err(err) => prop_assert!(err.column() <= src.chars().count(), "{err} for {src:?}"),
        }
    }
}
