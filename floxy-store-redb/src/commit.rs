//! The committing thread (`floxy-redb-commit`): applies each prepared batch in one write
//! transaction, commits it, publishes the state that batch leads to and hands its replies
//! to the notifier.
//!
//! It is the second stage of the writer's pipeline: while it applies and commits a batch, the
//! preparing thread ([`crate::writer`]) already runs the transition functions and checks of
//! the next batch. With [`Durability::Immediate`] it also appends the batch to the write-ahead
//! log ([`crate::wal`]): the log thread (`floxy-redb-log`, started with this one) encodes,
//! checksums, writes and syncs the record while this thread applies the batch. It is the only
//! code that opens write transactions on the file.

use crate::Durability;
use crate::layout::{META_WAL_LSN, redb_err};
use crate::ops::Ops;
use crate::wal::{Appender, Record, Wal};
use crate::writer::{Delivery, Published, Request};
use floxy_core::store::StoreError;
use parking_lot::Mutex;
use redb::Database;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
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

/// A message to the committing thread.
pub(crate) enum ToCommit {
    /// Commit this batch, then report its outcome.
    Batch(Box<Prepared>),
    /// Make relaxed commits durable and stop (the thread then drops its database handle).
    Close,
}

/// The committing thread's state.
pub(crate) struct Committer {
    pub(crate) db: Arc<Database>,
    /// The write-ahead log ([`Durability::Immediate`]); taken out while a batch is written.
    pub(crate) wal: Option<Wal>,
    /// The log thread, once [`Committer::run`] started it (`None`: records are written on this
    /// thread, after the batch was applied).
    pub(crate) log: Option<LogThread>,
    /// The buffer log records are encoded in when this thread writes them (kept to reuse its
    /// allocation).
    pub(crate) log_buf: Vec<u8>,
    /// Set when the log record of a failed batch could not be discarded: the record could be
    /// replayed after a crash, so every later batch fails until the store is reopened (a clean
    /// close checkpoints and empties the log, which settles it).
    pub(crate) broken: Option<StoreError>,
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
    /// Checkpoints made, and the time their commits took.
    pub(crate) checkpoints: u64,
    pub(crate) checkpointing: Duration,
    /// The last log record applied when an idle checkpoint failed: no idle checkpoint is
    /// tried again before a later batch commits (an idle store would otherwise retry, and
    /// log the failure, after every idle spell).
    pub(crate) idle_checkpoint_failed_at: Option<u64>,
    /// [`crate::RedbOptions::idle_checkpoint_ms`] (`None`: 0, no idle checkpoints). A
    /// checkpoint stalls every commit behind it (about 80 ms per 16 MiB of log here); taken
    /// in a lull of a bursty load, the checkpoint a busy spell would otherwise reach is
    /// smaller or never due. Under a steady load the committing thread is never idle this
    /// long, and checkpoints come at `checkpoint_bytes` as before.
    pub(crate) idle_checkpoint_after: Option<Duration>,
}

