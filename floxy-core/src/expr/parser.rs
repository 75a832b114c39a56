//! Parser: tokens → AST, with arity checks and the nesting-depth bound.
//! Also the canonical rendering of the AST (`Display`).

use std::fmt;

use serde_json::Value;

use super::lexer::{Token, TokenKind, quote};
use super::{ExprError, MAX_EXPR_DEPTH};

/// A built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Not,
    Contains,
    HasPrefix,
    HasSuffix,
    Len,
}

/// Allowed argument counts: `min..=max` (`max == None` means unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arity {
    min: usize,
    max: Option<usize>,
    /// Human-readable form used in error messages.
    text: &'static str,
}

impl Arity {
    const fn exactly(n: usize, text: &'static str) -> Self {
        Self {
            min: n,
            max: Some(n),
            text,
        }
    }

    const fn at_least(n: usize, text: &'static str) -> Self {
        Self {
            min: n,
            max: None,
            text,
        }
    }

    fn accepts(self, n: usize) -> bool {
        n >= self.min && self.max.is_none_or(|m| n <= m)
    }
}

impl Func {
    /// Every function, for tests and generators.
    #[cfg(test)]
    pub(crate) const ALL: [Self; 13] = [
        Self::Eq,
        Self::Ne,
        Self::Gt,
        Self::Lt,
        Self::Ge,
        Self::Le,
        Self::And,
        Self::Or,
        Self::Not,
        Self::Contains,
        Self::HasPrefix,
        Self::HasSuffix,
        Self::Len,
    ];

    /// The name as written in expressions.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Eq => "eq",
            Self::Ne => "ne",
            Self::Gt => "gt",
            Self::Lt => "lt",
            Self::Ge => "ge",
            Self::Le => "le",
            Self::And => "and",
            Self::Or => "or",
            Self::Not => "not",
            Self::Contains => "contains",
            Self::HasPrefix => "hasPrefix",
            Self::HasSuffix => "hasSuffix",
            Self::Len => "len",
        }
    }

    /// Looks a function up by name (case-sensitive, like Go).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "gt" => Self::Gt,
            "lt" => Self::Lt,
            "ge" => Self::Ge,
            "le" => Self::Le,
            "and" => Self::And,
            "or" => Self::Or,
            "not" => Self::Not,
            "contains" => Self::Contains,
            "hasPrefix" => Self::HasPrefix,
            "hasSuffix" => Self::HasSuffix,
            "len" => Self::Len,
            _ => return None,
        })
    }

    /// The accepted argument counts.
    pub(crate) const fn arity(self) -> Arity {
        match self {
            Self::Not | Self::Len => Arity::exactly(1, "exactly 1"),
            Self::Gt
            | Self::Lt
            | Self::Ge
            | Self::Le
            | Self::Contains
            | Self::HasPrefix
            | Self::HasSuffix => Arity::exactly(2, "exactly 2"),
            Self::Eq | Self::Ne | Self::And | Self::Or => Arity::at_least(2, "at least 2"),
        }
    }

    /// Minimum number of arguments.
    #[cfg(test)]
    pub(crate) const fn min_args(self) -> usize {
        self.arity().min
    }

    /// Whether the function takes a variable number of arguments.
    #[cfg(test)]
    pub(crate) const fn variadic(self) -> bool {
        self.arity().max.is_none()
    }
}

/// A node of the expression tree. Parentheses leave no trace in the tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// `nil`, `true`, `false`, a number or a string.
    Literal(Value),
    /// `.` (empty) or `.a.b`: a lookup into the input.
    Path(Vec<String>),
    /// A function call.
    Call {
        /// The function.
        func: Func,
        /// Its arguments (count already checked against the arity).
        args: Vec<Node>,
    },
}

/// Parses a token stream (ending with [`TokenKind::End`]).
pub(crate) fn parse(tokens: &[Token]) -> Result<Node, ExprError> {
    let mut p = Parser { tokens, pos: 0 };
    if let Some(t) = p.peek().filter(|t| t.kind == TokenKind::End) {
        return Err(ExprError::Empty { column: t.column });
    }
    let node = p.command(0, None)?;
    match p.peek() {
        Some(Token {
            kind: TokenKind::RParen,
            column,
        }) => Err(ExprError::UnmatchedParen { column: *column }),
        Some(Token {
            kind: TokenKind::End,
            ..
        })
        | None => Ok(node),
        Some(t) => Err(ExprError::UnexpectedToken {
            column: t.column,
            expected: "end of expression",
            found: describe(&t.kind),
        }),
    }
}

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
}

