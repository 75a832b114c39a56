//! An order saga: reserve stock, charge the card, ship. When shipping fails for good, the
//! engine refunds the charge and releases the stock, in reverse order.
//!
//! `cargo run -p floxy --example order_saga` (memory store), or on a durable redb file:
//! `cargo run -p floxy --features redb --example order_saga -- --redb /tmp/floxy-orders.redb`

#[path = "common/mod.rs"]
mod common;

use floxy::{Builder, HandlerError, InstanceStatus, Payload};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = common::engine();
    engine.register_fn("stock.reserve", |_ctx, input: Payload| async move {
        Ok(json!({ "reserved": input.value()["items"], "order": input.value()["order"] }).into())
    });
    engine.register_fn("stock.release", |ctx, _input| async move {
        println!(
            "  compensating: releasing stock ({})",
            ctx.idempotency_key()
        );
        Ok(Payload::null())
    });
    engine.register_fn("payment.charge", |_ctx, input: Payload| async move {
        Ok(json!({ "charged": 100, "order": input.value()["order"] }).into())
    });
    engine.register_fn("payment.refund", |ctx, _input| async move {
        let reason = ctx.compensation().map_or("?", |c| c.reason.as_str());
        println!("  compensating: refunding the charge (reason: {reason})");
        Ok(Payload::null())
    });
    engine.register_fn("shipping.ship", |_ctx, input: Payload| async move {
        if input.value()["order"] == json!("bad-address") {
            return Err(HandlerError::fatal("carrier rejected the address"));
        }
        Ok(json!({ "tracking": "TRACK-1" }).into())
    });

    let def = Builder::new("order", 1)
        .step("reserve", "stock.reserve")
        .on_failure("release", "stock.release")
        .then("charge", "payment.charge")
        .on_failure("refund", "payment.refund")
        .then("ship", "shipping.ship")
        .max_retries(2)
        .retry_delay_ms(10)
        .build()?;
    let wf = engine.register_workflow(def).await?;
    engine.start_workers()?;

    println!("== an order that ships");
    let ok = engine
        .start_and_wait(
            &wf,
            json!({ "order": "o-1", "items": ["book"] }),
            common::WAIT,
        )
        .await?;
    common::print_timeline(&engine, ok.id).await?;
    common::expect("order o-1", ok.status, InstanceStatus::Completed);

    println!("== an order whose shipping fails: refund, then release");
    let bad = engine
        .start_and_wait(
            &wf,
            json!({ "order": "bad-address", "items": ["lamp"] }),
            common::WAIT,
        )
        .await?;
    common::print_timeline(&engine, bad.id).await?;
    common::expect("order bad-address", bad.status, InstanceStatus::Failed);

    engine.shutdown(None).await;
    Ok(())
}