impl Committer {
    /// The thread's loop: one write transaction per batch, its outcome (the commit error, if
    /// any) sent back on `outcomes` after the replies were handed to the notifier, and the
    /// preparing thread woken through its request channel (`wake` does not keep that
    /// channel open).
    pub(crate) fn run(
        mut self,
        rx: Receiver<ToCommit>,
        outcomes: Sender<Option<StoreError>>,
        wake: tokio::sync::mpsc::WeakSender<Request>,
    ) {
        if self.durability == Durability::Immediate {
            self.log = self.wal.as_ref().and_then(|wal| {
                wal.appender()
                    .and_then(LogThread::start)
                    .map_err(|e| {
                        tracing::warn!(error = %e, "floxy-store-redb: no log thread; log records are written by the committing thread");
                    })
                    .ok()
            });
        }
        loop {
            // In relaxed mode, commits left unsynced are synced after their interval even
            // when no further request comes.
            let msg = match self.flush_wait() {
                None if let Some(after) = self.idle_checkpoint_due() => {
                    match rx.recv_timeout(after) {
                        Ok(m) => m,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            self.checkpoint_idle();
                            continue;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(m) => m,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = self.flush() {
                            tracing::error!(error = %e, "floxy-store-redb: relaxed flush failed");
                            // Try again after another interval.
                            self.last_flush = Instant::now();
                        }
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            match msg {
                ToCommit::Batch(batch) => {
                    let (deliveries, err) = self.commit(*batch);
                    // The preparing thread learns the outcome before any caller does: a
                    // request sent after its caller saw this batch fail is then never
                    // prepared on top of it (see `Writer::run`).
                    let gone = outcomes.send(err.clone()).is_err();
                    self.answer(deliveries, err);
                    if gone {
                        break;
                    }
                    // A full channel needs no wake-up: the writer polls the outcome after
                    // every request it takes.
                    if let Some(tx) = wake.upgrade() {
                        let _ = tx.try_send(Request::Wake);
                    }
                }
                ToCommit::Close => break,
            }
        }
        if self.unflushed
            && let Err(e) = self.flush()
        {
            tracing::error!(error = %e, "floxy-store-redb: final flush failed");
        }
        if let Some(log) = self.log.take() {
            log.stop();
        }
        if let Err(e) = self.close_log() {
            tracing::error!(error = %e, "floxy-store-redb: final checkpoint failed; the log is replayed at the next open");
        }
    }

    /// Applies and commits one batch; returns its replies and its commit error.
    fn commit(&mut self, batch: Prepared) -> (Vec<Delivery>, Option<StoreError>) {
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
        } else if let Some(e) = &self.broken {
            Some(e.clone())
        } else if self.durability == Durability::Immediate {
            self.write_logged(&mut ops).err()
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
            published.stats.checkpoints = self.checkpoints;
            published.stats.checkpointing = self.checkpointing;
            *self.published.lock() = published;
        }
        (deliveries, err)
    }

    /// Hands a batch's replies to the notifier thread.
    fn answer(&self, deliveries: Vec<Delivery>, err: Option<StoreError>) {
        if let Err(std::sync::mpsc::SendError((deliveries, err))) =
            self.notifier.send((deliveries, err))
        {
            // The notifier thread is gone (it never exits first); answer here.
            for d in deliveries {
                d.send(err.as_ref());
            }
        }
    }

    /// [`Durability::Immediate`]: the batch goes through the write-ahead log.
    fn write_logged(&mut self, ops: &mut Ops) -> Result<(), StoreError> {
        let Some(mut wal) = self.wal.take() else {
            return Err(StoreError::Backend(
                "floxy-store-redb: the write-ahead log is gone".to_owned(),
            ));
        };
        let r = self.write_through(&mut wal, ops);
        self.wal = Some(wal);
        r
    }

    /// Appends the batch to the log and syncs the log on the log thread while the batch is
    /// applied in a write transaction; commits that transaction once the record is durable —
    /// without `fsync` (redb keeps the pages in memory, readers see them), or durably when a
    /// checkpoint is due. A failed batch's record is discarded, so it is never replayed.
    fn write_through(&mut self, wal: &mut Wal, ops: &mut Ops) -> Result<(), StoreError> {
        let mut rec = wal.next_record();
        let checkpoint = wal.checkpoint_due();
        if checkpoint {
            ops.meta(META_WAL_LSN, &rec.lsn.to_be_bytes());
        }
        let durability = if checkpoint {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        // A record left half-written by a failed write is overwritten by the next batch's,
        // which takes the same place and number; a torn record never reads as one.
        // Both threads read the batch at the same time; the log thread lets go of it before it
        // reports, so it comes back here whole.
        let batch = Arc::new(std::mem::take(ops));
        let sent = self.log.as_ref().is_some_and(|log| log.send(rec, &batch));
        let staged = stage(&self.db, &batch, durability);
        let synced = if sent {
            match self.log.as_ref().map(LogThread::outcome) {
                Some(Ok((written, r))) => {
                    rec = written;
                    r
                }
                _ => {
                    // Gone mid-record (it panicked): this batch fails, later ones are logged
                    // here.
                    self.log = None;
                    Err(std::io::Error::other("the log thread stopped"))
                }
            }
        } else {
            // No log thread: the record is written here, after the batch was applied.
            wal.append(&mut rec, &batch, &mut self.log_buf)
        };
        *ops = Arc::try_unwrap(batch).unwrap_or_default();
        let outcome = match (staged, synced) {
            (Ok(txn), Ok(())) => {
                let before = self.committing;
                let r = self.finish(txn);
                if checkpoint && r.is_ok() {
                    self.checkpoints += 1;
                    self.checkpointing += self.committing.saturating_sub(before);
                }
                r
            }
            (Ok(txn), Err(e)) => {
                drop(txn.abort());
                Err(log_error("cannot write it", &e))
            }
            (Err(e), _) => Err(e),
        };
        match outcome {
            Ok(()) => {
                wal.applied(&rec, checkpoint);
                Ok(())
            }
            Err(e) => {
                if let Err(d) = wal.discard(&rec) {
                    let broken = log_error(
                        "cannot discard the record of a failed batch, so writes are refused until the store is reopened",
                        &d,
                    );
                    tracing::error!(error = %broken, "floxy-store-redb: write-ahead log");
                    self.broken = Some(broken);
                }
                Err(e)
            }
        }
    }

    /// A clean stop: checkpoints what only the log holds, then empties the log, so the next
    /// open replays nothing.
    fn close_log(&mut self) -> Result<(), StoreError> {
        let Some(wal) = self.wal.as_mut() else {
            return Ok(());
        };
        if wal.behind() {
            crate::wal::checkpoint(&self.db, wal.last_lsn())?;
        }
        wal.clear().map_err(|e| log_error("cannot empty it", &e))
    }

    /// One write transaction holding `ops`.
    fn write(&mut self, ops: &Ops, durability: redb::Durability) -> Result<(), StoreError> {
        let txn = stage(&self.db, ops, durability)?;
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
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| StoreError::Backend(format!("redb: {e}")))?;
        txn.commit().map_err(redb_err)?;
        self.last_flush = Instant::now();
        self.unflushed = false;
        Ok(())
    }

    /// After how long without a batch the store should checkpoint, if it should (see
    /// [`Committer::idle_checkpoint_after`]).
    fn idle_checkpoint_due(&self) -> Option<Duration> {
        let due = self.broken.is_none()
            && self.wal.as_ref().is_some_and(|wal| {
                wal.idle_checkpoint_due() && self.idle_checkpoint_failed_at != Some(wal.last_lsn())
            });
        self.idle_checkpoint_after.filter(|_| due)
    }

    /// A checkpoint while no batch waits: one durable redb commit that records the last log
    /// record applied, then the log starts over. A failure is logged and changes nothing (the
    /// log still holds every record; the next checkpoint covers them).
    fn checkpoint_idle(&mut self) {
        let Some(wal) = self.wal.as_mut() else {
            return;
        };
        let started = Instant::now();
        let r = idle_checkpoint_failpoint()
            .and_then(|()| crate::wal::checkpoint(&self.db, wal.last_lsn()));
        match r {
            Ok(()) => {
                wal.checkpointed();
                let took = started.elapsed();
                self.checkpoints += 1;
                self.checkpointing += took;
                self.committing += took;
                let mut published = self.published.lock();
                published.stats.checkpoints = self.checkpoints;
                published.stats.checkpointing = self.checkpointing;
                published.stats.committing = self.committing;
            }
            Err(e) => {
                self.idle_checkpoint_failed_at = Some(wal.last_lsn());
                tracing::warn!(error = %e, "floxy-store-redb: idle checkpoint failed; the next one covers its records");
            }
        }
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

    /// The durability of the next commit: relaxed mode syncs once per interval. What the
    /// commit then leaves unsynced is recorded only once it succeeded.
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

/// A write-ahead log failure: the batch is not committed ([`StoreError::Unavailable`]).
fn log_error(what: &str, e: &std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("floxy-store-redb: write-ahead log: {what}: {e}"))
}

/// Failpoint `floxy-redb::idle-checkpoint` (feature `failpoints`): `return` fails an idle
/// checkpoint before it writes anything.
fn idle_checkpoint_failpoint() -> Result<(), StoreError> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("floxy-redb::idle-checkpoint", |_| Err(
        StoreError::Unavailable("injected by failpoint floxy-redb::idle-checkpoint".to_owned())
    ));
    Ok(())
}

/// The log thread (`floxy-redb-log`): appends the record of each batch it is sent
/// ([`Appender::append`]) and reports it, while the committing thread applies the batch.
///
/// It lives as long as the committing thread. A thread spawned per batch took about 55 µs
/// (median; 160 µs at the 90th percentile) to start on the 2-core benchmark machine, on the
/// path of every commit, plus the creation and teardown of its stack.
pub(crate) struct LogThread {
    jobs: Sender<(Record, Arc<Ops>)>,
    outcomes: Receiver<(Record, std::io::Result<()>)>,
    handle: std::thread::JoinHandle<()>,
}

impl LogThread {
    /// Starts the thread with the log's `appender`.
    fn start(mut appender: Appender) -> std::io::Result<Self> {
        let (jobs, rx) = channel::<(Record, Arc<Ops>)>();
        let (tx, outcomes) = channel();
        let handle = std::thread::Builder::new()
            .name("floxy-redb-log".to_owned())
            .spawn(move || {
                while let Ok((mut rec, batch)) = rx.recv() {
                    let r = appender.append(&mut rec, &batch);
                    drop(batch);
                    if tx.send((rec, r)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            jobs,
            outcomes,
            handle,
        })
    }

    /// Sends it record `rec` of `batch`; `false` if it is gone.
    fn send(&self, rec: Record, batch: &Arc<Ops>) -> bool {
        self.jobs.send((rec, batch.clone())).is_ok()
    }

    /// Waits for the outcome of the record sent last: the record as written (its length now
    /// known) and the result of its write and sync.
    fn outcome(&self) -> Result<(Record, std::io::Result<()>), std::sync::mpsc::RecvError> {
        self.outcomes.recv()
    }

    /// Stops the thread and waits for it.
    fn stop(self) {
        drop(self.jobs);
        if self.handle.join().is_err() {
            tracing::error!("floxy-store-redb: the log thread panicked");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::layout::LIVE;
    use redb::{ReadableDatabase, ReadableTable};

    #[test]
    fn the_log_thread_writes_each_record_in_turn_and_lets_go_of_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let db = crate::open::open_database(&path, 1 << 20).unwrap();
        let (mut wal, _) = crate::wal::recover(&db, &path, 1 << 20).unwrap();
        let log = LogThread::start(wal.appender().unwrap()).unwrap();
        for keys in [&[1_u128, 2][..], &[3]] {
            let mut ops = Ops::default();
            for k in keys {
                ops.live(*k, true);
            }
            let batch = Arc::new(ops);
            let rec = wal.next_record();
            assert!(log.send(rec, &batch));
            let (written, r) = log.outcome().unwrap();
            r.unwrap();
            assert_eq!(written.lsn, rec.lsn);
            assert!(
                Arc::try_unwrap(batch).is_ok(),
                "the log thread let go of the batch before it reported"
            );
            wal.applied(&written, false);
        }
        log.stop();
        drop((wal, db));
        // Both records are on the file, one after the other: the next open replays them.
        let db = crate::open::open_database(&path, 1 << 20).unwrap();
        let (_, r) = crate::wal::recover(&db, &path, 1 << 20).unwrap();
        assert_eq!(r.replayed, 2);
        let rtx = db.begin_read().unwrap();
        let live: Vec<u128> = rtx
            .open_table(LIVE)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value())
            .collect();
        assert_eq!(live, vec![1, 2, 3]);
    }
}
