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

use crate::{Layout, PostgresConfig, PostgresStore};
use floxy_core::store::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::fmt::Write as _;
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
        };
        cluster.watchdog = cluster.spawn_watchdog().ok();
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let mut opts = format!(
                "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
                 -c fsync=on -c max_connections=300 -c shared_buffers=256MB \
                 -c max_wal_size=4GB -c checkpoint_timeout=30min",
                cluster.root.display()
            );
            for (k, v) in settings {
                let _ = write!(opts, " -c {k}={v}"); // writing to a String cannot fail
            }
            let mut c = pg_command(as_postgres, &cluster.bin.join("pg_ctl"));
            c.arg("-D")
                .arg(&cluster.data)
                .arg("-l")
                .arg(cluster.root.join("server.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]);
            match run(c, "pg_ctl start") {
                Ok(()) => {
                    cluster.port = port;
                    return Ok(cluster);
                }
                Err(e) => last_err = Some(e),
            }
        }
        let log = std::fs::read_to_string(cluster.root.join("server.log")).unwrap_or_default();
        Err(HarnessError::Command(format!(
            "{}; server log:\n{log}",
            last_err.map_or_else(String::new, |e| e.to_string())
        )))
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
        let _ = self.stop_command().stdout(Stdio::null()).status();
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
