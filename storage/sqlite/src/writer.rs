//! The single writer: one connection on its own thread, fed by a bounded queue, committing every waiting operation
//! in one `BEGIN IMMEDIATE` transaction (group commit).
//!
//! A batch is whatever is queued when the writer gets to it, up to `batch_max` operations. Operations in one batch
//! were all in flight at the same time, so any order among them is a valid one: the writer applies the channel,
//! membership and cursor operations first, in queue order, then all appends together. The appends of a batch cost
//! a fixed number of statements whatever their number: one to load the last seqs of channels the writer does not
//! know yet, one to look up resent client ids, multi-row `INSERT`s of up to [`INSERT_CHUNK`] rows, and one
//! `UPDATE` of the channels' `last_seq`. Every waiter is answered only after `COMMIT` returned; if anything fails,
//! the transaction is rolled back, every waiter of the batch gets the error, and the writer goes on with the next
//! batch.
//!
//! The writer is the only writer of the database (the lock file guarantees it), so it keeps each channel's last
//! seq in memory (a bounded map, cleared when full and after any failure) and needs no read-modify-write race
//! protection beyond its own sequential loop.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use herald_core::id::{ChannelId, ClientMsgId, UserId};
use herald_core::model::{Appended, Channel, CursorKind, Message, NewMessage, Seq};
use herald_core::store::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection, Row, SqliteExecutor};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::{BatchFailure, Closed, OpenError, WriterGone};
use crate::lock::WriterLock;
use crate::rows::{self, cursor_kind_str, int, kind_str};

/// The most rows one `INSERT` statement carries. Larger batches use several statements of this size plus one for
/// the rest; every statement shape is prepared once and cached.
pub(crate) const INSERT_CHUNK: usize = 128;

/// The schema migrations, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The answer channel of one operation.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write operation.
#[derive(Debug)]
pub(crate) enum Request {
    Append(NewMessage),
    CreateChannel(Channel, Vec<UserId>),
    EnsureChannel(Channel, Vec<UserId>),
    AddMembers(ChannelId, Vec<UserId>),
    RemoveMember(ChannelId, UserId),
    SetCursor(ChannelId, UserId, CursorKind, Seq),
}

/// Where an operation's answer goes.
#[derive(Debug)]
pub(crate) enum Replier {
    Appended(Reply<Appended>),
    Unit(Reply<()>),
    Channel(Reply<Channel>),
    Seq(Reply<Seq>),
}

/// An operation's answer, kept until the batch committed.
#[derive(Debug)]
enum Outcome {
    Appended(Result<Appended, StoreError>),
    Unit(Result<(), StoreError>),
    Channel(Result<Channel, StoreError>),
    Seq(Result<Seq, StoreError>),
}

impl Replier {
    fn send(self, outcome: Outcome) {
        // A waiter that gave up (its future was dropped) no longer listens: ignore send failures.
        match (self, outcome) {
            (Self::Appended(r), Outcome::Appended(o)) => drop(r.send(o)),
            (Self::Unit(r), Outcome::Unit(o)) => drop(r.send(o)),
            (Self::Channel(r), Outcome::Channel(o)) => drop(r.send(o)),
            (Self::Seq(r), Outcome::Seq(o)) => drop(r.send(o)),
            (r, _) => r.fail(bug("mismatched answer")),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Self::Appended(r) => drop(r.send(Err(e))),
            Self::Unit(r) => drop(r.send(Err(e))),
            Self::Channel(r) => drop(r.send(Err(e))),
            Self::Seq(r) => drop(r.send(Err(e))),
        }
    }
}

/// An internal inconsistency of the writer (never expected).
fn bug(what: &str) -> StoreError {
    StoreError::Internal(format!("herald-sqlite writer bug: {what}").into())
}

/// One queued operation.
#[derive(Debug)]
pub(crate) struct Op {
    request: Request,
    reply: Replier,
}

/// What the writer thread needs.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) options: SqliteConnectOptions,
    pub(crate) path: PathBuf,
    pub(crate) lock: WriterLock,
    pub(crate) batch_max: usize,
    pub(crate) queue_bound: usize,
    pub(crate) channel_cache: usize,
    pub(crate) checkpoint_interval: std::time::Duration,
}

