//! A batch's table writes, prepared ahead of the write transaction that applies them.
//!
//! The preparing thread (see [`crate::writer`]) runs transition functions, checks and
//! encodes records without a write transaction; what it would have written is recorded here
//! as [`Op`]s over one byte arena (one encoding buffer per batch, no allocation per record).
//! The committing thread ([`crate::commit`]) then opens the batch's write transaction,
//! replays the ops in order with [`Ops::apply`] and commits. Replaying in order gives the
//! same tables as writing in place would have.

use crate::layout::{
    DEFINITIONS, DLQ, DLQ_BY_INSTANCE, EVENTS, IDEMPOTENCY, INSTANCES, LIVE, META, META_COUNTERS,
    META_FORMAT_VERSION, META_WAL_LSN, STEPS, TERMINAL, encode_into, redb_err,
};
use floxy_core::model::{QueueItem, StepRun};
use floxy_core::store::StoreError;
use redb::{Table, WriteTransaction};
use std::ops::Range;
use std::sync::Arc;

/// One table write; values are ranges of the batch's arena.
#[derive(Debug)]
enum Op {
    Meta(&'static str, Range<usize>),
    Definition(String, Range<usize>),
    Instance(u128, Option<Range<usize>>),
    Step(u128, Arc<str>, Option<Range<usize>>),
    Live(u128, bool),
    Event(u128, u64, Range<usize>),
    /// Every event of an instance (retention).
    RemoveEvents(u128),
    Dlq(u64, Option<Range<usize>>),
    DlqByInstance(u128, u64, bool),
    Idempotency(String, String, Option<u128>),
    Terminal(i64, u128, bool),
}

/// The writes of one batch, in order.
#[derive(Debug, Default)]
pub(crate) struct Ops {
    arena: Vec<u8>,
    ops: Vec<Op>,
}

impl Ops {
    /// Empty, with room for `bytes` of records and `ops` writes (the size of the previous
    /// batch: growing the arena by doubling copies it over and over).
    pub(crate) fn with_capacity(bytes: usize, ops: usize) -> Self {
        Self {
            arena: Vec::with_capacity(bytes),
            ops: Vec::with_capacity(ops),
        }
    }

    /// Empties it, keeping its buffers: the committing thread hands applied batches back to
    /// the preparing thread, so a batch's arena is not allocated, grown by copying and freed
    /// on another thread every time (`realloc` and glibc's heap growth were among the
    /// preparing thread's top entries in `perf`).
    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.ops.clear();
    }

    /// The bytes of records and the number of writes held.
    pub(crate) fn size(&self) -> (usize, usize) {
        (self.arena.len(), self.ops.len())
    }

    /// Whether the batch writes nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Writes a meta value (already encoded).
    pub(crate) fn meta(&mut self, key: &'static str, bytes: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.ops.push(Op::Meta(key, start..self.arena.len()));
    }

    /// Writes a definition (already encoded: definitions are JSON).
    pub(crate) fn definition(&mut self, id: &str, bytes: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.ops
            .push(Op::Definition(id.to_owned(), start..self.arena.len()));
    }

    /// Writes an instance record.
    pub(crate) fn instance<T: serde::Serialize>(
        &mut self,
        k: u128,
        v: &T,
    ) -> Result<(), StoreError> {
        let r = encode_into(&mut self.arena, "instance record", v)?;
        self.ops.push(Op::Instance(k, Some(r)));
        Ok(())
    }

    /// Removes an instance record.
    pub(crate) fn remove_instance(&mut self, k: u128) {
        self.ops.push(Op::Instance(k, None));
    }

    /// Writes the step row of `run`, `items` (in kind order) and `marks` (the events the row
    /// keeps, see [`crate::row`]).
    pub(crate) fn step(
        &mut self,
        k: u128,
        step: &Arc<str>,
        run: Option<&StepRun>,
        items: &[&QueueItem],
        marks: &[crate::row::StepMark],
    ) -> Result<(), StoreError> {
        let r = crate::row::encode_step_row(&mut self.arena, run, items, marks)?;
        self.ops.push(Op::Step(k, step.clone(), Some(r)));
        Ok(())
    }

    /// Removes a step row.
    pub(crate) fn remove_step(&mut self, k: u128, step: &Arc<str>) {
        self.ops.push(Op::Step(k, step.clone(), None));
    }

