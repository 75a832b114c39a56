//! `floxyd`: the daemon that runs YAML flows with bash and HTTP handlers, with a tech server
//! (/metrics, /health, /ready), a statistics printer and a graceful shutdown.
// Doc comments of the clap types are the `--help` text, where backticks would print as
// they are: product names stay plain.
#![allow(clippy::doc_markdown)]

mod api;
mod stats;
mod tech;

use clap::Parser;
use floxy::CancellationToken;
use floxy::{Engine, PostgresLayout};
use floxy_cli::duration::{HumanDuration, parse_duration};
use floxy_cli::exit::{CliError, CliResult, Exit, one_line};
use floxy_cli::flows::{FlowError, LoadOptions};
use floxy_cli::store::{DEFAULT_SCHEMA, OpenMode, OpenStore, PgParts, StoreSpec};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const AFTER_HELP: &str = "\
Store: FLOXY_DATABASE_URL, or Floxy's FLOXY_DB_HOST/FLOXY_DB_PORT/FLOXY_DB_USER/
FLOXY_DB_PASSWORD/FLOXY_DB_NAME for PostgreSQL (migrated at startup); with none of these, an
embedded redb file (FLOXY_STORE=redb:PATH, default ./floxy.redb): no database server needed.

Tech server (no authentication: loopback by default; `:8081` means 127.0.0.1:8081):
  GET /metrics  Prometheus text format, the engine's metrics
  GET /health   200 {\"status\":\"healthy\"} while the process runs
  GET /ready    200 when the store answers, 503 with the reason otherwise

HTTP API and web console (off unless --http-addr is set; `:8080` means 127.0.0.1:8080):
  /api/...      Floxy's REST routes, OpenAPI at /api/openapi.json, events at /api/events/stream
  /ui/          the web console (embedded: works offline)
  Every request needs `Authorization: Bearer TOKEN`. Tokens: --http-tokens FILE and/or
  FLOXY_HTTP_TOKENS, lines `NAME ROLE SHA256 [see_payloads]` with ROLE viewer, operator or
  admin and SHA256 the hex SHA-256 of the token (`printf %s \"$TOKEN\" | sha256sum`).
  --insecure-local: no tokens, everyone is admin; refused unless the address is loopback.
  --tls-cert/--tls-key: HTTPS (PEM files); without them beyond loopback, a warning.

Signals: SIGINT/SIGTERM stop claiming and let running handlers finish within
--shutdown-timeout, then exit 0; a second signal stops at once (exit 130).

Examples:
  floxyd flows.yaml
  FLOXY_STORE=redb:/var/lib/floxy/floxy.redb FLOXY_WORKERS=8 floxyd flows.yaml
  FLOXY_DB_HOST=localhost FLOXY_DB_PORT=5432 FLOXY_DB_USER=floxy FLOXY_DB_PASSWORD=secret \\
    FLOXY_DB_NAME=floxy floxyd handlers.yaml
  floxyd --database-url postgres://floxy@db/floxy --tech-addr 127.0.0.1:9090 --log-format json flows.yaml
  floxyd --http-addr :8080 --insecure-local flows.yaml        # console at http://127.0.0.1:8080/ui/
  floxyd --http-addr 0.0.0.0:8443 --http-tokens /etc/floxy/tokens \
    --tls-cert /etc/floxy/cert.pem --tls-key /etc/floxy/key.pem flows.yaml

Exit codes: 0 stopped by a signal after a clean shutdown; 1 runtime error (store unreachable,
tech address in use); 2 bad configuration (flow file, a changed flow under an existing version,
a bad value); 130 stopped at once by a second signal.";

/// Parses a duration flag.
fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Parses `--store`.
fn store_arg(s: &str) -> Result<StoreSpec, String> {
    s.parse::<StoreSpec>().map_err(|e| e.to_string())
}

/// Parses `--tech-addr`: `HOST:PORT`, or Floxy's `:PORT` (here: on loopback).
fn addr_arg(s: &str) -> Result<SocketAddr, String> {
    let full = match s.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => s.to_owned(),
    };
    full.parse::<SocketAddr>().map_err(|e| {
        format!("invalid address {s:?} ({e}); expected HOST:PORT, e.g. 127.0.0.1:8081")
    })
}

