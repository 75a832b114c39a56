//! Reads shared by the writer (through a read transaction of the last committed batch) and
//! by readers (inside a read transaction on the calling task).

use crate::cache::Marks;
use crate::layout::{StepRow, decode_dlq, decode_instance, inst_key, redb_err};
use crate::row::{decode_events, decode_step_marks, decode_step_row};
use floxy_core::model::{
    DlqId, DlqRecord, Event, InstanceId, InstanceRecord, InstanceSnapshot, QueueItem, StepName,
    StepRun,
};
use floxy_core::store::StoreError;
use redb::ReadableTable;

/// Reads an instance record.
pub(crate) fn instance<T>(t: &T, id: InstanceId) -> Result<Option<InstanceRecord>, StoreError>
where
    T: ReadableTable<u128, &'static [u8]>,
{
    match t.get(inst_key(id)).map_err(redb_err)? {
        Some(v) => decode_instance(v.value()).map(Some),
        None => Ok(None),
    }
}

/// Reads every step row of an instance, in step name order.
pub(crate) fn rows<T>(t: &T, id: InstanceId) -> Result<Vec<StepRow>, StoreError>
where
    T: ReadableTable<(u128, &'static str), &'static [u8]>,
{
    Ok(named_rows(t, id)?.into_iter().map(|(_, r)| r).collect())
}

/// Reads every step row of an instance with its step name, in step name order.
pub(crate) fn named_rows<T>(t: &T, id: InstanceId) -> Result<Vec<(StepName, StepRow)>, StoreError>
where
    T: ReadableTable<(u128, &'static str), &'static [u8]>,
{
    let k = inst_key(id);
    let mut out = Vec::new();
    for row in t.range((k, "")..).map_err(redb_err)? {
        let (key, value) = row.map_err(redb_err)?;
        let (rk, step) = key.value();
        if rk != k {
            break;
        }
        let step = StepName::from(step);
        let row = decode_step_row(id, &step, value.value())?;
        out.push((step, row));
    }
    Ok(out)
}

/// Reads one step row.
pub(crate) fn row<T>(t: &T, id: InstanceId, step: &str) -> Result<Option<StepRow>, StoreError>
where
    T: ReadableTable<(u128, &'static str), &'static [u8]>,
{
    match t.get((inst_key(id), step)).map_err(redb_err)? {
        Some(v) => decode_step_row(id, &StepName::from(step), v.value()).map(Some),
        None => Ok(None),
    }
}

/// Reads every step run of an instance, in name order.
pub(crate) fn steps<T>(t: &T, id: InstanceId) -> Result<Vec<StepRun>, StoreError>
where
    T: ReadableTable<(u128, &'static str), &'static [u8]>,
{
    Ok(rows(t, id)?.into_iter().filter_map(|r| r.run).collect())
}

/// The DLQ ids of an instance, in id order.
pub(crate) fn dlq_ids<T>(t: &T, id: InstanceId) -> Result<Vec<DlqId>, StoreError>
where
    T: ReadableTable<(u128, u64), ()>,
{
    let k = inst_key(id);
    let mut out = Vec::new();
    for row in t.range((k, 0_u64)..=(k, u64::MAX)).map_err(redb_err)? {
        let (key, _) = row.map_err(redb_err)?;
        out.push(DlqId(key.value().1));
    }
    Ok(out)
}

/// Reads one DLQ record.
pub(crate) fn dlq<T>(t: &T, id: DlqId) -> Result<Option<DlqRecord>, StoreError>
where
    T: ReadableTable<u64, &'static [u8]>,
{
    match t.get(id.0).map_err(redb_err)? {
        Some(v) => decode_dlq(v.value()).map(Some),
        None => Ok(None),
    }
}

/// The tables a snapshot is read from.
pub(crate) struct SnapshotTables<'a, I, S, B, D> {
    /// `instances`.
    pub(crate) instances: &'a I,
    /// `steps`.
    pub(crate) steps: &'a S,
    /// `dlq_by_instance`.
    pub(crate) dlq_by_instance: &'a B,
    /// `dlq`.
    pub(crate) dlq: &'a D,
}

impl<I, S, B, D> SnapshotTables<'_, I, S, B, D>
where
    I: ReadableTable<u128, &'static [u8]>,
    S: ReadableTable<(u128, &'static str), &'static [u8]>,
    B: ReadableTable<(u128, u64), ()>,
    D: ReadableTable<u64, &'static [u8]>,
{
    /// Reads the snapshot of an instance (record, step runs in name order, DLQ records in id
    /// order) and the step marks its step rows hold.
    pub(crate) fn snapshot_and_marks(
        &self,
        id: InstanceId,
    ) -> Result<Option<(InstanceSnapshot, Marks)>, StoreError> {
        let Some(instance) = instance(self.instances, id)? else {
            return Ok(None);
        };
        let mut steps = Vec::new();
        let mut marks = Marks::new();
        for (name, row) in named_rows(self.steps, id)? {
            if let Some(run) = row.run {
                steps.push(run);
            }
            if !row.marks.is_empty() {
                marks.push((name, row.marks));
            }
        }
        let mut records = Vec::new();
        for d in dlq_ids(self.dlq_by_instance, id)? {
            match dlq(self.dlq, d)? {
                Some(r) => records.push(r),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "DLQ record {d} of instance {id} is indexed but missing"
                    )));
                }
            }
        }
        Ok(Some((
            InstanceSnapshot {
                instance,
                steps,
                dlq: records,
            },
            marks,
        )))
    }
}

