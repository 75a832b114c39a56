//! Definitions and transitions: `put_definition`, `create_instance`, `update_instance` (with
//! eager claims), every check of a transition, and how a checked transition is recorded.

use super::{
    AssertUnwindSafe, Batch, ClaimedItem, CreateOutcome, DEFINITIONS, DlqId, DlqRecord, EagerClaim,
    Event, Fail, InstanceId, InstanceRecord, InstanceSnapshot, PutDefinition, QueueOp, StepMark,
    StoreError, Transition, TransitionFn, UpdateFail, WorkflowDefinition, Writer, checks, classify,
    decode_definition, fatal, inst_key, layout, lease_eagerly, status_index, unlease_upserts,
};

impl Writer {
    // ----- definitions ---------------------------------------------------------------------

    pub(super) fn put_definition(
        &mut self,
        b: &mut Batch,
        def: &WorkflowDefinition,
    ) -> Result<PutDefinition, Fail> {
        // Runs alone, after every earlier batch committed: the read transaction is current.
        let id = def.id();
        let stored = {
            let rtx = self.view.txn(self.committed_seq).map_err(classify)?;
            let t = rtx.open_table(DEFINITIONS).map_err(fatal)?;
            match t.get(id.as_str()).map_err(fatal)? {
                Some(v) => Some(decode_definition(v.value()).map_err(Fail::Caller)?),
                None => None,
            }
        };
        match stored {
            Some(s) if s == *def => Ok(PutDefinition::Unchanged),
            Some(_) => Err(Fail::Caller(StoreError::DefinitionConflict(id))),
            None => {
                let bytes = layout::encode_definition(def).map_err(Fail::Caller)?;
                b.ops.definition(id.as_str(), &bytes);
                Ok(PutDefinition::Created)
            }
        }
    }

    // ----- transitions ---------------------------------------------------------------------

    pub(super) fn create(
        &mut self,
        b: &mut Batch,
        mut tr: Transition,
    ) -> Result<CreateOutcome, Fail> {
        let id = tr.instance.id;
        if !tr.create {
            return Err(Fail::Caller(StoreError::Conflict(format!(
                "create_instance of {id} with a transition that does not create"
            ))));
        }
        if let Some(key) = &tr.instance.idempotency_key
            && let Some(existing) = self
                .idempotency(tr.instance.workflow_id.as_str(), key)
                .map_err(classify)?
        {
            return Ok(CreateOutcome::Existing(InstanceId::from_u128(existing)));
        }
        if self.instance_exists(id).map_err(classify)? {
            return Err(Fail::Caller(StoreError::Conflict(format!(
                "instance {id} already exists"
            ))));
        }
        self.check(None, &tr)?;
        unlease_upserts(&mut tr);
        let mut snap = InstanceSnapshot {
            instance: tr.instance.clone(),
            steps: Vec::with_capacity(tr.steps.len()),
            dlq: Vec::new(),
        };
        self.apply(b, None, &tr, &mut snap).map_err(Fail::Fatal)?;
        self.keep_written(b, snap);
        Ok(CreateOutcome::Created(id))
    }

