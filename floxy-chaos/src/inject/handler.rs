//! Handler faults: a wrapper around any [`Handler`] that panics, fails, sleeps or hangs with
//! configured probabilities.
//!
//! ```
//! use floxy_chaos::inject::handler::{ChaosHandler, HandlerFaults};
//! use floxy_chaos::{FaultCounters, FaultSwitch};
//! use floxy::{FnHandler, Payload, StepContext};
//!
//! let mine = FnHandler::new(|_ctx: StepContext, input: Payload| async move { Ok(input) });
//! let faults = HandlerFaults { panic: 0.05, error: 0.1, ..HandlerFaults::default() };
//! let wrapped = ChaosHandler::new(mine, faults, 42, FaultSwitch::new(true), FaultCounters::default());
//! # let _ = wrapped;
//! ```

use crate::faults::{FaultCounters, FaultSwitch};
use crate::rng::{ChaosRng, between, chance, rng_for};
use floxy::{Handler, HandlerError, Payload, StepContext};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Probabilities (each `0.0..=1.0`, per handler call) and shapes of handler faults.
///
/// At most one fault is injected per call; the probabilities are checked in the order
/// panic, error, hang, sleep. A panic or an error fires either before the wrapped handler
/// runs or after it ran (its side effects happened, its result is lost), with equal chance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HandlerFaults {
    /// Panic (the runtime catches it: a failed, retryable attempt).
    pub panic: f64,
    /// Return a retryable error.
    pub error: f64,
    /// Hang for `hang_ms` ignoring cancellation (exceeds the step timeout: the runtime must
    /// time the call out and drop it).
    pub hang: f64,
    /// How long a hang lasts (should exceed the steps' timeouts).
    pub hang_ms: u64,
    /// Sleep a random time in `sleep_ms` before running the handler.
    pub sleep: f64,
    /// Range of injected sleeps, in ms (inclusive).
    pub sleep_ms: (u64, u64),
    /// Whether compensation calls get faults too.
    pub compensations: bool,
}

impl Default for HandlerFaults {
    /// No faults.
    fn default() -> Self {
        Self {
            panic: 0.0,
            error: 0.0,
            hang: 0.0,
            hang_ms: 600_000,
            sleep: 0.0,
            sleep_ms: (50, 200),
            compensations: true,
        }
    }
}

impl HandlerFaults {
    /// Floxy's stress-test profile: 5 % panics, 5 % errors, 1 % hangs, 15 % sleeps of
    /// 50–200 ms.
    #[must_use]
    pub fn stress() -> Self {
        Self {
            panic: 0.05,
            error: 0.05,
            hang: 0.01,
            sleep: 0.15,
            ..Self::default()
        }
    }

    /// Whether any fault can fire.
    #[must_use]
    pub fn any(&self) -> bool {
        self.panic > 0.0 || self.error > 0.0 || self.hang > 0.0 || self.sleep > 0.0
    }
}

/// The fault chosen for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    None,
    Panic { after: bool },
    Error { after: bool },
    Hang,
    Sleep(u64),
}

/// Shared state of the handler injectors of one run: config, seeded stream, switch,
/// counters.
#[derive(Debug)]
pub struct HandlerInjector {
    faults: HandlerFaults,
    rng: Mutex<ChaosRng>,
    switch: FaultSwitch,
    counters: FaultCounters,
}

