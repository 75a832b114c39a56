//! Opening the store the binaries work on: memory, a redb file, or `PostgreSQL` (a URL or
//! Floxy's host/port/user/database parts), and showing it without its password.

use crate::exit::{CliError, CliResult, Exit, one_line};
use floxy::{MemoryStore, PostgresConfig, PostgresLayout, PostgresStore, RedbOptions, RedbStore};
use floxy::{Store, StoreError};
use floxy_store_redb::OpenError;
use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// The default `PostgreSQL` schema (the store's own default).
pub const DEFAULT_SCHEMA: &str = "floxy";
/// How long connecting to `PostgreSQL` may take before the binaries give up.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections of the binaries' `PostgreSQL` pool.
pub const POOL_SIZE: u32 = 16;
/// The default `PostgreSQL` port.
pub const DEFAULT_PG_PORT: u16 = 5432;

/// Which store to open.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// The in-process memory store (gone when the process ends).
    Memory,
    /// A redb file.
    Redb(PathBuf),
    /// A `PostgreSQL` database.
    Postgres {
        /// Connection URL (may hold a password: show it with [`redact_url`]).
        url: String,
        /// Schema holding floxy's tables.
        schema: String,
    },
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a password, not even in debug output.
        write!(f, "StoreSpec({self})")
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Redb(p) => write!(f, "redb:{}", p.display()),
            Self::Postgres { url, schema } => write!(f, "{} (schema {schema})", redact_url(url)),
        }
    }
}

/// Why a `--store` value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid store {0:?}: expected memory, redb:PATH or a postgres:// URL (e.g. redb:./floxy.redb)"
)]
pub struct StoreSpecError(pub String);

impl FromStr for StoreSpec {
    type Err = StoreSpecError;

    /// `memory`, `redb:PATH`, or `postgres://…` / `postgresql://…` (schema
    /// [`DEFAULT_SCHEMA`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            Ok(Self::Memory)
        } else if let Some(path) = s.strip_prefix("redb:") {
            if path.is_empty() {
                Err(StoreSpecError(s.to_owned()))
            } else {
                Ok(Self::Redb(PathBuf::from(path)))
            }
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self::Postgres {
                url: s.to_owned(),
                schema: DEFAULT_SCHEMA.to_owned(),
            })
        } else {
            Err(StoreSpecError(s.to_owned()))
        }
    }
}

/// Floxy's `PostgreSQL` connection parts (`--host --port --user --database`, or
/// `FLOXY_DB_*`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PgParts {
    /// Host name or address.
    pub host: String,
    /// Port (default [`DEFAULT_PG_PORT`]).
    pub port: Option<u16>,
    /// User name.
    pub user: Option<String>,
    /// Password (never shown).
    pub password: Option<String>,
    /// Database name.
    pub database: Option<String>,
}

impl fmt::Debug for PgParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgParts")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .finish()
    }
}

impl PgParts {
    /// The connection URL of these parts (user and password percent-encoded).
    #[must_use]
    pub fn url(&self) -> String {
        let mut url = String::from("postgres://");
        if let Some(user) = &self.user {
            url.push_str(&percent_encode(user));
            if let Some(pw) = &self.password {
                url.push(':');
                url.push_str(&percent_encode(pw));
            }
            url.push('@');
        }
        if self.host.contains(':') && !self.host.starts_with('[') {
            // An IPv6 address.
            url.push('[');
            url.push_str(&self.host);
            url.push(']');
        } else {
            url.push_str(&self.host);
        }
        url.push(':');
        url.push_str(&self.port.unwrap_or(DEFAULT_PG_PORT).to_string());
        if let Some(db) = &self.database {
            url.push('/');
            url.push_str(&percent_encode(db));
        }
        url
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `url` with the password of its user info (and any `password=` query parameter)
/// replaced by `***`. Anything that does not look like a URL is returned unchanged.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = out[auth_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| auth_start + i);
        if let Some(at) = out[auth_start..auth_end].rfind('@') {
            let userinfo = &out[auth_start..auth_start + at];
            if let Some(colon) = userinfo.find(':') {
                let pw_start = auth_start + colon + 1;
                let pw_end = auth_start + at;
                out.replace_range(pw_start..pw_end, "***");
            }
        }
    }
    // Query parameters: password=...
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

/// How a redb file is opened (`PostgreSQL` is only connected to: migrate with
/// [`OpenStore::migrate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenMode {
    /// Create the file if it does not exist.
    Create,
    /// Only an existing file.
    Existing,
}

