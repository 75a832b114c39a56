//! The compiled graph: a validated definition with everything the state machine needs
//! computed once (successors, branch membership, savepoint scopes, join inputs).

use crate::expr::Expr;
use crate::model::{
    JoinStrategy, RejectPolicy, StepDef, StepKind, StepName, TimeoutPolicy, WorkflowDefinition,
    WorkflowId,
};
use crate::validate::{
    DefinitionError, DefinitionErrors, MAX_FORK_WIDTH, MAX_NAME_LEN, MAX_NESTING_DEPTH,
    MAX_RETRIES, MAX_STEPS, RESERVED_PREFIX,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Index of a step in [`CompiledWorkflow::nodes`] (same as in the definition's `steps`).
pub type NodeId = usize;

/// One enclosing fork branch: `(fork node, branch index)`.
pub type BranchRef = (NodeId, u16);

/// A compiled step.
#[derive(Debug, Clone)]
pub struct Node {
    /// Step name.
    pub name: StepName,
    /// What it does, with references resolved.
    pub kind: NodeKind,
    /// Sequential successor.
    pub next: Option<NodeId>,
    /// Enclosing fork branches, outermost first.
    pub scope: Vec<BranchRef>,
    /// Savepoints on the path from the start to this step, in path order.
    pub savepoints: Vec<NodeId>,
}

impl Node {
    /// The innermost enclosing branch.
    #[must_use]
    pub fn branch(&self) -> Option<BranchRef> {
        self.scope.last().copied()
    }
    /// Whether this step lies inside branch `b` (at any depth).
    #[must_use]
    pub fn in_branch(&self, b: BranchRef) -> bool {
        self.scope.contains(&b)
    }
    /// Whether this step lies after savepoint `sp` (is a descendant of it).
    #[must_use]
    pub fn after_savepoint(&self, sp: NodeId) -> bool {
        self.savepoints.contains(&sp)
    }
}

/// A compiled step kind.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// Runs a handler.
    Task {
        /// Handler.
        handler: Arc<str>,
        /// Compensation handler.
        compensation: Option<Arc<str>>,
    },
    /// Rollback boundary.
    SavePoint,
    /// Starts branches.
    Fork {
        /// First step of each branch.
        branches: Vec<NodeId>,
        /// Its join.
        join: NodeId,
    },
    /// Joins a fork.
    Join {
        /// The fork.
        fork: NodeId,
        /// Strategy.
        strategy: JoinStrategy,
        /// Explicit wait list.
        wait_for: Option<Vec<NodeId>>,
    },
    /// Evaluates an expression.
    Condition {
        /// Parsed expression.
        expr: Expr,
        /// Else chain.
        else_first: Option<NodeId>,
    },
    /// Waits for a human.
    Human {
        /// Reject policy.
        on_reject: RejectPolicy,
        /// Timeout.
        timeout_ms: Option<u64>,
        /// Timeout policy.
        on_timeout: TimeoutPolicy,
    },
}

/// A validated, compiled definition. Cheap to share (`Arc` it).
#[derive(Debug, Clone)]
pub struct CompiledWorkflow {
    id: WorkflowId,
    def: WorkflowDefinition,
    nodes: Vec<Node>,
    by_name: HashMap<StepName, NodeId>,
}

impl CompiledWorkflow {
    /// Validates and compiles a definition.
    ///
    /// # Errors
    /// Every problem found, each naming its step.
    pub fn compile(def: WorkflowDefinition) -> Result<Self, DefinitionErrors> {
        let mut errs = Vec::new();
        check_header(&def, &mut errs);
        let by_name = index_names(&def, &mut errs);
        if !errs.is_empty() {
            return Err(DefinitionErrors(errs));
        }
        let resolve =
            |step: &StepDef, field: &'static str, target: &StepName, errs: &mut Vec<_>| {
                by_name.get(target).copied().or_else(|| {
                    errs.push(DefinitionError::UnknownReference {
                        step: step.name.to_string(),
                        field,
                        target: target.to_string(),
                    });
                    None
                })
            };
        let mut nodes = Vec::with_capacity(def.steps.len());
        for step in &def.steps {
            check_step_options(&def, step, &mut errs);
            let next = step
                .next
                .as_ref()
                .and_then(|n| resolve(step, "next", n, &mut errs));
            let kind = match &step.kind {
                StepKind::Task {
                    handler,
                    on_failure,
                } => {
                    if handler.trim().is_empty() {
                        errs.push(DefinitionError::EmptyHandler {
                            step: step.name.to_string(),
                            what: "task",
                        });
                    }
                    if let Some(c) = on_failure {
                        if c.handler.trim().is_empty() {
                            errs.push(DefinitionError::EmptyHandler {
                                step: step.name.to_string(),
                                what: "compensation",
                            });
                        }
                        if c.retry.max_retries.is_some_and(|r| r > MAX_RETRIES) {
                            errs.push(DefinitionError::TooManyRetries {
                                step: step.name.to_string(),
                                max_retries: c.retry.max_retries.unwrap_or(0),
                                max: MAX_RETRIES,
                            });
                        }
                    }
                    NodeKind::Task {
                        handler: handler.as_str().into(),
                        compensation: on_failure.as_ref().map(|c| c.handler.as_str().into()),
                    }
                }
                StepKind::SavePoint => NodeKind::SavePoint,
                StepKind::Fork { branches } => {
                    if branches.len() < 2 {
                        errs.push(DefinitionError::ForkTooFewBranches {
                            step: step.name.to_string(),
                            branches: branches.len(),
                        });
                    }
                    if branches.len() > MAX_FORK_WIDTH {
                        errs.push(DefinitionError::ForkTooWide {
                            step: step.name.to_string(),
                            width: branches.len(),
                            max: MAX_FORK_WIDTH,
                        });
                    }
                    let branches: Vec<NodeId> = branches
                        .iter()
                        .filter_map(|b| resolve(step, "branches", b, &mut errs))
                        .collect();
                    if let Some(j) = next {
                        NodeKind::Fork { branches, join: j }
                    } else {
                        errs.push(DefinitionError::ForkWithoutJoin {
                            step: step.name.to_string(),
                        });
                        NodeKind::Fork {
                            branches,
                            join: usize::MAX,
                        }
                    }
                }
                StepKind::Join {
                    fork,
                    strategy,
                    wait_for,
                } => {
                    let f = resolve(step, "fork", fork, &mut errs).unwrap_or(usize::MAX);
                    let wait_for = wait_for.as_ref().map(|w| {
                        if w.is_empty() {
                            errs.push(DefinitionError::JoinEmptyWaitList {
                                step: step.name.to_string(),
                            });
                        }
                        w.iter()
                            .filter_map(|n| resolve(step, "wait_for", n, &mut errs))
                            .collect()
                    });
                    NodeKind::Join {
                        fork: f,
                        strategy: *strategy,
                        wait_for,
                    }
                }
                StepKind::Condition { expr, else_first } => {
                    let else_first = else_first
                        .as_ref()
                        .and_then(|e| resolve(step, "else", e, &mut errs));
                    match Expr::parse(expr) {
                        Ok(expr) => NodeKind::Condition { expr, else_first },
                        Err(error) => {
                            errs.push(DefinitionError::InvalidExpression {
                                step: step.name.to_string(),
                                error,
                            });
                            NodeKind::SavePoint
                        }
                    }
                }
                StepKind::Human {
                    on_reject,
                    timeout_ms,
                    on_timeout,
                } => NodeKind::Human {
                    on_reject: *on_reject,
                    timeout_ms: *timeout_ms,
                    on_timeout: *on_timeout,
                },
            };
            nodes.push(Node {
                name: step.name.clone(),
                kind,
                next,
                scope: Vec::new(),
                savepoints: Vec::new(),
            });
        }
        if errs.is_empty() {
            walk_tree(&mut nodes, &mut errs);
        }
        if errs.is_empty() {
            check_joins(&nodes, &mut errs);
        }
        if !errs.is_empty() {
            return Err(DefinitionErrors(errs));
        }
        Ok(Self {
            id: def.id(),
            def,
            nodes,
            by_name,
        })
    }

    /// The id.
    #[must_use]
    pub fn id(&self) -> &WorkflowId {
        &self.id
    }
    /// The source definition.
    #[must_use]
    pub fn definition(&self) -> &WorkflowDefinition {
        &self.def
    }
    /// All nodes (same order as the definition's steps; node 0 is the start).
    #[must_use]
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// One node.
    #[must_use]
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }
    /// The definition of one node.
    #[must_use]
    pub fn step_def(&self, id: NodeId) -> &StepDef {
        &self.def.steps[id]
    }
    /// Looks a step up by name.
    #[must_use]
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }
    /// Every handler name the definition uses (tasks and compensations), deduplicated.
    #[must_use]
    pub fn handlers(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        for n in &self.nodes {
            if let NodeKind::Task {
                handler,
                compensation,
            } = &n.kind
            {
                for h in std::iter::once(handler).chain(compensation.iter()) {
                    if !out.contains(h) {
                        out.push(h.clone());
                    }
                }
            }
        }
        out
    }
}

