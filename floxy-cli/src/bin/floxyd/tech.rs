//! The tech server: `/metrics` (Prometheus text), `/health` (liveness) and `/ready` (the
//! store answers), on axum.

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use floxy::{CancellationToken, InstanceId, Store};
use floxy_cli::exit::{CliError, CliResult};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::Arc;
use std::time::Duration;

/// How long `/ready` waits for the store.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Period of the metrics upkeep (histogram maintenance).
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// The Prometheus recorder's handle.
#[derive(Clone)]
pub(crate) struct Metrics {
    handle: PrometheusHandle,
}

/// Installs the process-wide Prometheus recorder; the engine records into it through the
/// `metrics` facade.
pub(crate) fn install_metrics() -> CliResult<Metrics> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| CliError::error(format!("cannot install the metrics recorder: {e}")))?;
    floxy::metrics::describe();
    metrics::describe_gauge!(
        "floxyd_instances",
        "Instances in the store by status (sampled by the statistics loop)."
    );
    metrics::describe_gauge!(
        "floxyd_queue_items",
        "Queue items by state (ready, leased), sampled by the statistics loop."
    );
    metrics::describe_gauge!("floxyd_dlq_records", "DLQ records in the store.");
    metrics::describe_gauge!(
        "floxyd_build_info",
        "Always 1; the version label names the build."
    );
    metrics::gauge!("floxyd_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(Metrics { handle })
}

/// Runs the recorder's upkeep until `stop` fires.
pub(crate) async fn upkeep(metrics: Metrics, stop: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_PERIOD);
    loop {
        tokio::select! {
            _ = tick.tick() => metrics.handle.run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

/// What the handlers need.
#[derive(Clone)]
pub(crate) struct State {
    store: Arc<dyn Store>,
    metrics: Metrics,
    stopping: CancellationToken,
}

impl State {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        metrics: Metrics,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            store,
            metrics,
            stopping,
        }
    }
}

fn router(state: State) -> Router {
    Router::new()
        .route("/metrics", get(metrics_route))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state)
}

/// Serves until `stop` fires.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: State,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn metrics_route(AxumState(state): AxumState<State>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.handle.render(),
    )
        .into_response()
}

async fn health() -> Response {
    axum::Json(serde_json::json!({ "status": "healthy" })).into_response()
}

async fn ready(AxumState(state): AxumState<State>) -> Response {
    if state.stopping.is_cancelled() {
        return unavailable("shutting down");
    }
    // A point read of an id that never exists: the cheapest round trip on every backend.
    let probe = state.store.get_instance(InstanceId::from_u128(0));
    match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(_)) => axum::Json(serde_json::json!({ "status": "ready" })).into_response(),
        Ok(Err(e)) => unavailable(&format!("store error: {e}")),
        Err(_) => unavailable(&format!(
            "the store did not answer within {} ms",
            READY_TIMEOUT.as_millis()
        )),
    }
}

fn unavailable(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "status": "unavailable", "reason": reason })),
    )
        .into_response()
}
