//! LISTEN/NOTIFY wakeups for idle workers.
//!
//! A group-commit transaction that queues work pokes the [`Notifier`] **after** its commit;
//! the notifier sends `pg_notify(<channel>, '')` in a transaction of its own, at most once
//! per [`NOTIFY_COALESCE_MS`] however many commits poked it. Why not inside the commit
//! transaction: PostgreSQL serialises the commits of all transactions that issued `NOTIFY` on
//! one database-wide lock held through the WAL flush, which defeats group commit (committers
//! wait on `Lock/object` at `COMMIT`). Sending after the commit also means a woken worker
//! always finds the work committed. One listener task per store (started by the first
//! [`Store::wait_for_work`](floxy_core::store::Store::wait_for_work)) listens on the
//! channel and bumps a counter that waiters watch. Notifications are a **hint**: they can be
//! lost across reconnects, and the waiter may subscribe just after one; workers must keep a
//! slow poll ([`floxy_core::store::Store::next_due`]) as well.

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Pause before the listener reconnects after an error.
pub const LISTEN_RECONNECT_MS: u64 = 1_000;
/// Shortest interval between two `NOTIFY`s of one store: commits poking the notifier within
/// it share one notification.
pub const NOTIFY_COALESCE_MS: u64 = 5;

/// Sends the work notification after commits, coalesced (see the module docs).
pub(crate) struct Notifier {
    pool: PgPool,
    sql: String,
    channel: String,
    pending: AtomicBool,
    closed: AtomicBool,
    wake: Notify,
    started: std::sync::Once,
}

impl Notifier {
    pub(crate) fn new(pool: PgPool, sql: String, channel: String) -> Arc<Self> {
        Arc::new(Self {
            pool,
            sql,
            channel,
            pending: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            started: std::sync::Once::new(),
        })
    }

    /// Asks for a notification soon (called after a commit that queued work).
    pub(crate) fn poke(self: &Arc<Self>) {
        if self.closed.load(Ordering::Relaxed) || self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        // Outside a runtime nothing starts (and a later poke inside one still can).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.started.call_once(|| {
                // The task holds the notifier, not the store: closing the store stops it.
                handle.spawn(Arc::clone(self).run());
            });
        }
        self.wake.notify_one();
    }

    /// Stops the task.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            // Clear before sending: a commit after this point gets a notification of its own.
            if !self.pending.swap(false, Ordering::AcqRel) {
                continue;
            }
            if let Err(e) = sqlx::query(&self.sql)
                .bind(&self.channel)
                .execute(&self.pool)
                .await
            {
                // A hint only: idle workers also poll.
                tracing::debug!(error = %e, "NOTIFY failed");
            }
            tokio::time::sleep(Duration::from_millis(NOTIFY_COALESCE_MS)).await;
        }
    }
}

/// The listener task and its subscribers.
pub(crate) struct WorkSignal {
    tx: watch::Sender<u64>,
    started: std::sync::Once,
    stop: Arc<Notify>,
    channel: String,
}

impl WorkSignal {
    pub(crate) fn new(channel: String) -> Self {
        Self {
            tx: watch::channel(0).0,
            started: std::sync::Once::new(),
            stop: Arc::new(Notify::new()),
            channel,
        }
    }

    /// Stops the listener task.
    pub(crate) fn close(&self) {
        self.stop.notify_waiters();
        self.stop.notify_one();
    }

    /// Waits up to `timeout` for a notification; `true` if one arrived.
    pub(crate) async fn wait(&self, pool: &PgPool, timeout: Duration) -> bool {
        let mut rx = self.tx.subscribe();
        self.start(pool);
        matches!(
            tokio::time::timeout(timeout, rx.changed()).await,
            Ok(Ok(()))
        )
    }

    fn start(&self, pool: &PgPool) {
        self.started.call_once(|| {
            let pool = pool.clone();
            let tx = self.tx.clone();
            let stop = Arc::clone(&self.stop);
            let channel = self.channel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.notified() => {}
                    () = listen(pool, channel, tx) => {}
                }
            });
        });
    }
}

async fn listen(pool: PgPool, channel: String, tx: watch::Sender<u64>) {
    let mut reconnect = false;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(LISTEN_RECONNECT_MS)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::debug!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_millis(LISTEN_RECONNECT_MS)).await;
            continue;
        }
        if reconnect {
            // Notifications may have been missed while disconnected: wake everybody once.
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
        reconnect = true;
        loop {
            match listener.recv().await {
                Ok(_) => tx.send_modify(|n| *n = n.wrapping_add(1)),
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(LISTEN_RECONNECT_MS)).await;
    }
}
