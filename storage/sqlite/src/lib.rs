#![doc = include_str!("../README.md")]

mod error;
mod lock;
mod rows;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::id::{ChannelId, UserId};
use herald_core::model::{Appended, Channel, CursorKind, Message, NewMessage, Page, Seq};
use herald_core::store::{DEFAULT_MAX_BODY_BYTES, ReadRange, Store, StoreError, check_body_size};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use crate::error::OpenError;
use crate::error::read_error;
use crate::rows::{cursor_kind_str, int, message_columns};
use crate::writer::{Replier, Request};

/// The page size of new database files.
const DEFAULT_PAGE_SIZE: u32 = 4096;
/// WAL size (64 MiB) at which the writer checkpoints itself; see `writer::checkpoint_loop`.
const WAL_BYTES: u32 = 64 * 1024 * 1024;
/// Page cache of each read connection, in KiB (SQLite's `cache_size` pragma, negative = KiB).
const READ_CACHE_KIB: i64 = 16 * 1024;
/// Page cache of the writer connection, in KiB: the tails of every active channel's B-trees stay in memory.
const WRITE_CACHE_KIB: i64 = 64 * 1024;

/// How a [`SqliteStore`] is set up. [`SqliteConfig::new`] gives the defaults for a database file.
///
/// ```
/// let config = herald_sqlite::SqliteConfig { batch_max: 256, ..herald_sqlite::SqliteConfig::new("data/herald.db") };
/// assert_eq!(config.read_pool_size, 4);
/// ```
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file. It and its parent directory are created on first start. Next to it live the WAL
    /// (`-wal`), the shared-memory index (`-shm`) and the writer's lock file (`.lock`).
    pub path: PathBuf,
    /// Connections serving reads (history, membership, cursors) in parallel with the writer. Default 4.
    pub read_pool_size: u32,
    /// The most write operations one transaction (one fsync) carries. Default 2048. Under light load a batch is
    /// whatever is waiting (often one operation); under heavy load larger batches mean fewer fsyncs and fewer
    /// rewritten pages per message.
    pub batch_max: usize,
    /// The most write operations waiting for the writer; callers beyond it wait for room. Default 8192.
    pub queue_bound: usize,
    /// The largest message body [`Store::append`] accepts, in bytes. Default [`DEFAULT_MAX_BODY_BYTES`] (1 MiB).
    pub max_body_bytes: usize,
    /// How long a connection waits for a lock held by something else (an external `sqlite3` shell, a backup)
    /// before failing with [`StoreError::Unavailable`]. Default 5 s.
    pub busy_timeout: Duration,
    /// The most channels whose last seq the writer keeps in memory; beyond it the map is cleared and refilled
    /// from the database as channels are written again. Default 100 000.
    pub channel_cache: usize,
    /// The page size of a new database file, in bytes (a power of two from 512 to 65536). It only applies when
    /// the file is created; an existing database keeps its own. Default 4096.
    pub page_size: u32,
    /// The least time between two background checkpoints (copies of committed WAL pages into the database file,
    /// off the writer's commit path). Longer: a page that many commits change is copied fewer times, and the WAL
    /// grows larger in between (the writer checkpoints itself beyond 64 MiB). Default 200 ms.
    pub checkpoint_interval: Duration,
}

impl SqliteConfig {
    /// The defaults for the database file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_pool_size: 4,
            batch_max: 2048,
            queue_bound: 8192,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            busy_timeout: Duration::from_secs(5),
            channel_cache: 100_000,
            page_size: DEFAULT_PAGE_SIZE,
            checkpoint_interval: Duration::from_millis(200),
        }
    }

    fn validate(&self) -> Result<(), OpenError> {
        let zero = |name: &str| Err(OpenError::Config(format!("{name} must be greater than 0")));
        if self.read_pool_size == 0 {
            return zero("read_pool_size");
        }
        if self.batch_max == 0 {
            return zero("batch_max");
        }
        if self.queue_bound == 0 {
            return zero("queue_bound");
        }
        if self.max_body_bytes == 0 {
            return zero("max_body_bytes");
        }
        if !(512..=65_536).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return Err(OpenError::Config(format!(
                "page_size must be a power of two from 512 to 65536, not {}",
                self.page_size
            )));
        }
        if self.path.as_os_str().is_empty() {
            return Err(OpenError::Config("path must name a database file".into()));
        }
        Ok(())
    }
}

