//! The worker pool: claiming, dispatching, idling, shutting down.
//!
//! One dispatcher task per engine claims work in batches of up to `batch_size`, never more
//! than it has free workers for (a semaphore of `workers` permits), and spawns one task per
//! claimed item. When a claim comes back empty it sleeps until the store's next due item,
//! at most `poll_interval_ms`, or until a local commit or the store's signal of work queued
//! by another process (PostgreSQL `NOTIFY`) wakes it: it never spins.

use crate::clock::until;
use crate::commit::with_store_retry;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::heartbeat;
use floxy_core::store::{ClaimRequest, ClaimedItem, StoreError, WorkWait};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shortest idle sleep of the dispatcher (guards against spinning when the store reports
/// due work that a claim cannot take yet).
pub const MIN_IDLE_SLEEP_MS: u64 = 5;
/// How long [`Engine::shutdown`] waits for abandoned handler tasks to unwind after it
/// cancelled them.
pub const ABANDON_GRACE_MS: u64 = 1_000;

/// Tasks and signals that control the engine's background work.
#[derive(Default)]
pub(crate) struct Lifecycle {
    /// Stop claiming.
    pub(crate) stopping: CancellationToken,
    /// Abandon in-flight handlers (shutdown timeout passed).
    pub(crate) hard_stop: CancellationToken,
    /// Stop the heartbeat task.
    heartbeat_stop: CancellationToken,
    /// Stop the periodic store clock measurement (only when the engine is dropped: starts
    /// and commands keep using the clock after a shutdown).
    pub(crate) clock_sync_stop: CancellationToken,
    /// In-flight item tasks (pool and `run_once`).
    pub(crate) tracker: TaskTracker,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
}

impl Lifecycle {
    /// Fires every stop signal (engine dropped).
    pub(crate) fn stop_all(&self) {
        self.stopping.cancel();
        self.hard_stop.cancel();
        self.heartbeat_stop.cancel();
        self.clock_sync_stop.cancel();
    }
}

/// What [`Engine::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Items being worked on when claiming stopped.
    pub in_flight: usize,
    /// Of those, items finished (committed or dropped) within the timeout.
    pub finished: usize,
    /// Of those, items abandoned at the timeout: their handlers were cancelled and dropped,
    /// nothing was committed, and their leases expire (the next claim counts the attempt
    /// as lost).
    pub abandoned: usize,
}

impl Engine {
    /// Spawns the worker pool on the current tokio runtime: up to `workers` concurrent
    /// handler executions, batch claims of up to `batch_size` items whose handler is
    /// registered here (plus timers), and one heartbeat task for all held leases. Runs until
    /// [`Engine::shutdown`].
    ///
    /// # Errors
    /// [`EngineError::WorkersAlreadyStarted`], [`EngineError::ShuttingDown`].
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn start_workers(&self) -> Result<(), EngineError> {
        let lc = &self.inner.lifecycle;
        if lc.stopping.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let mut dispatcher = lc.dispatcher.lock();
        if dispatcher.is_some() {
            return Err(EngineError::WorkersAlreadyStarted);
        }
        self.ensure_heartbeat();
        crate::metrics::spawn_sampler(self, self.inner.config.metrics_sample_interval_ms);
        let engine = self.clone();
        *dispatcher = Some(tokio::spawn(async move { engine.dispatch_loop().await }));
        Ok(())
    }

    /// Claims one batch (up to `batch_size` items) and works on all of it to completion,
    /// concurrently; returns the number of items claimed (0: nothing was due). Needs no
    /// worker pool: tests and embedders can drive the engine step by step with it.
    ///
    /// # Errors
    /// [`EngineError::ShuttingDown`], [`EngineError::Store`] (claim failed after retries).
    pub async fn run_once(&self) -> Result<usize, EngineError> {
        if self.inner.lifecycle.stopping.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        self.ensure_heartbeat();
        let claimed = self.claim(self.inner.config.batch_size).await?;
        let n = claimed.len();
        let tracker = &self.inner.lifecycle.tracker;
        futures::future::join_all(
            claimed
                .into_iter()
                .map(|c| tracker.track_future(self.process(c))),
        )
        .await;
        Ok(n)
    }

