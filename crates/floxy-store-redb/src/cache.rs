//! The preparing thread's cache of decoded instance snapshots, which is also the overlay of
//! instances written by batches that are not committed yet.
//!
//! [`floxy_core::store::Store::update_instance`] hands the transition function a snapshot
//! (record, step runs, DLQ records). Reading and decoding it from the tables for every
//! transition is the largest cost of a write, so the writer keeps the snapshots of live
//! instances decoded in memory, updated in step with the writes it prepares.
//!
//! The writer prepares a batch while the one before it commits, so the tables it can read
//! (the last committed transaction) may lag behind what it already wrote. Every instance a
//! not-yet-committed batch wrote is therefore **pinned** here with its latest snapshot (or a
//! tombstone when the batch removed it), tagged with that batch's sequence number; pinned
//! slots are never evicted. Once the batch is known committed, its slots are unpinned
//! ([`SnapshotCache::unpin`]): tombstones and terminal instances leave (they never change
//! again, and the tables now hold them), live instances stay as plain cache entries. An
//! instance without a slot is therefore read from the last committed transaction, which then
//! holds every write to it.
//!
//! Bounded by a number of instances: when it holds the capacity (or, if more instances than
//! that are pinned, twice the pinned count at the last eviction), every unpinned slot is
//! dropped at once (the live instances are read back on their next transition), which keeps
//! it O(1) per operation amortised. Cleared after a failed commit (nothing is pinned then).

use crate::fast_hash::FastMap;
use crate::row::ClaimMark;
use floxy_core::model::{InstanceId, InstanceSnapshot, StepName};

/// The claim marks (`step_started` events) in an instance's step rows, by step (format
/// version 4 keeps them in the step row, not in `floxy_events`; see [`crate::row`]).
pub(crate) type Started = Vec<(StepName, Vec<ClaimMark>)>;

/// One cached instance.
#[derive(Debug)]
struct Slot {
    /// `None`: removed by a batch not committed yet.
    snap: Option<InstanceSnapshot>,
    /// The batch that last wrote it while not committed; 0 once committed.
    pin: u64,
}

/// What the cache knows of an instance.
#[derive(Debug)]
pub(crate) enum Cached<'a> {
    /// Its snapshot.
    Live(&'a InstanceSnapshot),
    /// Removed by a batch not committed yet.
    Gone,
    /// Nothing: read the last committed transaction.
    Miss,
}

/// Decoded snapshots by instance id.
#[derive(Debug)]
pub(crate) struct SnapshotCache {
    map: FastMap<InstanceId, Slot>,
    /// The claim marks in the step rows of the cached instances (absent: none). Kept apart
    /// from the slots, which [`SnapshotCache::take`] moves out and back, and dropped with
    /// them.
    started: FastMap<InstanceId, Started>,
    capacity: usize,
    /// Size at which unpinned slots are dropped: the capacity, or twice what was pinned at
    /// the last eviction (so a cache full of pinned slots is not scanned on every insert).
    evict_at: usize,
}

impl SnapshotCache {
    /// An empty cache holding at most `capacity` unpinned instances (0: only pinned ones).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: FastMap::default(),
            started: FastMap::default(),
            capacity,
            evict_at: capacity.max(1),
        }
    }

    /// What the cache knows of `id`, left in the cache.
    pub(crate) fn get(&self, id: InstanceId) -> Cached<'_> {
        match self.map.get(&id) {
            Some(Slot { snap: Some(s), .. }) => Cached::Live(s),
            Some(Slot { snap: None, .. }) => Cached::Gone,
            None => Cached::Miss,
        }
    }

    /// Takes the slot of `id` out: `Some((snapshot or None if removed, pin))`, or `None`
    /// when the cache knows nothing of it. Put it back with [`SnapshotCache::put`].
    pub(crate) fn take(&mut self, id: InstanceId) -> Option<(Option<InstanceSnapshot>, u64)> {
        self.map.remove(&id).map(|s| (s.snap, s.pin))
    }

    /// Caches `snap`, pinned to batch `pin` (0: committed). An unpinned terminal snapshot is
    /// not kept.
    pub(crate) fn put(&mut self, snap: InstanceSnapshot, pin: u64) {
        let id = snap.instance.id;
        if pin == 0 && (snap.instance.status.is_terminal() || self.capacity == 0) {
            self.map.remove(&id);
            self.started.remove(&id);
            return;
        }
        self.make_room(id);
        self.map.insert(
            id,
            Slot {
                snap: Some(snap),
                pin,
            },
        );
    }

    /// Records that batch `pin` removed `id`.
    pub(crate) fn tombstone(&mut self, id: InstanceId, pin: u64) {
        self.make_room(id);
        self.map.insert(id, Slot { snap: None, pin });
        self.started.remove(&id);
    }

    /// Batch `seq` is committed: the slots it pinned (and no later batch re-pinned) become
    /// plain cache entries, or leave when removed or terminal.
    pub(crate) fn unpin(&mut self, id: InstanceId, seq: u64) {
        let Some(slot) = self.map.get_mut(&id) else {
            return;
        };
        if slot.pin != seq {
            return;
        }
        let keep = self.capacity > 0
            && slot
                .snap
                .as_ref()
                .is_some_and(|s| !s.instance.status.is_terminal());
        if keep {
            slot.pin = 0;
        } else {
            self.map.remove(&id);
            self.started.remove(&id);
        }
    }

    /// Forgets everything (after a failed commit).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.started.clear();
    }

    /// The claim marks in the step row of `(id, step)`.
    pub(crate) fn started(&self, id: InstanceId, step: &str) -> &[ClaimMark] {
        self.started
            .get(&id)
            .and_then(|s| s.iter().find(|(n, _)| &**n == step))
            .map_or(&[], |(_, e)| e.as_slice())
    }

    /// Records the claim marks an instance's step rows hold (read with its snapshot).
    pub(crate) fn set_started(&mut self, id: InstanceId, started: Started) {
        if started.is_empty() {
            self.started.remove(&id);
        } else {
            self.started.insert(id, started);
        }
    }

    /// Adds a claim's mark to the step row of `(id, step)`.
    pub(crate) fn push_started(&mut self, id: InstanceId, step: &StepName, e: ClaimMark) {
        let steps = self.started.entry(id).or_default();
        match steps.iter_mut().find(|(n, _)| n == step) {
            Some((_, events)) => events.push(e),
            None => steps.push((step.clone(), vec![e])),
        }
    }

    /// When full and `id` is new, drops every unpinned slot.
    fn make_room(&mut self, id: InstanceId) {
        if self.map.len() >= self.evict_at && !self.map.contains_key(&id) {
            let started = &mut self.started;
            self.map.retain(|k, s| {
                let keep = s.pin != 0;
                if !keep {
                    started.remove(k);
                }
                keep
            });
            self.evict_at = self.capacity.max(2 * self.map.len()).max(1);
        }
    }
}
