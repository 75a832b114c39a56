//! The condition expression language: Floxy's Go-template subset.
//!
//! Conditions written for Floxy work unchanged:
//!
//! ```text
//! {{ gt .count 5 }}
//! {{ and (gt .count 0) (lt .count 100) }}
//! {{ eq .status "active" }}
//! {{- or (hasPrefix .sku "A-") (contains .tags "vip") -}}
//! ```
//!
//! # Syntax
//!
//! * The whole expression is one `{{ ... }}` action, optionally surrounded by
//!   whitespace; `{{- ... -}}` trim markers are accepted (as in Go, a trim
//!   marker must be separated from the expression by whitespace, so `{{-3}}`
//!   is the number `-3`). A bare expression without braces (`gt .count 5`)
//!   is accepted too.
//! * A *command* is either a function name followed by its arguments
//!   (`gt .count 5`) or a single operand (`.active`, `true`).
//! * Operands: a path, a literal, or a parenthesised command
//!   (`(len .items)`). A function used as an argument must be parenthesised:
//!   `not (not .x)`.
//! * Paths: `.` is the whole input, `.order.total` walks object keys; a
//!   numeric segment also indexes arrays (`.items.0`). The first segment
//!   starts with a letter or `_`.
//! * Literals: `true`, `false`, `nil`; integers and decimals with optional
//!   sign and exponent (`5`, `-3`, `1.5`, `.5`, `1e3`); double-quoted strings
//!   with Go escapes (`\n \t \r \a \b \f \v \\ \" \' \xHH \uHHHH \UHHHHHHHH`
//!   and 3-digit octal; `\x`/octal must be ASCII) and raw backtick strings
//!   (no escapes; carriage returns are dropped, as in Go).
//! * Operands must be separated by whitespace (parentheses need not be).
//! * Integer literals with leading zeros (`010`) are rejected, because Go
//!   would read them as octal; hex/binary/underscore literals, variables
//!   (`$x`), pipelines (`|`), and field access on parenthesised values are
//!   not supported.
//!
//! # Functions
//!
//! | function | arity | result |
//! |---|---|---|
//! | `eq a b...` | ≥ 2 | `a` equals any of `b...` |
//! | `ne a b...` | ≥ 2 | `a` equals none of `b...` (`ne a b` is `not (eq a b)`) |
//! | `gt lt ge le a b` | 2 | ordered comparison |
//! | `and a b...` | ≥ 2 | first falsy operand, else the last (short-circuits) |
//! | `or a b...` | ≥ 2 | first truthy operand, else the last (short-circuits) |
//! | `not a` | 1 | negated truthiness |
//! | `contains s sub` | 2 | substring; array membership (with `eq` semantics) if `s` is an array; key presence if `s` is an object |
//! | `hasPrefix s p`, `hasSuffix s p` | 2 | string prefix / suffix |
//! | `len x` | 1 | characters of a string, elements of an array, keys of an object, `0` for null |
//!
//! # Coercions
//!
//! * A missing path evaluates to `null`.
//! * **Numbers** compare exactly: two integers (any `i64`/`u64`, including
//!   numeric strings without fraction/exponent) compare as `i128`, so
//!   `9007199254740993` ≠ `9007199254740992`; integer vs. decimal compares
//!   exactly as well; otherwise `f64`.
//! * **Ordered comparisons** (`gt lt ge le`): `null` is `0`, `true`/`false`
//!   are `1`/`0`, numeric strings (`"10"`, `"1.50"`, `"-2e3"`; strict
//!   syntax, no whitespace) are numbers. If both sides are numeric they
//!   compare as numbers (`gt "10" 9` is true); otherwise two strings compare
//!   lexicographically; anything else (objects, arrays, a non-numeric string
//!   against a number) is [`EvalError::NotComparable`].
//! * **Equality** (`eq ne`, `contains` on arrays): if both sides are numeric
//!   (as above, but `null` is *not* numeric) they compare as numbers
//!   (`eq "1.50" 1.5`, `eq true 1`); otherwise values are compared
//!   structurally (`eq .missing nil` is true, `eq nil 0` is false; numbers
//!   nested in arrays/objects compare numerically, strings as strings).
//! * **String functions** (`contains hasPrefix hasSuffix`) accept strings,
//!   `null` (as `""`), numbers and booleans (in their JSON text); arrays and
//!   objects are [`EvalError::TypeMismatch`] (except as `contains`' first
//!   argument).
//! * **Truthiness**: `false`, `0`, `""`, `null`, `[]` and `{}` are false;
//!   everything else is true. [`Expr::eval`] returns the truthiness of the
//!   result.
//!
//! # Limits
//!
//! Sources longer than [`MAX_EXPR_LEN_CHARS`] characters and parentheses
//! nested deeper than [`MAX_EXPR_DEPTH`] levels are rejected by
//! [`Expr::parse`], which bounds all recursion during parsing, rendering and
//! evaluation.
//!
//! # Example
//!
//! ```
//! use floxy_core::expr::Expr;
//! use serde_json::json;
//!
//! let expr = Expr::parse("{{ and (gt .count 0) (lt .count 100) }}")?;
//! assert!(expr.eval(&json!({ "count": "42" }))?);
//! assert!(!expr.eval(&json!({}))?); // missing → null → 0
//! assert_eq!(expr.to_string(), "{{ and (gt .count 0) (lt .count 100) }}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod eval;
mod lexer;
mod number;
mod parser;
#[cfg(test)]
mod proptests;

