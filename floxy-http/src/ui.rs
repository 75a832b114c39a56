//! The web console: hand-written HTML, CSS and JavaScript modules embedded in the binary,
//! served under `/ui/` with their content types, an `ETag` (revalidated on every load:
//! `Cache-Control: no-cache`) and a strict Content-Security-Policy. No build step, no
//! external resource: it works offline.

use crate::AppState;
use axum::Router;
use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The policy of every console response: only this origin's scripts, styles, images and
/// connections; no inline script or style, no framing, no plugins.
pub(crate) const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $mime:expr) => {
        Asset {
            name: $name,
            mime: $mime,
            body: include_bytes!(concat!("../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// The console's files.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("graph.js", JS),
    asset!("pages.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// Strong `ETag`s of [`ASSETS`] (in their order), computed once.
fn etags() -> &'static [HeaderValue] {
    static TAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let d = Sha256::digest(a.body);
                let tag = format!("\"{}\"", hex::encode(&d[..12]));
                HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"0\""))
            })
            .collect()
    })
}

/// The console's routes: `/ui` (redirect), `/ui/` (the page), `/ui/<file>`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(redirect))
        .route("/ui/", get(index))
        .route("/ui/{file}", get(file))
}

async fn redirect() -> Response {
    // Relative: `/ui` → `/ui/`, and `/floxy/ui` → `/floxy/ui/` when nested.
    (StatusCode::PERMANENT_REDIRECT, [(LOCATION, "ui/")]).into_response()
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, req: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return crate::error::ApiError::NotFound(format!("no console file {name:?}"))
            .into_response();
    };
    let asset = &ASSETS[i];
    let tag = &etags()[i];
    let fresh = req
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(CONTENT_TYPE, asset.mime)], asset.body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(ETAG, tag.clone());
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}
