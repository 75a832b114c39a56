//! Process and HTTP handlers: the `exec` of a YAML handler (CLI.md §2 and §3).
//!
//! * [`BashHandler`]: an inline script (`bash -c`, under `set -e`) or a script file
//!   (`bash <path>`), run in its own process group with the step's input in its environment;
//!   its stdout is the step's output.
//! * [`HttpHandler`]: `POST <url>` with `{"metadata": ..., "data": <input>}`; the JSON
//!   response body is the step's output. TLS with rustls ([`HttpTls`]).
//!
//! Both implement [`floxy::Handler`] and are registered with
//! [`floxy::Engine::register_handler`]-style calls by the glue that reads the YAML file: their
//! configuration does not depend on the YAML crate.
//!
//! # Bounds
//!
//! Outputs are bounded by the payload bound ([`floxy::floxy_core::model::DEFAULT_MAX_PAYLOAD_BYTES`]
//! unless set with `max_payload_bytes`, which the glue sets from the workflow's options): a
//! larger output fails the attempt without retry ([`floxy::HandlerError::fatal`]). Nothing is
//! buffered without a bound: a process's stdout is read up to [`STDOUT_READ_FACTOR`] times the
//! bound (pretty-printed JSON is larger than its compact form, which is what the bound
//! measures), an HTTP body up to the bound; past it the reading stops (the process group is
//! killed) and the attempt fails. Only the last [`STDERR_TAIL_BYTES`] of stderr are kept for
//! the error message.

mod bash;
mod debug;
mod http;
mod process;
mod tls;

pub use bash::{BashHandler, DEFAULT_KILL_GRACE, ENV_VALUE_MAX_BYTES};
pub use debug::DebugSink;
pub use http::{DEFAULT_HTTP_TIMEOUT, HttpHandler};
pub use tls::HttpTls;

use std::path::PathBuf;

/// How many times the payload bound a process's stdout may be before it is cut off.
pub const STDOUT_READ_FACTOR: usize = 4;

/// How much of the end of a process's stderr (or the start of an HTTP error body) an error
/// message carries, in bytes.
pub const STDERR_TAIL_BYTES: usize = 2048;

/// A handler that cannot be built from its configuration. Every variant names the handler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerSetupError {
    /// A script file that cannot be found (or read).
    #[error("handler {handler}: script file {}: {source}", path.display())]
    ScriptNotFound {
        /// The handler.
        handler: String,
        /// The script path as configured.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: std::io::Error,
    },
    /// A script path that names something other than a file (a directory).
    #[error("handler {handler}: script {} is not a file", path.display())]
    ScriptNotAFile {
        /// The handler.
        handler: String,
        /// The script path as configured.
        path: PathBuf,
    },
    /// The URL of an HTTP handler does not parse or is not `http://` / `https://`.
    #[error("handler {handler}: invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The handler.
        handler: String,
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS file (CA, client certificate, client key) that cannot be read.
    #[error("handler {handler}: TLS: cannot read {what} {}: {source}", path.display())]
    TlsFile {
        /// The handler.
        handler: String,
        /// `ca_file`, `cert_file` or `key_file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file that was read but holds no usable PEM material.
    #[error("handler {handler}: TLS: {what} {}: {reason}", path.display())]
    TlsPem {
        /// The handler.
        handler: String,
        /// `ca_file`, `cert_file` or `key_file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
    /// Any other TLS configuration problem: a client certificate without its key (or the
    /// reverse), a key that does not match the certificate.
    #[error("handler {handler}: TLS: {reason}")]
    Tls {
        /// The handler.
        handler: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("handler {handler}: HTTP client: {reason}")]
    Client {
        /// The handler.
        handler: String,
        /// Why.
        reason: String,
    },
}

/// Cuts `s` to at most `max` bytes at a character boundary, keeping the start.
fn head(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