/// Parses `--http-addr` like `--tech-addr`.
fn http_addr_arg(s: &str) -> Result<SocketAddr, String> {
    addr_arg(s).map_err(|e| e.replace("8081", "8080"))
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines; the statistics block printed as a table.
    Pretty,
    /// One JSON object per line; the statistics as a structured event.
    Json,
}

#[derive(Parser)]
#[command(
    name = "floxyd",
    version,
    about = "Run floxy YAML flows as a daemon: workers, bash and HTTP handlers, metrics and health.",
    after_help = AFTER_HELP
)]
struct Args {
    /// The flow file (YAML or JSON): handlers and flows.
    #[arg(value_name = "FLOWS_FILE")]
    flows: PathBuf,
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "FLOXY_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// PostgreSQL host.
    #[arg(long, env = "FLOXY_DB_HOST", value_name = "HOST")]
    db_host: Option<String>,
    /// PostgreSQL port.
    #[arg(long, env = "FLOXY_DB_PORT", value_name = "PORT")]
    db_port: Option<u16>,
    /// PostgreSQL user.
    #[arg(long, env = "FLOXY_DB_USER", value_name = "USER")]
    db_user: Option<String>,
    /// PostgreSQL password (prefer the environment variable to the flag).
    #[arg(
        long,
        env = "FLOXY_DB_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    db_password: Option<String>,
    /// PostgreSQL database name.
    #[arg(long, env = "FLOXY_DB_NAME", value_name = "NAME")]
    db_name: Option<String>,
    /// PostgreSQL schema holding floxy's tables.
    #[arg(long, env = "FLOXY_DB_SCHEMA", default_value = DEFAULT_SCHEMA, value_name = "SCHEMA")]
    db_schema: String,
    /// The embedded store when no PostgreSQL setting is given: `redb:PATH` (or `memory`,
    /// for trials: nothing survives a restart).
    #[arg(long, env = "FLOXY_STORE", default_value = "redb:./floxy.redb", value_parser = store_arg, value_name = "redb:PATH")]
    store: StoreSpec,
    /// Handler executions at once.
    #[arg(long, env = "FLOXY_WORKERS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=10000))]
    workers: u16,
    /// Longest idle sleep of a worker between polls of the store (PostgreSQL also wakes
    /// workers with LISTEN/NOTIFY).
    #[arg(long, env = "FLOXY_WORKER_INTERVAL", default_value = "100ms", value_parser = duration_arg, value_name = "DURATION")]
    worker_interval: Duration,
    /// Address of the tech server (/metrics, /health, /ready).
    #[arg(long, env = "FLOXY_TECH_ADDR", default_value = "127.0.0.1:8081", value_parser = addr_arg, value_name = "HOST:PORT")]
    tech_addr: SocketAddr,
    /// Address of the HTTP API and web console (off when unset).
    #[arg(long, env = "FLOXY_HTTP_ADDR", value_parser = http_addr_arg, value_name = "HOST:PORT")]
    http_addr: Option<SocketAddr>,
    /// API token file: lines `NAME ROLE SHA256 [see_payloads]`, or a JSON array.
    #[arg(long, env = "FLOXY_HTTP_TOKENS_FILE", value_name = "FILE")]
    http_tokens: Option<PathBuf>,
    /// Serve the API without tokens, everyone as admin: only on a loopback --http-addr.
    #[arg(long)]
    insecure_local: bool,
    /// HTTPS certificate chain of the API (PEM, leaf first).
    #[arg(
        long,
        env = "FLOXY_HTTP_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "FLOXY_HTTP_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// How long running handlers get to finish after SIGINT/SIGTERM.
    #[arg(long, env = "FLOXY_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration_arg, value_name = "DURATION")]
    shutdown_timeout: Duration,
    /// Period of the statistics block (`0` turns it off).
    #[arg(long, env = "FLOXY_STATS_INTERVAL", default_value = "10s", value_parser = duration_arg, value_name = "DURATION")]
    stats_interval: Duration,
    /// Log format (the level comes from RUST_LOG, default `info`).
    #[arg(long, env = "FLOXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    /// Run only these handlers of the file (comma-separated names; default: all of them).
    /// For a fleet on one database where each node runs its own handlers: every node loads
    /// the same file (so the definitions agree) and claims only the steps of its handlers.
    #[arg(
        long,
        env = "FLOXY_HANDLERS",
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    handlers: Vec<String>,
    /// Debug: handlers print each call's input, output and stderr to stderr.
    #[arg(short = 'D', long = "debug", env = "FLOXY_DEBUG")]
    debug: bool,
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never shows the password or the URL's password.
        f.debug_struct("Args")
            .field("flows", &self.flows)
            .field("store", &self.store_spec().map(|s| s.to_string()).ok())
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Args {
    fn api(&self) -> api::ApiArgs {
        api::ApiArgs {
            addr: self.http_addr,
            tokens_file: self.http_tokens.clone(),
            insecure_local: self.insecure_local,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }

    /// The store: PostgreSQL from the URL or the parts, else the embedded store.
    fn store_spec(&self) -> CliResult<StoreSpec> {
        if let Some(url) = &self.database_url {
            return Ok(StoreSpec::Postgres {
                url: url.clone(),
                schema: self.db_schema.clone(),
            });
        }
        let any_part = self.db_host.is_some()
            || self.db_port.is_some()
            || self.db_user.is_some()
            || self.db_password.is_some()
            || self.db_name.is_some();
        if any_part {
            let host = self.db_host.clone().ok_or_else(|| {
                CliError::bad_input("FLOXY_DB_HOST is required with the other FLOXY_DB_* settings")
            })?;
            let parts = PgParts {
                host,
                port: self.db_port,
                user: self.db_user.clone(),
                password: self.db_password.clone().filter(|p| !p.is_empty()),
                database: self.db_name.clone(),
            };
            return Ok(StoreSpec::Postgres {
                url: parts.url(),
                schema: self.db_schema.clone(),
            });
        }
        Ok(self.store.clone())
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("floxyd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return Exit::Error.exit_code();
        }
    };
    match rt.block_on(daemon(args)) {
        Ok(()) => {
            tracing::info!("floxyd stopped");
            Exit::Ok.exit_code()
        }
        Err(e) => {
            tracing::error!(exit_code = e.exit.code(), "{}", e.message);
            e.exit.exit_code()
        }
    }
}

fn flow_error(e: &FlowError) -> CliError {
    if e.is_bad_input() {
        CliError::bad_input(one_line(&e.to_string()))
    } else {
        CliError::error(one_line(&e.to_string()))
    }
}

async fn daemon(args: Args) -> CliResult<()> {
    let spec = args.store_spec()?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        flows = %args.flows.display(),
        store = %spec,
        workers = args.workers,
        worker_interval = %HumanDuration(args.worker_interval),
        "floxyd starting"
    );
    if matches!(spec, StoreSpec::Memory) {
        tracing::warn!("memory store: every instance is lost when floxyd stops");
    }
    if !args.tech_addr.ip().is_loopback() {
        tracing::warn!(addr = %args.tech_addr, "the tech server has no authentication and listens beyond loopback");
    }
    let flows = floxy_cli::flows::load(&args.flows, LoadOptions::default().debug(args.debug))
        .map_err(|e| flow_error(&e))?;
    let api = api::Api::from_args(&args.api())?;
    let metrics = tech::install_metrics()?;

    let store = OpenStore::open(&spec, OpenMode::Create).await?;
    let result = serve(&args, &flows, &store, metrics, api).await;
    store.close().await;
    result
}

async fn serve(
    args: &Args,
    flows: &floxy_cli::flows::Flows,
    store: &OpenStore,
    metrics: tech::Metrics,
    api: Option<api::Api>,
) -> CliResult<()> {
    // Watch the signals before anything starts: a SIGTERM sent as soon as floxyd says it is
    // ready (or while it starts) is a graceful stop, not the default action's instant death.
    let mut signals = Signals::new()?;
    if matches!(store.spec(), StoreSpec::Postgres { .. }) {
        let msg = store.migrate(PostgresLayout::Plain).await?;
        tracing::info!("{msg}");
    }
    let interval = u64::try_from(args.worker_interval.as_millis()).unwrap_or(u64::MAX);
    let shutdown_ms = u64::try_from(args.shutdown_timeout.as_millis()).unwrap_or(u64::MAX);
    let engine = Engine::builder(store.store())
        .workers(usize::from(args.workers))
        .poll_interval_ms(interval)
        .shutdown_timeout_ms(shutdown_ms)
        .build();
    let ids = flows
        .register_definitions(&engine)
        .await
        .map_err(|e| flow_error(&e))?;
    for (id, def) in ids.iter().zip(flows.definitions()) {
        tracing::info!(workflow = %id, name = %def.name, version = def.version, steps = def.steps.len(), "registered workflow");
    }
    let handlers = register_handlers(&engine, flows, &args.handlers)?;
    tracing::info!(count = handlers.len(), handlers = %handlers.join(","), "registered handlers");

    let listener = tokio::net::TcpListener::bind(args.tech_addr)
        .await
        .map_err(|e| CliError::error(format!("cannot listen on {}: {e}", args.tech_addr)))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::error(format!("tech server address: {e}")))?;

