//! Shared bits of the examples: an engine on the memory store, a timeline printer and a
//! check that exits non-zero when an example does not end as it should.
#![allow(dead_code)]

use floxy::{Engine, EngineError, InstanceId, InstanceStatus, MemoryStore};
use std::sync::Arc;
use std::time::Duration;

/// How long an example waits for an instance.
pub const WAIT: Duration = Duration::from_secs(10);

/// An engine on a fresh in-memory store with a few workers.
pub fn engine() -> Engine {
    Engine::builder(Arc::new(MemoryStore::new()))
        .workers(4)
        .poll_interval_ms(20)
        .build()
}

/// Prints the instance's timeline and step statuses.
pub async fn print_timeline(engine: &Engine, id: InstanceId) -> Result<(), EngineError> {
    let inst = engine
        .instance(id)
        .await?
        .ok_or(EngineError::UnknownInstance(id))?;
    println!("instance {id} ({}) is {}", inst.workflow_id, inst.status);
    for e in engine.events(id).await? {
        let step = e.step.as_deref().unwrap_or("");
        let detail = e.detail.map(|d| d.value().to_string()).unwrap_or_default();
        println!(
            "  {:>4} {:<26} {:<14} {}",
            e.seq,
            e.kind.as_str(),
            step,
            detail
        );
    }
    for s in engine.steps(id).await? {
        println!("  step {:<14} {}", s.step, s.status);
    }
    Ok(())
}

/// Fails the example (non-zero exit) unless `got == want`.
pub fn expect(what: &str, got: InstanceStatus, want: InstanceStatus) {
    if got != want {
        eprintln!("{what}: expected {want}, got {got}");
        std::process::exit(1);
    }
    println!("{what}: {got} as expected\n");
}
