//! Throwaway PostgreSQL clusters for tests and benchmarks (feature `testing`).
//!
//! * If `FLOXY_TEST_DATABASE_URL` is set, tests use that database (each store gets a fresh
//!   schema; nothing is dropped afterwards).
//! * Otherwise a cluster is started from the installed PostgreSQL binaries
//!   (`FLOXY_PG_BIN`, default `/usr/lib/postgresql/15/bin`): a data directory in a temp dir
//!   (copied from a cached `initdb` template), a free TCP port on 127.0.0.1, the unix socket
//!   in the temp dir, `fsync=on`. As root, `initdb`/`pg_ctl` run as the `postgres` user via
//!   `runuser` (initdb refuses root). The cluster is stopped (`pg_ctl stop -m immediate`) and
//!   its directory removed when the [`TestCluster`] is dropped, and also by a detached
//!   watchdog process when the owning process dies for any reason (panic, `SIGKILL`, or a
//!   process-wide [`shared_cluster`] that is never dropped).
//! * Missing binaries are an error with installation instructions, never a skip.
//! * [`TestCluster::start_standby`] adds a streaming standby of a running cluster
//!   (`pg_basebackup -R`, synchronous or asynchronous [`Replication`]), and
//!   [`TestCluster::promote`] turns it into a primary: failover tests stop the primary hard
//!   ([`TestCluster::stop_server`]) and promote the standby.

use crate::{Layout, PostgresConfig, PostgresStore};
use floxy_core::store::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Environment variable naming an existing database to test against.
pub const TEST_DATABASE_URL_ENV: &str = "FLOXY_TEST_DATABASE_URL";
/// Environment variable naming the directory of the PostgreSQL server binaries.
pub const PG_BIN_ENV: &str = "FLOXY_PG_BIN";
/// Default directory of the PostgreSQL server binaries (Debian's PostgreSQL 15).
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Connections of a test store's pool.
pub const TEST_POOL_SIZE: u32 = 24;
/// Attempts at finding a free port for a new cluster.
const START_ATTEMPTS: u32 = 5;
/// Server settings that load `pg_stat_statements` (shipped with PostgreSQL's contrib
/// package), for [`TestCluster::start_with`]: tests and benchmarks that count statements,
/// rows and WAL per call then `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`.
/// Statements inside functions are not tracked separately (`pg_stat_statements.track =
/// top`): a top-level statement's figures include the work of the functions it calls.
pub const STATEMENT_STATS: &[(&str, &str)] = &[
    ("shared_preload_libraries", "pg_stat_statements"),
    ("pg_stat_statements.track", "top"),
];

/// Why a test cluster could not be provided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The server binaries are not installed.
    #[error(
        "PostgreSQL server binaries not found in {0}. Install them \
         (`apt-get update && apt-get install -y postgresql-15 postgresql-15-partman`), point \
         {PG_BIN_ENV} at their directory, or set {TEST_DATABASE_URL_ENV} to a database URL"
    )]
    MissingBinaries(String),
    /// A command failed.
    #[error("{0}")]
    Command(String),
    /// I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The database refused.
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|s| s.trim() == "0")
}

fn bin_dir() -> PathBuf {
    std::env::var_os(PG_BIN_ENV).map_or_else(|| PathBuf::from(DEFAULT_PG_BIN), PathBuf::from)
}

