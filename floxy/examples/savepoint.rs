//! Savepoints: a failure after a savepoint rolls back only the steps after it; the payment
//! before the savepoint stays completed.
//!
//! `cargo run -p floxy --example savepoint`

#[path = "common/mod.rs"]
mod common;

use floxy::{Builder, HandlerError, InstanceStatus, Payload, StepStatus};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = common::engine();
    for h in ["payment", "inventory", "undo"] {
        engine.register_fn(h, move |ctx, input: Payload| async move {
            if ctx.is_compensation() {
                println!("  compensating {}", ctx.step());
            }
            Ok(input)
        });
    }
    engine.register_fn("shipping", |_ctx, _input| async move {
        Err::<Payload, _>(HandlerError::fatal("no carrier available"))
    });
    let def = Builder::new("savepoint-demo", 1)
        .step("payment", "payment")
        .on_failure("refund", "undo")
        .save_point("payment-checkpoint")
        .then("inventory", "inventory")
        .on_failure("release", "undo")
        .then("shipping", "shipping")
        .build()?;
    let wf = engine.register_workflow(def).await?;
    engine.start_workers()?;
    let done = engine
        .start_and_wait(&wf, json!({ "order": 7 }), common::WAIT)
        .await?;
    common::print_timeline(&engine, done.id).await?;
    let steps = engine.steps(done.id).await?;
    let status = |n: &str| steps.iter().find(|s| &*s.step == n).map(|s| s.status);
    if status("payment") != Some(StepStatus::Completed)
        || status("inventory") != Some(StepStatus::RolledBack)
    {
        eprintln!("the savepoint did not bound the rollback");
        std::process::exit(1);
    }
    common::expect("savepoint-demo", done.status, InstanceStatus::Failed);
    engine.shutdown(None).await;
    Ok(())
}
