//! The whole store behind one lock: every operation is a plain synchronous method.

use crate::queue::{InstSlot, ItemId, LeasePlan, Queue};
use floxy_core::checks;
use floxy_core::eager::{EagerClaim, lease_eagerly, unlease_upserts};
use floxy_core::model::{
    DlqId, DlqRecord, Event, EventKind, FencingToken, InstanceId, InstanceRecord, InstanceSnapshot,
    InstanceStatus, QueueItem, QueueOp, StepName, StepRun, Timestamp, Transition,
    WorkflowDefinition, WorkflowId,
};
use floxy_core::store::{
    ClaimRequest, ClaimedItem, CreateOutcome, DlqQuery, InstanceQuery, LeaseRef, LeaseState,
    MAX_CLAIM_BATCH, MAX_PAGE_SIZE, Page, PutDefinition, StoreError, StoreStats, TransitionFn,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

/// One instance: its snapshot (handed to transition functions by reference, never
/// rebuilt), an index of its step runs by name, its events and its queue items.
#[derive(Debug)]
struct InstanceEntry {
    snap: InstanceSnapshot,
    step_idx: HashMap<StepName, u32>,
    events: Vec<Event>,
    queue: Vec<ItemId>,
}

/// Buffers reused by every claim, so that a claim allocates only its result.
#[derive(Debug, Default)]
struct ClaimScratch {
    cands: Vec<(u32, ItemId)>,
    plan: Vec<(LeasePlan, bool)>,
    leased: Vec<(LeasePlan, FencingToken, Option<u64>)>,
    started: Vec<(InstSlot, Event)>,
}

/// Everything the store holds.
#[derive(Debug)]
pub(crate) struct State {
    defs: BTreeMap<WorkflowId, WorkflowDefinition>,
    insts: Vec<Option<InstanceEntry>>,
    inst_free: Vec<InstSlot>,
    by_id: BTreeMap<InstanceId, InstSlot>,
    idem: HashMap<WorkflowId, HashMap<String, InstanceId>>,
    dlq: BTreeMap<DlqId, InstSlot>,
    last_dlq: u64,
    last_seq: u64,
    status_counts: [u64; InstanceStatus::ALL.len()],
    /// Terminal instances by last update, for cleanup.
    terminal: BTreeSet<(Timestamp, InstanceId)>,
    queue: Queue,
    scratch: ClaimScratch,
}

fn status_index(s: InstanceStatus) -> usize {
    InstanceStatus::ALL
        .iter()
        .position(|x| *x == s)
        .unwrap_or_default()
}

fn page_limit(limit: usize) -> usize {
    if limit == 0 {
        MAX_PAGE_SIZE
    } else {
        limit.min(MAX_PAGE_SIZE)
    }
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            defs: BTreeMap::new(),
            insts: Vec::new(),
            inst_free: Vec::new(),
            by_id: BTreeMap::new(),
            idem: HashMap::new(),
            dlq: BTreeMap::new(),
            last_dlq: 0,
            last_seq: 0,
            status_counts: [0; InstanceStatus::ALL.len()],
            terminal: BTreeSet::new(),
            queue: Queue::new(),
            scratch: ClaimScratch::default(),
        }
    }

    fn entry(&self, slot: InstSlot) -> Option<&InstanceEntry> {
        self.insts.get(slot as usize).and_then(Option::as_ref)
    }

    fn entry_of(&self, id: InstanceId) -> Option<&InstanceEntry> {
        self.entry(*self.by_id.get(&id)?)
    }

    // ----- definitions -----

    pub(crate) fn put_definition(
        &mut self,
        def: &WorkflowDefinition,
    ) -> Result<PutDefinition, StoreError> {
        let id = def.id();
        match self.defs.get(&id) {
            Some(stored) if stored == def => Ok(PutDefinition::Unchanged),
            Some(_) => Err(StoreError::DefinitionConflict(id)),
            None => {
                self.defs.insert(id, def.clone());
                Ok(PutDefinition::Created)
            }
        }
    }

    pub(crate) fn get_definition(&self, id: &WorkflowId) -> Option<WorkflowDefinition> {
        self.defs.get(id).cloned()
    }

    pub(crate) fn list_definitions(&self) -> Vec<WorkflowDefinition> {
        self.defs.values().cloned().collect()
    }

    // ----- transitions -----

    pub(crate) fn create_instance(
        &mut self,
        mut t: Transition,
    ) -> Result<CreateOutcome, StoreError> {
        let id = t.instance.id;
        if !t.create {
            return Err(StoreError::Conflict(format!(
                "create_instance of {id} with a transition that does not create"
            )));
        }
        if let Some(key) = &t.instance.idempotency_key
            && let Some(existing) = self.find_by_idempotency_key(&t.instance.workflow_id, key)
        {
            return Ok(CreateOutcome::Existing(existing));
        }
        if self.by_id.contains_key(&id) {
            return Err(StoreError::Conflict(format!(
                "instance {id} already exists"
            )));
        }
        self.check(None, &t)?;
        unlease_upserts(&mut t);
        let entry = InstanceEntry {
            snap: InstanceSnapshot {
                instance: t.instance.clone(),
                steps: Vec::new(),
                dlq: Vec::new(),
            },
            step_idx: HashMap::new(),
            events: Vec::new(),
            queue: Vec::new(),
        };
        let slot = if let Some(slot) = self.inst_free.pop() {
            if let Some(s) = self.insts.get_mut(slot as usize) {
                *s = Some(entry);
            }
            slot
        } else {
            self.insts.push(Some(entry));
            u32::try_from(self.insts.len() - 1).unwrap_or(u32::MAX)
        };
        self.by_id.insert(id, slot);
        self.index_record(&t.instance, true);
        self.apply_rest(slot, &t);
        Ok(CreateOutcome::Created(id))
    }

    pub(crate) fn update_instance(
        &mut self,
        id: InstanceId,
        f: TransitionFn,
    ) -> Result<Transition, StoreError> {
        self.update_instance_eager(id, f, None).map(|(t, _)| t)
    }

    /// [`floxy_core::store::Store::update_instance_eager`] (`eager: None`: a plain update).
    pub(crate) fn update_instance_eager(
        &mut self,
        id: InstanceId,
        f: TransitionFn,
        eager: Option<&EagerClaim>,
    ) -> Result<(Transition, Vec<ClaimedItem>), StoreError> {
        let slot = *self
            .by_id
            .get(&id)
            .ok_or_else(|| StoreError::NotFound(format!("instance {id}")))?;
        let entry = self
            .entry(slot)
            .ok_or_else(|| StoreError::NotFound(format!("instance {id}")))?;
        let mut t = f(&entry.snap)?;
        if t.instance.id != id {
            return Err(StoreError::Conflict(format!(
                "transition for instance {} applied to {id}",
                t.instance.id
            )));
        }
        self.check(Some((slot, entry)), &t)?;
        // Checked: upserts are stored unleased, but for the caller's share of the queued
        // work, leased in this same commit with tokens from the claim counter.
        unlease_upserts(&mut t);
        let claimed = match eager {
            Some(e) => lease_eagerly(&mut t, e, || self.queue.next_token()),
            None => Vec::new(),
        };
        let Some(entry) = self.insts.get_mut(slot as usize).and_then(Option::as_mut) else {
            return Err(StoreError::NotFound(format!("instance {id}")));
        };
        let old = std::mem::replace(&mut entry.snap.instance, t.instance.clone());
        let idem_changed = old.workflow_id != t.instance.workflow_id
            || old.idempotency_key != t.instance.idempotency_key;
        self.unindex_record(&old, idem_changed);
        self.index_record(&t.instance, idem_changed);
        self.apply_rest(slot, &t);
        Ok((t, claimed))
    }

    /// Every check of a transition, before anything is written. `current` is the stored
    /// instance (`None` when creating).
    fn check(
        &self,
        current: Option<(InstSlot, &InstanceEntry)>,
        t: &Transition,
    ) -> Result<(), StoreError> {
        let id = t.instance.id;
        let snap = current.map(|(_, e)| &e.snap);
        // 1. Creation or version.
        checks::version(snap, t)?;
        // 2. Fencing.
        checks::fencing(t, |k| {
            self.queue
                .get(k)
                .and_then(|item| item.lease.as_ref())
                .map(|l| l.token)
        })?;
        // 3. Step compare-and-set, in order; everything written belongs to this instance.
        checks::steps_and_ownership(snap, t)?;
        let slot = current.map(|(slot, _)| slot);
        for d in &t.dlq_delete {
            if let Some(&owner) = self.dlq.get(d)
                && Some(owner) != slot
            {
                return Err(StoreError::Conflict(format!(
                    "DLQ record {d} does not belong to instance {id}"
                )));
            }
        }
        // The idempotency key stays unique.
        if let Some(key) = &t.instance.idempotency_key
            && let Some(other) = self.find_by_idempotency_key(&t.instance.workflow_id, key)
            && other != id
        {
            return Err(StoreError::Conflict(format!(
                "idempotency key {key:?} of {} is used by instance {other}",
                t.instance.workflow_id
            )));
        }
        Ok(())
    }

    fn index_record(&mut self, r: &InstanceRecord, idem: bool) {
        if let Some(c) = self.status_counts.get_mut(status_index(r.status)) {
            *c += 1;
        }
        if r.status.is_terminal() {
            self.terminal.insert((r.updated_at, r.id));
        }
        if idem && let Some(key) = &r.idempotency_key {
            self.idem
                .entry(r.workflow_id.clone())
                .or_default()
                .insert(key.clone(), r.id);
        }
    }

    fn unindex_record(&mut self, r: &InstanceRecord, idem: bool) {
        if let Some(c) = self.status_counts.get_mut(status_index(r.status)) {
            *c = c.saturating_sub(1);
        }
        if r.status.is_terminal() {
            self.terminal.remove(&(r.updated_at, r.id));
        }
        if idem
            && let Some(key) = &r.idempotency_key
            && let Some(keys) = self.idem.get_mut(&r.workflow_id)
        {
            if keys.get(key) == Some(&r.id) {
                keys.remove(key);
            }
            if keys.is_empty() {
                self.idem.remove(&r.workflow_id);
            }
        }
    }

    /// Applies the step, queue, event and DLQ writes of a checked transition.
    fn apply_rest(&mut self, slot: InstSlot, t: &Transition) {
        let Some(e) = self.insts.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        for w in &t.steps {
            if let Some(&i) = e.step_idx.get(&w.run.step) {
                if let Some(run) = e.snap.steps.get_mut(i as usize) {
                    *run = w.run.clone();
                }
            } else {
                let i = u32::try_from(e.snap.steps.len()).unwrap_or(u32::MAX);
                e.step_idx.insert(w.run.step.clone(), i);
                e.snap.steps.push(w.run.clone());
            }
        }
        for op in &t.queue {
            match op {
                QueueOp::Upsert(item) => {
                    let step_idx = e.step_idx.get(&item.key.step).copied();
                    let (qid, new) = self.queue.upsert(item.clone(), slot, step_idx);
                    if new {
                        e.queue.push(qid);
                    }
                }
                QueueOp::Delete(key) => {
                    if let Some(qid) = self.queue.remove(key)
                        && let Some(pos) = e.queue.iter().position(|&q| q == qid)
                    {
                        e.queue.swap_remove(pos);
                    }
                }
                QueueOp::RequestCancel(key) => self.queue.request_cancel(key),
            }
        }
        for ev in &t.events {
            self.last_seq += 1;
            e.events.push(Event {
                seq: self.last_seq,
                instance_id: t.instance.id,
                at: t.now,
                kind: ev.kind,
                step: ev.step.clone(),
                attempt: ev.attempt,
                detail: ev.detail.clone(),
            });
        }
        for r in &t.dlq_insert {
            self.last_dlq += 1;
            let id = DlqId(self.last_dlq);
            e.snap.dlq.push(DlqRecord {
                id,
                created_at: t.now,
                record: r.clone(),
            });
            self.dlq.insert(id, slot);
        }
        for d in &t.dlq_delete {
            if self.dlq.remove(d).is_some() {
                e.snap.dlq.retain(|r| r.id != *d);
            }
        }
    }

    // ----- claims and leases -----

    pub(crate) fn claim(&mut self, req: &ClaimRequest) -> Result<Vec<ClaimedItem>, StoreError> {
        let limit = req.limit.min(MAX_CLAIM_BATCH);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        self.queue
            .candidates(&req.handlers, limit, req.now, &mut scratch.cands);
        let out = self.commit_claim(req, &mut scratch);
        self.scratch = scratch;
        out
    }

    /// Leases the claim candidates in `scratch.cands` (from [`Queue::candidates`] under
    /// the same lock).
    fn commit_claim(
        &mut self,
        req: &ClaimRequest,
        scratch: &mut ClaimScratch,
    ) -> Result<Vec<ClaimedItem>, StoreError> {
        let now = req.now;
        // Check that every candidate has its step run before changing anything, remember
        // where it is and whether the claim starts it. Reading the step runs here, in a
        // tight loop, also lets their cache misses overlap instead of stalling the claim
        // loop below one by one.
        let ClaimScratch {
            cands,
            plan,
            leased,
            started,
        } = scratch;
        plan.clear();
        for &(h, id) in cands.iter() {
            let Some(s) = self.queue.slot_mut(id) else {
                return Err(StoreError::Corrupt(format!("queue slot {id} is empty")));
            };
            let e = self.insts.get(s.inst as usize).and_then(Option::as_ref);
            if s.step_idx.is_none() {
                s.step_idx = e.and_then(|e| e.step_idx.get(&s.item.key.step).copied());
            }
            let Some(run) = e
                .zip(s.step_idx)
                .and_then(|(e, i)| e.snap.steps.get(i as usize))
            else {
                let k = &s.item.key;
                return Err(StoreError::Corrupt(format!(
                    "queue item {}/{} ({}) has no step run",
                    k.instance_id,
                    k.step,
                    k.kind.as_str()
                )));
            };
            if run.instance_id != s.item.key.instance_id || run.step != s.item.key.step {
                let k = &s.item.key;
                return Err(StoreError::Corrupt(format!(
                    "queue item {}/{} points at step run {}/{}",
                    k.instance_id, k.step, run.instance_id, run.step
                )));
            }
            let starts = checks::claim_starts_run(s.item.key.kind, run.status);
            if let Some(p) = self.queue.plan_lease(h, id, now) {
                plan.push((p, starts));
            }
        }
        // Commit in passes: first every index and status write (no reference counts
        // touched), then the clones for the caller and the new leases' owners (locked
        // instructions, which would otherwise wait for the cache misses of the writes), then
        // the `step_started` events (the tail of an instance's event list is usually cold).
        leased.clear();
        for (p, starts) in plan.drain(..) {
            let Some(token) = self.queue.lease_prepare(&p) else {
                continue;
            };
            let mut seq = None;
            if starts
                && let Some(s) = self.queue.slot(p.id())
                && let Some(Some(e)) = self.insts.get_mut(s.inst as usize)
                && let Some(run) = s.step_idx.and_then(|i| e.snap.steps.get_mut(i as usize))
            {
                checks::start_run(run, s.item.attempt, now);
                self.last_seq += 1;
                seq = Some(self.last_seq);
            }
            leased.push((p, token, seq));
        }
        let mut out = Vec::with_capacity(leased.len());
        started.clear();
        for (p, token, seq) in leased.drain(..) {
            let previous_lease_expired = p.was_leased;
            let Some(s) = self
                .queue
                .set_lease(p.id(), &req.owner, token, p.expires_at)
            else {
                continue;
            };
            let Some(run) = self
                .insts
                .get(s.inst as usize)
                .and_then(Option::as_ref)
                .zip(s.step_idx)
                .and_then(|(e, i)| e.snap.steps.get(i as usize))
            else {
                continue;
            };
            if let Some(seq) = seq {
                started.push((
                    s.inst,
                    Event {
                        seq,
                        instance_id: run.instance_id,
                        at: now,
                        kind: EventKind::StepStarted,
                        step: Some(run.step.clone()),
                        attempt: Some(s.item.attempt),
                        detail: None,
                    },
                ));
            }
            out.push(ClaimedItem {
                item: s.item.clone(),
                previous_lease_expired,
                run: run.clone(),
            });
        }
        for (inst, event) in started.drain(..) {
            if let Some(Some(e)) = self.insts.get_mut(inst as usize) {
                e.events.push(event);
            }
        }
        Ok(out)
    }

    pub(crate) fn heartbeat(
        &mut self,
        owner: &str,
        leases: &[LeaseRef],
        now: Timestamp,
    ) -> Vec<LeaseState> {
        leases
            .iter()
            .map(|l| self.queue.heartbeat(owner, &l.key, l.token, now))
            .collect()
    }

    // ----- reads -----

    pub(crate) fn load_instance(&self, id: InstanceId) -> Option<InstanceSnapshot> {
        self.entry_of(id).map(|e| e.snap.clone())
    }

    pub(crate) fn get_instance(&self, id: InstanceId) -> Option<InstanceRecord> {
        self.entry_of(id).map(|e| e.snap.instance.clone())
    }

    pub(crate) fn list_steps(&self, id: InstanceId) -> Vec<StepRun> {
        let mut steps = self
            .entry_of(id)
            .map(|e| e.snap.steps.clone())
            .unwrap_or_default();
        steps.sort_by(|a, b| (a.created_at, &a.step).cmp(&(b.created_at, &b.step)));
        steps
    }

    pub(crate) fn find_by_idempotency_key(
        &self,
        workflow_id: &WorkflowId,
        key: &str,
    ) -> Option<InstanceId> {
        self.idem.get(workflow_id)?.get(key).copied()
    }

    pub(crate) fn list_instances(&self, q: &InstanceQuery) -> Page<InstanceRecord, InstanceId> {
        let limit = page_limit(q.limit);
        let start = q.after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut items = Vec::new();
        let mut more = false;
        for &slot in self.by_id.range((start, Bound::Unbounded)).map(|(_, s)| s) {
            let Some(e) = self.entry(slot) else { continue };
            let r = &e.snap.instance;
            if q.workflow_id.as_ref().is_some_and(|w| *w != r.workflow_id)
                || q.status.is_some_and(|s| s != r.status)
            {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(r.clone());
        }
        let next = if more {
            items.last().map(|r: &InstanceRecord| r.id)
        } else {
            None
        };
        Page { items, next }
    }

    pub(crate) fn list_events(
        &self,
        id: InstanceId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Vec<Event> {
        let Some(e) = self.entry_of(id) else {
            return Vec::new();
        };
        let start = after_seq.map_or(0, |after| e.events.partition_point(|ev| ev.seq <= after));
        e.events
            .iter()
            .skip(start)
            .take(page_limit(limit))
            .cloned()
            .collect()
    }

    fn dlq_record(&self, id: DlqId) -> Option<&DlqRecord> {
        let slot = *self.dlq.get(&id)?;
        self.entry(slot)?.snap.dlq.iter().find(|r| r.id == id)
    }

    pub(crate) fn list_dlq(&self, q: &DlqQuery) -> Page<DlqRecord, DlqId> {
        let limit = page_limit(q.limit);
        let start = q.after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut items = Vec::new();
        let mut more = false;
        for &id in self.dlq.range((start, Bound::Unbounded)).map(|(id, _)| id) {
            let Some(r) = self.dlq_record(id) else {
                continue;
            };
            if q.instance_id.is_some_and(|i| i != r.record.instance_id)
                || q.workflow_id
                    .as_ref()
                    .is_some_and(|w| *w != r.record.workflow_id)
            {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(r.clone());
        }
        let next = if more {
            items.last().map(|r: &DlqRecord| r.id)
        } else {
            None
        };
        Page { items, next }
    }

    pub(crate) fn get_dlq(&self, id: DlqId) -> Option<DlqRecord> {
        self.dlq_record(id).cloned()
    }

    pub(crate) fn list_queue(&self, id: InstanceId) -> Vec<QueueItem> {
        let Some(e) = self.entry_of(id) else {
            return Vec::new();
        };
        let mut items: Vec<QueueItem> = e
            .queue
            .iter()
            .filter_map(|&q| self.queue.slot(q))
            .map(|s| s.item.clone())
            .collect();
        items.sort_by(|a, b| a.key.cmp(&b.key));
        items
    }

    pub(crate) fn next_due(&self, handlers: &[Arc<str>]) -> Option<Timestamp> {
        self.queue.next_due(handlers)
    }

    pub(crate) fn stats(&self) -> StoreStats {
        let instances_by_status = InstanceStatus::ALL
            .iter()
            .zip(self.status_counts.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (s.as_str().to_owned(), *n))
            .collect();
        StoreStats {
            instances_by_status,
            queue_ready: self.queue.len() - self.queue.leased(),
            queue_leased: self.queue.leased(),
            dlq: self.dlq.len() as u64,
        }
    }

    // ----- retention -----

    pub(crate) fn cleanup(&mut self, older_than: Timestamp) -> u64 {
        let end = (older_than, InstanceId::from_u128(0));
        let victims: Vec<InstanceId> = self.terminal.range(..end).map(|&(_, id)| id).collect();
        let mut removed = 0;
        for id in victims {
            let Some(slot) = self.by_id.remove(&id) else {
                continue;
            };
            let Some(e) = self.insts.get_mut(slot as usize).and_then(Option::take) else {
                continue;
            };
            self.inst_free.push(slot);
            self.unindex_record(&e.snap.instance, true);
            for r in &e.snap.dlq {
                self.dlq.remove(&r.id);
            }
            for &q in &e.queue {
                self.queue.remove_id(q);
            }
            removed += 1;
        }
        removed
    }
}
