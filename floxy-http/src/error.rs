//! Errors of the API and of building the router.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use floxy::floxy_core::model::PayloadTooLarge;
use floxy::{EngineError, StoreError, TransitionError};
use serde::Serialize;
use utoipa::ToSchema;

/// Errors of [`crate::router`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No token is configured and `insecure_local` is not set: the API would be open.
    #[error(
        "no API token configured: configure tokens, or set insecure_local (loopback only) to run without"
    )]
    NoTokens,
    /// The body limit is zero.
    #[error("max_body_bytes must be at least 1")]
    ZeroBodyLimit,
}

/// The JSON body of every error response (Floxy's shape).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub message: String,
}

/// An API error, answered with its status and an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    TooLarge(String),
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(self) -> String {
        match self {
            Self::BadRequest(m)
            | Self::Unauthorized(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::TooLarge(m)
            | Self::Unavailable(m)
            | Self::Internal(m) => m,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (
            status,
            Json(ErrorBody {
                message: self.message(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let msg = e.to_string();
        match e {
            EngineError::UnknownWorkflow(_)
            | EngineError::UnknownInstance(_)
            | EngineError::UnknownDlqRecord(_) => Self::NotFound(msg),
            // Nesting is a property of the JSON, not of its size: the body is malformed for us.
            EngineError::Definition(_)
            | EngineError::PayloadTooLarge(PayloadTooLarge::Depth { .. }) => Self::BadRequest(msg),
            EngineError::PayloadTooLarge(_) => Self::TooLarge(msg),
            EngineError::DefinitionConflict(_) => Self::Conflict(msg),
            EngineError::Transition(t) => transition(&t, msg),
            EngineError::Store(s) => store(&s, msg),
            EngineError::ShuttingDown | EngineError::Timeout { .. } => Self::Unavailable(msg),
            _ => Self::Internal(msg),
        }
    }
}

fn transition(t: &TransitionError, msg: String) -> ApiError {
    match t {
        TransitionError::UnknownStep { .. } | TransitionError::UnknownDlqRecord { .. } => {
            ApiError::NotFound(msg)
        }
        TransitionError::NotHumanStep { .. } => ApiError::BadRequest(msg),
        _ => ApiError::Conflict(msg),
    }
}

fn store(s: &StoreError, msg: String) -> ApiError {
    match s {
        StoreError::NotFound(_) => ApiError::NotFound(msg),
        StoreError::Conflict(_) | StoreError::DefinitionConflict(_) => ApiError::Conflict(msg),
        e if e.is_retryable() => ApiError::Unavailable(msg),
        _ => ApiError::Internal(msg),
    }
}
