//! End-to-end throughput: 3-step sagas per second on the memory store, with 1 and 4
//! workers (claims, handler calls, transitions, commits; no-op handlers).
//!
//! `cargo bench -p floxy --bench saga`
//!
//! `FLOXY_BENCH_RECORDER=prometheus` installs a Prometheus recorder (the exporter floxyd
//! uses, histograms with the suggested buckets) so that every metric the engine records is
//! stored; without it the facade's no-op recorder runs (the library's default cost).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use floxy::{Builder, Engine, MemoryStore, Payload};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SAGAS: u64 = 2_000;

fn engine(workers: usize) -> Engine {
    let engine = Engine::builder(Arc::new(MemoryStore::new()))
        .workers(workers)
        .batch_size(64)
        .poll_interval_ms(1)
        .build();
    engine.register_fn("noop", |_ctx, input: Payload| async move { Ok(input) });
    engine
}

async fn run(workers: usize, n: u64) -> Duration {
    let engine = engine(workers);
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
    let begin = Instant::now();
    let mut ids = Vec::with_capacity(n as usize);
    for _ in 0..n {
        ids.push(
            engine
                .start(&wf, serde_json::json!({"x": 1}))
                .await
                .unwrap(),
        );
    }
    engine.start_workers().unwrap();
    for id in ids {
        let done = engine.wait_for(id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(done.status, floxy::InstanceStatus::Completed);
    }
    let took = begin.elapsed();
    engine.shutdown(None).await;
    took
}

fn install_recorder() {
    if std::env::var("FLOXY_BENCH_RECORDER").as_deref() == Ok("prometheus") {
        let mut b = metrics_exporter_prometheus::PrometheusBuilder::new();
        for m in floxy::metrics::METRICS {
            if let Some(buckets) = m.buckets {
                b = b
                    .set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(m.name.to_owned()),
                        buckets,
                    )
                    .unwrap();
            }
        }
        metrics::set_global_recorder(b.build_recorder()).unwrap();
        floxy::metrics::describe();
        eprintln!("saga bench: Prometheus recorder installed");
    }
}

fn bench(c: &mut Criterion) {
    install_recorder();
    let mut g = c.benchmark_group("saga_3_steps_memory");
    g.throughput(Throughput::Elements(SAGAS));
    g.sample_size(10);
    for workers in [1usize, 4] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        g.bench_function(format!("workers_{workers}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rt.block_on(run(workers, SAGAS));
                }
                total
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
