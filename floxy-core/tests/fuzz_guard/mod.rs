//! The guard every fuzz target runs its input under: the call runs on its own thread (with a
//! large stack, so recursion problems show up as panics of this guard's making rather than
//! as the test runner's overflow), must finish within a time limit and must not grow the
//! process's resident memory by more than a bound. A panic, a hang or a memory blow-up is a
//! test failure with the input named in the message; proptest then shrinks it.
//!
//! The same file is kept in floxy-core, floxy-spec and floxy-store-redb (`tests/fuzz_guard/`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Time one call may take.
pub(crate) const TIME_LIMIT: Duration = Duration::from_secs(5);
/// Resident memory one call may add to the process.
pub(crate) const MEMORY_LIMIT_BYTES: u64 = 512 * 1024 * 1024;
/// Stack of the worker thread: the size a default `std::thread` gets on Linux (8 MiB of
/// the main thread is more than a server's request thread usually has), so a recursion
/// that overflows it overflows in production too.
pub(crate) const STACK_BYTES: usize = 2 * 1024 * 1024;

/// Cases of a fuzz target: `default` (what CI runs, seconds in all), multiplied by
/// `FLOXY_FUZZ_SCALE` when set, for a longer run, e.g.
/// `FLOXY_FUZZ_SCALE=100 cargo nextest run -p floxy-spec --test fuzz_flow_files`.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("FLOXY_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |n| default.saturating_mul(n).max(1))
}

/// Resident set size of this process, from `/proc/self/statm` (0 where it cannot be read).
pub(crate) fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Runs `f` under the guard and returns its result.
///
/// # Panics
/// When `f` panics (the panic message is kept), runs longer than [`TIME_LIMIT`] or grows
/// the resident memory by more than [`MEMORY_LIMIT_BYTES`]. A runaway call cannot be
/// stopped, so a memory blow-up exits the process at once (before the machine runs out):
/// the message says which input did it.
pub(crate) fn guarded<T, F>(what: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let base = rss_bytes();
    let worker = std::thread::Builder::new()
        .name("fuzz-worker".into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let r = f();
            let _ = tx.send(r);
        })
        .expect("spawn the fuzz worker");
    let start = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(r) => {
                let _ = worker.join();
                return r;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let msg = match worker.join() {
                    Err(p) => p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "non-string panic".to_owned()),
                    Ok(()) => "worker ended without a result".to_owned(),
                };
                panic!("{what}: panicked: {msg}");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let grown = rss_bytes().saturating_sub(base);
                if grown > MEMORY_LIMIT_BYTES {
                    eprintln!(
                        "{what}: resident memory grew by {} MiB (limit {} MiB): unbounded memory",
                        grown >> 20,
                        MEMORY_LIMIT_BYTES >> 20
                    );
                    std::process::exit(102);
                }
                assert!(
                    start.elapsed() < TIME_LIMIT,
                    "{what}: still running after {TIME_LIMIT:?}: a hang"
                );
            }
        }
    }
}

/// A short, printable excerpt of an input for failure messages.
pub(crate) fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if s.chars().nth(200).is_some() {
        let _ = write!(out, "… ({} chars)", s.chars().count());
    }
    format!("{out:?}")
}
