//! Working in the store's time: measuring and correcting the offset between this process's
//! clock and the store's.
//!
//! Lease expiry is a comparison of times written by different processes: a worker writes
//! `expires_at = now + ttl` with its `now`, another compares it with its own `now` to decide
//! whether to reclaim the item. If their clocks disagree by more than the TTL, a process whose
//! clock runs ahead reclaims live leases, and one whose clock runs behind leaves dead ones
//! alone for too long. So when the store has a clock of its own that every process reads
//! ([`Store::clock`]: PostgreSQL's `clock_timestamp()`), the engine measures how far its clock
//! source is from it and uses `source + offset` as its clock: every `now` handed to the
//! store (claims, heartbeats, transitions, instance ids) is then in the store's time, and
//! every process on one database agrees on it whatever its own clock says.
//!
//! * **A sample** reads the clock source before and after one [`Store::clock`] call and
//!   takes `store - midpoint` as the offset: assuming the reading happened halfway through
//!   the round trip, its error is at most half the round trip.
//! * **A measurement** takes [`CLOCK_SAMPLES`] samples and keeps the one with the shortest
//!   round trip. One whose best round trip exceeds [`MAX_CLOCK_SAMPLE_RTT_MS`] is ignored
//!   (retried after [`CLOCK_SYNC_RETRY_MS`]), except while nothing better is known: the
//!   first measurement is used however slow (its error is still bounded by half its round
//!   trip) and replaced by the next good one.
//! * **When**: before the engine's first claim, start or operator command, then every
//!   [`crate::EngineBuilder::clock_sync_interval_ms`] (default
//!   [`DEFAULT_CLOCK_SYNC_INTERVAL_MS`]) for as long as the engine lives; or on demand with
//!   [`crate::Engine::sync_clock`]. When the offset changes, the heartbeats already
//!   scheduled are moved by the change, so they still happen at the same instant.
//! * **Stores without a clock** (the memory and redb stores: one process, one clock)
//!   answer `None` once and are never asked again; the clock source is then used as is, so
//!   a [`crate::TokioClock`] on a paused runtime stays exactly deterministic. With interval
//!   0 nothing is measured unless asked for (e.g. a virtual clock over a store that has a
//!   clock, which the correction would pull back to real time).
//!
//! The offset is exported as the gauge [`crate::metrics::STORE_CLOCK_OFFSET`]
//! (`floxy_store_clock_offset_seconds`) and logged as a warning when it exceeds
//! [`CLOCK_OFFSET_WARN_MS`]: the engine copes, but the host's time service is broken.

use crate::clock::Clock;
use crate::heartbeat::LeaseTable;
use floxy_core::model::Timestamp;
use floxy_core::store::{Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Default period of the store clock measurement
/// ([`crate::EngineBuilder::clock_sync_interval_ms`]).
pub const DEFAULT_CLOCK_SYNC_INTERVAL_MS: u64 = 10_000;
/// Longest round trip of a clock sample that replaces a known offset (its reading is off by
/// at most half of it).
pub const MAX_CLOCK_SAMPLE_RTT_MS: u64 = 500;
/// Samples per measurement (the one with the shortest round trip is kept).
pub const CLOCK_SAMPLES: usize = 3;
/// Offsets larger than this (either way) are logged as a warning.
pub const CLOCK_OFFSET_WARN_MS: i64 = 1_000;
/// Delay before measuring again after a measurement that failed or was too slow (at most
/// the configured interval).
pub const CLOCK_SYNC_RETRY_MS: u64 = 1_000;

const UNMEASURED: u8 = 0;
const MEASURED: u8 = 1;
const NO_STORE_CLOCK: u8 = 2;

/// The engine's clock: the configured source plus the measured offset to the store's clock.
#[derive(Debug)]
pub(crate) struct SyncedClock {
    source: Arc<dyn Clock>,
    offset_ms: AtomicI64,
    state: AtomicU8,
    /// The last measured offset exceeded [`CLOCK_OFFSET_WARN_MS`] (warn once per excursion).
    warned: AtomicBool,
    /// The first measurement (and the start of the periodic one) has been done.
    pub(crate) first: tokio::sync::OnceCell<()>,
}

impl Clock for SyncedClock {
    fn now(&self) -> Timestamp {
        let t = self.source.now();
        match self.offset_ms.load(Ordering::Relaxed) {
            0 => t,
            off => Timestamp(t.as_millis().saturating_add(off)),
        }
    }
}

/// What a measurement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measured {
    /// The store has no clock: nothing to correct, ever.
    NoStoreClock,
    /// The offset was measured and is now in use.
    Offset {
        /// Store minus source, ms.
        offset_ms: i64,
        /// Round trip of the sample used, ms.
        rtt_ms: u64,
    },
    /// Every sample took longer than [`MAX_CLOCK_SAMPLE_RTT_MS`]; the offset is unchanged.
    TooSlow {
        /// Shortest round trip seen, ms.
        rtt_ms: u64,
    },
}

impl SyncedClock {
    pub(crate) fn new(source: Arc<dyn Clock>) -> Self {
        Self {
            source,
            offset_ms: AtomicI64::new(0),
            state: AtomicU8::new(UNMEASURED),
            warned: AtomicBool::new(false),
            first: tokio::sync::OnceCell::new(),
        }
    }

