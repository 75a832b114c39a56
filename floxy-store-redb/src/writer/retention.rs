//! Retention: removing terminal instances older than a cut-off, one chunk per batch.

use super::{
    Batch, DLQ, DLQ_BY_INSTANCE, Fail, INSTANCES, InstanceId, STEPS, StoreError, TERMINAL,
    Timestamp, Writer, classify, fatal, read, redb_err, status_index,
};

impl Writer {
    // ----- retention -----------------------------------------------------------------------

    pub(super) fn cleanup(
        &mut self,
        b: &mut Batch,
        older_than: Timestamp,
        limit: usize,
    ) -> Result<u64, Fail> {
        // Runs alone, after every earlier batch committed: the read transaction is current.
        let mut victims: Vec<(i64, u128)> = Vec::new();
        {
            let rtx = self.view.txn(self.committed_seq).map_err(classify)?;
            let terminal = rtx.open_table(TERMINAL).map_err(fatal)?;
            for row in terminal
                .range::<(i64, u128)>(..(older_than.as_millis(), 0_u128))
                .map_err(fatal)?
            {
                if victims.len() >= limit {
                    break;
                }
                let (key, _) = row.map_err(fatal)?;
                victims.push(key.value());
            }
        }
        // From here on every error is fatal: the batch holds partial removals.
        let mut removed = 0;
        for (ts, k) in victims {
            self.remove_instance(b, ts, k).map_err(Fail::Fatal)?;
            removed += 1;
        }
        Ok(removed)
    }

    pub(super) fn remove_instance(
        &mut self,
        b: &mut Batch,
        ts: i64,
        k: u128,
    ) -> Result<(), StoreError> {
        b.ops.terminal(ts, k, false);
        let id = InstanceId::from_u128(k);
        let rtx = self.view.txn(self.committed_seq)?;
        let Some(rec) = read::instance(&rtx.open_table(INSTANCES).map_err(redb_err)?, id)? else {
            return Ok(());
        };
        let rows = read::rows(&rtx.open_table(STEPS).map_err(redb_err)?, id)?;
        let dlq_ids = read::dlq_ids(&rtx.open_table(DLQ_BY_INSTANCE).map_err(redb_err)?, id)?;
        let dlq = rtx.open_table(DLQ).map_err(redb_err)?;
        let mut dlq_present = Vec::with_capacity(dlq_ids.len());
        for d in dlq_ids {
            dlq_present.push((d, dlq.get(d.0).map_err(redb_err)?.is_some()));
        }
        drop(dlq);
        b.ops.remove_instance(k);
        self.cache.tombstone(id, b.seq);
        b.touched.instances.push(id);
        if let Some(c) = self
            .counters
            .status_counts
            .get_mut(status_index(rec.status))
        {
            *c = c.saturating_sub(1);
        }
        self.counters_dirty = true;
        if let Some(key) = &rec.idempotency_key
            && self.idempotency(rec.workflow_id.as_str(), key)? == Some(k)
        {
            self.write_idempotency(b, rec.workflow_id.as_str(), key, None);
        }
        for row in rows {
            let step = row
                .run
                .as_ref()
                .map(|r| r.step.clone())
                .or_else(|| row.items.first().map(|i| i.key.step.clone()));
            if let Some(step) = step {
                b.ops.remove_step(k, &step);
            }
            for item in row.items {
                self.index.remove(&item.key);
            }
        }
        if self.live.remove(&k) {
            b.ops.live(k, false);
        }
        b.ops.remove_events(k);
        for (d, present) in dlq_present {
            if present {
                b.ops.remove_dlq(d.0);
                self.write_dlq_exists(b, d.0, false);
                self.counters.dlq = self.counters.dlq.saturating_sub(1);
            }
            b.ops.dlq_by_instance(k, d.0, false);
        }
        Ok(())
    }
}