fn describe(kind: &TokenKind) -> String {
    match kind {
        TokenKind::LParen => "\"(\"".to_owned(),
        TokenKind::RParen => "\")\"".to_owned(),
        TokenKind::Path(_) => "a path".to_owned(),
        TokenKind::Ident(name) => format!("{name:?}"),
        TokenKind::Str(_) => "a string".to_owned(),
        TokenKind::Number(_) => "a number".to_owned(),
        TokenKind::End => "end of expression".to_owned(),
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn end_column(&self) -> usize {
        self.tokens.last().map_or(0, |t| t.column)
    }

    fn at_command_end(&self) -> bool {
        matches!(
            self.peek().map(|t| &t.kind),
            None | Some(TokenKind::RParen | TokenKind::End)
        )
    }

    /// `command := FUNC arg* | arg`. `depth` is the number of enclosing
    /// parentheses, `open` the column of the innermost enclosing `(`.
    fn command(&mut self, depth: usize, open: Option<usize>) -> Result<Node, ExprError> {
        let Some(first) = self.peek() else {
            return Err(ExprError::Empty {
                column: self.end_column(),
            });
        };
        if let TokenKind::Ident(name) = &first.kind
            && !is_keyword(name)
        {
            let column = first.column;
            let func = Func::from_name(name).ok_or_else(|| ExprError::UnknownFunction {
                column,
                name: name.clone(),
            })?;
            self.pos += 1;
            let mut args = Vec::new();
            while !self.at_command_end() {
                args.push(self.arg(depth)?);
            }
            self.check_closed(open)?;
            let arity = func.arity();
            if !arity.accepts(args.len()) {
                return Err(ExprError::WrongArity {
                    column,
                    func: func.name(),
                    expected: arity.text,
                    found: args.len(),
                });
            }
            return Ok(Node::Call { func, args });
        }
        let node = self.arg(depth)?;
        self.check_closed(open)?;
        match self.peek() {
            Some(t) if !self.at_command_end() => Err(ExprError::NotAFunction { column: t.column }),
            _ => Ok(node),
        }
    }

    /// Inside parentheses, reaching the end of input is an unclosed `(`
    /// (reported before e.g. arity errors of the unterminated call).
    fn check_closed(&self, open: Option<usize>) -> Result<(), ExprError> {
        match (open, self.peek().map(|t| &t.kind)) {
            (Some(column), None | Some(TokenKind::End)) => Err(ExprError::UnclosedParen { column }),
            _ => Ok(()),
        }
    }

    /// `arg := literal | path | '(' command ')'`.
    fn arg(&mut self, depth: usize) -> Result<Node, ExprError> {
        let Some(tok) = self.peek() else {
            return Err(ExprError::Empty {
                column: self.end_column(),
            });
        };
        let column = tok.column;
        let node = match &tok.kind {
            TokenKind::LParen => {
                let depth = depth + 1;
                if depth > MAX_EXPR_DEPTH {
                    return Err(ExprError::TooDeep {
                        column,
                        max: MAX_EXPR_DEPTH,
                    });
                }
                self.pos += 1;
                if let Some(t) = self.peek().filter(|t| t.kind == TokenKind::RParen) {
                    return Err(ExprError::UnexpectedToken {
                        column: t.column,
                        expected: "an expression",
                        found: describe(&t.kind),
                    });
                }
                let inner = self.command(depth, Some(column))?;
                match self.peek() {
                    Some(Token {
                        kind: TokenKind::RParen,
                        ..
                    }) => {}
                    _ => return Err(ExprError::UnclosedParen { column }),
                }
                inner
            }
            TokenKind::Path(segments) => Node::Path(segments.clone()),
            TokenKind::Str(s) => Node::Literal(Value::String(s.clone())),
            TokenKind::Number(n) => Node::Literal(Value::Number(n.clone())),
            TokenKind::Ident(name) => match name.as_str() {
                "true" => Node::Literal(Value::Bool(true)),
                "false" => Node::Literal(Value::Bool(false)),
                "nil" => Node::Literal(Value::Null),
                other => {
                    return Err(match Func::from_name(other) {
                        Some(f) => ExprError::BareFunction {
                            column,
                            name: f.name(),
                        },
                        None => ExprError::UnknownFunction {
                            column,
                            name: other.to_owned(),
                        },
                    });
                }
            },
            TokenKind::RParen => return Err(ExprError::UnmatchedParen { column }),
            TokenKind::End => return Err(ExprError::Empty { column }),
        };
        self.pos += 1;
        Ok(node)
    }
}

fn is_keyword(name: &str) -> bool {
    matches!(name, "true" | "false" | "nil")
}

/// Canonical rendering: a top-level call without parentheses, nested calls
/// in parentheses, single spaces, strings double-quoted, floats always with
/// a `.` or an exponent.
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Call { func, args } => {
                f.write_str(func.name())?;
                for arg in args {
                    f.write_str(" ")?;
                    match arg {
                        Node::Call { .. } => write!(f, "({arg})")?,
                        _ => write!(f, "{arg}")?,
                    }
                }
                Ok(())
            }
            Node::Path(segments) if segments.is_empty() => f.write_str("."),
            Node::Path(segments) => {
                for s in segments {
                    write!(f, ".{s}")?;
                }
                Ok(())
            }
            Node::Literal(v) => fmt_literal(v, f),
        }
    }
}

