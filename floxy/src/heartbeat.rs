//! Lease heartbeats.
//!
//! Every claimed item this engine works on is registered in the [`LeaseTable`] for as long as
//! its worker holds it. One heartbeat task per engine extends all of them in a single
//! [`Store::heartbeat`] call whenever the earliest one is due (each lease is due a third of
//! its TTL after its claim or last extension), and acts on the answers:
//!
//! * `Held { cancel_requested: true }`: the instance is being cancelled, aborted or rolled
//!   back: the handler's cancellation token fires; its result is still reported.
//! * `Lost`: the lease was reclaimed or removed: the token fires and the result is dropped.

use crate::clock::{Clock, until};
use crate::failpoints::{self, Hit};
use floxy_core::store::{LeaseRef, Store, StoreError};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::lease_table::{LeaseGuard, LeaseTable};

/// Shortest heartbeat period, whatever the TTL.
pub const MIN_HEARTBEAT_PERIOD_MS: u64 = 10;

/// Runs the heartbeat loop until `stop` fires.
pub(crate) async fn run(
    table: Arc<LeaseTable>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    owner: Arc<str>,
    stop: CancellationToken,
) {
    loop {
        let changed = table.changed.notified();
        // Registered before the scan below: a lease registered after it, due sooner than
        // what the scan found, wakes this loop through `changed`.
        let wait = table
            .schedule_earliest_beat()
            .map(|t| until(clock.now(), t));
        // `biased`: polled in order, so a run on a paused clock (the chaos simulation) replays
        // exactly; an unbiased `select!` polls its branches in a random order of its own.
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = changed => continue,
            () = sleep_opt(wait) => {}
        }
        beat_once(&table, store.as_ref(), clock.as_ref(), &owner).await;
    }
}

async fn sleep_opt(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Extends every held lease in one store call and applies the answers.
pub(crate) async fn beat_once(
    table: &LeaseTable,
    store: &dyn Store,
    clock: &dyn Clock,
    owner: &str,
) {
    let batch = table.snapshot();
    if batch.is_empty() {
        return;
    }
    let refs: Vec<LeaseRef> = batch.iter().map(|(_, r)| r.clone()).collect();
    let now = clock.now();
    let result = match failpoints::hit(floxy_core::failpoints::HEARTBEAT).await {
        Hit::Continue => store.heartbeat(owner, &refs, now).await,
        Hit::Abandon => Err(StoreError::Unavailable(
            "heartbeat skipped by failpoint".to_owned(),
        )),
    };
    table.apply_heartbeat(&batch, result, now);
}
