//! The working copy of one instance while a transition is computed, and the bookkeeping
//! that turns its changes into a [`Transition`].

use super::TransitionError;
use crate::graph::{CompiledWorkflow, NodeId};
use crate::model::{
    BranchPhase, DlqId, DlqRecord, EventKind, InstanceRecord, InstanceSnapshot, LeaseCheck,
    NewDlqRecord, NewEvent, Payload, QueueItem, QueueKey, QueueOp, StepRun, StepStatus, StepWrite,
    Timestamp, Transition, WorkKind,
};
use std::collections::VecDeque;

/// Mutable view of an instance during one transition.
pub(super) struct Work<'a> {
    pub wf: &'a CompiledWorkflow,
    pub now: Timestamp,
    pub inst: InstanceRecord,
    pub dlq: &'a [DlqRecord],
    runs: Vec<Option<StepRun>>,
    orig: Vec<Option<StepStatus>>,
    dirty: Vec<bool>,
    queue: Vec<QueueOp>,
    events: Vec<NewEvent>,
    pub dlq_insert: Vec<NewDlqRecord>,
    pub dlq_delete: Vec<DlqId>,
    pub lease_check: Option<LeaseCheck>,
    /// Steps made ready in this transition, with their input, processed in FIFO order.
    pub ready: VecDeque<(NodeId, Payload)>,
}

impl<'a> Work<'a> {
    pub(super) fn new(wf: &'a CompiledWorkflow, inst: InstanceRecord, now: Timestamp) -> Self {
        let n = wf.nodes().len();
        Self {
            wf,
            now,
            inst,
            dlq: &[],
            runs: vec![None; n],
            orig: vec![None; n],
            dirty: vec![false; n],
            queue: Vec::new(),
            events: Vec::new(),
            dlq_insert: Vec::new(),
            dlq_delete: Vec::new(),
            lease_check: None,
            ready: VecDeque::new(),
        }
    }