    pub(super) fn update(
        &mut self,
        b: &mut Batch,
        id: InstanceId,
        f: TransitionFn,
        eager: Option<&EagerClaim>,
    ) -> Result<(Transition, Vec<ClaimedItem>), UpdateFail> {
        let (mut snap, pin) = match self.take_snapshot(id) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(UpdateFail::Fail(Fail::Caller(StoreError::NotFound(
                    format!("instance {id}"),
                ))));
            }
            Err(e) => return Err(UpdateFail::Fail(classify(e))),
        };
        let mut tr = match std::panic::catch_unwind(AssertUnwindSafe(|| f(&snap))) {
            Ok(Ok(tr)) => tr,
            Ok(Err(e)) => {
                self.cache.put(snap, pin);
                return Err(UpdateFail::Fail(Fail::Caller(StoreError::Rejected(e))));
            }
            Err(panic) => {
                self.cache.put(snap, pin);
                return Err(UpdateFail::Panic(panic));
            }
        };
        if tr.instance.id != id {
            self.cache.put(snap, pin);
            return Err(UpdateFail::Fail(Fail::Caller(StoreError::Conflict(
                format!("transition for instance {} applied to {id}", tr.instance.id),
            ))));
        }
        if let Err(e) = self.check(Some(&snap), &tr) {
            self.cache.put(snap, pin);
            return Err(UpdateFail::Fail(e));
        }
        // Checked: upserts are stored unleased, but for the caller's share of the queued
        // work, leased in this same commit (tokens from the claim counter).
        unlease_upserts(&mut tr);
        let claimed = match eager {
            Some(e) => {
                let counters = &mut self.counters;
                let claimed = lease_eagerly(&mut tr, e, || {
                    counters.last_token += 1;
                    floxy_core::model::FencingToken(counters.last_token)
                });
                if !claimed.is_empty() {
                    self.counters_dirty = true;
                }
                claimed
            }
            None => Vec::new(),
        };
        let old = std::mem::replace(&mut snap.instance, tr.instance.clone());
        // On a fatal error the snapshot is dropped (the whole cache is cleared anyway).
        self.apply(b, Some(&old), &tr, &mut snap)
            .map_err(|e| UpdateFail::Fail(Fail::Fatal(e)))?;
        self.keep_written(b, snap);
        Ok((tr, claimed))
    }

    /// Every check of a transition, before anything is recorded (`current` is `None` when
    /// creating).
    pub(super) fn check(
        &mut self,
        current: Option<&InstanceSnapshot>,
        tr: &Transition,
    ) -> Result<(), Fail> {
        let id = tr.instance.id;
        let conflict = |msg: String| Fail::Caller(StoreError::Conflict(msg));
        // 1. Creation or version.
        checks::version(current, tr).map_err(Fail::Caller)?;
        // 2. Fencing.
        checks::fencing(tr, |k| {
            self.index
                .get(k)
                .and_then(|i| i.lease.as_ref())
                .map(|l| l.token)
        })
        .map_err(Fail::Caller)?;
        // 3. Step compare-and-set, in order; 4. everything written belongs to this instance.
        checks::steps_and_ownership(current, tr).map_err(Fail::Caller)?;
        for d in &tr.dlq_delete {
            let own = current.is_some_and(|s| s.dlq.iter().any(|r| r.id == *d));
            if !own && self.dlq_exists(d.0).map_err(classify)? {
                return Err(conflict(format!(
                    "DLQ record {d} does not belong to instance {id}"
                )));
            }
        }
        // 5. The idempotency key stays unique (unchanged keys are known to be this
        // instance's).
        if let Some(key) = &tr.instance.idempotency_key {
            let unchanged = current.is_some_and(|s| {
                s.instance.idempotency_key.as_ref() == Some(key)
                    && s.instance.workflow_id == tr.instance.workflow_id
            });
            if !unchanged
                && let Some(other) = self
                    .idempotency(tr.instance.workflow_id.as_str(), key)
                    .map_err(classify)?
            {
                let other = InstanceId::from_u128(other);
                if other != id {
                    return Err(conflict(format!(
                        "idempotency key {key:?} of {} is used by instance {other}",
                        tr.instance.workflow_id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Records a checked transition and applies it to the in-memory state and to `snap` (the
    /// instance's snapshot, whose record is already the new one). Any error leaves the batch
    /// partly recorded: the caller fails the batch.
    pub(super) fn apply(
        &mut self,
        b: &mut Batch,
        old: Option<&InstanceRecord>,
        tr: &Transition,
        snap: &mut InstanceSnapshot,
    ) -> Result<(), StoreError> {
        let new = &tr.instance;
        let ikey = inst_key(new.id);
        b.ops.instance(ikey, new)?;
        // Status counts and the terminal index.
        if let Some(o) = old {
            if let Some(c) = self.counters.status_counts.get_mut(status_index(o.status)) {
                *c = c.saturating_sub(1);
            }
            if o.status.is_terminal() {
                b.ops.terminal(o.updated_at.as_millis(), ikey, false);
            }
        }
        if let Some(c) = self
            .counters
            .status_counts
            .get_mut(status_index(new.status))
        {
            *c += 1;
        }
        if new.status.is_terminal() {
            b.ops.terminal(new.updated_at.as_millis(), ikey, true);
        }
        self.counters_dirty = true;
        // Idempotency key.
        let old_key = old.and_then(|o| o.idempotency_key.as_deref().map(|key| (o, key)));
        let same = match (old_key, &new.idempotency_key) {
            (Some((o, old_k)), Some(new_k)) => o.workflow_id == new.workflow_id && old_k == new_k,
            (None, None) => true,
            _ => false,
        };
        if !same {
            if let Some((o, key)) = old_key
                && self.idempotency(o.workflow_id.as_str(), key)? == Some(ikey)
            {
                self.write_idempotency(b, o.workflow_id.as_str(), key, None);
            }
            if let Some(key) = &new.idempotency_key {
                self.write_idempotency(b, new.workflow_id.as_str(), key, Some(ikey));
            }
        }
        // Step runs (the snapshot keeps them in name order, like the table).
        for w in &tr.steps {
            Self::mark_row(b, new.id, &w.run.step);
            match snap.steps.binary_search_by(|s| s.step.cmp(&w.run.step)) {
                Ok(i) => {
                    if let Some(s) = snap.steps.get_mut(i) {
                        *s = w.run.clone();
                    }
                }
                Err(i) => snap.steps.insert(i, w.run.clone()),
            }
        }
        // Queue.
        for op in &tr.queue {
            match op {
                QueueOp::Upsert(item) => {
                    // Leases were settled before (`unlease_upserts`, then any eager claim).
                    Self::mark_row(b, new.id, &item.key.step);
                    self.index.upsert(item.clone());
                }
                QueueOp::Delete(key) => {
                    if self.index.remove(key) {
                        Self::mark_row(b, new.id, &key.step);
                    }
                }
                QueueOp::RequestCancel(key) => {
                    if self.index.request_cancel(key).is_some() {
                        Self::mark_row(b, new.id, &key.step);
                    }
                }
            }
        }
        // Events. One of a step whose row this transition writes (with its run) is kept in
        // that row as a mark (most transitions then write one row fewer); the
        // others go to one row of `events`, keyed by the first one's sequence.
        if !tr.events.is_empty() {
            // Allocated only for events no step row keeps (most transitions have none).
            let mut events = Vec::new();
            for ev in &tr.events {
                self.counters.last_seq += 1;
                let e = Event {
                    seq: self.counters.last_seq,
                    instance_id: new.id,
                    at: tr.now,
                    kind: ev.kind,
                    step: ev.step.clone(),
                    attempt: ev.attempt,
                    detail: ev.detail.clone(),
                };
                match &ev.step {
                    Some(step)
                        if b.row_set.contains(&(new.id, step.clone()))
                            && snap.steps.binary_search_by(|s| s.step.cmp(step)).is_ok() =>
                    {
                        self.cache.push_mark(new.id, step, StepMark::of(&e));
                    }
                    _ => events.push(e),
                }
            }
            if let Some(first) = events.first() {
                b.ops.events(ikey, first.seq, &events)?;
            }
        }
        // DLQ.
        for rec in &tr.dlq_insert {
            self.counters.last_dlq += 1;
            let id = DlqId(self.counters.last_dlq);
            let d = DlqRecord {
                id,
                created_at: tr.now,
                record: rec.clone(),
            };
            b.ops.dlq(id.0, &d)?;
            b.ops.dlq_by_instance(ikey, id.0, true);
            self.write_dlq_exists(b, id.0, true);
            self.counters.dlq += 1;
            snap.dlq.push(d);
        }
        for d in &tr.dlq_delete {
            // Unknown ids are ignored; a record of another instance was refused by `check`.
            if snap.dlq.iter().any(|x| x.id == *d) {
                b.ops.remove_dlq(d.0);
                b.ops.dlq_by_instance(ikey, d.0, false);
                self.write_dlq_exists(b, d.0, false);
                self.counters.dlq = self.counters.dlq.saturating_sub(1);
                snap.dlq.retain(|x| x.id != *d);
            }
        }
        Ok(())
    }
}