fn check_header(def: &WorkflowDefinition, errs: &mut Vec<DefinitionError>) {
    if def.name.trim().is_empty() || def.name.len() > MAX_NAME_LEN {
        errs.push(DefinitionError::InvalidWorkflowName);
    }
    if def.version == 0 {
        errs.push(DefinitionError::InvalidVersion);
    }
    if def.steps.is_empty() {
        errs.push(DefinitionError::NoSteps);
    }
    if def.steps.len() > MAX_STEPS {
        errs.push(DefinitionError::TooManySteps {
            count: def.steps.len(),
            max: MAX_STEPS,
        });
    }
    let o = &def.options;
    if o.lease_ttl_ms < 100 {
        errs.push(DefinitionError::InvalidOption {
            option: "lease_ttl_ms",
            problem: format!("{} is below 100 ms", o.lease_ttl_ms),
        });
    }
    if o.default_max_retries > MAX_RETRIES {
        errs.push(DefinitionError::InvalidOption {
            option: "default_max_retries",
            problem: format!("{} is above {MAX_RETRIES}", o.default_max_retries),
        });
    }
    if o.max_payload_bytes == 0 {
        errs.push(DefinitionError::InvalidOption {
            option: "max_payload_bytes",
            problem: "must be positive".into(),
        });
    }
}

