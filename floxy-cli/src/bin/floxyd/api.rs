//! The HTTP API and web console (`floxy-http`) as floxyd serves them: address, tokens from a
//! file and the environment, `--insecure-local` on loopback only, HTTPS with rustls.

use floxy::{CancellationToken, Engine};
use floxy_cli::exit::{CliError, CliResult};
use floxy_http::tls::TlsListener;
use floxy_http::{RouterConfig, Tokens};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The API settings from the command line and the environment.
#[derive(Debug, Clone)]
pub(crate) struct ApiArgs {
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) tokens_file: Option<PathBuf>,
    pub(crate) insecure_local: bool,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
}

/// The API, checked and ready to bind.
pub(crate) struct Api {
    addr: SocketAddr,
    config: RouterConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Api {
    /// Checks the settings: `None` when the API is off (no address). Every refusal is bad
    /// input (exit 2), so a misconfigured daemon never starts half-open.
    pub(crate) fn from_args(args: &ApiArgs) -> CliResult<Option<Self>> {
        let Some(addr) = args.addr else {
            let stray = args.tokens_file.is_some()
                || args.insecure_local
                || args.tls_cert.is_some()
                || args.tls_key.is_some();
            if stray {
                return Err(CliError::bad_input(
                    "API settings given without --http-addr (FLOXY_HTTP_ADDR): the API is off",
                ));
            }
            return Ok(None);
        };
        let mut tokens = match &args.tokens_file {
            Some(path) => Tokens::from_file(path)
                .map_err(|e| CliError::bad_input(format!("--http-tokens: {e}")))?,
            None => Tokens::new(),
        };
        let from_env = Tokens::from_env()
            .map_err(|e| CliError::bad_input(format!("{}: {e}", floxy_http::TOKENS_ENV)))?;
        for entry in from_env.entries() {
            tokens.push(entry.clone()).map_err(|e| {
                CliError::bad_input(format!("{} and --http-tokens: {e}", floxy_http::TOKENS_ENV))
            })?;
        }
        let config = match (tokens.is_empty(), args.insecure_local) {
            (false, false) => RouterConfig::new(tokens),
            (true, true) if addr.ip().is_loopback() => RouterConfig::insecure_local(),
            (true, true) => {
                return Err(CliError::bad_input(format!(
                    "--insecure-local serves the API without tokens, so only on a loopback \
                     address; {addr} is not one"
                )));
            }
            (false, true) => {
                return Err(CliError::bad_input(
                    "--insecure-local and API tokens: choose one (tokens are checked, \
                     --insecure-local accepts everyone)",
                ));
            }
            (true, false) => {
                return Err(CliError::bad_input(format!(
                    "the HTTP API on {addr} needs tokens: --http-tokens FILE or {}, or \
                     --insecure-local on a loopback address",
                    floxy_http::TOKENS_ENV
                )));
            }
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(
                floxy_http::tls::server_config(cert, key)
                    .map_err(|e| CliError::bad_input(e.to_string()))?,
            ),
            (None, None) => None,
            _ => {
                return Err(CliError::bad_input("--tls-cert and --tls-key go together"));
            }
        };
        if tls.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the HTTP API listens beyond loopback without TLS: tokens travel in clear text (set --tls-cert and --tls-key)");
        }
        Ok(Some(Self { addr, config, tls }))
    }

    /// Binds the address (exit 1 when it is in use) and serves the API until `stop` fires.
    /// Returns the task and the bound address.
    pub(crate) async fn spawn(
        self,
        engine: Engine,
        stop: CancellationToken,
    ) -> CliResult<(tokio::task::JoinHandle<std::io::Result<()>>, SocketAddr)> {
        let tokens = self.config.tokens.len();
        let open = self.config.insecure_local;
        let router = floxy_http::router(engine, self.config)
            .map_err(|e| CliError::bad_input(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| CliError::error(format!("cannot listen on {}: {e}", self.addr)))?;
        let local = listener
            .local_addr()
            .map_err(|e| CliError::error(format!("API address: {e}")))?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(
            addr = %local,
            console = %format!("{scheme}://{local}/ui/"),
            tokens,
            insecure_local = open,
            "HTTP API listening"
        );
        let shutdown = async move { stop.cancelled().await };
        let task = match self.tls {
            Some(tls) => {
                let listener = TlsListener::new(listener, tls)
                    .map_err(|e| CliError::error(format!("API address: {e}")))?;
                tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                })
            }
            None => tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }),
        };
        Ok((task, local))
    }
}
