//! `POST /api/workflows`: registering flows at run time, allowed only for handlers this
//! process has registered.
//!
//! The body is a flow file (floxy-spec's format): YAML with a `Content-Type` naming YAML
//! (`application/yaml`, `text/yaml`, `application/x-yaml`), or JSON: either the flow file
//! itself, or `{"format": "yaml"|"json", "text": "<the file>"}`. The `exec` of the file's
//! handlers is never run: the process's own registered handlers run the steps, and a
//! definition naming a handler that is not registered here is refused, so a client cannot
//! make the server run code of its choosing.

use crate::error::ApiError;
use axum::http::HeaderMap;
use floxy::{CompiledWorkflow, Engine};
use floxy_spec::Format;
use serde::Deserialize;

/// File name in the error messages of a posted flow file.
const FILE: &str = "request";

/// The wrapped form of a flow file.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    /// `yaml` (default) or `json`.
    format: Option<String>,
    /// The flow file's text.
    text: String,
}

fn source(headers: &HeaderMap, body: &[u8]) -> Result<(Format, String), ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not UTF-8: {e}")))?;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.contains("yaml") {
        return Ok((Format::Yaml, text.to_owned()));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    if value.get("text").is_some() {
        let req: RegisterRequest = serde_json::from_value(value)
            .map_err(|e| ApiError::BadRequest(format!("invalid request: {e}")))?;
        let format = match req.format.as_deref() {
            None | Some("yaml" | "yml") => Format::Yaml,
            Some("json") => Format::Json,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "unknown format {other:?}: yaml or json"
                )));
            }
        };
        return Ok((format, req.text));
    }
    Ok((Format::Json, text.to_owned()))
}

/// Parses and validates every flow of the file, checks the handlers they name against
/// this process's registered handlers, then registers them all; returns their ids.
pub(crate) async fn register(
    engine: &Engine,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<String>, ApiError> {
    let (format, text) = source(headers, body)?;
    let file = floxy_spec::parse_str(&text, format, FILE)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let defs = file
        .definitions()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if defs.is_empty() {
        return Err(ApiError::BadRequest("the flow file defines no flow".into()));
    }
    let mut compiled = Vec::with_capacity(defs.len());
    for def in defs {
        let id = def.id();
        let wf = CompiledWorkflow::compile(def)
            .map_err(|e| ApiError::BadRequest(format!("flow {id}: {e}")))?;
        let missing: Vec<String> = wf
            .handlers()
            .iter()
            .filter(|h| !engine.has_handler(h))
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "flow {id} names handlers not registered in this process: {}",
                missing.join(", ")
            )));
        }
        compiled.push(wf);
    }
    // Refuse the whole file when one definition conflicts, before registering any.
    for wf in &compiled {
        let stored = engine
            .store()
            .get_definition(wf.id())
            .await
            .map_err(floxy::EngineError::from)?;
        if stored.is_some_and(|d| &d != wf.definition()) {
            return Err(ApiError::from(floxy::EngineError::DefinitionConflict(
                wf.id().clone(),
            )));
        }
    }
    let mut ids = Vec::with_capacity(compiled.len());
    for wf in compiled {
        let id = engine.register_workflow(wf.definition().clone()).await?;
        ids.push(id.to_string());
    }
    Ok(ids)
}
