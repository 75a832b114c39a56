//! Cancel and abort. Cancel stops the running step (its handler sees the cancellation
//! token) and compensates everything done so far; abort stops without compensating.
//!
//! `cargo run -p floxy --example cancel_abort`

#[path = "common/mod.rs"]
mod common;

use floxy::{Builder, HandlerError, InstanceStatus, Payload};
use serde_json::json;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = common::engine();
    engine.register_fn("book", |_ctx, input: Payload| async move { Ok(input) });
    engine.register_fn("unbook", |ctx, _input| async move {
        println!(
            "  compensating {} ({})",
            ctx.step(),
            ctx.compensation().map_or("?", |c| c.reason.as_str())
        );
        Ok(Payload::null())
    });
    engine.register_fn("slow", |ctx, _input| async move {
        // A long call that honours cancellation.
        tokio::select! {
            () = ctx.cancellation_token().cancelled() => Err(HandlerError::retryable("cancelled")),
            () = tokio::time::sleep(Duration::from_mins(1)) => Ok(Payload::null()),
        }
    });
    let def = Builder::new("trip", 1)
        .step("flight", "book")
        .on_failure("cancel_flight", "unbook")
        .then("hotel", "book")
        .on_failure("cancel_hotel", "unbook")
        .then("visa", "slow")
        .build()?;
    let wf = engine.register_workflow(def).await?;
    engine.start_workers()?;

    for (op, want) in [
        ("cancel", InstanceStatus::Cancelled),
        ("abort", InstanceStatus::Aborted),
    ] {
        let id = engine.start(&wf, json!({ "who": op })).await?;
        // Wait until the slow step runs.
        engine
            .wait_until(id, common::WAIT, |s| {
                s.steps
                    .iter()
                    .any(|r| &*r.step == "visa" && r.status == floxy::StepStatus::Running)
            })
            .await?;
        if op == "cancel" {
            engine.cancel(id, Some("customer changed plans")).await?;
        } else {
            engine.abort(id, Some("fraud suspected")).await?;
        }
        let done = engine.wait_for(id, common::WAIT).await?;
        common::print_timeline(&engine, id).await?;
        common::expect(op, done.status, want);
    }
    engine.shutdown(Some(Duration::from_secs(5))).await;
    Ok(())
}
