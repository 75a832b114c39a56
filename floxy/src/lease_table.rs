//! The lease table: the leases this engine holds, shared by the workers (which register a
//! lease per claimed item and drop it when done), the commit path (which asks a holder to
//! stop) and the heartbeat loop ([`crate::heartbeat`], which extends them and applies the
//! store's answers).
//!
//! This is the synchronised state of the heartbeats and nothing else: the loop's wake-up
//! signal and the handlers' tokens are behind the tiny traits [`Wake`] and [`Token`]
//! (tokio's `Notify` and `CancellationToken` in the runtime), and the locks come from
//! [`crate::sync`], so the loom model (`tests/loom_leases.rs`, `--cfg floxy_loom`) runs
//! exactly this code over every interleaving of its threads. Its items are `pub` for that
//! model only: the module is public (hidden) under `--cfg floxy_loom`, crate-private
//! otherwise.

use crate::heartbeat::MIN_HEARTBEAT_PERIOD_MS;
use crate::sync::{AtomicU64, Mutex};
use floxy_core::model::{FencingToken, QueueKey, Timestamp};
use floxy_core::store::{LeaseRef, LeaseState, StoreError};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a cancel request for an item no local lease holds yet is remembered: a claim
/// of it may be in flight (the store leased it, the worker has not registered the lease),
/// and that lease must not wait for a heartbeat (a third of the TTL) to learn of it.
pub const PENDING_CANCEL_MS: u64 = 5_000;
/// Most such requests remembered (the oldest are forgotten first).
pub const MAX_PENDING_CANCELS: usize = 1_024;

/// The heartbeat loop's wake-up: given when a lease is registered due before the beat the
/// loop waits for. A wake-up given while the loop is not waiting is kept for its next wait
/// (as [`Notify::notify_one`] keeps a permit).
pub trait Wake: Default {
    /// Wakes the loop, now or at its next wait.
    fn wake(&self);
}

impl Wake for Notify {
    fn wake(&self) {
        self.notify_one();
    }
}

/// A cancellation token as the table uses it (a [`CancellationToken`] in the runtime).
/// Clones share their state: firing one fires all.
pub trait Token: Clone + Default {
    /// Fires the token (firing it again does nothing).
    fn cancel(&self);
    /// Whether the token was fired.
    fn is_cancelled(&self) -> bool;
}

impl Token for CancellationToken {
    fn cancel(&self) {
        CancellationToken::cancel(self);
    }

    fn is_cancelled(&self) -> bool {
        CancellationToken::is_cancelled(self)
    }
}

/// A held lease in the table, under the id of its [`LeaseGuard`].
struct Entry<T> {
    lease: LeaseRef,
    period_ms: u64,
    next_beat: Timestamp,
    cancel: T,
    lost: T,
}

/// The held leases, when the heartbeat loop means to wake up next, and the cancel requests
/// that wait for a lease: all under one lock, so that a request and a registration on the
/// same key never miss each other (a request that finds no lease is remembered before the
/// registration looks, or the registration's lease is in the map before the request looks).
struct Leases<T> {
    map: HashMap<u64, Entry<T>>,
    /// The earliest beat the heartbeat loop waits for (`i64::MAX`: none). A lease registered
    /// due before it wakes the loop; any other waits for that wake-up. Finding the earliest
    /// beat scans every lease, so it is done when the loop wakes, not at every registration
    /// (a scan per registration is quadratic in the handlers running at once).
    wake_at: Timestamp,
    /// Cancel requests that found no local lease, with their time (see
    /// [`PENDING_CANCEL_MS`]).
    pending_cancels: VecDeque<(QueueKey, Timestamp)>,
}

impl<T> Default for Leases<T> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            wake_at: Timestamp(i64::MAX),
            pending_cancels: VecDeque::new(),
        }
    }
}

