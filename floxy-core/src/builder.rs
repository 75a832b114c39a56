//! The builder DSL.
//!
//! ```
//! use floxy_core::builder::Builder;
//! use floxy_core::model::JoinStrategy;
//!
//! let def = Builder::new("order", 1)
//!     .step("reserve", "stock.reserve").on_failure("release", "stock.release")
//!     .then("charge", "payment.charge").max_retries(5).timeout_ms(2_000)
//!     .on_failure("refund", "payment.refund")
//!     .save_point("paid")
//!     .fork("ship", |f| f
//!         .branch(|b| b.step("label", "shipping.label"))
//!         .branch(|b| b.step("notify", "mail.send")))
//!     .join("shipped", JoinStrategy::All)
//!     .condition("big", "{{ gt .amount 100 }}")
//!     .otherwise(|e| e.step("small_gift", "gift.small"))
//!     .then("big_gift", "gift.big")
//!     .build()
//!     .unwrap();
//! assert_eq!(def.id().as_str(), "order-v1");
//! ```
//!
//! Step options (`max_retries`, `timeout_ms`, ...) apply to the step added last. Errors are
//! collected and returned together by [`Builder::build`].

use crate::graph::CompiledWorkflow;
use crate::model::{
    Compensation, JoinStrategy, RejectPolicy, RetryPolicy, RetryStrategy, StepDef, StepKind,
    StepName, StepOptions, TimeoutPolicy, WorkflowDefinition, WorkflowOptions,
};
use crate::validate::{DefinitionError, DefinitionErrors};

/// Builds a [`WorkflowDefinition`] (or, inside closures, a chain of steps).
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    name: String,
    version: u32,
    options: WorkflowOptions,
    steps: Vec<StepDef>,
    errors: Vec<DefinitionError>,
    /// Step the next `then` attaches to.
    tail: Option<usize>,
    /// Step the option methods apply to.
    last: Option<usize>,
    /// A sub-chain (fork branch or else arm): workflow options are refused.
    is_chain: bool,
}

/// Collects the branches of a fork.
#[derive(Debug, Default)]
#[must_use]
pub struct ForkBuilder {
    branches: Vec<Builder>,
}

impl ForkBuilder {
    /// Adds a branch built by `f` (which receives an empty chain).
    pub fn branch(mut self, f: impl FnOnce(Builder) -> Builder) -> Self {
        self.branches.push(f(Builder::chain()));
        self
    }
}

impl Builder {
    /// Starts a workflow definition named `name` at `version`.
    pub fn new(name: impl Into<String>, version: u32) -> Self {
        Self {
            name: name.into(),
            version,
            options: WorkflowOptions::default(),
            steps: Vec::new(),
            errors: Vec::new(),
            tail: None,
            last: None,
            is_chain: false,
        }
    }

    fn chain() -> Self {
        let mut b = Self::new("", 1);
        b.is_chain = true;
        b
    }

    fn err(&mut self, msg: impl Into<String>) {
        self.errors.push(DefinitionError::Builder(msg.into()));
    }

    fn wf_option(mut self, name: &str, f: impl FnOnce(&mut WorkflowOptions)) -> Self {
        if self.is_chain {
            self.err(format!("workflow option {name} used inside a branch"));
        } else {
            f(&mut self.options);
        }
        self
    }

    /// DLQ mode: final failures park the instance in `dlq` instead of rolling back.
    pub fn dlq(self, enabled: bool) -> Self {
        self.wf_option("dlq", |o| o.dlq_enabled = enabled)
    }
    /// Lease TTL of claimed work.
    pub fn lease_ttl_ms(self, ms: u64) -> Self {
        self.wf_option("lease_ttl_ms", |o| o.lease_ttl_ms = ms)
    }
    /// Retries of steps that set none.
    pub fn default_max_retries(self, n: u32) -> Self {
        self.wf_option("default_max_retries", |o| o.default_max_retries = n)
    }
    /// Bound on payload size.
    pub fn max_payload_bytes(self, n: usize) -> Self {
        self.wf_option("max_payload_bytes", |o| o.max_payload_bytes = n)
    }
    /// Priority aging: milliseconds of waiting worth one priority point.
    pub fn aging_ms_per_point(self, ms: u64) -> Self {
        self.wf_option("aging_ms_per_point", |o| o.aging_ms_per_point = ms)
    }

    fn push(mut self, name: &str, kind: StepKind) -> Self {
        let idx = self.steps.len();
        let name: StepName = name.into();
        if let Some(t) = self.tail {
            let tail = &mut self.steps[t];
            match (&tail.kind, &kind) {
                (StepKind::Fork { .. }, StepKind::Join { .. }) => {}
                (StepKind::Fork { .. }, _) => {
                    let msg = format!("fork {:?} must be followed by join or join_step", tail.name);
                    self.errors.push(DefinitionError::Builder(msg));
                }
                _ => {}
            }
            self.steps[t].next = Some(name.clone());
        } else if !self.steps.is_empty() {
            self.err(format!("step {name:?} has no predecessor"));
        }
        self.steps.push(StepDef {
            name,
            kind,
            next: None,
            options: StepOptions::default(),
        });
        self.tail = Some(idx);
        self.last = Some(idx);
        self
    }

