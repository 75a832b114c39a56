//! Mapping of sqlx/PostgreSQL errors to [`StoreError`].

use floxy_core::store::StoreError;

/// SQLSTATE raised by `floxy_corrupt()` (a claimed item without its step run).
pub(crate) const SQLSTATE_CORRUPT: &str = "FX001";

/// Maps an sqlx error to a [`StoreError`]:
///
/// * connection loss, I/O, TLS, pool timeouts, a crashed connection worker, and the SQLSTATE
///   classes 08 (connection exception), 53 (insufficient resources), 57 (operator
///   intervention: shutdown, statement timeout, cancel) and 40 (serialization failure,
///   deadlock) and 55P03 (lock not available): [`StoreError::Unavailable`] (retryable);
/// * class 23 (unique, check, not-null violations): [`StoreError::Conflict`];
/// * `FX001` and undecodable data: [`StoreError::Corrupt`];
/// * a closed pool: [`StoreError::Closed`];
/// * anything else: [`StoreError::Backend`].
#[allow(clippy::needless_pass_by_value)] // by value to fit `.map_err(map_sqlx)` (70 call sites)
pub(crate) fn map_sqlx(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::PoolClosed => StoreError::Closed,
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
        sqlx::Error::Database(db) => {
            let code = db
                .code()
                .map(std::borrow::Cow::into_owned)
                .unwrap_or_default();
            let msg = db.message().to_owned();
            if code == SQLSTATE_CORRUPT {
                StoreError::Corrupt(msg)
            } else if code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code.starts_with("40")
                || code == "55P03"
            {
                StoreError::Unavailable(format!("{msg} (SQLSTATE {code})"))
            } else if code.starts_with("23") {
                StoreError::Conflict(format!("{msg} (SQLSTATE {code})"))
            } else {
                StoreError::Backend(format!("{msg} (SQLSTATE {code})"))
            }
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Whether the error means the connection (or the server) is gone: the outcome of an
/// in-flight commit is unknown and nothing should be retried on the same connection.
pub(crate) fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// A value that does not fit the column type.
pub(crate) fn out_of_range(what: &str) -> StoreError {
    StoreError::Backend(format!("{what} is out of the range the schema can store"))
}

/// Stored data that cannot be read back.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// SQLSTATE of a call of a function that does not exist.
const SQLSTATE_UNDEFINED_FUNCTION: &str = "42883";

/// [`map_sqlx`] for the claim, which calls the schema's `floxy_claim` function: a schema
/// migrated by an older version of the store has none, and the error says how to get it
/// ([`StoreError::Backend`], not retryable: nothing changes until someone migrates).
#[allow(clippy::needless_pass_by_value)] // by value to fit `.map_err(map_claim)`
pub(crate) fn map_claim(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some(SQLSTATE_UNDEFINED_FUNCTION)
        && db.message().contains("floxy_claim")
    {
        return StoreError::Backend(format!(
            "{} (SQLSTATE {SQLSTATE_UNDEFINED_FUNCTION}): the schema was migrated by an older \
             version of floxy-store-postgres; run PostgresStore::migrate (`floxyctl migrate`) \
             to add the claim function",
            db.message()
        ));
    }
    map_sqlx(e)
}
