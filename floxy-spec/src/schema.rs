//! The JSON Schema of the flow-file format, generated from the same key tables the parser
//! uses (so they cannot drift apart). Published as `floxy-spec/flow.schema.json`.

use crate::spec::StepType;
use crate::walk::{
    COMMON_STEP_KEYS, COMPENSATION_KEYS, FILE_KEYS, FLOW_KEYS, HANDLER_KEYS, JOINS, KIND_KEYS,
    REJECTS, RETRY_STRATEGIES, TIMEOUTS, TLS_KEYS,
};
use serde_json::{Map, Value, json};

fn names<T>(values: &[(T, &str)]) -> Value {
    Value::from(values.iter().map(|(_, n)| *n).collect::<Vec<_>>())
}

fn schema_of(key: &str) -> Value {
    let r = |name: &str| json!({ "$ref": format!("#/$defs/{name}") });
    match key {
        "tls" => r("tls"),
        "handlers" => json!({ "type": "array", "items": r("handler") }),
        "flows" => json!({ "type": "array", "items": r("flow") }),
        "skip_verify" | "dlq" | "no_idempotent" => json!({ "type": "boolean" }),
        "version" => json!({ "type": "integer", "minimum": 1 }),
        "max_retries" => json!({ "type": "integer", "minimum": 0 }),
        "priority" => json!({ "type": "integer", "minimum": 0, "maximum": 100 }),
        "lease_ttl" | "delay" | "retry_delay" | "timeout" | "decision_timeout" => r("duration"),
        "steps" | "tasks" | "else" => json!({ "type": "array", "items": r("step") }),
        "branches" => json!({
            "type": "array", "minItems": 2,
            "items": { "type": "array", "minItems": 1, "items": r("step") }
        }),
        "join_step" => json!({ "type": "array", "items": { "type": "string" } }),
        "metadata" => json!({
            "type": "object",
            "additionalProperties": { "type": ["string", "number", "boolean"] }
        }),
        "compensation" => r("compensation"),
        "retry_strategy" => json!({ "enum": names(RETRY_STRATEGIES) }),
        "join" => json!({ "enum": names(JOINS) }),
        "on_reject" => json!({ "enum": names(REJECTS) }),
        "on_timeout" => json!({ "enum": names(TIMEOUTS) }),
        "type" => json!({ "enum": names(&StepType::ALL) }),
        _ => json!({ "type": "string" }),
    }
}

fn object(keys: &[&str], required: &[&str]) -> Value {
    let props: Map<String, Value> = keys
        .iter()
        .map(|k| ((*k).to_owned(), schema_of(k)))
        .collect();
    let mut o = json!({ "type": "object", "properties": props, "additionalProperties": false });
    if !required.is_empty() {
        o["required"] = Value::from(required.to_vec());
    }
    o
}

/// The JSON Schema (draft 2020-12) of the flow-file format.
#[must_use]
pub fn json_schema() -> Value {
    let mut step_variants = Vec::new();
    for (kind, keys) in KIND_KEYS {
        let all: Vec<&str> = COMMON_STEP_KEYS
            .iter()
            .chain(keys.iter())
            .copied()
            .collect();
        let mut required = vec!["name"];
        match kind {
            StepType::Parallel => required.push("tasks"),
            StepType::Fork => required.push("branches"),
            _ => {}
        }
        if *kind != StepType::Task {
            required.push("type");
        }
        let mut o = object(&all, &required);
        o["properties"]["type"] = json!({ "const": kind.as_str() });
        if *kind == StepType::Parallel {
            o["properties"]["tasks"]["minItems"] = json!(2);
        }
        if *kind == StepType::Condition {
            o["oneOf"] = json!([{ "required": ["expr"] }, { "required": ["condition"] }]);
        }
        o["title"] = json!(format!("{} step", kind.as_str()));
        step_variants.push(o);
    }
    step_variants.insert(
        0,
        json!({ "type": "string", "minLength": 1, "title": "task shorthand (name = handler)" }),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/floxy-rs/floxy/floxy-spec/flow.schema.json",
        "title": "floxy flow file",
        "description": "Handlers and flows of floxyctl and floxyd (Floxy Pro compatible).",
        "type": "object",
        "properties": object(FILE_KEYS, &[])["properties"].clone(),
        "additionalProperties": false,
        "$defs": {
            "tls": object(TLS_KEYS, &[]),
            "handler": object(HANDLER_KEYS, &["name", "exec"]),
            "flow": {
                "type": "object",
                "properties": {
                    "steps": { "type": "array", "minItems": 1, "items": { "$ref": "#/$defs/step" } },
                    "name": { "type": "string", "minLength": 1 },
                    "version": schema_of("version"),
                    "dlq": schema_of("dlq"),
                    "lease_ttl": schema_of("lease_ttl"),
                },
                "required": ["name", "steps"],
                "additionalProperties": false,
                "propertyNames": { "enum": FLOW_KEYS },
            },
            "compensation": object(COMPENSATION_KEYS, &[]),
            "duration": {
                "description": "Milliseconds, or a string with a unit: 1500ms, 3s, 2m, 1h.",
                "oneOf": [
                    { "type": "integer", "minimum": 0 },
                    { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$|^[0-9]+$" }
                ]
            },
            "step": { "oneOf": step_variants },
        }
    })
}