/// The store's side of the writer: the queue, and the means to stop the thread.
#[derive(Debug)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Op>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    /// Starts the writer thread; it opens the database, migrates it and then serves the queue. Resolves once the
    /// database is ready (or failed to open).
    pub(crate) async fn start(setup: Setup) -> Result<Self, OpenError> {
        let (tx, rx) = mpsc::channel(setup.queue_bound);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || thread_main(setup, rx, shutdown_rx, ready_tx))
            .map_err(|e| OpenError::Writer(e.to_string()))?;
        let handle = Self { tx, shutdown: Mutex::new(Some(shutdown_tx)), thread: Mutex::new(Some(thread)) };
        match ready_rx.await {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(OpenError::Writer("the writer thread stopped during start-up".into())),
        }
    }

    /// Queues `request` (waiting while the queue is full) and waits for its answer.
    pub(crate) async fn call<T>(&self, request: Request, wrap: fn(Reply<T>) -> Replier) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Op { request, reply: wrap(reply) })
            .await
            .map_err(|_| StoreError::Unavailable(Box::new(Closed)))?;
        answer.await.unwrap_or_else(|_| Err(StoreError::Internal(Box::new(WriterGone))))
    }

    /// Asks the writer to finish: it refuses new operations, commits those already queued, closes its connection
    /// and releases the lock.
    pub(crate) fn stop(&self) {
        if let Some(tx) = self.shutdown.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = tx.send(());
        }
    }

    /// The writer thread, unless it was taken already.
    pub(crate) fn take_thread(&self) -> Option<JoinHandle<()>> {
        self.thread.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl Drop for Handle {
    /// Stops the writer and waits for it: it commits what is queued, closes the database and releases the lock.
    /// Blocks the dropping thread for at most about one batch.
    fn drop(&mut self) {
        self.stop();
        if let Some(thread) = self.take_thread()
            && thread.join().is_err()
        {
            tracing::error!("the SQLite writer thread panicked");
        }
    }
}

fn thread_main(
    setup: Setup,
    rx: mpsc::Receiver<Op>,
    shutdown: oneshot::Receiver<()>,
    ready: oneshot::Sender<Result<(), OpenError>>,
) {
    let Setup { options, path, lock, batch_max, queue_bound: _, channel_cache, checkpoint_interval } = setup;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(OpenError::Writer(format!("cannot build the writer's runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let (conn, checkpointer) = match open(&options, &path).await {
            Ok(conns) => conns,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let dirty = Arc::new(Notify::new());
        let (stop_checkpoints, stopped) = oneshot::channel();
        let checkpoints = tokio::spawn(checkpoint_loop(checkpointer, dirty.clone(), stopped, checkpoint_interval));
        if ready.send(Ok(())).is_ok() {
            let mut writer = Writer {
                conn,
                batch_max,
                known: HashMap::new(),
                known_max: channel_cache,
                insert_sql: vec![None; INSERT_CHUNK + 1],
                dirty,
            };
            writer.serve(rx, shutdown).await;
            if let Err(e) = writer.conn.close().await {
                tracing::warn!(error = %e, path = %path.display(), "closing the SQLite writer connection failed");
            }
        } else {
            // `open` was cancelled: nobody will use the store.
            let _ = conn.close().await;
        }
        let _ = stop_checkpoints.send(());
        let _ = checkpoints.await;
        tracing::debug!(path = %path.display(), "SQLite writer stopped");
    });
    drop(runtime);
    // Only now may another store take over the database.
    drop(lock);
}

/// Opens the writer connection, applies the migrations and checks the journal mode; then opens the checkpointer's
/// connection.
async fn open(
    options: &SqliteConnectOptions,
    path: &std::path::Path,
) -> Result<(SqliteConnection, SqliteConnection), OpenError> {
    let database = |source| OpenError::Database { path: path.to_owned(), source };
    let mut conn = SqliteConnection::connect_with(options).await.map_err(database)?;
    MIGRATOR.run(&mut conn).await.map_err(|source| OpenError::Migrate { path: path.to_owned(), source })?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut conn).await.map_err(database)?;
    if !mode.eq_ignore_ascii_case("wal") {
        let _ = conn.close().await;
        return Err(OpenError::Unsupported {
            path: path.to_owned(),
            reason: format!("the file system does not support WAL journaling (journal_mode is {mode:?})"),
        });
    }
    match SqliteConnection::connect_with(options).await {
        Ok(checkpointer) => Ok((conn, checkpointer)),
        Err(e) => {
            let _ = conn.close().await;
            Err(database(e))
        }
    }
}

/// Copies committed WAL frames into the database file in the background (`PRAGMA wal_checkpoint(PASSIVE)`, which
/// never blocks the writer), at most every `interval` (`SqliteConfig::checkpoint_interval`) and only after commits. This keeps most
/// checkpoint work off the writer's commit path; the writer's own automatic checkpoint (at a larger WAL size)
/// remains as the backstop that also lets the WAL file restart from its beginning.
async fn checkpoint_loop(
    mut conn: SqliteConnection,
    dirty: Arc<Notify>,
    mut stop: oneshot::Receiver<()>,
    interval: std::time::Duration,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = dirty.notified() => {}
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
            tracing::debug!(error = %e, "background WAL checkpoint failed");
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the SQLite checkpointer connection failed");
    }
}

