//! The engine's metrics (`floxy::metrics`), end to end on the memory store with virtual time:
//! each saga outcome moves the counters and histograms by the expected amounts, the store
//! gauges are sampled, every recorded name and label set is the documented one, and no label
//! value is an instance id.
//!
//! Each test runs on its own current-thread runtime with a `DebuggingRecorder` set as the
//! thread's default recorder: every task of the engine runs on that thread, so tests run in
//! parallel without sharing a global recorder.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

use floxy::metrics::{self as m, METRICS, MetricKind};
use floxy::{
    Builder, Engine, HandlerError, InstanceId, InstanceStatus, MemoryStore, Payload, StepContext,
    Store, Timestamp, TokioClock,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const EPOCH: Timestamp = Timestamp(1_700_000_000_000);
const WAIT: Duration = Duration::from_mins(10);

/// One recorded series: name, labels, value.
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    value: DebugValue,
}

/// A snapshot of the recorder.
struct Metrics(Vec<Series>);

impl Metrics {
    fn take(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(ck, _, _, value)| {
                    let key = ck.key();
                    Series {
                        name: key.name().to_owned(),
                        labels: key
                            .labels()
                            .map(|l| (l.key().to_owned(), l.value().to_owned()))
                            .collect(),
                        value,
                    }
                })
                .collect(),
        )
    }

    /// The series of `name` whose labels include every pair of `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Series> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }

    /// Sum of the matching counters (0 when none was recorded).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.matching(name, labels)
            .map(|s| match &s.value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    /// Values of the matching histograms.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.matching(name, labels)
            .flat_map(|s| match &s.value {
                DebugValue::Histogram(v) => v.iter().map(|x| x.into_inner()).collect::<Vec<_>>(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .collect()
    }

    /// The value of the one matching gauge.
    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .matching(name, labels)
            .map(|s| match &s.value {
                DebugValue::Gauge(v) => v.into_inner(),
                other => panic!("{name} is not a gauge: {other:?}"),
            })
            .collect();
        assert_eq!(found.len(), 1, "one series of {name} {labels:?}: {found:?}");
        found[0]
    }

    /// Every recorded name is documented with exactly the recorded label names and its type,
    /// and no label value is an instance id (or any UUID).
    fn check_names_and_labels(&self, ids: &[InstanceId]) {
        let ids: BTreeSet<String> = ids.iter().map(|i| i.0.to_string()).collect();
        for s in &self.0 {
            let def = m::find(&s.name).unwrap_or_else(|| {
                panic!("{} is recorded but not in floxy::metrics::METRICS", s.name)
            });
            let recorded: BTreeSet<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
            let documented: BTreeSet<&str> = def.labels.iter().copied().collect();
            assert_eq!(recorded, documented, "label names of {}", s.name);
            let kind = match s.value {
                DebugValue::Counter(_) => MetricKind::Counter,
                DebugValue::Gauge(_) => MetricKind::Gauge,
                DebugValue::Histogram(_) => MetricKind::Histogram,
            };
            assert_eq!(kind, def.kind, "type of {}", s.name);
            for (k, v) in &s.labels {
                assert!(
                    !ids.contains(v),
                    "{}: label {k}={v} is an instance id",
                    s.name
                );
                assert!(
                    uuid::Uuid::parse_str(v).is_err(),
                    "{}: label {k}={v} looks like an id",
                    s.name
                );
            }
        }
    }
}

/// Runs `f` on a fresh paused current-thread runtime with a debugging recorder as the
/// thread's default; returns what was recorded, checked by
/// [`Metrics::check_names_and_labels`] against the instance ids `f` returns.
fn run<F, Fut>(f: F) -> Metrics
where
    F: FnOnce(Snapshotter) -> Fut,
    Fut: Future<Output = Vec<InstanceId>>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let ids = {
        let _guard = metrics::set_default_local_recorder(&recorder);
        rt.block_on(f(snapshotter.clone()))
    };
    drop(rt);
    let metrics = Metrics::take(&snapshotter);
    assert!(!metrics.0.is_empty(), "nothing was recorded");
    metrics.check_names_and_labels(&ids);
    metrics
}

