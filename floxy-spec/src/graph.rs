//! Rendering a workflow definition as a graph: an indented text tree, Mermaid
//! (`flowchart TD`) or Graphviz DOT. Compensations are drawn with dashed edges.
//! The output is deterministic: steps and edges come in the order of a depth-first walk
//! from the start step (fork branches in order, a condition's else chain before the
//! chain that follows it).

use floxy_core::model::{JoinStrategy, RejectPolicy, StepDef, StepKind, WorkflowDefinition};
use std::collections::HashMap;
use std::fmt::Write as _;

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

/// Renders `def` in `format`.
#[must_use]
pub fn render(def: &WorkflowDefinition, format: GraphFormat) -> String {
    let g = Graph::new(def);
    match format {
        GraphFormat::Text => g.text(),
        GraphFormat::Mermaid => g.mermaid(),
        GraphFormat::Dot => g.dot(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EdgeKind {
    Next,
    True,
    False,
    Branch,
    ToJoin,
    Compensate,
}

enum Target {
    Step(usize),
    Compensation(usize),
}

struct Graph<'a> {
    def: &'a WorkflowDefinition,
    /// Steps in walk order.
    order: Vec<usize>,
    edges: Vec<(usize, Target, EdgeKind)>,
    by_name: HashMap<&'a str, usize>,
}

fn detail(s: &StepDef) -> String {
    match &s.kind {
        StepKind::Task { handler, .. } => format!("task: {handler}"),
        StepKind::SavePoint => "save point".to_owned(),
        StepKind::Fork { .. } => "fork".to_owned(),
        StepKind::Join {
            strategy, wait_for, ..
        } => {
            let st = match strategy {
                JoinStrategy::All => "all",
                JoinStrategy::Any => "any",
            };
            match wait_for {
                Some(w) => {
                    let names: Vec<&str> = w.iter().map(AsRef::as_ref).collect();
                    format!("join {st} of {}", names.join(", "))
                }
                None => format!("join {st}"),
            }
        }
        StepKind::Condition { expr, .. } => format!("condition: {expr}"),
        StepKind::Human {
            on_reject,
            timeout_ms,
            ..
        } => {
            let r = match on_reject {
                RejectPolicy::Abort => "abort",
                RejectPolicy::RollBack => "rollback",
            };
            match timeout_ms {
                Some(ms) => format!("human, on reject: {r}, timeout {ms} ms"),
                None => format!("human, on reject: {r}"),
            }
        }
    }
}

fn compensation(s: &StepDef) -> Option<&str> {
    match &s.kind {
        StepKind::Task {
            on_failure: Some(c),
            ..
        } => Some(&c.handler),
        _ => None,
    }
}

impl<'a> Graph<'a> {
    fn new(def: &'a WorkflowDefinition) -> Self {
        let by_name = def
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_ref(), i))
            .collect();
        let mut g = Self {
            def,
            order: Vec::new(),
            edges: Vec::new(),
            by_name,
        };
        if !def.steps.is_empty() {
            let mut seen = vec![false; def.steps.len()];
            g.walk(0, None, &mut seen);
        }
        g
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Walks the chain starting at `start`; `join` is the join its path ends in.
    fn walk(&mut self, start: usize, join: Option<usize>, seen: &mut [bool]) {
        let mut cur = Some(start);
        while let Some(i) = cur {
            if std::mem::replace(&mut seen[i], true) {
                return;
            }
            self.order.push(i);
            let s = &self.def.steps[i];
            if compensation(s).is_some() {
                self.edges
                    .push((i, Target::Compensation(i), EdgeKind::Compensate));
            }
            let next = s.next.as_deref().and_then(|n| self.find(n));
            match &s.kind {
                StepKind::Fork { branches } => {
                    for b in branches {
                        if let Some(b) = self.find(b) {
                            self.edges.push((i, Target::Step(b), EdgeKind::Branch));
                            self.walk(b, next, seen);
                        }
                    }
                }
                StepKind::Condition {
                    else_first: Some(e),
                    ..
                } => {
                    if let Some(e) = self.find(e) {
                        self.edges.push((i, Target::Step(e), EdgeKind::False));
                        self.walk(e, join, seen);
                    }
                }
                _ => {}
            }
            let is_cond = matches!(s.kind, StepKind::Condition { .. });
            let is_fork = matches!(s.kind, StepKind::Fork { .. });
            match next {
                // A fork's join is reached through its branches.
                Some(n) if is_fork => cur = Some(n),
                Some(n) => {
                    let kind = if is_cond {
                        EdgeKind::True
                    } else {
                        EdgeKind::Next
                    };
                    self.edges.push((i, Target::Step(n), kind));
                    cur = Some(n);
                }
                None => {
                    if let Some(j) = join {
                        self.edges.push((i, Target::Step(j), EdgeKind::ToJoin));
                    }
                    cur = None;
                }
            }
        }
    }

    fn text(&self) -> String {
        let mut out = format!("workflow {}\n", self.def.id());
        if !self.def.steps.is_empty() {
            let mut seen = vec![false; self.def.steps.len()];
            self.text_chain(0, 1, &mut out, &mut seen);
        }
        out
    }

    fn text_chain(&self, start: usize, depth: usize, out: &mut String, seen: &mut [bool]) {
        let pad = "  ".repeat(depth);
        let mut cur = Some(start);
        while let Some(i) = cur {
            if std::mem::replace(&mut seen[i], true) {
                return;
            }
            let s = &self.def.steps[i];
            let _ = write!(out, "{pad}{} [{}]", s.name, detail(s));
            if let Some(c) = compensation(s) {
                let _ = write!(out, " (on failure: {c})");
            }
            out.push('\n');
            match &s.kind {
                StepKind::Fork { branches } => {
                    for (n, b) in branches.iter().enumerate() {
                        let _ = writeln!(out, "{pad}  branch {}:", n + 1);
                        if let Some(b) = self.find(b) {
                            self.text_chain(b, depth + 2, out, seen);
                        }
                    }
                }
                StepKind::Condition {
                    else_first: Some(e),
                    ..
                } => {
                    let _ = writeln!(out, "{pad}  else:");
                    if let Some(e) = self.find(e) {
                        self.text_chain(e, depth + 2, out, seen);
                    }
                }
                _ => {}
            }
            cur = s.next.as_deref().and_then(|n| self.find(n));
        }
    }

    fn mermaid(&self) -> String {
        let esc = |s: &str| s.replace('"', "#quot;");
        let mut out = String::from("flowchart TD\n");
        for &i in &self.order {
            let s = &self.def.steps[i];
            let label = format!("{}<br/>{}", esc(&s.name), esc(&detail(s)));
            let node = match s.kind {
                StepKind::Condition { .. } => format!("s{i}{{\"{label}\"}}"),
                StepKind::Fork { .. } | StepKind::Join { .. } => {
                    format!("s{i}{{{{\"{label}\"}}}}")
                }
                StepKind::SavePoint => format!("s{i}[(\"{label}\")]"),
                StepKind::Human { .. } => format!("s{i}[/\"{label}\"/]"),
                StepKind::Task { .. } => format!("s{i}[\"{label}\"]"),
            };
            let _ = writeln!(out, "    {node}");
            if let Some(c) = compensation(s) {
                let _ = writeln!(out, "    c{i}([\"{}<br/>compensation\"])", esc(c));
            }
        }
        for (from, to, kind) in &self.edges {
            let to = match to {
                Target::Step(t) => format!("s{t}"),
                Target::Compensation(t) => format!("c{t}"),
            };
            let arrow = match kind {
                EdgeKind::Next | EdgeKind::Branch | EdgeKind::ToJoin => "-->",
                EdgeKind::True => "-->|true|",
                EdgeKind::False => "-->|false|",
                EdgeKind::Compensate => "-.->|compensate|",
            };
            let _ = writeln!(out, "    s{from} {arrow} {to}");
        }
        out
    }

    fn dot(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = format!(
            "digraph \"{}\" {{\n    rankdir=TB;\n    node [shape=box, fontname=\"Helvetica\"];\n",
            esc(self.def.id().as_str())
        );
        for &i in &self.order {
            let s = &self.def.steps[i];
            let shape = match s.kind {
                StepKind::Condition { .. } => "diamond",
                StepKind::Fork { .. } | StepKind::Join { .. } => "hexagon",
                StepKind::SavePoint => "cylinder",
                StepKind::Human { .. } => "parallelogram",
                StepKind::Task { .. } => "box",
            };
            let _ = writeln!(
                out,
                "    s{i} [label=\"{}\\n{}\", shape={shape}];",
                esc(&s.name),
                esc(&detail(s))
            );
            if let Some(c) = compensation(s) {
                let _ = writeln!(
                    out,
                    "    c{i} [label=\"{}\\ncompensation\", style=\"rounded,dashed\"];",
                    esc(c)
                );
            }
        }
        for (from, to, kind) in &self.edges {
            let to = match to {
                Target::Step(t) => format!("s{t}"),
                Target::Compensation(t) => format!("c{t}"),
            };
            let attrs = match kind {
                EdgeKind::Next | EdgeKind::Branch | EdgeKind::ToJoin => "",
                EdgeKind::True => " [label=\"true\"]",
                EdgeKind::False => " [label=\"false\"]",
                EdgeKind::Compensate => " [style=dashed, label=\"compensate\"]",
            };
            let _ = writeln!(out, "    s{from} -> {to}{attrs};");
        }
        out.push_str("}\n");
        out
    }
}
