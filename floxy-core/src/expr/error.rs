//! Error types of the expression language: [`ExprError`] (parsing) and
//! [`EvalError`] (evaluation).

/// An error found while parsing or checking an expression.
///
/// Every variant carries the 0-based **character** (not byte) offset into the
/// original source where the problem was detected; see [`ExprError::column`].
/// The `Display` form always starts with `at column N: `, for example
/// `at column 3: unknown function "gtt"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExprError {
    /// The source contains no expression (empty, only whitespace, or `{{ }}`).
    #[error("at column {column}: empty expression")]
    Empty {
        /// Offset where an expression was expected.
        column: usize,
    },
    /// The source is longer than [`super::MAX_EXPR_LEN_CHARS`] characters.
    #[error("at column {column}: expression is longer than the maximum of {max} characters")]
    TooLong {
        /// Offset of the first character beyond the limit.
        column: usize,
        /// The maximum allowed length in characters.
        max: usize,
    },
    /// Parentheses are nested deeper than [`super::MAX_EXPR_DEPTH`] levels.
    #[error("at column {column}: expression is nested deeper than the maximum of {max} levels")]
    TooDeep {
        /// Offset of the opening parenthesis that exceeded the limit.
        column: usize,
        /// The maximum allowed nesting depth.
        max: usize,
    },
    /// A character that cannot start any token (e.g. `|`, `$`, `{`).
    #[error("at column {column}: unexpected character {ch:?}")]
    UnexpectedChar {
        /// Offset of the character.
        column: usize,
        /// The offending character.
        ch: char,
    },
    /// Two operands are written next to each other without whitespace
    /// (e.g. `.a"x"` or `(gt .a 1).b`).
    #[error("at column {column}: missing space between operands")]
    MissingSpace {
        /// Offset of the second operand.
        column: usize,
    },
    /// A string literal is not closed (double-quoted strings also end at a
    /// newline, as in Go).
    #[error("at column {column}: unterminated string literal")]
    UnterminatedString {
        /// Offset of the opening quote.
        column: usize,
    },
    /// An invalid escape sequence inside a double-quoted string.
    #[error("at column {column}: invalid escape sequence {escape:?} in string literal")]
    InvalidEscape {
        /// Offset of the backslash.
        column: usize,
        /// The escape sequence as written (possibly truncated).
        escape: String,
    },
    /// A malformed or out-of-range number literal.
    #[error("at column {column}: invalid number {text:?}: {reason}")]
    InvalidNumber {
        /// Offset of the first character of the literal.
        column: usize,
        /// The literal as written.
        text: String,
        /// Why the literal was rejected.
        reason: &'static str,
    },
    /// `{{` without a matching closing `}}`.
    #[error("at column {column}: missing closing \"}}}}\"")]
    UnterminatedAction {
        /// Offset of the opening `{{`.
        column: usize,
    },
    /// Non-whitespace text after the closing `}}`.
    #[error("at column {column}: unexpected text after closing \"}}}}\"")]
    TrailingInput {
        /// Offset of the first unexpected character.
        column: usize,
    },
    /// An identifier that is not one of the supported functions
    /// (nor `true`, `false`, `nil`).
    #[error("at column {column}: unknown function {name:?}")]
    UnknownFunction {
        /// Offset of the identifier.
        column: usize,
        /// The identifier as written.
        name: String,
    },
    /// A function called with an unsupported number of arguments.
    #[error("at column {column}: function {func:?} expects {expected} argument(s), got {found}")]
    WrongArity {
        /// Offset of the function name.
        column: usize,
        /// The function name.
        func: &'static str,
        /// Human-readable arity, e.g. `"exactly 2"` or `"at least 2"`.
        expected: &'static str,
        /// Number of arguments given.
        found: usize,
    },
    /// A function name used as an argument without parentheses
    /// (e.g. `not not .x`); write `not (not .x)` instead.
    #[error(
        "at column {column}: function {name:?} used as an argument must be called in parentheses"
    )]
    BareFunction {
        /// Offset of the function name.
        column: usize,
        /// The function name.
        name: &'static str,
    },
    /// Arguments given to something that is not a function (e.g. `.a .b`).
    #[error("at column {column}: unexpected argument; only functions take arguments")]
    NotAFunction {
        /// Offset of the first unexpected argument.
        column: usize,
    },
    /// A token that is not allowed at this position (e.g. `()`).
    #[error("at column {column}: expected {expected}, found {found}")]
    UnexpectedToken {
        /// Offset of the token.
        column: usize,
        /// What the parser expected.
        expected: &'static str,
        /// Description of what was found.
        found: String,
    },
    /// A `(` without a matching `)`.
    #[error("at column {column}: unclosed \"(\"")]
    UnclosedParen {
        /// Offset of the unclosed `(`.
        column: usize,
    },
    /// A `)` without a matching `(`.
    #[error("at column {column}: unmatched \")\"")]
    UnmatchedParen {
        /// Offset of the unmatched `)`.
        column: usize,
    },
}

impl ExprError {
    /// The 0-based character offset in the source where the error was found.
    #[must_use]
    pub fn column(&self) -> usize {
        match self {
            Self::Empty { column }
            | Self::TooLong { column, .. }
            | Self::TooDeep { column, .. }
            | Self::UnexpectedChar { column, .. }
            | Self::MissingSpace { column }
            | Self::UnterminatedString { column }
            | Self::InvalidEscape { column, .. }
            | Self::InvalidNumber { column, .. }
            | Self::UnterminatedAction { column }
            | Self::TrailingInput { column }
            | Self::UnknownFunction { column, .. }
            | Self::WrongArity { column, .. }
            | Self::BareFunction { column, .. }
            | Self::NotAFunction { column }
            | Self::UnexpectedToken { column, .. }
            | Self::UnclosedParen { column }
            | Self::UnmatchedParen { column } => *column,
        }
    }
}

/// An error raised while evaluating a parsed expression against an input.
///
/// Kinds (`left`, `right`, `found`) are JSON type names: `null`, `boolean`,
/// `number`, `string`, `array`, `object`. Input values themselves are never
/// copied into errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// An ordered comparison (`gt`, `lt`, `ge`, `le`) between values that
    /// cannot be ordered: neither both numeric (after coercion) nor both
    /// strings, e.g. an object, an array, or a non-numeric string against a
    /// number.
    #[error("function {func:?} cannot compare {left} with {right}")]
    NotComparable {
        /// The comparison function.
        func: &'static str,
        /// JSON type of the left operand.
        left: &'static str,
        /// JSON type of the right operand.
        right: &'static str,
    },
    /// A function argument has a type the function does not accept
    /// (e.g. `len 5`, `hasPrefix .obj "x"`).
    #[error("function {func:?} argument {arg}: expected {expected}, found {found}")]
    TypeMismatch {
        /// The function.
        func: &'static str,
        /// 1-based position of the offending argument.
        arg: usize,
        /// What the function accepts.
        expected: &'static str,
        /// JSON type of the value that was given.
        found: &'static str,
    },
    /// A function received a number of arguments it cannot handle. This is
    /// rejected by [`super::Expr::parse`], so it cannot occur for a parsed
    /// expression; it exists so evaluation never panics.
    #[error("function {func:?} called with {found} argument(s)")]
    Arity {
        /// The function.
        func: &'static str,
        /// Number of arguments it received.
        found: usize,
    },
}
