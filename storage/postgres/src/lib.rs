#![doc = include_str!("../README.md")]

mod config;
mod error;
mod rows;
mod writer;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::id::{ChannelId, UserId};
use herald_core::model::{Appended, Channel, CursorKind, Message, NewMessage, Page, Seq};
use herald_core::store::{ReadRange, Store, StoreError, check_body_size};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, Row};

pub use crate::config::{DATABASE_URL_ENV, PgConfig};
pub use crate::error::ConnectError;
use crate::error::{internal, is_foreign_key_violation, store_error};
use crate::rows::{MESSAGE_COLUMNS, cursor_kind_str, message_from_row, seq_from_db, seq_to_db, user_from_db};
use crate::writer::Writers;

/// The embedded migrations (`storage/postgres/migrations`), applied by [`PgStore::connect`] unless
/// [`PgConfig::run_migrations`] is off. Exposed so that deployments can apply them separately.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Idle pooled connections are checked with a ping before use when idle for at least this long.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A [`Store`] on PostgreSQL with group commit; see the crate docs.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    writers: Writers,
    config: PgConfig,
    sql: Sql,
}

/// Statements built once.
struct Sql {
    read_after: String,
    read_before: String,
    get: String,
}

impl Sql {
    fn new() -> Self {
        Self {
            // Logs have no gaps, so a page of `limit` (+1) messages is a seq range of that size (`Before` ends at the
            // channel's last seq); bounding it keeps the plan an index range scan even with stale statistics.
            read_after: format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel = $1 AND seq > $2 AND seq <= $3 \
                 ORDER BY seq LIMIT $4"
            ),
            read_before: format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel = $1 AND seq < $2 \
                 AND seq >= LEAST($2, (SELECT last_seq + 1 FROM channels WHERE id = $1)) - $3 \
                 ORDER BY seq DESC LIMIT $3"
            ),
            get: format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel = $1 AND seq = $2"),
        }
    }
}

impl PgStore {
    /// Connects to the database, creates the schema and applies the migrations (unless
    /// [`PgConfig::run_migrations`] is off), opens the read pool and starts the writers.
    ///
    /// Fails when the database cannot be reached within [`PgConfig::acquire_timeout`]; it does not retry beyond
    /// that, so a server fails fast at start with a clear message. Once connected, the store survives database
    /// outages: operations fail with [`StoreError::Unavailable`] meanwhile and work again when it is back.
    pub async fn connect(config: PgConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let url = config.resolved_url()?;
        let redacted = config::redact_url(&url);
        let base = PgConnectOptions::from_str(&url)
            .map_err(|source| ConnectError::InvalidUrl { url: redacted.clone(), source })?;
        let connect_error = |source| ConnectError::Connect { url: redacted.clone(), source };
        // Migrations run without the statement timeout (a later migration may take long on a large table).
        let session = tune_tls(base.application_name("herald"), &redacted).options([("search_path", &config.schema)]);
        let statement_timeout = config.write_timeout.as_millis().to_string();
        let idle_in_tx_timeout = (config.write_timeout * 2).as_millis().to_string();
        let options = session.clone().options([
            ("statement_timeout", statement_timeout.as_str()),
            ("idle_in_transaction_session_timeout", idle_in_tx_timeout.as_str()),
        ]);
        if config.run_migrations {
            let mut conn = tokio::time::timeout(config.acquire_timeout, session.connect())
                .await
                .map_err(|_| connect_error(sqlx::Error::PoolTimedOut))?
                .map_err(connect_error)?;
            create_schema(&mut conn, &config.schema).await.map_err(connect_error)?;
            MIGRATOR
                .run(&mut conn)
                .await
                .map_err(|source| ConnectError::Migrate { schema: config.schema.clone(), source })?;
            let _ = conn.close().await;
        }

        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(config.acquire_timeout)
            // A connection idle for a while is pinged before use (and replaced if broken); one that broke more
            // recently fails its statement with an I/O error, which `retry` answers.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(connect_error)?;
        let writers = Writers::start(&options, &config).await.map_err(connect_error)?;
        tracing::info!(url = %redacted, schema = %config.schema, writers = config.writers, "PostgreSQL store ready");
        Ok(Self { inner: Arc::new(Inner { pool, writers, config, sql: Sql::new() }) })
    }

