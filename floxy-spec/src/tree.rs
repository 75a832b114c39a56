//! A located node tree of a YAML (or JSON) document, built from the parser's events, so
//! that every key and value keeps its line and column.

use crate::error::{Loc, Sink, SpecErrorKind};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::{HashMap, HashSet};

/// A node with its location.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) loc: Loc,
}

/// What a node holds.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A scalar: its text and whether it was written plain (unquoted, not a block scalar).
    Scalar { text: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// Whether this is a plain `null`, `~` or empty scalar.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if text.is_empty() || text == "~" || text == "null" || text == "Null" || text == "NULL")
    }

    /// A short description of the node for error messages.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            Kind::Scalar { .. } if self.is_null() => "null".to_owned(),
            Kind::Scalar { text, plain } => {
                if *plain {
                    format!("{text:?}")
                } else {
                    format!("string {text:?}")
                }
            }
            Kind::Seq(_) => "a list".to_owned(),
            Kind::Map(_) => "a mapping".to_owned(),
        }
    }
}

fn loc_of(span: &Span) -> Loc {
    let m = &span.start;
    Loc {
        line: u32::try_from(m.line()).unwrap_or(u32::MAX),
        column: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
    }
}

/// Most nodes one document may copy for its anchors and aliases together. An anchor keeps a
/// copy of its node and each alias is another copy, so without a bound a few lines
/// ("billion laughs": ten aliases of ten aliases of ...) expand to billions of nodes, and a
/// big list under many nested anchors is copied once per anchor; a real flow file anchors
/// and aliases a few small blocks (a shared retry policy, a merged step).
pub(crate) const MAX_COPIED_NODES: usize = 100_000;

/// A collection being read: its items (or entries and the key waiting for its value), its
/// place, its anchor id and the number of nodes read into it so far (itself included).
enum Frame {
    Seq(Vec<Node>, Loc, usize, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Loc, usize, usize),
}

/// Parses `text` as one YAML document. A syntax error is reported with its place and
/// `None` returned. An empty document gives `None` without error (the caller reports it).
#[allow(clippy::too_many_lines)]
pub(crate) fn parse_yaml(text: &str, sink: &mut Sink) -> Option<Node> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    // Anchored nodes with their sizes in nodes.
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    // Nodes copied so far for anchors and aliases.
    let mut copied = 0usize;
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    for item in parser.by_ref() {
        let (event, span) = match item {
            Ok(x) => x,
            Err(e) => {
                let m = e.marker();
                let loc = Loc {
                    line: u32::try_from(m.line()).unwrap_or(u32::MAX),
                    column: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
                };
                sink.push(
                    SpecErrorKind::Syntax,
                    loc,
                    "",
                    format!("invalid YAML: {}", e.info()),
                );
                return None;
            }
        };
        let loc = loc_of(&span);
        // The finished node, its anchor id and its size in nodes.
        let done: Option<(Node, usize, usize)> = match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    sink.push(
                        SpecErrorKind::Syntax,
                        loc,
                        "",
                        "a flow file holds one YAML document; found a second one",
                    );
                    return None;
                }
                None
            }
            Event::Scalar(value, style, anchor, _) => {
                let plain = matches!(style, ScalarStyle::Plain);
                Some((
                    Node {
                        kind: Kind::Scalar {
                            text: value.into_owned(),
                            plain,
                        },
                        loc,
                    },
                    anchor,
                    1,
                ))
            }
            Event::Alias(id) => {
                let Some((n, size)) = anchors.get(&id) else {
                    sink.push(SpecErrorKind::Syntax, loc, "", "alias to an unknown anchor");
                    return None;
                };
                copied = copied.saturating_add(*size);
                if copied > MAX_COPIED_NODES {
                    too_many_copies(sink, loc);
                    return None;
                }
                Some((n.clone(), 0, *size))
            }
            Event::SequenceStart(_, anchor, _) => {
                stack.push(Frame::Seq(Vec::new(), loc, anchor, 1));
                None
            }
            Event::MappingStart(_, anchor, _) => {
                stack.push(Frame::Map(Vec::new(), None, loc, anchor, 1));
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(items, loc, anchor, size)) => Some((
                    Node {
                        kind: Kind::Seq(items),
                        loc,
                    },
                    anchor,
                    size,
                )),
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(entries, _, loc, anchor, size)) => Some((
                    Node {
                        kind: Kind::Map(merge_keys(entries)),
                        loc,
                    },
                    anchor,
                    size,
                )),
                _ => None,
            },
            _ => None,
        };
        if let Some((node, anchor, size)) = done {
            if anchor != 0 {
                copied = copied.saturating_add(size);
                if copied > MAX_COPIED_NODES {
                    too_many_copies(sink, node.loc);
                    return None;
                }
                anchors.insert(anchor, (node.clone(), size));
            }
            match stack.last_mut() {
                Some(Frame::Seq(items, _, _, total)) => {
                    *total = total.saturating_add(size);
                    items.push(node);
                }
                Some(Frame::Map(entries, pending, _, _, total)) => {
                    *total = total.saturating_add(size);
                    match pending.take() {
                        Some(key) => entries.push((key, node)),
                        None => *pending = Some(node),
                    }
                }
                None => root = Some(node),
            }
        }
    }
    if root.as_ref().is_some_and(Node::is_null) {
        return None;
    }
    root
}

