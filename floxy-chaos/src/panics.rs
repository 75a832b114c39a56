//! Quiet injected panics.
//!
//! Injected handler panics are caught by the runtime and become failed attempts; the
//! default panic hook would still print each one (with a backtrace when `RUST_BACKTRACE` is
//! set). [`quiet_injected_panics`] installs, once per process, a hook that drops the
//! messages of panics this crate injected and passes every other panic to the previous hook.

use std::sync::Once;

/// The prefix of every panic message this crate injects.
pub const INJECTED_PANIC_PREFIX: &str = "chaos: injected panic";

static INSTALL: Once = Once::new();

/// Installs the filtering panic hook (idempotent, process-wide).
pub fn quiet_injected_panics() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !msg.starts_with(INJECTED_PANIC_PREFIX) {
                previous(info);
            }
        }));
    });
}
