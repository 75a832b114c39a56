//! Opening a file: path checks, redb errors mapped to [`OpenError`], the format check and
//! the initialisation of a new file.

use crate::layout::{
    Counters, DEFINITIONS, DLQ, DLQ_BY_INSTANCE, EVENTS, FORMAT_VERSION, IDEMPOTENCY, INSTANCES,
    LIVE, META, META_COUNTERS, META_FORMAT_VERSION, STEPS, TERMINAL, encode,
};
use floxy_core::store::StoreError;
use redb::{Database, DatabaseError, ReadableDatabase, TableHandle};
use std::io;
use std::path::{Path, PathBuf};

/// Why [`crate::RedbStore::open`] failed. Every variant names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The directory that should hold the file does not exist.
    #[error("cannot open floxy database {path}: directory {dir} does not exist")]
    MissingDirectory {
        /// The database path.
        path: PathBuf,
        /// Its missing parent directory.
        dir: PathBuf,
    },
    /// The file (or its directory) is read-only or not writable by this process.
    #[error("cannot open floxy database {path}: the file is read-only ({reason})")]
    ReadOnly {
        /// The database path.
        path: PathBuf,
        /// What said so.
        reason: String,
    },
    /// The file exists but is not a floxy database (not a redb file, or a redb file without
    /// floxy's tables).
    #[error("{path} is not a floxy database: {reason}")]
    NotFloxyDatabase {
        /// The database path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is a floxy database in a format version this build does not read.
    #[error(
        "floxy database {path} has format version {found}; this build reads version {supported}"
    )]
    UnsupportedFormatVersion {
        /// The database path.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// Another process (or another store in this process) has the file open.
    #[error("floxy database {path} is already open in another process or store (file lock held)")]
    AlreadyOpen {
        /// The database path.
        path: PathBuf,
    },
    /// Any other failure (I/O, redb).
    #[error("cannot open floxy database {path}: {reason}")]
    Other {
        /// The database path.
        path: PathBuf,
        /// The failure.
        reason: String,
    },
}

impl OpenError {
    /// The database path.
    #[must_use]
    pub fn path(&self) -> &Path {
        match self {
            Self::MissingDirectory { path, .. }
            | Self::ReadOnly { path, .. }
            | Self::NotFloxyDatabase { path, .. }
            | Self::UnsupportedFormatVersion { path, .. }
            | Self::AlreadyOpen { path }
            | Self::Other { path, .. } => path,
        }
    }
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::NotFloxyDatabase { .. } | OpenError::UnsupportedFormatVersion { .. } => {
                StoreError::Corrupt(e.to_string())
            }
            OpenError::AlreadyOpen { .. } => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

fn other(path: &Path, reason: impl std::fmt::Display) -> OpenError {
    OpenError::Other {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn from_io(path: &Path, e: &io::Error) -> OpenError {
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            OpenError::ReadOnly {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        }
        _ => other(path, e),
    }
}

fn from_db(path: &Path, e: DatabaseError) -> OpenError {
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            OpenError::AlreadyOpen {
                path: path.to_owned(),
            }
        }
        DatabaseError::Storage(redb::StorageError::Io(io)) => {
            if io.kind() == io::ErrorKind::InvalidData {
                OpenError::NotFloxyDatabase {
                    path: path.to_owned(),
                    reason: format!("not a redb file ({io})"),
                }
            } else {
                from_io(path, &io)
            }
        }
        DatabaseError::Storage(redb::StorageError::Corrupted(msg)) => OpenError::NotFloxyDatabase {
            path: path.to_owned(),
            reason: format!("not a readable redb file ({msg})"),
        },
        DatabaseError::UpgradeRequired(v) => OpenError::NotFloxyDatabase {
            path: path.to_owned(),
            reason: format!("a redb file in the old format {v}"),
        },
        other_err => other(path, other_err),
    }
}