/// An open store and its backend, to close it properly.
#[derive(Clone)]
pub struct OpenStore {
    spec: StoreSpec,
    store: Arc<dyn Store>,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory,
    Redb(RedbStore),
    Postgres(PostgresStore),
}

impl fmt::Debug for OpenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenStore({})", self.spec)
    }
}

impl OpenStore {
    /// Opens `spec`.
    ///
    /// # Errors
    /// Exit 2 for a redb file that does not exist in [`OpenMode::Existing`] or is not a
    /// floxy database; exit 1 when the file is locked by another process or `PostgreSQL`
    /// cannot be reached.
    pub async fn open(spec: &StoreSpec, mode: OpenMode) -> CliResult<Self> {
        let (store, backend): (Arc<dyn Store>, Backend) = match spec {
            StoreSpec::Memory => (Arc::new(MemoryStore::new()), Backend::Memory),
            StoreSpec::Redb(path) => {
                let s = open_redb(path, mode)?;
                (Arc::new(s.clone()), Backend::Redb(s))
            }
            StoreSpec::Postgres { url, schema } => {
                let s = open_postgres(url, schema).await?;
                (Arc::new(s.clone()), Backend::Postgres(s))
            }
        };
        Ok(Self {
            spec: spec.clone(),
            store,
            backend,
        })
    }

    /// The store, for an engine.
    #[must_use]
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// What was opened (passwords redacted).
    #[must_use]
    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    /// Whether the data outlives this process.
    #[must_use]
    pub fn is_durable(&self) -> bool {
        !matches!(self.backend, Backend::Memory)
    }

    /// Runs the `PostgreSQL` migrations (the layout already in the schema, or `layout`
    /// for a new schema). A no-op for memory and redb (a redb file migrates itself when
    /// opened). Returns what was done, for people.
    ///
    /// # Errors
    /// Exit 1 when the migration fails.
    pub async fn migrate(&self, layout: PostgresLayout) -> CliResult<String> {
        match &self.backend {
            Backend::Memory => Ok("memory store: nothing to migrate".to_owned()),
            Backend::Redb(s) => Ok(format!(
                "redb file {} is at the current format",
                s.path().display()
            )),
            Backend::Postgres(s) => {
                let layout = migrate_postgres(s, layout).await?;
                Ok(format!(
                    "schema {} migrated ({} layout)",
                    s.schema(),
                    layout.as_str()
                ))
            }
        }
    }

    /// Closes the store: a redb file is flushed and its lock released.
    pub async fn close(&self) {
        if let Backend::Redb(s) = &self.backend
            && let Err(e) = s.close().await
        {
            tracing::warn!(error = %e, "closing the redb file failed");
        }
    }
}

fn open_redb(path: &Path, mode: OpenMode) -> CliResult<RedbStore> {
    if mode == OpenMode::Existing && !path.exists() {
        return Err(CliError::bad_input(format!(
            "redb file {} does not exist",
            path.display()
        )));
    }
    RedbStore::open(path, RedbOptions::default()).map_err(|e| {
        let exit = match e {
            OpenError::MissingDirectory { .. }
            | OpenError::NotFloxyDatabase { .. }
            | OpenError::UnsupportedFormatVersion { .. } => Exit::BadInput,
            _ => Exit::Error,
        };
        let hint = if matches!(e, OpenError::AlreadyOpen { .. }) {
            // A redb file has one process at a time: floxyd running on it holds it.
            "; if floxyd runs on it, stop it first, or operate through its HTTP API \
             (floxyd --http-addr) instead"
        } else {
            ""
        };
        CliError::new(exit, format!("{}{hint}", one_line(&e.to_string())))
    })
}

