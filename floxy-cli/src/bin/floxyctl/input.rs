//! Reading the input JSON of `run`, `start` and `requeue`.

use floxy_cli::exit::{CliError, CliResult};
use std::io::{IsTerminal, Read};
use std::path::Path;

/// Largest input read (the engine refuses payloads above the workflow's bound later; this
/// only keeps a runaway pipe from filling memory).
const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Where the input comes from when `-i` is not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Default {
    /// `{}`.
    EmptyObject,
    /// Standard input if it is not a terminal (piped or redirected), else `{}`.
    StdinIfPiped,
}

/// The input: `-i FILE`, `-i -` (standard input), or the default.
pub(crate) fn read_input(arg: Option<&Path>, default: Default) -> CliResult<serde_json::Value> {
    match arg {
        Some(p) if p.as_os_str() == "-" => parse(&read_stdin()?, "standard input"),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| CliError::bad_input(format!("input file {}: {e}", p.display())))?;
            parse(&text, &format!("input file {}", p.display()))
        }
        None => match default {
            Default::StdinIfPiped if !std::io::stdin().is_terminal() => {
                let text = read_stdin()?;
                if text.trim().is_empty() {
                    Ok(serde_json::json!({}))
                } else {
                    parse(&text, "standard input")
                }
            }
            _ => Ok(serde_json::json!({})),
        },
    }
}

fn read_stdin() -> CliResult<String> {
    let mut text = String::new();
    std::io::stdin()
        .take(MAX_INPUT_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| CliError::bad_input(format!("cannot read standard input: {e}")))?;
    Ok(text)
}

fn parse(text: &str, what: &str) -> CliResult<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| CliError::bad_input(format!("{what} is not valid JSON: {e}")))
}