    /// Adds a task running `handler` (first step of a chain).
    pub fn step(self, name: &str, handler: &str) -> Self {
        self.push(
            name,
            StepKind::Task {
                handler: handler.into(),
                on_failure: None,
            },
        )
    }

    /// Adds a task after the previous step (same as [`Builder::step`]).
    pub fn then(self, name: &str, handler: &str) -> Self {
        self.step(name, handler)
    }

    /// Gives the last task a compensation `name` running `handler`.
    pub fn on_failure(mut self, name: &str, handler: &str) -> Self {
        match self.last.map(|i| &mut self.steps[i].kind) {
            Some(StepKind::Task { on_failure, .. }) => {
                *on_failure = Some(Compensation {
                    name: name.into(),
                    handler: handler.into(),
                    retry: RetryPolicy::default(),
                    timeout_ms: None,
                });
            }
            _ => self.err(format!("on_failure({name:?}) must follow a task")),
        }
        self
    }

    fn compensation(mut self, what: &str, f: impl FnOnce(&mut Compensation)) -> Self {
        match self.last.map(|i| &mut self.steps[i].kind) {
            Some(StepKind::Task {
                on_failure: Some(c),
                ..
            }) => f(c),
            _ => self.err(format!("{what} must follow on_failure")),
        }
        self
    }

    /// Retries of the last task's compensation.
    pub fn compensation_max_retries(self, n: u32) -> Self {
        self.compensation("compensation_max_retries", |c| {
            c.retry.max_retries = Some(n);
        })
    }
    /// Base retry delay of the last task's compensation.
    pub fn compensation_retry_delay_ms(self, ms: u64) -> Self {
        self.compensation("compensation_retry_delay_ms", |c| c.retry.delay_ms = ms)
    }
    /// Timeout of one call of the last task's compensation.
    pub fn compensation_timeout_ms(self, ms: u64) -> Self {
        self.compensation("compensation_timeout_ms", |c| c.timeout_ms = Some(ms))
    }

    /// Adds a savepoint: rollbacks of later steps stop here.
    pub fn save_point(self, name: &str) -> Self {
        self.push(name, StepKind::SavePoint)
    }

    /// Adds a fork whose branches are built by `f`; follow it with [`Builder::join`] or
    /// [`Builder::join_step`].
    pub fn fork(mut self, name: &str, f: impl FnOnce(ForkBuilder) -> ForkBuilder) -> Self {
        let fork = f(ForkBuilder::default());
        let mut firsts = Vec::with_capacity(fork.branches.len());
        let mut absorbed = Vec::new();
        for (i, b) in fork.branches.into_iter().enumerate() {
            match b.steps.first() {
                Some(s) => firsts.push(s.name.clone()),
                None => self.err(format!("branch {i} of fork {name:?} is empty")),
            }
            self.errors.extend(b.errors);
            absorbed.extend(b.steps);
        }
        let mut me = self.push(name, StepKind::Fork { branches: firsts });
        me.steps.extend(absorbed);
        me
    }

    fn fork_tail(&mut self, join: &str) -> Option<StepName> {
        if let Some(StepDef {
            kind: StepKind::Fork { .. },
            name,
            ..
        }) = self.tail.map(|t| &self.steps[t])
        {
            Some(name.clone())
        } else {
            self.err(format!("join {join:?} must directly follow a fork"));
            None
        }
    }

    /// Adds the join of the preceding fork, waiting on its branches.
    pub fn join(mut self, name: &str, strategy: JoinStrategy) -> Self {
        let fork = self.fork_tail(name).unwrap_or_else(|| "".into());
        self.push(
            name,
            StepKind::Join {
                fork,
                strategy,
                wait_for: None,
            },
        )
    }

    /// Adds the join of the preceding fork, waiting on exactly the named steps of its
    /// branches.
    pub fn join_step(mut self, name: &str, wait_for: &[&str], strategy: JoinStrategy) -> Self {
        let fork = self.fork_tail(name).unwrap_or_else(|| "".into());
        let wait_for = Some(wait_for.iter().map(|s| StepName::from(*s)).collect());
        self.push(
            name,
            StepKind::Join {
                fork,
                strategy,
                wait_for,
            },
        )
    }

    /// Adds a condition: the chain continues when `expr` is true; see
    /// [`Builder::otherwise`] for the false arm.
    pub fn condition(self, name: &str, expr: &str) -> Self {
        self.push(
            name,
            StepKind::Condition {
                expr: expr.into(),
                else_first: None,
            },
        )
    }