    let api_stop = CancellationToken::new();
    let api_server = match api {
        Some(api) => Some(api.spawn(engine.clone(), api_stop.clone()).await?.0),
        None => None,
    };

    engine.start_workers()?;
    let stopping = CancellationToken::new();
    let state = tech::State::new(store.store(), metrics.clone(), stopping.clone());
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(tech::serve(listener, state, server_stop.clone()));
    tracing::info!(addr = %local, "tech server listening");
    let printer = (!args.stats_interval.is_zero()).then(|| {
        tokio::spawn(stats::run(
            engine.clone(),
            args.stats_interval,
            args.log_format == LogFormat::Json,
            stopping.clone(),
        ))
    });
    let upkeep = tokio::spawn(tech::upkeep(metrics, stopping.clone()));
    tracing::info!(workers = args.workers, "floxyd ready");

    let first = signals.next().await;
    tracing::info!(
        signal = first,
        timeout = %HumanDuration(args.shutdown_timeout),
        "shutting down: no more claims; waiting for running handlers"
    );
    stopping.cancel();
    let report = tokio::select! {
        r = engine.shutdown(args.shutdown_timeout) => r,
        second = signals.next() => {
            tracing::warn!(signal = second, "second signal: stopping at once; leases left behind expire and are reclaimed");
            std::process::exit(i32::from(Exit::Interrupted.code()));
        }
    };
    tracing::info!(
        in_flight = report.in_flight,
        finished = report.finished,
        abandoned = report.abandoned,
        "workers stopped"
    );
    server_stop.cancel();
    api_stop.cancel();
    if let Some(p) = printer {
        let _ = p.await;
    }
    let _ = upkeep.await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "tech server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "tech server task failed"),
        Err(_) => tracing::warn!("tech server did not stop within 5s"),
        Ok(Ok(Ok(()))) => {}
    }
    if let Some(api) = api_server {
        // Event streams stay open until their clients leave: bounded, then cut.
        let abort = api.abort_handle();
        match tokio::time::timeout(Duration::from_secs(5), api).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP API ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP API task failed"),
            Err(_) => {
                tracing::info!("HTTP API: connections still open after 5s closed");
                abort.abort();
            }
            Ok(Ok(Ok(()))) => {}
        }
    }
    Ok(())
}

