//! LISTEN/NOTIFY wakeups for idle workers.
//!
//! Every group-commit transaction that queues work runs `pg_notify(<channel>, '')` (delivered
//! at commit). One listener task per store (started by the first
//! [`PostgresStore::wait_for_work`](crate::PostgresStore::wait_for_work)) listens on the
//! channel and bumps a counter that waiters watch. Notifications are a **hint**: they can be
//! lost across reconnects, and the waiter may subscribe just after one; workers must keep a
//! slow poll ([`floxy_core::store::Store::next_due`]) as well.

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Pause before the listener reconnects after an error.
pub const LISTEN_RECONNECT_MS: u64 = 1_000;

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
