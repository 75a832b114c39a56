//! What a batch sees and records besides its table writes: reads served from memory (the
//! snapshot cache, the overlays) or from the last committed transaction, the bookkeeping
//! that unpins them once the batch is committed, and the step rows a request changed.

use super::{
    Arc, Batch, Cached, DLQ, IDEMPOTENCY, INSTANCES, InstanceId, InstanceSnapshot, QueueKey,
    RowKey, STEPS, StoreError, WorkKind, Writer, inst_key, read, redb_err,
};

impl Writer {
    // ----- reads -----------------------------------------------------------------------------

    /// The snapshot of `id` as the batch sees it, taken out of the cache (with its pin) or
    /// read from the last committed transaction (pin 0). The caller puts it back with
    /// [`SnapshotCache::put`].
    pub(super) fn take_snapshot(
        &mut self,
        id: InstanceId,
    ) -> Result<Option<(InstanceSnapshot, u64)>, StoreError> {
        match self.cache.take(id) {
            Some((Some(s), pin)) => Ok(Some((s, pin))),
            Some((None, pin)) => {
                self.cache.tombstone(id, pin);
                Ok(None)
            }
            None => Ok(self.read_snapshot(id)?.map(|s| (s, 0))),
        }
    }

    /// Reads the snapshot of an instance no pending batch wrote; the marks of its step rows go
    /// to the cache (the step rows written later must keep them).
    pub(super) fn read_snapshot(
        &mut self,
        id: InstanceId,
    ) -> Result<Option<InstanceSnapshot>, StoreError> {
        match read::snapshot_and_marks_in(self.view.txn(self.committed_seq)?, id)? {
            Some((snap, marks)) => {
                self.cache.set_marks(id, marks);
                Ok(Some(snap))
            }
            None => Ok(None),
        }
    }

    /// Whether instance `id` exists.
    pub(super) fn instance_exists(&mut self, id: InstanceId) -> Result<bool, StoreError> {
        match self.cache.get(id) {
            Cached::Live(_) => Ok(true),
            Cached::Gone => Ok(false),
            Cached::Miss => {
                let rtx = self.view.txn(self.committed_seq)?;
                let t = rtx.open_table(INSTANCES).map_err(redb_err)?;
                Ok(t.get(inst_key(id)).map_err(redb_err)?.is_some())
            }
        }
    }

    /// The instance an idempotency key maps to.
    pub(super) fn idempotency(
        &mut self,
        workflow: &str,
        key: &str,
    ) -> Result<Option<u128>, StoreError> {
        // The overlay is keyed by owned strings; this lookup allocates only on this
        // (rare) path: transitions whose key does not change skip it.
        if let Some((_, v)) = self
            .idem_overlay
            .get(&(workflow.to_owned(), key.to_owned()))
        {
            return Ok(*v);
        }
        let rtx = self.view.txn(self.committed_seq)?;
        let t = rtx.open_table(IDEMPOTENCY).map_err(redb_err)?;
        Ok(t.get((workflow, key)).map_err(redb_err)?.map(|v| v.value()))
    }

    /// Whether DLQ record `id` exists.
    pub(super) fn dlq_exists(&mut self, id: u64) -> Result<bool, StoreError> {
        if let Some((_, exists)) = self.dlq_overlay.get(&id) {
            return Ok(*exists);
        }
        let rtx = self.view.txn(self.committed_seq)?;
        let t = rtx.open_table(DLQ).map_err(redb_err)?;
        Ok(t.get(id).map_err(redb_err)?.is_some())
    }

    // ----- overlay-tracked writes ------------------------------------------------------------

    pub(super) fn write_idempotency(
        &mut self,
        b: &mut Batch,
        workflow: &str,
        key: &str,
        v: Option<u128>,
    ) {
        b.ops.idempotency(workflow, key, v);
        let k = (workflow.to_owned(), key.to_owned());
        self.idem_overlay.insert(k.clone(), (b.seq, v));
        b.touched.idempotency.push(k);
    }

    pub(super) fn write_dlq_exists(&mut self, b: &mut Batch, id: u64, exists: bool) {
        self.dlq_overlay.insert(id, (b.seq, exists));
        b.touched.dlq.push(id);
    }