/// Reads the snapshot of an instance in a read transaction.
pub(crate) fn snapshot_in(
    rtx: &redb::ReadTransaction,
    id: InstanceId,
) -> Result<Option<InstanceSnapshot>, StoreError> {
    Ok(snapshot_and_marks_in(rtx, id)?.map(|(s, _)| s))
}

/// Reads the snapshot of an instance and the step marks its step rows hold, in a read
/// transaction.
pub(crate) fn snapshot_and_marks_in(
    rtx: &redb::ReadTransaction,
    id: InstanceId,
) -> Result<Option<(InstanceSnapshot, Marks)>, StoreError> {
    use crate::layout::{DLQ, DLQ_BY_INSTANCE, INSTANCES, STEPS};
    let instances = rtx.open_table(INSTANCES).map_err(redb_err)?;
    let steps = rtx.open_table(STEPS).map_err(redb_err)?;
    let dlq_by_instance = rtx.open_table(DLQ_BY_INSTANCE).map_err(redb_err)?;
    let dlq = rtx.open_table(DLQ).map_err(redb_err)?;
    SnapshotTables {
        instances: &instances,
        steps: &steps,
        dlq_by_instance: &dlq_by_instance,
        dlq: &dlq,
    }
    .snapshot_and_marks(id)
}

/// Reads the queue items of an instance (from its step rows), in key order.
pub(crate) fn queue<T>(t: &T, id: InstanceId) -> Result<Vec<QueueItem>, StoreError>
where
    T: ReadableTable<(u128, &'static str), &'static [u8]>,
{
    Ok(rows(t, id)?.into_iter().flat_map(|r| r.items).collect())
}

/// Reads events of an instance after `after_seq`, at most `limit`: the rows of `events`
/// (`t`) merged, in sequence order, with the step marks the instance's step rows hold
/// (`steps`).
pub(crate) fn events<T, S>(
    t: &T,
    steps: &S,
    id: InstanceId,
    after_seq: Option<u64>,
    limit: usize,
) -> Result<Vec<Event>, StoreError>
where
    T: ReadableTable<(u128, u64), &'static [u8]>,
    S: ReadableTable<(u128, &'static str), &'static [u8]>,
{
    // The marked events: a few per step, all read (a step row is read whole anyway).
    // Only the marks are decoded: runs and items are skipped.
    let k = inst_key(id);
    let mut marked: Vec<Event> = Vec::new();
    for row in steps.range((k, "")..).map_err(redb_err)? {
        let (key, value) = row.map_err(redb_err)?;
        let (rk, step) = key.value();
        if rk != k {
            break;
        }
        let marks = decode_step_marks(value.value())?;
        if marks.is_empty() {
            continue;
        }
        let step = StepName::from(step);
        for m in marks.iter().filter(|m| after_seq.is_none_or(|s| m.seq > s)) {
            marked.push(m.event(id, &step));
        }
    }
    marked.sort_by_key(|e| e.seq);
    let mut marked = marked.into_iter().peekable();
    // The first wanted event is in the last row that starts at or before it.
    let start = match after_seq {
        None => 0,
        Some(s) => {
            let Some(first) = s.checked_add(1) else {
                return Ok(Vec::new());
            };
            match t.range((k, 0)..=(k, first)).map_err(redb_err)?.next_back() {
                Some(row) => row.map_err(redb_err)?.0.value().1,
                None => 0,
            }
        }
    };
    let mut out = Vec::new();
    'rows: for row in t.range((k, start)..=(k, u64::MAX)).map_err(redb_err)? {
        let (_, value) = row.map_err(redb_err)?;
        for e in decode_events(id, value.value())? {
            if after_seq.is_some_and(|s| e.seq <= s) {
                continue;
            }
            while let Some(c) = marked.next_if(|c| c.seq < e.seq) {
                if out.len() >= limit {
                    break 'rows;
                }
                out.push(c);
            }
            if out.len() >= limit {
                break 'rows;
            }
            out.push(e);
        }
    }
    for c in marked {
        if out.len() >= limit {
            break;
        }
        out.push(c);
    }
    Ok(out)
}