    /// Stops the engine's background work: no more claims; in-flight handlers get up to
    /// `timeout` (`None`: the configured `shutdown_timeout_ms`) to finish and commit; the
    /// rest are cancelled (token fired, future dropped) and their leases left to expire.
    /// Then the heartbeat task stops. Idempotent.
    ///
    /// Starting instances, operator commands and reads keep working after shutdown (they
    /// only need the store); [`Engine::run_once`] and [`Engine::start_workers`] return
    /// [`EngineError::ShuttingDown`].
    pub async fn shutdown(&self, timeout: impl Into<Option<Duration>>) -> ShutdownReport {
        let timeout = timeout
            .into()
            .unwrap_or(Duration::from_millis(self.inner.config.shutdown_timeout_ms));
        let lc = &self.inner.lifecycle;
        lc.stopping.cancel();
        let deadline = tokio::time::Instant::now() + timeout;
        let dispatcher = lc.dispatcher.lock().take();
        if let Some(mut handle) = dispatcher {
            // Bounded: a store call that never returns (a dead connection) must not hang
            // shutdown; the dispatcher is aborted at the deadline.
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Err(e)) => tracing::error!(error = %e, "worker dispatcher ended abnormally"),
                Ok(Ok(())) => {}
                Err(_) => {
                    tracing::warn!("worker dispatcher did not stop in time; aborting it");
                    handle.abort();
                }
            }
        }
        lc.tracker.close();
        let in_flight = lc.tracker.len();
        let drained = tokio::time::timeout_at(deadline, lc.tracker.wait())
            .await
            .is_ok();
        let abandoned = if drained { 0 } else { lc.tracker.len() };
        if !drained {
            tracing::warn!(abandoned, "shutdown timeout: abandoning in-flight handlers");
            lc.hard_stop.cancel();
            let grace = Duration::from_millis(ABANDON_GRACE_MS);
            if tokio::time::timeout(grace, lc.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!("some handler tasks did not unwind after cancellation");
            }
        }
        lc.heartbeat_stop.cancel();
        let hb = lc.heartbeat.lock().take();
        if let Some(mut handle) = hb {
            let grace = Duration::from_millis(ABANDON_GRACE_MS);
            if tokio::time::timeout(grace, &mut handle).await.is_err() {
                tracing::warn!("heartbeat task did not stop in time; aborting it");
                handle.abort();
            }
        }
        ShutdownReport {
            in_flight,
            finished: in_flight.saturating_sub(abandoned),
            abandoned,
        }
    }

    /// Starts the heartbeat task unless it runs.
    fn ensure_heartbeat(&self) {
        let lc = &self.inner.lifecycle;
        let mut hb = lc.heartbeat.lock();
        if hb.as_ref().is_some_and(|h| !h.is_finished()) || lc.heartbeat_stop.is_cancelled() {
            return;
        }
        let inner = &self.inner;
        *hb = Some(tokio::spawn(heartbeat::run(
            Arc::clone(&inner.leases),
            Arc::clone(&inner.store),
            Arc::clone(&inner.config.clock),
            Arc::clone(&inner.config.worker_id),
            lc.heartbeat_stop.clone(),
        )));
    }

    async fn claim(&self, limit: usize) -> Result<Vec<ClaimedItem>, StoreError> {
        let inner = &self.inner;
        inner.ensure_clock_synced().await;
        let req = ClaimRequest {
            owner: Arc::clone(&inner.config.worker_id),
            handlers: inner.handlers.claim_filter(),
            limit,
            now: inner.config.clock.now(),
        };
        let started = tokio::time::Instant::now();
        let claimed = with_store_retry("claim", || inner.store.claim(&req)).await;
        crate::metrics::claim(started, &claimed);
        let claimed = claimed?;
        inner.events.publish_claims(&claimed, req.now);
        Ok(claimed)
    }

    async fn dispatch_loop(self) {
        let lc = &self.inner.lifecycle;
        let config = &self.inner.config;
        let workers = Arc::new(Semaphore::new(config.workers));
        let mut commits = self.inner.commits.subscribe();
        loop {
            let first = tokio::select! {
                biased;
                () = lc.stopping.cancelled() => break,
                p = Arc::clone(&workers).acquire_owned() => p,
            };
            let Ok(first) = first else { break };
            let mut permits = vec![first];
            while permits.len() < config.batch_size {
                match Arc::clone(&workers).try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            commits.borrow_and_update();
            let claimed = match self.claim(permits.len()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; backing off");
                    drop(permits);
                    self.idle(&mut commits, false).await;
                    continue;
                }
            };
            if claimed.is_empty() {
                drop(permits);
                self.idle(&mut commits, true).await;
                continue;
            }
            tracing::trace!(claimed = claimed.len(), "claimed a batch");
            // Extra permits (a short batch) are released when the zip is dropped.
            for (item, permit) in claimed.into_iter().zip(permits) {
                let engine = self.clone();
                lc.tracker.spawn(async move {
                    engine.process_chain(item).await;
                    drop(permit);
                });
            }
        }
        tracing::debug!("worker dispatcher stopped");
    }

    /// Sleeps until the next due item (when `ask_store`), at most `poll_interval_ms`, or
    /// until a local commit, a store signal of work queued by another process
    /// ([`floxy_core::store::Store::wait_for_work`]) or shutdown.
    async fn idle(&self, commits: &mut watch::Receiver<u64>, ask_store: bool) {
        let inner = &self.inner;
        let poll = Duration::from_millis(inner.config.poll_interval_ms);
        let mut wait = poll;
        if ask_store {
            let handlers = inner.handlers.claim_filter();
            match inner.store.next_due(&handlers).await {
                Ok(Some(at)) => wait = until(inner.config.clock.now(), at).min(poll),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "next_due failed; polling"),
            }
        }
        let wait = wait.max(Duration::from_millis(MIN_IDLE_SLEEP_MS));
        let remote = async {
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            match inner.store.wait_for_work(ms).await {
                WorkWait::Notified => {}
                // No signal (or none in time): the sleep arm ends the wait.
                _ => std::future::pending::<()>().await,
            }
        };
        // `biased`: polled in order, so a run on a paused clock (the chaos simulation) replays
        // exactly; an unbiased `select!` polls its branches in a random order of its own.
        tokio::select! {
            biased;
            () = inner.lifecycle.stopping.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
            () = remote => tracing::trace!("woken by the store: work queued elsewhere"),
            changed = commits.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
