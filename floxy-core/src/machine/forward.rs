//! Forward progress: activating ready steps, evaluating structural steps in the same
//! transition, ending paths, and firing joins.

use super::TransitionError;
use super::work::Work;
use crate::graph::{NodeId, NodeKind};
use crate::model::{
    BranchPhase, BranchState, EventKind, InstanceStatus, JoinStrategy, Payload, StepStatus,
    TIMER_HANDLER, WorkKind,
};
use serde_json::{Map, Value, json};

impl Work<'_> {
    /// Processes every step made ready in this transition (FIFO, iterative: structural steps
    /// make their successors ready in the same transition).
    pub(super) fn drain_ready(&mut self) -> Result<(), TransitionError> {
        while let Some((n, input)) = self.ready.pop_front() {
            if self.path_live(n) {
                self.activate(n, input)?;
            }
        }
        Ok(())
    }

    fn activate(&mut self, n: NodeId, input: Payload) -> Result<(), TransitionError> {
        let wf = self.wf;
        let parked = self.inst.status == InstanceStatus::Dlq;
        match &wf.node(n).kind {
            NodeKind::Task { handler, .. } => {
                if parked {
                    self.create_run(n, StepStatus::Paused, input);
                    self.event(EventKind::StepPaused, Some(n), None, None);
                } else {
                    self.create_run(n, StepStatus::Pending, input);
                    let o = &wf.step_def(n).options;
                    self.enqueue(
                        n,
                        WorkKind::Execute,
                        handler.clone(),
                        o.delay_ms,
                        o.priority,
                        0,
                    );
                }
            }
            NodeKind::SavePoint => {
                self.complete_structural(n, input.clone(), input.clone());
                self.event(EventKind::SavePointReached, Some(n), None, None);
                self.advance(n, input)?;
            }
            NodeKind::Condition { expr, else_first } => match expr.eval(input.value()) {
                Ok(result) => {
                    self.complete_structural(n, input.clone(), input.clone());
                    self.event(
                        EventKind::ConditionCheck,
                        Some(n),
                        None,
                        Some(json!({ "result": result })),
                    );
                    if result {
                        self.advance(n, input)?;
                    } else if let Some(e) = else_first {
                        self.ready.push_back((*e, input));
                    } else {
                        self.path_end(n)?;
                    }
                }
                Err(e) => {
                    self.create_run(n, StepStatus::Pending, input);
                    self.final_failure(n, format!("condition evaluation failed: {e}"))?;
                }
            },
            NodeKind::Fork { branches, .. } => {
                self.complete_structural(n, input.clone(), input.clone());
                self.event(
                    EventKind::ForkStarted,
                    Some(n),
                    None,
                    Some(json!({ "branches": branches.len() })),
                );
                for (b, first) in branches.iter().enumerate() {
                    let branch = u16::try_from(b).unwrap_or(u16::MAX);
                    self.inst.branches.push(BranchState {
                        fork: wf.node(n).name.clone(),
                        branch,
                        phase: BranchPhase::Running,
                        end_step: None,
                    });
                    self.ready.push_back((*first, input.clone()));
                }
            }
            NodeKind::Join { .. } => {
                return Err(TransitionError::Corrupt(format!(
                    "join {:?} activated directly",
                    wf.node(n).name
                )));
            }
            NodeKind::Human { timeout_ms, .. } => {
                if parked {
                    self.create_run(n, StepStatus::Paused, input);
                    self.event(EventKind::StepPaused, Some(n), None, None);
                } else {
                    self.wait_for_human(n, input, *timeout_ms);
                }
            }
        }
        Ok(())
    }

    /// Puts a human step in `waiting_decision` (with its timeout timer).
    pub(super) fn wait_for_human(&mut self, n: NodeId, input: Payload, timeout_ms: Option<u64>) {
        self.create_run(n, StepStatus::WaitingDecision, input);
        self.event(EventKind::HumanDecisionWaiting, Some(n), None, None);
        if let Some(t) = timeout_ms {
            self.enqueue(
                n,
                WorkKind::Timer,
                TIMER_HANDLER.into(),
                t,
                crate::model::MAX_PRIORITY,
                0,
            );
        }
    }

    fn complete_structural(&mut self, n: NodeId, input: Payload, output: Payload) {
        let seq = self.next_seq();
        let now = self.now;
        let run = self.create_run(n, StepStatus::Completed, input);
        run.output = Some(output);
        run.completed_seq = Some(seq);
        run.finished_at = Some(now);
    }

    /// Continues after `n` completed with `output`.
    pub(super) fn advance(&mut self, n: NodeId, output: Payload) -> Result<(), TransitionError> {
        match self.wf.node(n).next {
            Some(next) => {
                self.ready.push_back((next, output));
                Ok(())
            }
            None => self.path_end(n),
        }
    }

    /// The path through `n` ended at `n`.
    fn path_end(&mut self, n: NodeId) -> Result<(), TransitionError> {
        match self.wf.node(n).branch() {
            None => {
                // Top-level path: its last output is the instance output.
                self.inst.output = self.run(n).and_then(|r| r.output.clone());
                Ok(())
            }
            Some((f, b)) => {
                let name = self.wf.node(n).name.clone();
                if let Some(bs) = self.branch_mut(f, b)
                    && bs.phase == BranchPhase::Running
                {
                    bs.phase = BranchPhase::Succeeded;
                    bs.end_step = Some(name);
                }
                self.evaluate_join(f)
            }
        }
    }

    /// After a forward success of `n`: joins with explicit wait lists that name it may fire.
    pub(super) fn notify_wait_lists(&mut self, n: NodeId) -> Result<(), TransitionError> {
        let scope = self.wf.node(n).scope.clone();
        for (f, _) in scope {
            if let NodeKind::Fork { join, .. } = self.wf.node(f).kind
                && let NodeKind::Join {
                    wait_for: Some(w), ..
                } = &self.wf.node(join).kind
                && w.contains(&n)
            {
                self.evaluate_join(f)?;
            }
        }
        Ok(())
    }

    /// Fires the join of fork `f` if its wait condition holds.
    pub(super) fn evaluate_join(&mut self, f: NodeId) -> Result<(), TransitionError> {
        let wf = self.wf;
        let NodeKind::Fork { branches, join } = &wf.node(f).kind else {
            return Err(TransitionError::Corrupt("join of a non-fork".into()));
        };
        let join = *join;
        if self.run(join).is_some() || !self.path_live(f) {
            return Ok(());
        }
        let NodeKind::Join {
            strategy, wait_for, ..
        } = &wf.node(join).kind
        else {
            return Err(TransitionError::Corrupt("fork without join".into()));
        };
        let phases: Vec<Option<BranchPhase>> = (0..branches.len())
            .map(|b| self.branch_phase(f, u16::try_from(b).unwrap_or(u16::MAX)))
            .collect();
        let ended = |p: &Option<BranchPhase>| {
            !matches!(p, Some(BranchPhase::Running | BranchPhase::RollingBack))
        };
        let succeeded = |p: &Option<BranchPhase>| *p == Some(BranchPhase::Succeeded);
        let fire = match (wait_for, strategy) {
            (None, JoinStrategy::All) => phases.iter().all(succeeded),
            (None, JoinStrategy::Any) => phases.iter().any(succeeded),
            (Some(w), strategy) => {
                let done = |s: &NodeId| self.status(*s).is_some_and(StepStatus::is_success);
                let branch_of = |s: &NodeId| {
                    wf.node(*s)
                        .scope
                        .iter()
                        .find(|(ff, _)| *ff == f)
                        .map(|x| x.1)
                };
                let settled = |s: &NodeId| {
                    done(s) || branch_of(s).is_some_and(|b| succeeded(&phases[usize::from(b)]))
                };
                match strategy {
                    // A failed branch of an `all` fork rolls the instance back, so only
                    // success or a path not taken can settle a waited step here.
                    JoinStrategy::All => w.iter().all(settled),
                    JoinStrategy::Any => {
                        w.iter().any(done)
                            || (phases.iter().all(ended) && phases.iter().any(succeeded))
                    }
                }
            }
        };
        if fire {
            self.fire_join(f, join, wait_for.as_deref())?;
        }
        Ok(())
    }

    fn fire_join(
        &mut self,
        f: NodeId,
        join: NodeId,
        wait_for: Option<&[NodeId]>,
    ) -> Result<(), TransitionError> {
        let wf = self.wf;
        let fork_name = wf.node(f).name.clone();
        let mut outputs = Map::new();
        let mut completed = Vec::new();
        let mut failed = Vec::new();
        for bs in self.inst.branches.iter().filter(|b| b.fork == fork_name) {
            match (bs.phase, &bs.end_step) {
                (BranchPhase::Succeeded, Some(end)) if wait_for.is_none() => {
                    completed.push(Value::String(end.to_string()));
                }
                (BranchPhase::Failed | BranchPhase::RollingBack, Some(end)) => {
                    failed.push(Value::String(end.to_string()));
                }
                _ => {}
            }
        }
        if let Some(w) = wait_for {
            for s in w {
                if self.status(*s).is_some_and(StepStatus::is_success) {
                    completed.push(Value::String(wf.node(*s).name.to_string()));
                }
            }
        }
        for c in &completed {
            if let Some(name) = c.as_str() {
                let out = wf
                    .find(name)
                    .and_then(|id| self.run(id))
                    .and_then(|r| r.output.clone())
                    .map_or(Value::Null, |p| p.value().clone());
                outputs.insert(name.to_string(), out);
            }
        }
        let output =
            Payload::new(json!({ "outputs": outputs, "completed": completed, "failed": failed }));
        self.event(EventKind::JoinReady, Some(join), None, None);
        self.complete_structural(join, output.clone(), output.clone());
        self.event(EventKind::JoinCompleted, Some(join), None, None);
        self.advance(join, output)
    }
}
