//! Located errors of a flow file.

use std::fmt;

/// One problem in a flow file, with where it is.
///
/// `line` and `column` are 1-based; both are 0 when the problem has no place in the text
/// (an unreadable file, for instance). `path` is the key path to the offending node, e.g.
/// `flows[0].steps[2].retry_strategy` (empty for the document itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct SpecError {
    /// File name as given to the parser (e.g. `flow.yaml`, or `<body>` for an API body).
    pub file: String,
    /// Line, 1-based (0: unknown).
    pub line: u32,
    /// Column, 1-based (0: unknown).
    pub column: u32,
    /// Key path of the offending node.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// The kind of problem.
    pub kind: SpecErrorKind,
}

/// Kinds of [`SpecError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not well-formed YAML or JSON.
    Syntax,
    /// A key the format does not know.
    UnknownKey,
    /// A required key is missing.
    MissingKey,
    /// A value of the wrong type or an unknown value of an enumeration.
    InvalidValue,
    /// A rule of the format is broken (unique names, declared handlers, ...).
    Semantic,
    /// A script file named by a handler does not exist.
    MissingScript,
    /// The workflow definition a flow produces was refused by the core's validation.
    Definition,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a flow file (never empty), in the order of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    /// The individual problems.
    #[must_use]
    pub fn errors(&self) -> &[SpecError] {
        &self.0
    }

    /// How many problems.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for errors returned by this crate.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl IntoIterator for SpecErrors {
    type Item = SpecError;
    type IntoIter = std::vec::IntoIter<SpecError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Where a node is: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub(crate) struct Loc {
    pub(crate) line: u32,
    pub(crate) column: u32,
}

/// Collects errors of one file.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) file: String,
    pub(crate) errors: Vec<SpecError>,
}

impl Sink {
    pub(crate) fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            errors: Vec::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        kind: SpecErrorKind,
        loc: Loc,
        path: &str,
        message: impl Into<String>,
    ) {
        self.errors.push(SpecError {
            file: self.file.clone(),
            line: loc.line,
            column: loc.column,
            path: path.to_owned(),
            message: message.into(),
            kind,
        });
    }

    /// The errors sorted by place (stable: same place keeps discovery order).
    pub(crate) fn finish(mut self) -> Result<(), SpecErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            self.errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
            Err(SpecErrors(self.errors))
        }
    }
}
