#![doc = include_str!("../README.md")]

mod error;
mod filter;
mod lock;
mod log;
mod rows;
mod segment;
mod tail;
mod worker;
mod writer;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::id::{ChannelId, UserId};
use herald_core::model::{Appended, Channel, CursorKind, Message, NewMessage, Page, Seq};
use herald_core::store::{DEFAULT_MAX_BODY_BYTES, ReadRange, Store, StoreError, check_body_size};
use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use crate::error::OpenError;
use crate::error::{Closed, read_error};
use crate::rows::{cursor_kind_str, int, message_columns};
use crate::tail::Tail;
use crate::writer::{Replier, Request};

/// The page size of new database files.
const DEFAULT_PAGE_SIZE: u32 = 4096;
/// WAL size (64 MiB) at which the writer checkpoints itself; see `writer::checkpoint_loop`.
const WAL_BYTES: u32 = 64 * 1024 * 1024;
/// Page cache of each read connection, in KiB (SQLite's `cache_size` pragma, negative = KiB).
const READ_CACHE_KIB: i64 = 16 * 1024;
/// Page cache of the writer connection, in KiB: the tails of every active channel's B-trees stay in memory.
const WRITE_CACHE_KIB: i64 = 64 * 1024;
/// The append log of the earlier layout (a SQLite database): the database's path with `-log` appended. Read and
/// removed at open if it exists.
fn legacy_log_path(database: &Path) -> PathBuf {
    let mut name = OsString::from(database.as_os_str());
    name.push("-log");
    PathBuf::from(name)
}

