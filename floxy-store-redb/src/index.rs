//! The claim index: every queue item of the file, in memory, owned by the writer thread.
//!
//! The queue items stored in the step rows are the durable truth (lease included); this
//! index is derived from them, rebuilt from the step rows of the instances `floxy_live` lists
//! when the file is opened and after a failed commit, and kept in step with the rows by the
//! writer, which is the only code that writes either. Each handler name is interned to a small number and owns:
//!
//! * `by_due`: its items by *due time*, the moment an item becomes claimable (`run_at`, or
//!   the later of `run_at` and the lease expiry when leased);
//! * `ready`: the items whose due time is at or before the handler's `watermark`, in claim
//!   order `(order_key, key)` — the ready queue in priority-with-aging order;
//! * `watermark`: the largest `now` a claim has promoted up to.
//!
//! Invariant: an item is in `ready` exactly when its due time is `<= watermark`. A claim at
//! `now > watermark` first moves the `by_due` range `(watermark, now]` into `ready` (each item
//! once per due time: new items, retries whose `run_at` arrived, expired leases), then takes
//! the first entries of `ready`. A claim with an older `now` (a lagging clock) skips ready
//! entries that are not due for it. This is the same algorithm as the memory store's, so both
//! backends claim in the same order by construction.

use crate::fast_hash::FastMap;
use floxy_core::model::{FencingToken, Lease, QueueItem, QueueKey, Timestamp};
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

/// One item and its bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The item as stored.
    pub(crate) item: QueueItem,
    handler: u32,
    due: Timestamp,
}

/// The claim index of one handler.
#[derive(Debug)]
struct HandlerIndex {
    name: Arc<str>,
    watermark: Timestamp,
    by_due: BTreeSet<(Timestamp, QueueKey)>,
    ready: BTreeSet<(i64, QueueKey)>,
}

impl HandlerIndex {
    fn new(name: Arc<str>) -> Self {
        Self {
            name,
            watermark: Timestamp(i64::MIN),
            by_due: BTreeSet::new(),
            ready: BTreeSet::new(),
        }
    }

    /// Moves every item due in `(watermark, now]` into `ready`.
    fn promote(&mut self, items: &FastMap<QueueKey, Box<Entry>>, now: Timestamp) {
        if now <= self.watermark {
            return;
        }
        // Due times in `(watermark, now]`: from the smallest key at `watermark + 1` to the
        // smallest key at `now + 1` (exclusive).
        let start = Bound::Included((Timestamp(self.watermark.0.saturating_add(1)), min_key()));
        let end = match now.0.checked_add(1) {
            Some(n) => Bound::Excluded((Timestamp(n), min_key())),
            None => Bound::Unbounded,
        };
        for (_, key) in self.by_due.range((start, end)) {
            if let Some(e) = items.get(key) {
                self.ready.insert((e.item.order_key, key.clone()));
            }
        }
        self.watermark = now;
    }
}

/// The smallest possible key (for range bounds).
fn min_key() -> QueueKey {
    QueueKey {
        instance_id: floxy_core::model::InstanceId::from_u128(0),
        step: Arc::from(""),
        kind: floxy_core::model::WorkKind::Execute,
    }
}

fn due_of(item: &QueueItem) -> Timestamp {
    match &item.lease {
        Some(l) => item.run_at.max(l.expires_at),
        None => item.run_at,
    }
}

/// Every queue item, indexed for claims (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct QueueIndex {
    /// Boxed entries, so that growing the table moves a pointer per item, not the item (see
    /// the snapshot cache's map, which grows at the same sizes).
    items: FastMap<QueueKey, Box<Entry>>,
    handler_ids: FastMap<Arc<str>, u32>,
    handlers: Vec<HandlerIndex>,
    leased: u64,
    /// Items per instance (instances without items are absent).
    per_instance: FastMap<floxy_core::model::InstanceId, u32>,
    /// Where [`QueueIndex::candidates`] sorts the candidates of several handlers (kept for
    /// its allocation; empty between calls).
    sort_buf: Vec<(i64, QueueKey)>,
}

