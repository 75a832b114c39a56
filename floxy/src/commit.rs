//! Feeding inputs to the state machine and committing the transitions it returns.

use crate::engine::Inner;
use floxy_core::eager::EagerClaim;
use floxy_core::graph::CompiledWorkflow;
use floxy_core::machine::{self, Input};
use floxy_core::model::{InstanceId, QueueOp, Transition};
use floxy_core::store::{ClaimedItem, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Attempts of a store call that fails with a retryable error (first call included).
pub const STORE_RETRY_ATTEMPTS: u32 = 6;
/// First backoff between two attempts of a store call.
pub const STORE_RETRY_BASE_MS: u64 = 20;
/// Cap on the backoff between two attempts of a store call.
pub const STORE_RETRY_MAX_MS: u64 = 1_000;

/// Runs `call` until it succeeds, fails with a non-retryable error, or
/// [`STORE_RETRY_ATTEMPTS`] attempts failed; backs off exponentially in between.
pub(crate) async fn with_store_retry<T, F, Fut>(
    what: &'static str,
    mut call: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff_ms = STORE_RETRY_BASE_MS;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && attempt < STORE_RETRY_ATTEMPTS => {
                tracing::debug!(error = %e, attempt, what, "retryable store error; backing off");
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(STORE_RETRY_MAX_MS);
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl Inner {
    /// Applies `input` to instance `id` as one [`floxy_core::store::Store::update_instance`]
    /// transition, computed by [`machine::apply`] under the instance lock at the clock's
    /// current time. Retries retryable store errors (bounded).
    pub(crate) async fn apply_input(
        &self,
        wf: &Arc<CompiledWorkflow>,
        id: InstanceId,
        input: Input,
    ) -> Result<Transition, StoreError> {
        let t = self.commit_input(wf, id, input).await?;
        self.after_commit(&t);
        Ok(t)
    }

    /// [`Inner::apply_input`] without the acknowledgement ([`Inner::after_commit`]): the
    /// caller acknowledges.
    pub(crate) async fn commit_input(
        &self,
        wf: &Arc<CompiledWorkflow>,
        id: InstanceId,
        input: Input,
    ) -> Result<Transition, StoreError> {
        with_store_retry("update_instance", || {
            let wf = Arc::clone(wf);
            let input = input.clone();
            let now = self.config.clock.now();
            self.store.update_instance(
                id,
                Box::new(move |snap| machine::apply(&wf, snap, &input, now)),
            )
        })
        .await
    }

    /// [`Inner::commit_input`] that also asks the store to lease this worker, in the same
    /// commit, the work the transition queues ([`floxy_core::store::Store::update_instance_eager`]).
    pub(crate) async fn commit_input_eager(
        &self,
        wf: &Arc<CompiledWorkflow>,
        id: InstanceId,
        input: Input,
        eager: &EagerClaim,
    ) -> Result<(Transition, Vec<ClaimedItem>), StoreError> {
        with_store_retry("update_instance", || {
            let wf = Arc::clone(wf);
            let input = input.clone();
            let now = self.config.clock.now();
            self.store.update_instance_eager(
                id,
                Box::new(move |snap| machine::apply(&wf, snap, &input, now)),
                eager,
            )
        })
        .await
    }

    /// Wakes local waiters and idle workers after a commit, and fires the tokens of local
    /// handlers the transition asked to stop.
    pub(crate) fn after_commit(&self, t: &Transition) {
        crate::metrics::transition(t);
        // Subscribers first: the workers woken below publish the claims that follow.
        self.events.publish(t);
        for op in &t.queue {
            if let QueueOp::RequestCancel(key) = op {
                self.leases.request_cancel(key, self.config.clock.now());
            }
        }
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        self.waiters.notify(t.instance.id);
    }
}
