//! Backends a run can use: the memory store, redb (a file in a temp directory or a given
//! path) and PostgreSQL (a throwaway cluster from `floxy-store-postgres`'s test harness, or
//! a given URL), optionally behind the Toxiproxy-compatible proxy with network faults and an
//! immediate restart of the server mid-run.

use crate::proxy::client::{NetworkFaults, ToxiproxyEnv};
use crate::runner::{ChaosError, Disruptor};
use floxy::Store;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Which store a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// [`floxy::MemoryStore`].
    Memory,
    /// `floxy_store_redb::RedbStore` (feature `redb`).
    Redb,
    /// `floxy_store_postgres::PostgresStore` (feature `postgres`).
    Postgres,
}

impl BackendKind {
    /// `memory`, `redb` or `postgres`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redb => "redb",
            Self::Postgres => "postgres",
        }
    }

    /// Parses [`BackendKind::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "memory" => Some(Self::Memory),
            "redb" => Some(Self::Redb),
            "postgres" | "pg" => Some(Self::Postgres),
            _ => None,
        }
    }
}

/// How to set a backend up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendOptions {
    /// The store.
    pub kind: BackendKind,
    /// redb: the file (default: a fresh file in a temp directory, removed afterwards).
    pub redb_path: Option<PathBuf>,
    /// PostgreSQL: a database URL (default: a throwaway cluster, or
    /// `FLOXY_TEST_DATABASE_URL`).
    pub pg_url: Option<String>,
    /// PostgreSQL: the schema (default: a fresh one).
    pub pg_schema: Option<String>,
    /// PostgreSQL: put the engines' connections behind the proxy and inject these network
    /// faults (`None`: direct connections).
    pub network: Option<NetworkFaults>,
    /// PostgreSQL: restart the server with `pg_ctl restart -m immediate` this many times
    /// during the fault phase (needs a local server: the throwaway cluster).
    pub pg_restarts: u32,
    /// Pause before each restart, ms.
    pub pg_restart_interval_ms: (u64, u64),
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            kind: BackendKind::Memory,
            redb_path: None,
            pg_url: None,
            pg_schema: None,
            network: None,
            pg_restarts: 0,
            pg_restart_interval_ms: (3_000, 8_000),
        }
    }
}

