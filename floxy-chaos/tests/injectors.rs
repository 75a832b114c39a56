//! The handler and store injectors fire at their configured rates, reproducibly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy::{
    ClaimRequest, FnHandler, Handler, HandlerError, InstanceId, MemoryStore, Payload, StepContext,
    Store, StoreError, Timestamp, WorkKind, WorkflowId,
};
use floxy_chaos::inject::handler::{ChaosHandler, HandlerFaults};
use floxy_chaos::inject::store::{ChaosStore, StoreFaults};
use floxy_chaos::{FaultCounters, FaultSwitch};
use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;

fn claim() -> ClaimRequest {
    ClaimRequest {
        owner: "t".into(),
        handlers: vec!["h".into()],
        limit: 1,
        now: Timestamp(0),
    }
}

#[tokio::test(start_paused = true)]
async fn store_errors_at_their_rate() {
    let counters = FaultCounters::default();
    let store = ChaosStore::new(
        Arc::new(MemoryStore::new()),
        StoreFaults {
            error: 0.2,
            ..StoreFaults::default()
        },
        3,
        FaultSwitch::new(true),
        counters.clone(),
    );
    let n = 5_000u32;
    let mut errors = 0u32;
    for _ in 0..n {
        match store.claim(&claim()).await {
            Err(StoreError::Unavailable(_)) => errors += 1,
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => {}
        }
    }
    let rate = f64::from(errors) / f64::from(n);
    assert!((0.17..=0.23).contains(&rate), "error rate {rate}");
    assert_eq!(counters.get("store.error"), u64::from(errors));
    assert!(StoreError::Unavailable(String::new()).is_retryable());
    // Reads are spared unless asked for.
    for _ in 0..200 {
        store.stats().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn store_latency_is_async_and_in_range() {
    let store = ChaosStore::new(
        Arc::new(MemoryStore::new()),
        StoreFaults {
            latency: 1.0,
            latency_ms: (100, 200),
            ..StoreFaults::default()
        },
        4,
        FaultSwitch::new(true),
        FaultCounters::default(),
    );
    for _ in 0..20 {
        let t = tokio::time::Instant::now();
        store.claim(&claim()).await.unwrap();
        let el = t.elapsed();
        assert!(
            el >= Duration::from_millis(100) && el <= Duration::from_millis(201),
            "{el:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn lost_replies_take_effect() {
    let inner = Arc::new(MemoryStore::new());
    let def = floxy::Builder::new("w", 1).step("a", "h").build().unwrap();
    inner.put_definition(&def).await.unwrap();
    let store = ChaosStore::new(
        Arc::clone(&inner) as Arc<dyn Store>,
        StoreFaults {
            lost_reply: 1.0,
            ..StoreFaults::default()
        },
        5,
        FaultSwitch::new(true),
        FaultCounters::default(),
    );
    let wf = floxy::CompiledWorkflow::compile(def).unwrap();
    let t = floxy::floxy_core::machine::start(
        &wf,
        InstanceId::from_u128(1),
        Payload::null(),
        None,
        Timestamp(0),
    )
    .unwrap();
    // The create fails to the caller but happened.
    assert!(matches!(
        store.create_instance(t).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        inner
            .get_instance(InstanceId::from_u128(1))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(wf.id(), &WorkflowId::new("w", 1));
}

#[tokio::test(start_paused = true)]
async fn disarmed_switch_means_no_faults() {
    let switch = FaultSwitch::new(false);
    let store = ChaosStore::new(
        Arc::new(MemoryStore::new()),
        StoreFaults {
            error: 1.0,
            ..StoreFaults::default()
        },
        6,
        switch.clone(),
        FaultCounters::default(),
    );
    store.claim(&claim()).await.unwrap();
    switch.set(true);
    assert!(store.claim(&claim()).await.is_err());
}

fn ctx(kind: WorkKind) -> StepContext {
    StepContext::detached(InstanceId::from_u128(9), WorkflowId::new("w", 1), "s", kind)
}

#[tokio::test(start_paused = true)]
async fn handler_faults_at_their_rates() {
    let counters = FaultCounters::default();
    let h = ChaosHandler::new(
        FnHandler::new(|_c: StepContext, p: Payload| async move { Ok::<_, HandlerError>(p) }),
        HandlerFaults {
            panic: 0.1,
            error: 0.1,
            sleep: 0.2,
            sleep_ms: (10, 10),
            hang: 0.0,
            ..HandlerFaults::default()
        },
        7,
        FaultSwitch::new(true),
        counters.clone(),
    );
    floxy_chaos::panics::quiet_injected_panics();
    let n = 4_000u32;
    let (mut panics, mut errors, mut ok) = (0u32, 0u32, 0u32);
    for _ in 0..n {
        let r = std::panic::AssertUnwindSafe(h.execute(ctx(WorkKind::Execute), Payload::null()))
            .catch_unwind()
            .await;
        match r {
            Err(_) => panics += 1,
            Ok(Err(_)) => errors += 1,
            Ok(Ok(_)) => ok += 1,
        }
    }
    let p = f64::from(panics) / f64::from(n);
    // error is drawn only when panic did not fire: 0.9 * 0.1.
    let e = f64::from(errors) / f64::from(n);
    assert!((0.08..=0.12).contains(&p), "panic rate {p}");
    assert!((0.07..=0.11).contains(&e), "error rate {e}");
    assert_eq!(panics + errors + ok, n);
    let sleeps = counters.get("handler.sleep") as f64 / f64::from(n);
    assert!((0.12..=0.18).contains(&sleeps), "sleep rate {sleeps}");
}

#[tokio::test(start_paused = true)]
async fn hang_outlasts_a_timeout_and_is_dropped() {
    let h = ChaosHandler::new(
        FnHandler::new(|_c: StepContext, p: Payload| async move { Ok::<_, HandlerError>(p) }),
        HandlerFaults {
            hang: 1.0,
            hang_ms: 60_000,
            ..HandlerFaults::default()
        },
        8,
        FaultSwitch::new(true),
        FaultCounters::default(),
    );
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        h.execute(ctx(WorkKind::Execute), Payload::null()),
    )
    .await;
    assert!(r.is_err(), "a hang returned before the timeout");
}

#[tokio::test(start_paused = true)]
async fn compensations_can_be_spared() {
    let h = ChaosHandler::new(
        FnHandler::new(|_c: StepContext, p: Payload| async move { Ok::<_, HandlerError>(p) }),
        HandlerFaults {
            error: 1.0,
            compensations: false,
            ..HandlerFaults::default()
        },
        9,
        FaultSwitch::new(true),
        FaultCounters::default(),
    );
    assert!(
        h.execute(ctx(WorkKind::Compensate), Payload::null())
            .await
            .is_ok()
    );
    assert!(
        h.execute(ctx(WorkKind::Execute), Payload::null())
            .await
            .is_err()
    );
}

#[test]
fn same_seed_same_fault_sequence() {
    fn seq(seed: u64) -> Vec<bool> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let store = ChaosStore::new(
                Arc::new(MemoryStore::new()),
                StoreFaults {
                    error: 0.3,
                    ..StoreFaults::default()
                },
                seed,
                FaultSwitch::new(true),
                FaultCounters::default(),
            );
            let mut v = Vec::new();
            for _ in 0..100 {
                v.push(store.claim(&claim()).await.is_err());
            }
            v
        })
    }
    assert_eq!(seq(1), seq(1));
    assert_ne!(seq(1), seq(2));
}
