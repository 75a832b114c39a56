//! Minimal reproductions of what the chaos runs found in the engine. Each asserts the
//! behaviour a saga needs; every finding here is fixed and runs in CI as a regression test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{
    Builder, Engine, HandlerError, InstanceStatus, JoinStrategy, MemoryStore, Payload, StepContext,
    StepStatus, Timestamp, TokioClock,
};
use floxy_chaos::ledger::Ledger;
use std::sync::Arc;
use std::time::Duration;

fn engine() -> Engine {
    Engine::builder(Arc::new(MemoryStore::new()))
        .clock(Arc::new(TokioClock::with_epoch(Timestamp(
            1_700_000_000_000,
        ))))
        .poll_interval_ms(50)
        .worker_id("findings")
        .build()
}

/// `charge` applies its effect, then its first attempt fails (a lost response: the effect
/// happened, the caller saw an error); later attempts succeed. `refund` reverses it.
fn register_charge(engine: &Engine, ledger: &Arc<Ledger>, fail_first: bool) {
    let l = Arc::clone(ledger);
    engine.register_fn("charge", move |ctx: StepContext, input: Payload| {
        let l = Arc::clone(&l);
        async move {
            l.apply(ctx.instance_id(), ctx.step(), 100);
            if fail_first && ctx.attempt() == 1 {
                return Err(HandlerError::retryable(
                    "timeout after the charge went through",
                ));
            }
            Ok(input)
        }
    });
    let l = Arc::clone(ledger);
    engine.register_fn("refund", move |ctx: StepContext, input: Payload| {
        let l = Arc::clone(&l);
        async move {
            l.reverse(ctx.instance_id(), ctx.step());
            Ok(input)
        }
    });
}

