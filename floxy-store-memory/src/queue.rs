//! The work queue: a slab of items and the claim index.
//!
//! Every item lives in a slot of a slab and is named internally by its slot number
//! ([`ItemId`]); the public [`QueueKey`] is only hashed when a transition or a heartbeat names
//! an item. Each handler name is interned to a small number and owns a [`HandlerIndex`]:
//!
//! * `watermark`: the largest `now` a claim of this handler has promoted up to;
//! * `pending: BTreeMap<(due, item), ready key>`: the items whose *due time* (when they become
//!   claimable: `run_at`, or the later of `run_at` and the lease expiry when leased) is after
//!   the watermark;
//! * `ready: BTreeSet<(order_key, key, item)>`: the other items, in claim order.
//!
//! Invariant: an item is in `ready` exactly when its due time is `<= watermark`, and in
//! `pending` otherwise. A claim at `now > watermark` splits `pending` at `now` and moves the
//! due part into `ready` (each item is promoted once per due time; a large batch is sorted
//! and merged in bulk), then pops the first items of `ready`. `pending` carries each item's
//! ready key, built when the item was indexed (its slot was hot then), so a promotion never
//! touches the slab. A new lease puts the item back into `pending` at its expiry, the largest
//! due time so far, so that insertion lands at the right edge of the tree. A claim with an
//! older `now` (a worker whose clock lags) checks each ready item's due time and skips those
//! not due for it.

use floxy_core::model::{FencingToken, Lease, QueueItem, QueueKey, Timestamp};
use floxy_core::store::LeaseState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// An entry of a handler's ready set, ordered by `(order_key, instance)`, then slot.
///
/// The claim order is `(order_key, key)`, and the key also compares step and kind: entries
/// with equal `(order_key, instance)` form a *group* that [`Queue::candidates`] takes whole
/// and sorts by key. Leaving the step name out keeps the entry at 32 bytes, `Copy`, without
/// a reference count to touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ReadyKey {
    order_key: i64,
    inst_hi: u64,
    inst_lo: u64,
    id: ItemId,
}

impl ReadyKey {
    fn group(&self) -> (i64, u64, u64) {
        (self.order_key, self.inst_hi, self.inst_lo)
    }
}

/// What a claim needs to lease one candidate, read from its slot in the claim's first
/// pass (so that the slot's cache lines are loaded early, together with the other
/// candidates').
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeasePlan {
    handler: u32,
    key: ReadyKey,
    /// Expiry of the new lease.
    pub(crate) expires_at: Timestamp,
    due: Timestamp,
    /// The item holds a lease already (which expired).
    pub(crate) was_leased: bool,
}

impl LeasePlan {
    /// The item.
    pub(crate) fn id(&self) -> ItemId {
        self.key.id
    }
}

/// The claim index of one handler (see the module docs).
#[derive(Debug)]
struct HandlerIndex {
    watermark: Timestamp,
    pending: BTreeMap<(Timestamp, ItemId), ReadyKey>,
    ready: BTreeSet<ReadyKey>,
}

impl HandlerIndex {
    fn new() -> Self {
        Self {
            watermark: Timestamp(i64::MIN),
            pending: BTreeMap::new(),
            ready: BTreeSet::new(),
        }
    }

    /// Indexes `s` (stored at `id`) by its due time.
    fn insert(&mut self, s: &Slot, id: ItemId) {
        self.insert_key(ready_key(s, id), s.due);
    }

    /// Indexes item `key.id` due at `due` under its precomputed ready key.
    fn insert_key(&mut self, key: ReadyKey, due: Timestamp) {
        if due <= self.watermark {
            self.ready.insert(key);
        } else {
            self.pending.insert((due, key.id), key);
        }
    }

    /// Removes `s` (stored at `id`) from the index.
    fn remove(&mut self, s: &Slot, id: ItemId) {
        if s.due <= self.watermark {
            self.ready.remove(&ready_key(s, id));
        } else {
            self.pending.remove(&(s.due, id));
        }
    }

