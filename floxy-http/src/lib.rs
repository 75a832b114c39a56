//! REST API and live event stream of floxy, as an axum [`Router`] to serve on its own
//! ([`serve`]) or to nest in a service.
//!
//! ```no_run
//! # async fn f(engine: floxy::Engine) -> Result<(), Box<dyn std::error::Error>> {
//! use floxy_http::{RouterConfig, Tokens};
//! let tokens = Tokens::from_file("/etc/floxy/tokens")?;
//! let app = floxy_http::router(engine, RouterConfig::new(tokens))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! floxy_http::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! The router can be nested under a prefix (`Router::new().nest("/floxy", api)`): the
//! console finds the API next to itself. For HTTPS, feature `tls` adds the module `tls`
//! (a rustls `TlsListener` for `axum::serve`); `floxyd --http-addr` serves this router with
//! tokens from a file or the environment and optional TLS.
//!
//! # Routes
//!
//! Floxy's routes and JSON shapes, so Floxy tooling keeps working, described by an OpenAPI
//! document at `GET /api/openapi.json`. Reads: `GET /api/workflows`, `/api/workflows/{id}`
//! (definition and graph), `/api/workflows/{id}/instances`, `/api/instances` (filters
//! `status`, `workflow`, `created_from`/`created_to` in ms; paging by `cursor` or
//! `page`/`page_size`, `page_size` ≤ [`floxy::MAX_PAGE_SIZE`]), `/api/instances/active`,
//! `/api/instances/{id}` (with steps and graph), `/api/instances/{id}/steps`, `/events`,
//! `/api/stats`, `/api/stats/summary`, `/api/dlq`, `/api/dlq/{id}`, and the server-sent
//! event stream `/api/events/stream` (filters `instance`, `workflow`). Commands:
//! `POST /api/workflows/{id}/start`, `/api/instances/{id}/cancel`, `/abort`,
//! `/api/instances/{id}/make-decision/confirm|reject` (or
//! `/api/instances/{id}/steps/{step}/make-decision/confirm|reject` naming the step),
//! `/api/dlq/{id}/requeue`, `/api/cleanup`, and `POST /api/workflows` (register a flow file
//! in YAML or JSON whose handlers are all registered in this process).
//!
//! Errors answer `{"message": ...}` with 400 (bad id or body, with the reason), 401 (no or
//! unknown token), 403 (role too low), 404, 409 (terminal instance, already decided, definition
//! conflict), 413 (body above [`RouterConfig::max_body_bytes`]).
//!
//! # Security
//!
//! Every request carries `Authorization: Bearer <token>`. Tokens are configured hashed
//! ([`Tokens`]: SHA-256, compared in constant time) with a [`Role`]: `viewer` reads (inputs,
//! outputs, decisions and DLQ inputs shown as `"[redacted]"` unless the token has
//! `see_payloads`), `operator` also starts, cancels, aborts, decides and requeues, `admin`
//! also registers flows and runs cleanup. Each operator action is recorded in the instance's
//! events with the token's name (`detail.by`, or `decided_by` for decisions). [`router`]
//! refuses a configuration without tokens unless [`RouterConfig::insecure_local`] is set
//! (then requests without a token act as admin `local`: bind to loopback only).

mod auth;
mod body;
mod console;
mod dto;
mod error;
mod graph;
mod register;
mod routes;
mod sse;
#[cfg(feature = "tls")]
pub mod tls;
mod ui;

pub use auth::{Role, TOKENS_ENV, TokenEntry, TokenError, Tokens, hash_token};
pub use error::{ConfigError, ErrorBody};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use floxy::Engine;
use std::sync::Arc;

/// Default bound on request bodies: 1 MiB of payload plus room for the JSON around it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024 + 64 * 1024;
/// Default page size of listings.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Bound on `page × page_size` for page-numbered listings (deeper pages: use `cursor`).
pub const MAX_PAGE_OFFSET: usize = 10_000;

/// Configuration of [`router`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterConfig {
    /// Accepted tokens.
    pub tokens: Tokens,
    /// Serve without tokens (only when `tokens` is empty): every request acts as admin
    /// `local`. For a server bound to loopback only.
    pub insecure_local: bool,
    /// Bound on request bodies; larger ones get 413.
    pub max_body_bytes: usize,
}

impl RouterConfig {
    /// A configuration with these tokens and the default body limit.
    #[must_use]
    pub fn new(tokens: Tokens) -> Self {
        Self {
            tokens,
            insecure_local: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// A configuration without tokens, for a server bound to loopback only.
    #[must_use]
    pub fn insecure_local() -> Self {
        Self {
            insecure_local: true,
            ..Self::new(Tokens::new())
        }
    }

    /// Sets the body limit.
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) engine: Engine,
    pub(crate) config: Arc<RouterConfig>,
}

/// The API router (state included): nest it or serve it with [`serve`].
///
/// # Errors
/// [`ConfigError::NoTokens`] when no token is configured and `insecure_local` is not set;
/// [`ConfigError::ZeroBodyLimit`].
pub fn router(engine: Engine, config: RouterConfig) -> Result<Router, ConfigError> {
    if config.tokens.is_empty() && !config.insecure_local {
        return Err(ConfigError::NoTokens);
    }
    if config.max_body_bytes == 0 {
        return Err(ConfigError::ZeroBodyLimit);
    }
    let limit = config.max_body_bytes;
    let state = AppState {
        engine,
        config: Arc::new(config),
    };
    let (router, _) = routes::api_router().split_for_parts();
    Ok(router
        .merge(ui::routes())
        .fallback(routes::no_route)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state))
}

/// The OpenAPI document of the API (as served at `/api/openapi.json`).
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(|| routes::api_router().split_for_parts().1)
        .clone()
}

/// Serves `router` on `listener` (plain HTTP/1.1) until the task is dropped or the listener
/// fails. For HTTPS, serve it on a `tls::TlsListener` (feature `tls`); for a graceful
/// shutdown, call `axum::serve` yourself with `with_graceful_shutdown`.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}
