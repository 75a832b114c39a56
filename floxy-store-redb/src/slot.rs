//! The store's redb database handle, shared by the readers, the preparing thread and the
//! committing thread, and replaced when an I/O error poisoned it.
//!
//! redb fails the commit whose `write`, `set_len` or `sync_data` fails, and from then on every
//! operation of that [`Database`] fails with `PreviousIo` ("close and re-open the database"),
//! however the disk fares. So after a failed commit the preparing thread checks the handle
//! and, if it is poisoned, drops it and opens the file again ([`Reopen`]): redb repairs a
//! file that was not closed cleanly and reopens it at its last durable commit. While the
//! database is down (the fault lasts, or a reopen is under way) [`DbSlot::get`] fails with
//! [`StoreError::Unavailable`], which callers retry.
//!
//! Nobody keeps the database beyond one operation (a read transaction outlives its
//! `Arc<Database>`, and its reads fail once the database is closed), so a reopen does not
//! wait for more than the operations under way.

use crate::open::{self, OpenError};
use floxy_core::store::StoreError;
use parking_lot::RwLock;
use redb::{BackendError, Database, StorageBackend};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a reopen (or a close) waits for the operations that still hold the old
/// database; past it the old database is released by the last of them.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// The database, or why there is none.
enum State {
    Open(Arc<Database>),
    /// Poisoned by an I/O error and not reopened yet: the reason, for the error.
    Down(String),
    Closed,
}

/// The shared handle (see the module docs).
pub(crate) struct DbSlot {
    state: RwLock<State>,
}

impl DbSlot {
    /// A slot holding `db`.
    pub(crate) fn new(db: Database) -> Self {
        Self {
            state: RwLock::new(State::Open(Arc::new(db))),
        }
    }

    /// The database for one operation: [`StoreError::Unavailable`] while it is down,
    /// [`StoreError::Closed`] once the store is closed.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        match &*self.state.read() {
            State::Open(db) => Ok(db.clone()),
            State::Down(why) => Err(StoreError::Unavailable(format!(
                "the redb database is being reopened after an I/O error ({why})"
            ))),
            State::Closed => Err(StoreError::Closed),
        }
    }

    /// Takes the database out (the slot is then down, for `why`) and releases it.
    pub(crate) fn take_down(&self, why: &str) {
        let old = {
            let mut state = self.state.write();
            match &*state {
                State::Open(_) => std::mem::replace(&mut *state, State::Down(why.to_owned())),
                State::Down(_) | State::Closed => return,
            }
        };
        if let State::Open(db) = old {
            release(db);
        }
    }

    /// Puts a reopened database in, unless the store was closed meanwhile.
    pub(crate) fn put(&self, db: Database) {
        let mut state = self.state.write();
        if !matches!(*state, State::Closed) {
            *state = State::Open(Arc::new(db));
        }
    }

    /// Closes the slot and releases the database.
    pub(crate) fn close(&self) {
        if let State::Open(db) = std::mem::replace(&mut *self.state.write(), State::Closed) {
            release(db);
        }
    }
}

/// Drops `db` once no operation holds it any more (or after [`RELEASE_WAIT`], leaving it to
/// the last holder), which closes it and releases its file lock.
fn release(mut db: Arc<Database>) {
    let until = Instant::now() + RELEASE_WAIT;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => {
                // A poisoned database fails to close cleanly; the reopen repairs the file.
                if let Err(e) = db.close() {
                    tracing::debug!(error = %e, "floxy-store-redb: closing the database");
                }
                return;
            }
            Err(shared) if Instant::now() < until => {
                db = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
}

/// Whether redb refuses `db` for an earlier I/O error (it must be reopened).
pub(crate) fn poisoned(db: &Database) -> bool {
    match db.begin_write() {
        Ok(txn) => {
            drop(txn.abort());
            false
        }
        Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => true,
        Err(e) => {
            tracing::warn!(error = %e, "floxy-store-redb: cannot check the database after a failed commit");
            true
        }
    }
}

/// Opens the database again (the path, or the same storage backend).
pub(crate) type Reopen = Box<dyn Fn() -> Result<Database, OpenError> + Send>;

/// Reopens the file at `path`.
pub(crate) fn reopen_path(path: PathBuf, cache_size_bytes: usize) -> Reopen {
    Box::new(move || open::open_database(&path, cache_size_bytes))
}

/// Reopens over `backend`, which each database shares (and closes, releasing its locks, when
/// it is dropped).
pub(crate) fn reopen_backend<B: StorageBackend>(
    path: PathBuf,
    backend: Arc<B>,
    cache_size_bytes: usize,
) -> Reopen {
    Box::new(move || open::open_backend(&path, SharedBackend(backend.clone()), cache_size_bytes))
}

/// A storage backend shared by the databases the store opens on it, one after the other.
#[derive(Debug)]
pub(crate) struct SharedBackend<B>(pub(crate) Arc<B>);

impl<B: StorageBackend> StorageBackend for SharedBackend<B> {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}
