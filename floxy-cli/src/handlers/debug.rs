//! Where debug lines go (`-D`).

use std::fmt;
use std::sync::Arc;

/// Receives the debug lines of a handler (CLI.md §2 `-D`): its input, output and stderr,
/// one line at a time, already prefixed with `[DEBUG] Handler '<name>'`.
///
/// [`DebugSink::stderr`] writes them to the process's stderr; a live terminal view can pass
/// its own function (to print above a progress bar), tests a collector.
#[derive(Clone)]
pub struct DebugSink(Arc<dyn Fn(&str) + Send + Sync>);

impl DebugSink {
    /// Lines to the process's stderr.
    #[must_use]
    pub fn stderr() -> Self {
        Self(Arc::new(|line: &str| eprintln!("{line}")))
    }

    /// Lines to a function.
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn line(&self, handler: &str, what: &str, text: &str) {
        (self.0)(&format!("[DEBUG] Handler '{handler}' {what}: {text}"));
    }
}

impl fmt::Debug for DebugSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DebugSink")
    }
}
