//! The committing thread (`floxy-redb-commit`): applies each prepared batch in one write
//! transaction, commits it, publishes the state that batch leads to and hands its replies
//! to the notifier.
//!
//! It is the second stage of the writer's pipeline: while it applies and commits a batch, the
//! preparing thread ([`crate::writer`]) already runs the transition functions and checks of
//! the next batch. It is the only code that opens write transactions on the file.

use crate::Durability;
use crate::handover::{Commit, Committing};
use crate::layout::redb_err;
use crate::ops::Ops;
use crate::slot::DbSlot;
use crate::writer::{Delivery, Published, Request};
use floxy_core::store::StoreError;
use parking_lot::Mutex;
use redb::Database;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// A batch ready to commit.
pub(crate) struct Prepared {
    /// The batch's writes.
    pub(crate) ops: Ops,
    /// The replies, sent once the commit is durable (or failed).
    pub(crate) deliveries: Vec<Delivery>,
    /// What the store publishes once this batch is committed.
    pub(crate) published: Published,
}

/// The committing thread's state.
pub(crate) struct Committer {
    /// The database, taken for each transaction (it is replaced after an I/O error).
    pub(crate) slot: Arc<DbSlot>,
    pub(crate) durability: Durability,
    pub(crate) last_flush: Instant,
    /// Whether a commit since the last flush was not durable (relaxed mode).
    pub(crate) unflushed: bool,
    pub(crate) published: Arc<Mutex<Published>>,
    /// Replies of committed batches go there, so this thread starts the next commit at once.
    pub(crate) notifier: Sender<(Vec<Delivery>, Option<StoreError>)>,
    /// Applied batches' buffers go back to the preparing thread for its next batches.
    pub(crate) spare: Sender<Ops>,
    /// Time spent applying and committing, and of that, in redb's commit.
    pub(crate) busy: Duration,
    pub(crate) committing: Duration,
    /// Woken after each commit (through the preparing thread's request channel, which this
    /// does not keep open): the next batch may go.
    pub(crate) wake: tokio::sync::mpsc::WeakSender<Request>,
}

impl Committer {
    /// The thread's loop ([`Committing::run`]): one write transaction per batch, its
    /// outcome reported to the preparing thread before its replies go to the notifier, until
    /// the preparing thread closes the hand-over; then relaxed commits are made durable.
    /// Returns the error of that final flush, for [`crate::RedbStore::close`].
    pub(crate) fn run(mut self, pipe: &Committing<Box<Prepared>>) -> Result<(), StoreError> {
        pipe.run(&mut self);
        if self.unflushed {
            self.flush()?;
        }
        Ok(())
    }

    /// Applies and commits one batch; returns its replies and its commit error.
    fn commit_batch(&mut self, batch: Prepared) -> (Vec<Delivery>, Option<StoreError>) {
        let Prepared {
            mut ops,
            deliveries,
            mut published,
        } = batch;
        let started = Instant::now();
        // A batch that writes nothing (empty claims, refused requests) needs no transaction,
        // unless it is the one that makes earlier relaxed commits durable.
        let err = if ops.is_empty() && !self.flush_due() {
            None
        } else {
            let durability = self.txn_durability();
            let immediate = matches!(durability, redb::Durability::Immediate);
            let r = self.write(&ops, durability).err();
            if r.is_none() {
                if immediate {
                    self.last_flush = Instant::now();
                    self.unflushed = false;
                } else {
                    self.unflushed = true;
                }
            }
            r
        };
        ops.clear();
        // The preparing thread may be gone (closing); the buffer is then just dropped.
        let _ = self.spare.send(ops);
        self.busy += started.elapsed();
        if err.is_none() {
            published.stats.busy += self.busy;
            published.stats.committing = self.committing;
            *self.published.lock() = published;
        }
        (deliveries, err)
    }

    /// Hands a batch's replies to the notifier thread.
    fn send_replies(&self, deliveries: Vec<Delivery>, err: Option<StoreError>) {
        if let Err(std::sync::mpsc::SendError((deliveries, err))) =
            self.notifier.send((deliveries, err))
        {
            // The notifier thread is gone (it never exits first); answer here.
            for d in deliveries {
                d.send(err.as_ref());
            }
        }
    }

    /// One write transaction holding `ops`, committed with `durability`.
    fn write(&mut self, ops: &Ops, durability: redb::Durability) -> Result<(), StoreError> {
        let txn = stage(&*self.slot.get()?, ops, durability)?;
        self.finish(txn)
    }