/// The leases this engine currently holds (`W`: the heartbeat loop's wake-up, `T`: the
/// handlers' tokens).
pub struct LeaseTable<W = Notify, T = CancellationToken> {
    entries: Mutex<Leases<T>>,
    next_id: AtomicU64,
    /// Woken by a lease due before the loop's scheduled beat (see [`Leases::wake_at`]).
    pub changed: W,
}

impl<W: Default, T> Default for LeaseTable<W, T> {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            next_id: AtomicU64::new(0),
            changed: W::default(),
        }
    }
}

/// A registered lease; unregisters itself when dropped.
pub struct LeaseGuard<W = Notify, T = CancellationToken> {
    table: Arc<LeaseTable<W, T>>,
    id: u64,
    /// Fired on cancel request, loss, timeout or hard shutdown (handed to the handler).
    pub cancel: T,
    /// Fired when the store reports the lease lost.
    pub lost: T,
}

impl<W, T> Drop for LeaseGuard<W, T> {
    fn drop(&mut self) {
        self.table.entries.lock().map.remove(&self.id);
    }
}

impl<W: Wake, T: Token> LeaseTable<W, T> {
    /// Registers a lease claimed at `now` with `ttl_ms`. `cancel` is the token handed to the
    /// handler (a child of the engine's hard-stop token).
    pub fn register(
        self: &Arc<Self>,
        key: QueueKey,
        token: FencingToken,
        ttl_ms: u64,
        now: Timestamp,
        cancel: T,
    ) -> LeaseGuard<W, T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let period_ms = (ttl_ms / 3).max(MIN_HEARTBEAT_PERIOD_MS);
        let lost = T::default();
        let due_sooner = {
            let mut leases = self.entries.lock();
            // A cancel requested while this claim was in flight: honour it now (under the
            // lock that inserts the lease, see `Leases`).
            let mut honoured = false;
            // Consumes the requests for `key` and forgets every expired one.
            leases.pending_cancels.retain(|(k, at)| {
                let fresh = now.since(*at) <= PENDING_CANCEL_MS;
                if *k == key {
                    honoured |= fresh;
                    return false;
                }
                fresh
            });
            if honoured {
                cancel.cancel();
            }
            let entry = Entry {
                lease: LeaseRef { key, token },
                period_ms,
                next_beat: now.add_ms(period_ms),
                cancel: cancel.clone(),
                lost: lost.clone(),
            };
            let next_beat = entry.next_beat;
            leases.map.insert(id, entry);
            let sooner = next_beat < leases.wake_at;
            if sooner {
                leases.wake_at = next_beat;
            }
            sooner
        };
        if due_sooner {
            self.changed.wake();
        }
        LeaseGuard {
            table: Arc::clone(self),
            id,
            cancel,
            lost,
        }
    }

    /// Fires the cancellation token of every held lease on `key` (a local commit at `now`
    /// asked its holder to stop; saves waiting for the next heartbeat). With no local lease
    /// on `key`, remembers the request for a lease registered within [`PENDING_CANCEL_MS`]
    /// (a claim of it may be in flight).
    pub fn request_cancel(&self, key: &QueueKey, now: Timestamp) {
        // One lock for the scan and the remembering (see `Leases`).
        let mut leases = self.entries.lock();
        let mut found = false;
        for e in leases.map.values() {
            if &e.lease.key == key {
                e.cancel.cancel();
                found = true;
            }
        }
        if !found {
            let pending = &mut leases.pending_cancels;
            while pending.len() >= MAX_PENDING_CANCELS {
                pending.pop_front();
            }
            pending.push_back((key.clone(), now));
        }
    }

    /// How many cancel requests wait for a lease (see [`PENDING_CANCEL_MS`]); for the tests.
    #[cfg(any(test, floxy_loom))]
    pub fn pending_cancels(&self) -> usize {
        self.entries.lock().pending_cancels.len()
    }

    /// Moves every scheduled beat by `delta_ms`: the engine's clock just moved by that much
    /// (a new store clock offset), and the beats must stay at the same instants.
    pub fn shift_beats(&self, delta_ms: i64) {
        if delta_ms == 0 {
            return;
        }
        let shift = |t: Timestamp| Timestamp(t.as_millis().saturating_add(delta_ms));
        let mut leases = self.entries.lock();
        for e in leases.map.values_mut() {
            e.next_beat = shift(e.next_beat);
        }
        if leases.wake_at != Timestamp(i64::MAX) {
            leases.wake_at = shift(leases.wake_at);
        }
    }

    /// The earliest beat of the held leases, which the heartbeat loop now waits for (see
    /// [`Leases::wake_at`]).
    pub fn schedule_earliest_beat(&self) -> Option<Timestamp> {
        let mut leases = self.entries.lock();
        let earliest = leases.map.values().map(|e| e.next_beat).min();
        leases.wake_at = earliest.unwrap_or(Timestamp(i64::MAX));
        earliest
    }

    /// The held leases, each with the id its answer is applied to (see
    /// [`LeaseTable::apply_heartbeat`]).
    pub fn snapshot(&self) -> Vec<(u64, LeaseRef)> {
        self.entries
            .lock()
            .map
            .iter()
            .map(|(id, e)| (*id, e.lease.clone()))
            .collect()
    }

    /// Applies the store's answer to a heartbeat of `batch` (a [`LeaseTable::snapshot`])
    /// sent at `now`: extended leases are due again a period after `now`, a requested
    /// cancel fires the lease's `cancel` token, a lost lease fires both tokens and is never
    /// beaten again; after a failed heartbeat every lease is retried after half a period.
    /// Leases dropped since the snapshot are skipped.
    pub fn apply_heartbeat(
        &self,
        batch: &[(u64, LeaseRef)],
        result: Result<Vec<LeaseState>, StoreError>,
        now: Timestamp,
    ) {
        let mut leases = self.entries.lock();
        let entries = &mut leases.map;
        match result {
            Ok(states) => {
                if states.len() != batch.len() {
                    tracing::warn!(
                        asked = batch.len(),
                        answered = states.len(),
                        "store answered a heartbeat with the wrong number of lease states"
                    );
                }
                for ((id, _), state) in batch.iter().zip(states) {
                    let Some(e) = entries.get_mut(id) else {
                        continue;
                    };
                    if let LeaseState::Held {
                        cancel_requested, ..
                    } = state
                    {
                        e.next_beat = now.add_ms(e.period_ms);
                        if cancel_requested && !e.cancel.is_cancelled() {
                            tracing::debug!(
                                step = %e.lease.key.step,
                                kind = e.lease.key.kind.as_str(),
                                "cancel requested for a running handler"
                            );
                            e.cancel.cancel();
                        }
                    } else {
                        // `LeaseState` is non-exhaustive: anything but `Held` means we cannot
                        // count on the lease any more.
                        tracing::debug!(
                            step = %e.lease.key.step,
                            kind = e.lease.key.kind.as_str(),
                            token = e.lease.token.0,
                            "lease lost; the handler's result will be dropped"
                        );
                        e.lost.cancel();
                        e.cancel.cancel();
                        e.next_beat = Timestamp(i64::MAX);
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, leases = batch.len(), "heartbeat failed; retrying");
                crate::metrics::heartbeat_failed();
                for (id, _) in batch {
                    if let Some(e) = entries.get_mut(id) {
                        e.next_beat = now.add_ms((e.period_ms / 2).max(MIN_HEARTBEAT_PERIOD_MS));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floxy_core::model::{InstanceId, WorkKind};

    fn key(n: u128) -> QueueKey {
        QueueKey {
            instance_id: InstanceId(uuid::Uuid::from_u128(n)),
            step: "s".into(),
            kind: WorkKind::Execute,
        }
    }

    #[test]
    fn a_cancel_requested_while_the_claim_was_in_flight_reaches_the_lease() {
        let table: Arc<LeaseTable> = Arc::new(LeaseTable::default());
        let t0 = Timestamp(1_000_000);
        // Requested before the worker registered its lease on key 1 (and on key 2, whose
        // lease is registered too late to be the claim that was in flight).
        table.request_cancel(&key(1), t0);
        table.request_cancel(&key(2), t0);
        let g1 = table.register(
            key(1),
            FencingToken(1),
            60_000,
            t0.add_ms(3),
            CancellationToken::new(),
        );
        assert!(
            g1.cancel.is_cancelled(),
            "remembered request honoured at registration"
        );
        let late = t0.add_ms(PENDING_CANCEL_MS + 1);
        let g2 = table.register(
            key(2),
            FencingToken(2),
            60_000,
            late,
            CancellationToken::new(),
        );
        assert!(!g2.cancel.is_cancelled(), "too old to concern this lease");
        // Consumed: a second lease on key 1 is not cancelled by the same request.
        let g3 = table.register(
            key(1),
            FencingToken(3),
            60_000,
            t0.add_ms(4),
            CancellationToken::new(),
        );
        assert!(!g3.cancel.is_cancelled());
        // A request for a held lease fires it and is not remembered.
        table.request_cancel(&key(1), t0.add_ms(5));
        assert!(g3.cancel.is_cancelled());
        assert_eq!(table.pending_cancels(), 0);
    }

    /// Whether the heartbeat loop was woken since the last call (consumes the wake-up).
    fn woken(table: &LeaseTable) -> bool {
        use futures::FutureExt;
        table.changed.notified().now_or_never().is_some()
    }

    #[test]
    fn only_a_lease_due_before_the_scheduled_beat_wakes_the_heartbeat_loop() {
        let table: Arc<LeaseTable> = Arc::new(LeaseTable::default());
        let t0 = Timestamp(1_000_000);
        let register = |n: u128, ttl_ms: u64, at: Timestamp| {
            table.register(
                key(n),
                FencingToken(1),
                ttl_ms,
                at,
                CancellationToken::new(),
            )
        };
        // The first lease of an idle table wakes the loop; the loop then waits for its beat.
        let a = register(1, 30_000, t0);
        assert!(woken(&table), "first lease");
        assert_eq!(table.schedule_earliest_beat(), Some(t0.add_ms(10_000)));
        // Same TTL, registered later: due after the scheduled beat, no wake-up.
        let b = register(2, 30_000, t0.add_ms(5));
        assert!(!woken(&table), "a lease due after the scheduled beat");
        // A shorter TTL: due before it, wakes the loop, which finds it on its next scan.
        let c = register(3, 300, t0.add_ms(5));
        assert!(woken(&table), "a lease due before the scheduled beat");
        assert_eq!(table.schedule_earliest_beat(), Some(t0.add_ms(105)));
        // A lease going away does not wake the loop; the next scan skips it.
        drop(c);
        assert!(!woken(&table));
        assert_eq!(table.schedule_earliest_beat(), Some(t0.add_ms(10_000)));
        drop((a, b));
        assert_eq!(table.schedule_earliest_beat(), None);
        // Empty again: the next lease wakes the loop.
        let _d = register(4, 30_000, t0.add_ms(20_000));
        assert!(woken(&table), "first lease of an empty table");
    }

    #[test]
    fn pending_cancels_are_bounded() {
        let table: LeaseTable = LeaseTable::default();
        for n in 0..(MAX_PENDING_CANCELS as u128 + 10) {
            table.request_cancel(&key(n), Timestamp(0));
        }
        assert_eq!(table.pending_cancels(), MAX_PENDING_CANCELS);
        let leases = table.entries.lock();
        assert_eq!(
            leases.pending_cancels.front().map(|(k, _)| k.clone()),
            Some(key(10)),
            "oldest forgotten"
        );
    }
}
