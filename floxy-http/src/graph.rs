//! A workflow's graph as nodes and edges, for drawing.

use floxy::CompiledWorkflow;
use floxy::floxy_core::graph::NodeKind;
use serde::Serialize;
use utoipa::ToSchema;

/// A workflow graph: one node per step, one edge per succession.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Graph {
    /// The steps, the start first.
    pub(crate) nodes: Vec<GraphNode>,
    /// The successions.
    pub(crate) edges: Vec<GraphEdge>,
}

/// A step of the graph.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct GraphNode {
    /// Step name (unique in the workflow).
    pub(crate) id: String,
    /// `task`, `save_point`, `fork`, `join`, `condition` or `human`.
    pub(crate) kind: String,
    /// Handler of a task.
    pub(crate) handler: Option<String>,
    /// Compensation handler of a task.
    pub(crate) compensation: Option<String>,
    /// Strategy of a join (`all`, `any`).
    pub(crate) strategy: Option<String>,
}

/// A succession between two steps.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct GraphEdge {
    /// From this step.
    pub(crate) from: String,
    /// To this step.
    pub(crate) to: String,
    /// `next` (sequence; a condition's true branch), `branch` (fork to a branch's first
    /// step), `join` (a branch's last step to the join), `else` (a condition's false branch).
    pub(crate) kind: String,
}

impl Graph {
    pub(crate) fn of(wf: &CompiledWorkflow) -> Self {
        let nodes = wf.nodes();
        let name = |i: usize| {
            nodes
                .get(i)
                .map_or_else(String::new, |n| n.name.to_string())
        };
        let mut out = Self {
            nodes: Vec::with_capacity(nodes.len()),
            edges: Vec::new(),
        };
        for n in nodes {
            let (kind, handler, compensation, strategy) = match &n.kind {
                NodeKind::Task {
                    handler,
                    compensation,
                } => (
                    "task",
                    Some(handler.to_string()),
                    compensation.as_deref().map(str::to_owned),
                    None,
                ),
                NodeKind::SavePoint => ("save_point", None, None, None),
                NodeKind::Fork { .. } => ("fork", None, None, None),
                NodeKind::Join { strategy, .. } => (
                    "join",
                    None,
                    None,
                    Some(
                        match strategy {
                            floxy::JoinStrategy::All => "all",
                            floxy::JoinStrategy::Any => "any",
                        }
                        .to_owned(),
                    ),
                ),
                NodeKind::Condition { .. } => ("condition", None, None, None),
                NodeKind::Human { .. } => ("human", None, None, None),
            };
            out.nodes.push(GraphNode {
                id: n.name.to_string(),
                kind: kind.into(),
                handler,
                compensation,
                strategy,
            });
            let mut edge = |to: usize, kind: &str| {
                out.edges.push(GraphEdge {
                    from: n.name.to_string(),
                    to: name(to),
                    kind: kind.into(),
                });
            };
            match &n.kind {
                NodeKind::Fork { branches, .. } => {
                    for &b in branches {
                        edge(b, "branch");
                    }
                }
                NodeKind::Condition {
                    else_first: Some(e),
                    ..
                } => edge(*e, "else"),
                _ => {}
            }
            match (n.next, n.branch()) {
                // A fork's `next` is its join, reached through the branches.
                (Some(_), _) if matches!(n.kind, NodeKind::Fork { .. }) => {}
                (Some(next), _) => edge(next, "next"),
                (None, Some((fork, _))) => {
                    if let Some(NodeKind::Fork { join, .. }) = nodes.get(fork).map(|f| &f.kind) {
                        edge(*join, "join");
                    }
                }
                (None, None) => {}
            }
        }
        out
    }
}
