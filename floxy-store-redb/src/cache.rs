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
//! Each slot also holds the step marks of the instance's step rows (the events those rows
//! keep, see [`crate::row`]): a step row written again must keep them. Taking a snapshot out
//! for a transition leaves its slot, marks included, in the map, and putting it back fills
//! the slot again: one map lookup each, no slot moved in or out of the map.
//!
//! Bounded by a number of instances: when it holds the capacity (or, if more instances than
//! that are pinned, twice the pinned count at the last eviction), every unpinned slot is
//! dropped at once (the live instances are read back on their next transition), which keeps
//! it O(1) per operation amortised. Cleared after a failed commit (nothing is pinned then).

use crate::fast_hash::FastMap;
use crate::row::StepMark;
use floxy_core::model::{InstanceId, InstanceSnapshot, StepName};

/// The step marks in an instance's step rows, by step (see [`crate::row`]).
pub(crate) type Marks = Vec<(StepName, Vec<StepMark>)>;

/// What a slot holds of its instance.
// Nearly every slot is `Live`: boxing the snapshot would add an allocation and an
// indirection per cached instance to shrink the rare `Gone` and `Out` slots.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum State {
    /// Its snapshot.
    Live(InstanceSnapshot),
    /// Removed by a batch not committed yet.
    Gone,
    /// Taken out by [`SnapshotCache::take`] (or not read yet when only its marks are known),
    /// to be put back by [`SnapshotCache::put`] or [`SnapshotCache::tombstone`].
    Out,
}

/// One cached instance.
#[derive(Debug)]
struct Slot {
    state: State,
    /// The batch that last wrote it while not committed; 0 once committed.
    pin: u64,
    /// The marks of its step rows.
    marks: Marks,
}

impl Slot {
    /// What it tells of its instance (a snapshot taken out reads as a miss: nothing looks
    /// while it is out).
    fn cached(&self) -> Cached<'_> {
        match &self.state {
            State::Live(s) => Cached::Live(s),
            State::Gone => Cached::Gone,
            State::Out => Cached::Miss,
        }
    }

    /// Whether eviction must keep it: pinned, or taken out and not back yet.
    fn held(&self) -> bool {
        self.pin != 0 || matches!(self.state, State::Out)
    }
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
    /// Boxed: a table of inline slots (a few hundred bytes each) moved every slot each time
    /// it grew. In the throughput bench's `bursts` part, the burst that took the store past
    /// 57 000 instances (where this table and the claim index's double) had its slowest
    /// create at 84–89 ms; with both boxed, 37–55 ms. Throughput did not change.
    map: FastMap<InstanceId, Box<Slot>>,
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
            capacity,
            evict_at: capacity.max(1),
        }
    }

    /// What the cache knows of `id`, left in the cache.
    pub(crate) fn get(&self, id: InstanceId) -> Cached<'_> {
        self.map.get(&id).map_or(Cached::Miss, |s| s.cached())
    }

    /// What the cache knows of `id`, and the marks of its step `step`'s row (one lookup: this
    /// runs for every step row a batch writes).
    pub(crate) fn get_with_marks(&self, id: InstanceId, step: &str) -> (Cached<'_>, &[StepMark]) {
        match self.map.get(&id) {
            Some(slot) => (slot.cached(), marks_of(&slot.marks, step)),
            None => (Cached::Miss, &[]),
        }
    }

    /// Takes the snapshot of `id` out: `Some((snapshot or None if removed, pin))`, or `None`
    /// when the cache knows nothing of it. Its slot (and marks) stay; put it back with
    /// [`SnapshotCache::put`].
    pub(crate) fn take(&mut self, id: InstanceId) -> Option<(Option<InstanceSnapshot>, u64)> {
        let slot = self.map.get_mut(&id)?;
        match std::mem::replace(&mut slot.state, State::Out) {
            State::Live(s) => Some((Some(s), slot.pin)),
            State::Gone => {
                slot.state = State::Gone;
                Some((None, slot.pin))
            }
            State::Out => None,
        }
    }

    /// Caches `snap`, pinned to batch `pin` (0: committed). An unpinned terminal snapshot is
    /// not kept.
    pub(crate) fn put(&mut self, snap: InstanceSnapshot, pin: u64) {
        let id = snap.instance.id;
        if pin == 0 && (snap.instance.status.is_terminal() || self.capacity == 0) {
            self.map.remove(&id);
            return;
        }
        if let Some(slot) = self.map.get_mut(&id) {
            slot.state = State::Live(snap);
            slot.pin = pin;
            return;
        }
        self.make_room();
        self.map.insert(
            id,
            Box::new(Slot {
                state: State::Live(snap),
                pin,
                marks: Marks::new(),
            }),
        );
    }

    /// Records that batch `pin` removed `id`.
    pub(crate) fn tombstone(&mut self, id: InstanceId, pin: u64) {
        if !self.map.contains_key(&id) {
            self.make_room();
        }
        self.map.insert(
            id,
            Box::new(Slot {
                state: State::Gone,
                pin,
                marks: Marks::new(),
            }),
        );
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
            && matches!(&slot.state, State::Live(s) if !s.instance.status.is_terminal());
        if keep {
            slot.pin = 0;
        } else {
            self.map.remove(&id);
        }
    }

    /// Forgets everything (after a failed commit).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    /// Records the marks an instance's step rows hold (read with its snapshot, which the
    /// caller puts into the cache next).
    pub(crate) fn set_marks(&mut self, id: InstanceId, marks: Marks) {
        if let Some(slot) = self.map.get_mut(&id) {
            slot.marks = marks;
        } else {
            self.make_room();
            self.map.insert(
                id,
                Box::new(Slot {
                    state: State::Out,
                    pin: 0,
                    marks,
                }),
            );
        }
    }

    /// Adds a mark to the step row of `(id, step)` (the instance's snapshot is out for the
    /// transition or claim that writes it, or about to be cached for the first time).
    pub(crate) fn push_mark(&mut self, id: InstanceId, step: &StepName, mark: StepMark) {
        let slot = self.map.entry(id).or_insert_with(|| {
            Box::new(Slot {
                state: State::Out,
                pin: 0,
                marks: Marks::new(),
            })
        });
        if let Some((_, marks)) = slot.marks.iter_mut().find(|(n, _)| n == step) {
            marks.push(mark);
        } else {
            // A claim's mark and its completion's: the common pair.
            let mut marks = Vec::with_capacity(2);
            marks.push(mark);
            slot.marks.push((step.clone(), marks));
        }
    }

    /// When full, drops every slot that is neither pinned nor taken out.
    fn make_room(&mut self) {
        if self.map.len() >= self.evict_at {
            self.map.retain(|_, s| s.held());
            self.evict_at = self.capacity.max(2 * self.map.len()).max(1);
        }
    }
}

