//! Tokenizer: turns the source (with or without `{{ }}`) into tokens that
//! carry their 0-based character column.

use std::fmt::Write as _;

use serde_json::Number;

use super::ExprError;
use super::number::{Shape, decimal_shape};

/// The kind of a token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `.` (empty segment list) or `.a.b.c`.
    Path(Vec<String>),
    /// A bare identifier: a function name or `true` / `false` / `nil`.
    Ident(String),
    /// A decoded string literal (double-quoted or raw).
    Str(String),
    /// A number literal.
    Number(Number),
    /// End of the expression (end of input, or the closing `}}`).
    End,
}

/// A token with its starting column (character offset in the source).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    /// What was lexed.
    pub(crate) kind: TokenKind,
    /// 0-based character offset of the first character.
    pub(crate) column: usize,
}

fn is_ws(c: char) -> bool {
    c.is_whitespace()
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Tokenizes `source`. The returned vector always ends with
/// [`TokenKind::End`].
pub(crate) fn lex(source: &str) -> Result<Vec<Token>, ExprError> {
    Lexer {
        chars: source.chars().collect(),
        pos: 0,
    }
    .run()
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn starts_with(&self, at: usize, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(k, c)| self.chars.get(at + k) == Some(&c))
    }

    fn skip_ws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn run(mut self) -> Result<Vec<Token>, ExprError> {
        self.skip_ws();
        let open = self.pos;
        let braces = self.starts_with(open, "{{");
        if braces {
            self.pos += 2;
            // `{{-` is a trim marker only when followed by whitespace
            // (as in Go: `{{-3}}` is the number -3).
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(is_ws) {
                self.pos += 1;
            }
        }
        let mut tokens: Vec<Token> = Vec::new();
        loop {
            let had_ws = self.skip_ws();
            let column = self.pos;
            let Some(c) = self.peek() else {
                if braces {
                    return Err(ExprError::UnterminatedAction { column: open });
                }
                tokens.push(Token {
                    kind: TokenKind::End,
                    column,
                });
                return Ok(tokens);
            };
            if braces {
                let close = if c == '}' && self.peek_at(1) == Some('}') {
                    Some(2)
                } else if c == '-' && had_ws && self.starts_with(column + 1, "}}") {
                    Some(3)
                } else {
                    None
                };
                if let Some(len) = close {
                    tokens.push(Token {
                        kind: TokenKind::End,
                        column,
                    });
                    self.pos += len;
                    self.skip_ws();
                    if self.peek().is_some() {
                        return Err(ExprError::TrailingInput { column: self.pos });
                    }
                    return Ok(tokens);
                }
            }
            let kind = self.token(c, column)?;
            if !had_ws {
                check_adjacent(tokens.last().map(|t| &t.kind), &kind, column)?;
            }
            tokens.push(Token { kind, column });
        }
    }

    /// Lexes one token starting with `c` at `column` (== `self.pos`).
    fn token(&mut self, c: char, column: usize) -> Result<TokenKind, ExprError> {
        let next = self.peek_at(1);
        let next_is_digit = next.is_some_and(|n| n.is_ascii_digit());
        match c {
            '(' => {
                self.pos += 1;
                Ok(TokenKind::LParen)
            }
            ')' => {
                self.pos += 1;
                Ok(TokenKind::RParen)
            }
            '"' => self.string(column),
            '`' => self.raw_string(column),
            '.' if next_is_digit => self.number(column),
            '.' => Ok(self.path()),
            '0'..='9' => self.number(column),
            '-' | '+'
                if next_is_digit
                    || (next == Some('.')
                        && self.peek_at(2).is_some_and(|d| d.is_ascii_digit())) =>
            {
                self.number(column)
            }
            c if is_ident_start(c) => {
                let start = self.pos;
                while self.peek().is_some_and(is_ident_char) {
                    self.pos += 1;
                }
                Ok(TokenKind::Ident(self.text(start, self.pos)))
            }
            ch => Err(ExprError::UnexpectedChar { column, ch }),
        }
    }

    fn text(&self, start: usize, end: usize) -> String {
        self.chars
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .collect()
    }

    /// `.` followed by zero or more `segment` separated by `.`.
    fn path(&mut self) -> TokenKind {
        let mut segments = Vec::new();
        // Invariant: self.peek() == Some('.').
        while self.peek() == Some('.') && self.peek_at(1).is_some_and(is_ident_char) {
            self.pos += 1;
            let start = self.pos;
            while self.peek().is_some_and(is_ident_char) {
                self.pos += 1;
            }
            segments.push(self.text(start, self.pos));
        }
        if segments.is_empty() {
            // A lone `.`.
            self.pos += 1;
        }
        TokenKind::Path(segments)
    }

    fn number(&mut self, column: usize) -> Result<TokenKind, ExprError> {
        let start = self.pos;
        if matches!(self.peek(), Some('+' | '-')) {
            self.pos += 1;
        }
        // Scan the whole "word" so that `5abc`, `1.2.3` and `0x10` are
        // reported as one invalid number rather than two tokens.
        while self.peek().is_some_and(|c| is_ident_char(c) || c == '.')
            || (matches!(self.peek(), Some('+' | '-'))
                && matches!(self.chars.get(self.pos.wrapping_sub(1)), Some('e' | 'E')))
        {
            self.pos += 1;
        }
        let text = self.text(start, self.pos);
        let invalid = |reason| ExprError::InvalidNumber {
            column,
            text: text.clone(),
            reason,
        };
        match decimal_shape(&text) {
            None => Err(invalid("not a decimal number")),
            Some(Shape::Integer) => {
                let digits = text.trim_start_matches(['+', '-']);
                if digits.len() > 1 && digits.starts_with('0') {
                    return Err(invalid(
                        "leading zeros are not allowed (octal literals are not supported)",
                    ));
                }
                if let Ok(i) = text.parse::<i64>() {
                    Ok(TokenKind::Number(Number::from(i)))
                } else if let Ok(u) = text.trim_start_matches('+').parse::<u64>() {
                    Ok(TokenKind::Number(Number::from(u)))
                } else {
                    float_number(&text).ok_or_else(|| invalid("out of range"))
                }
            }
            Some(Shape::Float) => float_number(&text).ok_or_else(|| invalid("out of range")),
        }
    }

    fn string(&mut self, column: usize) -> Result<TokenKind, ExprError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let esc_col = self.pos;
            match self.peek() {
                None | Some('\n') => return Err(ExprError::UnterminatedString { column }),
                Some('"') => {
                    self.pos += 1;
                    return Ok(TokenKind::Str(out));
                }
                Some('\\') => {
                    self.pos += 1;
                    let decoded = self.escape(esc_col)?;
                    out.push(decoded);
                }
                Some(c) => {
                    self.pos += 1;
                    out.push(c);
                }
            }
        }
    }

    /// Decodes an escape sequence; `self.pos` is just after the backslash.
    fn escape(&mut self, column: usize) -> Result<char, ExprError> {
        let bad = |this: &Self, len: usize| ExprError::InvalidEscape {
            column,
            escape: this.text(column, (column + len).min(this.chars.len())),
        };
        let Some(c) = self.peek() else {
            return Err(ExprError::UnterminatedString { column });
        };
        self.pos += 1;
        let simple = match c {
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            'a' => Some('\u{07}'),
            'b' => Some('\u{08}'),
            'f' => Some('\u{0C}'),
            'v' => Some('\u{0B}'),
            '\\' => Some('\\'),
            '"' => Some('"'),
            '\'' => Some('\''),
            _ => None,
        };
        if let Some(s) = simple {
            return Ok(s);
        }
        let (radix, len, max) = match c {
            'x' => (16, 2, 0x7F),
            'u' => (16, 4, 0x10_FFFF),
            'U' => (16, 8, 0x10_FFFF),
            '0'..='7' => {
                self.pos -= 1; // the digit is part of the value
                (8, 3, 0x7F)
            }
            _ => return Err(bad(self, 2)),
        };
        let start = self.pos;
        let mut value: u32 = 0;
        for _ in 0..len {
            match self.peek().and_then(|d| d.to_digit(radix)) {
                Some(d) => {
                    value = value * radix + d;
                    self.pos += 1;
                }
                None => return Err(bad(self, start - column + len)),
            }
        }
        // \x and octal escapes are bytes in Go; only ASCII bytes can be
        // represented in a UTF-8 string.
        if value > max {
            return Err(bad(self, self.pos - column));
        }
        char::from_u32(value).ok_or_else(|| bad(self, self.pos - column))
    }

    fn raw_string(&mut self, column: usize) -> Result<TokenKind, ExprError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(ExprError::UnterminatedString { column }),
                Some('`') => {
                    self.pos += 1;
                    return Ok(TokenKind::Str(out));
                }
                // Go discards carriage returns inside raw strings.
                Some('\r') => self.pos += 1,
                Some(c) => {
                    self.pos += 1;
                    out.push(c);
                }
            }
        }
    }
}

