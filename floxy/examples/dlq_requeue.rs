//! DLQ mode: a step that fails for good parks the instance in the dead-letter queue instead
//! of rolling back. An operator fixes the input and requeues it; the instance resumes.
//!
//! `cargo run -p floxy --example dlq_requeue`

#[path = "common/mod.rs"]
mod common;

use floxy::{Builder, DlqQuery, HandlerError, InstanceStatus, Payload};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = common::engine();
    engine.register_fn("validate", |_ctx, input: Payload| async move { Ok(input) });
    engine.register_fn("process", |_ctx, input: Payload| async move {
        match input.value()["payment_id"].as_str() {
            Some(id) if id.starts_with("pay-") => Ok(json!({ "processed": id }).into()),
            _ => Err(HandlerError::retryable("unknown payment id")),
        }
    });
    let def = Builder::new("payment-processing", 1)
        .dlq(true)
        .step("validate", "validate")
        .then("process", "process")
        .max_retries(1)
        .retry_delay_ms(10)
        .build()?;
    let wf = engine.register_workflow(def).await?;
    engine.start_workers()?;
    let parked = engine
        .start_and_wait(&wf, json!({ "payment_id": "typo" }), common::WAIT)
        .await?;
    common::expect("bad payment id", parked.status, InstanceStatus::Dlq);
    let page = engine
        .dlq(&DlqQuery {
            instance_id: Some(parked.id),
            ..DlqQuery::default()
        })
        .await?;
    let Some(record) = page.items.first() else {
        eprintln!("no DLQ record");
        std::process::exit(1);
    };
    println!(
        "DLQ record {}: step {} failed: {}",
        record.id, record.record.step, record.record.error
    );
    engine
        .requeue(record.id, Some(json!({ "payment_id": "pay-42" }).into()))
        .await?;
    let done = engine.wait_for(parked.id, common::WAIT).await?;
    common::print_timeline(&engine, done.id).await?;
    common::expect(
        "after requeue with a fixed input",
        done.status,
        InstanceStatus::Completed,
    );
    engine.shutdown(None).await;
    Ok(())
}
