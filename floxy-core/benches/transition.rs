//! Pure transition cost: one `machine::apply` for a step completion (the hot path of every
//! step), plus `machine::start`, on a 3-step saga and on a fork of 8 branches.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use floxy_core::builder::Builder;
use floxy_core::graph::CompiledWorkflow;
use floxy_core::machine::{self, Input, WorkOutcome};
use floxy_core::model::{
    FencingToken, InstanceId, InstanceSnapshot, JoinStrategy, Payload, QueueKey, QueueOp, StepRun,
    StepStatus, Timestamp,
};
use std::hint::black_box;

fn snapshot_after_start(wf: &CompiledWorkflow) -> (InstanceSnapshot, Vec<QueueKey>) {
    let t = machine::start(
        wf,
        InstanceId::from_u128(1),
        Payload::new(serde_json::json!({"a": 1})),
        None,
        Timestamp(0),
    )
    .unwrap();
    let keys = t
        .queue
        .iter()
        .filter_map(|op| match op {
            QueueOp::Upsert(i) => Some(i.key.clone()),
            _ => None,
        })
        .collect();
    let mut steps: Vec<StepRun> = t.steps.into_iter().map(|w| w.run).collect();
    for s in &mut steps {
        if s.status == StepStatus::Pending {
            s.status = StepStatus::Running;
            s.attempts = 1;
        }
    }
    (
        InstanceSnapshot {
            instance: t.instance,
            steps,
            dlq: vec![],
        },
        keys,
    )
}

fn bench(c: &mut Criterion) {
    let saga = CompiledWorkflow::compile(
        Builder::new("saga", 1)
            .step("a", "h")
            .on_failure("ua", "u")
            .then("b", "h")
            .on_failure("ub", "u")
            .then("c", "h")
            .build()
            .unwrap(),
    )
    .unwrap();
    let mut g = c.benchmark_group("transition");
    g.throughput(Throughput::Elements(1));
    g.bench_function("start_3_step_saga", |b| {
        let input = Payload::new(serde_json::json!({"a": 1}));
        b.iter(|| {
            machine::start(
                black_box(&saga),
                InstanceId::from_u128(1),
                input.clone(),
                None,
                Timestamp(0),
            )
            .unwrap()
        });
    });
    let (snap, keys) = snapshot_after_start(&saga);
    let done = Input::WorkDone {
        key: keys[0].clone(),
        token: FencingToken(1),
        attempt: 1,
        outcome: WorkOutcome::Succeeded(Payload::new(serde_json::json!({"ok": true}))),
    };
    g.bench_function("complete_step_3_step_saga", |b| {
        b.iter(|| {
            machine::apply(
                black_box(&saga),
                black_box(&snap),
                black_box(&done),
                Timestamp(5),
            )
            .unwrap()
        });
    });
    let fail = Input::WorkDone {
        key: keys[0].clone(),
        token: FencingToken(1),
        attempt: 1,
        outcome: WorkOutcome::Failed {
            error: "x".into(),
            retryable: true,
        },
    };
    g.bench_function("retry_step_3_step_saga", |b| {
        b.iter(|| {
            machine::apply(
                black_box(&saga),
                black_box(&snap),
                black_box(&fail),
                Timestamp(5),
            )
            .unwrap()
        });
    });

    let fork = CompiledWorkflow::compile(
        Builder::new("fork", 1)
            .fork("f", |mut f| {
                for i in 0..8 {
                    f = f.branch(move |b| b.step(&format!("b{i}"), "h"));
                }
                f
            })
            .join("j", JoinStrategy::All)
            .then("after", "h")
            .build()
            .unwrap(),
    )
    .unwrap();
    let (snap, keys) = snapshot_after_start(&fork);
    let done = Input::WorkDone {
        key: keys[0].clone(),
        token: FencingToken(1),
        attempt: 1,
        outcome: WorkOutcome::Succeeded(Payload::null()),
    };
    g.bench_function("complete_branch_fork_of_8", |b| {
        b.iter_batched(
            || snap.clone(),
            |s| machine::apply(&fork, &s, &done, Timestamp(5)).unwrap(),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
