//! Human in the loop: a payout waits for an approver. One request is approved and paid,
//! the other rejected (which aborts it, Floxy's default).
//!
//! `cargo run -p floxy --example human_approval`

#[path = "common/mod.rs"]
mod common;

use floxy::{Builder, Decision, InstanceStatus, Payload, StepStatus};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = common::engine();
    engine.register_fn("prepare", |_ctx, input: Payload| async move { Ok(input) });
    engine.register_fn("payout", |_ctx, input: Payload| async move {
        println!("  paying out, approved by {}", input.value()["decided_by"]);
        Ok(input)
    });
    let def = Builder::new("payout", 1)
        .step("prepare", "prepare")
        .wait_human("approve")
        .then("pay", "payout")
        .build()?;
    let wf = engine.register_workflow(def).await?;
    engine.start_workers()?;

    for (who, decision, want) in [
        ("alice", Decision::Confirm, InstanceStatus::Completed),
        ("bob", Decision::Reject, InstanceStatus::Aborted),
    ] {
        let id = engine.start(&wf, json!({ "amount": 250 })).await?;
        // Returns as soon as the human step waits: nothing polls.
        let waiting = engine.wait_for(id, common::WAIT).await?;
        let approve = engine
            .steps(id)
            .await?
            .into_iter()
            .find(|s| &*s.step == "approve");
        if waiting.status != InstanceStatus::Running
            || approve.map(|s| s.status) != Some(StepStatus::WaitingDecision)
        {
            eprintln!("expected the instance to wait for a decision");
            std::process::exit(1);
        }
        engine
            .decide(id, "approve", who, decision, Some("looked fine"))
            .await?;
        let done = engine.wait_for(id, common::WAIT).await?;
        common::print_timeline(&engine, id).await?;
        common::expect(&format!("decision by {who}"), done.status, want);
    }
    engine.shutdown(None).await;
    Ok(())
}