fn engine_on(store: Arc<dyn Store>, worker: &str) -> Engine {
    builder(store, worker).build()
}

fn builder(store: Arc<dyn Store>, worker: &str) -> floxy::EngineBuilder {
    Engine::builder(store)
        .clock(Arc::new(TokioClock::with_epoch(EPOCH)))
        .workers(4)
        .batch_size(8)
        .poll_interval_ms(200)
        .worker_id(worker)
        .metrics_sample_interval_ms(1_000)
}

fn engine() -> Engine {
    engine_on(Arc::new(MemoryStore::new()), "metrics-test")
}

fn ok(engine: &Engine, name: &'static str) {
    engine.register_fn(name, |_ctx: StepContext, input: Payload| async move {
        Ok(input)
    });
}

fn fails(engine: &Engine, name: &'static str, retryable: bool) {
    engine.register_fn(name, move |_ctx: StepContext, _input: Payload| async move {
        Err(if retryable {
            HandlerError::retryable(format!("{name} failed"))
        } else {
            HandlerError::fatal(format!("{name} failed"))
        })
    });
}

/// Fails the first `n` calls (retryable), then succeeds.
fn fails_first(engine: &Engine, name: &'static str, n: u32) {
    let calls = Arc::new(AtomicU32::new(0));
    engine.register_fn(name, move |_ctx: StepContext, input: Payload| {
        let calls = Arc::clone(&calls);
        async move {
            if calls.fetch_add(1, Ordering::SeqCst) < n {
                Err(HandlerError::retryable("not yet"))
            } else {
                Ok(input)
            }
        }
    });
}

