//! From the spec structures to core workflow definitions, through the core's Builder (so
//! the core's validation applies), mapping its errors back to the flow's locations.

use crate::error::{Loc, Sink, SpecErrorKind as K, SpecErrors};
use crate::spec::{
    FlowFile, FlowSpec, JoinSpec, RejectSpec, RetryStrategySpec, StepSpec, StepType, TimeoutSpec,
};
use floxy_core::builder::Builder;
use floxy_core::model::{
    JoinStrategy, RejectPolicy, RetryStrategy, TimeoutPolicy, WorkflowDefinition,
};
use floxy_core::validate::DefinitionError;
use std::collections::HashMap;

impl FlowFile {
    /// One workflow definition per flow (version 1 unless `version:`), validated by the
    /// core. Each task's metadata gains `exec`: its handler's exec string as written.
    ///
    /// # Errors
    /// Every flow the core refuses, each problem at the place of the step it names.
    pub fn definitions(&self) -> Result<Vec<WorkflowDefinition>, SpecErrors> {
        let mut sink = Sink::new(&self.file);
        let defs = self.definitions_into(&mut sink);
        sink.finish().map(|()| defs)
    }

    pub(crate) fn definitions_into(&self, sink: &mut Sink) -> Vec<WorkflowDefinition> {
        let mut out = Vec::with_capacity(self.flows.len());
        for f in &self.flows {
            if let Some(d) = self.definition(f, sink) {
                out.push(d);
            }
        }
        out
    }

    fn definition(&self, f: &FlowSpec, sink: &mut Sink) -> Option<WorkflowDefinition> {
        let mut b = Builder::new(f.name.clone(), f.effective_version());
        if f.dlq {
            b = b.dlq(true);
        }
        if let Some(ms) = f.lease_ttl {
            b = b.lease_ttl_ms(ms);
        }
        let b = self.chain(b, &f.steps);
        match b.build() {
            Ok(d) => Some(d),
            Err(errors) => {
                let mut index: HashMap<String, Vec<(Loc, &str)>> = HashMap::new();
                for s in &f.steps {
                    index_steps(s, &mut index);
                }
                for e in errors.errors() {
                    let (loc, path) = locate(e, &index).unwrap_or((f.loc, f.path.as_str()));
                    sink.push(K::Definition, loc, path, e.to_string());
                }
                None
            }
        }
    }

    fn chain(&self, mut b: Builder, steps: &[StepSpec]) -> Builder {
        for s in steps {
            b = self.step(b, s);
        }
        b
    }

    fn step(&self, b: Builder, s: &StepSpec) -> Builder {
        match s.kind {
            StepType::Task => self.task(b, s),
            StepType::SavePoint => common(b.save_point(&s.name), s),
            StepType::Parallel => {
                let b = b.fork(&s.name, |mut f| {
                    for t in &s.tasks {
                        f = f.branch(|br| self.task(br, t));
                    }
                    f
                });
                common(b, s).join(&s.effective_join_name(), JoinStrategy::All)
            }
            StepType::Fork => {
                let b = b.fork(&s.name, |mut f| {
                    for branch in &s.branches {
                        f = f.branch(|br| self.chain(br, branch));
                    }
                    f
                });
                let b = common(b, s);
                let strategy = match s.join {
                    Some(JoinSpec::Any) => JoinStrategy::Any,
                    _ => JoinStrategy::All,
                };
                let join = s.effective_join_name();
                match &s.join_step {
                    Some(list) => {
                        let names: Vec<&str> = list.iter().map(String::as_str).collect();
                        b.join_step(&join, &names, strategy)
                    }
                    None => b.join(&join, strategy),
                }
            }
            StepType::Condition => {
                let b = common(b.condition(&s.name, s.expr.as_deref().unwrap_or("")), s);
                if s.else_steps.is_empty() {
                    b
                } else {
                    b.otherwise(|e| self.chain(e, &s.else_steps))
                }
            }
            StepType::Human => {
                let mut b = common(b.wait_human(&s.name), s);
                if let Some(r) = s.on_reject {
                    b = b.on_reject(match r {
                        RejectSpec::Abort => RejectPolicy::Abort,
                        RejectSpec::Rollback => RejectPolicy::RollBack,
                    });
                }
                if let Some(ms) = s.decision_timeout {
                    let policy = match s.on_timeout {
                        Some(TimeoutSpec::Confirm) => TimeoutPolicy::Confirm,
                        Some(TimeoutSpec::Fail) => TimeoutPolicy::Fail,
                        _ => TimeoutPolicy::Reject,
                    };
                    b = b.decision_timeout_ms(ms, policy);
                }
                b
            }
        }
    }