use std::fmt;
use std::str::FromStr;

pub use error::{EvalError, ExprError};

/// Maximum length of an expression source, in characters.
pub const MAX_EXPR_LEN_CHARS: usize = 4096;

/// Maximum nesting depth of parentheses in an expression.
pub const MAX_EXPR_DEPTH: usize = 32;

/// A parsed, checked condition expression.
///
/// Equality compares both the parsed tree and the original source text.
/// `Display` prints the canonical form (`{{ gt .count 5 }}`), which parses
/// back to the same tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    source: String,
    root: parser::Node,
}

impl Expr {
    /// Parses and checks an expression.
    ///
    /// Rejects unknown function names, wrong argument counts (`not`, `len`:
    /// 1; `contains`, `hasPrefix`, `hasSuffix`, `gt`, `lt`, `ge`, `le`: 2;
    /// `eq`, `ne`, `and`, `or`: at least 2), unbalanced parentheses,
    /// trailing input, empty expressions, and sources exceeding
    /// [`MAX_EXPR_LEN_CHARS`] or [`MAX_EXPR_DEPTH`].
    ///
    /// # Errors
    ///
    /// Returns an [`ExprError`] carrying the 0-based character column of the
    /// problem.
    pub fn parse(source: &str) -> Result<Self, ExprError> {
        if source.len() > MAX_EXPR_LEN_CHARS && source.chars().nth(MAX_EXPR_LEN_CHARS).is_some() {
            return Err(ExprError::TooLong {
                column: MAX_EXPR_LEN_CHARS,
                max: MAX_EXPR_LEN_CHARS,
            });
        }
        let tokens = lexer::lex(source)?;
        let root = parser::parse(&tokens)?;
        Ok(Self {
            source: source.to_owned(),
            root,
        })
    }

    /// Evaluates the expression against `input` (the step input) and returns
    /// the truthiness of the result.
    ///
    /// # Errors
    ///
    /// Returns an [`EvalError`] for non-comparable operands or arguments of
    /// the wrong type.
    pub fn eval(&self, input: &serde_json::Value) -> Result<bool, EvalError> {
        eval::eval(&self.root, input).map(|v| eval::truthy(&v))
    }

    /// Evaluates the expression against `input` and returns the raw value
    /// (booleans for comparisons, a number for `len`, the deciding operand
    /// for `and`/`or`, the looked-up value for a bare path).
    ///
    /// # Errors
    ///
    /// Same as [`Expr::eval`].
    pub fn eval_value(&self, input: &serde_json::Value) -> Result<serde_json::Value, EvalError> {
        eval::eval(&self.root, input).map(std::borrow::Cow::into_owned)
    }