#[test]
fn a_completed_saga_counts_its_start_steps_claims_and_commits() {
    let mut record = None;
    let metrics = run(|_| async {
        // Every step through a claim (no eager lease in the commits), so that the claimed
        // items add up to the steps.
        let engine = builder(Arc::new(MemoryStore::new()), "metrics-test")
            .eager_claims(false)
            .build();
        for h in ["a", "b", "c"] {
            ok(&engine, h);
        }
        let wf = engine
            .register_workflow(
                Builder::new("happy", 1)
                    .step("a", "a")
                    .then("b", "b")
                    .then("c", "c")
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        engine.start_workers().unwrap();
        let clock_before = engine.clock().now();
        let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
        assert_eq!(done.status, InstanceStatus::Completed);
        assert!(engine.clock().now() >= clock_before);
        engine.shutdown(Duration::from_secs(5)).await;
        record = Some(done.clone());
        vec![done.id]
    });
    let done = record.unwrap();
    let w = ("workflow", "happy-v1");
    assert_eq!(metrics.counter(m::INSTANCES_STARTED, &[w]), 1);
    assert_eq!(
        metrics.counter(m::INSTANCES_ENDED, &[w, ("status", "completed")]),
        1
    );
    assert_eq!(metrics.counter(m::INSTANCES_ENDED, &[]), 1);
    let took = metrics.histogram(m::INSTANCE_DURATION, &[w, ("status", "completed")]);
    #[allow(clippy::cast_precision_loss)]
    let expected = (done.updated_at.0 - done.created_at.0) as f64 / 1_000.0;
    assert_eq!(
        took,
        vec![expected],
        "creation to completion by the engine clock"
    );
    for s in ["a", "b", "c"] {
        let labels = [w, ("step", s), ("kind", "execute")];
        assert_eq!(
            metrics.counter(
                m::STEP_ATTEMPTS,
                &[w, ("step", s), ("outcome", "completed")]
            ),
            1
        );
        assert_eq!(metrics.counter(m::STEP_ATTEMPTS, &[w, ("step", s)]), 1);
        assert_eq!(metrics.histogram(m::STEP_DURATION, &labels).len(), 1);
    }
    assert_eq!(metrics.counter(m::STEP_RETRIES, &[]), 0);
    assert_eq!(metrics.counter(m::COMPENSATIONS, &[]), 0);
    assert_eq!(metrics.counter(m::ROLLBACKS, &[]), 0);
    // Three items claimed in all.
    let batches = metrics.histogram(m::CLAIM_BATCH_SIZE, &[]);
    assert_eq!(batches.iter().sum::<f64>(), 3.0, "{batches:?}");
    let claims_with_items = metrics.counter(m::CLAIMS, &[("outcome", "items")]);
    assert_eq!(claims_with_items, batches.len() as u64);
    let claims = metrics.counter(m::CLAIMS, &[]);
    assert_eq!(
        metrics.histogram(m::CLAIM_LATENCY, &[]).len() as u64,
        claims
    );
    assert_eq!(
        metrics
            .histogram(m::COMMIT_LATENCY, &[("outcome", "committed")])
            .len(),
        3
    );
    assert_eq!(metrics.gauge(m::HANDLERS_IN_FLIGHT, &[]), 0.0);
    assert_eq!(metrics.counter(m::STALE_RESULTS_DROPPED, &[]), 0);
}

#[test]
fn retries_count_each_failed_attempt_that_gets_another() {
    let metrics = run(|_| async {
        let engine = engine();
        fails_first(&engine, "flaky", 2);
        let wf = engine
            .register_workflow(
                Builder::new("retry", 1)
                    .step("s", "flaky")
                    .max_retries(3)
                    .retry_delay_ms(100)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        engine.start_workers().unwrap();
        let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
        assert_eq!(done.status, InstanceStatus::Completed);
        engine.shutdown(Duration::from_secs(5)).await;
        vec![done.id]
    });
    let s = [("workflow", "retry-v1"), ("step", "s")];
    assert_eq!(
        metrics.counter(m::STEP_ATTEMPTS, &[s[0], s[1], ("outcome", "failed")]),
        2
    );
    assert_eq!(
        metrics.counter(m::STEP_ATTEMPTS, &[s[0], s[1], ("outcome", "completed")]),
        1
    );
    assert_eq!(
        metrics.counter(m::STEP_RETRIES, &[s[0], s[1], ("kind", "execute")]),
        2
    );
    assert_eq!(metrics.histogram(m::STEP_DURATION, &s).len(), 3);
    assert_eq!(metrics.counter(m::STEPS_FAILED, &[]), 0);
    assert_eq!(
        metrics.counter(m::INSTANCES_ENDED, &[("status", "completed")]),
        1
    );
}

#[test]
fn a_failed_saga_counts_the_failure_the_rollback_and_its_compensations() {
    let mut depth = None;
    let metrics = run(|_| async {
        let engine = engine();
        ok(&engine, "a");
        ok(&engine, "undo_a");
        ok(&engine, "m");
        fails(&engine, "b", true);
        let wf = engine
            .register_workflow(
                Builder::new("saga", 1)
                    .step("a", "a")
                    .on_failure("undo_a", "undo_a")
                    .then("m", "m")
                    .then("b", "b")
                    .max_retries(1)
                    .retry_delay_ms(100)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        engine.start_workers().unwrap();
        let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
        assert_eq!(done.status, InstanceStatus::Failed);
        engine.shutdown(Duration::from_secs(5)).await;
        depth = Some(done.rollback_depth);
        vec![done.id]
    });
    let w = ("workflow", "saga-v1");
    assert_eq!(
        metrics.counter(m::STEP_ATTEMPTS, &[w, ("step", "b"), ("outcome", "failed")]),
        2
    );
    assert_eq!(metrics.counter(m::STEP_RETRIES, &[w, ("step", "b")]), 1);
    assert_eq!(metrics.counter(m::STEPS_FAILED, &[w, ("step", "b")]), 1);
    assert_eq!(metrics.counter(m::STEPS_FAILED, &[]), 1);
    assert_eq!(metrics.counter(m::ROLLBACKS, &[w]), 1);
    // `a` completed and is compensated by its handler; `m` completed but has no
    // `on_failure`: rolled back without a call; `b`, the failed step, has nothing to run.
    assert_eq!(
        metrics.counter(
            m::COMPENSATIONS,
            &[w, ("step", "a"), ("outcome", "completed")]
        ),
        1
    );
    assert_eq!(
        metrics.counter(
            m::COMPENSATIONS,
            &[w, ("step", "m"), ("outcome", "no_handler")]
        ),
        1
    );
    assert_eq!(metrics.counter(m::COMPENSATIONS, &[]), 2);
    assert_eq!(
        metrics.counter(
            m::STEP_ATTEMPTS,
            &[
                w,
                ("step", "a"),
                ("kind", "compensate"),
                ("outcome", "completed")
            ]
        ),
        1
    );
    assert_eq!(
        metrics.counter(m::INSTANCES_ENDED, &[w, ("status", "failed")]),
        1
    );
    assert_eq!(metrics.counter(m::INSTANCES_ENDED, &[]), 1);
    assert_eq!(
        metrics
            .histogram(m::INSTANCE_DURATION, &[w, ("status", "failed")])
            .len(),
        1
    );
    let depth = depth.unwrap();
    assert_eq!(depth, 1, "one compensation call");
    assert_eq!(
        metrics.histogram(m::ROLLBACK_DEPTH, &[w, ("status", "failed")]),
        vec![f64::from(depth)]
    );
    assert_eq!(metrics.counter(m::DLQ_RECORDS_WRITTEN, &[]), 0);
}

#[test]
fn a_compensation_that_fails_finally_is_counted_and_writes_a_dlq_record() {
    let metrics = run(|_| async {
        let engine = engine();
        ok(&engine, "a");
        fails(&engine, "undo_a", true);
        fails(&engine, "b", false);
        let wf = engine
            .register_workflow(
                Builder::new("stuck", 1)
                    .step("a", "a")
                    .on_failure("undo_a", "undo_a")
                    .compensation_max_retries(1)
                    .compensation_retry_delay_ms(100)
                    .then("b", "b")
                    .max_retries(0)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        engine.start_workers().unwrap();
        let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
        assert_eq!(done.status, InstanceStatus::Failed);
        // Sampled after the end: the DLQ record is in the store.
        engine.sample_metrics().await.unwrap();
        engine.shutdown(Duration::from_secs(5)).await;
        vec![done.id]
    });
    let w = ("workflow", "stuck-v1");
    let a = ("step", "a");
    assert_eq!(
        metrics.counter(m::STEP_ATTEMPTS, &[w, ("step", "b"), ("outcome", "failed")]),
        1,
        "a fatal error is not retried"
    );
    assert_eq!(metrics.counter(m::STEP_RETRIES, &[w, ("step", "b")]), 0);
    assert_eq!(
        metrics.counter(
            m::STEP_ATTEMPTS,
            &[w, a, ("kind", "compensate"), ("outcome", "failed")]
        ),
        2
    );
    assert_eq!(
        metrics.counter(m::STEP_RETRIES, &[w, a, ("kind", "compensate")]),
        1
    );
    assert_eq!(
        metrics.counter(m::COMPENSATIONS, &[w, a, ("outcome", "failed")]),
        1
    );
    assert_eq!(
        metrics.counter(m::DLQ_RECORDS_WRITTEN, &[w, a, ("kind", "compensate")]),
        1
    );
    assert_eq!(metrics.gauge(m::DLQ_RECORDS, &[]), 1.0);
    assert_eq!(
        metrics.counter(m::INSTANCES_ENDED, &[w, ("status", "failed")]),
        1
    );
}

#[test]
fn timeouts_and_panics_are_their_own_outcomes() {
    let metrics = run(|_| async {
        let engine = engine();
        engine.register_fn("slow", |_ctx: StepContext, input: Payload| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(input)
        });
        engine.register_fn("boom", |_ctx: StepContext, _input: Payload| async move {
            panic!("boom")
        });
        let slow = engine
            .register_workflow(
                Builder::new("slow", 1)
                    .step("s", "slow")
                    .timeout_ms(100)
                    .max_retries(1)
                    .retry_delay_ms(100)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        let boom = engine
            .register_workflow(
                Builder::new("boom", 1)
                    .step("p", "boom")
                    .max_retries(0)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        engine.start_workers().unwrap();
        let a = engine.start_and_wait(&slow, json!({}), WAIT).await.unwrap();
        let b = engine.start_and_wait(&boom, json!({}), WAIT).await.unwrap();
        assert_eq!(a.status, InstanceStatus::Failed);
        assert_eq!(b.status, InstanceStatus::Failed);
        engine.shutdown(Duration::from_secs(5)).await;
        vec![a.id, b.id]
    });
    let slow = [("workflow", "slow-v1"), ("step", "s")];
    assert_eq!(
        metrics.counter(
            m::STEP_ATTEMPTS,
            &[slow[0], slow[1], ("outcome", "timeout")]
        ),
        2
    );
    assert_eq!(metrics.counter(m::STEP_ATTEMPTS, &slow), 2);
    assert_eq!(metrics.counter(m::STEP_RETRIES, &slow), 1);
    let durations = metrics.histogram(m::STEP_DURATION, &slow);
    assert_eq!(durations.len(), 2);
    for d in durations {
        assert!(
            (0.1..0.2).contains(&d),
            "a timed-out call lasts its timeout: {d}"
        );
    }
    assert_eq!(
        metrics.counter(
            m::STEP_ATTEMPTS,
            &[
                ("workflow", "boom-v1"),
                ("step", "p"),
                ("outcome", "panicked")
            ]
        ),
        1
    );
    assert_eq!(
        metrics.counter(m::INSTANCES_ENDED, &[("status", "failed")]),
        2
    );
    assert_eq!(metrics.gauge(m::HANDLERS_IN_FLIGHT, &[]), 0.0);
}

#[test]
fn a_lease_left_by_an_abandoned_worker_is_counted_when_it_expires() {
    let metrics = run(|_| async {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let calls = Arc::new(AtomicU32::new(0));
        let hang_once = |engine: &Engine| {
            let calls = Arc::clone(&calls);
            engine.register_fn("work", move |_ctx: StepContext, input: Payload| {
                let calls = Arc::clone(&calls);
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok(input)
                }
            });
        };
        let first = engine_on(Arc::clone(&store), "first");
        hang_once(&first);
        let wf = first
            .register_workflow(
                Builder::new("lease", 1)
                    .lease_ttl_ms(3_000)
                    .step("w", "work")
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        let id = first.start(&wf, json!({})).await.unwrap();
        first.start_workers().unwrap();
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The first worker gives up on its hung handler: the lease is left to expire.
        let report = first.shutdown(Duration::from_millis(10)).await;
        assert_eq!(report.abandoned, 1);
        let second = engine_on(Arc::clone(&store), "second");
        hang_once(&second);
        second
            .register_workflow(
                Builder::new("lease", 1)
                    .lease_ttl_ms(3_000)
                    .step("w", "work")
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        second.start_workers().unwrap();
        let done = second.wait_for(id, WAIT).await.unwrap();
        assert_eq!(done.status, InstanceStatus::Completed);
        second.shutdown(Duration::from_secs(5)).await;
        vec![id]
    });
    let w = [("workflow", "lease-v1"), ("step", "w")];
    assert_eq!(
        metrics.counter(m::STEP_ATTEMPTS, &[w[0], w[1], ("outcome", "abandoned")]),
        1
    );
    assert_eq!(
        metrics.counter(m::LEASE_EXPIRIES, &[w[0], w[1], ("kind", "execute")]),
        1
    );
    assert_eq!(
        metrics.counter(m::STEP_RETRIES, &w),
        1,
        "the lost attempt is retried"
    );
    assert_eq!(
        metrics.counter(m::STEP_ATTEMPTS, &[w[0], w[1], ("outcome", "completed")]),
        1
    );
    // Abandoned calls have no duration.
    assert_eq!(metrics.histogram(m::STEP_DURATION, &w).len(), 1);
    assert_eq!(metrics.gauge(m::HANDLERS_IN_FLIGHT, &[]), 0.0);
}

#[test]
fn dlq_parking_and_requeue_are_counted() {
    let metrics = run(|_| async {
        let engine = engine();
        let calls = Arc::new(AtomicU32::new(0));
        let c = Arc::clone(&calls);
        engine.register_fn("pay", move |_ctx: StepContext, input: Payload| {
            let c = Arc::clone(&c);
            async move {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(HandlerError::fatal("card declined"))
                } else {
                    Ok(input)
                }
            }
        });
        let wf = engine
            .register_workflow(
                Builder::new("parked", 1)
                    .dlq(true)
                    .step("pay", "pay")
                    .max_retries(0)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        engine.start_workers().unwrap();
        let parked = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
        assert_eq!(parked.status, InstanceStatus::Dlq);
        engine.sample_metrics().await.unwrap();
        let records = engine.dlq(&floxy::DlqQuery::default()).await.unwrap();
        assert_eq!(records.items.len(), 1);
        engine.requeue(records.items[0].id, None).await.unwrap();
        let done = engine.wait_for(parked.id, WAIT).await.unwrap();
        assert_eq!(done.status, InstanceStatus::Completed);
        engine.shutdown(Duration::from_secs(5)).await;
        vec![done.id]
    });
    let w = ("workflow", "parked-v1");
    assert_eq!(
        metrics.counter(
            m::DLQ_RECORDS_WRITTEN,
            &[w, ("step", "pay"), ("kind", "execute")]
        ),
        1
    );
    assert_eq!(metrics.counter(m::DLQ_REQUEUED, &[w]), 1);
    assert_eq!(metrics.counter(m::STEPS_FAILED, &[w, ("step", "pay")]), 1);
    assert_eq!(
        metrics.counter(m::ROLLBACKS, &[]),
        0,
        "DLQ mode does not roll back"
    );
    assert_eq!(
        metrics.counter(m::INSTANCES_ENDED, &[w, ("status", "completed")]),
        1
    );
    assert_eq!(metrics.counter(m::INSTANCES_ENDED, &[]), 1);
    assert_eq!(metrics.counter(m::INSTANCES_STARTED, &[w]), 1);
}

#[test]
fn the_store_gauges_are_sampled_on_demand_and_by_the_worker_pool() {
    let metrics = run(|_| async {
        let engine = engine();
        ok(&engine, "a");
        let wf = engine
            .register_workflow(Builder::new("q", 1).step("a", "a").build().unwrap())
            .await
            .unwrap();
        let x = engine.start(&wf, json!({})).await.unwrap();
        let y = engine.start(&wf, json!({})).await.unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        engine.sample_metrics().await.unwrap();
        vec![x, y]
    });
    assert_eq!(metrics.gauge(m::QUEUE_DEPTH, &[("status", "ready")]), 2.0);
    assert_eq!(metrics.gauge(m::QUEUE_DEPTH, &[("status", "leased")]), 0.0);
    assert_eq!(metrics.gauge(m::INSTANCES, &[("status", "running")]), 2.0);
    assert_eq!(metrics.gauge(m::INSTANCES, &[("status", "completed")]), 0.0);
    assert_eq!(
        metrics.matching(m::INSTANCES, &[]).count(),
        InstanceStatus::ALL.len(),
        "every status has a series"
    );
    assert_eq!(metrics.gauge(m::DLQ_RECORDS, &[]), 0.0);
    assert_eq!(metrics.gauge(m::QUEUE_OLDEST_PENDING_AGE, &[]), 30.0);

    // The pool's sampler: nobody calls `sample_metrics` here.
    let metrics = run(|_| async {
        let engine = engine();
        ok(&engine, "a");
        let wf = engine
            .register_workflow(Builder::new("q", 1).step("a", "a").build().unwrap())
            .await
            .unwrap();
        engine.start_workers().unwrap();
        let done = engine.start_and_wait(&wf, json!({}), WAIT).await.unwrap();
        // The next periodic sample (every second here) sees the instance completed.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        engine.shutdown(Duration::from_secs(5)).await;
        vec![done.id]
    });
    assert_eq!(metrics.gauge(m::INSTANCES, &[("status", "completed")]), 1.0);
    assert_eq!(metrics.gauge(m::QUEUE_DEPTH, &[("status", "ready")]), 0.0);
    assert_eq!(metrics.gauge(m::QUEUE_OLDEST_PENDING_AGE, &[]), 0.0);
    assert_eq!(metrics.counter(m::SAMPLE_FAILURES, &[]), 0);
}

#[test]
fn handlers_in_flight_counts_running_calls() {
    let mut during = None;
    let slot = &mut during;
    run(|snapshotter| async move {
        let engine = engine();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let entered = Arc::new(tokio::sync::Semaphore::new(0));
        let (g, e) = (Arc::clone(&gate), Arc::clone(&entered));
        engine.register_fn("hold", move |_ctx: StepContext, input: Payload| {
            let (g, e) = (Arc::clone(&g), Arc::clone(&e));
            async move {
                e.add_permits(1);
                g.acquire().await.unwrap().forget();
                Ok(input)
            }
        });
        let wf = engine
            .register_workflow(Builder::new("hold", 1).step("h", "hold").build().unwrap())
            .await
            .unwrap();
        let a = engine.start(&wf, json!({})).await.unwrap();
        let b = engine.start(&wf, json!({})).await.unwrap();
        engine.start_workers().unwrap();
        entered.acquire_many(2).await.unwrap().forget();
        // Taking a snapshot resets the debugging recorder's values: only read it here.
        *slot = Some(Metrics::take(&snapshotter).gauge(m::HANDLERS_IN_FLIGHT, &[]));
        gate.add_permits(2);
        for id in [a, b] {
            let done = engine.wait_for(id, WAIT).await.unwrap();
            assert_eq!(done.status, InstanceStatus::Completed);
        }
        engine.shutdown(Duration::from_secs(5)).await;
        vec![a, b]
    });
    assert_eq!(during, Some(2.0));
}

#[test]
fn describe_registers_a_description_and_unit_for_every_metric() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        m::describe();
        // Only registered metrics appear in a snapshot: touch one of each type.
        metrics::counter!(m::INSTANCES_STARTED).increment(1);
        metrics::histogram!(m::STEP_DURATION).record(0.5);
        metrics::gauge!(m::QUEUE_DEPTH).set(1.0);
    });
    let snap = snapshotter.snapshot().into_vec();
    assert_eq!(snap.len(), 3);
    for (ck, unit, description, _) in snap {
        let def = m::find(ck.key().name()).unwrap();
        assert_eq!(unit, def.unit, "{}", def.name);
        assert_eq!(
            description.as_deref(),
            Some(def.description),
            "{}",
            def.name
        );
    }
}

#[test]
fn the_module_docs_table_lists_exactly_the_defined_metrics() {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs")).unwrap();
    let mut table: HashMap<String, (String, BTreeSet<String>)> = HashMap::new();
    for line in src.lines() {
        let Some(row) = line.strip_prefix("//! | `floxy_") else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let name = format!("floxy_{}", cells[0].trim_end_matches('`'));
        let labels = cells[2]
            .split(", ")
            .filter(|l| *l != "—")
            .map(|l| l.trim_matches('`').to_owned())
            .collect();
        assert!(
            table
                .insert(name.clone(), (cells[1].to_owned(), labels))
                .is_none(),
            "{name} twice in the table"
        );
    }
    assert_eq!(table.len(), METRICS.len(), "one table row per metric");
    let mut names = BTreeSet::new();
    for def in METRICS {
        assert!(names.insert(def.name), "{} defined twice", def.name);
        assert!(def.name.starts_with("floxy_"), "{}", def.name);
        let (kind, labels) = table
            .get(def.name)
            .unwrap_or_else(|| panic!("{} missing from the docs table", def.name));
        assert_eq!(kind, def.kind.as_str(), "{}", def.name);
        let expected: BTreeSet<String> = def.labels.iter().map(|l| (*l).to_owned()).collect();
        assert_eq!(labels, &expected, "labels of {}", def.name);
        assert_eq!(
            def.name.ends_with("_total"),
            def.kind == MetricKind::Counter,
            "{}: counters, and only counters, end in _total",
            def.name
        );
        assert_eq!(
            def.name.ends_with("_seconds"),
            def.unit == Some(metrics::Unit::Seconds),
            "{}: the unit is last in the name",
            def.name
        );
        assert_eq!(
            def.buckets.is_some(),
            def.kind == MetricKind::Histogram,
            "{}: histograms suggest buckets",
            def.name
        );
        for l in def.labels {
            assert!(
                ["workflow", "step", "handler", "status", "outcome", "kind"].contains(l),
                "{}: unbounded label {l}",
                def.name
            );
        }
    }
}

#[test]
fn a_handler_that_stops_on_cancel_is_counted_cancelled() {
    let metrics = run(|_| async {
        let engine = engine();
        let entered = Arc::new(tokio::sync::Semaphore::new(0));
        let e = Arc::clone(&entered);
        engine.register_fn("wait", move |ctx: StepContext, _input: Payload| {
            let e = Arc::clone(&e);
            async move {
                e.add_permits(1);
                ctx.cancellation_token().cancelled().await;
                Err(HandlerError::retryable("stopped on cancel"))
            }
        });
        let wf = engine
            .register_workflow(Builder::new("cancel", 1).step("w", "wait").build().unwrap())
            .await
            .unwrap();
        let id = engine.start(&wf, json!({})).await.unwrap();
        engine.start_workers().unwrap();
        entered.acquire().await.unwrap().forget();
        engine.cancel(id, Some("operator")).await.unwrap();
        let done = engine.wait_for(id, WAIT).await.unwrap();
        assert_eq!(done.status, InstanceStatus::Cancelled);
        engine.shutdown(Duration::from_secs(5)).await;
        vec![id]
    });
    let w = [("workflow", "cancel-v1"), ("step", "w")];
    assert_eq!(
        metrics.counter(m::STEP_ATTEMPTS, &[w[0], w[1], ("outcome", "cancelled")]),
        1
    );
    assert_eq!(metrics.counter(m::STEP_ATTEMPTS, &w), 1);
    assert_eq!(
        metrics.counter(m::STEP_RETRIES, &w),
        0,
        "no retry after a cancel"
    );
    assert_eq!(
        metrics.counter(m::INSTANCES_ENDED, &[w[0], ("status", "cancelled")]),
        1
    );
    assert_eq!(
        metrics.histogram(m::ROLLBACK_DEPTH, &[w[0], ("status", "cancelled")]),
        vec![0.0]
    );
}