/// The marks of step `step` among `marks`.
fn marks_of<'a>(marks: &'a Marks, step: &str) -> &'a [StepMark] {
    marks
        .iter()
        .find(|(n, _)| &**n == step)
        .map_or(&[], |(_, m)| m.as_slice())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use floxy_core::conformance::fixtures::{instance, wf};
    use floxy_core::model::{InstanceStatus, Timestamp};

    fn snap(n: u128) -> InstanceSnapshot {
        InstanceSnapshot {
            instance: instance(
                InstanceId::from_u128(n),
                &wf(),
                InstanceStatus::Running,
                Timestamp(0),
            ),
            steps: Vec::new(),
            dlq: Vec::new(),
        }
    }

    fn cached(c: &SnapshotCache, n: u128) -> bool {
        matches!(c.get(InstanceId::from_u128(n)), Cached::Live(_))
    }

    #[test]
    fn eviction_keeps_pinned_and_taken_slots() {
        let mut c = SnapshotCache::new(4);
        c.put(snap(1), 5);
        c.put(snap(2), 0);
        let (taken, pin) = c.take(InstanceId::from_u128(2)).unwrap();
        c.put(snap(3), 0);
        c.put(snap(4), 0);
        // Full: a new instance evicts the unpinned slots.
        c.put(snap(5), 0);
        assert!(cached(&c, 1), "a pinned slot stays");
        assert!(
            c.map.contains_key(&InstanceId::from_u128(2)),
            "a taken slot stays"
        );
        assert!(!cached(&c, 3) && !cached(&c, 4), "unpinned slots go");
        assert!(cached(&c, 5));
        c.put(taken.unwrap(), pin);
        assert!(cached(&c, 2));
        // Once batch 5 is committed, the pinned slot is a plain entry.
        c.unpin(InstanceId::from_u128(1), 5);
        c.put(snap(6), 0);
        c.put(snap(7), 0);
        assert!(!cached(&c, 1), "unpinned, it is evicted like the others");
    }

    #[test]
    fn marks_live_and_leave_with_their_slot() {
        let mut c = SnapshotCache::new(8);
        let id = InstanceId::from_u128(2);
        c.put(snap(2), 3);
        let step: StepName = "s".into();
        let mark = StepMark {
            seq: 1,
            at: Timestamp(1),
            kind: floxy_core::model::EventKind::StepStarted,
            attempt: Some(1),
            detail: None,
        };
        let (s, pin) = c.take(id).unwrap();
        c.push_mark(id, &step, mark.clone());
        c.put(s.unwrap(), pin);
        assert_eq!(c.get_with_marks(id, "s").1, [mark]);
        assert!(c.get_with_marks(id, "t").1.is_empty());
        c.clear();
        assert!(c.get_with_marks(id, "s").1.is_empty());
    }
}