    /// Marks (`true`) or unmarks an instance as having queue items.
    pub(crate) fn live(&mut self, k: u128, live: bool) {
        self.ops.push(Op::Live(k, live));
    }

    /// Writes the events of one transition (or claim), keyed by the first one's sequence.
    pub(crate) fn events(
        &mut self,
        k: u128,
        first_seq: u64,
        events: &[floxy_core::model::Event],
    ) -> Result<(), StoreError> {
        let r = crate::row::encode_events(&mut self.arena, events)?;
        self.ops.push(Op::Event(k, first_seq, r));
        Ok(())
    }

    /// Removes every event of an instance.
    pub(crate) fn remove_events(&mut self, k: u128) {
        self.ops.push(Op::RemoveEvents(k));
    }

    /// Writes a DLQ record.
    pub(crate) fn dlq<T: serde::Serialize>(&mut self, id: u64, v: &T) -> Result<(), StoreError> {
        let r = encode_into(&mut self.arena, "DLQ record", v)?;
        self.ops.push(Op::Dlq(id, Some(r)));
        Ok(())
    }

    /// Removes a DLQ record.
    pub(crate) fn remove_dlq(&mut self, id: u64) {
        self.ops.push(Op::Dlq(id, None));
    }

    /// Adds (`true`) or removes a `dlq_by_instance` entry.
    pub(crate) fn dlq_by_instance(&mut self, k: u128, id: u64, present: bool) {
        self.ops.push(Op::DlqByInstance(k, id, present));
    }

    /// Maps an idempotency key to an instance, or removes the mapping (`None`).
    pub(crate) fn idempotency(&mut self, workflow: &str, key: &str, instance: Option<u128>) {
        self.ops.push(Op::Idempotency(
            workflow.to_owned(),
            key.to_owned(),
            instance,
        ));
    }

    /// Adds (`true`) or removes a `terminal` entry.
    pub(crate) fn terminal(&mut self, at_ms: i64, k: u128, present: bool) {
        self.ops.push(Op::Terminal(at_ms, k, present));
    }

    /// Appends the batch's log form (see [`crate::wal`]) to `out`: the arena, then each op as a
    /// tag and its fields (integers little endian; strings and ranges as `u32` lengths and
    /// offsets). Read back by [`Ops::decode_log`].
    pub(crate) fn encode_log(&self, out: &mut Vec<u8>) {
        put_u32(out, self.arena.len());
        out.extend_from_slice(&self.arena);
        put_u32(out, self.ops.len());
        for op in &self.ops {
            match op {
                Op::Meta(k, v) => {
                    out.push(0);
                    put_str(out, k);
                    put_range(out, v);
                }
                Op::Definition(k, v) => {
                    out.push(1);
                    put_str(out, k);
                    put_range(out, v);
                }
                Op::Instance(k, v) => {
                    out.push(2);
                    out.extend_from_slice(&k.to_le_bytes());
                    put_opt_range(out, v.as_ref());
                }
                Op::Step(k, step, v) => {
                    out.push(3);
                    out.extend_from_slice(&k.to_le_bytes());
                    put_str(out, step);
                    put_opt_range(out, v.as_ref());
                }
                Op::Live(k, live) => {
                    out.push(4);
                    out.extend_from_slice(&k.to_le_bytes());
                    out.push(u8::from(*live));
                }
                Op::Event(k, seq, v) => {
                    out.push(5);
                    out.extend_from_slice(&k.to_le_bytes());
                    out.extend_from_slice(&seq.to_le_bytes());
                    put_range(out, v);
                }
                Op::RemoveEvents(k) => {
                    out.push(6);
                    out.extend_from_slice(&k.to_le_bytes());
                }
                Op::Dlq(id, v) => {
                    out.push(7);
                    out.extend_from_slice(&id.to_le_bytes());
                    put_opt_range(out, v.as_ref());
                }
                Op::DlqByInstance(k, id, present) => {
                    out.push(8);
                    out.extend_from_slice(&k.to_le_bytes());
                    out.extend_from_slice(&id.to_le_bytes());
                    out.push(u8::from(*present));
                }
                Op::Idempotency(w, key, instance) => {
                    out.push(9);
                    put_str(out, w);
                    put_str(out, key);
                    match instance {
                        Some(i) => {
                            out.push(1);
                            out.extend_from_slice(&i.to_le_bytes());
                        }
                        None => out.push(0),
                    }
                }
                Op::Terminal(at, k, present) => {
                    out.push(10);
                    out.extend_from_slice(&at.to_le_bytes());
                    out.extend_from_slice(&k.to_le_bytes());
                    out.push(u8::from(*present));
                }
            }
        }
    }