    /// The offset in use (`None`: never measured, or the store has no clock).
    pub(crate) fn offset_ms(&self) -> Option<i64> {
        (self.state.load(Ordering::Acquire) == MEASURED)
            .then(|| self.offset_ms.load(Ordering::Relaxed))
    }

    /// The store answered that it has no clock.
    pub(crate) fn store_has_no_clock(&self) -> bool {
        self.state.load(Ordering::Acquire) == NO_STORE_CLOCK
    }

    /// One sample: `(offset, round trip)`, or `None` if the store has no clock.
    async fn sample(&self, store: &dyn Store) -> Result<Option<(i64, u64)>, StoreError> {
        let before = self.source.now().as_millis();
        let started = tokio::time::Instant::now();
        let Some(remote) = store.clock().await? else {
            return Ok(None);
        };
        let rtt = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let after = self.source.now().as_millis();
        let midpoint = before.saturating_add(after.saturating_sub(before) / 2);
        Ok(Some((remote.as_millis().saturating_sub(midpoint), rtt)))
    }

    /// Measures the offset ([`CLOCK_SAMPLES`] samples) and puts it in use (see the module
    /// docs for when a slow measurement is ignored). Moves the scheduled heartbeats of
    /// `leases` by the change.
    pub(crate) async fn measure(
        &self,
        store: &dyn Store,
        leases: &LeaseTable,
    ) -> Result<Measured, StoreError> {
        if self.store_has_no_clock() {
            return Ok(Measured::NoStoreClock);
        }
        let mut best: Option<(i64, u64)> = None;
        for _ in 0..CLOCK_SAMPLES {
            let Some(s) = self.sample(store).await? else {
                self.state.store(NO_STORE_CLOCK, Ordering::Release);
                return Ok(Measured::NoStoreClock);
            };
            if best.is_none_or(|b| s.1 < b.1) {
                best = Some(s);
            }
        }
        let Some((offset_ms, rtt_ms)) = best else {
            return Ok(Measured::NoStoreClock);
        };
        if rtt_ms > MAX_CLOCK_SAMPLE_RTT_MS && self.offset_ms().is_some() {
            return Ok(Measured::TooSlow { rtt_ms });
        }
        self.apply(offset_ms, rtt_ms, leases);
        Ok(Measured::Offset { offset_ms, rtt_ms })
    }

    fn apply(&self, offset_ms: i64, rtt_ms: u64, leases: &LeaseTable) {
        let previous = self.offset_ms.swap(offset_ms, Ordering::Relaxed);
        self.state.store(MEASURED, Ordering::Release);
        leases.shift_beats(offset_ms.saturating_sub(previous));
        crate::metrics::store_clock_offset(offset_ms);
        if offset_ms.unsigned_abs() > CLOCK_OFFSET_WARN_MS.unsigned_abs() {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    offset_ms,
                    rtt_ms,
                    "this process's clock differs from the store's by more than {CLOCK_OFFSET_WARN_MS} ms; \
                     the engine works in the store's time (check the host's time service)"
                );
            }
        } else if self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!(
                offset_ms,
                rtt_ms,
                "clock offset from the store back within bounds"
            );
        }
        tracing::debug!(
            offset_ms,
            previous_ms = previous,
            rtt_ms,
            "measured the store clock offset"
        );
    }
}

/// [`SyncedClock::measure`], logging what did not work; `None` after a store error.
pub(crate) async fn measure_logged(
    clock: &SyncedClock,
    store: &dyn Store,
    leases: &LeaseTable,
) -> Option<Measured> {
    match clock.measure(store, leases).await {
        Ok(m) => {
            if let Measured::TooSlow { rtt_ms } = m {
                tracing::debug!(
                    rtt_ms,
                    "store clock samples too slow to use; keeping the current offset"
                );
            }
            Some(m)
        }
        Err(e) => {
            tracing::warn!(error = %e, "measuring the store clock failed; retrying soon");
            None
        }
    }
}

/// The periodic measurement: every `interval_ms` (sooner after a failed or slow one) until
/// `stop` fires.
pub(crate) async fn run(
    clock: Arc<SyncedClock>,
    store: Arc<dyn Store>,
    leases: Arc<LeaseTable>,
    interval_ms: u64,
    stop: CancellationToken,
) {
    let interval = Duration::from_millis(interval_ms);
    let retry = Duration::from_millis(CLOCK_SYNC_RETRY_MS.min(interval_ms));
    let mut wait = if clock.offset_ms().is_some() {
        interval
    } else {
        retry
    };
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = match measure_logged(&clock, store.as_ref(), &leases).await {
            Some(Measured::NoStoreClock) => return,
            Some(Measured::Offset { rtt_ms, .. }) if rtt_ms <= MAX_CLOCK_SAMPLE_RTT_MS => interval,
            _ => retry,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn offset_is_added_to_the_source() {
        let source = Arc::new(ManualClock::new(Timestamp(10_000)));
        let c = SyncedClock::new(source.clone());
        assert_eq!(c.now(), Timestamp(10_000));
        assert_eq!(c.offset_ms(), None);
        c.apply(-4_000, 1, &LeaseTable::default());
        assert_eq!(c.offset_ms(), Some(-4_000));
        assert_eq!(c.now(), Timestamp(6_000));
        source.advance(Duration::from_millis(5));
        assert_eq!(c.now(), Timestamp(6_005));
    }
}
