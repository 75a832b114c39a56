//! Working on one claimed item: run its handler (or not), feed the result to the core,
//! commit.

use crate::engine::Engine;
use crate::failpoints::{self, Hit};
use crate::handler::{CompensationInfo, HandlerError, StepContext};
use crate::heartbeat::LeaseGuard;
use crate::metrics;
use floxy_core::eager::EagerClaim;
use floxy_core::failpoints as fp;
use floxy_core::graph::CompiledWorkflow;
use floxy_core::machine::{Input, TransitionError, WorkOutcome};
use floxy_core::model::{
    CompensationReason, FencingToken, Payload, QueueItem, StepDef, StepKind, StepRun, WorkKind,
};
use floxy_core::store::{ClaimedItem, StoreError};
use futures::FutureExt;
use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Items a worker asks to lease in the commit of its result: the next step of a chain runs
/// in the same task, on the same permit, so one is all a worker can take without a second
/// permit (the others stay queued for any worker's claim).
pub const EAGER_CLAIMS_PER_COMMIT: usize = 1;

impl Engine {
    /// Works on one claimed item to the end: the result is committed, dropped (stale lease,
    /// lost lease) or abandoned (hard shutdown; the lease expires).
    pub(crate) async fn process(&self, claimed: ClaimedItem) {
        self.process_one(claimed, None).await;
    }

    /// [`Engine::process`], then (with `eager_claims` on) the work its commits lease to this
    /// worker eagerly (the next step of a chain, see [`floxy_core::eager`]), one item after
    /// another in this task, on the worker permit it already holds. Stops eager leasing once
    /// the engine stops.
    pub(crate) async fn process_chain(&self, claimed: ClaimedItem) {
        let inner = &self.inner;
        // Built once per chain (the handler list is sorted and allocated).
        let eager = inner.config.eager_claims.then(|| EagerClaim {
            owner: Arc::clone(&inner.config.worker_id),
            handlers: inner.handlers.claim_filter(),
            limit: EAGER_CLAIMS_PER_COMMIT,
        });
        let mut next = std::collections::VecDeque::from([claimed]);
        while let Some(item) = next.pop_front() {
            next.extend(self.process_one(item, eager.as_ref()).await);
        }
    }

    /// Works on one item; returns the items its commit leased with `eager`.
    async fn process_one(
        &self,
        claimed: ClaimedItem,
        eager: Option<&EagerClaim>,
    ) -> Vec<ClaimedItem> {
        let span = tracing::info_span!(
            "floxy.step",
            instance = %claimed.item.key.instance_id,
            workflow = %claimed.item.workflow_id,
            step = %claimed.item.key.step,
            attempt = claimed.item.attempt,
            kind = claimed.item.key.kind.as_str(),
        );
        self.process_in_span(claimed, eager).instrument(span).await
    }

    async fn process_in_span(
        &self,
        claimed: ClaimedItem,
        eager: Option<&EagerClaim>,
    ) -> Vec<ClaimedItem> {
        let ClaimedItem {
            item,
            previous_lease_expired,
            run,
        } = claimed;
        let Some(token) = item.lease.as_ref().map(|l| l.token) else {
            tracing::error!("store returned a claimed item without a lease; skipping it");
            return Vec::new();
        };
        let inner = &self.inner;
        // Heartbeat the lease from the moment it is held, so a stall before the handler
        // (loading the workflow, a slow process) does not let it expire while we still work.
        let guard = inner.leases.register(
            item.key.clone(),
            token,
            item.lease_ttl_ms,
            inner.config.clock.now(),
            inner.lifecycle.hard_stop.child_token(),
        );
        if failpoints::hit(fp::AFTER_CLAIM).await == Hit::Abandon {
            return Vec::new();
        }
        let wf = match inner
            .workflows
            .get(inner.store.as_ref(), &item.workflow_id)
            .await
        {
            Ok(wf) => wf,
            Err(e) => {
                tracing::error!(error = %e, "cannot load the item's workflow; its lease will expire");
                return Vec::new();
            }
        };
        if item.cancel_requested {
            guard.cancel.cancel();
        }
        let key = item.key.clone();
        let input = if previous_lease_expired {
            tracing::debug!("previous lease expired; reporting the lost attempt");
            Input::LeaseExpired {
                key,
                token,
                attempt: item.attempt,
            }
        } else {
            match item.key.kind {
                WorkKind::Timer => Input::TimerFired { key, token },
                WorkKind::Execute | WorkKind::Compensate => {
                    let Some(outcome) = self.run_handler(&wf, &item, &run, &guard).await else {
                        return Vec::new();
                    };
                    Input::WorkDone {
                        key,
                        token,
                        attempt: item.attempt,
                        outcome,
                    }
                }
            }
        };
        if guard.lost.is_cancelled() {
            metrics::stale_result(item.key.kind, metrics::LEASE_LOST);
            tracing::debug!("lease lost while working; result dropped");
            return Vec::new();
        }
        if failpoints::hit(fp::BEFORE_COMMIT).await == Hit::Abandon {
            return Vec::new();
        }
        // No new leases once the engine stops.
        let eager = eager.filter(|_| !inner.lifecycle.stopping.is_cancelled());
        let next = self.commit_result(&wf, &item, token, input, eager).await;
        drop(guard);
        next
    }

