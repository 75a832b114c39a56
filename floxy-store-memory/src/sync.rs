//! A tiny shim over the one lock of the store: `parking_lot` normally, `loom` under
//! `--cfg floxy_loom` so that the loom model explores every interleaving of lock holders.

#[cfg(not(floxy_loom))]
pub(crate) use std::sync::Arc;

#[cfg(floxy_loom)]
pub(crate) use loom::sync::Arc;

/// A mutex whose `lock` never fails (no poisoning: a panic inside the lock leaves the state
/// as it was, because every operation checks before it writes).
pub(crate) struct Mutex<T>(
    #[cfg(not(floxy_loom))] parking_lot::Mutex<T>,
    #[cfg(floxy_loom)] loom::sync::Mutex<T>,
);

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

    /// Locks the mutex (a poisoned lock is taken over: state is only written after every
    /// check passed, so a panic never leaves it half-written).
    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
