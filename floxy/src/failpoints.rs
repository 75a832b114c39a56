//! Failpoints at the runtime's crash points (feature `failpoints`).
//!
//! The names and the meaning of their actions are documented in
//! [`floxy_core::failpoints`]. Without the feature every point compiles to nothing.

/// What a failpoint told the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    /// Go on (the point is off, or it only delayed).
    Continue,
    /// Simulated crash of this unit of work: stop here, commit nothing more.
    Abandon,
}

/// Evaluates failpoint `name`: `return(N)` sleeps `N` ms on the tokio timer, `return(exit)`
/// aborts the process, any other `return` abandons the unit of work, `panic` panics.
#[cfg(feature = "failpoints")]
pub(crate) async fn hit(name: &'static str) -> Hit {
    let Some(arg) = fail::eval(name, |arg| arg) else {
        return Hit::Continue;
    };
    let arg = arg.unwrap_or_default();
    let arg = arg.trim();
    if let Ok(ms) = arg.parse::<u64>() {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        return Hit::Continue;
    }
    if arg == "exit" {
        tracing::error!(failpoint = name, "failpoint aborts the process");
        std::process::abort();
    }
    tracing::debug!(failpoint = name, "failpoint: abandoning the unit of work");
    Hit::Abandon
}

/// Without the `failpoints` feature: always [`Hit::Continue`].
#[cfg(not(feature = "failpoints"))]
// Same signature as the real one (callers `.await` it); always inlined so the hot path pays
// nothing for a failpoint that cannot fire.
#[allow(clippy::inline_always, clippy::unused_async)]
#[inline(always)]
pub(crate) async fn hit(_name: &'static str) -> Hit {
    Hit::Continue
}
