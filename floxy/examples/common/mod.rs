//! Shared bits of the examples: an engine on the memory store (or, with `--redb PATH` and the
//! `redb` feature, on a durable redb file), a timeline printer and a check that exits
//! non-zero when an example does not end as it should.
#![allow(dead_code)]

use floxy::{Engine, EngineError, InstanceId, InstanceStatus, MemoryStore, Store};
use std::sync::Arc;
use std::time::Duration;

/// How long an example waits for an instance.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// An engine with a few workers, on a fresh in-memory store, or on the redb file given as
/// `--redb PATH` (created if missing, reused if not).
pub(crate) fn engine() -> Engine {
    Engine::builder(store())
        .workers(4)
        .poll_interval_ms(20)
        .build()
}

/// The store the command line asks for; exits with status 2 and a message when it cannot
/// be had.
fn store() -> Arc<dyn Store> {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == "--redb") else {
        return Arc::new(MemoryStore::new());
    };
    let Some(path) = args.get(i + 1) else {
        eprintln!("--redb needs a file path, e.g. --redb /tmp/floxy-example.redb");
        std::process::exit(2);
    };
    redb_store(path)
}

#[cfg(feature = "redb")]
fn redb_store(path: &str) -> Arc<dyn Store> {
    match floxy::RedbStore::open(path, floxy::RedbOptions::default()) {
        Ok(store) => {
            println!("store: redb file {path}\n");
            Arc::new(store)
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}

#[cfg(not(feature = "redb"))]
fn redb_store(_path: &str) -> Arc<dyn Store> {
    eprintln!("--redb needs the redb feature: cargo run -p floxy --features redb --example ...");
    std::process::exit(2);
}

/// Prints the instance's timeline and step statuses.
pub(crate) async fn print_timeline(engine: &Engine, id: InstanceId) -> Result<(), EngineError> {
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
pub(crate) fn expect(what: &str, got: InstanceStatus, want: InstanceStatus) {
    if got != want {
        eprintln!("{what}: expected {want}, got {got}");
        std::process::exit(1);
    }
    println!("{what}: {got} as expected\n");
}
