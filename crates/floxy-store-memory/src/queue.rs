//! The work queue: a slab of items and the claim index.
//!
//! Every item lives in a slot of a slab and is named internally by its slot number
//! ([`ItemId`]); the public [`QueueKey`] is only hashed when a transition or a heartbeat names
//! an item. Each handler name is interned to a small number and owns a [`HandlerIndex`]:
//!
//! * `by_due`: every item of the handler, ordered by its *due time* (the moment it becomes
//!   claimable: `run_at`, or the later of `run_at` and the lease expiry when leased);
//! * `ready`: the items whose due time is at or before the handler's `watermark`, ordered by
//!   `(order_key, key)`, the claim order;
//! * `watermark`: the largest `now` a claim has promoted up to.
//!
//! Invariant: an item is in `ready` exactly when its due time is `<= watermark`. A claim at
//! `now > watermark` promotes the `by_due` range `(watermark, now]` into `ready` (each item
//! is promoted once per due time, so the work is amortised) and moves the watermark. The
//! claim then pops the first items of `ready`. A claim with an older `now` (a worker whose
//! clock lags) checks each ready item's due time and skips those not due for it.

use floxy_core::model::{FencingToken, Lease, QueueItem, QueueKey, Timestamp};
use floxy_core::store::LeaseState;
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

/// Slab index of a queue item.
pub(crate) type ItemId = u32;
/// Slab index of an instance.
pub(crate) type InstSlot = u32;

/// One queue item and its bookkeeping.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The item as the contract sees it.
    pub(crate) item: QueueItem,
    /// Slab index of the instance the item belongs to.
    pub(crate) inst: InstSlot,
    /// Interned handler.
    handler: u32,
    /// When the item becomes claimable.
    due: Timestamp,
    /// Cached index of the item's step run in the instance's step list (step runs are never
    /// removed from a live instance, so the index stays valid).
    pub(crate) step_idx: Option<u32>,
}

/// An entry of a handler's ready set: claim order, then the slot.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ReadyKey {
    order_key: i64,
    key: QueueKey,
    id: ItemId,
}

/// The claim index of one handler (see the module docs).
#[derive(Debug)]
struct HandlerIndex {
    watermark: Timestamp,
    by_due: BTreeSet<(Timestamp, ItemId)>,
    ready: BTreeSet<ReadyKey>,
}

impl HandlerIndex {
    fn new() -> Self {
        Self {
            watermark: Timestamp(i64::MIN),
            by_due: BTreeSet::new(),
            ready: BTreeSet::new(),
        }
    }

    /// Moves every item due in `(watermark, now]` into the ready set.
    fn promote(&mut self, slots: &[Option<Slot>], now: Timestamp) {
        if now <= self.watermark {
            return;
        }
        let range = (
            Bound::Excluded((self.watermark, ItemId::MAX)),
            Bound::Included((now, ItemId::MAX)),
        );
        for &(_, id) in self.by_due.range(range) {
            if let Some(Some(s)) = slots.get(id as usize) {
                self.ready.insert(ReadyKey {
                    order_key: s.item.order_key,
                    key: s.item.key.clone(),
                    id,
                });
            }
        }
        self.watermark = now;
    }
}

/// The queue: slab, key map, interned handlers and their indexes, the fencing counter.
#[derive(Debug)]
pub(crate) struct Queue {
    slots: Vec<Option<Slot>>,
    free: Vec<ItemId>,
    by_key: HashMap<QueueKey, ItemId>,
    handler_ids: HashMap<Arc<str>, u32>,
    handlers: Vec<HandlerIndex>,
    last_token: u64,
    len: u64,
    leased: u64,
}