    /// Moves every pending item due at or before `now` into the ready set.
    fn promote(&mut self, now: Timestamp) {
        if now <= self.watermark {
            return;
        }
        self.watermark = now;
        if self
            .pending
            .first_key_value()
            .is_none_or(|(&(due, _), _)| due > now)
        {
            return;
        }
        let later = match now.0.checked_add(1) {
            Some(next) => self.pending.split_off(&(Timestamp(next), 0)),
            None => BTreeMap::new(),
        };
        let due = std::mem::replace(&mut self.pending, later);
        if due.len() >= 64 && due.len() >= self.ready.len() / 4 {
            // Many items at once (a backlog that became due together): sort them and build
            // a tree in one pass instead of inserting one by one at random places, then add
            // the (fewer) entries already ready.
            let mut bulk: BTreeSet<ReadyKey> = due.into_values().collect();
            if bulk.len() < self.ready.len() {
                std::mem::swap(&mut bulk, &mut self.ready);
            }
            if bulk.len() * 8 < self.ready.len() {
                self.ready.extend(bulk);
            } else {
                self.ready.append(&mut bulk);
            }
        } else {
            self.ready.extend(due.into_values());
        }
    }

    /// The earliest due time of its items. Ready items are scanned: after a claim that
    /// returned fewer items than asked (when idle workers ask), they are only the items a
    /// lagging clock could not take.
    fn next_due(&self, slots: &[Option<Slot>]) -> Option<Timestamp> {
        let pending = self.pending.first_key_value().map(|(&(due, _), _)| due);
        let ready = self
            .ready
            .iter()
            .filter_map(|rk| slots.get(rk.id as usize).and_then(Option::as_ref))
            .map(|s| s.due)
            .min();
        pending.into_iter().chain(ready).min()
    }
}

