//! Migration of a format-version-1 file to version 2, run by open in one write transaction
//! (so a failure leaves the version-1 file as it was).
//!
//! Version 2 keeps a step's queue items in its step row instead of a separate `queue`
//! table, lists the instances that have queue items in `live`, and stores the events of one
//! transition in one row. The migration rewrites every step row (version 1 held a bare step
//! run there), moves each queue item into its step's row (a row without a run when the item
//! has no step run), fills `live`, rewrites every event as a row of one, deletes the
//! version-1 `queue` table and records the new version. It holds the step rows and the
//! events in memory while it runs.

use crate::layout::{
    EVENTS, FORMAT_VERSION, LIVE, META, META_FORMAT_VERSION, QUEUE_V1, STEPS, StepRow, decode,
    decode_item, encode, redb_err,
};
use floxy_core::model::{Event, QueueItem, StepRun};
use floxy_core::store::StoreError;
use redb::{Database, ReadableTable};
use std::collections::BTreeMap;

/// Migrates `db` from version 1 to version 2.
pub(crate) fn v1_to_v2(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(redb_err)?;
    {
        let mut items: BTreeMap<(u128, String), Vec<QueueItem>> = BTreeMap::new();
        {
            let queue = txn.open_table(QUEUE_V1).map_err(redb_err)?;
            // Key order is (instance, step, kind): each row's items come out in kind order.
            for row in queue.range::<(u128, &str, u8)>(..).map_err(redb_err)? {
                let (k, v) = row.map_err(redb_err)?;
                let (id, step, _) = k.value();
                items
                    .entry((id, step.to_owned()))
                    .or_default()
                    .push(decode_item(v.value())?);
            }
        }
        let mut steps = txn.open_table(STEPS).map_err(redb_err)?;
        let mut rows: Vec<(u128, String, StepRow)> = Vec::new();
        for row in steps.range::<(u128, &str)>(..).map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let (id, step) = k.value();
            let run: StepRun = decode("version-1 step run", v.value())?;
            let items = items.remove(&(id, step.to_owned())).unwrap_or_default();
            rows.push((
                id,
                step.to_owned(),
                StepRow {
                    run: Some(run),
                    items,
                },
            ));
        }
        for ((id, step), items) in items {
            rows.push((id, step, StepRow { run: None, items }));
        }
        let mut live = txn.open_table(LIVE).map_err(redb_err)?;
        for (id, step, row) in &rows {
            let bytes = encode("step row", row)?;
            steps
                .insert((*id, step.as_str()), bytes.as_slice())
                .map_err(redb_err)?;
            if !row.items.is_empty() {
                live.insert(*id, ()).map_err(redb_err)?;
            }
        }
        let mut events = txn.open_table(EVENTS).map_err(redb_err)?;
        let mut rows: Vec<((u128, u64), Event)> = Vec::new();
        for row in events.range::<(u128, u64)>(..).map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            rows.push((k.value(), decode("version-1 event", v.value())?));
        }
        for (k, e) in rows {
            let bytes = encode("events", &[e])?;
            events.insert(k, bytes.as_slice()).map_err(redb_err)?;
        }
        let mut meta = txn.open_table(META).map_err(redb_err)?;
        meta.insert(META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes().as_slice())
            .map_err(redb_err)?;
    }
    txn.delete_table(QUEUE_V1).map_err(redb_err)?;
    txn.commit().map_err(redb_err)?;
    Ok(())
}
