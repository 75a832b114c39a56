//! Loom models of the runtime's lease table (`floxy::loom_model::LeaseTable`: the leases the
//! workers register and drop, the commit path cancels and the heartbeat loop schedules,
//! extends and loses). Loom runs every interleaving of the threads' lock acquisitions over
//! the table's real code (its locks come from the crate's `sync` shim, loom's under
//! `--cfg floxy_loom`); only the loop's wake-up and the handlers' tokens are stand-ins
//! visible to loom: a kept permit (as tokio's `Notify::notify_one` keeps one) and a shared
//! flag (as a `CancellationToken`). Time is explicit: each operation passes its own `now`.
//!
//! ```text
//! RUSTFLAGS="--cfg floxy_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p floxy --test loom_leases --release
//! ```
#![cfg(floxy_loom)]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use floxy::loom_model::{LeaseGuard, LeaseTable, Token, Wake};
use floxy_core::model::{FencingToken, InstanceId, QueueKey, Timestamp, WorkKind};
use floxy_core::store::{LeaseRef, LeaseState};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use std::sync::Arc;

/// The heartbeat loop's wake-up: a permit kept until the loop takes it.
struct Permit(AtomicBool);

impl Default for Permit {
    fn default() -> Self {
        Self(AtomicBool::new(false))
    }
}

impl Wake for Permit {
    fn wake(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Permit {
    /// Whether a wake-up was given since the last call (takes it).
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// A handler's token: clones share one flag.
#[derive(Clone)]
struct Flag(loom::sync::Arc<AtomicBool>);

impl Default for Flag {
    fn default() -> Self {
        Self(loom::sync::Arc::new(AtomicBool::new(false)))
    }
}

impl Token for Flag {
    fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

type Table = LeaseTable<Permit, Flag>;
type Guard = LeaseGuard<Permit, Flag>;

/// The time the models start at.
const T0: Timestamp = Timestamp(1_000_000);

fn key(n: u128) -> QueueKey {
    QueueKey {
        instance_id: InstanceId(uuid::Uuid::from_u128(n)),
        step: "s".into(),
        kind: WorkKind::Execute,
    }
}

/// Registers a lease on `key(n)` with `token`, claimed at `now` (due a third of `ttl_ms` later).
fn register(table: &Arc<Table>, n: u128, token: u64, ttl_ms: u64, now: Timestamp) -> Guard {
    table.register(key(n), FencingToken(token), ttl_ms, now, Flag::default())
}

/// Runs `f` over every interleaving, without a preemption bound: each model takes a few
/// lock acquisitions per thread, so the exhaustive run takes milliseconds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    loom::model(f);
}

/// A cancel requested (a local commit asked the holder to stop) while the worker that
/// claimed the item registers its lease reaches that lease, whichever goes first: the
/// request either finds the lease or is remembered and honoured by the registration.
#[test]
fn a_cancel_requested_while_the_lease_registers_is_never_lost() {
    model(|| {
        let table = Arc::new(Table::default());
        let t = Arc::clone(&table);
        let committer = thread::spawn(move || t.request_cancel(&key(1), T0));
        let guard = register(&table, 1, 1, 30_000, T0.add_ms(1));
        committer.join().unwrap();
        assert!(
            guard.cancel.is_cancelled(),
            "the cancel request was lost: the lease's token never fired"
        );
        assert!(!guard.lost.is_cancelled(), "a cancel is not a loss");
        assert_eq!(
            table.pending_cancels(),
            0,
            "the request was honoured, so nothing is left remembered"
        );
    });
}

/// A lease registered due before the beat the heartbeat loop waits for always wakes the
/// loop: its scan either sees the lease or a wake-up is pending once the scan is done, with
/// the lease it waited for going away at the same time.
#[test]
fn a_lease_due_sooner_than_the_scheduled_beat_always_wakes_the_loop() {
    model(|| {
        let table = Arc::new(Table::default());
        // The loop's previous scan: it waits for `long` (due at T0 + 10 s).
        let long = register(&table, 1, 1, 30_000, T0);
        assert_eq!(table.schedule_earliest_beat(), Some(T0.add_ms(10_000)));
        assert!(table.changed.take(), "the first lease woke the idle loop");
        let t = Arc::clone(&table);
        // A handler with a short TTL: due at T0 + 105 ms.
        let registrar = thread::spawn(move || register(&t, 2, 2, 300, T0.add_ms(5)));
        let finisher = thread::spawn(move || drop(long));
        // The loop's next scan.
        let scheduled = table.schedule_earliest_beat();
        let short = registrar.join().unwrap();
        finisher.join().unwrap();
        let due = T0.add_ms(105);
        if scheduled.is_none_or(|w| due < w) {
            assert!(
                table.changed.take(),
                "lost wake-up: the loop waits for {scheduled:?}, a lease is due at {due:?}"
            );
        }
        drop(short);
    });
}

/// A heartbeat answer applied while a worker drops its lease and claims the item again
/// (a new lease on the same key) only touches leases still registered under the ids it
/// asked for: the `Lost` answer fires both tokens of the lease that stayed, never the new
/// lease's, and the dropped lease's tokens fire together or not at all.
#[test]
fn a_heartbeat_answer_applied_during_a_drop_touches_only_registered_leases() {
    model(|| {
        let table = Arc::new(Table::default());
        let gone = register(&table, 1, 1, 30_000, T0);
        let kept = register(&table, 2, 1, 30_000, T0);
        // The heartbeat the loop sent: both leases.
        let batch = table.snapshot();
        let mut keys: Vec<QueueKey> = batch.iter().map(|(_, r)| r.key.clone()).collect();
        keys.sort_by_key(|k| k.instance_id);
        assert_eq!(keys, vec![key(1), key(2)]);
        let (gone_cancel, gone_lost) = (gone.cancel.clone(), gone.lost.clone());
        let t = Arc::clone(&table);
        let worker = thread::spawn(move || {
            drop(gone);
            register(&t, 1, 2, 30_000, T0.add_ms(1))
        });
        // The store's answer: both lost.
        let answers = batch.iter().map(|_| LeaseState::Lost).collect();
        table.apply_heartbeat(&batch, Ok(answers), T0.add_ms(2));
        let again = worker.join().unwrap();
        assert!(
            kept.lost.is_cancelled() && kept.cancel.is_cancelled(),
            "a Lost answer fires both tokens of a registered lease"
        );
        assert!(
            !again.lost.is_cancelled() && !again.cancel.is_cancelled(),
            "the answer for a dropped lease reached the new lease on its key"
        );
        assert_eq!(
            gone_cancel.is_cancelled(),
            gone_lost.is_cancelled(),
            "a lost lease's tokens fire together"
        );
        let mut held: Vec<LeaseRef> = table.snapshot().into_iter().map(|(_, r)| r).collect();
        held.sort_by_key(|r| r.key.instance_id);
        assert_eq!(
            held,
            vec![
                LeaseRef {
                    key: key(1),
                    token: FencingToken(2)
                },
                LeaseRef {
                    key: key(2),
                    token: FencingToken(1)
                },
            ]
        );
        // The lost lease is never beaten again; the new one is due a period after its claim.
        assert_eq!(table.schedule_earliest_beat(), Some(T0.add_ms(10_001)));
    });
}