    /// Gives the last condition an else chain built by `f`.
    pub fn otherwise(mut self, f: impl FnOnce(Builder) -> Builder) -> Self {
        let chain = f(Builder::chain());
        self.errors.extend(chain.errors);
        let first = chain.steps.first().map(|s| s.name.clone());
        match (self.last.map(|i| &mut self.steps[i].kind), first) {
            (Some(StepKind::Condition { else_first, .. }), Some(first)) => {
                *else_first = Some(first);
            }
            (Some(StepKind::Condition { .. }), None) => self.err("else chain is empty"),
            _ => self.err("otherwise must follow a condition"),
        }
        self.steps.extend(chain.steps);
        self
    }

    /// Adds a human step waiting for a decision.
    pub fn wait_human(self, name: &str) -> Self {
        self.push(
            name,
            StepKind::Human {
                on_reject: RejectPolicy::Abort,
                timeout_ms: None,
                on_timeout: TimeoutPolicy::Reject,
            },
        )
    }

    fn human(
        mut self,
        what: &str,
        f: impl FnOnce(&mut RejectPolicy, &mut Option<u64>, &mut TimeoutPolicy),
    ) -> Self {
        match self.last.map(|i| &mut self.steps[i].kind) {
            Some(StepKind::Human {
                on_reject,
                timeout_ms,
                on_timeout,
            }) => {
                f(on_reject, timeout_ms, on_timeout);
            }
            _ => self.err(format!("{what} must follow wait_human")),
        }
        self
    }

    /// What rejecting the last human step does.
    pub fn on_reject(self, policy: RejectPolicy) -> Self {
        self.human("on_reject", |r, _, _| *r = policy)
    }

    /// Decision timeout of the last human step and what it does.
    pub fn decision_timeout_ms(self, ms: u64, policy: TimeoutPolicy) -> Self {
        self.human("decision_timeout_ms", |_, t, p| {
            *t = Some(ms);
            *p = policy;
        })
    }

    fn opt(mut self, what: &str, f: impl FnOnce(&mut StepOptions)) -> Self {
        match self.last {
            Some(i) => f(&mut self.steps[i].options),
            None => self.err(format!("{what} needs a step before it")),
        }
        self
    }

    /// Retries of the last step (`n` retries = up to `n + 1` calls).
    pub fn max_retries(self, n: u32) -> Self {
        self.opt("max_retries", |o| o.retry.max_retries = Some(n))
    }
    /// Base retry delay of the last step.
    pub fn retry_delay_ms(self, ms: u64) -> Self {
        self.opt("retry_delay_ms", |o| o.retry.delay_ms = ms)
    }
    /// Retry delay growth of the last step.
    pub fn retry_strategy(self, s: RetryStrategy) -> Self {
        self.opt("retry_strategy", |o| o.retry.strategy = s)
    }
    /// Cap on one retry delay of the last step.
    pub fn retry_max_delay_ms(self, ms: u64) -> Self {
        self.opt("retry_max_delay_ms", |o| o.retry.max_delay_ms = ms)
    }
    /// Jitter (percent of the delay) of the last step's retries.
    pub fn retry_jitter_pct(self, pct: u8) -> Self {
        self.opt("retry_jitter_pct", |o| o.retry.jitter_pct = pct.min(100))
    }
    /// Delay before the first run of the last step.
    pub fn delay_ms(self, ms: u64) -> Self {
        self.opt("delay_ms", |o| o.delay_ms = ms)
    }
    /// Timeout of one call of the last step.
    pub fn timeout_ms(self, ms: u64) -> Self {
        self.opt("timeout_ms", |o| o.timeout_ms = Some(ms))
    }
    /// Priority (0..=100) of the last step.
    pub fn priority(self, p: u8) -> Self {
        self.opt("priority", |o| o.priority = p)
    }
    /// Adds metadata to the last step.
    pub fn metadata(self, key: &str, value: &str) -> Self {
        self.opt("metadata", |o| {
            o.metadata.insert(key.into(), value.into());
        })
    }
    /// Marks the last step as not idempotent: it runs at most once.
    pub fn no_idempotent(self) -> Self {
        self.opt("no_idempotent", |o| o.no_idempotent = true)
    }

    /// Finishes the definition and validates it.
    ///
    /// # Errors
    /// Every problem found (builder misuse and validation), each naming its step.
    pub fn build(self) -> Result<WorkflowDefinition, DefinitionErrors> {
        if self.is_chain {
            return Err(DefinitionErrors(vec![DefinitionError::Builder(
                "build() called on a branch".into(),
            )]));
        }
        let def = WorkflowDefinition {
            name: self.name,
            version: self.version,
            options: self.options,
            steps: self.steps,
        };
        let mut errors = self.errors;
        match CompiledWorkflow::compile(def.clone()) {
            Ok(_) if errors.is_empty() => Ok(def),
            Ok(_) => Err(DefinitionErrors(errors)),
            Err(e) => {
                errors.extend(e.0);
                Err(DefinitionErrors(errors))
            }
        }
    }
}