/// The writer's state.
struct Writer {
    conn: SqliteConnection,
    batch_max: usize,
    /// The committed last seq of channels known to exist.
    known: HashMap<ChannelId, Seq>,
    /// The most entries `known` holds; it is cleared when it would grow beyond.
    known_max: usize,
    /// `INSERT` statements by row count (1..=INSERT_CHUNK), built on first use.
    insert_sql: Vec<Option<Arc<str>>>,
    /// Wakes the background checkpointer after a commit.
    dirty: Arc<Notify>,
}

impl Writer {
    async fn serve(&mut self, mut rx: mpsc::Receiver<Op>, shutdown: oneshot::Receiver<()>) {
        let mut shutdown = Some(shutdown);
        let mut ops = Vec::with_capacity(self.batch_max);
        loop {
            let received = match shutdown.as_mut() {
                Some(signal) => tokio::select! {
                    n = rx.recv_many(&mut ops, self.batch_max) => n,
                    // A stop request, or the store dropped without one: drain what is queued, then finish.
                    _ = signal => {
                        rx.close();
                        shutdown = None;
                        continue;
                    }
                },
                None => rx.recv_many(&mut ops, self.batch_max).await,
            };
            if received == 0 {
                return;
            }
            let batch = std::mem::replace(&mut ops, Vec::with_capacity(self.batch_max));
            self.run_batch(batch).await;
        }
    }

    async fn run_batch(&mut self, ops: Vec<Op>) {
        let (requests, repliers): (Vec<Request>, Vec<Replier>) =
            ops.into_iter().map(|op| (op.request, op.reply)).unzip();
        match self.execute(requests).await {
            Ok((outcomes, seen)) => {
                self.dirty.notify_one();
                if self.known.len().saturating_add(seen.len()) > self.known_max {
                    self.known.clear();
                }
                self.known.extend(seen.into_iter().take(self.known_max));
                for (reply, outcome) in repliers.into_iter().zip(outcomes) {
                    reply.send(outcome);
                }
            }
            Err(failure) => {
                tracing::warn!(error = %failure, operations = repliers.len(), "SQLite write batch failed");
                // The database may hold more than the writer believes (a commit with an unknown outcome): forget
                // everything and read it again.
                self.known.clear();
                for reply in repliers {
                    reply.fail(failure.to_store_error());
                }
            }
        }
    }