/// A backend ready for a run.
pub struct Backend {
    /// Name for reports.
    pub name: String,
    /// The store validators read (direct connection).
    pub store: Arc<dyn Store>,
    /// The store the engines use (through the proxy), if different.
    pub engine_store: Option<Arc<dyn Store>>,
    /// Disruptors of this backend (network faults, restarts).
    pub disruptors: Vec<Arc<dyn Disruptor>>,
    /// Settings worker processes need to reach the same data.
    pub child_args: Vec<String>,
    /// What the store's connection pools hold now (descriptors, tasks), for the resource
    /// checks ([`crate::resources::Pooled`]); `None` for stores without pools.
    pub pooled: Option<crate::resources::Pooled>,
    /// Notes for the report.
    pub notes: Vec<String>,
    cleanup: Cleanup,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("child_args", &self.child_args)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cleanup {
    temp_file: Option<PathBuf>,
    proxy: Option<ToxiproxyEnv>,
    #[cfg(feature = "redb")]
    redb: Option<floxy_store_redb::RedbStore>,
    #[cfg(feature = "postgres")]
    cluster: Option<floxy_store_postgres::testing::TestCluster>,
    /// The stores' pools, closed before the proxy and the server go away (see
    /// [`steady_store`]).
    #[cfg(feature = "postgres")]
    pools: Vec<sqlx::PgPool>,
}

/// A unique temp path.
#[must_use]
pub fn temp_path(prefix: &str, ext: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "{prefix}-{}-{}{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Backend {
    /// Sets a backend up.
    ///
    /// # Errors
    /// The store could not be opened, the cluster not started, the proxy not set up, or
    /// the backend's feature is off.
    pub async fn open(opts: &BackendOptions, seed: u64) -> Result<Self, ChaosError> {
        match opts.kind {
            BackendKind::Memory => Ok(Self {
                name: "memory".into(),
                store: Arc::new(floxy::MemoryStore::new()),
                engine_store: None,
                disruptors: Vec::new(),
                child_args: Vec::new(),
                pooled: None,
                notes: Vec::new(),
                cleanup: Cleanup::default(),
            }),
            BackendKind::Redb => Self::open_redb(opts),
            BackendKind::Postgres => Self::open_postgres(opts, seed).await,
        }
    }

    #[cfg(feature = "redb")]
    fn open_redb(opts: &BackendOptions) -> Result<Self, ChaosError> {
        let (path, temp) = match &opts.redb_path {
            Some(p) => (p.clone(), false),
            None => (temp_path("floxy-chaos", ".redb"), true),
        };
        let store = open_redb_file(&path)?;
        Ok(Self {
            name: "redb".into(),
            store: Arc::new(store.clone()),
            engine_store: None,
            disruptors: Vec::new(),
            child_args: vec!["--redb-path".into(), path.display().to_string()],
            pooled: None,
            notes: Vec::new(),
            cleanup: Cleanup {
                temp_file: temp.then_some(path),
                redb: Some(store),
                ..Cleanup::default()
            },
        })
    }

    #[cfg(not(feature = "redb"))]
    fn open_redb(_opts: &BackendOptions) -> Result<Self, ChaosError> {
        Err(ChaosError::Setup(
            "floxy-chaos was built without the `redb` feature".into(),
        ))
    }

    #[cfg(feature = "postgres")]
    async fn open_postgres(opts: &BackendOptions, seed: u64) -> Result<Self, ChaosError> {
        use floxy_store_postgres::testing::{self, TestCluster};
        use floxy_store_postgres::{Layout, PostgresConfig};
        let mut cleanup = Cleanup::default();
        let mut notes = Vec::new();
        let url = match &opts.pg_url {
            Some(u) => u.clone(),
            None => match std::env::var(testing::TEST_DATABASE_URL_ENV) {
                Ok(u) if !u.trim().is_empty() => u,
                _ => {
                    let c = tokio::task::spawn_blocking(TestCluster::start)
                        .await
                        .map_err(|e| ChaosError::Setup(e.to_string()))?
                        .map_err(|e| ChaosError::Setup(e.to_string()))?;
                    let u = c.url("postgres");
                    cleanup.cluster = Some(c);
                    u
                }
            },
        };
        let schema = opts
            .pg_schema
            .clone()
            .unwrap_or_else(|| format!("chaos_{:x}_{}", seed & 0xffff_ffff, std::process::id()));
        let cfg = PostgresConfig::default().schema(schema.clone());
        let direct = steady_store(&url, cfg.clone()).await?;
        cleanup.pools.push(direct.pool().clone());
        direct.migrate(Layout::Plain).await?;
        let mut disruptors: Vec<Arc<dyn Disruptor>> = Vec::new();
        let mut engine_url = url.clone();
        let mut engine_store: Option<Arc<dyn Store>> = None;
        if let Some(faults) = &opts.network {
            let env = ToxiproxyEnv::start(seed)
                .await
                .map_err(ChaosError::Injector)?;
            let upstream = host_port(&url)
                .ok_or_else(|| ChaosError::Setup(format!("cannot find host:port in {url}")))?;
            let listen = if env.builtin.is_some() {
                "127.0.0.1:0".to_owned()
            } else {
                std::env::var("FLOXY_TOXIPROXY_LISTEN").unwrap_or_else(|_| "127.0.0.1:25432".into())
            };
            let bound = env
                .proxy("floxy-pg", &listen, &upstream)
                .await
                .map_err(ChaosError::Injector)?;
            engine_url = url.replacen(&upstream, &bound, 1);
            notes.push(format!(
                "engines reach PostgreSQL through the proxy {bound} (API {}{})",
                env.api,
                if env.builtin.is_some() {
                    ", built-in"
                } else {
                    ", external Toxiproxy"
                }
            ));
            disruptors.push(crate::proxy::client::NetworkDisruptor::new(
                &env.api,
                "floxy-pg",
                faults.clone(),
            ));
            let proxied = steady_store(&engine_url, cfg.clone()).await?;
            cleanup.pools.push(proxied.pool().clone());
            engine_store = Some(Arc::new(proxied));
            cleanup.proxy = Some(env);
        }
        if opts.pg_restarts > 0 {
            match pg_restarter(&direct, opts).await {
                Ok(d) => disruptors.push(d),
                Err(e) => notes.push(format!("PostgreSQL restarts disabled: {e}")),
            }
        }
        Ok(Self {
            name: if opts.network.is_some() {
                "postgres (behind the proxy)".into()
            } else {
                "postgres".into()
            },
            store: Arc::new(direct),
            engine_store,
            disruptors,
            child_args: vec!["--pg-url".into(), engine_url, "--pg-schema".into(), schema],
            pooled: Some(pooled(cleanup.pools.clone(), opts.network.is_some())),
            notes,
            cleanup,
        })
    }

    #[cfg(not(feature = "postgres"))]
    async fn open_postgres(_opts: &BackendOptions, _seed: u64) -> Result<Self, ChaosError> {
        Err(ChaosError::Setup(
            "floxy-chaos was built without the `postgres` feature".into(),
        ))
    }

    /// Releases the backend: closes the redb file, stops the proxy and the throwaway
    /// cluster, removes temp files.
    pub async fn close(self) {
        let Self {
            store,
            engine_store,
            disruptors,
            mut cleanup,
            ..
        } = self;
        drop(disruptors);
        drop(engine_store);
        drop(store);
        // Closed, not just dropped: a pool that keeps `min_connections` reopens connections
        // from tasks that hold it alive, and those would retry against a stopped server
        // for minutes (tasks alive after the run).
        #[cfg(feature = "postgres")]
        for pool in cleanup.pools.drain(..) {
            // Waits for connections still checked out; a task that never returns one is
            // reported by the task-leak check, not waited for here.
            if tokio::time::timeout(std::time::Duration::from_secs(10), pool.close())
                .await
                .is_err()
            {
                tracing::warn!("closing a PostgreSQL pool took more than 10 s");
            }
        }
        #[cfg(feature = "redb")]
        if let Some(r) = cleanup.redb.take()
            && let Err(e) = r.close().await
        {
            tracing::warn!(error = %e, "closing the redb store failed");
        }
        if let Some(p) = cleanup.proxy.take() {
            p.shutdown().await;
        }
        #[cfg(feature = "postgres")]
        if let Some(c) = cleanup.cluster.take() {
            let _ = tokio::task::spawn_blocking(move || drop(c)).await;
        }
        if let Some(f) = cleanup.temp_file.take() {
            let _ = std::fs::remove_file(f);
        }
    }

    /// Closes the redb file now (so another process can open it) without removing it.
    pub async fn release_file(&mut self) {
        #[cfg(feature = "redb")]
        if let Some(r) = self.cleanup.redb.take()
            && let Err(e) = r.close().await
        {
            tracing::warn!(error = %e, "closing the redb store failed");
        }
    }
}

/// Opens (creating if needed) a redb store file.
///
/// # Errors
/// The file cannot be opened (e.g. another process holds it).
#[cfg(feature = "redb")]
pub fn open_redb_file(path: &std::path::Path) -> Result<floxy_store_redb::RedbStore, ChaosError> {
    floxy_store_redb::RedbStore::open(path, floxy_store_redb::RedbOptions::default())
        .map_err(|e| ChaosError::Setup(format!("cannot open {}: {e}", path.display())))
}

/// `host:port` of a PostgreSQL URL.
#[must_use]
pub fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hp = rest.split(['/', '?']).next()?;
    if hp.contains(':') {
        Some(hp.to_owned())
    } else {
        Some(format!("{hp}:5432"))
    }
}