    /// Commits a staged transaction.
    fn finish(&mut self, txn: redb::WriteTransaction) -> Result<(), StoreError> {
        // `floxy-redb::committing` tells a test (through `fail::cfg_callback`) that a batch
        // is committing, so the requests it sends next are prepared on top of that batch.
        // On `floxy-redb::commit`, `return` fails this commit; `return(MS)` fails it after MS
        // milliseconds, so a test can queue work behind a commit that is going to fail.
        #[cfg(feature = "failpoints")]
        {
            fail::fail_point!("floxy-redb::committing");
            let injected: Option<Option<String>> = (|| {
                fail::fail_point!("floxy-redb::commit", Some);
                None
            })();
            if let Some(arg) = injected {
                if let Some(ms) = arg.and_then(|a| a.parse::<u64>().ok()) {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                drop(txn.abort());
                return Err(StoreError::Unavailable(
                    "redb I/O error: injected by failpoint floxy-redb::commit".to_owned(),
                ));
            }
        }
        let tc = Instant::now();
        let r = txn.commit().map_err(redb_err);
        self.committing += tc.elapsed();
        r
    }

    /// A durable empty commit (makes earlier relaxed commits durable).
    fn flush(&mut self) -> Result<(), StoreError> {
        #[cfg(feature = "failpoints")]
        fail::fail_point!("floxy-redb::flush", |_| Err(StoreError::Unavailable(
            "redb I/O error: injected by failpoint floxy-redb::flush".to_owned()
        )));
        let mut txn = self.slot.get()?.begin_write().map_err(redb_err)?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| StoreError::Backend(format!("redb: {e}")))?;
        txn.commit().map_err(redb_err)?;
        self.last_flush = Instant::now();
        self.unflushed = false;
        Ok(())
    }

    /// In relaxed mode with unsynced commits, how long until they must be synced.
    fn flush_wait(&self) -> Option<Duration> {
        match self.durability {
            Durability::Relaxed { flush_interval_ms } if self.unflushed => Some(
                Duration::from_millis(flush_interval_ms).saturating_sub(self.last_flush.elapsed()),
            ),
            _ => None,
        }
    }

    /// Whether relaxed commits are waiting for a durable one and their interval is over.
    fn flush_due(&self) -> bool {
        match self.durability {
            Durability::Immediate => false,
            Durability::Relaxed { flush_interval_ms } => {
                self.unflushed
                    && self.last_flush.elapsed() >= Duration::from_millis(flush_interval_ms)
            }
        }
    }

    /// The durability of the next commit: every commit in immediate mode, one per interval
    /// in relaxed mode. What the commit then leaves unsynced is recorded only once it
    /// succeeded.
    fn txn_durability(&self) -> redb::Durability {
        match self.durability {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::Relaxed { flush_interval_ms } => {
                if self.last_flush.elapsed() >= Duration::from_millis(flush_interval_ms) {
                    redb::Durability::Immediate
                } else {
                    redb::Durability::None
                }
            }
        }
    }
}

/// The committing thread's side of the hand-over ([`crate::handover`]).
impl Commit for Committer {
    type Sealed = Box<Prepared>;
    type Replies = Vec<Delivery>;

    /// In relaxed mode, commits left unsynced are synced after their interval even when no
    /// further request comes.
    fn idle_wait(&self) -> Option<Duration> {
        self.flush_wait()
    }

    fn idle(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "floxy-store-redb: relaxed flush failed");
            // Try again after another interval.
            self.last_flush = Instant::now();
        }
    }

    fn commit(&mut self, batch: Box<Prepared>) -> (Vec<Delivery>, Option<StoreError>) {
        self.commit_batch(*batch)
    }

    fn answer(&mut self, replies: Vec<Delivery>, err: Option<StoreError>) {
        self.send_replies(replies, err);
    }

    fn committed(&mut self) {
        // A full channel needs no wake-up: the writer polls the outcome after every request
        // it takes.
        if let Some(tx) = self.wake.upgrade() {
            let _ = tx.try_send(Request::Wake);
        }
    }
}

/// A write transaction on `db` with `ops` applied, not committed.
fn stage(
    db: &Database,
    ops: &Ops,
    durability: redb::Durability,
) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(redb_err)?;
    txn.set_durability(durability)
        .map_err(|e| StoreError::Backend(format!("redb: {e}")))?;
    if let Err(e) = ops.apply(&txn) {
        drop(txn.abort());
        return Err(e);
    }
    Ok(txn)
}
