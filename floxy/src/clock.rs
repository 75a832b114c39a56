//! Time sources.
//!
//! The engine reads the time only through a [`Clock`]: every [`Timestamp`] it hands to the
//! core or the store (claims, heartbeats, transitions, instance ids) comes from it. Durations
//! it waits for (step timeouts, idle sleeps, heartbeat periods) run on tokio's timer, so with
//! [`TokioClock`] and a paused tokio runtime (`#[tokio::test(start_paused = true)]`) both move
//! together on virtual time.

use floxy_core::model::Timestamp;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The wall clock (`SystemTime`). The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(system_millis())
    }
}

fn system_millis() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        // A wall clock before 1970 is a misconfigured host; report the epoch.
        Err(_) => 0,
    }
}

/// A clock driven by tokio's timer: `epoch + (tokio::time::Instant::now() - start)`.
///
/// Under a paused tokio runtime (`tokio::time::pause`, `start_paused = true`), time only
/// moves when the runtime auto-advances to the next timer or a test calls
/// `tokio::time::advance`, so timeouts, retry delays and lease expiries happen instantly and
/// deterministically.
#[derive(Debug, Clone)]
pub struct TokioClock {
    epoch: Timestamp,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that starts at the current wall-clock time.
    #[must_use]
    pub fn new() -> Self {
        Self::with_epoch(Timestamp(system_millis()))
    }

    /// A clock that reads `epoch` now and advances with tokio's timer.
    #[must_use]
    pub fn with_epoch(epoch: Timestamp) -> Self {
        Self {
            epoch,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start);
        self.epoch
            .add_ms(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to. Useful with [`crate::Engine::run_once`] in tests
/// that step time by hand. (Idle workers still sleep on tokio's timer.)
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock reading `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        Self {
            now_ms: AtomicI64::new(start.as_millis()),
        }
    }

    /// Sets the time.
    pub fn set(&self, t: Timestamp) {
        self.now_ms.store(t.as_millis(), Ordering::SeqCst);
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_add(ms))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now_ms.load(Ordering::SeqCst))
    }
}

/// Milliseconds from `now` until `at` as a tokio-sleepable duration (zero if past).
pub(crate) fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::from_millis(at.since(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_virtual_time() {
        let c = TokioClock::with_epoch(Timestamp(1_000));
        assert_eq!(c.now(), Timestamp(1_000));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(c.now(), Timestamp(1_250));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(c.now(), Timestamp(11_250));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp(5));
        assert_eq!(c.now(), Timestamp(5));
        c.advance(Duration::from_millis(10));
        assert_eq!(c.now(), Timestamp(15));
        c.set(Timestamp(1));
        assert_eq!(c.now(), Timestamp(1));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now().as_millis() > 1_577_836_800_000);
    }
}
