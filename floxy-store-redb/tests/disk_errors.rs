//! A full disk and I/O errors, through redb's storage-backend hook: the store runs on a real
//! file (redb's `FileBackend`) wrapped in a backend whose writes and length changes fail with
//! `ENOSPC`, or whose syncs fail with `EIO`, while a switch says so.
//!
//! What redb does: the first failed `write`, `set_len` or `sync_data` of a commit fails that
//! commit with the I/O error and *poisons* the database handle: every later operation on it
//! fails with `PreviousIo` ("close and re-open the database"), even once the disk is fine
//! again. The store answers the callers of the failed commit (and of the batch prepared on
//! top of it) with the retryable `StoreError::Unavailable`, then reopens its database on the
//! same file (redb repairs it: the file was not closed cleanly) and carries on; while the
//! fault lasts the reopen fails, requests get `Unavailable`, and the store tries again.
//!
//! Checked: every error is retryable; after the fault clears the workload finishes without
//! a reopen by the caller; after a close and a reopen by path every acknowledged write is
//! there, and every instance is whole and consistent (its step run, queue item and events
//! agree). With `ENOSPC` a failed create is never visible; with `EIO` on `fsync` the failed
//! commit's pages did reach the file, so (as after a crash during a commit) its outcome is
//! unknown: it may be there after the reopen, but only whole.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use floxy_core::conformance::fixtures::{iid, next, request, start, stored_step, write};
use floxy_core::model::{
    EventKind, FencingToken, InstanceId, InstanceStatus, LeaseCheck, NewEvent, QueueOp, StepStatus,
    Timestamp,
};
use floxy_core::store::{InstanceQuery, Store, StoreError};
use floxy_store_redb::{RedbOptions, RedbStore};
use redb::StorageBackend;
use redb::backends::FileBackend;
use std::collections::BTreeSet;
use std::io::Error;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T0: Timestamp = Timestamp(1_700_000_000_000);

/// Linux `errno` values.
const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// The backend's switch.
const HEALTHY: u8 = 0;
/// `write` and `set_len` fail with `ENOSPC`.
const DISK_FULL: u8 = 1;
/// `sync_data` fails with `EIO`.
const SYNC_FAILS: u8 = 2;

/// redb's file backend, with writes, length changes and syncs that fail while `mode` says so.
#[derive(Debug)]
struct FaultyBackend {
    file: FileBackend,
    mode: Arc<AtomicU8>,
    /// Operations failed so far.
    failed: Arc<AtomicU64>,
}

