//! A tiny shim over the lease table's synchronisation ([`crate::lease_table`]): `parking_lot`
//! and std normally, `loom` under `--cfg floxy_loom` so that the loom model
//! (`tests/loom_leases.rs`) explores every interleaving of the table's lock holders. The same
//! pattern as the memory store's `sync` module.

#[cfg(not(floxy_loom))]
pub(crate) use std::sync::atomic::AtomicU64;

#[cfg(floxy_loom)]
pub(crate) use loom::sync::atomic::AtomicU64;

/// A mutex whose `lock` never fails (no poisoning: every operation of the lease table
/// checks before it writes, so a panic inside the lock leaves the state whole).
pub(crate) struct Mutex<T>(
    #[cfg(not(floxy_loom))] parking_lot::Mutex<T>,
    #[cfg(floxy_loom)] loom::sync::Mutex<T>,
);

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

#[cfg(not(floxy_loom))]
impl<T> Mutex<T> {
    /// Wraps `value`.
    pub(crate) fn new(value: T) -> Self {
        Self(parking_lot::Mutex::new(value))
    }

    /// Locks the mutex.
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
        self.0.lock()
    }
}

#[cfg(floxy_loom)]
impl<T> Mutex<T> {
    /// Wraps `value`.
    pub(crate) fn new(value: T) -> Self {
        Self(loom::sync::Mutex::new(value))
    }

    /// Locks the mutex (a poisoned lock is taken over, see the type's docs).
    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
