//! Errors: what [`SqliteStore::open`](crate::SqliteStore::open) can fail with, and how SQLite failures become
//! [`StoreError`]s.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use herald_core::store::StoreError;

/// Why [`SqliteStore::open`](crate::SqliteStore::open) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration cannot work (a zero pool size, batch size or queue bound, ...).
    #[error("invalid SQLite store configuration: {0}")]
    Config(String),
    /// Another [`SqliteStore`](crate::SqliteStore), in this process or another one, has the database open.
    /// SQLite allows one writer at a time, and the store relies on being the only one.
    #[error(
        "the database {} is already open by another herald SQLite store{} (its lock file {} is held); \
         only one process may use it at a time",
        database.display(),
        holder.map(|pid| format!(" (process {pid})")).unwrap_or_default(),
        lock_file.display()
    )]
    Locked {
        /// The database file.
        database: PathBuf,
        /// The lock file next to it.
        lock_file: PathBuf,
        /// The process id the holder wrote into the lock file, if readable.
        holder: Option<u32>,
    },
    /// A file system operation failed: creating the directory, opening the lock file.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// SQLite could not open or set up the database file.
    #[error("cannot open the SQLite database {}: {source}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The schema migrations failed (for example: the database was written by a newer version of the store).
    #[error("cannot migrate the SQLite database {} to the current schema: {source}", path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The file system does not support what the store needs (WAL journaling).
    #[error("the SQLite database {} cannot be used: {reason}", path.display())]
    Unsupported {
        /// The database file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The append log's segments cannot be read (a record that passed its checksum does not decode, ...).
    #[error("cannot read the SQLite store's append log: {0}")]
    AppendLog(String),
    /// The writer thread could not be started or stopped during start-up.
    #[error("the SQLite store's writer thread failed to start: {0}")]
    Writer(String),
}

/// SQLite's primary result codes that mean "try again later": the operation did not happen.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_NOMEM: i32 = 7;
const SQLITE_READONLY: i32 = 8;
/// An I/O error: transient for the caller, but during a commit the outcome is unknown.
pub(crate) const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_PROTOCOL: i32 = 15;

/// The primary SQLite result code of a database error (the low byte of the extended code).
pub(crate) fn primary_code(e: &sqlx::Error) -> Option<i32> {
    match e {
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff),
        _ => None,
    }
}

/// Whether `e` leaves the database unchanged and a retry may succeed: a busy or locked database, a full disk, an
/// I/O error, a closed pool.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(_) => matches!(
            primary_code(e),
            Some(
                SQLITE_BUSY
                    | SQLITE_LOCKED
                    | SQLITE_NOMEM
                    | SQLITE_READONLY
                    | SQLITE_IOERR
                    | SQLITE_FULL
                    | SQLITE_CANTOPEN
                    | SQLITE_PROTOCOL
            )
        ),
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// A read's failure: [`StoreError::Unavailable`] when transient, [`StoreError::Internal`] otherwise.
pub(crate) fn read_error(e: sqlx::Error) -> StoreError {
    if is_transient(&e) { StoreError::Unavailable(Box::new(e)) } else { StoreError::Internal(Box::new(e)) }
}

/// Stored data that does not decode (corruption, or a row written by something else).
pub(crate) fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Internal(format!("corrupt row in the SQLite store: {what}").into())
}

/// A failed write batch, shared by every waiter of the batch.
#[derive(Debug, Clone)]
pub(crate) struct BatchFailure {
    source: Arc<sqlx::Error>,
    /// Whether the batch may have been committed (an I/O error during the commit).
    outcome_unknown: bool,
}

impl BatchFailure {
    /// A failure before the commit: nothing of the batch was stored.
    pub(crate) fn before_commit(source: sqlx::Error) -> Self {
        Self { source: Arc::new(source), outcome_unknown: false }
    }

    /// A failed commit. SQLite rolls back on a busy database or a full disk; after an I/O error the outcome is
    /// unknown.
    pub(crate) fn at_commit(source: sqlx::Error) -> Self {
        let outcome_unknown = primary_code(&source) == Some(SQLITE_IOERR) || !is_transient(&source);
        Self { source: Arc::new(source), outcome_unknown }
    }

    /// A failed write or sync of the append log: the records may or may not be on disk.
    pub(crate) fn io_at_commit(source: std::io::Error) -> Self {
        Self { source: Arc::new(sqlx::Error::Io(source)), outcome_unknown: true }
    }

    /// The error one waiter gets.
    pub(crate) fn to_store_error(&self) -> StoreError {
        if !self.outcome_unknown && is_transient(&self.source) {
            StoreError::Unavailable(Box::new(self.clone()))
        } else {
            StoreError::Internal(Box::new(self.clone()))
        }
    }
}

impl fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.outcome_unknown {
            write!(f, "the SQLite write batch failed while committing (it may or may not be stored): {}", self.source)
        } else {
            write!(f, "the SQLite write batch failed and was rolled back: {}", self.source)
        }
    }
}

impl std::error::Error for BatchFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The store was closed ([`SqliteStore::close`](crate::SqliteStore::close) or drop) before the operation was queued.
#[derive(Debug, thiserror::Error)]
#[error("the SQLite store is closed")]
pub(crate) struct Closed;

/// The writer stopped without answering (it panicked): the operation may or may not have been stored.
#[derive(Debug, thiserror::Error)]
#[error("the SQLite store's writer stopped before answering; the outcome is unknown")]
pub(crate) struct WriterGone;
