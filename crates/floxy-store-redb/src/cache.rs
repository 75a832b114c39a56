//! The writer's cache of decoded instance snapshots.
//!
//! [`floxy_core::store::Store::update_instance`] hands the transition function a snapshot
//! (record, step runs, DLQ records). Reading and decoding it from the tables for every
//! transition is the largest cost of a write, so the writer keeps the snapshots of live
//! instances decoded in memory and updates them in step with the tables it writes: the
//! cached snapshot of an instance is always equal to what the last committed (or the current
//! batch's) transaction holds. It is only a cache: it is cleared after a failed commit, and an
//! instance that is not in it is read from the tables.
//!
//! Bounded by a number of instances: when full it is emptied at once (the live instances are
//! read back on their next transition), which keeps it O(1) per operation. Terminal instances
//! are dropped as soon as they are written: they never change again.

use floxy_core::model::{InstanceId, InstanceSnapshot};
use std::collections::HashMap;

/// Decoded snapshots by instance id.
#[derive(Debug)]
pub(crate) struct SnapshotCache {
    map: HashMap<InstanceId, InstanceSnapshot>,
    capacity: usize,
}

impl SnapshotCache {
    /// An empty cache holding at most `capacity` instances (0 disables it).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            capacity,
        }
    }

    /// Whether `id` is cached.
    pub(crate) fn contains(&self, id: InstanceId) -> bool {
        self.map.contains_key(&id)
    }

    /// The cached snapshot of `id`, left in the cache.
    pub(crate) fn get(&self, id: InstanceId) -> Option<&InstanceSnapshot> {
        self.map.get(&id)
    }

    /// Takes the snapshot of `id` out of the cache.
    pub(crate) fn take(&mut self, id: InstanceId) -> Option<InstanceSnapshot> {
        self.map.remove(&id)
    }

    /// Caches `snap` (terminal instances are not kept).
    pub(crate) fn put(&mut self, snap: InstanceSnapshot) {
        if snap.instance.status.is_terminal() || self.capacity == 0 {
            self.map.remove(&snap.instance.id);
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(&snap.instance.id) {
            self.map.clear();
        }
        self.map.insert(snap.instance.id, snap);
    }

    /// Forgets `id`.
    pub(crate) fn remove(&mut self, id: InstanceId) {
        self.map.remove(&id);
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }
}