    /// The configuration the store runs with.
    pub fn config(&self) -> &PgConfig {
        &self.inner.config
    }

    /// The read pool, for queries of the application's own (the tables are documented in the crate docs).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Closes the read pool. Appends already queued are still written; the writers stop when the last clone of
    /// the store is dropped.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }
}

/// Works around sqlx 0.9.0 not setting TCP_NODELAY (fixed upstream in launchbadge/sqlx#4336, not released yet):
/// over TLS, a statement spans several TLS records written one by one, and Nagle's algorithm holds the later ones
/// until the server's delayed ACK, about 40 ms for every statement larger than 16 KiB, which group-commit batches
/// are. On a loopback address with `sslmode=prefer` (the default), where TLS protects nothing, the store uses plain
/// TCP; elsewhere TLS stays as configured and a warning says what it costs.
fn tune_tls(options: PgConnectOptions, redacted_url: &str) -> PgConnectOptions {
    let tcp = options.get_socket().is_none() && !options.get_host().starts_with('/');
    if !tcp || matches!(options.get_ssl_mode(), PgSslMode::Disable) {
        return options;
    }
    let host = options.get_host();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback && matches!(options.get_ssl_mode(), PgSslMode::Prefer) {
        tracing::info!(url = %redacted_url, "loopback database with sslmode=prefer: connecting without TLS");
        return options.ssl_mode(PgSslMode::Disable);
    }
    tracing::warn!(
        url = %redacted_url,
        "TLS over TCP: with sqlx 0.9.0 (no TCP_NODELAY) every group-commit batch larger than 16 KiB waits ~40 ms \
         for a delayed ACK, which caps append throughput; on a trusted network consider sslmode=disable or a Unix \
         socket"
    );
    options
}

