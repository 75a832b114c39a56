//! Exit codes of `floxyctl` and `floxyd`, and the error type that carries one.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; for `run`/`resume`: the instance `completed` |
//! | 1 | error: the store failed or could not be reached, I/O, an internal error |
//! | 2 | bad input: a bad flag or value, a missing or invalid file, an invalid flow |
//! | 3 | the instance `failed` (rolled back) |
//! | 4 | the instance was `cancelled` |
//! | 5 | the instance was `aborted` |
//! | 6 | the instance is parked in the DLQ (`dlq`) |
//! | 7 | timeout: the instance did not settle within `--completion-timeout` |
//! | 8 | the instance waits for a human decision (`floxyctl decide`) |
//! | 9 | not found or refused: unknown instance, workflow or DLQ record, or a command the instance's state does not allow (e.g. cancelling a completed instance) |
//! | 130 | `floxyd`: stopped at once by a second SIGINT/SIGTERM |

use floxy::{EngineError, InstanceStatus};
use std::fmt;

/// An exit code of the binaries (see the [module docs](self) for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Exit {
    /// 0: success (`run`: the instance completed).
    Ok,
    /// 1: the store failed, I/O, an internal error.
    Error,
    /// 2: bad input (flags, values, files, flows).
    BadInput,
    /// 3: the instance failed.
    Failed,
    /// 4: the instance was cancelled.
    Cancelled,
    /// 5: the instance was aborted.
    Aborted,
    /// 6: the instance is parked in the DLQ.
    Dlq,
    /// 7: the instance did not settle in time.
    Timeout,
    /// 8: the instance waits for a human decision.
    WaitingDecision,
    /// 9: not found, or refused by the instance's state.
    Refused,
    /// 130: stopped at once by a second signal.
    Interrupted,
}

impl Exit {
    /// The numeric code.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Error => 1,
            Self::BadInput => 2,
            Self::Failed => 3,
            Self::Cancelled => 4,
            Self::Aborted => 5,
            Self::Dlq => 6,
            Self::Timeout => 7,
            Self::WaitingDecision => 8,
            Self::Refused => 9,
            Self::Interrupted => 130,
        }
    }

    /// The code for an instance that settled in `status` (`running` means: waiting for a
    /// decision, the only way a running instance settles).
    #[must_use]
    pub const fn for_status(status: InstanceStatus) -> Self {
        match status {
            InstanceStatus::Completed => Self::Ok,
            InstanceStatus::Failed => Self::Failed,
            InstanceStatus::Cancelled => Self::Cancelled,
            InstanceStatus::Aborted => Self::Aborted,
            InstanceStatus::Dlq => Self::Dlq,
            InstanceStatus::Pending
            | InstanceStatus::Running
            | InstanceStatus::RollingBack
            | InstanceStatus::Cancelling => Self::WaitingDecision,
        }
    }

    /// The process exit code.
    #[must_use]
    pub fn exit_code(self) -> std::process::ExitCode {
        std::process::ExitCode::from(self.code())
    }
}

/// The exit-code table as `--help` text.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (run/resume: the instance completed)
  1  error: store unreachable or failing, I/O, internal error
  2  bad input: bad flag or value, missing or invalid file, invalid flow
  3  the instance failed (rolled back)
  4  the instance was cancelled
  5  the instance was aborted
  6  the instance is parked in the DLQ
  7  timeout: the instance did not settle within --completion-timeout
  8  the instance waits for a human decision (floxyctl decide)
  9  not found, or refused by the instance's state";

/// An error with the exit code it ends the process with. Its message is one line for
/// people: no backtrace, no debug dump.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// What went wrong.
    pub message: String,
}

impl CliError {
    /// An error with `exit` and `message`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    /// Bad input (exit 2).
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(Exit::BadInput, message)
    }

    /// A runtime error (exit 1).
    pub fn error(message: impl Into<String>) -> Self {
        Self::new(Exit::Error, message)
    }

    /// Prefixes the message with `context: `.
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> Self {
        let exit = match &e {
            EngineError::UnknownWorkflow(_)
            | EngineError::UnknownInstance(_)
            | EngineError::UnknownDlqRecord(_)
            | EngineError::Transition(_)
            | EngineError::DefinitionConflict(_) => Exit::Refused,
            EngineError::Definition(_) | EngineError::PayloadTooLarge(_) => Exit::BadInput,
            EngineError::Timeout { .. } => Exit::Timeout,
            _ => Exit::Error,
        };
        Self::new(exit, one_line(&e.to_string()))
    }
}

/// `s` on one line: line breaks become `; `.
#[must_use]
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The result type of the binaries' commands.
pub type CliResult<T> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let all = [
            Exit::Ok,
            Exit::Error,
            Exit::BadInput,
            Exit::Failed,
            Exit::Cancelled,
            Exit::Aborted,
            Exit::Dlq,
            Exit::Timeout,
            Exit::WaitingDecision,
            Exit::Refused,
            Exit::Interrupted,
        ];
        let mut codes: Vec<u8> = all.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for e in all {
            if e != Exit::Interrupted {
                assert!(
                    EXIT_CODES_HELP.contains(&format!("  {}  ", e.code())),
                    "{e:?} missing from the help table"
                );
            }
        }
    }

    #[test]
    fn statuses_map_to_codes() {
        assert_eq!(Exit::for_status(InstanceStatus::Completed).code(), 0);
        assert_eq!(Exit::for_status(InstanceStatus::Failed).code(), 3);
        assert_eq!(Exit::for_status(InstanceStatus::Cancelled).code(), 4);
        assert_eq!(Exit::for_status(InstanceStatus::Aborted).code(), 5);
        assert_eq!(Exit::for_status(InstanceStatus::Dlq).code(), 6);
        assert_eq!(Exit::for_status(InstanceStatus::Running).code(), 8);
    }

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\n  b\n\nc"), "a; b; c");
    }
}