fn float_number(text: &str) -> Option<TokenKind> {
    let f = text.parse::<f64>().ok()?;
    if !f.is_finite() {
        return None;
    }
    Number::from_f64(f).map(TokenKind::Number)
}

/// Operands must be separated by whitespace; parentheses need not be.
/// `)` directly followed by a path would be Go's field access on a
/// parenthesised value, which is not supported.
fn check_adjacent(
    prev: Option<&TokenKind>,
    cur: &TokenKind,
    column: usize,
) -> Result<(), ExprError> {
    let Some(prev) = prev else { return Ok(()) };
    let cur_is_paren = matches!(cur, TokenKind::LParen | TokenKind::RParen);
    if matches!(prev, TokenKind::LParen) || cur_is_paren {
        Ok(())
    } else {
        Err(ExprError::MissingSpace { column })
    }
}

/// Renders a string as a double-quoted literal that [`lex`] decodes back to
/// the same string (and that Go's template parser accepts).
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7F => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<TokenKind> {
        match lex(src) {
            Ok(tokens) => tokens.into_iter().map(|t| t.kind).collect(),
            Err(e) => panic!("lex({src:?}) failed: {e}"),
        }
    }

    fn err(src: &str) -> ExprError {
        match lex(src) {
            Ok(t) => panic!("lex({src:?}) unexpectedly succeeded: {t:?}"),
            Err(e) => e,
        }
    }

    fn path(segs: &[&str]) -> TokenKind {
        TokenKind::Path(segs.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn basic_tokens_with_columns() {
        let tokens = lex("{{ gt .count 5 }}").unwrap_or_default();
        let cols: Vec<usize> = tokens.iter().map(|t| t.column).collect();
        assert_eq!(cols, vec![3, 6, 13, 15]);
        assert_eq!(
            kinds("{{ gt .count 5 }}"),
            vec![
                TokenKind::Ident("gt".into()),
                path(&["count"]),
                TokenKind::Number(5.into()),
                TokenKind::End
            ]
        );
    }

    #[test]
    fn bare_and_trim_markers() {
        assert_eq!(kinds("gt .a 1"), kinds("{{ gt .a 1 }}"));
        assert_eq!(kinds("{{- gt .a 1 -}}"), kinds("{{gt .a 1}}"));
        assert_eq!(kinds("  \n{{gt .a 1}}\t "), kinds("gt .a 1"));
        // `{{-3}}` is the number -3, not a trim marker.
        assert_eq!(
            kinds("{{-3}}"),
            vec![TokenKind::Number((-3).into()), TokenKind::End]
        );
        // `-}}` without preceding space is not a trim marker.
        assert_eq!(err("{{ 3-}}").column(), 4);
    }

    #[test]
    fn paths() {
        assert_eq!(kinds("."), vec![path(&[]), TokenKind::End]);
        assert_eq!(
            kinds(".order.total"),
            vec![path(&["order", "total"]), TokenKind::End]
        );
        assert_eq!(
            kinds(".items.0 .x_y"),
            vec![path(&["items", "0"]), path(&["x_y"]), TokenKind::End]
        );
        assert_eq!(kinds(".ünï"), vec![path(&["ünï"]), TokenKind::End]);
        assert!(matches!(
            err(".a.b.c..d"),
            ExprError::MissingSpace { column: 6 }
        ));
    }

    #[test]
    fn numbers() {
        let n = |s: &str| kinds(s).into_iter().next();
        assert_eq!(n("42"), Some(TokenKind::Number(42.into())));
        assert_eq!(n("-42"), Some(TokenKind::Number((-42).into())));
        assert_eq!(n("+42"), Some(TokenKind::Number(42.into())));
        assert_eq!(n("0"), Some(TokenKind::Number(0.into())));
        assert_eq!(
            n("18446744073709551615"),
            Some(TokenKind::Number(u64::MAX.into()))
        );
        let f = |x: f64| Number::from_f64(x).map(TokenKind::Number);
        assert_eq!(n("1.5"), f(1.5));
        assert_eq!(n("-1.5"), f(-1.5));
        assert_eq!(n(".5"), f(0.5));
        assert_eq!(n("-.5"), f(-0.5));
        assert_eq!(n("1e3"), f(1000.0));
        assert_eq!(n("1.5E-3"), f(0.0015));
        assert_eq!(n("2."), f(2.0));
        assert_eq!(n("99999999999999999999"), f(1e20));
        for bad in ["5abc", "1.2.3", "0x10", "1e", "007", "-01", "1e999"] {
            assert!(
                matches!(err(bad), ExprError::InvalidNumber { column: 0, .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn strings() {
        let s = |src: &str| kinds(src).into_iter().next();
        assert_eq!(s(r#""abc""#), Some(TokenKind::Str("abc".into())));
        assert_eq!(
            s(r#""a\"b\\c\n\t\r\x41\u00e9\U0001F600\101\'""#),
            Some(TokenKind::Str("a\"b\\c\n\t\rAé😀A'".into()))
        );
        assert_eq!(s(r#""}}""#), Some(TokenKind::Str("}}".into())));
        assert_eq!(
            s("`raw \\n \"q\"`"),
            Some(TokenKind::Str("raw \\n \"q\"".into()))
        );
        assert_eq!(s("`a\r\nb`"), Some(TokenKind::Str("a\nb".into())));
        assert_eq!(kinds(r#"{{ eq .s "}}" }}"#).len(), 4);
    }

    #[test]
    fn string_errors() {
        assert_eq!(
            err(r#"eq .a "abc"#),
            ExprError::UnterminatedString { column: 6 }
        );
        assert_eq!(
            err("eq .a \"ab\ncd\""),
            ExprError::UnterminatedString { column: 6 }
        );
        assert_eq!(
            err("eq .a `abc"),
            ExprError::UnterminatedString { column: 6 }
        );
        assert_eq!(
            err(r#"eq .a "a\qb""#),
            ExprError::InvalidEscape {
                column: 8,
                escape: "\\q".into()
            }
        );
        assert_eq!(
            err(r#""\xZZ""#),
            ExprError::InvalidEscape {
                column: 1,
                escape: "\\xZZ".into()
            }
        );
        assert!(matches!(err(r#""\xff""#), ExprError::InvalidEscape { .. }));
        assert!(matches!(
            err(r#""\ud800""#),
            ExprError::InvalidEscape { .. }
        ));
        assert!(matches!(
            err(r#""\U00110000""#),
            ExprError::InvalidEscape { .. }
        ));
        assert!(matches!(err(r#""\"#), ExprError::UnterminatedString { .. }));
    }

    #[test]
    fn braces_errors() {
        assert_eq!(
            err("{{ gt .a 1"),
            ExprError::UnterminatedAction { column: 0 }
        );
        assert_eq!(
            err("  {{ gt .a 1 }"),
            ExprError::UnexpectedChar {
                column: 13,
                ch: '}'
            }
        );
        assert_eq!(
            err("{{ gt .a 1 }} x"),
            ExprError::TrailingInput { column: 14 }
        );
        assert_eq!(
            err("{{ gt .a 1 }}{{ lt .a 2 }}"),
            ExprError::TrailingInput { column: 13 }
        );
        assert_eq!(
            err("gt .a 1 }}"),
            ExprError::UnexpectedChar { column: 8, ch: '}' }
        );
        assert_eq!(
            err("gt .a | x"),
            ExprError::UnexpectedChar { column: 6, ch: '|' }
        );
        assert_eq!(
            err("gt $x 1"),
            ExprError::UnexpectedChar { column: 3, ch: '$' }
        );
    }

    #[test]
    fn adjacency() {
        assert_eq!(err(r#"eq .a"x""#), ExprError::MissingSpace { column: 5 });
        assert_eq!(err("eq (.a).b 1"), ExprError::MissingSpace { column: 7 });
        assert_eq!(err("gt.a 1"), ExprError::MissingSpace { column: 2 });
        assert_eq!(
            kinds("and(gt .a 1)(lt .a 5)").len(),
            1 + 1 + 3 + 1 + 1 + 3 + 1 + 1
        );
    }

    #[test]
    fn columns_are_characters_not_bytes() {
        assert_eq!(
            err(r#"eq "ééé" | 1"#),
            ExprError::UnexpectedChar { column: 9, ch: '|' }
        );
    }

    #[test]
    fn quote_round_trips() {
        for s in [
            "",
            "plain",
            "q\"b\\s",
            "\n\t\r\u{0}\u{7f}\u{85}é😀",
            "}} `x`",
        ] {
            let q = quote(s);
            assert_eq!(
                kinds(&q),
                vec![TokenKind::Str(s.into()), TokenKind::End],
                "{q}"
            );
        }
    }
}