    /// Runs one batch in one transaction. Returns the answers (in request order) and the last seqs of every
    /// channel the batch saw, as committed.
    async fn execute(
        &mut self,
        requests: Vec<Request>,
    ) -> Result<(Vec<Outcome>, HashMap<ChannelId, Seq>), BatchFailure> {
        let started = Instant::now();
        let Self { conn, known, insert_sql, .. } = self;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(BatchFailure::before_commit)?;
        let mut batch = Batch { committed: &*known, seen: HashMap::new() };
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(requests.len());
        let mut appends = Vec::new();
        for (i, request) in requests.into_iter().enumerate() {
            match request {
                Request::Append(msg) => {
                    appends.push((i, msg));
                    outcomes.push(None);
                }
                other => {
                    let outcome = batch.apply(&mut tx, other).await.map_err(BatchFailure::before_commit)?;
                    outcomes.push(Some(outcome));
                }
            }
        }
        let appended = appends.len();
        if !appends.is_empty() {
            batch.append_all(&mut tx, appends, &mut outcomes, insert_sql).await.map_err(BatchFailure::before_commit)?;
        }
        let committing = Instant::now();
        tx.commit().await.map_err(BatchFailure::at_commit)?;
        tracing::trace!(
            operations = outcomes.len(),
            appended,
            work_us = (committing - started).as_micros() as u64,
            commit_us = committing.elapsed().as_micros() as u64,
            "SQLite write batch committed"
        );
        let outcomes =
            outcomes.into_iter().map(|o| o.unwrap_or_else(|| Outcome::Unit(Err(bug("no answer"))))).collect();
        Ok((outcomes, batch.seen))
    }
}

/// The state of one batch's transaction.
struct Batch<'w> {
    /// What the writer knew before the batch (committed state).
    committed: &'w HashMap<ChannelId, Seq>,
    /// Channels this batch looked at or changed: their last seq inside the transaction.
    seen: HashMap<ChannelId, Seq>,
}

/// A resent message's identity.
type DedupKey = (ChannelId, UserId, ClientMsgId);

fn json(value: &impl serde::Serialize) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