    /// The source text the expression was parsed from.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Prints the canonical form, e.g. `{{ and (gt .a 0) (eq .s "x") }}`.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{{ {} }}}}", self.root)
    }
}

/// Same as [`Expr::parse`].
impl FromStr for Expr {
    type Err = ExprError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parse(src: &str) -> Expr {
        match Expr::parse(src) {
            Ok(e) => e,
            Err(e) => panic!("parse({src:?}) failed: {e}"),
        }
    }

    fn eval(src: &str, input: &Value) -> bool {
        match parse(src).eval(input) {
            Ok(b) => b,
            Err(e) => panic!("eval({src:?}) failed: {e}"),
        }
    }

    fn value(src: &str, input: &Value) -> Value {
        match parse(src).eval_value(input) {
            Ok(v) => v,
            Err(e) => panic!("eval_value({src:?}) failed: {e}"),
        }
    }

    fn eval_err(src: &str, input: &Value) -> EvalError {
        match parse(src).eval(input) {
            Ok(b) => panic!("eval({src:?}) unexpectedly gave {b}"),
            Err(e) => e,
        }
    }

    fn parse_err(src: &str) -> ExprError {
        match Expr::parse(src) {
            Ok(e) => panic!("parse({src:?}) unexpectedly gave {e:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn floxy_examples() {
        let input = json!({"count": 7, "status": "active", "order": {"total": 120.5}});
        assert!(eval("{{ gt .count 5 }}", &input));
        assert!(!eval("{{ gt .count 7 }}", &input));
        assert!(eval("{{ and (gt .count 0) (lt .count 100) }}", &input));
        assert!(!eval("{{ and (gt .count 0) (lt .count 5) }}", &input));
        assert!(eval(r#"{{ eq .status "active" }}"#, &input));
        assert!(!eval(r#"{{ eq .status "inactive" }}"#, &input));
        assert!(eval("{{ ge .order.total 120.5 }}", &input));
        assert!(eval("gt .count 5", &input));
        assert!(eval("  {{- gt .count 5 -}}\n", &input));
        assert!(eval("{{gt .count 5}}", &input));
    }

    #[test]
    fn comparisons() {
        let input = json!({"n": 10, "f": 1.5, "s": "abc"});
        for (src, want) in [
            ("gt .n 9", true),
            ("gt .n 10", false),
            ("lt .n 11", true),
            ("lt .n 10", false),
            ("ge .n 10", true),
            ("ge .n 11", false),
            ("le .n 10", true),
            ("le .n 9", false),
            ("gt .f 1", true),
            ("lt .f 2", true),
            ("gt .f 1.49", true),
            ("eq .f 1.5", true),
            ("eq .n 10", true),
            ("eq .n 10.0", true),
            ("ne .n 10", false),
            ("ne .n 11", true),
            ("gt -1 -2", true),
            ("lt -1.5 -1", true),
            (r#"lt .s "abd""#, true),
            (r#"gt .s "abc""#, false),
            (r#"ge .s "abc""#, true),
        ] {
            assert_eq!(eval(src, &input), want, "{src}");
        }
    }

    #[test]
    fn coercions() {
        let input = json!({
            "str10": "10", "dec": "1.50", "t": true, "f": false, "neg": "-3",
            "word": "abc", "nul": null
        });
        for (src, want) in [
            // missing → null → 0 in ordered comparisons
            ("gt .missing 0", false),
            ("ge .missing 0", true),
            ("lt .missing 1", true),
            ("gt .missing -1", true),
            ("le .nul 0", true),
            // numeric strings are numbers
            ("gt .str10 9", true),
            (r#"gt "10" 9"#, true),
            (r#"gt .str10 "9""#, true),
            ("lt .neg 0", true),
            ("eq .str10 10", true),
            // decimals
            ("eq .dec 1.5", true),
            (r#"eq "1.50" 1.5"#, true),
            (r#"eq "1.50" "1.5""#, true),
            ("gt .dec 1.49", true),
            // booleans
            ("eq .t 1", true),
            ("eq .f 0", true),
            ("gt .t 0", true),
            ("gt .t .f", true),
            ("eq .t true", true),
            ("eq .t false", false),
            ("lt .f 1", true),
            // null equality
            ("eq .missing nil", true),
            ("eq .nul nil", true),
            ("eq .missing .nul", true),
            ("eq .missing 0", false),
            (r#"eq .missing """#, false),
            ("ne .missing nil", false),
            // non-numeric strings
            (r#"eq .word "abc""#, true),
            ("eq .word 0", false),
        ] {
            assert_eq!(eval(src, &input), want, "{src}");
        }
    }

    #[test]
    fn big_integers_compare_exactly() {
        let input = json!({"a": 9_007_199_254_740_993_u64, "b": 9_007_199_254_740_992_u64});
        assert!(!eval("eq .a .b", &input));
        assert!(eval("gt .a .b", &input));
        assert!(!eval("eq .a 9007199254740992", &input));
        assert!(eval("eq .a 9007199254740993", &input));
        assert!(eval(r#"eq .a "9007199254740993""#, &input));
        assert!(!eval(r#"eq .a "9007199254740992""#, &input));
        assert!(eval("gt .a 9007199254740992.0", &input));
        let big = json!({"u": u64::MAX, "i": i64::MIN});
        assert!(eval("eq .u 18446744073709551615", &big));
        assert!(eval("gt .u 18446744073709551614", &big));
        assert!(eval("lt .i -9223372036854775807", &big));
        assert!(eval("lt .i .u", &big));
    }

    #[test]
    fn eq_with_multiple_args() {
        let input = json!({"a": 2, "s": "y"});
        assert!(eval("eq .a 1 2 3", &input));
        assert!(!eval("eq .a 4 5 6", &input));
        assert!(eval(r#"eq .s "x" "y""#, &input));
        assert!(!eval("ne .a 1 2 3", &input));
        assert!(eval("ne .a 4 5 6", &input));
    }

    #[test]
    fn structural_equality() {
        let input =
            json!({"x": {"a": [1, 2]}, "y": {"a": [1.0, 2]}, "z": {"a": [2, 1]}, "arr": [1]});
        assert!(eval("eq .x .y", &input));
        assert!(!eval("eq .x .z", &input));
        assert!(!eval("eq .arr 1", &input));
        assert!(eval("eq .x.a .y.a", &input));
        assert!(eval("eq . .", &input));
    }

    #[test]
    fn logic() {
        let input =
            json!({"yes": true, "no": false, "n": 0, "s": "x", "e": "", "arr": [], "obj": {}});
        for (src, want) in [
            ("and .yes .s", true),
            ("and .yes .no", false),
            ("and .yes .s 1 true", true),
            ("and .yes .s 0", false),
            ("or .no .n", false),
            ("or .no .s", true),
            ("or .no .n .e .arr .obj .missing", false),
            ("or .no .n .e .arr .obj .missing 1", true),
            ("not .no", true),
            ("not .yes", false),
            ("not .n", true),
            ("not .e", true),
            ("not .arr", true),
            ("not .obj", true),
            ("not .missing", true),
            ("not .s", false),
            ("not (not .s)", true),
            ("and (not .no) (or .n (eq .s \"x\"))", true),
        ] {
            assert_eq!(eval(src, &input), want, "{src}");
        }
        // Go semantics: and/or return the deciding operand.
        assert_eq!(value("and .s .e", &input), json!(""));
        assert_eq!(value("and .yes .s", &input), json!("x"));
        assert_eq!(value("or .n .s", &input), json!("x"));
        assert_eq!(value("or .n .e", &input), json!(""));
    }

    #[test]
    fn short_circuit_skips_errors() {
        let input = json!({"obj": {"a": 1}});
        assert!(!eval("and false (gt .obj 1)", &input));
        assert!(eval("or true (gt .obj 1)", &input));
        assert!(matches!(
            eval_err("and true (gt .obj 1)", &input),
            EvalError::NotComparable { .. }
        ));
        assert!(matches!(
            eval_err("or false (gt .obj 1)", &input),
            EvalError::NotComparable { .. }
        ));
    }

    #[test]
    fn string_functions() {
        let input = json!({"name": "floxy-core", "tags": ["a", "vip"], "ids": [1, 2, 3], "meta": {"k": 1}, "n": 1234});
        for (src, want) in [
            (r#"contains .name "oxy""#, true),
            (r#"contains .name "rust""#, false),
            (r#"contains .name """#, true),
            (r#"contains .tags "vip""#, true),
            (r#"contains .tags "vi""#, false),
            ("contains .ids 2", true),
            (r#"contains .ids "2""#, true),
            ("contains .ids 4", false),
            (r#"contains .meta "k""#, true),
            (r#"contains .meta "z""#, false),
            (r#"contains .missing "a""#, false),
            ("contains .n 23", true),
            (r#"hasPrefix .name "flo""#, true),
            (r#"hasPrefix .name "core""#, false),
            (r#"hasSuffix .name "core""#, true),
            (r#"hasSuffix .name "flo""#, false),
            (r#"hasPrefix .name """#, true),
            (r#"hasPrefix .missing "x""#, false),
            ("hasPrefix .n 12", true),
        ] {
            assert_eq!(eval(src, &input), want, "{src}");
        }
        assert_eq!(
            eval_err(r#"hasPrefix .tags "a""#, &input),
            EvalError::TypeMismatch {
                func: "hasPrefix",
                arg: 1,
                expected: "a string",
                found: "array"
            }
        );
        assert!(matches!(
            eval_err("hasSuffix .name .meta", &input),
            EvalError::TypeMismatch {
                func: "hasSuffix",
                arg: 2,
                ..
            }
        ));
    }

    #[test]
    fn len_function() {
        let input =
            json!({"s": "héllo", "items": [1, 2, 3], "obj": {"a": 1, "b": 2}, "n": 5, "empty": ""});
        assert_eq!(value("len .s", &input), json!(5));
        assert_eq!(value("len .items", &input), json!(3));
        assert_eq!(value("len .obj", &input), json!(2));
        assert_eq!(value("len .missing", &input), json!(0));
        assert!(eval("gt (len .items) 2", &input));
        assert!(!eval("gt (len .items) 3", &input));
        assert!(eval("eq (len .s) 5", &input));
        assert!(!eval("len .empty", &input));
        assert!(eval("len .items", &input));
        assert_eq!(
            eval_err("len .n", &input),
            EvalError::TypeMismatch {
                func: "len",
                arg: 1,
                expected: "a string, array or object",
                found: "number"
            }
        );
    }

    #[test]
    fn raw_values_and_whole_input() {
        let input = json!({"a": {"b": [1, "x"]}, "flag": true});
        assert_eq!(value(".a.b", &input), json!([1, "x"]));
        assert_eq!(value(".a.b.1", &input), json!("x"));
        assert_eq!(value(".", &input), input);
        assert_eq!(value(".nope", &input), Value::Null);
        assert_eq!(value("gt 2 1", &input), json!(true));
        assert_eq!(value("1.5", &input), json!(1.5));
        assert_eq!(value("`raw`", &input), json!("raw"));
        assert_eq!(value("nil", &input), Value::Null);
        assert!(eval("{{ .flag }}", &input));
        assert!(!eval("{{ .nope }}", &input));
        assert!(eval("{{ . }}", &input));
        assert!(!eval("{{ . }}", &json!({})));
        assert!(eval("true", &input));
        assert!(!eval("false", &input));
        assert!(!eval("0", &input));
        assert!(eval("-1", &input));
    }

    #[test]
    fn not_comparable_errors() {
        let input = json!({"obj": {"a": 1}, "arr": [1], "s": "abc"});
        assert_eq!(
            eval_err("gt .obj 1", &input),
            EvalError::NotComparable {
                func: "gt",
                left: "object",
                right: "number"
            }
        );
        assert_eq!(
            eval_err("le .s .arr", &input),
            EvalError::NotComparable {
                func: "le",
                left: "string",
                right: "array"
            }
        );
        assert!(matches!(
            eval_err("lt .s 5", &input),
            EvalError::NotComparable { func: "lt", .. }
        ));
        assert!(matches!(
            eval_err("ge .arr .arr", &input),
            EvalError::NotComparable { func: "ge", .. }
        ));
        assert_eq!(
            eval_err("gt .obj 1", &input).to_string(),
            "function \"gt\" cannot compare object with number"
        );
        // Errors propagate out of nested calls.
        assert!(matches!(
            eval_err("not (eq (gt .obj 1) true)", &input),
            EvalError::NotComparable { .. }
        ));
        // eq/ne never fail.
        assert!(!eval("eq .obj 1", &input));
        assert!(eval("ne .obj .arr", &input));
    }

    #[test]
    fn parse_errors_have_columns() {
        let e = parse_err("{{ and (gtt .count 5) true }}");
        assert_eq!(e.column(), 8);
        assert_eq!(e.to_string(), "at column 8: unknown function \"gtt\"");
        assert_eq!(
            parse_err("{{ gt .a }}").to_string(),
            "at column 3: function \"gt\" expects exactly 2 argument(s), got 1"
        );
        assert_eq!(
            parse_err("{{ gt .a 1").to_string(),
            "at column 0: missing closing \"}}\""
        );
        assert_eq!(
            parse_err("{{ gt .a 1 }} x").to_string(),
            "at column 14: unexpected text after closing \"}}\""
        );
        assert_eq!(parse_err("gt (lt .a 1").column(), 3);
        assert_eq!(parse_err("gt .a 1)").column(), 7);
        assert_eq!(parse_err("").to_string(), "at column 0: empty expression");
        assert_eq!(parse_err("eq .a \"x").column(), 6);
    }

    #[test]
    fn length_bound() {
        let ok_src = format!("eq .a \"{}\"", "x".repeat(MAX_EXPR_LEN_CHARS - 8));
        assert_eq!(ok_src.chars().count(), MAX_EXPR_LEN_CHARS);
        assert!(Expr::parse(&ok_src).is_ok());
        let long = format!("eq .a \"{}\"", "x".repeat(MAX_EXPR_LEN_CHARS - 7));
        assert_eq!(
            parse_err(&long),
            ExprError::TooLong {
                column: MAX_EXPR_LEN_CHARS,
                max: MAX_EXPR_LEN_CHARS
            }
        );
        // The bound counts characters, not bytes.
        let multibyte = format!("eq .a \"{}\"", "é".repeat(MAX_EXPR_LEN_CHARS - 8));
        assert!(multibyte.len() > MAX_EXPR_LEN_CHARS);
        assert!(Expr::parse(&multibyte).is_ok());
    }

    #[test]
    fn depth_bound() {
        let mut src = String::from("true");
        for _ in 0..MAX_EXPR_DEPTH {
            src = format!("not ({src})");
        }
        assert!(parse(&src).eval(&json!({})).is_ok());
        let too_deep = format!("not ({src})");
        assert_eq!(
            parse_err(&too_deep),
            ExprError::TooDeep {
                // the 33rd `(`: each level is `not (` (5 characters)
                column: 4 + 5 * MAX_EXPR_DEPTH,
                max: MAX_EXPR_DEPTH
            }
        );
        // Many unclosed parens within the length bound still give an error, not a crash.
        assert!(matches!(
            parse_err(&"(".repeat(MAX_EXPR_LEN_CHARS)),
            ExprError::TooDeep { .. }
        ));
    }

    #[test]
    fn display_source_and_equality() {
        let e = parse("{{-   and (gt .count   0)(lt .count 100)   -}}");
        assert_eq!(e.source(), "{{-   and (gt .count   0)(lt .count 100)   -}}");
        assert_eq!(e.to_string(), "{{ and (gt .count 0) (lt .count 100) }}");
        let again = parse(&e.to_string());
        assert_eq!(again.root, e.root);
        assert_eq!(again.to_string(), e.to_string());
        assert_ne!(again, e, "sources differ");
        assert_eq!(parse("gt .a 1"), parse("gt .a 1"));
        assert_eq!("gt .a 1".parse::<Expr>(), Ok(parse("gt .a 1")));
        assert_eq!(
            parse(r#"eq .s "a\nb""#).to_string(),
            r#"{{ eq .s "a\nb" }}"#
        );
        assert_eq!(parse(".").to_string(), "{{ . }}");
    }
}
