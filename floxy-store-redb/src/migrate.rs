//! Migrations of older files to the current format ([`FORMAT_VERSION`]), run by open, each
//! in one write transaction (so a failure leaves the file as it was).
//!
//! * **Version 1 → 5.** Version 1 kept queue items in a `queue` table of their own, a bare
//!   step run in each step row, and one event per row. The migration rewrites every step row
//!   with its run and its queue items (a row without a run when an item has no step run),
//!   fills `live`, rewrites every event as a row of one, deletes the `queue` table and records
//!   the new version.
//! * **Version 2 → 5.** Version 3 only encodes step rows and event rows without the instance
//!   id and step name their keys hold ([`crate::row`]); the migration re-encodes every one.
//!
//! * **Version 3 or 4 → 5.** Same tables and rows; version 4 keeps a write-ahead log next to
//!   the file ([`crate::wal`]), version 5 keeps any event of a step in the step's row when its
//!   transition writes that row (version 4 did so only for the `step_started` events of
//!   claims, in a short form version 5 still reads). The migration records the new version.
//!
//! The first two hold the rows of the table being rewritten in memory while they run.

use crate::layout::{
    EVENTS, FORMAT_VERSION, LIVE, META, META_FORMAT_VERSION, QUEUE_V1, STEPS, StepRow, decode,
    decode_item, redb_err,
};
use crate::row::{encode_events, encode_step_row};
use floxy_core::model::{Event, InstanceId, QueueItem, StepRun};
use floxy_core::store::StoreError;
use redb::{Database, ReadableTable, WriteTransaction};
use std::collections::BTreeMap;

/// Migrates `db` from version 1.
pub(crate) fn from_v1(db: &Database) -> Result<(), StoreError> {
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
        let mut rows: Vec<(u128, String, StepRow)> = Vec::new();
        {
            let steps = txn.open_table(STEPS).map_err(redb_err)?;
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
                        marks: Vec::new(),
                    },
                ));
            }
        }
        for ((id, step), items) in items {
            rows.push((
                id,
                step,
                StepRow {
                    run: None,
                    items,
                    marks: Vec::new(),
                },
            ));
        }
        write_step_rows(&txn, &rows)?;
        let mut live = txn.open_table(LIVE).map_err(redb_err)?;
        for (id, _, row) in &rows {
            if !row.items.is_empty() {
                live.insert(*id, ()).map_err(redb_err)?;
            }
        }
        let mut events: Vec<((u128, u64), Vec<Event>)> = Vec::new();
        {
            let t = txn.open_table(EVENTS).map_err(redb_err)?;
            for row in t.range::<(u128, u64)>(..).map_err(redb_err)? {
                let (k, v) = row.map_err(redb_err)?;
                events.push((k.value(), vec![decode("version-1 event", v.value())?]));
            }
        }
        write_event_rows(&txn, &events)?;
        set_version(&txn)?;
    }
    txn.delete_table(QUEUE_V1).map_err(redb_err)?;
    txn.commit().map_err(redb_err)?;
    Ok(())
}

/// Migrates `db` from version 2.
pub(crate) fn from_v2(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(redb_err)?;
    {
        let mut rows: Vec<(u128, String, StepRow)> = Vec::new();
        {
            let steps = txn.open_table(STEPS).map_err(redb_err)?;
            for row in steps.range::<(u128, &str)>(..).map_err(redb_err)? {
                let (k, v) = row.map_err(redb_err)?;
                let (id, step) = k.value();
                rows.push((
                    id,
                    step.to_owned(),
                    decode("version-2 step row", v.value())?,
                ));
            }
        }
        write_step_rows(&txn, &rows)?;
        let mut events: Vec<((u128, u64), Vec<Event>)> = Vec::new();
        {
            let t = txn.open_table(EVENTS).map_err(redb_err)?;
            for row in t.range::<(u128, u64)>(..).map_err(redb_err)? {
                let (k, v) = row.map_err(redb_err)?;
                events.push((k.value(), decode("version-2 events", v.value())?));
            }
        }
        write_event_rows(&txn, &events)?;
        set_version(&txn)?;
    }
    txn.commit().map_err(redb_err)?;
    Ok(())
}

/// Writes step rows in the current encoding.
fn write_step_rows(
    txn: &WriteTransaction,
    rows: &[(u128, String, StepRow)],
) -> Result<(), StoreError> {
    let mut steps = txn.open_table(STEPS).map_err(redb_err)?;
    let mut buf = Vec::new();
    for (id, step, row) in rows {
        // Every run and item of a row must belong to it: the encoding drops their ids.
        let owned = |i: InstanceId, s: &str| i == InstanceId::from_u128(*id) && s == step;
        if row
            .run
            .as_ref()
            .is_some_and(|r| !owned(r.instance_id, &r.step))
            || row
                .items
                .iter()
                .any(|it| !owned(it.key.instance_id, &it.key.step))
        {
            return Err(StoreError::Corrupt(format!(
                "step row {}/{step} holds a run or queue item of another step",
                InstanceId::from_u128(*id)
            )));
        }
        buf.clear();
        let items: Vec<&QueueItem> = row.items.iter().collect();
        let r = encode_step_row(&mut buf, row.run.as_ref(), &items, &row.marks)?;
        steps
            .insert((*id, step.as_str()), buf.get(r).unwrap_or_default())
            .map_err(redb_err)?;
    }
    Ok(())
}

/// Writes event rows in the current encoding.
fn write_event_rows(
    txn: &WriteTransaction,
    rows: &[((u128, u64), Vec<Event>)],
) -> Result<(), StoreError> {
    let mut t = txn.open_table(EVENTS).map_err(redb_err)?;
    let mut buf = Vec::new();
    for (k, events) in rows {
        if let Some(e) = events
            .iter()
            .find(|e| e.instance_id != InstanceId::from_u128(k.0))
        {
            return Err(StoreError::Corrupt(format!(
                "event {} of instance {} is filed under instance {}",
                e.seq,
                e.instance_id,
                InstanceId::from_u128(k.0)
            )));
        }
        buf.clear();
        let r = encode_events(&mut buf, events)?;
        t.insert(*k, buf.get(r).unwrap_or_default())
            .map_err(redb_err)?;
    }
    Ok(())
}

/// Migrates `db` from version 3 or 4: the tables and rows are the same. Version 4 added the
/// write-ahead log, which a version-3 file does not have (an empty log is created at open);
/// version 5 adds step marks of any event kind, and version-4 rows hold only the short
/// form of claims, which version 5 reads as it always did.
pub(crate) fn from_v3_or_v4(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(redb_err)?;
    set_version(&txn)?;
    txn.commit().map_err(redb_err)?;
    Ok(())
}

fn set_version(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(redb_err)?;
    meta.insert(META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes().as_slice())
        .map_err(redb_err)?;
    Ok(())
}