impl HandlerInjector {
    /// An injector drawing from `seed`.
    #[must_use]
    pub fn new(
        faults: HandlerFaults,
        seed: u64,
        switch: FaultSwitch,
        counters: FaultCounters,
    ) -> Arc<Self> {
        Arc::new(Self {
            faults,
            rng: Mutex::new(rng_for(seed, "handler-faults", &[])),
            switch,
            counters,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn faults(&self) -> &HandlerFaults {
        &self.faults
    }

    fn plan(&self, compensation: bool) -> Plan {
        let f = &self.faults;
        if !self.switch.is_armed() || !f.any() || (compensation && !f.compensations) {
            return Plan::None;
        }
        let mut r = self.rng.lock();
        if chance(&mut *r, f.panic) {
            Plan::Panic { after: r.random() }
        } else if chance(&mut *r, f.error) {
            Plan::Error { after: r.random() }
        } else if chance(&mut *r, f.hang) {
            Plan::Hang
        } else if chance(&mut *r, f.sleep) {
            Plan::Sleep(between(&mut *r, f.sleep_ms.0, f.sleep_ms.1))
        } else {
            Plan::None
        }
    }

    /// Runs `call` (one handler call) under a drawn fault plan.
    ///
    /// # Errors
    /// Whatever `call` returns, or an injected retryable error when the plan says so.
    ///
    /// # Panics
    /// When the plan says so: that is the injected fault.
    pub async fn run<F>(&self, ctx: &StepContext, call: F) -> Result<Payload, HandlerError>
    where
        F: Future<Output = Result<Payload, HandlerError>>,
    {
        let plan = self.plan(ctx.is_compensation());
        let what = if ctx.is_compensation() {
            "compensation"
        } else {
            "handler"
        };
        match plan {
            Plan::None => call.await,
            Plan::Sleep(ms) => {
                self.counters.add(&format!("{what}.sleep"));
                tokio::time::sleep(Duration::from_millis(ms)).await;
                call.await
            }
            Plan::Hang => {
                self.counters.add(&format!("{what}.hang"));
                // Ignores the cancellation token on purpose: only the runtime's timeout (or
                // lease loss, or shutdown) can end it, by dropping this future.
                tokio::time::sleep(Duration::from_millis(self.faults.hang_ms)).await;
                call.await
            }
            Plan::Panic { after } => {
                self.counters.add(&format!("{what}.panic"));
                if after {
                    let _ = call.await;
                }
                panic!(
                    "chaos: injected panic in {} of {} ({})",
                    ctx.step(),
                    ctx.instance_id(),
                    if after {
                        "after its effect"
                    } else {
                        "before its effect"
                    }
                );
            }
            Plan::Error { after } => {
                self.counters.add(&format!("{what}.error"));
                if after {
                    let _ = call.await;
                }
                Err(HandlerError::retryable(format!(
                    "chaos: injected error ({})",
                    if after {
                        "after the effect"
                    } else {
                        "before the effect"
                    }
                )))
            }
        }
    }
}

/// A [`Handler`] wrapped with seeded faults.
pub struct ChaosHandler<H> {
    inner: H,
    injector: Arc<HandlerInjector>,
}

impl<H> std::fmt::Debug for ChaosHandler<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosHandler")
            .field("faults", &self.injector.faults)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> ChaosHandler<H> {
    /// Wraps `inner` with its own injector drawing from `seed`.
    pub fn new(
        inner: H,
        faults: HandlerFaults,
        seed: u64,
        switch: FaultSwitch,
        counters: FaultCounters,
    ) -> Self {
        Self {
            inner,
            injector: HandlerInjector::new(faults, seed, switch, counters),
        }
    }

    /// Wraps `inner` with a shared injector (one seeded stream for many handlers).
    pub fn with_injector(inner: H, injector: Arc<HandlerInjector>) -> Self {
        Self { inner, injector }
    }
}

#[floxy::async_trait]
impl<H: Handler> Handler for ChaosHandler<H> {
    async fn execute(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError> {
        let call = self.inner.execute(ctx.clone(), input);
        self.injector.run(&ctx, call).await
    }
}

/// Wraps an already shared handler.
pub struct ChaosArcHandler {
    inner: Arc<dyn Handler>,
    injector: Arc<HandlerInjector>,
}

impl std::fmt::Debug for ChaosArcHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosArcHandler")
            .field("faults", &self.injector.faults)
            .finish_non_exhaustive()
    }
}

impl ChaosArcHandler {
    /// Wraps `inner` with a shared injector.
    #[must_use]
    pub fn new(inner: Arc<dyn Handler>, injector: Arc<HandlerInjector>) -> Self {
        Self { inner, injector }
    }
}

#[floxy::async_trait]
impl Handler for ChaosArcHandler {
    async fn execute(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError> {
        let call = self.inner.execute(ctx.clone(), input);
        self.injector.run(&ctx, call).await
    }
}