    pub(super) fn from_snapshot(
        wf: &'a CompiledWorkflow,
        snap: &'a InstanceSnapshot,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        if snap.instance.workflow_id != *wf.id() {
            return Err(TransitionError::WorkflowMismatch {
                expected: wf.id().clone(),
                found: snap.instance.workflow_id.clone(),
            });
        }
        let mut w = Self::new(wf, snap.instance.clone(), now);
        w.dlq = &snap.dlq;
        for r in &snap.steps {
            let id = wf.find(&r.step).ok_or_else(|| {
                TransitionError::Corrupt(format!("step run {:?} is not in {}", r.step, wf.id()))
            })?;
            w.orig[id] = Some(r.status);
            w.runs[id] = Some(r.clone());
        }
        Ok(w)
    }

    pub(super) fn run(&self, n: NodeId) -> Option<&StepRun> {
        self.runs[n].as_ref()
    }

    pub(super) fn status(&self, n: NodeId) -> Option<StepStatus> {
        self.runs[n].as_ref().map(|r| r.status)
    }

    /// Node ids that have a run, in node order.
    pub(super) fn run_ids(&self) -> Vec<NodeId> {
        (0..self.runs.len())
            .filter(|&i| self.runs[i].is_some())
            .collect()
    }

    pub(super) fn run_mut(&mut self, n: NodeId) -> Result<&mut StepRun, TransitionError> {
        self.dirty[n] = true;
        let name = &self.wf.node(n).name;
        self.runs[n]
            .as_mut()
            .ok_or_else(|| TransitionError::UnknownStep {
                step: name.to_string(),
            })
    }

    /// Moves a run to `to`, checking the status table (a violation is a machine bug that
    /// must not reach the store).
    pub(super) fn set_status(&mut self, n: NodeId, to: StepStatus) -> Result<(), TransitionError> {
        let run = self.run_mut(n)?;
        if !run.status.can_become(to) {
            return Err(TransitionError::Corrupt(format!(
                "step {:?}: {} -> {} is not allowed",
                run.step, run.status, to
            )));
        }
        run.status = to;
        Ok(())
    }

    /// Creates (or, on requeue, replaces) the run of `n`.
    pub(super) fn create_run(
        &mut self,
        n: NodeId,
        status: StepStatus,
        input: Payload,
    ) -> &mut StepRun {
        let run = StepRun::new(
            self.inst.id,
            self.wf.node(n).name.clone(),
            status,
            input,
            self.now,
        );
        self.dirty[n] = true;
        self.runs[n].insert(run)
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.inst.completion_seq += 1;
        self.inst.completion_seq
    }

    pub(super) fn event(
        &mut self,
        kind: EventKind,
        step: Option<NodeId>,
        attempt: Option<u32>,
        detail: Option<serde_json::Value>,
    ) {
        self.events.push(NewEvent {
            kind,
            step: step.map(|n| self.wf.node(n).name.clone()),
            attempt,
            detail: detail.map(Payload::new),
        });
    }

    pub(super) fn key(&self, n: NodeId, kind: WorkKind) -> QueueKey {
        QueueKey {
            instance_id: self.inst.id,
            step: self.wf.node(n).name.clone(),
            kind,
        }
    }

    pub(super) fn enqueue(
        &mut self,
        n: NodeId,
        kind: WorkKind,
        handler: std::sync::Arc<str>,
        delay_ms: u64,
        priority: u8,
        attempt: u32,
    ) {
        let run_at = self.now.add_ms(delay_ms);
        let opts = &self.wf.definition().options;
        let item = QueueItem {
            key: self.key(n, kind),
            workflow_id: self.wf.id().clone(),
            handler,
            run_at,
            priority,
            order_key: QueueItem::order_key_for(run_at, priority, opts.aging_ms_per_point),
            attempt,
            lease_ttl_ms: opts.lease_ttl_ms,
            cancel_requested: false,
            lease: None,
        };
        self.queue.push(QueueOp::Upsert(item));
    }

    pub(super) fn dequeue(&mut self, n: NodeId, kind: WorkKind) {
        let key = self.key(n, kind);
        self.queue.push(QueueOp::Delete(key));
    }

    /// Asks the holder of `n`'s `kind` item (a running handler) to stop: its cancellation
    /// token fires (at once in the committing process, at the next heartbeat elsewhere).
    pub(super) fn request_cancel(&mut self, n: NodeId, kind: WorkKind) {
        let key = self.key(n, kind);
        self.queue.push(QueueOp::RequestCancel(key));
    }

    pub(super) fn branch_phase(&self, fork: NodeId, branch: u16) -> Option<BranchPhase> {
        let name = &self.wf.node(fork).name;
        self.inst
            .branches
            .iter()
            .find(|b| b.fork == *name && b.branch == branch)
            .map(|b| b.phase)
    }

    pub(super) fn branch_mut(
        &mut self,
        fork: NodeId,
        branch: u16,
    ) -> Option<&mut crate::model::BranchState> {
        let name = self.wf.node(fork).name.clone();
        self.inst
            .branches
            .iter_mut()
            .find(|b| b.fork == name && b.branch == branch)
    }

    /// Whether the path through `n` may still make forward progress.
    pub(super) fn path_live(&self, n: NodeId) -> bool {
        use crate::model::InstanceStatus as I;
        matches!(self.inst.status, I::Running | I::Dlq)
            && self
                .wf
                .node(n)
                .scope
                .iter()
                .all(|&(f, b)| self.branch_phase(f, b) == Some(BranchPhase::Running))
    }

    /// Turns the working copy into the transition.
    pub(super) fn finish(mut self, create: bool) -> Transition {
        self.inst.version += 1;
        self.inst.updated_at = self.now;
        let mut steps = Vec::new();
        for (i, run) in self.runs.into_iter().enumerate() {
            if let (true, Some(run)) = (self.dirty[i], run) {
                steps.push(StepWrite {
                    run,
                    expect: self.orig[i],
                });
            }
        }
        Transition {
            now: self.now,
            create,
            instance: self.inst,
            steps,
            queue: self.queue,
            events: self.events,
            dlq_insert: self.dlq_insert,
            dlq_delete: self.dlq_delete,
            lease_check: self.lease_check,
        }
    }
}