/// Checks the path, opens (or creates) the file, checks or writes the format version and
/// creates every table.
pub(crate) fn open_database(path: &Path, cache_size_bytes: usize) -> Result<Database, OpenError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(OpenError::MissingDirectory {
            path: path.to_owned(),
            dir,
        });
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(OpenError::NotFloxyDatabase {
                path: path.to_owned(),
                reason: "it is a directory".to_owned(),
            });
        }
        // Refused even for root, who could write it anyway: read-only is the owner's intent.
        Ok(m) if m.permissions().readonly() => {
            return Err(OpenError::ReadOnly {
                path: path.to_owned(),
                reason: "file permissions deny writing".to_owned(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(from_io(path, &e)),
    }
    let db = Database::builder()
        .set_cache_size(cache_size_bytes)
        .create(path)
        .map_err(|e| from_db(path, e))?;
    check_or_init(path, &db)?;
    Ok(db)
}

/// Opens (or initialises) the database held by `backend`, checks or writes the format
/// version and creates every table; `path` only names it in errors.
pub(crate) fn open_backend(
    path: &Path,
    backend: impl redb::StorageBackend,
    cache_size_bytes: usize,
) -> Result<Database, OpenError> {
    let db = Database::builder()
        .set_cache_size(cache_size_bytes)
        .create_with_backend(backend)
        .map_err(|e| from_db(path, e))?;
    check_or_init(path, &db)?;
    Ok(db)
}

fn check_or_init(path: &Path, db: &Database) -> Result<(), OpenError> {
    let rtx = db.begin_read().map_err(|e| other(path, e))?;
    let names: Vec<String> = rtx
        .list_tables()
        .map_err(|e| other(path, e))?
        .map(|h| h.name().to_owned())
        .collect();
    if names.iter().any(|n| n == META.name()) {
        let meta = rtx.open_table(META).map_err(|e| not_floxy(path, e))?;
        let version = meta
            .get(META_FORMAT_VERSION)
            .map_err(|e| not_floxy(path, e))?
            .ok_or_else(|| OpenError::NotFloxyDatabase {
                path: path.to_owned(),
                reason: "its meta table has no format version".to_owned(),
            })?;
        let found = <[u8; 4]>::try_from(version.value())
            .map(u32::from_be_bytes)
            .map_err(|_| OpenError::NotFloxyDatabase {
                path: path.to_owned(),
                reason: "its format version is not a 32-bit number".to_owned(),
            })?;
        if found != FORMAT_VERSION {
            return Err(OpenError::UnsupportedFormatVersion {
                path: path.to_owned(),
                found,
                supported: FORMAT_VERSION,
            });
        }
        return Ok(());
    }
    if !names.is_empty() {
        return Err(OpenError::NotFloxyDatabase {
            path: path.to_owned(),
            reason: format!(
                "a redb file without floxy's meta table (tables: {})",
                names.join(", ")
            ),
        });
    }
    drop(rtx);
    init_tables(path, db)
}

fn not_floxy(path: &Path, e: impl std::fmt::Display) -> OpenError {
    OpenError::NotFloxyDatabase {
        path: path.to_owned(),
        reason: format!("its meta table cannot be read ({e})"),
    }
}

/// Creates every table of a new file and writes its format version and counters.
fn init_tables(path: &Path, db: &Database) -> Result<(), OpenError> {
    let txn = db.begin_write().map_err(|e| other(path, e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| other(path, e))?;
        meta.insert(META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes().as_slice())
            .map_err(|e| other(path, e))?;
        let mut counters = Counters::default();
        counters
            .status_counts
            .resize(floxy_core::model::InstanceStatus::ALL.len(), 0);
        let bytes = encode("counters", &counters).map_err(|e| other(path, e))?;
        meta.insert(META_COUNTERS, bytes.as_slice())
            .map_err(|e| other(path, e))?;
        txn.open_table(DEFINITIONS).map_err(|e| other(path, e))?;
        txn.open_table(INSTANCES).map_err(|e| other(path, e))?;
        txn.open_table(STEPS).map_err(|e| other(path, e))?;
        txn.open_table(LIVE).map_err(|e| other(path, e))?;
        txn.open_table(EVENTS).map_err(|e| other(path, e))?;
        txn.open_table(DLQ).map_err(|e| other(path, e))?;
        txn.open_table(DLQ_BY_INSTANCE)
            .map_err(|e| other(path, e))?;
        txn.open_table(IDEMPOTENCY).map_err(|e| other(path, e))?;
        txn.open_table(TERMINAL).map_err(|e| other(path, e))?;
    }
    txn.commit().map_err(|e| other(path, e))?;
    Ok(())
}