/// A command running `program` as the `postgres` user when we are root.
fn pg_command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) -> Result<(), HarnessError> {
    let out = c.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn chown_postgres(path: &Path) -> Result<(), HarnessError> {
    let mut c = Command::new("chown");
    c.arg("-R").arg("postgres:postgres").arg(path);
    run(c, "chown")
}

fn free_port() -> Result<u16, HarnessError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The cached `initdb` output, created once per machine (per user) and copied per cluster.
fn template(bin: &Path, as_postgres: bool) -> Result<PathBuf, HarnessError> {
    let tag: String = bin
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = std::env::temp_dir().join(format!(
        "floxy-pg-template{tag}-{}",
        if as_postgres { "postgres" } else { "user" }
    ));
    if dir.join("PG_VERSION").exists() {
        return Ok(dir);
    }
    let tmp = std::env::temp_dir().join(format!(
        "floxy-pg-template-tmp-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&tmp)?;
    if as_postgres {
        chown_postgres(&tmp)?;
    }
    let data = tmp.join("data");
    let mut c = pg_command(as_postgres, &bin.join("initdb"));
    c.arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8", "-N"]);
    run(c, "initdb")?;
    // Another process may have won the race: fine, use theirs.
    if std::fs::rename(&data, &dir).is_err() && !dir.join("PG_VERSION").exists() {
        return Err(HarnessError::Command(format!(
            "cannot install the initdb template at {}",
            dir.display()
        )));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dir)
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(nanos) << 20) ^ N.fetch_add(1, Ordering::Relaxed)
}

/// How a standby started by [`TestCluster::start_standby`] replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replication {
    /// Synchronous: the primary gets `synchronous_standby_names = '*'` and
    /// `synchronous_commit = on`, so a commit returns only once the standby has flushed it.
    Sync,
    /// Asynchronous: commits return once the primary has flushed them; the standby may lag.
    Async,
}

/// A running throwaway cluster. Stopped and removed on drop.
#[derive(Debug)]
pub struct TestCluster {
    root: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    watchdog: Option<Child>,
    stopped: bool,
    settings: Vec<(String, String)>,
}

impl TestCluster {
    /// Starts a cluster with the default settings (`fsync=on`).
    ///
    /// # Errors
    /// [`HarnessError::MissingBinaries`] (with instructions) or a failing command.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(&[])
    }

    /// Starts a cluster with extra server settings (`-c name=value`).
    ///
    /// # Errors
    /// As [`TestCluster::start`].
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Self, HarnessError> {
        let bin = bin_dir();
        if !bin.join("initdb").exists() || !bin.join("pg_ctl").exists() {
            return Err(HarnessError::MissingBinaries(bin.display().to_string()));
        }
        let as_postgres = is_root();
        let template = template(&bin, as_postgres)?;
        let root =
            std::env::temp_dir().join(format!("floxy-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&root)?;
        let data = root.join("data");
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(&template).arg(&data);
        run(cp, "copying the initdb template")?;
        if as_postgres {
            chown_postgres(&root)?;
        }
        let mut cluster = Self {
            root,
            data,
            bin,
            port: 0,
            as_postgres,
            watchdog: None,
            stopped: false,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        cluster.watchdog = cluster.spawn_watchdog().ok();
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match cluster.pg_start(port) {
                Ok(()) => {
                    cluster.port = port;
                    return Ok(cluster);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(cluster.with_log(last_err))
    }

    /// `pg_ctl start` on `port` with the cluster's settings.
    fn pg_start(&self, port: u16) -> Result<(), HarnessError> {
        let mut opts = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=on -c max_connections=300 -c shared_buffers=256MB \
             -c max_wal_size=4GB -c checkpoint_timeout=30min",
            self.root.display()
        );
        for (k, v) in &self.settings {
            use std::fmt::Write as _;
            let _ = write!(opts, " -c {k}={v}");
        }
        let mut c = pg_command(self.as_postgres, &self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.root.join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"]);
        run(c, "pg_ctl start")
    }

    /// `err` with the server log appended.
    fn with_log(&self, err: Option<HarnessError>) -> HarnessError {
        let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
        HarnessError::Command(format!(
            "{}; server log:\n{log}",
            err.map_or_else(String::new, |e| e.to_string())
        ))
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`, as a crash would) and keeps
    /// its data directory and port, for [`TestCluster::restart`].
    ///
    /// # Errors
    /// A failing `pg_ctl stop`, or a cluster already removed by [`TestCluster::stop`].
    pub fn stop_server(&mut self) -> Result<(), HarnessError> {
        if self.stopped {
            return Err(HarnessError::Command("the cluster was removed".to_owned()));
        }
        run(self.stop_command(), "pg_ctl stop")
    }

    /// Starts the server again after [`TestCluster::stop_server`]: the same data directory,
    /// port and settings (crash recovery replays the WAL).
    ///
    /// # Errors
    /// A failing `pg_ctl start` (the error holds the server log), or a cluster already
    /// removed by [`TestCluster::stop`].
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        if self.stopped {
            return Err(HarnessError::Command("the cluster was removed".to_owned()));
        }
        self.pg_start(self.port).map_err(|e| self.with_log(Some(e)))
    }

    /// Starts a streaming standby of this (running) cluster on another port: a
    /// `pg_basebackup -R -X stream` copy of its data directory, started in hot standby. With
    /// [`Replication::Sync`] this cluster is then made to wait for it on every commit
    /// (`ALTER SYSTEM SET synchronous_standby_names = '*'`, `synchronous_commit = on`,
    /// reloaded; only this cluster's configuration changes, so the standby does not wait
    /// for a standby of its own once promoted). Returns once the standby streams (in
    /// `sync` state for [`Replication::Sync`]). The standby is a [`TestCluster`] of its own:
    /// stopped and removed on drop, [`TestCluster::promote`] makes it a primary.
    ///
    /// # Errors
    /// A failing command (the error holds the standby's log), or a standby that does not
    /// stream within 60 s.
    pub fn start_standby(&self, mode: Replication) -> Result<Self, HarnessError> {
        self.start_standby_via(mode, &format!("127.0.0.1:{}", self.port))
    }

    /// [`TestCluster::start_standby`], with the standby reaching this cluster at `via`
    /// (`host:port`, e.g. a proxy in front of it, so a test can cut or delay the WAL stream):
    /// both `pg_basebackup` and the standby's `primary_conninfo` use that address.
    ///
    /// # Errors
    /// As [`TestCluster::start_standby`]; an address without a port.
    pub fn start_standby_via(&self, mode: Replication, via: &str) -> Result<Self, HarnessError> {
        let (host, port) = via
            .rsplit_once(':')
            .ok_or_else(|| HarnessError::Command(format!("{via} is not host:port")))?;
        if self.stopped {
            return Err(HarnessError::Command("the cluster was removed".to_owned()));
        }
        let root =
            std::env::temp_dir().join(format!("floxy-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&root)?;
        if self.as_postgres {
            chown_postgres(&root)?;
        }
        let data = root.join("data");
        let mut standby = Self {
            root,
            data,
            bin: self.bin.clone(),
            port: 0,
            as_postgres: self.as_postgres,
            watchdog: None,
            stopped: false,
            settings: self.settings.clone(),
        };
        standby.watchdog = standby.spawn_watchdog().ok();
        let mut c = pg_command(self.as_postgres, &self.bin.join("pg_basebackup"));
        c.args(["-h", host, "-p", port, "-U", "postgres"])
            .arg("-D")
            .arg(&standby.data)
            .args(["-R", "-X", "stream", "-c", "fast", "-w"]);
        run(c, "pg_basebackup")?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match standby.pg_start(port) {
                Ok(()) => {
                    standby.port = port;
                    last_err = None;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if last_err.is_some() {
            return Err(standby.with_log(last_err));
        }
        if mode == Replication::Sync {
            self.psql("ALTER SYSTEM SET synchronous_standby_names = '*'")?;
            self.psql("ALTER SYSTEM SET synchronous_commit = 'on'")?;
            self.psql("SELECT pg_reload_conf()")?;
        }
        let wanted = match mode {
            Replication::Sync => "sync",
            Replication::Async => "async",
        };
        let deadline = std::time::Instant::now() + Duration::from_mins(1);
        loop {
            let states = self.psql(
                "SELECT string_agg(state || '/' || sync_state, ',') FROM pg_stat_replication",
            )?;
            if states
                .split(',')
                .any(|s| s.trim() == format!("streaming/{wanted}"))
            {
                return Ok(standby);
            }
            if std::time::Instant::now() >= deadline {
                return Err(standby.with_log(Some(HarnessError::Command(format!(
                    "the standby does not stream as {wanted} after 60 s (pg_stat_replication: {states:?})"
                )))));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Promotes a standby to a primary (`pg_ctl promote -w`): it stops replaying, leaves
    /// recovery and accepts writes.
    ///
    /// # Errors
    /// A failing `pg_ctl promote` (e.g. the cluster is not a standby; the error holds the
    /// server log).
    pub fn promote(&self) -> Result<(), HarnessError> {
        if self.stopped {
            return Err(HarnessError::Command("the cluster was removed".to_owned()));
        }
        let mut c = pg_command(self.as_postgres, &self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "promote"]);
        run(c, "pg_ctl promote").map_err(|e| self.with_log(Some(e)))
    }

    /// Runs `sql` with `psql` on the `postgres` database and returns its unaligned,
    /// tuples-only output.
    ///
    /// # Errors
    /// `psql` failed (e.g. the server is down or the SQL is wrong).
    pub fn psql(&self, sql: &str) -> Result<String, HarnessError> {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .stdin(Stdio::null());
        let out = c.output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(HarnessError::Command(format!(
                "psql failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    fn stop_command(&self) -> Command {
        let mut c = pg_command(self.as_postgres, &self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        c
    }

    /// A detached process that stops the cluster and removes its directory once this
    /// process is gone.
    fn spawn_watchdog(&self) -> Result<Child, HarnessError> {
        let stop = format!(
            "{} {} -D '{}' -m immediate -w stop",
            if self.as_postgres {
                "runuser -u postgres --"
            } else {
                ""
            },
            self.bin.join("pg_ctl").display(),
            self.data.display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; \
             rm -rf '{root}'",
            pid = std::process::id(),
            root = self.root.display()
        );
        Ok(Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }

    /// The port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` (user `postgres`, trust authentication).
    #[must_use]
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The directory of the server binaries (e.g. for `pgbench`).
    #[must_use]
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Stops the cluster now and removes its directory.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = self
            .stop_command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The process-wide cluster (started on first use; stopped by its watchdog when the process
/// exits). Panics with installation instructions if it cannot be started.
///
/// # Panics
/// When no cluster can be started.
#[must_use]
pub fn shared_cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| match TestCluster::start() {
        Ok(c) => c,
        Err(e) => panic!("cannot start a PostgreSQL test cluster: {e}"),
    })
}

/// The URL tests use: `FLOXY_TEST_DATABASE_URL`, or the shared cluster's `postgres`
/// database.
#[must_use]
pub fn database_url() -> String {
    std::env::var(TEST_DATABASE_URL_ENV).unwrap_or_else(|_| shared_cluster().url("postgres"))
}

/// A fresh, unused schema name.
#[must_use]
pub fn fresh_schema() -> String {
    format!("t{}_{}", std::process::id(), unique() % 1_000_000_000_000)
}

/// A pool of `size` connections to `url`.
///
/// # Errors
/// [`HarnessError::Store`] if the database cannot be reached.
pub async fn pool(url: &str, size: u32) -> Result<sqlx::PgPool, HarnessError> {
    let opts: PgConnectOptions = url.parse().map_err(crate::error::map_sqlx)?;
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_mins(1))
        .connect_with(opts)
        .await
        .map_err(crate::error::map_sqlx)?)
}

/// A migrated store in a fresh schema of the test database.
///
/// # Panics
/// When the database cannot be reached or migrated (tests must fail loudly).
pub async fn test_store(layout: Layout) -> PostgresStore {
    test_store_with(layout, PostgresConfig::default()).await
}

/// [`test_store`] with settings (the schema is replaced by a fresh one).
///
/// # Panics
/// As [`test_store`].
pub async fn test_store_with(layout: Layout, config: PostgresConfig) -> PostgresStore {
    let url = database_url();
    let pool = match pool(&url, TEST_POOL_SIZE).await {
        Ok(p) => p,
        Err(e) => panic!("cannot connect to the test database {url}: {e}"),
    };
    // Few partitions: a partitioned migration stays fast.
    let config = if layout == Layout::Partitioned
        && config.partition_premake_days == crate::DEFAULT_PARTITION_DAYS
    {
        config.partition_days(2, 7)
    } else {
        config
    };
    let store = match PostgresStore::with_config(pool, config.schema(fresh_schema())) {
        Ok(s) => s,
        Err(e) => panic!("invalid store settings: {e}"),
    };
    if let Err(e) = store.migrate(layout).await {
        panic!("cannot migrate the test schema: {e}");
    }
    store
}
