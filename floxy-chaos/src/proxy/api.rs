//! The Toxiproxy HTTP API (the subset the `toxiproxy_rust` client and Toxiproxy's own CLI
//! use), served with axum.
//!
//! | method and path | action |
//! |---|---|
//! | `GET /version` | version string |
//! | `POST /reset` | remove every toxic, enable every proxy |
//! | `GET /proxies` | every proxy, by name |
//! | `POST /proxies` | create a proxy |
//! | `POST /populate` | create or replace proxies (`{"proxies": [...]}` back) |
//! | `GET /proxies/{name}` | one proxy |
//! | `POST`/`PATCH /proxies/{name}` | update `enabled` / `upstream` |
//! | `DELETE /proxies/{name}` | remove a proxy |
//! | `GET /proxies/{name}/toxics` | its toxics |
//! | `POST /proxies/{name}/toxics` | add a toxic |
//! | `GET /proxies/{name}/toxics/{toxic}` | one toxic |
//! | `POST`/`PATCH /proxies/{name}/toxics/{toxic}` | update a toxic's attributes |
//! | `DELETE /proxies/{name}/toxics/{toxic}` | remove a toxic |

use super::{ProxyConfig, ProxyError, ProxyServer, Toxic, VERSION};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = match &self {
            ProxyError::NotFound | ProxyError::ToxicNotFound => StatusCode::NOT_FOUND,
            ProxyError::Exists(_) => StatusCode::CONFLICT,
            ProxyError::Bad(_) => StatusCode::BAD_REQUEST,
            ProxyError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(json!({ "error": self.to_string(), "status": status.as_u16() })),
        )
            .into_response()
    }
}

type S = State<Arc<ProxyServer>>;

#[derive(Debug, Deserialize)]
struct ProxyUpdate {
    enabled: Option<bool>,
    upstream: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ToxicUpdate {
    #[serde(default)]
    attributes: BTreeMap<String, serde_json::Value>,
    toxicity: Option<f32>,
}

/// Populate accepts a bare array or `{"proxies": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PopulateBody {
    List(Vec<ProxyConfig>),
    Wrapped { proxies: Vec<ProxyConfig> },
}

async fn version() -> &'static str {
    VERSION
}

async fn reset(State(s): S) -> Result<StatusCode, ProxyError> {
    s.reset().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list(State(s): S) -> Json<BTreeMap<String, ProxyConfig>> {
    Json(s.list())
}

async fn create(State(s): S, Json(cfg): Json<ProxyConfig>) -> Result<Response, ProxyError> {
    let p = s.create(cfg).await?;
    Ok((StatusCode::CREATED, Json(p.config())).into_response())
}

async fn populate(State(s): S, Json(body): Json<PopulateBody>) -> Result<Response, ProxyError> {
    let cfgs = match body {
        PopulateBody::List(v) | PopulateBody::Wrapped { proxies: v } => v,
    };
    let out = s.populate(cfgs).await?;
    Ok((StatusCode::CREATED, Json(json!({ "proxies": out }))).into_response())
}

async fn get_proxy(State(s): S, Path(name): Path<String>) -> Result<Json<ProxyConfig>, ProxyError> {
    Ok(Json(s.get(&name)?.config()))
}

async fn update_proxy(
    State(s): S,
    Path(name): Path<String>,
    Json(u): Json<ProxyUpdate>,
) -> Result<Json<ProxyConfig>, ProxyError> {
    Ok(Json(s.update(&name, u.enabled, u.upstream).await?))
}

async fn delete_proxy(State(s): S, Path(name): Path<String>) -> Result<StatusCode, ProxyError> {
    s.delete(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_toxics(
    State(s): S,
    Path(name): Path<String>,
) -> Result<Json<Vec<Toxic>>, ProxyError> {
    Ok(Json(s.get(&name)?.config().toxics))
}

async fn add_toxic(
    State(s): S,
    Path(name): Path<String>,
    Json(t): Json<Toxic>,
) -> Result<Json<Toxic>, ProxyError> {
    Ok(Json(s.add_toxic(&name, t)?))
}

async fn get_toxic(
    State(s): S,
    Path((name, toxic)): Path<(String, String)>,
) -> Result<Json<Toxic>, ProxyError> {
    s.get(&name)?
        .config()
        .toxics
        .into_iter()
        .find(|t| t.name == toxic)
        .map(Json)
        .ok_or(ProxyError::ToxicNotFound)
}

async fn update_toxic(
    State(s): S,
    Path((name, toxic)): Path<(String, String)>,
    Json(u): Json<ToxicUpdate>,
) -> Result<Json<Toxic>, ProxyError> {
    Ok(Json(s.update_toxic(
        &name,
        &toxic,
        u.attributes,
        u.toxicity,
    )?))
}

async fn delete_toxic(
    State(s): S,
    Path((name, toxic)): Path<(String, String)>,
) -> Result<StatusCode, ProxyError> {
    s.remove_toxic(&name, &toxic)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The API router over `server`.
pub fn router(server: Arc<ProxyServer>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/reset", axum::routing::post(reset))
        .route("/populate", axum::routing::post(populate))
        .route("/proxies", get(list).post(create))
        .route(
            "/proxies/{name}",
            get(get_proxy)
                .post(update_proxy)
                .patch(update_proxy)
                .delete(delete_proxy),
        )
        .route("/proxies/{name}/toxics", get(list_toxics).post(add_toxic))
        .route(
            "/proxies/{name}/toxics/{toxic}",
            get(get_toxic)
                .post(update_toxic)
                .patch(update_toxic)
                .delete(delete_toxic),
        )
        .with_state(server)
}

/// A running API server.
#[derive(Debug)]
pub struct ApiHandle {
    /// Address the API listens on.
    pub addr: SocketAddr,
    /// The proxy server behind it.
    pub server: Arc<ProxyServer>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ApiHandle {
    /// Stops the API and every proxy.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
        self.server.shutdown();
    }
}

/// Serves the API of `server` on `addr` (port 0 picks one).
///
/// # Errors
/// Binding failed.
pub async fn serve(server: Arc<ProxyServer>, addr: SocketAddr) -> Result<ApiHandle, ProxyError> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let app = router(Arc::clone(&server));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "toxiproxy API server ended");
        }
    });
    Ok(ApiHandle {
        addr,
        server,
        stop,
        task,
    })
}