impl FaultyBackend {
    fn fail(&self, errno: i32) -> Error {
        self.failed.fetch_add(1, Ordering::SeqCst);
        Error::from_raw_os_error(errno)
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), Error> {
        if self.mode.load(Ordering::SeqCst) == DISK_FULL {
            return Err(self.fail(ENOSPC));
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), Error> {
        if self.mode.load(Ordering::SeqCst) == SYNC_FAILS {
            return Err(self.fail(EIO));
        }
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        if self.mode.load(Ordering::SeqCst) == DISK_FULL {
            return Err(self.fail(ENOSPC));
        }
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), Error> {
        self.file.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// A store on a fresh file at `path` over a [`FaultyBackend`], and its switch and counter.
fn open_faulty(path: &Path) -> (RedbStore, Arc<AtomicU8>, Arc<AtomicU64>) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open the file");
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let failed = Arc::new(AtomicU64::new(0));
    let backend = FaultyBackend {
        file: FileBackend::new(file).expect("file backend"),
        mode: mode.clone(),
        failed: failed.clone(),
    };
    let store = RedbStore::open_with_backend(backend, RedbOptions::default()).expect("open");
    (store, mode, failed)
}

/// What the store acknowledged, and what the workers saw.
#[derive(Debug, Default)]
struct Acks {
    created: BTreeSet<InstanceId>,
    /// Instances whose step `s1` completion was acknowledged.
    completed: BTreeSet<InstanceId>,
    /// The retryable errors the workers got.
    errors: u64,
    /// Instances whose failed create (or completion) turned out to have been committed.
    ambiguous: u64,
}

/// A retryable error: recorded, then a short pause. Anything else fails the test.
async fn retryable(acks: &Mutex<Acks>, e: &StoreError, what: &str) {
    assert!(e.is_retryable(), "{what}: a non-retryable error {e:?}");
    acks.lock().unwrap().errors += 1;
    tokio::time::sleep(Duration::from_millis(2)).await;
}

/// One worker: creates `count` instances with a step `s1` for handler `h{k}`, claims and
/// completes each, retrying every retryable error. `strict`: a failed commit is never
/// visible (with `EIO` on sync it may be, as the comments below say).
async fn work(store: RedbStore, k: u64, count: u64, strict: bool, acks: Arc<Mutex<Acks>>) {
    let handler = format!("h{k}");
    let owner = format!("w{k}");
    // Claims move the clock on after a failure, so a lease a failed-but-committed claim took
    // has expired by the next one.
    let mut clock = T0;
    for n in 0..count {
        let id = iid(u128::from(k * 10_000 + n + 1));
        let mut tried = false;
        loop {
            match store
                .create_instance(start(id, T0, &[("s1", &handler)]))
                .await
            {
                Ok(_) => {
                    acks.lock().unwrap().created.insert(id);
                    break;
                }
                Err(StoreError::Conflict(m)) if tried && !strict => {
                    // The failed attempt's commit reached the file after all (EIO on sync).
                    assert!(m.contains("already exists"), "{m}");
                    acks.lock().unwrap().ambiguous += 1;
                    break;
                }
                Err(e) => {
                    retryable(&acks, &e, "create").await;
                    tried = true;
                    if strict {
                        match store.get_instance(id).await {
                            Ok(None) => {}
                            Ok(Some(r)) => panic!("a failed create is visible: {r:?}"),
                            Err(e) => assert!(e.is_retryable(), "a read: {e:?}"),
                        }
                    }
                }
            }
        }
        'complete: loop {
            let claimed = loop {
                match store.claim(&request(&owner, &[&handler], 1, clock)).await {
                    Ok(c) if !c.is_empty() => break c,
                    Ok(_) => {
                        // Nothing to claim: the step was completed by a commit reported
                        // failed (EIO on sync), or a failed claim's lease has not expired.
                        let done = match store.load_instance(id).await {
                            Ok(Some(s)) => stored_step(&s, "s1").status == StepStatus::Completed,
                            Ok(None) => panic!("{id} vanished"),
                            Err(e) => {
                                retryable(&acks, &e, "load").await;
                                false
                            }
                        };
                        if done {
                            assert!(!strict, "{id}: completed without an acknowledgement");
                            acks.lock().unwrap().ambiguous += 1;
                            break 'complete;
                        }
                        assert!(!strict, "{id}: its item is not claimable");
                        clock = clock.add_ms(3_600_000);
                    }
                    Err(e) => {
                        retryable(&acks, &e, "claim").await;
                        clock = clock.add_ms(3_600_000);
                    }
                }
            };
            let key = claimed[0].item.key.clone();
            let token = claimed[0].item.lease.as_ref().expect("leased").token;
            let at = clock;
            let r = store
                .update_instance(
                    id,
                    Box::new(move |s| {
                        let mut t = next(s, at);
                        t.lease_check = Some(LeaseCheck {
                            key: key.clone(),
                            token,
                        });
                        let mut run = stored_step(s, "s1");
                        run.status = StepStatus::Completed;
                        t.steps.push(write(run, Some(StepStatus::Running)));
                        t.queue.push(QueueOp::Delete(key));
                        t.events.push(NewEvent {
                            kind: EventKind::StepCompleted,
                            step: Some("s1".into()),
                            attempt: None,
                            detail: None,
                        });
                        Ok(t)
                    }),
                )
                .await;
            match r {
                Ok(_) => {
                    acks.lock().unwrap().completed.insert(id);
                    break;
                }
                Err(e) => {
                    // Claim again (the lease may be gone with the failed commit).
                    retryable(&acks, &e, "complete").await;
                    clock = clock.add_ms(3_600_000);
                }
            }
        }
    }
}

/// After the reopen: every acknowledged write is there, every instance whole and consistent.
/// Returns the number of instances and of completed steps.
async fn check(store: &RedbStore, acks: &Acks) -> (u64, u64) {
    for id in &acks.created {
        assert!(
            store.get_instance(*id).await.unwrap().is_some(),
            "acknowledged create {id} lost"
        );
    }
    let mut q = InstanceQuery::default();
    let (mut n, mut completed) = (0, 0);
    loop {
        let page = store.list_instances(&q).await.unwrap();
        for rec in &page.items {
            n += 1;
            let id = rec.id;
            assert_eq!(rec.status, InstanceStatus::Running);
            let steps = store.list_steps(id).await.unwrap();
            let queue = store.list_queue(id).await.unwrap();
            let events = store.list_events(id, None, 0).await.unwrap();
            assert_eq!(steps.len(), 1, "{id}: the instance and its step together");
            let s1 = &steps[0];
            let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
            match s1.status {
                StepStatus::Completed => {
                    completed += 1;
                    assert!(queue.is_empty(), "{id}: done but queued: {queue:?}");
                    assert_eq!(rec.version, 2, "{id}: created, completed");
                    assert_eq!(kinds.first(), Some(&EventKind::WorkflowStarted));
                    assert_eq!(kinds.last(), Some(&EventKind::StepCompleted));
                }
                StepStatus::Pending | StepStatus::Running => {
                    assert!(
                        !acks.completed.contains(&id),
                        "acknowledged completion of {id} lost"
                    );
                    assert_eq!(queue.len(), 1, "{id}: its step is queued");
                    assert_eq!(
                        queue[0].lease.is_some(),
                        s1.status == StepStatus::Running,
                        "{id}: a leased item and a running step go together"
                    );
                    assert_eq!(rec.version, 1, "{id}: created only");
                }
                other => panic!("{id}'s step is {other}"),
            }
        }
        match page.next {
            Some(next) => q.after = Some(next),
            None => break,
        }
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats.instances_by_status,
        vec![("running".to_owned(), n)],
        "the published counts agree with the file"
    );
    (n, completed)
}

/// Concurrent workers, two fault windows of `mode`, then the checks.
fn run(mode_on: u8, strict: bool) {
    const WORKERS: u64 = 6;
    const PER_WORKER: u64 = 40;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floxy.redb");
    let (store, mode, failed) = open_faulty(&path);
    let acks = Arc::new(Mutex::new(Acks::default()));
    rt.block_on(async {
        let workers: Vec<_> = (0..WORKERS)
            .map(|k| tokio::spawn(work(store.clone(), k, PER_WORKER, strict, acks.clone())))
            .collect();
        for window in 0..2_u64 {
            // Some work goes through, then the fault lasts until commits have failed on it
            // (and the store's reopens too) for a while.
            let target = (window + 1) * WORKERS * PER_WORKER / 4;
            let deadline = Instant::now() + Duration::from_mins(1);
            while (acks.lock().unwrap().created.len() as u64) < target {
                assert!(Instant::now() < deadline, "no progress before the fault");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let before = failed.load(Ordering::SeqCst);
            mode.store(mode_on, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(30);
            while failed.load(Ordering::SeqCst) < before + 3 {
                assert!(Instant::now() < deadline, "no write failed on the fault");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            mode.store(HEALTHY, Ordering::SeqCst);
        }
        // The store carries on by itself: every worker finishes.
        for w in workers {
            tokio::time::timeout(Duration::from_mins(1), w)
                .await
                .expect("the workers finish once the disk is fine")
                .unwrap();
        }
        {
            let a = acks.lock().unwrap();
            assert!(a.errors > 0, "the workers saw the faults");
            println!(
                "{} backend operations failed; {} retryable errors, {} ambiguous outcomes",
                failed.load(Ordering::SeqCst),
                a.errors,
                a.ambiguous
            );
        }
        store.close().await.expect("close after the faults");
    });
    // Reopened by path, without the faulty backend: everything acknowledged is there.
    let store = RedbStore::open(&path, RedbOptions::default()).expect("reopen by path");
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    rt.block_on(async {
        let (n, completed) = check(&store, &acks).await;
        assert_eq!(n, WORKERS * PER_WORKER, "every instance was created, once");
        assert_eq!(n, completed, "every step was completed");
        // And it goes on.
        let id = iid(999_999);
        store
            .create_instance(start(id, T0, &[("s1", "h")]))
            .await
            .expect("a create after the reopen");
        let claimed = store.claim(&request("w", &["h"], 1, T0)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(claimed[0].item.lease.as_ref().unwrap().token > FencingToken(0));
        store.close().await.unwrap();
    });
}

#[test]
fn a_full_disk_fails_commits_retryably_and_the_store_recovers() {
    run(DISK_FULL, true);
}

#[test]
fn a_failed_fsync_fails_commits_retryably_and_the_store_recovers() {
    run(SYNC_FAILS, false);
}

#[test]
fn a_store_down_on_a_full_disk_closes_and_reopens() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floxy.redb");
    let (store, mode, _) = open_faulty(&path);
    let (a, b) = (iid(1), iid(2));
    rt.block_on(async {
        store
            .create_instance(start(a, T0, &[("s1", "h")]))
            .await
            .unwrap();
        mode.store(DISK_FULL, Ordering::SeqCst);
        let r = store.create_instance(start(b, T0, &[("s1", "h")])).await;
        assert!(
            matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("No space left")),
            "the failed commit's error names the cause: {r:?}"
        );
        // The disk stays full: the store stays down (reopening needs writes), retryably,
        // for writes and reads.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = store.create_instance(start(b, T0, &[("s1", "h")])).await;
        assert!(
            matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("reopen")),
            "down while the disk is full: {r:?}"
        );
        match store.get_instance(a).await {
            Err(StoreError::Unavailable(_)) | Ok(Some(_)) => {}
            other => panic!("a read while down: {other:?}"),
        }
        store.close().await.expect("a close with nothing to flush");
        assert!(matches!(
            store.get_instance(a).await,
            Err(StoreError::Closed)
        ));
    });
    let store = RedbStore::open(&path, RedbOptions::default()).expect("reopen by path");
    rt.block_on(async {
        assert!(store.get_instance(a).await.unwrap().is_some(), "a is there");
        assert!(
            store.get_instance(b).await.unwrap().is_none(),
            "b never was"
        );
        store
            .create_instance(start(b, T0, &[("s1", "h")]))
            .await
            .unwrap();
        store.close().await.unwrap();
    });
}
