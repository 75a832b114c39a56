//! Step handlers: the user code a task or a compensation runs.

use async_trait::async_trait;
use floxy_core::model::{
    CompensationReason, InstanceId, Payload, StepName, StepRun, StepStatus, Timestamp, WorkKind,
    WorkflowId,
};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// User code run by a task (or by a compensation).
///
/// Handlers run outside any store transaction, at least once per attempt the core schedules:
/// make them idempotent with [`StepContext::idempotency_key`] (stable across retries and the
/// step's compensation). A handler should watch [`StepContext::cancelled`] and stop early when
/// it fires (cancel, abort, rollback, timeout, lease loss, shutdown).
///
/// ```
/// use floxy::{Handler, HandlerError, Payload, StepContext};
///
/// struct Charge;
///
/// #[floxy::async_trait]
/// impl Handler for Charge {
///     async fn execute(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError> {
///         if ctx.is_cancelled() {
///             return Err(HandlerError::retryable("cancelled"));
///         }
///         Ok(input)
///     }
/// }
/// ```
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt. `input` is the step's input (for a compensation too; the step's
    /// output and error are in [`StepContext::compensation`]). The returned payload becomes
    /// the step's output (ignored for compensations).
    async fn execute(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError>;
}

/// A failed handler attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// What went wrong (stored as the step's error and shown in events).
    pub message: String,
    /// Whether another attempt may succeed. `false` fails the step finally at once.
    pub retryable: bool,
}

impl HandlerError {
    /// An error worth retrying (within the step's retry budget).
    #[must_use]
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// An error that must not be retried (bad input, business rule): the step fails finally.
    #[must_use]
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<String> for HandlerError {
    /// A retryable error.
    fn from(message: String) -> Self {
        Self::retryable(message)
    }
}

impl From<&str> for HandlerError {
    /// A retryable error.
    fn from(message: &str) -> Self {
        Self::retryable(message)
    }
}

/// What a compensation handler is told about the step it undoes.
///
/// Every step run that made an attempt is compensated when a rollback or cancel covers it,
/// not only completed ones: an attempt that failed (finally, late after a stop, or before a
/// retry the rollback skipped) may have applied part of its effect (SEMANTICS §5,
/// "attempted means compensated"). A compensation must therefore tolerate "nothing to
/// undo"; `output` is `None` and `error` set when the forward run did not complete.
#[derive(Debug, Clone, PartialEq)]
pub struct CompensationInfo {
    /// Why the step is compensated: a rollback after a failure, or a cancel.
    pub reason: CompensationReason,
    /// The step's output, if its forward run completed.
    pub output: Option<Payload>,
    /// The step's last error, if its forward run failed.
    pub error: Option<String>,
}

/// Everything a handler knows about the attempt it runs.
#[derive(Clone)]
pub struct StepContext {
    pub(crate) instance_id: InstanceId,
    pub(crate) workflow_id: WorkflowId,
    pub(crate) step: StepName,
    pub(crate) attempt: u32,
    pub(crate) idempotency_key: Arc<str>,
    pub(crate) metadata: Arc<BTreeMap<String, String>>,
    pub(crate) kind: WorkKind,
    pub(crate) compensation: Option<Arc<CompensationInfo>>,
    pub(crate) cancel: CancellationToken,
}

impl fmt::Debug for StepContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("instance_id", &self.instance_id)
            .field("workflow_id", &self.workflow_id)
            .field("step", &self.step)
            .field("attempt", &self.attempt)
            .field("kind", &self.kind)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl StepContext {
    /// A context for calling a handler outside the engine (unit tests of handlers).
    /// Attempt 1, no metadata, a fresh cancellation token.
    #[must_use]
    pub fn detached(
        instance_id: InstanceId,
        workflow_id: WorkflowId,
        step: &str,
        kind: WorkKind,
    ) -> Self {
        let step: StepName = step.into();
        let run = StepRun::new(
            instance_id,
            step.clone(),
            StepStatus::Pending,
            Payload::null(),
            Timestamp(0),
        );
        Self {
            idempotency_key: run.idempotency_key().into(),
            instance_id,
            workflow_id,
            step,
            attempt: 1,
            metadata: Arc::new(BTreeMap::new()),
            kind,
            compensation: None,
            cancel: CancellationToken::new(),
        }
    }

    /// The instance.
    #[must_use]
    pub fn instance_id(&self) -> InstanceId {
        self.instance_id
    }
    /// The workflow definition the instance runs.
    #[must_use]
    pub fn workflow_id(&self) -> &WorkflowId {
        &self.workflow_id
    }
    /// The step name.
    #[must_use]
    pub fn step(&self) -> &str {
        &self.step
    }
    /// The attempt number of this kind of work, starting at 1 (forward attempts for
    /// [`WorkKind::Execute`], compensation attempts for [`WorkKind::Compensate`]).
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// `"<instance>:<step>"`: stable across retries and the step's compensation. Use it to
    /// deduplicate side effects.
    #[must_use]
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }
    /// The step's metadata from its definition.
    #[must_use]
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    /// Forward run ([`WorkKind::Execute`]) or compensation ([`WorkKind::Compensate`]).
    #[must_use]
    pub fn kind(&self) -> WorkKind {
        self.kind
    }
    /// Whether this call is a compensation.
    #[must_use]
    pub fn is_compensation(&self) -> bool {
        self.kind == WorkKind::Compensate
    }
    /// For a compensation: why, and the step's output or error.
    #[must_use]
    pub fn compensation(&self) -> Option<&CompensationInfo> {
        self.compensation.as_deref()
    }
    /// The token fired when the attempt should stop: cancel, abort or rollback of the
    /// instance, lease loss, timeout, engine shutdown.
    #[must_use]
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }
    /// Whether the token has fired.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    /// Completes when the token fires. Use it in `tokio::select!` next to the real work.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }
}