impl Batch<'_> {
    /// The channel's last seq inside the transaction, or `None` when it does not exist.
    async fn last_seq(&mut self, conn: &mut SqliteConnection, id: &ChannelId) -> Result<Option<Seq>, sqlx::Error> {
        if let Some(seq) = self.seen.get(id).or_else(|| self.committed.get(id)) {
            return Ok(Some(*seq));
        }
        let row = sqlx::query("SELECT last_seq FROM channels WHERE id = ?1")
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let seq = rows::seq_column(&row).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        self.seen.insert(id.clone(), seq);
        Ok(Some(seq))
    }

    /// Inserts the channel row unless it exists; true when inserted.
    async fn insert_channel(conn: &mut SqliteConnection, channel: &Channel) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO channels (id, kind, created_by, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(channel.id.as_str())
        .bind(channel.kind().prefix())
        .bind(channel.created_by.as_str())
        .bind(channel.created_at)
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_members(
        conn: impl SqliteExecutor<'_>,
        id: &ChannelId,
        users: &[UserId],
    ) -> Result<(), sqlx::Error> {
        if users.is_empty() {
            return Ok(());
        }
        let users: Vec<&str> = users.iter().map(UserId::as_str).collect();
        sqlx::query("INSERT OR IGNORE INTO members (channel, user_id) SELECT ?1, value FROM json_each(?2)")
            .bind(id.as_str())
            .bind(json(&users)?)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Applies one operation other than an append.
    async fn apply(&mut self, conn: &mut SqliteConnection, request: Request) -> Result<Outcome, sqlx::Error> {
        Ok(match request {
            Request::Append(_) => Outcome::Appended(Err(bug("append in apply"))),
            Request::CreateChannel(channel, members) => {
                if self.last_seq(conn, &channel.id).await?.is_some() || !Self::insert_channel(conn, &channel).await? {
                    return Ok(Outcome::Unit(Err(StoreError::ChannelExists(channel.id))));
                }
                Self::insert_members(&mut *conn, &channel.id, &members).await?;
                self.seen.insert(channel.id, 0);
                Outcome::Unit(Ok(()))
            }
            Request::EnsureChannel(channel, members) => {
                if self.last_seq(conn, &channel.id).await?.is_none() && Self::insert_channel(conn, &channel).await? {
                    Self::insert_members(&mut *conn, &channel.id, &members).await?;
                    self.seen.insert(channel.id.clone(), 0);
                    return Ok(Outcome::Channel(Ok(channel)));
                }
                let row = sqlx::query("SELECT created_by, created_at FROM channels WHERE id = ?1")
                    .bind(channel.id.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
                Outcome::Channel(rows::channel(&channel.id, &row))
            }
            Request::AddMembers(id, users) => {
                if self.last_seq(conn, &id).await?.is_none() {
                    return Ok(Outcome::Unit(Err(StoreError::ChannelNotFound(id))));
                }
                Self::insert_members(&mut *conn, &id, &users).await?;
                Outcome::Unit(Ok(()))
            }
            Request::RemoveMember(id, user) => {
                if self.last_seq(conn, &id).await?.is_none() {
                    return Ok(Outcome::Unit(Err(StoreError::ChannelNotFound(id))));
                }
                sqlx::query("DELETE FROM members WHERE channel = ?1 AND user_id = ?2")
                    .bind(id.as_str())
                    .bind(user.as_str())
                    .execute(&mut *conn)
                    .await?;
                Outcome::Unit(Ok(()))
            }
            Request::SetCursor(id, user, kind, seq) => {
                if self.last_seq(conn, &id).await?.is_none() {
                    return Ok(Outcome::Seq(Err(StoreError::ChannelNotFound(id))));
                }
                let row = sqlx::query(
                    "INSERT INTO cursors (channel, user_id, kind, seq) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (channel, user_id, kind) DO UPDATE SET seq = max(seq, excluded.seq) RETURNING seq",
                )
                .bind(id.as_str())
                .bind(user.as_str())
                .bind(cursor_kind_str(kind))
                .bind(int(seq))
                .fetch_one(&mut *conn)
                .await?;
                Outcome::Seq(rows::seq_column(&row))
            }
        })
    }

    /// Appends every message of the batch: assigns seqs, answers duplicates with their originals, inserts the new
    /// rows and advances the channels' `last_seq`. `appends` holds (request index, message) in queue order.
    async fn append_all(
        &mut self,
        conn: &mut SqliteConnection,
        appends: Vec<(usize, NewMessage)>,
        outcomes: &mut [Option<Outcome>],
        insert_sql: &mut [Option<Arc<str>>],
    ) -> Result<(), sqlx::Error> {
        self.load_channels(conn, appends.iter().map(|(_, m)| &m.channel)).await?;
        let mut originals = self.load_originals(conn, &appends).await?;

        let mut fresh: Vec<Message> = Vec::with_capacity(appends.len());
        let mut advanced: HashMap<ChannelId, Seq> = HashMap::new();
        for (i, msg) in appends {
            let Some(last) = self.seen.get_mut(&msg.channel) else {
                outcomes[i] = Some(Outcome::Appended(Err(StoreError::ChannelNotFound(msg.channel))));
                continue;
            };
            let key = msg.client_id.clone().map(|c| (msg.channel.clone(), msg.sender.clone(), c));
            if let Some(original) = key.as_ref().and_then(|k| originals.get(k)) {
                outcomes[i] = Some(Outcome::Appended(Ok(Appended { message: original.clone(), duplicate: true })));
                continue;
            }
            *last += 1;
            let message = msg.into_message(*last);
            advanced.insert(message.channel.clone(), *last);
            if let Some(key) = key {
                originals.insert(key, message.clone());
            }
            outcomes[i] = Some(Outcome::Appended(Ok(Appended { message: message.clone(), duplicate: false })));
            fresh.push(message);
        }

        for chunk in fresh.chunks(INSERT_CHUNK) {
            let sql = insert_sql[chunk.len()].get_or_insert_with(|| insert_statement(chunk.len())).clone();
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for m in chunk {
                query = query
                    .bind(m.channel.as_str())
                    .bind(int(m.seq))
                    .bind(m.id.0.as_bytes().as_slice())
                    .bind(m.sender.as_str())
                    .bind(m.client_id.as_ref().map(ClientMsgId::as_str))
                    .bind(kind_str(m.kind))
                    .bind(m.refers.map(int))
                    .bind(m.ts)
                    .bind(m.body.get());
            }
            query.execute(&mut *conn).await?;
        }

        if !advanced.is_empty() {
            let updates: Vec<(&str, Seq)> = advanced.iter().map(|(c, s)| (c.as_str(), *s)).collect();
            sqlx::query(
                "UPDATE OR FAIL channels SET last_seq = j.value ->> 1 FROM json_each(?1) AS j WHERE channels.id = j.value ->> 0",
            )
            .bind(json(&updates)?)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Loads into `seen` the last seq of each channel neither `seen` nor `committed` knows, in one query.
    /// Channels that do not exist stay unknown.
    async fn load_channels<'m>(
        &mut self,
        conn: &mut SqliteConnection,
        channels: impl Iterator<Item = &'m ChannelId>,
    ) -> Result<(), sqlx::Error> {
        let mut missing: Vec<&str> = Vec::new();
        for id in channels {
            if self.seen.contains_key(id) {
                continue;
            }
            if let Some(seq) = self.committed.get(id) {
                self.seen.insert(id.clone(), *seq);
            } else if !missing.contains(&id.as_str()) {
                missing.push(id.as_str());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let found = sqlx::query("SELECT id, last_seq FROM channels WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(json(&missing)?)
            .fetch_all(&mut *conn)
            .await?;
        for row in found {
            let id: &str = row.try_get(0)?;
            let seq: i64 = row.try_get(1)?;
            let id = ChannelId::new(id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let seq = Seq::try_from(seq).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            self.seen.insert(id, seq);
        }
        Ok(())
    }

    /// The stored messages of every client id the appends carry, in one query (existing channels only).
    async fn load_originals(
        &self,
        conn: &mut SqliteConnection,
        appends: &[(usize, NewMessage)],
    ) -> Result<HashMap<DedupKey, Message>, sqlx::Error> {
        let mut keys: Vec<DedupKey> = Vec::new();
        let mut index: HashMap<DedupKey, ()> = HashMap::new();
        for (_, m) in appends {
            let Some(cid) = &m.client_id else { continue };
            if !self.seen.contains_key(&m.channel) {
                continue;
            }
            if let Entry::Vacant(e) = index.entry((m.channel.clone(), m.sender.clone(), cid.clone())) {
                keys.push(e.key().clone());
                e.insert(());
            }
        }
        let mut found = HashMap::new();
        if keys.is_empty() {
            return Ok(found);
        }
        let wire: Vec<(&str, &str, &str)> =
            keys.iter().map(|(c, s, id)| (c.as_str(), s.as_str(), id.as_str())).collect();
        // The columns of `rows::message`, qualified (json_each has an `id` column too), then the key's index.
        let sql = "SELECT m.seq, m.id, m.sender, m.client_id, m.kind, m.refers, m.ts, m.body, j.key \
                   FROM json_each(?1) AS j JOIN messages AS m \
                   ON m.channel = j.value ->> 0 AND m.sender = j.value ->> 1 AND m.client_id = j.value ->> 2";
        for row in sqlx::query(sql).bind(json(&wire)?).fetch_all(&mut *conn).await? {
            let at: i64 = row.try_get(8)?;
            let key = usize::try_from(at).ok().and_then(|i| keys.get(i)).ok_or_else(|| {
                sqlx::Error::Decode(format!("json_each returned key {at} for {} keys", keys.len()).into())
            })?;
            let message = rows::message(&key.0, &row).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            found.insert(key.clone(), message);
        }
        Ok(found)
    }
}

/// `INSERT OR FAIL INTO messages ... VALUES (...), (...)` with `rows` rows.
///
/// `OR FAIL` rather than the default `OR ABORT`: a failing statement fails the whole batch anyway, and without
/// statement-level rollback SQLite keeps no statement journal (a copy of every page the statement changes).
fn insert_statement(rows: usize) -> Arc<str> {
    let mut sql = String::from(
        "INSERT OR FAIL INTO messages (channel, seq, id, sender, client_id, kind, refers, ts, body) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?,?)");
    }
    Arc::from(sql)
}