    fn task(&self, b: Builder, s: &StepSpec) -> Builder {
        let handler = s.effective_handler();
        let mut b = common(b.step(&s.name, handler), s);
        if let Some(h) = self.handler(handler) {
            b = b.metadata("exec", h.exec_text());
        }
        let comp = s
            .on_failure
            .as_deref()
            .or_else(|| s.compensation.as_ref().and_then(|c| c.handler.as_deref()));
        if let Some(c) = comp {
            b = b.on_failure(c, c);
            if let Some(cs) = &s.compensation {
                if let Some(n) = cs.max_retries {
                    b = b.compensation_max_retries(n);
                }
                if let Some(ms) = cs.retry_delay {
                    b = b.compensation_retry_delay_ms(ms);
                }
                if let Some(ms) = cs.timeout {
                    b = b.compensation_timeout_ms(ms);
                }
            }
        }
        if let Some(n) = s.max_retries {
            b = b.max_retries(n);
        }
        if s.no_idempotent {
            b = b.no_idempotent();
        }
        if let Some(ms) = s.delay {
            b = b.delay_ms(ms);
        }
        if let Some(ms) = s.retry_delay {
            b = b.retry_delay_ms(ms);
        }
        if let Some(st) = s.retry_strategy {
            b = b.retry_strategy(match st {
                RetryStrategySpec::Fixed => RetryStrategy::Fixed,
                RetryStrategySpec::Linear => RetryStrategy::Linear,
                RetryStrategySpec::Exponential => RetryStrategy::Exponential,
            });
        }
        if let Some(ms) = s.timeout {
            b = b.timeout_ms(ms);
        }
        b
    }
}

/// Options every kind accepts (applied to the step just added).
fn common(mut b: Builder, s: &StepSpec) -> Builder {
    if let Some(p) = s.priority {
        b = b.priority(p);
    }
    for (k, v) in &s.metadata {
        b = b.metadata(k, v);
    }
    b
}

fn index_steps<'a>(s: &'a StepSpec, index: &mut HashMap<String, Vec<(Loc, &'a str)>>) {
    index
        .entry(s.name.clone())
        .or_default()
        .push((s.loc, s.path.as_str()));
    if matches!(s.kind, StepType::Fork | StepType::Parallel) {
        // The join the flow generates is placed at its fork.
        index
            .entry(s.effective_join_name())
            .or_default()
            .push((s.loc, s.path.as_str()));
    }
    for t in s
        .tasks
        .iter()
        .chain(&s.else_steps)
        .chain(s.branches.iter().flatten())
    {
        index_steps(t, index);
    }
}

fn step_of(e: &DefinitionError) -> Option<&str> {
    match e {
        DefinitionError::DuplicateStep { step }
        | DefinitionError::ReservedName { step }
        | DefinitionError::UnknownReference { step, .. }
        | DefinitionError::ReachedTwice { step }
        | DefinitionError::Unreachable { step }
        | DefinitionError::ForkTooFewBranches { step, .. }
        | DefinitionError::ForkWithoutJoin { step }
        | DefinitionError::JoinNotAfterFork { step, .. }
        | DefinitionError::JoinWaitsOutside { step, .. }
        | DefinitionError::JoinEmptyWaitList { step }
        | DefinitionError::SavePointInBranch { step }
        | DefinitionError::EmptyHandler { step, .. }
        | DefinitionError::InvalidExpression { step, .. }
        | DefinitionError::ForkTooWide { step, .. }
        | DefinitionError::NestingTooDeep { step, .. }
        | DefinitionError::InvalidPriority { step, .. }
        | DefinitionError::TooManyRetries { step, .. } => Some(step),
        _ => None,
    }
}

fn locate<'a>(
    e: &DefinitionError,
    index: &HashMap<String, Vec<(Loc, &'a str)>>,
) -> Option<(Loc, &'a str)> {
    let name = step_of(e)?;
    let places = index.get(name)?;
    // A duplicate is reported where the name is used the second time.
    let pick = if matches!(e, DefinitionError::DuplicateStep { .. }) {
        places.get(1).or_else(|| places.first())
    } else {
        places.first()
    };
    pick.copied()
}