/// Finding F1 (fixed by SEMANTICS §5/§9 "attempted means compensated"): a step waiting for
/// its retry after an attempt that applied its effect and then failed is `skipped` by a
/// cancel (or by a rollback started elsewhere). It made an attempt, so it is compensated:
/// `refund` runs (reason `cancel`, with the attempt's error) and the charge of attempt 1
/// is reversed. Seen in chaos runs as `ledger_partial` (`sim --seed 1`, `--seed 2`, ...)
/// before the fix.
#[tokio::test(start_paused = true)]
async fn finding_f1_retrying_step_skipped_is_compensated() {
    let engine = engine();
    let ledger = Arc::new(Ledger::new());
    register_charge(&engine, &ledger, true);
    let def = Builder::new("f1", 1)
        .step("charge", "charge")
        .retry_delay_ms(10_000)
        .on_failure("refund", "refund")
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let id = engine.start(&wf, serde_json::json!({})).await.unwrap();
    // Attempt 1 charged and failed; the step waits 10 s for attempt 2.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        engine.steps(id).await.unwrap()[0].status,
        StepStatus::Retrying
    );
    engine
        .cancel(id, Some("customer changed their mind"))
        .await
        .unwrap();
    let done = engine.wait_for(id, Duration::from_mins(1)).await.unwrap();
    assert_eq!(done.status, InstanceStatus::Cancelled);
    let effect = ledger.effect(id, "charge").unwrap();
    let step = engine.steps(id).await.unwrap().remove(0);
    assert_eq!(step.status, StepStatus::RolledBack, "{step:?}");
    assert_eq!(step.attempts, 1, "the skipped retry never ran");
    assert!(
        effect.applied && effect.reversed && effect.net() == 0,
        "the charge of attempt 1 is refunded: {effect:?}"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

/// Finding F2 (fixed by SEMANTICS §5 "attempted means compensated"; late failures used to
/// be ignored): a running step asked to stop (a sibling branch failed) that applied its
/// effect and then fails is recorded `failed` and compensated like the others: the
/// rollback waits for it, then `refund` reverses the charge.
#[tokio::test(start_paused = true)]
async fn finding_f2_late_failure_is_compensated() {
    let engine = engine();
    let ledger = Arc::new(Ledger::new());
    let l = Arc::clone(&ledger);
    // Charges, works 2 s, then fails (after its effect).
    engine.register_fn("slow_charge", move |ctx: StepContext, _input: Payload| {
        let l = Arc::clone(&l);
        async move {
            l.apply(ctx.instance_id(), ctx.step(), 100);
            tokio::time::sleep(Duration::from_secs(2)).await;
            Err::<Payload, _>(HandlerError::retryable("connection reset after charging"))
        }
    });
    let l = Arc::clone(&ledger);
    engine.register_fn("refund", move |ctx: StepContext, input: Payload| {
        let l = Arc::clone(&l);
        async move {
            l.reverse(ctx.instance_id(), ctx.step());
            Ok(input)
        }
    });
    engine.register_fn("boom", |_ctx: StepContext, _input: Payload| async move {
        Err::<Payload, _>(HandlerError::fatal("out of stock"))
    });
    let def = Builder::new("f2", 1)
        .fork("both", |f| {
            f.branch(|b| {
                b.step("charge", "slow_charge")
                    .on_failure("refund", "refund")
            })
            .branch(|b| b.step("reserve", "boom"))
        })
        .join("joined", JoinStrategy::All)
        .build()
        .unwrap();
    let wf = engine.register_workflow(def).await.unwrap();
    engine.start_workers().unwrap();
    let done = engine
        .start_and_wait(&wf, serde_json::json!({}), Duration::from_mins(1))
        .await
        .unwrap();
    assert_eq!(done.status, InstanceStatus::Failed);
    let steps = engine.steps(done.id).await.unwrap();
    let charge = steps.iter().find(|s| &*s.step == "charge").unwrap();
    let effect = ledger.effect(done.id, "charge").unwrap();
    assert_eq!(charge.status, StepStatus::RolledBack, "{charge:?}");
    assert!(
        effect.applied && effect.reversed && effect.net() == 0,
        "the charge made before the late failure is refunded: {effect:?}"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

/// A store whose `claim` never returns after the first `n` calls (a connection that lost
/// its request: no reply, no error), delegating everything else to a memory store.
struct StuckClaims {
    inner: MemoryStore,
    left: std::sync::atomic::AtomicUsize,
}

#[floxy::async_trait]
impl floxy::Store for StuckClaims {
    fn capabilities(&self) -> floxy::Capabilities {
        self.inner.capabilities()
    }
    async fn put_definition(
        &self,
        d: &floxy::WorkflowDefinition,
    ) -> Result<floxy::PutDefinition, floxy::StoreError> {
        self.inner.put_definition(d).await
    }
    async fn get_definition(
        &self,
        id: &floxy::WorkflowId,
    ) -> Result<Option<floxy::WorkflowDefinition>, floxy::StoreError> {
        self.inner.get_definition(id).await
    }
    async fn list_definitions(&self) -> Result<Vec<floxy::WorkflowDefinition>, floxy::StoreError> {
        self.inner.list_definitions().await
    }
    async fn create_instance(
        &self,
        t: floxy::Transition,
    ) -> Result<floxy::CreateOutcome, floxy::StoreError> {
        self.inner.create_instance(t).await
    }
    async fn update_instance(
        &self,
        id: floxy::InstanceId,
        f: floxy::TransitionFn,
    ) -> Result<floxy::Transition, floxy::StoreError> {
        self.inner.update_instance(id, f).await
    }
    async fn claim(
        &self,
        req: &floxy::ClaimRequest,
    ) -> Result<Vec<floxy::ClaimedItem>, floxy::StoreError> {
        use std::sync::atomic::Ordering;
        if self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            std::future::pending::<()>().await;
        }
        self.inner.claim(req).await
    }
    async fn heartbeat(
        &self,
        owner: &str,
        leases: &[floxy::LeaseRef],
        now: Timestamp,
    ) -> Result<Vec<floxy::LeaseState>, floxy::StoreError> {
        self.inner.heartbeat(owner, leases, now).await
    }
    async fn load_instance(
        &self,
        id: floxy::InstanceId,
    ) -> Result<Option<floxy::InstanceSnapshot>, floxy::StoreError> {
        self.inner.load_instance(id).await
    }
    async fn get_instance(
        &self,
        id: floxy::InstanceId,
    ) -> Result<Option<floxy::InstanceRecord>, floxy::StoreError> {
        self.inner.get_instance(id).await
    }
    async fn list_steps(
        &self,
        id: floxy::InstanceId,
    ) -> Result<Vec<floxy::StepRun>, floxy::StoreError> {
        self.inner.list_steps(id).await
    }
    async fn find_by_idempotency_key(
        &self,
        w: &floxy::WorkflowId,
        key: &str,
    ) -> Result<Option<floxy::InstanceId>, floxy::StoreError> {
        self.inner.find_by_idempotency_key(w, key).await
    }
    async fn list_instances(
        &self,
        q: &floxy::InstanceQuery,
    ) -> Result<floxy::Page<floxy::InstanceRecord, floxy::InstanceId>, floxy::StoreError> {
        self.inner.list_instances(q).await
    }
    async fn list_events(
        &self,
        id: floxy::InstanceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<floxy::Event>, floxy::StoreError> {
        self.inner.list_events(id, after, limit).await
    }
    async fn list_dlq(
        &self,
        q: &floxy::DlqQuery,
    ) -> Result<floxy::Page<floxy::DlqRecord, floxy::DlqId>, floxy::StoreError> {
        self.inner.list_dlq(q).await
    }
    async fn get_dlq(
        &self,
        id: floxy::DlqId,
    ) -> Result<Option<floxy::DlqRecord>, floxy::StoreError> {
        self.inner.get_dlq(id).await
    }
    async fn list_queue(
        &self,
        id: floxy::InstanceId,
    ) -> Result<Vec<floxy::QueueItem>, floxy::StoreError> {
        self.inner.list_queue(id).await
    }
    async fn next_due(
        &self,
        handlers: &[Arc<str>],
    ) -> Result<Option<Timestamp>, floxy::StoreError> {
        self.inner.next_due(handlers).await
    }
    async fn stats(&self) -> Result<floxy::StoreStats, floxy::StoreError> {
        self.inner.stats().await
    }
    async fn cleanup(&self, older_than: Timestamp) -> Result<u64, floxy::StoreError> {
        self.inner.cleanup(older_than).await
    }
}

/// Finding F5: `Engine::shutdown(timeout)` awaits its dispatcher task without a bound, so a
/// claim stuck in the store (F4: a PostgreSQL connection that lost a request) makes
/// shutdown hang forever instead of giving up after `timeout`. Seen as a 7-minute hang of
/// `floxy-chaos run --backend postgres --profile short` (seed 103, debug build; proxied
/// connections ESTABLISHED with empty queues after a `timeout` toxic was removed before it
/// closed them).
#[tokio::test(start_paused = true)]
async fn finding_f5_shutdown_hangs_on_a_stuck_claim() {
    let store = Arc::new(StuckClaims {
        inner: MemoryStore::new(),
        left: std::sync::atomic::AtomicUsize::new(1),
    });
    let engine = Engine::builder(store)
        .clock(Arc::new(TokioClock::with_epoch(Timestamp(
            1_700_000_000_000,
        ))))
        .poll_interval_ms(50)
        .build();
    engine.register_fn("x", |_c: StepContext, p: Payload| async move { Ok(p) });
    engine.start_workers().unwrap();
    // The first claim answers (nothing to do), the next one never returns.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = tokio::time::timeout(
        Duration::from_mins(1),
        engine.shutdown(Duration::from_secs(5)),
    )
    .await;
    assert!(r.is_ok(), "shutdown(5 s) still waiting after 60 s");
}