/// How a [`SqliteStore`] is set up. [`SqliteConfig::new`] gives the defaults for a database file.
///
/// ```
/// let config = herald_sqlite::SqliteConfig { batch_max: 256, ..herald_sqlite::SqliteConfig::new("data/herald.db") };
/// assert_eq!(config.read_pool_size, 4);
/// ```
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file. It and its parent directory are created on first start. Next to it live the WAL
    /// (`-wal`), the shared-memory index (`-shm`), the append log's segment files (`-log-` and 16 hex digits) and
    /// the writer's lock file (`.lock`). The main file and the append log belong together: back them up (with the
    /// store stopped), move them and delete them together.
    pub path: PathBuf,
    /// Connections serving reads (history, membership, cursors) in parallel with the writer. Default 4.
    pub read_pool_size: u32,
    /// The most write operations one transaction (one fsync) carries, for appends (append log) and for the other
    /// writes (main database) alike. Default 2048. Under light load a batch is whatever is waiting (often one
    /// operation); under heavy load larger batches mean fewer fsyncs.
    pub batch_max: usize,
    /// The most write operations waiting for the writer, and the most appends waiting for the appender; callers
    /// beyond it wait for room. Default 8192.
    pub queue_bound: usize,
    /// The largest message body [`Store::append`] accepts, in bytes. Default [`DEFAULT_MAX_BODY_BYTES`] (1 MiB).
    pub max_body_bytes: usize,
    /// How long a connection waits for a lock held by something else (an external `sqlite3` shell, a backup)
    /// before failing with [`StoreError::Unavailable`]. Default 5 s.
    pub busy_timeout: Duration,
    /// The most channels whose last seq the appender (and whose existence the writer) keeps in memory; beyond it
    /// the map is cleared and refilled from the database as channels are written again. Default 100 000.
    pub channel_cache: usize,
    /// The page size of a new database file, in bytes (a power of two from 512 to 65536). It only applies when
    /// the file is created; an existing database keeps its own. Default 4096.
    pub page_size: u32,
    /// The least time between two background checkpoints (copies of committed WAL pages into the database file,
    /// off the writer's commit path). Longer: a page that many commits change is copied fewer times, and the WAL
    /// grows larger in between (the writer checkpoints itself beyond 64 MiB). Default 200 ms.
    pub checkpoint_interval: Duration,
    /// How often appended messages are folded from the append log (and the in-memory tail) into the channels'
    /// history tables in the main database. Longer: each busy channel's pages are written once for more messages,
    /// and more messages wait in memory. Default 1 s.
    pub fold_interval: Duration,
    /// Unfolded messages from which a fold starts without waiting for `fold_interval`. Default 65 536.
    pub fold_rows: usize,
    /// The most messages one fold transaction copies; queued channel, membership and cursor operations run between
    /// them. Smaller transactions spread the fold's disk writes (each is fsynced) so that appends wait less behind
    /// them. Default 4096.
    pub fold_chunk_rows: usize,
    /// The size of one append log segment file, in bytes (at least 64 KiB). The appender moves to the next segment
    /// when a batch does not fit; a segment whose messages are all folded is reused (or deleted beyond two spare
    /// ones). Larger: fewer files; the log takes about (unfolded bytes + 3 segments) on disk. Default 16 MiB.
    pub log_segment_bytes: u64,
    /// The most unfolded messages kept in memory: beyond it, appends wait for the next fold (nothing is dropped).
    /// One append batch may go beyond it by up to `batch_max`. Default 262 144.
    pub tail_max_rows: usize,
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
            fold_interval: Duration::from_secs(1),
            fold_rows: 65_536,
            fold_chunk_rows: 4096,
            tail_max_rows: 262_144,
            log_segment_bytes: 16 << 20,
        }
    }

    fn validate(&self) -> Result<(), OpenError> {
        let zero = |name: &str| Err(OpenError::Config(format!("{name} must be greater than 0")));
        let counts = [
            ("read_pool_size", self.read_pool_size as usize),
            ("batch_max", self.batch_max),
            ("queue_bound", self.queue_bound),
            ("max_body_bytes", self.max_body_bytes),
            ("fold_rows", self.fold_rows),
            ("fold_chunk_rows", self.fold_chunk_rows),
            ("tail_max_rows", self.tail_max_rows),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return zero(name);
        }
        if self.log_segment_bytes < 64 * 1024 {
            return Err(OpenError::Config(format!(
                "log_segment_bytes must be at least 65536, not {}",
                self.log_segment_bytes
            )));
        }
        if self.fold_interval.is_zero() {
            return zero("fold_interval");
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
/// Appends go through the appender, on its own thread, which writes everything waiting (group commit) as one write
/// to the append log (segment files `<path>-log-<16 hex digits>` of checksummed records) followed by `fdatasync`:
/// an append returns only after its record is on disk. Committed appends wait in memory (the tail) until the
/// main database's writer folds them into the channels' history, in large batches. The other writes (channels,
/// members, cursors) go through that writer, with group commit too. Reads look at the tail, then use a pool of read
/// connections to the main database, in parallel with both writers (WAL mode). Only one store may have a database open at a time, in any process: [`SqliteStore::open`] takes an
/// exclusive lock file and fails with [`OpenError::Locked`] otherwise.
///
/// Dropping the store stops the appender and the writer after they committed what was queued, and waits for them
/// (briefly blocking the dropping thread), so the database can be opened again as soon as the drop returns. [`SqliteStore::close`] does
/// the same without blocking.
pub struct SqliteStore {
    // Dropped first: the appender stops (it may wait for a fold) before the writer does.
    appender: log::Handle,
    writer: writer::Handle,
    tail: Arc<Tail>,
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
        let tail = Arc::new(Tail::new(config.tail_max_rows, config.fold_rows));
        let folded = Arc::new(log::Folded::default());
        let legacy_options = write_options.clone().filename(legacy_log_path(&path)).create_if_missing(false);
        let writer = writer::Handle::start(writer::Setup {
            options: write_options,
            path: path.clone(),
            lock,
            batch_max: config.batch_max,
            queue_bound: config.queue_bound,
            channel_cache: config.channel_cache,
            checkpoint_interval: config.checkpoint_interval,
            tail: tail.clone(),
            folded: folded.clone(),
            fold_interval: config.fold_interval,
            fold_chunk_rows: config.fold_chunk_rows,
        })
        .await?;
        let read_options = base.pragma("cache_size", (-READ_CACHE_KIB).to_string()).pragma("query_only", "ON");
        // Started after the writer migrated the main database: it reads the fold watermark from there.
        let appender = log::Handle::start(log::Setup {
            path: path.clone(),
            main: read_options.clone(),
            legacy: legacy_options,
            segment_bytes: config.log_segment_bytes,
            batch_max: config.batch_max,
            queue_bound: config.queue_bound,
            channel_cache: config.channel_cache,
            tail: tail.clone(),
            folded,
        })
        .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(config.read_pool_size)
            .min_connections(1)
            // A pooled SQLite connection is a local file handle: checking it costs a round trip and finds nothing.
            .test_before_acquire(false)
            .connect_with(read_options)
            .await
            .map_err(|source| OpenError::Database { path: path.clone(), source })?;
        tracing::debug!(path = %path.display(), "SQLite store open");
        Ok(Self { appender, writer, tail, readers, path, max_body_bytes: config.max_body_bytes })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Messages appended (durable in the append log) and not yet folded into the main database.
    pub fn unfolded(&self) -> usize {
        self.tail.rows()
    }

    /// Folds every message appended so far into the main database now, and returns once that is committed (the
    /// append log's segments are reused shortly after). Folds also run by themselves (`SqliteConfig::fold_interval`); this
    /// is for a backup or a copy of the main file alone, and for tests.
    pub async fn fold(&self) -> Result<(), StoreError> {
        self.write(Request::Fold, Replier::Unit).await
    }

    /// Writes a consistent copy of the store to `dest`, a new SQLite database file, while the store keeps serving.
    ///
    /// Folds every message appended so far into the main database, then copies the main database as of that
    /// fold with `VACUUM INTO` on a read connection (a snapshot: appends, folds and reads carry on meanwhile). The
    /// copy holds channels, members, read cursors, devices and every message acknowledged before this call;
    /// messages appended while it runs may or may not be in it. It needs no append log: open it as a store of
    /// its own by naming it as [`SqliteConfig::path`] (in a directory of its own) to restore it.
    ///
    /// `dest` must not exist yet (or be an empty file): SQLite refuses to overwrite a database, and the error
    /// says so.
    pub async fn backup(&self, dest: impl AsRef<Path>) -> Result<(), StoreError> {
        let dest = dest.as_ref();
        self.fold().await?;
        let Some(name) = dest.to_str() else {
            return Err(StoreError::Internal(format!("backup: the path {} is not valid UTF-8", dest.display()).into()));
        };
        let failed = |e: sqlx::Error| StoreError::Internal(format!("backup to {}: {e}", dest.display()).into());
        // A connection of its own, read-only (the pool's connections are `query_only`, which also forbids
        // writing the copy); its read transaction is the snapshot the copy is made from.
        let options = SqliteConnectOptions::new().filename(&self.path).read_only(true);
        let mut conn = SqliteConnection::connect_with(&options).await.map_err(failed)?;
        let copied = sqlx::query("VACUUM INTO ?1").bind(name).execute(&mut conn).await.map(|_| ()).map_err(failed);
        let _ = conn.close().await;
        copied
    }

    /// Stops the store without blocking: the appender, then the writer, refuse new operations (they fail with
    /// [`StoreError::Unavailable`]), commit and answer those already queued and close their files (unfolded messages
    /// stay in the append log for the next open); the lock is released and the read connections close. When this
    /// returns, the database can be opened again.
    pub async fn close(&self) {
        // The appender first: it may wait for a fold, which the writer does.
        self.appender.stop();
        self.join("appender", self.appender.take_thread()).await;
        self.writer.stop();
        self.join("writer", self.writer.take_thread()).await;
        self.readers.close().await;
    }

    async fn join(&self, what: &str, thread: Option<std::thread::JoinHandle<()>>) {
        let Some(thread) = thread else { return };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!(path = %self.path.display(), "the SQLite {what} thread panicked"),
            Err(e) => tracing::error!(path = %self.path.display(), error = %e, "waiting for the SQLite {what} failed"),
        }
    }

    /// Fails once the store is closed: the tail must not keep answering reads then.
    fn check_open(&self) -> Result<(), StoreError> {
        if self.readers.is_closed() { Err(StoreError::Unavailable(Box::new(Closed))) } else { Ok(()) }
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
/// Two ascending runs of one channel's messages, merged ascending, each seq once.
fn merge(a: Vec<Message>, b: Vec<Message>) -> Vec<Message> {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.seq < y.seq => a.next(),
            (Some(x), Some(y)) if x.seq > y.seq => b.next(),
            (Some(_), Some(_)) => {
                b.next();
                a.next()
            }
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        merged.extend(next);
    }
    merged
}

/// The page of at most `limit` messages out of `messages` (ascending, up to `limit + 1` of the range's first
/// ones; for a backward read, its last ones): `more` when there are more than `limit`.
fn page(mut messages: Vec<Message>, limit: usize, backward: bool) -> Page {
    let more = messages.len() > limit;
    if more {
        if backward {
            messages.drain(..messages.len() - limit);
        } else {
            messages.truncate(limit);
        }
    }
    Page { messages, more }
}

const READ_ONE: &str = concat!("SELECT ", message_columns!(), " FROM messages WHERE channel = ?1 AND seq = ?2");

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        check_body_size(&msg, self.max_body_bytes)?;
        self.appender.append(msg).await
    }

    /// Looks at the in-memory tail first, then at the main database, and merges by seq: a fold that runs meanwhile
    /// removes rows from the tail only after they are committed in the main database, so nothing is missed.
    async fn read(&self, channel: &ChannelId, range: ReadRange, limit: usize) -> Result<Page, StoreError> {
        self.check_open()?;
        // One row beyond the page tells whether there are more.
        let fetch = limit.saturating_add(1);
        let (slice, sql, bound, descending) = match range {
            ReadRange::After(after) => {
                let slice = self.tail.after(channel, after, fetch);
                // The whole range is in the tail when it starts inside it.
                if slice.span.is_some_and(|(first, _)| after.saturating_add(1) >= first) {
                    return Ok(page(slice.messages, limit, false));
                }
                (slice, READ_AFTER, int(after), false)
            }
            ReadRange::Before(before) => {
                let slice = self.tail.before(channel, before, fetch);
                // The tail alone answers when it has a whole page (plus one) or the channel's whole log.
                if slice.span.is_some_and(|(first, _)| first == 1 || slice.messages.len() == fetch) {
                    return Ok(page(slice.messages, limit, true));
                }
                (slice, READ_BEFORE, int(before), true)
            }
        };
        let rows = sqlx::query(sql)
            .bind(channel.as_str())
            .bind(bound)
            .bind(i64::try_from(fetch).unwrap_or(i64::MAX))
            .fetch_all(&self.readers)
            .await
            .map_err(read_error)?;
        let mut stored = rows.iter().map(|row| rows::message(channel, row)).collect::<Result<Vec<_>, _>>()?;
        if descending {
            stored.reverse();
        }
        Ok(page(merge(stored, slice.messages), limit, descending))
    }

    async fn get(&self, channel: &ChannelId, seq: Seq) -> Result<Option<Message>, StoreError> {
        self.check_open()?;
        if let Some(message) = self.tail.get(channel, seq) {
            return Ok(Some(message));
        }
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
        self.check_open()?;
        // The tail holds a channel's newest messages, if any are unfolded.
        if let Some(seq) = self.tail.last_seq(channel) {
            return Ok(seq);
        }
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