fn index_names(
    def: &WorkflowDefinition,
    errs: &mut Vec<DefinitionError>,
) -> HashMap<StepName, NodeId> {
    let mut by_name = HashMap::with_capacity(def.steps.len());
    for (i, s) in def.steps.iter().enumerate() {
        if s.name.trim().is_empty() || s.name.len() > MAX_NAME_LEN {
            errs.push(DefinitionError::InvalidStepName { index: i });
            continue;
        }
        if s.name.starts_with(RESERVED_PREFIX) {
            errs.push(DefinitionError::ReservedName {
                step: s.name.to_string(),
            });
        }
        if by_name.insert(s.name.clone(), i).is_some() {
            errs.push(DefinitionError::DuplicateStep {
                step: s.name.to_string(),
            });
        }
    }
    by_name
}

fn check_step_options(def: &WorkflowDefinition, s: &StepDef, errs: &mut Vec<DefinitionError>) {
    if s.options.priority > crate::model::MAX_PRIORITY {
        errs.push(DefinitionError::InvalidPriority {
            step: s.name.to_string(),
            priority: s.options.priority,
        });
    }
    let r = s
        .options
        .retry
        .max_retries
        .unwrap_or(def.options.default_max_retries);
    if r > MAX_RETRIES {
        errs.push(DefinitionError::TooManyRetries {
            step: s.name.to_string(),
            max_retries: r,
            max: MAX_RETRIES,
        });
    }
}