fn too_many_copies(sink: &mut Sink, loc: Loc) {
    sink.push(
        SpecErrorKind::Syntax,
        loc,
        "",
        format!("the anchors and aliases of this document copy more than {MAX_COPIED_NODES} nodes"),
    );
}

/// Applies YAML merge keys (`<<: *base` or `<<: [*a, *b]`): entries of the merged maps
/// that the map does not set itself are added.
fn merge_keys(entries: Vec<(Node, Node)>) -> Vec<(Node, Node)> {
    let is_merge = |k: &Node| matches!(&k.kind, Kind::Scalar { text, plain: true } if text == "<<");
    if !entries.iter().any(|(k, _)| is_merge(k)) {
        return entries;
    }
    let mut own = Vec::new();
    let mut merged = Vec::new();
    for (k, v) in entries {
        if is_merge(&k) {
            match v.kind {
                Kind::Map(m) => merged.extend(m),
                Kind::Seq(items) => {
                    for item in items {
                        if let Kind::Map(m) = item.kind {
                            merged.extend(m);
                        }
                    }
                }
                Kind::Scalar { .. } => own.push((k, v)),
            }
        } else {
            own.push((k, v));
        }
    }
    // The keys set so far (own, then merged in order: the first merged map setting a key
    // wins), in a set: a linear scan per merged key is quadratic in the map's size.
    let mut keys: HashSet<String> = HashSet::new();
    let mut non_scalar_key = false;
    for (k, _) in &own {
        match scalar_text(k) {
            Some(t) => {
                keys.insert(t.to_owned());
            }
            None => non_scalar_key = true,
        }
    }
    for (k, v) in merged {
        let new = match scalar_text(&k) {
            Some(t) => keys.insert(t.to_owned()),
            None => !std::mem::replace(&mut non_scalar_key, true),
        };
        if new {
            own.push((k, v));
        }
    }
    own
}

fn scalar_text(n: &Node) -> Option<&str> {
    match &n.kind {
        Kind::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

/// Parses `text` as JSON: `serde_json` checks the syntax (its errors have line and column),
/// then the YAML parser (JSON is a subset of YAML 1.2) builds the located tree.
pub(crate) fn parse_json(text: &str, sink: &mut Sink) -> Option<Node> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        let loc = Loc {
            line: u32::try_from(e.line()).unwrap_or(u32::MAX),
            column: u32::try_from(e.column()).unwrap_or(u32::MAX),
        };
        let msg = e.to_string();
        // serde_json appends " at line L column C": the location is reported separately.
        let msg = msg
            .rsplit_once(" at line ")
            .map_or(msg.as_str(), |(m, _)| m);
        sink.push(
            SpecErrorKind::Syntax,
            loc,
            "",
            format!("invalid JSON: {msg}"),
        );
        return None;
    }
    parse_yaml(text, sink)
}
