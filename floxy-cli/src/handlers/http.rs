//! HTTP handlers (CLI.md §3).

use super::debug::DebugSink;
use super::tls::{HttpTls, client_config, find_tls_error};
use super::{HandlerSetupError, STDERR_TAIL_BYTES, STDOUT_READ_FACTOR, head};
use floxy::floxy_core::model::DEFAULT_MAX_PAYLOAD_BYTES;
use floxy::{Handler, HandlerError, Payload, StepContext};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The bound of one call when the step has no timeout of its own.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A handler that POSTs the step to a URL.
///
/// # Request
///
/// `POST <url>` with `Content-Type: application/json` and the body
/// `{"metadata": {...}, "data": <input>}`. `metadata` is the step's metadata (from its
/// definition, strings); for a compensation it also has `reason` = `"compensation"` (as
/// Floxy), `compensation_reason` = `"failure"` or `"cancel"`, and `step_output` (JSON) and
/// `step_error` where the step has them. Headers: `X-Floxy-Instance-ID`,
/// `X-Floxy-Step-Name`, `X-Floxy-Idempotency-Key`, `X-Floxy-Retry-Count` (0 on the first
/// attempt), and also `X-Floxy-Workflow-ID`, `X-Floxy-Attempt` (from 1). Proxies from the
/// environment (`HTTPS_PROXY`, `NO_PROXY`, ...) are honoured; redirects are followed (up to
/// 10).
///
/// # Result
///
/// A 2xx response with one JSON value as its body: the output. Failures carry the status and
/// the start of the body ([`STDERR_TAIL_BYTES`]):
///
/// * retryable: connection errors (TLS ones name the handler and the reason), timeouts,
///   `408`, `429`, `5xx`, and a 2xx whose body is empty or not JSON;
/// * final (no retry, **fix**: Floxy retried everything): every other status (`4xx`, an
///   unfollowed `3xx`), and an output over the payload bound. The body is read in chunks and
///   reading stops past [`STDOUT_READ_FACTOR`] times the bound (a body announcing more with
///   `Content-Length` is not read at all).
///
/// # Timeout
///
/// The runtime cuts a call at the step's own `timeout` (it drops the call's future, which
/// aborts the request). The handler bounds each call itself too, with
/// [`DEFAULT_HTTP_TIMEOUT`] (see [`HttpHandler::timeout`]) unless the step was given a bound
/// with [`HttpHandler::step_timeout`]: the glue registers there the timeout of every step
/// that has one, so the handler's own bound is never shorter than the step's.
#[derive(Debug, Clone)]
pub struct HttpHandler {
    name: Arc<str>,
    url: reqwest::Url,
    client: reqwest::Client,
    debug: Option<DebugSink>,
    max_payload_bytes: usize,
    timeout: Duration,
    step_timeouts: Arc<HashMap<String, Duration>>,
    tls: HttpTls,
}