impl PgStore {
    /// Runs an idempotent statement on the read pool, again on another connection when the first fails with an
    /// I/O error: a pooled connection can have broken while idle (the database restarted, the network cut it), and
    /// the pool only finds out by using it. At most `pool_size + 1` attempts; a failure to open a new connection
    /// is not an I/O error and ends the retries.
    async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let attempts = self.inner.config.pool_size as usize + 1;
        let mut attempt = 1;
        loop {
            match op().await {
                Err(sqlx::Error::Io(e)) if attempt < attempts => {
                    tracing::debug!(error = %e, attempt, "pooled connection broken; retrying on another");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Creates `schema` unless it exists (tolerating a concurrent creator).
async fn create_schema(conn: &mut sqlx::PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    // `schema` is validated as a plain lower-case identifier (PgConfig::validate).
    let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    for attempt in 0..3 {
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut *conn).await {
            Ok(_) => return Ok(()),
            // Two nodes creating it at once: one of them sees a unique violation; the schema exists then.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") && attempt < 2 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.config.schema)
            .field("pool_size", &self.inner.pool.size())
            .field("writers", &self.inner.config.writers)
            .finish_non_exhaustive()
    }
}

/// The largest page read at once; far beyond any real page, and small enough that seq arithmetic cannot overflow.
const MAX_PAGE: i64 = 1 << 40;

/// A `LIMIT` for a page of `limit` plus one row (the one that tells whether there is more).
fn limit_plus_one(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(MAX_PAGE).min(MAX_PAGE) + 1
}

#[async_trait]
impl Store for PgStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        check_body_size(&msg, self.inner.config.max_body_bytes)?;
        if let Some(refers) = msg.refers
            && i64::try_from(refers).is_err()
        {
            return Err(internal(format!("refers = {refers} is beyond any seq the store can hold")));
        }
        self.inner.writers.append(msg).await
    }

    async fn read(&self, channel: &ChannelId, range: ReadRange, limit: usize) -> Result<Page, StoreError> {
        // A page and one more message: `more` is whether that one exists.
        let want = limit_plus_one(limit);
        let rows = self
            .retry(|| {
                let query = match range {
                    ReadRange::After(after) => {
                        let after = seq_to_db(after);
                        sqlx::query(sqlx::AssertSqlSafe(self.inner.sql.read_after.as_str()))
                            .bind(channel.as_str())
                            .bind(after)
                            .bind(after.saturating_add(want))
                            .bind(want)
                    }
                    ReadRange::Before(before) => sqlx::query(sqlx::AssertSqlSafe(self.inner.sql.read_before.as_str()))
                        .bind(channel.as_str())
                        .bind(seq_to_db(before))
                        .bind(want),
                };
                query.fetch_all(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        let more = rows.len() > limit;
        let mut messages = rows
            .iter()
            .take(limit)
            .map(|row| message_from_row(row, 0, channel))
            .collect::<Result<Vec<Message>, StoreError>>()?;
        if let ReadRange::Before(_) = range {
            messages.reverse();
        }
        Ok(Page { messages, more })
    }

    async fn get(&self, channel: &ChannelId, seq: Seq) -> Result<Option<Message>, StoreError> {
        let Ok(seq) = i64::try_from(seq) else { return Ok(None) };
        let row = self
            .retry(|| {
                sqlx::query(sqlx::AssertSqlSafe(self.inner.sql.get.as_str()))
                    .bind(channel.as_str())
                    .bind(seq)
                    .fetch_optional(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        row.map(|row| message_from_row(&row, 0, channel)).transpose()
    }

    async fn last_seq(&self, channel: &ChannelId) -> Result<Seq, StoreError> {
        let last: Option<i64> = self
            .retry(|| {
                sqlx::query_scalar("SELECT last_seq FROM channels WHERE id = $1")
                    .bind(channel.as_str())
                    .fetch_optional(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        last.map_or(Ok(0), seq_from_db)
    }

    async fn create_channel(&self, channel: Channel, members: &[UserId]) -> Result<(), StoreError> {
        if insert_channel(&self.inner.pool, &channel, members).await? {
            Ok(())
        } else {
            Err(StoreError::ChannelExists(channel.id))
        }
    }

    async fn ensure_channel(&self, channel: Channel, members: &[UserId]) -> Result<Channel, StoreError> {
        if let Some(existing) = self.channel(&channel.id).await? {
            return Ok(existing);
        }
        if insert_channel(&self.inner.pool, &channel, members).await? {
            return Ok(channel);
        }
        // Created concurrently by someone else: theirs is the stored one.
        let id = channel.id.clone();
        self.channel(&id).await?.ok_or_else(|| internal(format!("channel {id} exists and cannot be read")))
    }

    async fn channel(&self, id: &ChannelId) -> Result<Option<Channel>, StoreError> {
        let row = self
            .retry(|| {
                sqlx::query("SELECT created_by, created_at FROM channels WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        let created_by: &str = row.try_get(0).map_err(store_error)?;
        Ok(Some(Channel {
            id: id.clone(),
            created_by: user_from_db(created_by)?,
            created_at: row.try_get(1).map_err(store_error)?,
        }))
    }

    async fn add_members(&self, id: &ChannelId, users: &[UserId]) -> Result<(), StoreError> {
        let users = sorted_unique(users);
        let found: i64 = self
            .retry(|| {
                sqlx::query_scalar(
                    "WITH ch AS (SELECT id FROM channels WHERE id = $1), \
             added AS (INSERT INTO members (channel, user_id) SELECT ch.id, u FROM ch, unnest($2::text[]) AS u \
             ON CONFLICT DO NOTHING) \
             SELECT count(*) FROM ch",
                )
                .bind(id.as_str())
                .bind(&users)
                .fetch_one(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        if found == 0 { Err(StoreError::ChannelNotFound(id.clone())) } else { Ok(()) }
    }

    async fn remove_member(&self, id: &ChannelId, user: &UserId) -> Result<(), StoreError> {
        let found: i64 = self
            .retry(|| {
                sqlx::query_scalar(
                    "WITH ch AS (SELECT id FROM channels WHERE id = $1), \
             removed AS (DELETE FROM members WHERE channel = $1 AND user_id = $2) \
             SELECT count(*) FROM ch",
                )
                .bind(id.as_str())
                .bind(user.as_str())
                .fetch_one(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        if found == 0 { Err(StoreError::ChannelNotFound(id.clone())) } else { Ok(()) }
    }

    async fn is_member(&self, id: &ChannelId, user: &UserId) -> Result<bool, StoreError> {
        self.retry(|| {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM members WHERE channel = $1 AND user_id = $2)")
                .bind(id.as_str())
                .bind(user.as_str())
                .fetch_one(&self.inner.pool)
        })
        .await
        .map_err(store_error)
    }

    async fn members(&self, id: &ChannelId) -> Result<Vec<UserId>, StoreError> {
        let rows = self
            .retry(|| {
                sqlx::query("SELECT user_id FROM members WHERE channel = $1 ORDER BY user_id")
                    .bind(id.as_str())
                    .fetch_all(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        rows.iter().map(|row| user_from_db(row.try_get(0).map_err(store_error)?)).collect()
    }

    /// Moves the cursor forward; [`StoreError::ChannelNotFound`] for an unknown channel.
    async fn set_cursor(
        &self,
        channel: &ChannelId,
        user: &UserId,
        kind: CursorKind,
        seq: Seq,
    ) -> Result<Seq, StoreError> {
        let upserted: Result<Option<i64>, sqlx::Error> = self
            .retry(|| {
                sqlx::query_scalar(
                    "INSERT INTO cursors (channel, user_id, kind, seq) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (channel, user_id, kind) DO UPDATE SET seq = EXCLUDED.seq WHERE cursors.seq < EXCLUDED.seq \
             RETURNING seq",
                )
                .bind(channel.as_str())
                .bind(user.as_str())
                .bind(cursor_kind_str(kind))
                .bind(seq_to_db(seq))
                .fetch_optional(&self.inner.pool)
            })
            .await;
        match upserted {
            Ok(Some(moved)) => seq_from_db(moved),
            // Not moved: the stored cursor is at or beyond `seq` (read in a new snapshot, which sees it).
            Ok(None) => self.cursor(channel, user, kind).await,
            Err(e) if is_foreign_key_violation(&e) => Err(StoreError::ChannelNotFound(channel.clone())),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn cursor(&self, channel: &ChannelId, user: &UserId, kind: CursorKind) -> Result<Seq, StoreError> {
        let seq: Option<i64> = self
            .retry(|| {
                sqlx::query_scalar("SELECT seq FROM cursors WHERE channel = $1 AND user_id = $2 AND kind = $3")
                    .bind(channel.as_str())
                    .bind(user.as_str())
                    .bind(cursor_kind_str(kind))
                    .fetch_optional(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        seq.map_or(Ok(0), seq_from_db)
    }

    fn max_body_bytes(&self) -> usize {
        self.inner.config.max_body_bytes
    }
}

/// The users' ids, sorted and without repeats.
fn sorted_unique(users: &[UserId]) -> Vec<&str> {
    let mut ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Inserts the channel and its members in one statement; false when the channel existed (nothing changed).
async fn insert_channel(pool: &PgPool, channel: &Channel, members: &[UserId]) -> Result<bool, StoreError> {
    let members = sorted_unique(members);
    let inserted: i64 = sqlx::query_scalar(
        "WITH ch AS (INSERT INTO channels (id, kind, created_by, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING RETURNING id), \
         added AS (INSERT INTO members (channel, user_id) SELECT ch.id, u FROM ch, unnest($5::text[]) AS u) \
         SELECT count(*) FROM ch",
    )
    .bind(channel.id.as_str())
    .bind(channel.kind().prefix())
    .bind(channel.created_by.as_str())
    .bind(channel.created_at)
    .bind(&members)
    .fetch_one(pool)
    .await
    .map_err(store_error)?;
    Ok(inserted > 0)
}