impl QueueIndex {
    /// Number of items.
    pub(crate) fn len(&self) -> u64 {
        self.items.len() as u64
    }

    /// Number of leased items (expired leases not yet reclaimed included).
    pub(crate) fn leased(&self) -> u64 {
        self.leased
    }

    /// Whether instance `id` has queue items.
    pub(crate) fn has_items(&self, id: floxy_core::model::InstanceId) -> bool {
        self.per_instance.contains_key(&id)
    }

    /// The item with `key`.
    pub(crate) fn get(&self, key: &QueueKey) -> Option<&QueueItem> {
        self.items.get(key).map(|e| &e.item)
    }

    fn intern(&mut self, handler: &Arc<str>) -> u32 {
        if let Some(&h) = self.handler_ids.get(&**handler) {
            return h;
        }
        let h = u32::try_from(self.handlers.len()).unwrap_or(u32::MAX);
        self.handlers.push(HandlerIndex::new(handler.clone()));
        self.handler_ids.insert(handler.clone(), h);
        h
    }

    fn index_insert(&mut self, key: &QueueKey) {
        let Some(e) = self.items.get(key) else { return };
        let Some(h) = self.handlers.get_mut(e.handler as usize) else {
            return;
        };
        h.by_due.insert((e.due, key.clone()));
        if e.due <= h.watermark {
            h.ready.insert((e.item.order_key, key.clone()));
        }
    }

    fn index_remove(&mut self, key: &QueueKey) {
        let Some(e) = self.items.get(key) else { return };
        let Some(h) = self.handlers.get_mut(e.handler as usize) else {
            return;
        };
        h.by_due.remove(&(e.due, key.clone()));
        if e.due <= h.watermark {
            h.ready.remove(&(e.item.order_key, key.clone()));
        }
    }

    /// Inserts `item` as stored (lease kept): used when loading the table.
    pub(crate) fn load(&mut self, item: QueueItem) {
        self.put(item);
    }

    /// Inserts or replaces the item with `item.key` (a transition's upsert; the caller has
    /// already dropped the lease).
    pub(crate) fn upsert(&mut self, item: QueueItem) {
        self.put(item);
    }

    fn put(&mut self, item: QueueItem) {
        let key = item.key.clone();
        self.remove(&key);
        let handler = self.intern(&item.handler);
        let due = due_of(&item);
        if item.lease.is_some() {
            self.leased += 1;
        }
        *self.per_instance.entry(key.instance_id).or_insert(0) += 1;
        self.items
            .insert(key.clone(), Box::new(Entry { item, handler, due }));
        self.index_insert(&key);
    }

