//! `POST /api/workflows`: registering flows at run time, allowed only for handlers this
//! process has registered.

use crate::error::ApiError;
use floxy::{CompiledWorkflow, Engine, WorkflowDefinition};

/// Parses `text` and returns its definitions.
fn parse(format: Option<&str>, text: &str) -> Result<Vec<WorkflowDefinition>, ApiError> {
    match format.unwrap_or("json") {
        "json" => serde_json::from_str::<Vec<WorkflowDefinition>>(text)
            .or_else(|_| serde_json::from_str::<WorkflowDefinition>(text).map(|d| vec![d]))
            .map_err(|e| ApiError::BadRequest(format!("invalid flow file: {e}"))),
        other => Err(ApiError::BadRequest(format!(
            "unsupported format {other:?}: json"
        ))),
    }
}

/// Validates every definition, checks its handlers against the allowlist (the handlers
/// registered in `engine`), then registers them all; returns their ids.
pub(crate) async fn register(
    engine: &Engine,
    format: Option<&str>,
    text: Option<String>,
) -> Result<Vec<String>, ApiError> {
    let text = text.ok_or_else(|| ApiError::BadRequest("missing field `text`".into()))?;
    let defs = parse(format, &text)?;
    if defs.is_empty() {
        return Err(ApiError::BadRequest(
            "the flow file defines no workflow".into(),
        ));
    }
    let mut compiled = Vec::with_capacity(defs.len());
    for def in defs {
        let id = def.id();
        let wf = CompiledWorkflow::compile(def)
            .map_err(|e| ApiError::BadRequest(format!("workflow {id}: {e}")))?;
        let missing: Vec<String> = wf
            .handlers()
            .iter()
            .filter(|h| !engine.has_handler(h))
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "workflow {id} names handlers not registered in this process: {}",
                missing.join(", ")
            )));
        }
        compiled.push(wf);
    }
    let mut ids = Vec::with_capacity(compiled.len());
    for wf in compiled {
        let id = engine.register_workflow(wf.definition().clone()).await?;
        ids.push(id.to_string());
    }
    Ok(ids)
}