impl HttpHandler {
    /// A handler posting to `url` (`http://` or `https://`). TLS material is loaded and
    /// checked now; `skip_verify` logs a warning now.
    ///
    /// # Errors
    /// [`HandlerSetupError::InvalidUrl`] for a URL that does not parse or has another
    /// scheme; [`HandlerSetupError::TlsFile`], [`HandlerSetupError::TlsPem`] and
    /// [`HandlerSetupError::Tls`] for TLS files that cannot be read or used;
    /// [`HandlerSetupError::Client`] when the client cannot be built.
    pub fn new(
        name: impl Into<String>,
        url: &str,
        tls: HttpTls,
    ) -> Result<Self, HandlerSetupError> {
        let name: String = name.into();
        let invalid = |reason: String| HandlerSetupError::InvalidUrl {
            handler: name.clone(),
            url: url.to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "scheme {:?}, expected http or https",
                parsed.scheme()
            )));
        }
        let config = client_config(&name, &tls)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .user_agent(concat!("floxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HandlerSetupError::Client {
                handler: name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            name: name.into(),
            url: parsed,
            client,
            debug: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            timeout: DEFAULT_HTTP_TIMEOUT,
            step_timeouts: Arc::new(HashMap::new()),
            tls,
        })
    }

    /// Debug mode (CLI.md §2 `-D`): input, output or error of each call printed to stderr,
    /// prefixed with the handler name.
    #[must_use]
    pub fn debug(self, on: bool) -> Self {
        self.debug_sink(on.then(DebugSink::stderr))
    }

    /// Debug mode with the lines sent to `sink` (`None`: off).
    #[must_use]
    pub fn debug_sink(mut self, sink: Option<DebugSink>) -> Self {
        self.debug = sink;
        self
    }

    /// The payload bound for outputs (the workflow's `max_payload_bytes`).
    #[must_use]
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.max_payload_bytes = n;
        self
    }

    /// The bound of a call for steps without a registered timeout (default
    /// [`DEFAULT_HTTP_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bound of a call for the step named `step` (its `timeout`, or its compensation's):
    /// the largest of the values given for one step name is kept.
    #[must_use]
    pub fn step_timeout(mut self, step: impl Into<String>, timeout: Duration) -> Self {
        let map = Arc::make_mut(&mut self.step_timeouts);
        let entry = map.entry(step.into()).or_insert(timeout);
        *entry = (*entry).max(timeout);
        self
    }

    /// The handler's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TLS settings it was built with.
    #[must_use]
    pub fn tls(&self) -> &HttpTls {
        &self.tls
    }

    /// The URL it posts to.
    #[must_use]
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    fn call_timeout(&self, step: &str) -> Duration {
        self.step_timeouts
            .get(step)
            .copied()
            .unwrap_or(self.timeout)
    }

    fn body(ctx: &StepContext, input: &Payload) -> serde_json::Value {
        let mut metadata: serde_json::Map<String, serde_json::Value> = ctx
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        if let Some(c) = ctx.compensation() {
            metadata.insert("reason".into(), "compensation".into());
            metadata.insert("compensation_reason".into(), c.reason.as_str().into());
            if let Some(out) = &c.output {
                metadata.insert("step_output".into(), out.value().clone());
            }
            if let Some(err) = &c.error {
                metadata.insert("step_error".into(), err.clone().into());
            }
        }
        serde_json::json!({ "metadata": metadata, "data": input.value() })
    }

    async fn call(&self, ctx: &StepContext, input: &Payload) -> Result<Payload, HandlerError> {
        let timeout = self.call_timeout(ctx.step());
        let request = self
            .client
            .post(self.url.clone())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Floxy-Instance-ID", ctx.instance_id().to_string())
            .header("X-Floxy-Workflow-ID", ctx.workflow_id().to_string())
            .header("X-Floxy-Step-Name", ctx.step())
            .header("X-Floxy-Idempotency-Key", ctx.idempotency_key())
            .header(
                "X-Floxy-Retry-Count",
                ctx.attempt().saturating_sub(1).to_string(),
            )
            .header("X-Floxy-Attempt", ctx.attempt().to_string())
            .body(Self::body(ctx, input).to_string());
        let mut response = request
            .send()
            .await
            .map_err(|e| self.send_error(&e, timeout))?;
        let status = response.status();
        let success = status.is_success();
        let limit = if success {
            self.max_payload_bytes.saturating_mul(STDOUT_READ_FACTOR)
        } else {
            STDERR_TAIL_BYTES
        };
        if success
            && let Some(len) = response.content_length()
            && usize::try_from(len).map_or(true, |l| l > limit)
        {
            return Err(HandlerError::fatal(format!(
                "HTTP {status}: body of {len} bytes exceeds {limit} bytes ({STDOUT_READ_FACTOR} \
                 times the payload bound of {} bytes)",
                self.max_payload_bytes
            )));
        }
        let mut body = Vec::new();
        let mut overflow = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        let room = limit - body.len();
                        body.extend_from_slice(&chunk[..room]);
                        overflow = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(self.send_error(&e, timeout)),
            }
        }
        let text = String::from_utf8_lossy(&body);
        if !success {
            let start = head(text.trim(), STDERR_TAIL_BYTES);
            let more = if overflow { "…" } else { "" };
            let msg = if start.is_empty() {
                format!("HTTP {status} (empty body)")
            } else {
                format!("HTTP {status}: {start}{more}")
            };
            let retryable = status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT;
            return Err(HandlerError {
                message: msg,
                retryable,
            });
        }
        if overflow {
            return Err(HandlerError::fatal(format!(
                "HTTP {status}: body exceeds {limit} bytes ({STDOUT_READ_FACTOR} times the \
                 payload bound of {} bytes); reading stopped",
                self.max_payload_bytes
            )));
        }
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(HandlerError::retryable(format!(
                "HTTP {status}: empty body (one JSON value is expected)"
            )));
        }
        let value: serde_json::Value = serde_json::from_str(trimmed).map_err(|e| {
            HandlerError::retryable(format!(
                "HTTP {status}: body is not JSON ({e}); body starts with: {:?}",
                head(trimmed, 200)
            ))
        })?;
        let payload = Payload::new(value);
        payload
            .check_size(self.max_payload_bytes)
            .map_err(|e| HandlerError::fatal(format!("HTTP {status}: output rejected: {e}")))?;
        Ok(payload)
    }

    fn send_error(&self, e: &reqwest::Error, timeout: Duration) -> HandlerError {
        if let Some(tls) = find_tls_error(e) {
            return HandlerError::retryable(format!("handler {}: TLS: {tls}", self.name));
        }
        if e.is_timeout() {
            return HandlerError::retryable(format!(
                "handler {}: timed out after {} ms",
                self.name,
                timeout.as_millis()
            ));
        }
        if e.is_builder() {
            return HandlerError::fatal(format!(
                "handler {}: cannot build the request: {}",
                self.name,
                chain(e)
            ));
        }
        HandlerError::retryable(format!("handler {}: {}", self.name, chain(e)))
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s
}

#[floxy::async_trait]
impl Handler for HttpHandler {
    async fn execute(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError> {
        if let Some(d) = &self.debug {
            d.line(&self.name, "input", &input.value().to_string());
        }
        let result = tokio::select! {
            biased;
            () = ctx.cancelled() => Err(HandlerError::retryable("cancelled: the request was aborted")),
            r = self.call(&ctx, &input) => r,
        };
        if let Some(d) = &self.debug {
            match &result {
                Ok(out) => d.line(&self.name, "output", &out.value().to_string()),
                Err(e) => d.line(&self.name, "error", &e.message),
            }
        }
        result
    }
}
