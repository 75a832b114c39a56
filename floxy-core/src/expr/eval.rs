//! Evaluator: walks the AST against a JSON input, applying Floxy's coercions.
//!
//! Recursion depth is bounded by the parser ([`super::MAX_EXPR_DEPTH`]);
//! walks over input values (deep equality) are iterative.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use super::EvalError;
use super::number::Num;
use super::parser::{Func, Node};

/// The value of a missing path.
static NULL: Value = Value::Null;

/// Evaluates `node` against `input`.
pub(crate) fn eval<'a>(node: &'a Node, input: &'a Value) -> Result<Cow<'a, Value>, EvalError> {
    match node {
        Node::Literal(v) => Ok(Cow::Borrowed(v)),
        Node::Path(segments) => Ok(Cow::Borrowed(lookup(input, segments))),
        Node::Call { func, args } => call(*func, args, input),
    }
}

/// Follows a dotted path. Objects are indexed by key, arrays by a canonical
/// decimal index (`.items.0`); anything else yields null.
fn lookup<'a>(input: &'a Value, segments: &[String]) -> &'a Value {
    let mut cur = input;
    for seg in segments {
        let next = match cur {
            Value::Object(map) => map.get(seg),
            Value::Array(items) => array_index(seg).and_then(|i| items.get(i)),
            _ => None,
        };
        cur = next.unwrap_or(&NULL);
    }
    cur
}

fn array_index(seg: &str) -> Option<usize> {
    let canonical =
        seg.bytes().all(|b| b.is_ascii_digit()) && (seg == "0" || !seg.starts_with('0'));
    if canonical { seg.parse().ok() } else { None }
}

/// Go-template truthiness: `false`, `0`, `""`, `null`, `[]` and `{}` are
/// false; everything else is true.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => Num::from_json(n).is_none_or(|x| !x.is_zero()),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// JSON type name used in error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn boolean<'a>(b: bool) -> Cow<'a, Value> {
    Cow::Owned(Value::Bool(b))
}

fn call<'a>(func: Func, args: &'a [Node], input: &'a Value) -> Result<Cow<'a, Value>, EvalError> {
    // `and` / `or` short-circuit and return the deciding operand (Go).
    if matches!(func, Func::And | Func::Or) {
        let want = func == Func::Or;
        let mut last = None;
        for arg in args {
            let v = eval(arg, input)?;
            if truthy(&v) == want {
                return Ok(v);
            }
            last = Some(v);
        }
        return last.ok_or(EvalError::Arity {
            func: func.name(),
            found: 0,
        });
    }
    let vals = args
        .iter()
        .map(|a| eval(a, input))
        .collect::<Result<Vec<_>, _>>()?;
    let name = func.name();
    let arity = || EvalError::Arity {
        func: name,
        found: vals.len(),
    };
    Ok(match (func, vals.as_slice()) {
        (Func::Eq, [first, rest @ ..]) if !rest.is_empty() => {
            boolean(rest.iter().any(|other| equal(first, other)))
        }
        (Func::Ne, [first, rest @ ..]) if !rest.is_empty() => {
            boolean(!rest.iter().any(|other| equal(first, other)))
        }
        (Func::Gt, [a, b]) => boolean(ordered(name, a, b)? == Ordering::Greater),
        (Func::Lt, [a, b]) => boolean(ordered(name, a, b)? == Ordering::Less),
        (Func::Ge, [a, b]) => boolean(ordered(name, a, b)? != Ordering::Less),
        (Func::Le, [a, b]) => boolean(ordered(name, a, b)? != Ordering::Greater),
        (Func::Not, [a]) => boolean(!truthy(a)),
        (Func::Contains, [hay, needle]) => boolean(contains(hay, needle)?),
        (Func::HasPrefix, [s, p]) => boolean(text(name, 1, s)?.starts_with(&*text(name, 2, p)?)),
        (Func::HasSuffix, [s, p]) => boolean(text(name, 1, s)?.ends_with(&*text(name, 2, p)?)),
        (Func::Len, [x]) => Cow::Owned(Value::from(length(x)?)),
        _ => return Err(arity()),
    })
}

/// Numeric view of a value for ordered comparisons: null is 0, booleans are
/// 0/1, numeric strings are numbers.
fn ordered_num(v: &Value) -> Option<Num> {
    match v {
        Value::Null => Some(Num::Int(0)),
        other => equality_num(other),
    }
}

