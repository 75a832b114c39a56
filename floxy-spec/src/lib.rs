//! The YAML and JSON flow-file format of floxy.
#![warn(unreachable_pub)]

mod convert;
mod error;
pub mod graph;
mod schema;
mod spec;
mod tree;
mod walk;

pub use schema::json_schema;
pub use error::{SpecError, SpecErrorKind, SpecErrors};
pub use spec::{
    CompensationSpec, Exec, FlowFile, FlowSpec, Format, HandlerSpec, JoinSpec, RejectSpec,
    RetryStrategySpec, StepSpec, StepType, TimeoutSpec, TlsSpec,
};

use error::{Loc, Sink};
use std::path::Path;

/// Parses a flow file from `text`. `file` names it in error messages.
///
/// Every problem is reported (syntax, unknown keys, bad values, the format's rules and the
/// core's validation of the definitions each flow produces), each with its line, column
/// and key path. Script paths are taken as written; [`load`] resolves and checks them.
///
/// # Errors
/// All problems found, in the order of the text.
pub fn parse_str(text: &str, format: Format, file: &str) -> Result<FlowFile, SpecErrors> {
    let mut sink = Sink::new(file);
    let root = match format {
        Format::Yaml => tree::parse_yaml(text, &mut sink),
        Format::Json => tree::parse_json(text, &mut sink),
    };
    let Some(root) = root else {
        if sink.errors.is_empty() {
            sink.push(
                SpecErrorKind::Syntax,
                Loc { line: 1, column: 1 },
                "",
                "the file is empty",
            );
        }
        sink.finish()?;
        return Err(SpecErrors(Vec::new()));
    };
    let parsed = walk::file(&root, file, &mut sink);
    if let Some(f) = &parsed {
        walk::semantic(f, &mut sink);
        if sink.errors.is_empty() {
            f.definitions_into(&mut sink);
        }
    }
    sink.finish()?;
    parsed.ok_or_else(|| SpecErrors(Vec::new()))
}

/// Reads and parses the flow file at `path` (format from its extension: `.yaml`, `.yml`,
/// `.json`). Script paths are resolved against the file's directory and must exist; TLS
/// file paths are resolved the same way.
///
/// # Errors
/// An unreadable file, an unknown extension, or every problem [`parse_str`] finds, plus
/// each missing script (named, at its handler's place).
pub fn load(path: &Path) -> Result<FlowFile, SpecErrors> {
    let name = path.display().to_string();
    let mut sink = Sink::new(&name);
    let Some(format) = Format::from_path(path) else {
        sink.push(
            SpecErrorKind::Io,
            Loc::default(),
            "",
            "unknown file type: expected a .yaml, .yml or .json file",
        );
        sink.finish()?;
        return Err(SpecErrors(Vec::new()));
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            sink.push(SpecErrorKind::Io, Loc::default(), "", format!("cannot read: {e}"));
            sink.finish()?;
            return Err(SpecErrors(Vec::new()));
        }
    };
    let dir = path.parent().unwrap_or_else(|| Path::new(""));
    let mut file = match parse_str(&text, format, &name) {
        Ok(f) => f,
        Err(mut e) => {
            // Missing scripts are problems too: report them with the others.
            let mut extra = Sink::new(&name);
            if let Ok(partial) = parse_lenient(&text, format, &name) {
                check_scripts(&partial, dir, &mut extra);
            }
            e.0.extend(extra.errors);
            e.0.sort_by_key(|x| (x.line == 0, x.line, x.column));
            return Err(e);
        }
    };
    resolve(&mut file, dir);
    check_scripts(&file, Path::new(""), &mut sink);
    sink.finish().map(|()| file)
}

/// The file's structure even when it has semantic problems (for the script check).
fn parse_lenient(text: &str, format: Format, file: &str) -> Result<FlowFile, ()> {
    let mut sink = Sink::new(file);
    let root = match format {
        Format::Yaml => tree::parse_yaml(text, &mut sink),
        Format::Json => tree::parse_json(text, &mut sink),
    }
    .ok_or(())?;
    walk::file(&root, file, &mut sink).ok_or(())
}

fn resolve(file: &mut FlowFile, dir: &Path) {
    let fix = |p: &mut std::path::PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    let fix_tls = |t: &mut TlsSpec| {
        for p in [&mut t.cert_file, &mut t.key_file, &mut t.ca_file]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
    };
    if let Some(t) = &mut file.tls {
        fix_tls(t);
    }
    for h in &mut file.handlers {
        if let Exec::Script(p) = &mut h.exec {
            fix(p);
        }
        if let Some(t) = &mut h.tls {
            fix_tls(t);
        }
    }
}

fn check_scripts(file: &FlowFile, dir: &Path, sink: &mut Sink) {
    for h in &file.handlers {
        if let Exec::Script(p) = &h.exec {
            let full = if p.is_relative() { dir.join(p) } else { p.clone() };
            if !full.is_file() {
                sink.push(
                    SpecErrorKind::MissingScript,
                    h.loc,
                    &format!("{}.exec", h.path),
                    format!(
                        "handler {:?}: script {} does not exist",
                        h.name,
                        full.display()
                    ),
                );
            }
        }
    }
}