    /// Removes the item with `key`; returns whether it existed.
    pub(crate) fn remove(&mut self, key: &QueueKey) -> bool {
        self.index_remove(key);
        match self.items.remove(key) {
            Some(e) => {
                if e.item.lease.is_some() {
                    self.leased -= 1;
                }
                if let Some(n) = self.per_instance.get_mut(&key.instance_id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_instance.remove(&key.instance_id);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Sets the cancel flag of the item with `key`; returns the item if it exists.
    pub(crate) fn request_cancel(&mut self, key: &QueueKey) -> Option<&QueueItem> {
        let e = self.items.get_mut(key)?;
        e.item.cancel_requested = true;
        Some(&e.item)
    }

    /// Moves the item to a new due time, keeping both sets of its handler consistent.
    fn set_due(&mut self, key: &QueueKey, due: Timestamp) {
        let Some(e) = self.items.get_mut(key) else {
            return;
        };
        let old = e.due;
        if old == due {
            return;
        }
        e.due = due;
        let Some(h) = self.handlers.get_mut(e.handler as usize) else {
            return;
        };
        h.by_due.remove(&(old, key.clone()));
        h.by_due.insert((due, key.clone()));
        let was_ready = old <= h.watermark;
        let is_ready = due <= h.watermark;
        if was_ready && !is_ready {
            h.ready.remove(&(e.item.order_key, key.clone()));
        } else if !was_ready && is_ready {
            h.ready.insert((e.item.order_key, key.clone()));
        }
    }

    /// Extends the lease on `key` to `now + lease_ttl_ms` if `owner` holds it with `token`.
    /// Returns the new expiry and the cancel flag, or `None` when the lease is lost.
    pub(crate) fn heartbeat(
        &mut self,
        owner: &str,
        key: &QueueKey,
        token: FencingToken,
        now: Timestamp,
    ) -> Option<(&QueueItem, Timestamp)> {
        let e = self.items.get_mut(key)?;
        let expires_at = now.add_ms(e.item.lease_ttl_ms);
        match &mut e.item.lease {
            Some(l) if l.token == token && &*l.owner == owner => l.expires_at = expires_at,
            _ => return None,
        }
        let due = e.item.run_at.max(expires_at);
        self.set_due(key, due);
        self.items.get(key).map(|e| (&e.item, expires_at))
    }

    /// Up to `limit` claimable items of `handlers` (`run_at` and any lease expiry `<= now`), in
    /// claim order, into `out` (emptied first). Promotes newly due items; changes nothing
    /// else.
    ///
    /// Takes the caller's vector, and sorts several handlers' candidates in one the index
    /// keeps: a claim's lists are kilobytes, and on the writer thread glibc serves every
    /// allocation of a kilobyte or more by first merging the small free chunks of its heap
    /// (`malloc_consolidate`), which made this function's allocations a tenth of that
    /// thread's time in `perf`.
    pub(crate) fn candidates(
        &mut self,
        handlers: &[Arc<str>],
        limit: usize,
        now: Timestamp,
        out: &mut Vec<QueueKey>,
    ) {
        out.clear();
        let mut hs: Vec<u32> = Vec::with_capacity(handlers.len());
        for name in handlers {
            if let Some(&h) = self.handler_ids.get(&**name)
                && !hs.contains(&h)
            {
                hs.push(h);
            }
        }
        let several = hs.len() > 1;
        let mut sorted = std::mem::take(&mut self.sort_buf);
        sorted.clear();
        for &h in &hs {
            let Some(hi) = self.handlers.get_mut(h as usize) else {
                continue;
            };
            hi.promote(&self.items, now);
            let mut n = 0;
            for (order_key, key) in &hi.ready {
                if n == limit {
                    break;
                }
                if self.items.get(key).is_some_and(|e| e.due <= now) {
                    if several {
                        sorted.push((*order_key, key.clone()));
                    } else {
                        out.push(key.clone());
                    }
                    n += 1;
                }
            }
        }
        if several {
            sorted.sort_unstable();
            out.extend(sorted.drain(..).take(limit).map(|(_, k)| k));
        }
        sorted.clear();
        self.sort_buf = sorted;
    }

    /// Gives the item a new lease (`owner`, `token`, `now + lease_ttl_ms`) and counts the
    /// attempt. Returns the item as leased and whether it held a lease before (expired).
    pub(crate) fn lease(
        &mut self,
        key: &QueueKey,
        owner: &Arc<str>,
        token: FencingToken,
        now: Timestamp,
    ) -> Option<(&QueueItem, bool)> {
        let e = self.items.get_mut(key)?;
        let expires_at = now.add_ms(e.item.lease_ttl_ms);
        let previous = e.item.lease.replace(Lease {
            owner: owner.clone(),
            token,
            expires_at,
        });
        e.item.attempt = e.item.attempt.saturating_add(1);
        let due = e.item.run_at.max(expires_at);
        if previous.is_none() {
            self.leased += 1;
        }
        self.set_due(key, due);
        self.items.get(key).map(|e| (&e.item, previous.is_some()))
    }

    /// The earliest due time of each handler that has items.
    pub(crate) fn next_due_by_handler(&self) -> HashMap<Arc<str>, Timestamp> {
        self.handlers
            .iter()
            .filter_map(|h| h.by_due.first().map(|(due, _)| (h.name.clone(), *due)))
            .collect()
    }
}