    /// Reads a batch written by [`Ops::encode_log`]; anything malformed is
    /// [`StoreError::Corrupt`].
    pub(crate) fn decode_log(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut r = LogReader { bytes, pos: 0 };
        let arena_len = r.u32()? as usize;
        let arena = r.take(arena_len)?.to_vec();
        let n = r.u32()? as usize;
        // Every op takes at least 9 bytes: a length beyond that is corrupt, not a reason to
        // allocate.
        let mut ops = Vec::with_capacity(n.min(bytes.len() / 9));
        for _ in 0..n {
            let op = match r.u8()? {
                0 => {
                    let key = r.str()?;
                    let Some(key) = [META_COUNTERS, META_FORMAT_VERSION, META_WAL_LSN]
                        .into_iter()
                        .find(|k| *k == key)
                    else {
                        return Err(corrupt(format!("unknown meta key {key:?}")));
                    };
                    Op::Meta(key, r.range(arena_len)?)
                }
                1 => Op::Definition(r.str()?.to_owned(), r.range(arena_len)?),
                2 => Op::Instance(r.u128()?, r.opt_range(arena_len)?),
                3 => Op::Step(r.u128()?, Arc::from(r.str()?), r.opt_range(arena_len)?),
                4 => Op::Live(r.u128()?, r.bool()?),
                5 => Op::Event(r.u128()?, r.u64()?, r.range(arena_len)?),
                6 => Op::RemoveEvents(r.u128()?),
                7 => Op::Dlq(r.u64()?, r.opt_range(arena_len)?),
                8 => Op::DlqByInstance(r.u128()?, r.u64()?, r.bool()?),
                9 => {
                    let w = r.str()?.to_owned();
                    let key = r.str()?.to_owned();
                    let instance = if r.bool()? { Some(r.u128()?) } else { None };
                    Op::Idempotency(w, key, instance)
                }
                10 => Op::Terminal(r.i64()?, r.u128()?, r.bool()?),
                t => return Err(corrupt(format!("unknown op tag {t}"))),
            };
            ops.push(op);
        }
        if r.pos != bytes.len() {
            return Err(corrupt(format!(
                "{} bytes after the last op",
                bytes.len() - r.pos
            )));
        }
        Ok(Self { arena, ops })
    }