fn ready_key(s: &Slot, id: ItemId) -> ReadyKey {
    let (inst_hi, inst_lo) = s.item.key.instance_id.0.as_u64_pair();
    ReadyKey {
        order_key: s.item.order_key,
        inst_hi,
        inst_lo,
        id,
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
    /// Reused by every claim (no allocation per call).
    scratch_handlers: Vec<u32>,
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
            scratch_handlers: Vec::new(),
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
        if let Some(Some(s)) = self.slots.get(id as usize)
            && let Some(h) = self.handlers.get_mut(s.handler as usize)
        {
            h.insert(s, id);
        }
    }

    fn index_remove(&mut self, id: ItemId) {
        if let Some(Some(s)) = self.slots.get(id as usize)
            && let Some(h) = self.handlers.get_mut(s.handler as usize)
        {
            h.remove(s, id);
        }
    }

    /// Changes the due time of `id`, keeping its handler's index consistent.
    fn set_due(&mut self, id: ItemId, due: Timestamp) {
        self.index_remove(id);
        if let Some(s) = self.slot_mut(id) {
            s.due = due;
        }
        self.index_insert(id);
    }

    /// Inserts or replaces the item with `item.key`, with the lease it carries (callers drop
    /// every lease but an eager claim's, see [`floxy_core::eager::unlease_upserts`]).
    /// `step_idx` is the index of its step run in the instance, if known. Returns its id and
    /// whether it is new.
    pub(crate) fn upsert(
        &mut self,
        item: QueueItem,
        inst: InstSlot,
        step_idx: Option<u32>,
    ) -> (ItemId, bool) {
        let handler = self.intern(&item.handler);
        // Claimable once it runs and, when leased (an eager claim), once the lease expires.
        let due = match &item.lease {
            Some(l) => item.run_at.max(l.expires_at),
            None => item.run_at,
        };
        let leased = item.lease.is_some();
        if let Some(&id) = self.by_key.get(&item.key) {
            self.index_remove(id);
            if let Some(s) = self.slot_mut(id) {
                let was_leased = s.item.lease.is_some();
                s.item = item;
                s.inst = inst;
                s.handler = handler;
                s.due = due;
                s.step_idx = step_idx.or(s.step_idx);
                if was_leased {
                    self.leased -= 1;
                }
            }
            if leased {
                self.leased += 1;
            }
            self.index_insert(id);
            return (id, false);
        }
        if leased {
            self.leased += 1;
        }
        let slot = Slot {
            item,
            inst,
            handler,
            due,
            step_idx,
        };
        let key = slot.item.key.clone();
        let id = if let Some(id) = self.free.pop() {
            if let Some(s) = self.slots.get_mut(id as usize) {
                *s = Some(slot);
            }
            id
        } else {
            let id = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
            self.slots.push(Some(slot));
            id
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
            .filter_map(|h| h.next_due(&self.slots))
            .min()
    }

    /// Finds up to `limit` claimable items of `handlers`, in claim order, as
    /// `(handler, item)` pairs in `cands` (cleared first). Promotes newly due items first; changes nothing else. The
    /// caller must [`Self::take`] and [`Self::lease`] each item it claims.
    pub(crate) fn candidates(
        &mut self,
        handlers: &[Arc<str>],
        limit: usize,
        now: Timestamp,
        cands: &mut Vec<(u32, ItemId)>,
    ) {
        cands.clear();
        let mut hs = std::mem::take(&mut self.scratch_handlers);
        hs.clear();
        for name in handlers {
            if let Some(&h) = self.handler_ids.get(&**name)
                && !hs.contains(&h)
            {
                hs.push(h);
            }
        }
        for &h in &hs {
            let Some(hi) = self.handlers.get_mut(h as usize) else {
                continue;
            };
            hi.promote(now);
            let mut n = 0;
            let mut last_group = None;
            for rk in &hi.ready {
                // Past the limit, finish the last group: its order is only known after the
                // sort by key below.
                if n >= limit && last_group != Some(rk.group()) {
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
                    last_group = Some(rk.group());
                }
            }
        }
        let slots = &self.slots;
        let order = |id: ItemId| {
            slots
                .get(id as usize)
                .and_then(Option::as_ref)
                .map(|s| (s.item.order_key, &s.item.key))
        };
        // Usually sorted already (one handler, groups of one), which the sort detects in
        // one pass.
        cands.sort_unstable_by(|a, b| order(a.1).cmp(&order(b.1)));
        cands.truncate(limit);
        self.scratch_handlers = hs;
    }

    /// Reads what a new lease of candidate `id` needs (see [`LeasePlan`]).
    pub(crate) fn plan_lease(&self, h: u32, id: ItemId, now: Timestamp) -> Option<LeasePlan> {
        let s = self.slot(id)?;
        let expires_at = now.add_ms(s.item.lease_ttl_ms);
        Some(LeasePlan {
            handler: h,
            key: ready_key(s, id),
            expires_at,
            due: s.item.run_at.max(expires_at),
            was_leased: s.item.lease.is_some(),
        })
    }

    /// A fresh fencing token, greater than every token issued before (an eager claim's).
    pub(crate) fn next_token(&mut self) -> FencingToken {
        self.last_token += 1;
        FencingToken(self.last_token)
    }

    /// First half of a new lease on a planned candidate: takes it out of the ready set,
    /// issues the fencing token, counts the attempt and indexes the item at its new due
    /// time (in `pending`, at the right edge, unless the TTL is zero or the watermark is
    /// ahead of `now`). The caller must then [`Self::set_lease`] with the returned token
    /// before releasing the lock. Split in two so that a batch claim does all its index
    /// work before any reference-count update: a locked instruction waits for every
    /// outstanding cache miss.
    pub(crate) fn lease_prepare(&mut self, plan: &LeasePlan) -> Option<FencingToken> {
        let id = plan.key.id;
        let h = self.handlers.get_mut(plan.handler as usize)?;
        if h.ready.first() == Some(&plan.key) {
            h.ready.pop_first();
        } else {
            h.ready.remove(&plan.key);
        }
        let s = self.slots.get_mut(id as usize)?.as_mut()?;
        self.last_token += 1;
        s.item.attempt = s.item.attempt.saturating_add(1);
        s.due = plan.due;
        h.insert_key(plan.key, plan.due);
        if !plan.was_leased {
            self.leased += 1;
        }
        Some(FencingToken(self.last_token))
    }

    /// Second half of a new lease (see [`Self::lease_prepare`]): records the holder.
    pub(crate) fn set_lease(
        &mut self,
        id: ItemId,
        owner: &Arc<str>,
        token: FencingToken,
        expires_at: Timestamp,
    ) -> Option<&Slot> {
        let s = self.slots.get_mut(id as usize)?.as_mut()?;
        s.item.lease = Some(Lease {
            owner: owner.clone(),
            token,
            expires_at,
        });
        Some(s)
    }
}
