//! The cost of `Engine::subscribe` on commit throughput: 3-step sagas/s on the memory store
//! with no subscriber, a stalled one (never reads: it lags) and a draining one, in paired
//! rounds (the three modes one after another, the order rotated each round), medians.

use crate::report::Report;
use floxy::{Builder, Engine, InstanceStatus, MemoryStore, Payload, SubscriptionError};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    None,
    Stalled,
    Draining,
}

const MODES: [(Mode, &str); 3] = [
    (Mode::None, "no subscriber"),
    (Mode::Stalled, "a stalled subscriber"),
    (Mode::Draining, "a draining subscriber"),
];

/// Sagas per second of `n` 3-step sagas in `mode`.
async fn sagas(mode: Mode, n: usize) -> f64 {
    let engine = Engine::builder(Arc::new(MemoryStore::new()))
        .workers(4)
        .batch_size(64)
        .poll_interval_ms(1)
        .build();
    engine.register_fn("noop", |_ctx, input: Payload| async move { Ok(input) });
    let wf = engine
        .register_workflow(
            Builder::new("saga", 1)
                .step("a", "noop")
                .on_failure("ua", "noop")
                .then("b", "noop")
                .on_failure("ub", "noop")
                .then("c", "noop")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let stalled = (mode == Mode::Stalled).then(|| engine.subscribe());
    let drainer = (mode == Mode::Draining).then(|| {
        let mut sub = engine.subscribe();
        tokio::spawn(async move {
            loop {
                match sub.recv().await {
                    Ok(_) | Err(SubscriptionError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        })
    });
    engine.start_workers().unwrap();
    let begin = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(engine.start(&wf, json!({"x": 1})).await.unwrap());
    }
    for id in ids {
        let done = engine.wait_for(id, Duration::from_mins(2)).await.unwrap();
        assert_eq!(done.status, InstanceStatus::Completed);
    }
    let rate = n as f64 / begin.elapsed().as_secs_f64();
    engine.shutdown(Duration::from_secs(5)).await;
    drop(stalled);
    if let Some(d) = drainer {
        d.abort();
    }
    rate
}

/// The `events` part.
pub(crate) async fn run(quick: bool, report: &mut Report) {
    let (rounds, n) = if quick { (3, 500) } else { (7, 2_000) };
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in 0..MODES.len() {
            let i = (round + k) % MODES.len();
            let rate = sagas(MODES[i].0, n).await;
            eprintln!("  events, {}: {rate:.0} sagas/s", MODES[i].1);
            rates[i].push(rate);
        }
    }
    let medians: Vec<f64> = rates
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    report.section("Event stream: the cost of `Engine::subscribe` on commits (memory store)");
    report.line(&format!(
        "{n} 3-step sagas per run, 4 workers, no-op handlers; median of {rounds} paired \
         rounds (modes alternated, order rotated). A stalled subscriber never reads: it lags \
         and is told how many events it missed; commits must not wait for it."
    ));
    report.line("");
    report.line("| subscriber | sagas/s | min | max | vs none |");
    report.line("|---|---:|---:|---:|---:|");
    for (i, (_, label)) in MODES.iter().enumerate() {
        let (lo, hi) = (rates[i][0], rates[i][rates[i].len() - 1]);
        report.line(&format!(
            "| {label} | {:.0} | {lo:.0} | {hi:.0} | {:.2}× |",
            medians[i],
            medians[i] / medians[0]
        ));
    }
}