    /// Replays every write, in order, in `txn`.
    pub(crate) fn apply(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut t = Tables::open(txn)?;
        let bytes = |r: &Range<usize>| self.arena.get(r.clone()).unwrap_or_default();
        for op in &self.ops {
            match op {
                Op::Meta(k, v) => drop(t.meta.insert(*k, bytes(v)).map_err(redb_err)?),
                Op::Definition(k, v) => {
                    drop(t.defs.insert(k.as_str(), bytes(v)).map_err(redb_err)?);
                }
                Op::Instance(k, Some(v)) => {
                    drop(t.instances.insert(*k, bytes(v)).map_err(redb_err)?)
                }
                Op::Instance(k, None) => drop(t.instances.remove(*k).map_err(redb_err)?),
                Op::Step(k, s, Some(v)) => {
                    drop(t.steps.insert((*k, &**s), bytes(v)).map_err(redb_err)?);
                }
                Op::Step(k, s, None) => drop(t.steps.remove((*k, &**s)).map_err(redb_err)?),
                Op::Live(k, true) => drop(t.live.insert(*k, ()).map_err(redb_err)?),
                Op::Live(k, false) => drop(t.live.remove(*k).map_err(redb_err)?),
                Op::Event(k, seq, v) => {
                    drop(t.events.insert((*k, *seq), bytes(v)).map_err(redb_err)?);
                }
                Op::RemoveEvents(k) => t
                    .events
                    .retain_in((*k, 0_u64)..=(*k, u64::MAX), |_, _| false)
                    .map_err(redb_err)?,
                Op::Dlq(id, Some(v)) => drop(t.dlq.insert(*id, bytes(v)).map_err(redb_err)?),
                Op::Dlq(id, None) => drop(t.dlq.remove(*id).map_err(redb_err)?),
                Op::DlqByInstance(k, id, true) => {
                    drop(t.dlq_by_instance.insert((*k, *id), ()).map_err(redb_err)?);
                }
                Op::DlqByInstance(k, id, false) => {
                    drop(t.dlq_by_instance.remove((*k, *id)).map_err(redb_err)?);
                }
                Op::Idempotency(w, key, Some(i)) => {
                    drop(
                        t.idem
                            .insert((w.as_str(), key.as_str()), *i)
                            .map_err(redb_err)?,
                    );
                }
                Op::Idempotency(w, key, None) => {
                    drop(
                        t.idem
                            .remove((w.as_str(), key.as_str()))
                            .map_err(redb_err)?,
                    );
                }
                Op::Terminal(at, k, true) => {
                    drop(t.terminal.insert((*at, *k), ()).map_err(redb_err)?);
                }
                Op::Terminal(at, k, false) => {
                    drop(t.terminal.remove((*at, *k)).map_err(redb_err)?);
                }
            }
        }
        Ok(())
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Batches are far below 4 GiB (the log refuses larger records before this matters).
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_range(out: &mut Vec<u8>, r: &Range<usize>) {
    put_u32(out, r.start);
    put_u32(out, r.end.saturating_sub(r.start));
}

fn put_opt_range(out: &mut Vec<u8>, r: Option<&Range<usize>>) {
    match r {
        Some(r) => {
            out.push(1);
            put_range(out, r);
        }
        None => out.push(0),
    }
}

fn corrupt(msg: String) -> StoreError {
    StoreError::Corrupt(format!("log record: {msg}"))
}

/// Reads the fields [`Ops::encode_log`] wrote.
struct LogReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> LogReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.pos.checked_add(n);
        let Some(s) = end.and_then(|e| self.bytes.get(self.pos..e)) else {
            return Err(corrupt(format!("ends inside a field at byte {}", self.pos)));
        };
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let s = self.take(N)?;
        <[u8; N]>::try_from(s).map_err(|_| corrupt("short field".to_owned()))
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.array::<1>()?[0])
    }

    fn bool(&mut self) -> Result<bool, StoreError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(corrupt(format!("{b} is not a flag"))),
        }
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn u128(&mut self) -> Result<u128, StoreError> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<&'a str, StoreError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|e| corrupt(format!("a string: {e}")))
    }

    /// A range of the arena (`arena` bytes long).
    fn range(&mut self, arena: usize) -> Result<Range<usize>, StoreError> {
        let start = self.u32()? as usize;
        let len = self.u32()? as usize;
        match start.checked_add(len) {
            Some(end) if end <= arena => Ok(start..end),
            _ => Err(corrupt(format!(
                "value {start}+{len} outside the {arena}-byte arena"
            ))),
        }
    }

    fn opt_range(&mut self, arena: usize) -> Result<Option<Range<usize>>, StoreError> {
        if self.bool()? {
            self.range(arena).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Every table, opened once per write transaction.
struct Tables<'t> {
    meta: Table<'t, &'static str, &'static [u8]>,
    defs: Table<'t, &'static str, &'static [u8]>,
    instances: Table<'t, u128, &'static [u8]>,
    steps: Table<'t, (u128, &'static str), &'static [u8]>,
    live: Table<'t, u128, ()>,
    events: Table<'t, (u128, u64), &'static [u8]>,
    dlq: Table<'t, u64, &'static [u8]>,
    dlq_by_instance: Table<'t, (u128, u64), ()>,
    idem: Table<'t, (&'static str, &'static str), u128>,
    terminal: Table<'t, (i64, u128), ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            meta: txn.open_table(META).map_err(redb_err)?,
            defs: txn.open_table(DEFINITIONS).map_err(redb_err)?,
            instances: txn.open_table(INSTANCES).map_err(redb_err)?,
            steps: txn.open_table(STEPS).map_err(redb_err)?,
            live: txn.open_table(LIVE).map_err(redb_err)?,
            events: txn.open_table(EVENTS).map_err(redb_err)?,
            dlq: txn.open_table(DLQ).map_err(redb_err)?,
            dlq_by_instance: txn.open_table(DLQ_BY_INSTANCE).map_err(redb_err)?,
            idem: txn.open_table(IDEMPOTENCY).map_err(redb_err)?,
            terminal: txn.open_table(TERMINAL).map_err(redb_err)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A batch with every kind of op.
    fn every_op() -> Ops {
        let mut ops = Ops::default();
        ops.meta(META_COUNTERS, b"counters");
        ops.definition("wf", b"{\"id\":\"wf\"}");
        ops.instance(7, &("record", 1)).unwrap();
        ops.remove_instance(8);
        let step: Arc<str> = Arc::from("charge card");
        ops.step(7, &step, None, &[], &[]).unwrap();
        ops.remove_step(7, &step);
        ops.live(7, true);
        ops.live(8, false);
        ops.events(7, 41, &[]).unwrap();
        ops.remove_events(8);
        ops.dlq(3, &"dlq record").unwrap();
        ops.remove_dlq(4);
        ops.dlq_by_instance(7, 3, true);
        ops.dlq_by_instance(8, 4, false);
        ops.idempotency("wf", "key-1", Some(7));
        ops.idempotency("wf", "key-2", None);
        ops.terminal(-5, 7, true);
        ops.terminal(i64::MAX, 8, false);
        ops.meta(META_WAL_LSN, &9_u64.to_be_bytes());
        ops
    }

    fn encoded(ops: &Ops) -> Vec<u8> {
        let mut out = Vec::new();
        ops.encode_log(&mut out);
        out
    }

    #[test]
    fn the_log_form_reads_back_as_the_same_batch() {
        let ops = every_op();
        let back = Ops::decode_log(&encoded(&ops)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{ops:?}"));
        assert_eq!(back.size(), ops.size());
        // And an empty batch.
        let empty = Ops::decode_log(&encoded(&Ops::default())).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn every_truncation_of_a_record_is_refused() {
        let bytes = encoded(&every_op());
        for len in 0..bytes.len() {
            let err = Ops::decode_log(&bytes[..len]).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{len}: {err}");
        }
    }

    #[test]
    fn malformed_records_are_refused_with_what_is_wrong() {
        let corrupt = |bytes: &[u8]| match Ops::decode_log(bytes) {
            Err(StoreError::Corrupt(m)) => m,
            other => panic!("not refused as corrupt: {other:?}"),
        };
        // Arena of 2 bytes, one op.
        let head = [
            2_u32.to_le_bytes().as_slice(),
            b"ab",
            1_u32.to_le_bytes().as_slice(),
        ]
        .concat();
        let with = |op: &[u8]| [head.as_slice(), op].concat();
        assert!(corrupt(&with(&[99])).contains("unknown op tag 99"));
        // Live(k, 2): a flag that is neither 0 nor 1.
        let mut live = vec![4_u8];
        live.extend_from_slice(&7_u128.to_le_bytes());
        live.push(2);
        assert!(corrupt(&with(&live)).contains("not a flag"));
        // Instance(k, Some(1..5)): a value outside the arena.
        let mut inst = vec![2_u8];
        inst.extend_from_slice(&7_u128.to_le_bytes());
        inst.push(1);
        inst.extend_from_slice(&1_u32.to_le_bytes());
        inst.extend_from_slice(&4_u32.to_le_bytes());
        assert!(corrupt(&with(&inst)).contains("outside the 2-byte arena"));
        // Meta with a key this build does not write.
        let mut meta = vec![0_u8];
        meta.extend_from_slice(&3_u32.to_le_bytes());
        meta.extend_from_slice(b"odd");
        meta.extend_from_slice(&0_u32.to_le_bytes());
        meta.extend_from_slice(&0_u32.to_le_bytes());
        assert!(corrupt(&with(&meta)).contains("unknown meta key"));
        // Bytes after the last op.
        let mut removed = vec![6_u8];
        removed.extend_from_slice(&7_u128.to_le_bytes());
        removed.push(0);
        assert!(corrupt(&with(&removed)).contains("after the last op"));
    }
}