/// Restarts a local PostgreSQL server with `pg_ctl restart -m immediate`.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct PgRestarter {
    pg_ctl: PathBuf,
    data_dir: String,
    as_postgres: bool,
    count: u32,
    interval_ms: (u64, u64),
}

#[cfg(feature = "postgres")]
async fn pg_restarter(
    store: &floxy_store_postgres::PostgresStore,
    opts: &BackendOptions,
) -> Result<Arc<dyn Disruptor>, String> {
    let data_dir: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(store.pool())
        .await
        .map_err(|e| format!("cannot read data_directory: {e}"))?;
    let bin = std::env::var_os(floxy_store_postgres::testing::PG_BIN_ENV).map_or_else(
        || PathBuf::from(floxy_store_postgres::testing::DEFAULT_PG_BIN),
        PathBuf::from,
    );
    let pg_ctl = bin.join("pg_ctl");
    if !pg_ctl.exists() || !std::path::Path::new(&data_dir).exists() {
        return Err(format!(
            "no local server to restart ({} / {data_dir})",
            pg_ctl.display()
        ));
    }
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    Ok(Arc::new(PgRestarter {
        pg_ctl,
        data_dir,
        as_postgres,
        count: opts.pg_restarts,
        interval_ms: opts.pg_restart_interval_ms,
    }))
}