    async fn commit_result(
        &self,
        wf: &Arc<CompiledWorkflow>,
        item: &QueueItem,
        token: FencingToken,
        input: Input,
        eager: Option<&EagerClaim>,
    ) -> Vec<ClaimedItem> {
        let id = item.key.instance_id;
        let started = tokio::time::Instant::now();
        let committed = match eager {
            Some(e) => self.inner.commit_input_eager(wf, id, input, e).await,
            None => self
                .inner
                .commit_input(wf, id, input)
                .await
                .map(|t| (t, Vec::new())),
        };
        metrics::commit(started, &committed);
        match committed {
            Ok((t, next)) => {
                if failpoints::hit(fp::AFTER_COMMIT).await == Hit::Abandon {
                    // The eager leases are abandoned with the process: they expire.
                    return Vec::new();
                }
                self.inner.after_commit(&t);
                tracing::debug!(
                    status = t.instance.status.as_str(),
                    eager = next.len(),
                    "result committed"
                );
                return next;
            }
            Err(StoreError::StaleLease { .. }) => {
                metrics::stale_result(item.key.kind, metrics::STALE_LEASE);
                tracing::debug!(token = token.0, "stale lease; result dropped");
            }
            Err(StoreError::Rejected(TransitionError::Corrupt(msg))) => {
                tracing::error!(error = %msg, "state machine found the instance inconsistent");
            }
            Err(StoreError::Rejected(e)) => {
                tracing::debug!(error = %e, "state machine refused the result; dropped");
            }
            Err(StoreError::NotFound(_)) => tracing::debug!("instance is gone; result dropped"),
            Err(e) => tracing::warn!(
                error = %e,
                "could not commit the result; the lease will expire and the attempt count as lost"
            ),
        }
        Vec::new()
    }