/// Registers the handlers of the file named in `only` (every handler when it names none);
/// returns the names registered. A name the file does not declare is bad input.
fn register_handlers<'a>(
    engine: &Engine,
    flows: &'a floxy_cli::flows::Flows,
    only: &[String],
) -> CliResult<Vec<&'a str>> {
    let only: Vec<&str> = only
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .collect();
    if let Some(unknown) = only
        .iter()
        .find(|n| !flows.handler_names().any(|h| h == **n))
    {
        let declared: Vec<&str> = flows.handler_names().collect();
        return Err(CliError::bad_input(format!(
            "FLOXY_HANDLERS: the flow file declares no handler {unknown:?} (it declares: {})",
            declared.join(", ")
        )));
    }
    let mut names = Vec::new();
    for (name, h) in flows.handlers() {
        if only.is_empty() || only.contains(&name.as_str()) {
            engine.register_handler_arc(name.clone(), std::sync::Arc::clone(h));
            names.push(name.as_str());
        }
    }
    Ok(names)
}

/// SIGINT and SIGTERM.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> CliResult<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate())
            .map_err(|e| CliError::error(format!("cannot watch SIGTERM: {e}")))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| CliError::error(format!("cannot watch SIGINT: {e}")))?;
        Ok(Self { term, int })
    }

    /// The name of the next signal.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