/// A [`Handler`] made from an async closure (see [`crate::Engine::register_fn`]).
pub struct FnHandler<F>(F);

impl<F> FnHandler<F> {
    /// Wraps a closure `|ctx, input| async move { ... }`.
    pub fn new(f: F) -> Self {
        Self(f)
    }
}

impl<F> fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnHandler")
    }
}

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(StepContext, Payload) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Payload, HandlerError>> + Send + 'static,
{
    async fn execute(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError> {
        (self.0)(ctx, input).await
    }
}

/// The registered handlers, by name.
#[derive(Default)]
pub(crate) struct HandlerRegistry {
    by_name: RwLock<HashMap<Arc<str>, Arc<dyn Handler>>>,
}

impl HandlerRegistry {
    pub(crate) fn insert(&self, name: Arc<str>, h: Arc<dyn Handler>) {
        self.by_name.write().insert(name, h);
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.by_name.read().get(name).cloned()
    }

    /// The claim filter: every registered name plus the timer pseudo-handler.
    pub(crate) fn claim_filter(&self) -> Vec<Arc<str>> {
        let map = self.by_name.read();
        let mut names: Vec<Arc<str>> = Vec::with_capacity(map.len() + 1);
        names.extend(map.keys().cloned());
        names.sort();
        names.push(floxy_core::model::TIMER_HANDLER.into());
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fn_handler_runs_closure() {
        let h = FnHandler::new(|ctx: StepContext, input: Payload| async move {
            assert_eq!(ctx.step(), "s");
            Ok::<_, HandlerError>(input)
        });
        let ctx = StepContext::detached(
            InstanceId::from_u128(1),
            WorkflowId::new("w", 1),
            "s",
            WorkKind::Execute,
        );
        assert_eq!(
            ctx.idempotency_key(),
            format!("{}:s", InstanceId::from_u128(1))
        );
        let out = h.execute(ctx, Payload::new(serde_json::json!(7))).await;
        assert_eq!(out, Ok(Payload::new(serde_json::json!(7))));
    }

    #[test]
    fn handler_error_conversions() {
        assert!(HandlerError::from("x").retryable);
        assert!(HandlerError::from(String::from("x")).retryable);
        assert!(!HandlerError::fatal("x").retryable);
        assert_eq!(HandlerError::fatal("boom").to_string(), "boom");
    }

    #[test]
    fn claim_filter_includes_timer() {
        let r = HandlerRegistry::default();
        r.insert(
            "b".into(),
            Arc::new(FnHandler::new(|_c: StepContext, p: Payload| async move {
                Ok(p)
            })),
        );
        let f = r.claim_filter();
        assert_eq!(f.len(), 2);
        assert_eq!(&*f[0], "b");
        assert_eq!(&*f[1], floxy_core::model::TIMER_HANDLER);
    }
}