/// Numeric view of a value for `eq` / `ne`: like [`ordered_num`] but null is
/// not a number (so `eq nil 0` is false and `eq .missing nil` is true).
fn equality_num(v: &Value) -> Option<Num> {
    match v {
        Value::Bool(b) => Some(Num::Int(i128::from(*b))),
        Value::Number(n) => Num::from_json(n),
        Value::String(s) => Num::parse(s),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// `gt` / `lt` / `ge` / `le`: numerically if both sides are numeric, else
/// lexicographically if both are strings, else an error.
fn ordered(func: &'static str, a: &Value, b: &Value) -> Result<Ordering, EvalError> {
    let not_comparable = || EvalError::NotComparable {
        func,
        left: kind(a),
        right: kind(b),
    };
    if let (Some(x), Some(y)) = (ordered_num(a), ordered_num(b)) {
        return x.compare(y).ok_or_else(not_comparable);
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        _ => Err(not_comparable()),
    }
}

/// `eq` semantics: numerically if both sides are numeric, else structural
/// equality of the JSON values (numbers inside arrays/objects compare
/// numerically, strings inside them compare as strings).
pub(crate) fn equal(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (equality_num(a), equality_num(b)) {
        return x.compare(y) == Some(Ordering::Equal);
    }
    deep_eq(a, b)
}

/// Structural equality without recursion (input depth is unbounded).
fn deep_eq(left: &Value, right: &Value) -> bool {
    let mut stack = vec![(left, right)];
    while let Some(pair) = stack.pop() {
        match pair {
            (Value::Null, Value::Null) => {}
            (Value::Bool(l), Value::Bool(r)) if l == r => {}
            (Value::String(l), Value::String(r)) if l == r => {}
            (Value::Number(l), Value::Number(r)) => {
                let same = match (Num::from_json(l), Num::from_json(r)) {
                    (Some(ln), Some(rn)) => ln.compare(rn) == Some(Ordering::Equal),
                    _ => l == r,
                };
                if !same {
                    return false;
                }
            }
            (Value::Array(l), Value::Array(r)) if l.len() == r.len() => {
                stack.extend(l.iter().zip(r.iter()));
            }
            (Value::Object(l), Value::Object(r)) if l.len() == r.len() => {
                for (key, lv) in l {
                    match r.get(key) {
                        Some(rv) => stack.push((lv, rv)),
                        None => return false,
                    }
                }
            }
            _ => return false,
        }
    }
    true
}

/// Text view of a scalar for string functions: strings as-is, null as `""`,
/// numbers and booleans in their JSON form. Arrays/objects are errors.
fn text<'v>(func: &'static str, arg: usize, v: &'v Value) -> Result<Cow<'v, str>, EvalError> {
    match v {
        Value::String(s) => Ok(Cow::Borrowed(s)),
        Value::Null => Ok(Cow::Borrowed("")),
        Value::Bool(b) => Ok(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Number(n) => Ok(Cow::Owned(n.to_string())),
        Value::Array(_) | Value::Object(_) => Err(EvalError::TypeMismatch {
            func,
            arg,
            expected: "a string",
            found: kind(v),
        }),
    }
}

/// `contains`: array membership (with `eq` semantics), object key presence,
/// or substring search.
fn contains(hay: &Value, needle: &Value) -> Result<bool, EvalError> {
    let func = Func::Contains.name();
    match hay {
        Value::Array(items) => Ok(items.iter().any(|item| equal(item, needle))),
        Value::Object(map) => match needle {
            Value::String(key) => Ok(map.contains_key(key)),
            other => Err(EvalError::TypeMismatch {
                func,
                arg: 2,
                expected: "a string key when searching an object",
                found: kind(other),
            }),
        },
        scalar => Ok(text(func, 1, scalar)?.contains(&*text(func, 2, needle)?)),
    }
}

/// `len`: characters of a string, elements of an array, keys of an object;
/// null has length 0.
fn length(v: &Value) -> Result<usize, EvalError> {
    match v {
        Value::String(s) => Ok(s.chars().count()),
        Value::Array(a) => Ok(a.len()),
        Value::Object(o) => Ok(o.len()),
        Value::Null => Ok(0),
        Value::Bool(_) | Value::Number(_) => Err(EvalError::TypeMismatch {
            func: Func::Len.name(),
            arg: 1,
            expected: "a string, array or object",
            found: kind(v),
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn truthiness() {
        for v in [
            json!(null),
            json!(false),
            json!(0),
            json!(0.0),
            json!(-0.0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [
            json!(true),
            json!(1),
            json!(-1),
            json!(0.1),
            json!(u64::MAX),
            json!("0"),
            json!("false"),
            json!([0]),
            json!({"a": null}),
        ] {
            assert!(truthy(&v), "{v}");
        }
    }

    #[test]
    fn lookup_paths() {
        let input = json!({"a": {"b": [10, {"c": "x"}]}, "0": "zero"});
        assert_eq!(lookup(&input, &[]), &input);
        let segs = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(lookup(&input, &segs(&["a", "b", "0"])), &json!(10));
        assert_eq!(lookup(&input, &segs(&["a", "b", "1", "c"])), &json!("x"));
        assert_eq!(lookup(&input, &segs(&["a", "b", "2"])), &json!(null));
        assert_eq!(lookup(&input, &segs(&["a", "b", "01"])), &json!(null));
        assert_eq!(lookup(&input, &segs(&["a", "b", "x"])), &json!(null));
        assert_eq!(lookup(&input, &segs(&["a", "zz", "q"])), &json!(null));
        assert_eq!(lookup(&input, &segs(&["0"])), &json!("zero"));
        assert_eq!(lookup(&json!(5), &segs(&["a"])), &json!(null));
    }

    #[test]
    fn equality_rules() {
        assert!(equal(&json!("1.50"), &json!(1.5)));
        assert!(equal(&json!("10"), &json!("10.0")));
        assert!(equal(&json!(true), &json!(1)));
        assert!(equal(&json!(false), &json!("0")));
        assert!(equal(&json!(null), &json!(null)));
        assert!(!equal(&json!(null), &json!(0)));
        assert!(!equal(&json!(null), &json!("")));
        assert!(!equal(&json!(null), &json!(false)));
        assert!(equal(&json!("abc"), &json!("abc")));
        assert!(!equal(&json!("abc"), &json!("abd")));
        assert!(!equal(
            &json!(9_007_199_254_740_993_u64),
            &json!(9_007_199_254_740_992_u64)
        ));
        assert!(equal(
            &json!([1, "a", {"x": 2.0}]),
            &json!([1.0, "a", {"x": 2}])
        ));
        assert!(!equal(&json!([1, 2]), &json!([2, 1])));
        assert!(!equal(&json!([1]), &json!([1, 1])));
        assert!(!equal(&json!({"a": 1}), &json!({"b": 1})));
        assert!(!equal(&json!(["1"]), &json!([1])));
        assert!(!equal(&json!({"a": 1}), &json!("{\"a\":1}")));
    }

    #[test]
    fn deep_eq_handles_very_deep_values() {
        let mut a = json!(1);
        let mut b = json!(1);
        for _ in 0..10_000 {
            a = Value::Array(vec![a]);
            b = Value::Array(vec![b]);
        }
        assert!(deep_eq(&a, &b));
        // Avoid a stack overflow in serde_json's recursive Drop.
        for v in [&mut a, &mut b] {
            while let Value::Array(inner) = v {
                match inner.pop() {
                    Some(next) => *v = next,
                    None => break,
                }
            }
        }
    }

    #[test]
    fn ordering_rules() {
        let o = |a: Value, b: Value| ordered("gt", &a, &b);
        assert_eq!(o(json!(null), json!(0)), Ok(Ordering::Equal));
        assert_eq!(o(json!(null), json!(-1)), Ok(Ordering::Greater));
        assert_eq!(o(json!("10"), json!(9)), Ok(Ordering::Greater));
        assert_eq!(o(json!("10"), json!("9")), Ok(Ordering::Greater));
        assert_eq!(o(json!("abc"), json!("abd")), Ok(Ordering::Less));
        assert_eq!(o(json!("10"), json!("9x")), Ok(Ordering::Less));
        assert_eq!(o(json!(true), json!(0)), Ok(Ordering::Greater));
        assert_eq!(o(json!(false), json!(null)), Ok(Ordering::Equal));
        assert_eq!(
            o(json!({"a": 1}), json!(1)),
            Err(EvalError::NotComparable {
                func: "gt",
                left: "object",
                right: "number"
            })
        );
        assert_eq!(
            o(json!("abc"), json!(1)),
            Err(EvalError::NotComparable {
                func: "gt",
                left: "string",
                right: "number"
            })
        );
        assert!(o(json!([1]), json!([1])).is_err());
        assert!(o(json!(null), json!("x")).is_err());
    }

    #[test]
    fn string_helpers() {
        assert_eq!(contains(&json!("hello"), &json!("ell")), Ok(true));
        assert_eq!(contains(&json!("hello"), &json!("xyz")), Ok(false));
        assert_eq!(contains(&json!(1234), &json!(23)), Ok(true));
        assert_eq!(contains(&json!(null), &json!("a")), Ok(false));
        assert_eq!(contains(&json!(["a", "b"]), &json!("b")), Ok(true));
        assert_eq!(contains(&json!([1, 2]), &json!("2")), Ok(true));
        assert_eq!(contains(&json!([[1], [2]]), &json!([2])), Ok(true));
        assert_eq!(contains(&json!({"k": 1}), &json!("k")), Ok(true));
        assert_eq!(contains(&json!({"k": 1}), &json!("z")), Ok(false));
        assert!(contains(&json!({"k": 1}), &json!(1)).is_err());
        assert_eq!(
            contains(&json!("abc"), &json!(["a"])),
            Err(EvalError::TypeMismatch {
                func: "contains",
                arg: 2,
                expected: "a string",
                found: "array"
            })
        );
        assert_eq!(length(&json!("héllo")), Ok(5));
        assert_eq!(length(&json!([1, 2, 3])), Ok(3));
        assert_eq!(length(&json!({"a": 1})), Ok(1));
        assert_eq!(length(&json!(null)), Ok(0));
        assert!(length(&json!(3)).is_err());
        assert!(length(&json!(true)).is_err());
    }
}