impl Queue {
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            handler_ids: HashMap::new(),
            handlers: Vec::new(),
            last_token: 0,
            len: 0,
            leased: 0,
        }
    }

    /// Number of items.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Number of leased items (including expired leases not yet reclaimed).
    pub(crate) fn leased(&self) -> u64 {
        self.leased
    }

    /// The slot of `id`.
    pub(crate) fn slot(&self, id: ItemId) -> Option<&Slot> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    /// The slot of `id`, mutably (never change `item.key`, `order_key`, `handler`, `run_at`
    /// or `lease` through it: they are indexed).
    pub(crate) fn slot_mut(&mut self, id: ItemId) -> Option<&mut Slot> {
        self.slots.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// The item with `key`.
    pub(crate) fn get(&self, key: &QueueKey) -> Option<&QueueItem> {
        let id = *self.by_key.get(key)?;
        self.slot(id).map(|s| &s.item)
    }

    fn intern(&mut self, handler: &Arc<str>) -> u32 {
        if let Some(&h) = self.handler_ids.get(&**handler) {
            return h;
        }
        let h = u32::try_from(self.handlers.len()).unwrap_or(u32::MAX);
        self.handlers.push(HandlerIndex::new());
        self.handler_ids.insert(handler.clone(), h);
        h
    }

    fn index_insert(&mut self, id: ItemId) {
        let Some(Some(s)) = self.slots.get(id as usize) else {
            return;
        };
        let Some(h) = self.handlers.get_mut(s.handler as usize) else {
            return;
        };
        h.by_due.insert((s.due, id));
        if s.due <= h.watermark {
            h.ready.insert(ReadyKey {
                order_key: s.item.order_key,
                key: s.item.key.clone(),
                id,
            });
        }
    }

    fn index_remove(&mut self, id: ItemId) {
        let Some(Some(s)) = self.slots.get(id as usize) else {
            return;
        };
        let Some(h) = self.handlers.get_mut(s.handler as usize) else {
            return;
        };
        h.by_due.remove(&(s.due, id));
        if s.due <= h.watermark {
            remove_ready(h, s, id);
        }
    }

    /// Changes the due time of `id`, keeping both sets of its handler consistent.
    fn set_due(&mut self, id: ItemId, due: Timestamp) {
        let Some(Some(s)) = self.slots.get_mut(id as usize) else {
            return;
        };
        let old = s.due;
        if old == due {
            return;
        }
        s.due = due;
        let Some(h) = self.handlers.get_mut(s.handler as usize) else {
            return;
        };
        h.by_due.remove(&(old, id));
        h.by_due.insert((due, id));
        let was_ready = old <= h.watermark;
        let is_ready = due <= h.watermark;
        if was_ready && !is_ready {
            remove_ready(h, s, id);
        } else if !was_ready && is_ready {
            h.ready.insert(ReadyKey {
                order_key: s.item.order_key,
                key: s.item.key.clone(),
                id,
            });
        }
    }

    /// Inserts or replaces the item with `item.key` (dropping any lease). Returns its id and
    /// whether it is new.
    pub(crate) fn upsert(&mut self, mut item: QueueItem, inst: InstSlot) -> (ItemId, bool) {
        item.lease = None;
        let handler = self.intern(&item.handler);
        let due = item.run_at;
        if let Some(&id) = self.by_key.get(&item.key) {
            self.index_remove(id);
            if let Some(s) = self.slot_mut(id) {
                let was_leased = s.item.lease.is_some();
                s.item = item;
                s.inst = inst;
                s.handler = handler;
                s.due = due;
                if was_leased {
                    self.leased -= 1;
                }
            }
            self.index_insert(id);
            return (id, false);
        }
        let slot = Slot {
            item,
            inst,
            handler,
            due,
            step_idx: None,
        };
        let key = slot.item.key.clone();
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(s) = self.slots.get_mut(id as usize) {
                    *s = Some(slot);
                }
                id
            }
            None => {
                let id = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some(slot));
                id
            }
        };
        self.by_key.insert(key, id);
        self.len += 1;
        self.index_insert(id);
        (id, true)
    }

    /// Removes the item with `key`; returns its id.
    pub(crate) fn remove(&mut self, key: &QueueKey) -> Option<ItemId> {
        let id = *self.by_key.get(key)?;
        self.remove_id(id);
        Some(id)
    }

    /// Removes the item `id`.
    pub(crate) fn remove_id(&mut self, id: ItemId) {
        self.index_remove(id);
        let Some(s) = self.slots.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        self.by_key.remove(&s.item.key);
        self.free.push(id);
        self.len -= 1;
        if s.item.lease.is_some() {
            self.leased -= 1;
        }
    }

    /// Sets the cancel flag of the item with `key`, if any.
    pub(crate) fn request_cancel(&mut self, key: &QueueKey) {
        if let Some(&id) = self.by_key.get(key)
            && let Some(s) = self.slot_mut(id)
        {
            s.item.cancel_requested = true;
        }
    }

    /// Extends the lease on `key` if `owner` holds it with `token`.
    pub(crate) fn heartbeat(
        &mut self,
        owner: &str,
        key: &QueueKey,
        token: FencingToken,
        now: Timestamp,
    ) -> LeaseState {
        let Some(&id) = self.by_key.get(key) else {
            return LeaseState::Lost;
        };
        let Some(s) = self.slot_mut(id) else {
            return LeaseState::Lost;
        };
        let ttl = s.item.lease_ttl_ms;
        let cancel_requested = s.item.cancel_requested;
        let run_at = s.item.run_at;
        let expires_at = now.add_ms(ttl);
        match &mut s.item.lease {
            Some(l) if l.token == token && &*l.owner == owner => l.expires_at = expires_at,
            _ => return LeaseState::Lost,
        }
        self.set_due(id, run_at.max(expires_at));
        LeaseState::Held {
            expires_at,
            cancel_requested,
        }
    }

    /// The earliest due time among the items of `handlers`.
    pub(crate) fn next_due(&self, handlers: &[Arc<str>]) -> Option<Timestamp> {
        handlers
            .iter()
            .filter_map(|h| self.handler_ids.get(&**h))
            .filter_map(|&h| self.handlers.get(h as usize))
            .filter_map(|h| h.by_due.first().map(|&(due, _)| due))
            .min()
    }

    /// Finds up to `limit` claimable items of `handlers`, in claim order, as
    /// `(handler, item)` pairs. Promotes newly due items first; changes nothing else. The
    /// caller must [`Self::take`] and [`Self::lease`] each item it claims.
    pub(crate) fn candidates(
        &mut self,
        handlers: &[Arc<str>],
        limit: usize,
        now: Timestamp,
    ) -> Vec<(u32, ItemId)> {
        let mut hs: Vec<u32> = Vec::with_capacity(handlers.len());
        for name in handlers {
            if let Some(&h) = self.handler_ids.get(&**name)
                && !hs.contains(&h)
            {
                hs.push(h);
            }
        }
        let mut cands: Vec<(u32, ItemId)> = Vec::with_capacity(limit.min(64) * hs.len().max(1));
        for &h in &hs {
            let Some(hi) = self.handlers.get_mut(h as usize) else {
                continue;
            };
            hi.promote(&self.slots, now);
            let mut n = 0;
            for rk in &hi.ready {
                if n == limit {
                    break;
                }
                let due = self
                    .slots
                    .get(rk.id as usize)
                    .and_then(Option::as_ref)
                    .map(|s| s.due);
                if due.is_some_and(|d| d <= now) {
                    cands.push((h, rk.id));
                    n += 1;
                }
            }
        }
        if hs.len() > 1 {
            let slots = &self.slots;
            let order = |id: ItemId| {
                slots
                    .get(id as usize)
                    .and_then(Option::as_ref)
                    .map(|s| (s.item.order_key, &s.item.key))
            };
            cands.sort_unstable_by(|a, b| order(a.1).cmp(&order(b.1)));
            cands.truncate(limit);
        }
        cands
    }

    /// Takes a candidate out of its handler's ready set.
    pub(crate) fn take(&mut self, h: u32, id: ItemId) {
        let (Some(hi), Some(Some(s))) =
            (self.handlers.get_mut(h as usize), self.slots.get(id as usize))
        else {
            return;
        };
        if hi.ready.first().is_some_and(|rk| rk.id == id) {
            hi.ready.pop_first();
        } else {
            remove_ready(hi, s, id);
        }
    }

    /// Gives `id` (already [taken](Self::take) out of its ready set) a new lease. Returns whether it was
    /// leased before (the previous lease expired).
    pub(crate) fn lease(&mut self, id: ItemId, owner: &Arc<str>, now: Timestamp) -> bool {
        self.last_token += 1;
        let token = FencingToken(self.last_token);
        let Some(Some(s)) = self.slots.get_mut(id as usize) else {
            return false;
        };
        let Some(h) = self.handlers.get_mut(s.handler as usize) else {
            return false;
        };
        let expires_at = now.add_ms(s.item.lease_ttl_ms);
        let previous = s.item.lease.replace(Lease {
            owner: owner.clone(),
            token,
            expires_at,
        });
        s.item.attempt = s.item.attempt.saturating_add(1);
        let due = s.item.run_at.max(expires_at);
        h.by_due.remove(&(s.due, id));
        h.by_due.insert((due, id));
        s.due = due;
        // Taken out of `ready` by `take`; put back only if already due again
        // (a zero TTL, or a watermark ahead of this claim's `now`).
        if due <= h.watermark {
            h.ready.insert(ReadyKey {
                order_key: s.item.order_key,
                key: s.item.key.clone(),
                id,
            });
        }
        if previous.is_none() {
            self.leased += 1;
        }
        previous.is_some()
    }
}

fn remove_ready(h: &mut HandlerIndex, s: &Slot, id: ItemId) {
    h.ready.remove(&ReadyKey {
        order_key: s.item.order_key,
        key: s.item.key.clone(),
        id,
    });
}
