//! The glue from a flow file to an engine: load the file, build its handlers, register the
//! handlers and the definitions, pick a flow, render a graph.
//!
//! Everything that touches the flow-file format (`floxy-spec`) and the bash and HTTP
//! handlers (`floxy_cli::handlers`) is in this module, behind [`load`], [`validate`] and
//! [`graph`].

use floxy::{Engine, EngineError, Handler, WorkflowDefinition, WorkflowId};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of loading a flow file and registering it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The file cannot be read.
    #[error("{path}: cannot read the flow file: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is invalid: every error, one per line, each with its line and column.
    #[error("{path}: invalid flow file:\n{errors}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The errors, one per line.
        errors: String,
    },
    /// A handler could not be set up (a missing script, a bad TLS file, ...).
    #[error("{path}: handler {name}: {reason}")]
    Handler {
        /// The file.
        path: PathBuf,
        /// The handler's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `--flow` names no flow of the file.
    #[error("{path}: no flow named {name:?}; the file has: {available}")]
    UnknownFlow {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The flows of the file.
        available: String,
    },
    /// The file has several flows and none was named.
    #[error("{path} has {count} flows ({available}): name one with --flow")]
    AmbiguousFlow {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
        /// Their names.
        available: String,
    },
    /// A flow differs from the definition stored under its name and version.
    #[error(
        "flow {flow:?} ({id}) differs from the definition already registered under that version; \
         definitions are immutable: give the changed flow a new `version:`"
    )]
    Changed {
        /// The flow's name.
        flow: String,
        /// Its definition id.
        id: WorkflowId,
    },
    /// The engine refused a definition or the store failed.
    #[error("flow {flow:?}: {source}")]
    Engine {
        /// The flow's name.
        flow: String,
        /// The engine's error.
        source: EngineError,
    },
}

impl FlowError {
    /// Whether the error is in the user's input (the file, its handlers, the flow name)
    /// rather than in the store.
    #[must_use]
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Engine { source, .. } => matches!(source, EngineError::Definition(_)),
            _ => true,
        }
    }
}

/// Options of [`load`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Handlers print their input, output and stderr to stderr (`-D`).
    pub debug: bool,
}

impl LoadOptions {
    /// Options with `debug` set.
    #[must_use]
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }
}

/// A handler with the name it is registered under.
pub type NamedHandler = (String, Arc<dyn Handler>);

/// A loaded flow file: its definitions and its handlers, ready for an engine.
pub struct Flows {
    path: PathBuf,
    definitions: Vec<WorkflowDefinition>,
    handlers: Vec<NamedHandler>,
}

