//! A batch's table writes, prepared ahead of the write transaction that applies them.
//!
//! The preparing thread (see [`crate::writer`]) runs transition functions, checks and
//! encodes records without a write transaction; what it would have written is recorded here
//! as [`Op`]s over one byte arena (one encoding buffer per batch, no allocation per record).
//! The committing thread ([`crate::commit`]) then opens the batch's write transaction,
//! replays the ops in order with [`Ops::apply`] and commits. Replaying in order gives the
//! same tables as writing in place would have.

use crate::layout::{
    DEFINITIONS, DLQ, DLQ_BY_INSTANCE, EVENTS, IDEMPOTENCY, INSTANCES, LIVE, META, STEPS, TERMINAL,
    encode_into, redb_err,
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
                    drop(t.instances.insert(*k, bytes(v)).map_err(redb_err)?);
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
