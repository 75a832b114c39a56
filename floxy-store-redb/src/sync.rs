//! A tiny shim over the channels of the writer's hand-over ([`crate::handover`]): std's
//! normally; under `--cfg floxy_loom`, the same API over loom's `Mutex` and `Condvar`, so
//! that the loom model (`tests/loom_writer.rs`) explores every interleaving of the two
//! writer threads. (loom's own channel does not record a `try_recv` that finds it empty, so
//! its model never reorders a poll of the outcome against the commit that reports it.)

#[cfg(not(floxy_loom))]
pub(crate) use std::sync::mpsc;

/// std's `mpsc` API over loom's `Mutex` and `Condvar`. The ends do not see each other go:
/// `send` never fails, and `recv_timeout` waits like `recv` (the model never waits with a
/// timeout).
#[cfg(floxy_loom)]
pub(crate) mod mpsc {
    use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    use std::collections::VecDeque;
    use std::sync::PoisonError;
    use std::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError};
    use std::time::Duration;

    struct Chan<T> {
        queue: Mutex<VecDeque<T>>,
        ready: Condvar,
    }

    impl<T> Chan<T> {
        fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
            self.queue.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// The sending end.
    pub(crate) struct Sender<T>(Arc<Chan<T>>);

    /// The receiving end.
    pub(crate) struct Receiver<T>(Arc<Chan<T>>);

    /// A new channel.
    pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let chan = Arc::new(Chan {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        });
        (Sender(Arc::clone(&chan)), Receiver(chan))
    }

    impl<T> Sender<T> {
        /// Queues `value`.
        // The `Result` of std's `send`, which the callers handle.
        #[allow(clippy::unnecessary_wraps)]
        pub(crate) fn send(&self, value: T) -> Result<(), SendError<T>> {
            self.0.lock().push_back(value);
            self.0.ready.notify_one();
            Ok(())
        }
    }

    impl<T> Receiver<T> {
        /// Waits for the next value.
        // The `Result` of std's `recv`, which the callers handle.
        #[allow(clippy::unnecessary_wraps)]
        pub(crate) fn recv(&self) -> Result<T, RecvError> {
            let mut queue = self.0.lock();
            loop {
                if let Some(v) = queue.pop_front() {
                    return Ok(v);
                }
                queue = self
                    .0
                    .ready
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }

        /// The next value if one is queued.
        pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
            self.0.lock().pop_front().ok_or(TryRecvError::Empty)
        }

        /// Waits for the next value (without a timeout, see the module docs).
        pub(crate) fn recv_timeout(&self, _: Duration) -> Result<T, RecvTimeoutError> {
            self.recv().map_err(|_| RecvTimeoutError::Disconnected)
        }
    }
}