impl fmt::Debug for Flows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flows")
            .field("path", &self.path)
            .field(
                "definitions",
                &self
                    .definitions
                    .iter()
                    .map(WorkflowDefinition::id)
                    .collect::<Vec<_>>(),
            )
            .field(
                "handlers",
                &self.handlers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Flows {
    /// Flows made of definitions and handlers built elsewhere (tests, embedders).
    #[must_use]
    pub fn from_parts(
        path: impl Into<PathBuf>,
        definitions: Vec<WorkflowDefinition>,
        handlers: Vec<NamedHandler>,
    ) -> Self {
        Self {
            path: path.into(),
            definitions,
            handlers,
        }
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The definitions, in file order.
    #[must_use]
    pub fn definitions(&self) -> &[WorkflowDefinition] {
        &self.definitions
    }

    /// The handler names, in file order.
    pub fn handler_names(&self) -> impl Iterator<Item = &str> {
        self.handlers.iter().map(|(n, _)| n.as_str())
    }

    /// The handlers with their names, in file order.
    #[must_use]
    pub fn handlers(&self) -> &[NamedHandler] {
        &self.handlers
    }

    /// Registers every handler on `engine`.
    pub fn register_handlers(&self, engine: &Engine) {
        for (name, h) in &self.handlers {
            engine.register_handler_arc(name.clone(), Arc::clone(h));
        }
    }

    /// Registers every definition on `engine` (stored once; the same content again is a
    /// no-op). Returns their ids in file order.
    ///
    /// # Errors
    /// [`FlowError::Changed`] for a flow that differs from the definition stored under its
    /// name and version; [`FlowError::Engine`] otherwise.
    pub async fn register_definitions(
        &self,
        engine: &Engine,
    ) -> Result<Vec<WorkflowId>, FlowError> {
        let mut ids = Vec::with_capacity(self.definitions.len());
        for def in &self.definitions {
            match engine.register_workflow(def.clone()).await {
                Ok(id) => ids.push(id),
                Err(EngineError::DefinitionConflict(id)) => {
                    return Err(FlowError::Changed {
                        flow: def.name.clone(),
                        id,
                    });
                }
                Err(source) => {
                    return Err(FlowError::Engine {
                        flow: def.name.clone(),
                        source,
                    });
                }
            }
        }
        Ok(ids)
    }

    /// The flow to run: the one named `name` (a flow name, or a definition id such as
    /// `order-v1`), or the only flow of the file.
    ///
    /// # Errors
    /// [`FlowError::UnknownFlow`], [`FlowError::AmbiguousFlow`].
    pub fn select(&self, name: Option<&str>) -> Result<&WorkflowDefinition, FlowError> {
        select(&self.path, &self.definitions, name)
    }
}

fn names(defs: &[WorkflowDefinition]) -> String {
    if defs.is_empty() {
        return "no flows".to_owned();
    }
    defs.iter()
        .map(|d| d.name.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

fn select<'a>(
    path: &Path,
    defs: &'a [WorkflowDefinition],
    name: Option<&str>,
) -> Result<&'a WorkflowDefinition, FlowError> {
    match name {
        Some(n) => defs
            .iter()
            .find(|d| d.name == n)
            .or_else(|| defs.iter().find(|d| d.id().as_str() == n))
            .ok_or_else(|| FlowError::UnknownFlow {
                path: path.to_owned(),
                name: n.to_owned(),
                available: names(defs),
            }),
        None => match defs {
            [one] => Ok(one),
            _ => Err(FlowError::AmbiguousFlow {
                path: path.to_owned(),
                count: defs.len(),
                available: names(defs),
            }),
        },
    }
}

/// `--format` of `floxyctl graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[non_exhaustive]
pub enum GraphFormat {
    /// An indented outline.
    #[default]
    Text,
    /// A Mermaid flowchart.
    Mermaid,
    /// Graphviz dot.
    Dot,
}

/// What [`validate`] found in a valid file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Validation {
    /// The file.
    pub path: PathBuf,
    /// Definition ids, in file order.
    pub flows: Vec<String>,
    /// Handler names, in file order.
    pub handlers: Vec<String>,
}

/// Loads a flow file and builds its handlers.
///
/// # Errors
/// [`FlowError::Invalid`] (every error of the file), [`FlowError::Handler`].
pub fn load(path: &Path, options: LoadOptions) -> Result<Flows, FlowError> {
    backend::load(path, options)
}

/// Checks a flow file: its format, its definitions and its handlers (a script that does
/// not exist, a TLS file that cannot be read). Nothing runs.
///
/// # Errors
/// As [`load`].
pub fn validate(path: &Path) -> Result<Validation, FlowError> {
    let (file, defs) = backend::check(path)?;
    Ok(Validation {
        path: path.to_owned(),
        flows: defs.iter().map(|d| d.id().to_string()).collect(),
        handlers: file.handlers.iter().map(|h| h.name.clone()).collect(),
    })
}

/// Renders the graph of flow `name` (or the file's only flow).
///
/// # Errors
/// As [`load`], [`FlowError::UnknownFlow`], [`FlowError::AmbiguousFlow`].
pub fn graph(path: &Path, name: Option<&str>, format: GraphFormat) -> Result<String, FlowError> {
    backend::graph(path, name, format)
}

/// The flow-file format (`floxy-spec`) and the handlers built from it (`crate::handlers`).
mod backend {
    use super::{FlowError, Flows, GraphFormat, LoadOptions, NamedHandler};
    use crate::handlers::{BashHandler, HandlerSetupError, HttpHandler, HttpTls};
    use floxy::floxy_core::model::DEFAULT_MAX_PAYLOAD_BYTES;
    use floxy::{Handler, StepKind, WorkflowDefinition};
    use floxy_spec::{Exec, FlowFile, SpecErrorKind, SpecErrors};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    fn spec_error(path: &Path, e: &SpecErrors) -> FlowError {
        if let [one] = e.errors()
            && one.kind == SpecErrorKind::Io
        {
            return FlowError::Read {
                path: path.to_owned(),
                reason: one
                    .message
                    .strip_prefix("cannot read: ")
                    .unwrap_or(&one.message)
                    .to_owned(),
            };
        }
        FlowError::Invalid {
            path: path.to_owned(),
            errors: e.to_string(),
        }
    }

    /// The parsed file and its definitions.
    pub(super) fn parse(path: &Path) -> Result<(FlowFile, Vec<WorkflowDefinition>), FlowError> {
        let file = floxy_spec::load(path).map_err(|e| spec_error(path, &e))?;
        let defs = file.definitions().map_err(|e| spec_error(path, &e))?;
        Ok((file, defs))
    }

    pub(super) fn load(path: &Path, options: LoadOptions) -> Result<Flows, FlowError> {
        let (file, definitions) = parse(path)?;
        let handlers = build_handlers(path, &file, &definitions, options)?;
        Ok(Flows {
            path: path.to_owned(),
            definitions,
            handlers,
        })
    }

    /// Checks the file and the handlers' setup (scripts, TLS files) without running
    /// anything.
    pub(super) fn check(path: &Path) -> Result<(FlowFile, Vec<WorkflowDefinition>), FlowError> {
        let (file, defs) = parse(path)?;
        build_handlers(path, &file, &defs, LoadOptions::default())?;
        Ok((file, defs))
    }

    fn build_handlers(
        path: &Path,
        file: &FlowFile,
        definitions: &[WorkflowDefinition],
        options: LoadOptions,
    ) -> Result<Vec<NamedHandler>, FlowError> {
        let max_payload = definitions
            .iter()
            .map(|d| d.options.max_payload_bytes)
            .max()
            .unwrap_or(DEFAULT_MAX_PAYLOAD_BYTES);
        let setup = |name: &str, e: &HandlerSetupError| FlowError::Handler {
            path: path.to_owned(),
            name: name.to_owned(),
            reason: e.to_string(),
        };
        let mut out: Vec<NamedHandler> = Vec::with_capacity(file.handlers.len());
        for h in &file.handlers {
            let handler: Arc<dyn Handler> = match &h.exec {
                Exec::Inline(script) => Arc::new(
                    BashHandler::inline(&h.name, script)
                        .debug(options.debug)
                        .max_payload_bytes(max_payload),
                ),
                Exec::Script(script) => Arc::new(
                    BashHandler::script(&h.name, script)
                        .map_err(|e| setup(&h.name, &e))?
                        .debug(options.debug)
                        .max_payload_bytes(max_payload),
                ),
                Exec::Http(url) => {
                    let tls = h
                        .effective_tls(file.tls.as_ref())
                        .map(|t| HttpTls {
                            ca_file: t.ca_file.clone(),
                            cert_file: t.cert_file.clone(),
                            key_file: t.key_file.clone(),
                            skip_verify: t.skip_verify,
                        })
                        .unwrap_or_default();
                    let mut http = HttpHandler::new(&h.name, url, tls)
                        .map_err(|e| setup(&h.name, &e))?
                        .debug(options.debug)
                        .max_payload_bytes(max_payload);
                    for (step, ms) in step_timeouts(definitions, &h.name) {
                        http = http.step_timeout(step, Duration::from_millis(ms));
                    }
                    Arc::new(http)
                }
                other => {
                    return Err(FlowError::Handler {
                        path: path.to_owned(),
                        name: h.name.clone(),
                        reason: format!("unsupported exec {:?}", other.to_text()),
                    });
                }
            };
            out.push((h.name.clone(), handler));
        }
        Ok(out)
    }

    /// The timeouts of the steps (and compensations) that run `handler`, by step name.
    fn step_timeouts(definitions: &[WorkflowDefinition], handler: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for def in definitions {
            for step in &def.steps {
                if let StepKind::Task {
                    handler: h,
                    on_failure,
                } = &step.kind
                {
                    if h == handler
                        && let Some(ms) = step.options.timeout_ms
                    {
                        out.push((step.name.to_string(), ms));
                    }
                    if let Some(c) = on_failure
                        && c.handler == handler
                        && let Some(ms) = c.timeout_ms
                    {
                        out.push((step.name.to_string(), ms));
                    }
                }
            }
        }
        out
    }

    pub(super) fn graph(
        path: &Path,
        name: Option<&str>,
        format: GraphFormat,
    ) -> Result<String, FlowError> {
        let (_, defs) = parse(path)?;
        let def = super::select(path, &defs, name)?;
        let format = match format {
            GraphFormat::Text => floxy_spec::graph::GraphFormat::Text,
            GraphFormat::Mermaid => floxy_spec::graph::GraphFormat::Mermaid,
            GraphFormat::Dot => floxy_spec::graph::GraphFormat::Dot,
        };
        Ok(floxy_spec::graph::render(def, format))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floxy::Builder;

    fn def(name: &str) -> Result<WorkflowDefinition, floxy::DefinitionErrors> {
        Builder::new(name, 1).step("a", "a").build()
    }

    #[test]
    fn selects_flows() -> Result<(), Box<dyn std::error::Error>> {
        let flows = Flows::from_parts("f.yaml", vec![def("one")?, def("two")?], Vec::new());
        assert_eq!(flows.select(Some("two"))?.name, "two");
        assert_eq!(flows.select(Some("one-v1"))?.name, "one");
        let e = flows.select(None).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("f.yaml has 2 flows (one, two): name one with --flow")
        );
        assert!(matches!(
            flows.select(Some("three")),
            Err(FlowError::UnknownFlow { .. })
        ));
        let single = Flows::from_parts("g.yaml", vec![def("only")?], Vec::new());
        assert_eq!(single.select(None)?.name, "only");
        Ok(())
    }
}