    /// Runs the handler of an `Execute` or `Compensate` item with its timeout, catching
    /// panics. `None`: the lease was lost or the engine hard-stopped; drop the attempt.
    async fn run_handler(
        &self,
        wf: &CompiledWorkflow,
        item: &QueueItem,
        run: &StepRun,
        guard: &LeaseGuard,
    ) -> Option<WorkOutcome> {
        let Some(handler) = self.inner.handlers.get(&item.handler) else {
            metrics::no_handler(item);
            return Some(WorkOutcome::Failed {
                error: format!("no handler named {:?} is registered", item.handler),
                retryable: true,
            });
        };
        let step_def = wf.find(&item.key.step).map(|n| wf.step_def(n));
        let timeout_ms = step_def.and_then(|d| timeout_of(d, item.key.kind));
        let compensation = (item.key.kind == WorkKind::Compensate).then(|| {
            Arc::new(CompensationInfo {
                reason: run.compensate.unwrap_or(CompensationReason::Failure),
                output: run.output.clone(),
                error: run.error.clone(),
            })
        });
        let ctx = StepContext {
            instance_id: item.key.instance_id,
            workflow_id: item.workflow_id.clone(),
            step: item.key.step.clone(),
            attempt: item.attempt,
            idempotency_key: run.idempotency_key().into(),
            metadata: Arc::new(
                step_def
                    .map(|d| d.options.metadata.clone())
                    .unwrap_or_default(),
            ),
            kind: item.key.kind,
            compensation,
            cancel: guard.cancel.clone(),
        };
        let call_metrics = metrics::HandlerCall::start();
        let call = AssertUnwindSafe(handler.execute(ctx, run.input.clone())).catch_unwind();
        let timed = async {
            match timeout_ms {
                Some(ms) => {
                    let deadline = Duration::from_millis(ms);
                    let started = tokio::time::Instant::now();
                    let result = tokio::time::timeout(deadline, call).await.map_err(|_| ms);
                    // The timer cannot fire while a handler blocks its thread, and the
                    // handler is polled before the timer: a result that arrives after the
                    // deadline is discarded like one the timer cut off (SEMANTICS §4).
                    if result.is_ok() && started.elapsed() > deadline {
                        tracing::debug!(timeout_ms = ms, "handler returned after its deadline");
                        Err(ms)
                    } else {
                        result
                    }
                }
                None => Ok(call.await),
            }
        };
        let hard_stop = &self.inner.lifecycle.hard_stop;
        let result = tokio::select! {
            biased;
            r = timed => r,
            () = guard.lost.cancelled() => {
                call_metrics.end(item, metrics::LEASE_LOST);
                tracing::debug!("lease lost while the handler ran; abandoning it");
                return None;
            }
            () = hard_stop.cancelled() => {
                call_metrics.end(item, metrics::ABANDONED);
                tracing::debug!("shutdown: abandoning the handler; its lease will expire");
                return None;
            }
        };
        let label = attempt_label(&result, guard.cancel.is_cancelled());
        let outcome = match result {
            Err(ms) => {
                guard.cancel.cancel();
                tracing::debug!(timeout_ms = ms, "handler timed out");
                WorkOutcome::Failed {
                    error: format!("timed out after {ms} ms"),
                    retryable: true,
                }
            }
            Ok(Err(panic)) => {
                let msg = panic_message(panic.as_ref());
                tracing::warn!(panic = %msg, "handler panicked");
                WorkOutcome::Failed {
                    error: format!("handler panicked: {msg}"),
                    retryable: true,
                }
            }
            Ok(Ok(Err(e))) => {
                tracing::debug!(error = %e.message, retryable = e.retryable, "handler failed");
                WorkOutcome::Failed {
                    error: e.message,
                    retryable: e.retryable,
                }
            }
            Ok(Ok(Ok(output))) => {
                let max = wf.definition().options.max_payload_bytes;
                match output.check_size(max) {
                    Err(too_large) if item.key.kind == WorkKind::Execute => WorkOutcome::Failed {
                        error: format!("handler output rejected: {too_large}"),
                        retryable: false,
                    },
                    _ => WorkOutcome::Succeeded(output),
                }
            }
        };
        call_metrics.end(item, metrics::settle(label, &outcome));
        Some(outcome)
    }
}

/// The timeout of one call of `d`'s handler (`kind` execute) or compensation (compensate).
fn timeout_of(d: &StepDef, kind: WorkKind) -> Option<u64> {
    match kind {
        WorkKind::Compensate => match &d.kind {
            StepKind::Task {
                on_failure: Some(c),
                ..
            } => c.timeout_ms,
            _ => None,
        },
        _ => d.options.timeout_ms,
    }
}

/// The `outcome` label of a handler call that ended (see [`crate::metrics`]).
type CallResult = Result<std::thread::Result<Result<Payload, HandlerError>>, u64>;
fn attempt_label(result: &CallResult, cancelled: bool) -> &'static str {
    match result {
        Err(_) => metrics::TIMEOUT,
        Ok(Err(_)) => metrics::PANICKED,
        Ok(Ok(Err(_))) if cancelled => metrics::CANCELLED,
        Ok(Ok(Err(_))) => metrics::FAILED,
        Ok(Ok(Ok(_))) => metrics::COMPLETED,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