/// A step to visit: (node, enclosing branches, savepoints so far, the fork it follows).
type WalkItem = (NodeId, Vec<BranchRef>, Vec<NodeId>, Option<NodeId>);

/// Walks the tree of chains from the start (iteratively), assigning scopes and savepoints,
/// and rejecting shared steps, cycles, unreachable steps, misplaced joins and savepoints.
fn walk_tree(nodes: &mut [Node], errs: &mut Vec<DefinitionError>) {
    let mut seen = vec![false; nodes.len()];
    // (node, scope, savepoints, parent fork if the node is a fork's `next`)
    let mut stack: Vec<WalkItem> = vec![(0, Vec::new(), Vec::new(), None)];
    while let Some((id, scope, sps, from_fork)) = stack.pop() {
        if seen[id] {
            errs.push(DefinitionError::ReachedTwice {
                step: nodes[id].name.to_string(),
            });
            continue;
        }
        seen[id] = true;
        if scope.len() > MAX_NESTING_DEPTH {
            errs.push(DefinitionError::NestingTooDeep {
                step: nodes[id].name.to_string(),
                depth: scope.len(),
                max: MAX_NESTING_DEPTH,
            });
            continue;
        }
        nodes[id].scope.clone_from(&scope);
        nodes[id].savepoints.clone_from(&sps);
        let next = nodes[id].next;
        match nodes[id].kind.clone() {
            NodeKind::Fork { branches, join } => {
                for (b, first) in branches.iter().enumerate() {
                    let mut inner = scope.clone();
                    inner.push((id, u16::try_from(b).unwrap_or(u16::MAX)));
                    stack.push((*first, inner, sps.clone(), None));
                }
                match nodes.get(join).map(|n| &n.kind) {
                    Some(NodeKind::Join { fork, .. }) if *fork == id => {
                        stack.push((join, scope, sps, Some(id)));
                    }
                    _ => errs.push(DefinitionError::ForkWithoutJoin {
                        step: nodes[id].name.to_string(),
                    }),
                }
            }
            NodeKind::Join { fork, .. } => {
                if from_fork != Some(fork) {
                    errs.push(DefinitionError::JoinNotAfterFork {
                        step: nodes[id].name.to_string(),
                        fork: nodes
                            .get(fork)
                            .map(|n| n.name.to_string())
                            .unwrap_or_default(),
                    });
                }
                if let Some(n) = next {
                    stack.push((n, scope, sps, None));
                }
            }
            NodeKind::Condition { else_first, .. } => {
                if let Some(e) = else_first {
                    stack.push((e, scope.clone(), sps.clone(), None));
                }
                if let Some(n) = next {
                    stack.push((n, scope, sps, None));
                }
            }
            NodeKind::SavePoint => {
                if !scope.is_empty() {
                    errs.push(DefinitionError::SavePointInBranch {
                        step: nodes[id].name.to_string(),
                    });
                }
                let mut sps = sps;
                sps.push(id);
                if let Some(n) = next {
                    stack.push((n, scope, sps, None));
                }
            }
            NodeKind::Task { .. } | NodeKind::Human { .. } => {
                if let Some(n) = next {
                    stack.push((n, scope, sps, None));
                }
            }
        }
    }
    for (i, s) in seen.iter().enumerate() {
        if !s {
            errs.push(DefinitionError::Unreachable {
                step: nodes[i].name.to_string(),
            });
        }
    }
}

fn check_joins(nodes: &[Node], errs: &mut Vec<DefinitionError>) {
    for n in nodes {
        if let NodeKind::Join {
            fork,
            wait_for: Some(w),
            ..
        } = &n.kind
        {
            for t in w {
                if !nodes[*t].scope.iter().any(|(f, _)| f == fork) {
                    errs.push(DefinitionError::JoinWaitsOutside {
                        step: n.name.to_string(),
                        fork: nodes[*fork].name.to_string(),
                        target: nodes[*t].name.to_string(),
                    });
                }
            }
        }
    }
}
