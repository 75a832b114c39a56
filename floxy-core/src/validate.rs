//! Definition errors and bounds. Validation itself happens while compiling
//! ([`crate::graph::CompiledWorkflow::compile`]): it runs at build and at register.

use crate::expr::ExprError;
use std::fmt;

/// Most steps a definition may have.
pub const MAX_STEPS: usize = 1_000;
/// Most branches of one fork.
pub const MAX_FORK_WIDTH: usize = 64;
/// Deepest fork nesting.
pub const MAX_NESTING_DEPTH: usize = 16;
/// Largest `max_retries`.
pub const MAX_RETRIES: u32 = 1_000;
/// Longest step or workflow name.
pub const MAX_NAME_LEN: usize = 200;
/// Names starting with this prefix are reserved for the engine.
pub const RESERVED_PREFIX: &str = "__";

/// One problem with a definition. Messages name the step and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The workflow name is empty or too long.
    #[error("workflow name must be 1..={MAX_NAME_LEN} characters")]
    InvalidWorkflowName,
    /// Version 0.
    #[error("workflow version must be at least 1")]
    InvalidVersion,
    /// No steps.
    #[error("workflow has no steps")]
    NoSteps,
    /// A step name is empty or too long.
    #[error("step #{index}: name must be 1..={MAX_NAME_LEN} characters")]
    InvalidStepName {
        /// Position in the definition.
        index: usize,
    },
    /// Two steps share a name.
    #[error("step {step:?}: name is used more than once")]
    DuplicateStep {
        /// Step.
        step: String,
    },
    /// A reserved name.
    #[error("step {step:?}: names starting with {RESERVED_PREFIX:?} are reserved")]
    ReservedName {
        /// Step.
        step: String,
    },
    /// A reference to a step that does not exist.
    #[error("step {step:?}: {field} refers to unknown step {target:?}")]
    UnknownReference {
        /// Step holding the reference.
        step: String,
        /// Which reference.
        field: &'static str,
        /// Missing target.
        target: String,
    },
    /// A step referenced from two places, or a cycle.
    #[error(
        "step {step:?}: reached twice (steps form a tree of chains; cycles and shared steps are not allowed)"
    )]
    ReachedTwice {
        /// Step.
        step: String,
    },
    /// A step not reachable from the start.
    #[error("step {step:?}: not reachable from the start step")]
    Unreachable {
        /// Step.
        step: String,
    },
    /// A fork with fewer than two branches.
    #[error("fork {step:?}: needs at least two branches, has {branches}")]
    ForkTooFewBranches {
        /// Fork.
        step: String,
        /// Branch count.
        branches: usize,
    },
    /// A fork whose `next` is not its join.
    #[error("fork {step:?}: must be followed by a join of this fork")]
    ForkWithoutJoin {
        /// Fork.
        step: String,
    },
    /// A join that does not directly follow the fork it names.
    #[error("join {step:?}: must directly follow fork {fork:?}")]
    JoinNotAfterFork {
        /// Join.
        step: String,
        /// Fork it names.
        fork: String,
    },
    /// A `join_step` wait-list entry that is not inside the fork's branches.
    #[error("join {step:?}: waits for {target:?}, which is not a step of fork {fork:?}'s branches")]
    JoinWaitsOutside {
        /// Join.
        step: String,
        /// Fork.
        fork: String,
        /// Offending name.
        target: String,
    },
    /// An empty explicit wait list.
    #[error("join {step:?}: explicit wait list is empty")]
    JoinEmptyWaitList {
        /// Join.
        step: String,
    },
    /// A savepoint inside a fork branch.
    #[error("save point {step:?}: save points are not allowed inside fork branches")]
    SavePointInBranch {
        /// Savepoint.
        step: String,
    },
    /// A task or compensation without handler name.
    #[error("step {step:?}: {what} handler name is empty")]
    EmptyHandler {
        /// Step.
        step: String,
        /// `task` or `compensation`.
        what: &'static str,
    },
    /// A condition whose expression does not parse.
    #[error("condition {step:?}: {error}")]
    InvalidExpression {
        /// Step.
        step: String,
        /// Parse error.
        error: ExprError,
    },
    /// Too many steps.
    #[error("workflow has {count} steps; the limit is {max}")]
    TooManySteps {
        /// Count.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// Too many branches.
    #[error("fork {step:?}: {width} branches; the limit is {max}")]
    ForkTooWide {
        /// Fork.
        step: String,
        /// Width.
        width: usize,
        /// Limit.
        max: usize,
    },
    /// Forks nested too deep.
    #[error("step {step:?}: forks nested {depth} deep; the limit is {max}")]
    NestingTooDeep {
        /// Step.
        step: String,
        /// Depth.
        depth: usize,
        /// Limit.
        max: usize,
    },
    /// Priority above 100.
    #[error("step {step:?}: priority {priority} is above 100")]
    InvalidPriority {
        /// Step.
        step: String,
        /// Priority.
        priority: u8,
    },
    /// Too many retries.
    #[error("step {step:?}: max_retries {max_retries} is above the limit {max}")]
    TooManyRetries {
        /// Step.
        step: String,
        /// Value.
        max_retries: u32,
        /// Limit.
        max: u32,
    },
    /// A bad workflow option.
    #[error("workflow option {option}: {problem}")]
    InvalidOption {
        /// Option.
        option: &'static str,
        /// Problem.
        problem: String,
    },
    /// The builder was used in a way that cannot produce a definition.
    #[error("builder: {0}")]
    Builder(String),
}

/// All problems found in a definition (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid workflow definition")?;
        for (i, e) in self.0.iter().enumerate() {
            write!(f, "{} {e}", if i == 0 { ":" } else { ";" })?;
        }
        Ok(())
    }
}

impl std::error::Error for DefinitionErrors {}

impl DefinitionErrors {
    /// The individual problems.
    #[must_use]
    pub fn errors(&self) -> &[DefinitionError] {
        &self.0
    }
}
