//! Errors: [`ConnectError`] for opening a store, and how database failures become [`StoreError`]s.

use herald_core::store::{BoxError, StoreError};

/// Why [`PgStore::connect`](crate::PgStore::connect) failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No URL in the configuration and `HERALD_DATABASE_URL` is unset or empty.
    #[error("no database URL: set the store's url or the HERALD_DATABASE_URL environment variable")]
    MissingUrl,
    /// A configuration value is out of range.
    #[error("invalid PostgreSQL store configuration: {0}")]
    InvalidConfig(String),
    /// The URL does not parse.
    #[error("invalid database URL {url}: {source}")]
    InvalidUrl {
        /// The URL, its password redacted.
        url: String,
        /// The parser's complaint.
        #[source]
        source: sqlx::Error,
    },
    /// The database cannot be reached, refused the login, or failed while the store set itself up.
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        /// The URL, its password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded migrations failed.
    #[error("cannot apply the database migrations in schema {schema}: {source}")]
    Migrate {
        /// The schema.
        schema: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// Whether `e` means "the database cannot be reached or refused temporarily": the connection failed, was
/// reset or is shutting down, the pool had no connection in time, or the server reported a condition that
/// passes (too many connections, disk full, a deadlock or serialization failure, a cancelled statement,
/// a read-only replica after a failover).
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs after which a retry can succeed and nothing was changed.
fn is_transient_sqlstate(code: &str) -> bool {
    // 08: connection exception; 53: insufficient resources; 57P0x: admin/crash shutdown, cannot connect now.
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(
            code,
            "40001" // serialization_failure
            | "40P01" // deadlock_detected
            | "55P03" // lock_not_available
            | "57014" // query_canceled (statement_timeout, cancel request)
            | "25006" // read_only_sql_transaction (connected to a standby)
        )
}

/// Maps a driver error of an operation that changed nothing (a read, or a write known not to have committed).
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    if is_transient(&e) { StoreError::Unavailable(Box::new(e)) } else { StoreError::Internal(Box::new(e)) }
}

/// A [`StoreError::Internal`] with a message.
pub(crate) fn internal(msg: impl Into<String>) -> StoreError {
    StoreError::Internal(BoxError::from(msg.into()))
}

/// A [`StoreError::Unavailable`] with a message.
pub(crate) fn unavailable(msg: impl Into<String>) -> StoreError {
    StoreError::Unavailable(BoxError::from(msg.into()))
}

/// Whether `e` is the database's foreign-key violation (the referenced channel does not exist).
pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_sqlstates() {
        for code in ["08006", "08001", "57P01", "57P03", "53300", "53100", "40001", "40P01", "57014", "25006"] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "23503", "42P01", "42601", "XX000", "22P02"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn driver_errors() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(store_error(io), StoreError::Unavailable(_)));
        assert!(matches!(store_error(sqlx::Error::PoolTimedOut), StoreError::Unavailable(_)));
        assert!(matches!(store_error(sqlx::Error::RowNotFound), StoreError::Internal(_)));
        assert!(matches!(store_error(sqlx::Error::Protocol("garbage".into())), StoreError::Internal(_)));
    }
}