/// A durable [`Store`] in one SQLite database file: the embedded default of Herald.
///
/// Writes (appends, channels, members, cursors) go through one writer connection on its own thread, which
/// commits everything waiting in one transaction (group commit) with `synchronous = FULL`: an append returns only
/// after its transaction is on disk. Reads use a pool of read connections and run in parallel with the writer (WAL
/// mode). Only one store may have a database open at a time, in any process: [`SqliteStore::open`] takes an
/// exclusive lock file and fails with [`OpenError::Locked`] otherwise.
///
/// Dropping the store stops the writer after it committed what was queued, and waits for it (briefly blocking the
/// dropping thread), so the database can be opened again as soon as the drop returns. [`SqliteStore::close`] does
/// the same without blocking.
pub struct SqliteStore {
    writer: writer::Handle,
    readers: SqlitePool,
    path: PathBuf,
    max_body_bytes: usize,
}

impl SqliteStore {
    /// Opens the database at `config.path`, creating the file and its parent directory if needed, and brings its
    /// schema up to date (embedded migrations).
    pub async fn open(config: SqliteConfig) -> Result<Self, OpenError> {
        config.validate()?;
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
                action: "create the directory",
                path: dir.to_owned(),
                source,
            })?;
        }
        let lock = lock::acquire(&path)?;
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(config.busy_timeout)
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        let write_options = base
            .clone()
            .create_if_missing(true)
            .page_size(config.page_size)
            .pragma("cache_size", (-WRITE_CACHE_KIB).to_string())
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // A background checkpointer copies the WAL into the database file; the writer checkpoints itself only
            // when the WAL grows beyond 64 MiB, and the file is cut back to the same size.
            .pragma("wal_autocheckpoint", (WAL_BYTES / config.page_size).to_string())
            .pragma("journal_size_limit", WAL_BYTES.to_string())
            // Every INSERT shape (1..=INSERT_CHUNK rows) plus the other statements stays prepared.
            .statement_cache_capacity(writer::INSERT_CHUNK + 64);
        let writer = writer::Handle::start(writer::Setup {
            options: write_options,
            path: path.clone(),
            lock,
            batch_max: config.batch_max,
            queue_bound: config.queue_bound,
            channel_cache: config.channel_cache,
            checkpoint_interval: config.checkpoint_interval,
        })
        .await?;
        let read_options = base.pragma("cache_size", (-READ_CACHE_KIB).to_string()).pragma("query_only", "ON");
        let readers = SqlitePoolOptions::new()
            .max_connections(config.read_pool_size)
            .min_connections(1)
            // A pooled SQLite connection is a local file handle: checking it costs a round trip and finds nothing.
            .test_before_acquire(false)
            .connect_with(read_options)
            .await
            .map_err(|source| OpenError::Database { path: path.clone(), source })?;
        tracing::debug!(path = %path.display(), "SQLite store open");
        Ok(Self { writer, readers, path, max_body_bytes: config.max_body_bytes })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the store without blocking: the writer refuses new operations (they fail with
    /// [`StoreError::Unavailable`]), commits and answers those already queued, closes the database and releases the
    /// lock; then the read connections close. When this returns, the database can be opened again.
    pub async fn close(&self) {
        self.writer.stop();
        if let Some(thread) = self.writer.take_thread() {
            match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => tracing::error!(path = %self.path.display(), "the SQLite writer thread panicked"),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "waiting for the SQLite writer failed")
                }
            }
        }
        self.readers.close().await;
    }

    async fn write<T>(&self, request: Request, wrap: fn(writer::Reply<T>) -> Replier) -> Result<T, StoreError> {
        self.writer.call(request, wrap).await
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

const READ_AFTER: &str =
    concat!("SELECT ", message_columns!(), " FROM messages WHERE channel = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3");
const READ_BEFORE: &str =
    concat!("SELECT ", message_columns!(), " FROM messages WHERE channel = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3");
const READ_ONE: &str = concat!("SELECT ", message_columns!(), " FROM messages WHERE channel = ?1 AND seq = ?2");

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        check_body_size(&msg, self.max_body_bytes)?;
        self.write(Request::Append(msg), Replier::Appended).await
    }

    async fn read(&self, channel: &ChannelId, range: ReadRange, limit: usize) -> Result<Page, StoreError> {
        // One row beyond the page tells whether there are more.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let (sql, bound, descending) = match range {
            ReadRange::After(after) => (READ_AFTER, int(after), false),
            ReadRange::Before(before) => (READ_BEFORE, int(before), true),
        };
        let rows = sqlx::query(sql)
            .bind(channel.as_str())
            .bind(bound)
            .bind(fetch)
            .fetch_all(&self.readers)
            .await
            .map_err(read_error)?;
        let more = rows.len() > limit;
        let mut messages =
            rows.iter().take(limit).map(|row| rows::message(channel, row)).collect::<Result<Vec<_>, _>>()?;
        if descending {
            messages.reverse();
        }
        Ok(Page { messages, more })
    }

    async fn get(&self, channel: &ChannelId, seq: Seq) -> Result<Option<Message>, StoreError> {
        let Ok(seq) = i64::try_from(seq) else { return Ok(None) };
        let row = sqlx::query(READ_ONE)
            .bind(channel.as_str())
            .bind(seq)
            .fetch_optional(&self.readers)
            .await
            .map_err(read_error)?;
        row.map(|row| rows::message(channel, &row)).transpose()
    }

    async fn last_seq(&self, channel: &ChannelId) -> Result<Seq, StoreError> {
        let row = sqlx::query("SELECT last_seq FROM channels WHERE id = ?1")
            .bind(channel.as_str())
            .fetch_optional(&self.readers)
            .await
            .map_err(read_error)?;
        row.map_or(Ok(0), |row| rows::seq_column(&row))
    }

    async fn create_channel(&self, channel: Channel, members: &[UserId]) -> Result<(), StoreError> {
        self.write(Request::CreateChannel(channel, members.to_vec()), Replier::Unit).await
    }

    async fn ensure_channel(&self, channel: Channel, members: &[UserId]) -> Result<Channel, StoreError> {
        if let Some(existing) = self.channel(&channel.id).await? {
            return Ok(existing);
        }
        self.write(Request::EnsureChannel(channel, members.to_vec()), Replier::Channel).await
    }

    async fn channel(&self, id: &ChannelId) -> Result<Option<Channel>, StoreError> {
        let row = sqlx::query("SELECT created_by, created_at FROM channels WHERE id = ?1")
            .bind(id.as_str())
            .fetch_optional(&self.readers)
            .await
            .map_err(read_error)?;
        row.map(|row| rows::channel(id, &row)).transpose()
    }

    async fn add_members(&self, id: &ChannelId, users: &[UserId]) -> Result<(), StoreError> {
        self.write(Request::AddMembers(id.clone(), users.to_vec()), Replier::Unit).await
    }

    async fn remove_member(&self, id: &ChannelId, user: &UserId) -> Result<(), StoreError> {
        self.write(Request::RemoveMember(id.clone(), user.clone()), Replier::Unit).await
    }

    async fn is_member(&self, id: &ChannelId, user: &UserId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM members WHERE channel = ?1 AND user_id = ?2")
            .bind(id.as_str())
            .bind(user.as_str())
            .fetch_optional(&self.readers)
            .await
            .map_err(read_error)?;
        Ok(row.is_some())
    }

    async fn members(&self, id: &ChannelId) -> Result<Vec<UserId>, StoreError> {
        let rows = sqlx::query("SELECT user_id FROM members WHERE channel = ?1 ORDER BY user_id")
            .bind(id.as_str())
            .fetch_all(&self.readers)
            .await
            .map_err(read_error)?;
        rows.iter().map(rows::user).collect()
    }

    /// Moves the cursor forward; [`StoreError::ChannelNotFound`] for an unknown channel (like the in-memory store).
    async fn set_cursor(
        &self,
        channel: &ChannelId,
        user: &UserId,
        kind: CursorKind,
        seq: Seq,
    ) -> Result<Seq, StoreError> {
        self.write(Request::SetCursor(channel.clone(), user.clone(), kind, seq), Replier::Seq).await
    }

    async fn cursor(&self, channel: &ChannelId, user: &UserId, kind: CursorKind) -> Result<Seq, StoreError> {
        let row = sqlx::query("SELECT seq FROM cursors WHERE channel = ?1 AND user_id = ?2 AND kind = ?3")
            .bind(channel.as_str())
            .bind(user.as_str())
            .bind(cursor_kind_str(kind))
            .fetch_optional(&self.readers)
            .await
            .map_err(read_error)?;
        row.map_or(Ok(0), |row| rows::seq_column(&row))
    }

    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}