fn fmt_literal(v: &Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match v {
        Value::Null => f.write_str("nil"),
        Value::Bool(b) => write!(f, "{b}"),
        Value::Number(n) => match (n.is_f64(), n.as_f64()) {
            // `{:?}` keeps a `.0` or uses an exponent, so the literal is
            // lexed back as a float, and it is the shortest exact form.
            (true, Some(x)) => write!(f, "{x:?}"),
            _ => write!(f, "{n}"),
        },
        Value::String(s) => f.write_str(&quote(s)),
        // Never produced by the parser; render as a JSON string literal
        // so the output is still a valid expression.
        Value::Array(_) | Value::Object(_) => f.write_str(&quote(&v.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::lexer::lex;
    use super::*;

    fn p(src: &str) -> Result<Node, ExprError> {
        parse(&lex(src)?)
    }

    fn ok(src: &str) -> Node {
        match p(src) {
            Ok(n) => n,
            Err(e) => panic!("parse({src:?}) failed: {e}"),
        }
    }

    fn err(src: &str) -> ExprError {
        match p(src) {
            Ok(n) => panic!("parse({src:?}) unexpectedly succeeded: {n:?}"),
            Err(e) => e,
        }
    }

    fn path(s: &[&str]) -> Node {
        Node::Path(s.iter().map(|x| (*x).to_owned()).collect())
    }

    fn lit(v: Value) -> Node {
        Node::Literal(v)
    }

    #[test]
    fn simple_call() {
        assert_eq!(
            ok("{{ gt .count 5 }}"),
            Node::Call {
                func: Func::Gt,
                args: vec![path(&["count"]), lit(5.into())]
            }
        );
    }

    #[test]
    fn nested_calls_and_parens() {
        let n = ok("{{ and (gt .count 0) (lt .count 100) }}");
        assert_eq!(
            n,
            Node::Call {
                func: Func::And,
                args: vec![
                    Node::Call {
                        func: Func::Gt,
                        args: vec![path(&["count"]), lit(0.into())]
                    },
                    Node::Call {
                        func: Func::Lt,
                        args: vec![path(&["count"]), lit(100.into())]
                    },
                ]
            }
        );
        assert_eq!(ok("((gt .a 1))"), ok("gt .a 1"));
        assert_eq!(ok("(.a)"), path(&["a"]));
        assert_eq!(ok("eq ((.a)) (1)"), ok("eq .a 1"));
    }

    #[test]
    fn single_operands() {
        assert_eq!(ok("{{ .active }}"), path(&["active"]));
        assert_eq!(ok("{{ . }}"), path(&[]));
        assert_eq!(ok("true"), lit(Value::Bool(true)));
        assert_eq!(ok("false"), lit(Value::Bool(false)));
        assert_eq!(ok("nil"), lit(Value::Null));
        assert_eq!(ok(r#""x""#), lit("x".into()));
        assert_eq!(ok("-2.5"), lit((-2.5).into()));
    }

    #[test]
    fn arity_errors() {
        assert_eq!(
            err("{{ not }}"),
            ExprError::WrongArity {
                column: 3,
                func: "not",
                expected: "exactly 1",
                found: 0
            }
        );
        assert_eq!(
            err("gt .a 1 2"),
            ExprError::WrongArity {
                column: 0,
                func: "gt",
                expected: "exactly 2",
                found: 3
            }
        );
        assert_eq!(
            err("and (eq .a)"),
            ExprError::WrongArity {
                column: 5,
                func: "eq",
                expected: "at least 2",
                found: 1
            }
        );
        for (src, func) in [
            ("len", "len"),
            ("len .a .b", "len"),
            ("contains .a", "contains"),
            ("hasPrefix .a", "hasPrefix"),
            ("hasSuffix .a 1 2", "hasSuffix"),
            ("lt 1", "lt"),
            ("ge 1", "ge"),
            ("le 1 2 3", "le"),
            ("ne 1", "ne"),
            ("or 1", "or"),
            ("and", "and"),
            ("not 1 2", "not"),
        ] {
            assert!(
                matches!(err(src), ExprError::WrongArity { func: f, .. } if f == func),
                "{src}"
            );
        }
        // Variadic functions accept many arguments.
        assert!(p("eq .a 1 2 3 4").is_ok());
        assert!(p("and 1 2 3").is_ok());
    }

    #[test]
    fn unknown_function_has_column() {
        let e = err("{{ and (gtt .count 5) true }}");
        assert_eq!(
            e,
            ExprError::UnknownFunction {
                column: 8,
                name: "gtt".into()
            }
        );
        assert_eq!(e.to_string(), "at column 8: unknown function \"gtt\"");
        assert_eq!(e.column(), 8);
        // Function names are case-sensitive.
        assert!(matches!(
            err("Gt 1 2"),
            ExprError::UnknownFunction { column: 0, .. }
        ));
        assert!(matches!(
            err("eq .a foo"),
            ExprError::UnknownFunction { column: 6, .. }
        ));
    }

    #[test]
    fn structural_errors() {
        assert_eq!(err(""), ExprError::Empty { column: 0 });
        assert_eq!(err("   "), ExprError::Empty { column: 3 });
        assert_eq!(err("{{ }}"), ExprError::Empty { column: 3 });
        assert_eq!(err("{{- -}}"), ExprError::Empty { column: 4 });
        assert_eq!(err("gt (.a"), ExprError::UnclosedParen { column: 3 });
        assert_eq!(err("gt .a (len .b"), ExprError::UnclosedParen { column: 6 });
        assert_eq!(
            err("{{ gt (lt .a 1 2 }}"),
            ExprError::UnclosedParen { column: 6 }
        );
        assert_eq!(err("gt .a 1)"), ExprError::UnmatchedParen { column: 7 });
        assert_eq!(err(")"), ExprError::UnmatchedParen { column: 0 });
        assert_eq!(err("(gt .a 1))"), ExprError::UnmatchedParen { column: 9 });
        assert_eq!(
            err("eq () 1"),
            ExprError::UnexpectedToken {
                column: 4,
                expected: "an expression",
                found: "\")\"".into()
            }
        );
        assert_eq!(err(".a .b"), ExprError::NotAFunction { column: 3 });
        assert_eq!(err("(gt .a 1) 2"), ExprError::NotAFunction { column: 10 });
        assert_eq!(err("1 2"), ExprError::NotAFunction { column: 2 });
        assert_eq!(
            err("not not true"),
            ExprError::BareFunction {
                column: 4,
                name: "not"
            }
        );
    }

    #[test]
    fn depth_bound() {
        let nested = |n: usize| format!("{}.a{}", "(".repeat(n), ")".repeat(n));
        assert!(p(&nested(MAX_EXPR_DEPTH)).is_ok());
        assert_eq!(
            err(&nested(MAX_EXPR_DEPTH + 1)),
            ExprError::TooDeep {
                column: MAX_EXPR_DEPTH,
                max: MAX_EXPR_DEPTH
            }
        );
        let mut calls = String::from(".x");
        for _ in 0..MAX_EXPR_DEPTH {
            calls = format!("not ({calls})");
        }
        assert!(p(&calls).is_ok());
        let too_deep = format!("not ({calls})");
        assert!(matches!(err(&too_deep), ExprError::TooDeep { .. }));
    }

    #[test]
    fn display_is_canonical() {
        let render = |s: &str| ok(s).to_string();
        assert_eq!(render("{{gt   .count 5}}"), "gt .count 5");
        assert_eq!(
            render("and ( gt .a 0 ) (lt .b.c -1.5)"),
            "and (gt .a 0) (lt .b.c -1.5)"
        );
        assert_eq!(render("(eq . nil)"), "eq . nil");
        assert_eq!(render("eq .a `x\"y`"), r#"eq .a "x\"y""#);
        assert_eq!(render("eq .a 1e20"), "eq .a 1e20");
        assert_eq!(render("eq .a 2."), "eq .a 2.0");
        assert_eq!(
            render("eq .a 18446744073709551615"),
            "eq .a 18446744073709551615"
        );
        assert_eq!(render("not (not true)"), "not (not true)");
    }

    #[test]
    fn func_table_is_consistent() {
        for f in Func::ALL {
            assert_eq!(Func::from_name(f.name()), Some(f));
            assert!(f.arity().accepts(f.min_args()));
            assert!(!f.arity().accepts(f.min_args() - 1));
            assert_eq!(f.arity().accepts(f.min_args() + 1), f.variadic());
        }
    }
}
