//! Wakeups of [`Engine::wait_for`](crate::Engine::wait_for) callers, per instance.
//!
//! A waiter reloads its instance when woken. Waking every waiter on every local commit (what
//! one engine-wide signal would do) makes `W` waiters cost `W` store reads per commit, so
//! each waiter subscribes to the commits of its own instance only.

use floxy_core::model::InstanceId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// Commit signals of the instances someone waits for.
#[derive(Default)]
pub(crate) struct Waiters {
    /// Per instance: the signal and the number of subscribed waiters.
    by_instance: Mutex<HashMap<InstanceId, (watch::Sender<u64>, usize)>>,
}

/// A waiter's subscription; unsubscribes on drop.
pub(crate) struct Subscription {
    waiters: Arc<Waiters>,
    id: InstanceId,
    /// Changes after every local commit of the instance.
    pub(crate) rx: watch::Receiver<u64>,
}

impl Waiters {
    /// Subscribes to the local commits of `id`.
    pub(crate) fn subscribe(self: &Arc<Self>, id: InstanceId) -> Subscription {
        let mut map = self.by_instance.lock();
        let (tx, n) = map.entry(id).or_insert_with(|| (watch::channel(0).0, 0));
        *n += 1;
        Subscription {
            waiters: Arc::clone(self),
            id,
            rx: tx.subscribe(),
        }
    }

    /// Wakes the waiters of `id` (after a local commit of it).
    pub(crate) fn notify(&self, id: InstanceId) {
        if let Some((tx, _)) = self.by_instance.lock().get(&id) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_instance.lock().len()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.waiters.by_instance.lock();
        if let Some((_, n)) = map.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_instance_s_waiters_wake_and_entries_go_with_them() {
        let w = Arc::new(Waiters::default());
        let (a, b) = (
            InstanceId(uuid::Uuid::from_u128(1)),
            InstanceId(uuid::Uuid::from_u128(2)),
        );
        let mut sa = w.subscribe(a);
        let mut sa2 = w.subscribe(a);
        let mut sb = w.subscribe(b);
        w.notify(a);
        assert!(sa.rx.has_changed().unwrap_or(false));
        assert!(sa2.rx.has_changed().unwrap_or(false));
        assert!(!sb.rx.has_changed().unwrap_or(true), "b was not committed");
        sa.rx.borrow_and_update();
        sa2.rx.borrow_and_update();
        sb.rx.borrow_and_update();
        drop(sa);
        assert_eq!(w.len(), 2, "a still has a waiter");
        drop(sa2);
        drop(sb);
        assert_eq!(w.len(), 0, "no waiters, no entries");
        w.notify(a); // nobody waits: nothing to do
    }
}