#[cfg(feature = "postgres")]
impl PgRestarter {
    /// Runs `pg_ctl restart -m immediate` and waits for the server to accept connections.
    ///
    /// # Errors
    /// `pg_ctl` failed.
    pub async fn restart(&self) -> Result<(), String> {
        let mut c = if self.as_postgres {
            let mut c = tokio::process::Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(&self.pg_ctl);
            c
        } else {
            tokio::process::Command::new(&self.pg_ctl)
        };
        // The restarted server inherits pg_ctl's standard streams: give it the cluster's
        // log file (next to the data directory, where the test harness keeps it) and no
        // pipes, or it would hold our pipes open for its whole life.
        let log = std::path::Path::new(&self.data_dir)
            .parent()
            .map_or_else(|| PathBuf::from("/dev/null"), |p| p.join("server.log"));
        c.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .args(["-m", "immediate", "-w", "-t", "60", "restart"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let status = c.status().await.map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl restart failed ({status}); see {}",
                log.display()
            ))
        }
    }
}

#[cfg(feature = "postgres")]
#[floxy::async_trait]
impl Disruptor for PgRestarter {
    fn name(&self) -> String {
        "pg_ctl restart -m immediate".into()
    }
    fn interval_ms(&self) -> (u64, u64) {
        self.interval_ms
    }
    fn max_count(&self) -> Option<u32> {
        Some(self.count)
    }
    async fn disrupt(
        &self,
        _rng: &mut crate::rng::ChaosRng,
        counters: &crate::faults::FaultCounters,
    ) -> Result<(), String> {
        counters.add("postgres.restart_immediate");
        tracing::info!("restarting PostgreSQL (immediate)");
        self.restart().await
    }
    async fn heal(&self) -> Result<(), String> {
        Ok(())
    }
}

/// What the pools hold now: one descriptor per connection, and for the engines' pool behind
/// the in-process proxy (the last one, when `proxied`) two more descriptors (the proxy's two
/// sockets) and three tasks (its connection and its two pipes) per connection.
#[cfg(feature = "postgres")]
fn pooled(pools: Vec<sqlx::PgPool>, proxied: bool) -> crate::resources::Pooled {
    Arc::new(move || {
        let mut fds = 0u64;
        let mut tasks = 0u64;
        for (i, p) in pools.iter().enumerate() {
            let n = u64::from(p.size());
            fds += n;
            if proxied && i + 1 == pools.len() {
                fds += 2 * n;
                tasks += 3 * n;
            }
        }
        (fds, tasks)
    })
}

/// A store on a pool that keeps all its [`floxy_store_postgres::DEFAULT_POOL_SIZE`]
/// connections open (`min_connections` = size), reopening them after a restart or a killed
/// connection; [`Backend::close`] must close the pool (sqlx's reopening tasks keep a
/// dropped pool alive). The process's descriptors and tasks are then steady from the first minute,
/// so a soak can check them for growth: a pool that fills up on demand — over minutes, with
/// each burst after a restart — looks like a leak until it is full.
#[cfg(feature = "postgres")]
async fn steady_store(
    url: &str,
    cfg: floxy_store_postgres::PostgresConfig,
) -> Result<floxy_store_postgres::PostgresStore, ChaosError> {
    use floxy_store_postgres::DEFAULT_POOL_SIZE;
    let opts: sqlx::postgres::PgConnectOptions = url
        .parse()
        .map_err(|e| ChaosError::Setup(format!("bad PostgreSQL URL: {e}")))?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(DEFAULT_POOL_SIZE)
        .min_connections(DEFAULT_POOL_SIZE)
        .acquire_timeout(std::time::Duration::from_secs(30))
        .connect_with(opts)
        .await
        .map_err(|e| ChaosError::Setup(format!("connecting to PostgreSQL: {e}")))?;
    Ok(floxy_store_postgres::PostgresStore::with_config(pool, cfg)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5433/postgres").as_deref(),
            Some("127.0.0.1:5433")
        );
        assert_eq!(
            host_port("postgres://u:p@db/x?sslmode=disable").as_deref(),
            Some("db:5432")
        );
    }
}
