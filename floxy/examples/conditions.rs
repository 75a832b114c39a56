//! Condition branches with Floxy's template expressions: big orders get a manual review,
//! small ones a fast path.
//!
//! `cargo run -p floxy --example conditions`

#[path = "common/mod.rs"]
mod common;

use floxy::{Builder, InstanceStatus, Payload};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = common::engine();
    for h in ["review", "fast_path", "notify"] {
        engine.register_fn(h, move |_ctx, input: Payload| async move {
            let mut v = input.value().clone();
            v[h] = json!(true);
            Ok(v.into())
        });
    }
    let def = Builder::new("order-routing", 1)
        .condition(
            "is_big",
            "{{ and (gt .amount 100) (eq .currency \"EUR\") }}",
        )
        .otherwise(|e| e.step("fast_path", "fast_path"))
        .then("review", "review")
        .then("notify", "notify")
        .build()?;
    let wf = engine.register_workflow(def).await?;
    engine.start_workers()?;
    for (amount, want) in [(500, "review"), (20, "fast_path")] {
        let done = engine
            .start_and_wait(
                &wf,
                json!({ "amount": amount, "currency": "EUR" }),
                common::WAIT,
            )
            .await?;
        common::print_timeline(&engine, done.id).await?;
        let out = done
            .output
            .clone()
            .map(|o| o.value().clone())
            .unwrap_or_default();
        if out[want] != json!(true) {
            eprintln!("amount {amount}: expected the {want} branch, output {out}");
            std::process::exit(1);
        }
        common::expect(
            &format!("amount {amount} took {want}"),
            done.status,
            InstanceStatus::Completed,
        );
    }
    engine.shutdown(None).await;
    Ok(())
}