async fn open_postgres(url: &str, schema: &str) -> CliResult<PostgresStore> {
    let opts: sqlx::postgres::PgConnectOptions = url.parse().map_err(|e: sqlx::Error| {
        CliError::bad_input(format!(
            "invalid PostgreSQL URL {}: {}",
            redact_url(url),
            scrub(&one_line(&e.to_string()), url)
        ))
    })?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(opts)
        .await
        .map_err(|e| {
            CliError::error(format!(
                "PostgreSQL at {}: cannot connect within {} s: {}",
                redact_url(url),
                CONNECT_TIMEOUT.as_secs(),
                scrub(&one_line(&e.to_string()), url)
            ))
        })?;
    PostgresStore::with_config(pool, PostgresConfig::default().schema(schema))
        .map_err(|e| CliError::bad_input(one_line(&e.to_string())))
}

/// `msg` without the password of `url`.
fn scrub(msg: &str, url: &str) -> String {
    match url_password(url) {
        Some(pw) => msg.replace(&pw, "***"),
        None => msg.to_owned(),
    }
}

/// Migrates keeping the layout already in the schema; `layout` for a new schema.
async fn migrate_postgres(
    store: &PostgresStore,
    layout: PostgresLayout,
) -> CliResult<PostgresLayout> {
    let existing = store.layout().await.map_err(|e| pg_error(&e, ""))?;
    let layout = existing.unwrap_or(layout);
    store
        .migrate(layout)
        .await
        .map_err(|e| pg_error(&e, "").context("migration failed"))?;
    Ok(layout)
}

/// A `PostgreSQL` error for people, with the URL's password never shown.
fn pg_error(e: &StoreError, url: &str) -> CliError {
    let mut msg = one_line(&e.to_string());
    if !url.is_empty() {
        msg = format!("PostgreSQL at {}: {}", redact_url(url), scrub(&msg, url));
    }
    CliError::error(msg)
}

fn url_password(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let auth = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &auth[..auth.rfind('@')?];
    let pw = &userinfo[userinfo.find(':')? + 1..];
    (!pw.is_empty()).then(|| pw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_specs() {
        assert_eq!("memory".parse(), Ok(StoreSpec::Memory));
        assert_eq!(
            "redb:./x.redb".parse(),
            Ok(StoreSpec::Redb(PathBuf::from("./x.redb")))
        );
        assert!(matches!(
            "postgres://u@h/db".parse::<StoreSpec>(),
            Ok(StoreSpec::Postgres { .. })
        ));
        assert!("redb:".parse::<StoreSpec>().is_err());
        assert!("sqlite:x".parse::<StoreSpec>().is_err());
    }

    #[test]
    fn builds_urls_from_parts() {
        let p = PgParts {
            host: "db.local".into(),
            port: Some(5433),
            user: Some("flo xy".into()),
            password: Some("p@ss:w/rd".into()),
            database: Some("floxy".into()),
        };
        assert_eq!(
            p.url(),
            "postgres://flo%20xy:p%40ss%3Aw%2Frd@db.local:5433/floxy"
        );
        assert!(!format!("{p:?}").contains("p@ss"));
        let p = PgParts {
            host: "::1".into(),
            ..PgParts::default()
        };
        assert_eq!(p.url(), "postgres://[::1]:5432");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://floxy:secret@h:5432/db"),
            "postgres://floxy:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://floxy@h/db"), "postgres://floxy@h/db");
        assert_eq!(
            redact_url("postgres://h/db?user=a&password=secret&sslmode=disable"),
            "postgres://h/db?user=a&password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://u:p%40ss@h/db"),
            "postgres://u:***@h/db"
        );
        let spec = StoreSpec::Postgres {
            url: "postgres://u:topsecret@h/db".into(),
            schema: "floxy".into(),
        };
        assert!(!format!("{spec} {spec:?}").contains("topsecret"));
        assert_eq!(
            url_password("postgres://u:topsecret@h/db").as_deref(),
            Some("topsecret")
        );
    }
}