    /// Puts `snap` back into the cache pinned to this batch (it wrote it).
    pub(super) fn keep_written(&mut self, b: &mut Batch, snap: InstanceSnapshot) {
        b.touched.instances.push(snap.instance.id);
        self.cache.put(snap, b.seq);
    }

    /// Records that the step row `(id, step)` changed in this batch.
    pub(super) fn mark_row(b: &mut Batch, id: InstanceId, step: &Arc<str>) {
        let key = (id, step.clone());
        if !b.row_set.contains(&key) {
            b.row_set.insert(key.clone());
            b.rows.push(key);
        }
    }

    /// Writes the step rows the last request changed, once each, from the state it leads to
    /// (the run from the instance's snapshot, the items from the claim index), and the `live`
    /// entries of the instances whose items came or went.
    ///
    /// Runs for every request, so it allocates nothing: the list of rows goes back into the
    /// batch for the next request, and a row's items are collected on the stack.
    pub(super) fn write_rows(&mut self, b: &mut Batch) -> Result<(), StoreError> {
        let mut rows = std::mem::take(&mut b.rows);
        let written = self.write_row_list(b, &rows);
        rows.clear();
        b.rows = rows;
        b.row_set.clear();
        written
    }

    fn write_row_list(&mut self, b: &mut Batch, rows: &[RowKey]) -> Result<(), StoreError> {
        let mut previous: Option<InstanceId> = None;
        for (id, step) in rows {
            // The `live` entry of each instance once (its rows are listed together; checking
            // one twice would find nothing left to change).
            if previous != Some(*id) {
                previous = Some(*id);
                self.write_live(b, *id);
            }
            // The run: from the snapshot (every instance a batch wrote is pinned in the
            // cache), else — a heartbeat only touched the item — from the last commit.
            let read_row;
            let (run, marks) = match self.cache.get_with_marks(*id, step) {
                (Cached::Live(s), m) => (s.steps.iter().find(|r| r.step == *step), m),
                (Cached::Gone, _) => continue,
                (Cached::Miss, _) => {
                    let rtx = self.view.txn(self.committed_seq)?;
                    let t = rtx.open_table(STEPS).map_err(redb_err)?;
                    read_row = read::row(&t, *id, step)?;
                    match &read_row {
                        Some(r) => (r.run.as_ref(), r.marks.as_slice()),
                        None => (None, &[][..]),
                    }
                }
            };
            // In `WorkKind` order, as `StepRow` keeps them (one key, its kind changed).
            let mut key = QueueKey {
                instance_id: *id,
                step: step.clone(),
                kind: WorkKind::Execute,
            };
            let mut found: [Option<&floxy_core::model::QueueItem>; 3] = [None; 3];
            for (slot, kind) in
                found
                    .iter_mut()
                    .zip([WorkKind::Execute, WorkKind::Compensate, WorkKind::Timer])
            {
                key.kind = kind;
                *slot = self.index.get(&key);
            }
            let k = inst_key(*id);
            let mut present = found.iter().flatten();
            match present.next() {
                None if run.is_none() => b.ops.remove_step(k, step),
                None => b.ops.step(k, step, run, &[], marks)?,
                Some(&first) => {
                    // The found items, packed at the front (the tail repeats the first and is
                    // not passed on).
                    let mut items = [first; 3];
                    let mut n = 1;
                    for &item in present {
                        if let Some(slot) = items.get_mut(n) {
                            *slot = item;
                        }
                        n += 1;
                    }
                    b.ops
                        .step(k, step, run, items.get(..n).unwrap_or(&items), marks)?;
                }
            }
        }
        Ok(())
    }

    /// Updates the `live` entry of `id` to whether it has queue items.
    fn write_live(&mut self, b: &mut Batch, id: InstanceId) {
        let k = inst_key(id);
        let has = self.index.has_items(id);
        if has != self.live.contains(&k) {
            b.ops.live(k, has);
            if has {
                self.live.insert(k);
            } else {
                self.live.remove(&k);
            }
        }
    }
}
