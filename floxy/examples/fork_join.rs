//! A data pipeline: fetch from three sources in parallel, join them, aggregate.
//!
//! `cargo run -p floxy --example fork_join`

#[path = "common/mod.rs"]
mod common;

use floxy::{Builder, InstanceStatus, JoinStrategy, Payload};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = common::engine();
    for source in ["db", "api", "files"] {
        engine.register_fn(format!("fetch.{source}"), move |_ctx, _input| async move {
            Ok(json!({ "source": source, "rows": source.len() * 10 }).into())
        });
    }
    engine.register_fn("aggregate", |_ctx, input: Payload| async move {
        let outputs = input.value()["outputs"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let total: u64 = outputs.values().filter_map(|o| o["rows"].as_u64()).sum();
        Ok(json!({ "total_rows": total, "sources": outputs.len() }).into())
    });
    let def = Builder::new("pipeline", 1)
        .fork("fetch", |f| {
            f.branch(|b| b.step("from_db", "fetch.db"))
                .branch(|b| b.step("from_api", "fetch.api"))
                .branch(|b| b.step("from_files", "fetch.files"))
        })
        .join("fetched", JoinStrategy::All)
        .then("aggregate", "aggregate")
        .build()?;
    let wf = engine.register_workflow(def).await?;
    engine.start_workers()?;
    let done = engine.start_and_wait(&wf, json!({}), common::WAIT).await?;
    common::print_timeline(&engine, done.id).await?;
    let out = done.output.map(|o| o.value().clone()).unwrap_or_default();
    println!("output: {out}");
    if out["total_rows"] != json!(100) {
        eprintln!("unexpected aggregate");
        std::process::exit(1);
    }
    common::expect("pipeline", done.status, InstanceStatus::Completed);
    engine.shutdown(None).await;
    Ok(())
}
