//! Committed snapshots for readers: filled by readers, invalidated by the writer.
//!
//! [`floxy_core::store::Store::load_instance`] is called far more often than an instance
//! changes (the runtime's `wait_for` reloads the instance it waits for after every commit of
//! the engine), and reading it from redb — a read transaction, four tables, decoding every
//! step run — costs the calling task tens of microseconds of CPU, which on a small machine is
//! taken from the writer thread. So a reader that read a snapshot from redb offers it to this
//! cache, and the next read of that instance clones it from here.
//!
//! The cache only ever holds **committed** state, so it never shows a reader anything a
//! crash could take back. The writer never puts snapshots in (that would cost the writer, the
//! bottleneck, a clone per touched instance); it only removes the instances its batch touched,
//! once just before the commit and once just after it, and bumps a generation number each
//! time. A reader records the generation before it opens its read transaction and its offer is
//! refused if the generation moved since:
//!
//! * a reader whose transaction predates a commit either offers before the post-commit
//!   removal (and its stale entry is removed by it) or after it (and is refused);
//! * a reader that hits the cache got the state of the last commit that touched the instance
//!   or, during a commit, the state just before it — what a read transaction opened a moment
//!   earlier would have seen. Reads never go backwards: after the pre-commit removal, readers
//!   go to redb until the post-commit removal, and redb's snapshots are monotonic.
//!
//! Bounded by a number of instances: when full it is emptied at once.

use floxy_core::model::{InstanceId, InstanceSnapshot};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Committed snapshots by instance id (see the module docs).
#[derive(Debug)]
pub(crate) struct ReadCache {
    state: Mutex<State>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every invalidation.
    generation: u64,
    map: HashMap<InstanceId, Arc<InstanceSnapshot>>,
}

impl ReadCache {
    /// An empty cache holding at most `capacity` instances (0 disables it).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity,
        }
    }

    /// The cached snapshot of `id`, or the generation to pass to [`ReadCache::offer`] after
    /// reading it from redb.
    pub(crate) fn get(&self, id: InstanceId) -> Result<Arc<InstanceSnapshot>, u64> {
        let st = self.state.lock();
        st.map.get(&id).cloned().ok_or(st.generation)
    }

    /// Caches `snap`, read by a read transaction opened after [`ReadCache::get`] returned
    /// `generation`, unless the writer invalidated anything since.
    pub(crate) fn offer(&self, generation: u64, snap: Arc<InstanceSnapshot>) {
        if self.capacity == 0 {
            return;
        }
        let mut st = self.state.lock();
        if st.generation != generation {
            return;
        }
        if st.map.len() >= self.capacity && !st.map.contains_key(&snap.instance.id) {
            st.map.clear();
        }
        st.map.insert(snap.instance.id, snap);
    }

    /// Forgets `ids` and refuses the offers of reads that started before (called by the
    /// writer just before and just after each commit).
    pub(crate) fn invalidate(&self, ids: &[InstanceId]) {
        let mut st = self.state.lock();
        st.generation = st.generation.wrapping_add(1);
        if !st.map.is_empty() {
            for id in ids {
                st.map.remove(id);
            }
        }
    }
}
