//! The main database's writer: one connection on its own thread, fed by a bounded queue, committing every waiting
//! channel, membership and cursor operation in one `BEGIN IMMEDIATE` transaction (group commit); and the folder,
//! which moves appended messages from the in-memory [`Tail`] into the clustered `messages` table.
//!
//! A batch is whatever is queued when the writer gets to it, up to `batch_max` operations, applied in queue order.
//! Every waiter is answered only after `COMMIT` returned; if anything fails, the transaction is rolled back, every
//! waiter of the batch gets the error, and the writer goes on with the next batch.
//!
//! Appends do not come here: the appender (`log.rs`) commits them to the append log and puts them into the tail.
//! The writer folds the tail into `messages` every `fold_interval`, or as soon as `fold_rows` rows wait: a fold
//! takes every row up to the tail's newest log position, sorted by (channel, seq), and inserts them in
//! transactions of about `fold_chunk_rows` rows (between which queued operations run), advancing each channel's
//! `last_seq` in the same transaction as its rows. The last transaction of a fold also records the fold's
//! watermark (`log_watermark.folded_upto`). Rows leave the tail only after the transaction holding them committed;
//! the append log's segments up to the watermark are reused only after the watermark committed. Each channel's
//! tail pages are thus written once per fold instead of once per append batch.
//!
//! The writer is the only writer of the main database (the lock file guarantees it), so it keeps the ids of
//! existing channels in memory (a bounded set, cleared when full and after any failure).

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use herald_core::id::{ChannelId, ClientMsgId, UserId};
use herald_core::model::{Channel, CursorKind, Message, Seq};
use herald_core::store::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection, SqliteExecutor};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::{BatchFailure, Closed, OpenError, WriterGone};
use crate::lock::WriterLock;
use crate::log::Folded;
use crate::rows::{self, cursor_kind_str, int, kind_str};
use crate::tail::{FoldChannel, Tail};
use crate::worker::Worker;

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
    /// Fold everything appended so far; answered once it is in the main database.
    Fold,
    CreateChannel(Channel, Vec<UserId>),
    EnsureChannel(Channel, Vec<UserId>),
    AddMembers(ChannelId, Vec<UserId>),
    RemoveMember(ChannelId, UserId),
    SetCursor(ChannelId, UserId, CursorKind, Seq),
}

/// Where an operation's answer goes.
#[derive(Debug)]
pub(crate) enum Replier {
    Unit(Reply<()>),
    Channel(Reply<Channel>),
    Seq(Reply<Seq>),
}

/// An operation's answer, kept until the batch committed.
#[derive(Debug)]
enum Outcome {
    Unit(Result<(), StoreError>),
    Channel(Result<Channel, StoreError>),
    Seq(Result<Seq, StoreError>),
}

impl Replier {
    fn send(self, outcome: Outcome) {
        // A waiter that gave up (its future was dropped) no longer listens: ignore send failures.
        match (self, outcome) {
            (Self::Unit(r), Outcome::Unit(o)) => drop(r.send(o)),
            (Self::Channel(r), Outcome::Channel(o)) => drop(r.send(o)),
            (Self::Seq(r), Outcome::Seq(o)) => drop(r.send(o)),
            (r, _) => r.fail(bug("mismatched answer")),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
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
    pub(crate) checkpoint_interval: Duration,
    pub(crate) tail: Arc<Tail>,
    pub(crate) folded: Arc<Folded>,
    pub(crate) fold_interval: Duration,
    pub(crate) fold_chunk_rows: usize,
}

/// The store's side of the writer: the queue, and the means to stop the thread.
#[derive(Debug)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Op>,
    /// Declared after `tx`: dropping the handle closes the queue first, then stops the thread and waits for it.
    worker: Worker,
}

impl Handle {
    /// Starts the writer thread; it opens the database, migrates it and then serves the queue. Resolves once the
    /// database is ready (or failed to open).
    pub(crate) async fn start(setup: Setup) -> Result<Self, OpenError> {
        let (tx, rx) = mpsc::channel(setup.queue_bound);
        let worker = Worker::spawn("writer", move |shutdown, ready| thread_main(setup, rx, shutdown, ready)).await?;
        Ok(Self { tx, worker })
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
        self.worker.stop();
    }

    /// The writer thread, unless it was taken already.
    pub(crate) fn take_thread(&self) -> Option<JoinHandle<()>> {
        self.worker.take_thread()
    }
}

fn thread_main(
    setup: Setup,
    rx: mpsc::Receiver<Op>,
    shutdown: oneshot::Receiver<()>,
    ready: oneshot::Sender<Result<(), OpenError>>,
) {
    let Setup {
        options,
        path,
        lock,
        batch_max,
        queue_bound: _,
        channel_cache,
        checkpoint_interval,
        tail,
        folded,
        fold_interval,
        fold_chunk_rows,
    } = setup;
    let Some((runtime, ready)) = crate::worker::runtime("writer", ready) else { return };
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
                known: HashSet::new(),
                known_max: channel_cache,
                insert_sql: vec![None; INSERT_CHUNK + 1],
                dirty,
                tail,
                folded,
                fold_interval,
                fold_chunk_rows,
                fold: None,
                fold_waiters: Vec::new(),
                folded_upto: 0,
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
pub(crate) async fn checkpoint_loop(
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
    /// Channels known to exist (committed).
    known: HashSet<ChannelId>,
    /// The most entries `known` holds; it is cleared when it would grow beyond.
    known_max: usize,
    /// `INSERT` statements by row count (1..=INSERT_CHUNK), built on first use.
    insert_sql: Vec<Option<Arc<str>>>,
    /// Wakes the background checkpointer after a commit.
    dirty: Arc<Notify>,
    /// The appended rows waiting to be folded.
    tail: Arc<Tail>,
    /// Where committed watermarks go (the segment keeper reuses the log's segments up to them).
    folded: Arc<Folded>,
    fold_interval: Duration,
    fold_chunk_rows: usize,
    /// The fold in progress.
    fold: Option<Fold>,
    /// `Request::Fold` callers: the log position they wait for, and their answer.
    fold_waiters: Vec<(i64, Replier)>,
    /// The watermark of the last completed fold.
    folded_upto: i64,
}

/// A fold in progress: what it still has to copy.
struct Fold {
    /// Every tail row up to this log position is part of the fold.
    upto: i64,
    /// The channels not yet copied (or partly copied: the front one), sorted by id.
    rest: VecDeque<FoldChannel>,
}

impl Writer {
    async fn serve(&mut self, mut rx: mpsc::Receiver<Op>, shutdown: oneshot::Receiver<()>) {
        let mut shutdown = Some(shutdown);
        let mut ops = Vec::with_capacity(self.batch_max);
        let tail = self.tail.clone();
        let mut next_fold = tokio::time::Instant::now() + self.fold_interval;
        loop {
            let folding = self.fold.is_some();
            let received = match shutdown.as_mut() {
                Some(signal) => tokio::select! {
                    n = rx.recv_many(&mut ops, self.batch_max) => n,
                    // A fold in progress goes on between batches.
                    () = std::future::ready(()), if folding => {
                        self.fold_step().await;
                        continue;
                    }
                    () = tail.full.notified(), if !folding => {
                        self.start_fold();
                        next_fold = tokio::time::Instant::now() + self.fold_interval;
                        continue;
                    }
                    () = tokio::time::sleep_until(next_fold), if !folding => {
                        self.start_fold();
                        next_fold = tokio::time::Instant::now() + self.fold_interval;
                        continue;
                    }
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
                // Unfolded rows stay in the append log; the next open loads them again.
                self.fail_fold_waiters(|| StoreError::Unavailable(Box::new(Closed)));
                return;
            }
            let batch = std::mem::replace(&mut ops, Vec::with_capacity(self.batch_max));
            self.run_batch(batch).await;
        }
    }

    /// Starts a fold of every tail row up to the newest log position, unless one runs already or there is
    /// nothing to fold.
    fn start_fold(&mut self) {
        if self.fold.is_some() {
            return;
        }
        let upto = self.tail.last_pos();
        if upto <= self.folded_upto {
            self.answer_folded();
            return;
        }
        let rest = self.tail.fold_plan(upto).into();
        self.fold = Some(Fold { upto, rest });
    }

    /// Answers the `Request::Fold` callers whose position is folded.
    fn answer_folded(&mut self) {
        let folded = self.folded_upto;
        let (done, waiting) = std::mem::take(&mut self.fold_waiters).into_iter().partition(|(pos, _)| *pos <= folded);
        self.fold_waiters = waiting;
        for (_, reply) in done {
            reply.send(Outcome::Unit(Ok(())));
        }
    }

    /// Fails every `Request::Fold` caller.
    fn fail_fold_waiters(&mut self, error: impl Fn() -> StoreError) {
        for (_, reply) in std::mem::take(&mut self.fold_waiters) {
            reply.fail(error());
        }
    }

    /// Copies the next chunk of the fold in progress (about `fold_chunk_rows` rows) in one transaction; the last
    /// chunk also records the watermark. Rows leave the tail only after the commit.
    async fn fold_step(&mut self) {
        let Some(fold) = self.fold.as_mut() else { return };
        let upto = fold.upto;
        // Take whole channels while they fit; a channel larger than the room left is split.
        let mut chunk: Vec<FoldChannel> = Vec::new();
        let mut rows = 0;
        while rows < self.fold_chunk_rows {
            let Some(front) = fold.rest.front_mut() else { break };
            let room = self.fold_chunk_rows - rows;
            if front.messages.len() <= room {
                rows += front.messages.len();
                if let Some(whole) = fold.rest.pop_front() {
                    chunk.push(whole);
                }
            } else {
                let messages: Vec<Arc<Message>> = front.messages.drain(..room).collect();
                rows += messages.len();
                chunk.push(FoldChannel { channel: front.channel.clone(), messages });
            }
        }
        let last = fold.rest.is_empty();
        let started = Instant::now();
        let result = self.fold_chunk(&chunk, last.then_some(upto)).await;
        match result {
            Ok(()) => {
                self.dirty.notify_one();
                self.tail.remove_folded(chunk.iter().filter_map(|c| c.messages.last().map(|m| (&c.channel, m.seq))));
                tracing::trace!(rows, last, us = started.elapsed().as_micros() as u64, "SQLite fold chunk committed");
                if last {
                    self.fold = None;
                    self.folded_upto = upto;
                    self.folded.advance(upto);
                    self.answer_folded();
                    // Callers who asked for later rows: fold again.
                    if !self.fold_waiters.is_empty() {
                        self.start_fold();
                    }
                }
            }
            Err(e) => {
                // Nothing of this chunk left the tail; the next fold takes it again.
                tracing::warn!(error = %e, "SQLite fold failed; it is retried at the next fold");
                self.fold = None;
                self.known.clear();
                let failure = BatchFailure::at_commit(e);
                self.fail_fold_waiters(|| failure.to_store_error());
            }
        }
    }

    /// One fold transaction: inserts `chunk`'s rows (channels sorted, seqs ascending), advances the channels'
    /// `last_seq`, and records `watermark` if given.
    async fn fold_chunk(&mut self, chunk: &[FoldChannel], watermark: Option<i64>) -> Result<(), sqlx::Error> {
        let Self { conn, insert_sql, .. } = self;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let messages: Vec<&Message> = chunk.iter().flat_map(|c| c.messages.iter().map(|m| &**m)).collect();
        for part in messages.chunks(INSERT_CHUNK) {
            let sql = insert_sql[part.len()].get_or_insert_with(|| insert_statement(FOLD_HEAD, 9, part.len())).clone();
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for m in part {
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
            query.execute(&mut *tx).await?;
        }
        let updates: Vec<(&str, Seq)> =
            chunk.iter().filter_map(|c| c.messages.last().map(|m| (c.channel.as_str(), m.seq))).collect();
        if !updates.is_empty() {
            sqlx::query(
                "UPDATE OR FAIL channels SET last_seq = max(last_seq, j.value ->> 1) FROM json_each(?1) AS j \
                 WHERE channels.id = j.value ->> 0",
            )
            .bind(json(&updates)?)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(pos) = watermark {
            sqlx::query(
                "INSERT INTO log_watermark (id, folded_upto) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET folded_upto = max(folded_upto, excluded.folded_upto)",
            )
            .bind(pos)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    async fn run_batch(&mut self, ops: Vec<Op>) {
        let mut requests = Vec::with_capacity(ops.len());
        let mut repliers = Vec::with_capacity(ops.len());
        for op in ops {
            if let Request::Fold = op.request {
                self.fold_waiters.push((self.tail.last_pos(), op.reply));
                self.start_fold();
            } else {
                requests.push(op.request);
                repliers.push(op.reply);
            }
        }
        if requests.is_empty() {
            return;
        }
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
                self.known.clear();
                for reply in repliers {
                    reply.fail(failure.to_store_error());
                }
            }
        }
    }

    /// Runs one batch in one transaction. Returns the answers (in request order) and the channels the batch found
    /// or created, as committed.
    async fn execute(&mut self, requests: Vec<Request>) -> Result<(Vec<Outcome>, HashSet<ChannelId>), BatchFailure> {
        let started = Instant::now();
        let Self { conn, known, .. } = self;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(BatchFailure::before_commit)?;
        let mut batch = Batch { committed: &*known, seen: HashSet::new() };
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            outcomes.push(batch.apply(&mut tx, request).await.map_err(BatchFailure::before_commit)?);
        }
        let committing = Instant::now();
        tx.commit().await.map_err(BatchFailure::at_commit)?;
        tracing::trace!(
            operations = outcomes.len(),
            work_us = (committing - started).as_micros() as u64,
            commit_us = committing.elapsed().as_micros() as u64,
            "SQLite write batch committed"
        );
        Ok((outcomes, batch.seen))
    }
}

/// The columns a fold's `INSERT` names, in bind order. `OR IGNORE`: after a crash between a fold's transactions
/// (before its watermark committed), rows come back from the log that `messages` holds already.
const FOLD_HEAD: &str =
    "INSERT OR IGNORE INTO messages (channel, seq, id, sender, client_id, kind, refers, ts, body) VALUES ";

/// The state of one batch's transaction.
struct Batch<'w> {
    /// Channels known to exist before the batch (committed state).
    committed: &'w HashSet<ChannelId>,
    /// Channels this batch found or created.
    seen: HashSet<ChannelId>,
}

/// `value` as JSON text, for a `json_each` argument.
pub(crate) fn json(value: &impl serde::Serialize) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

impl Batch<'_> {
    /// Whether the channel exists inside the transaction.
    async fn exists(&mut self, conn: &mut SqliteConnection, id: &ChannelId) -> Result<bool, sqlx::Error> {
        if self.seen.contains(id) || self.committed.contains(id) {
            return Ok(true);
        }
        let row =
            sqlx::query("SELECT 1 FROM channels WHERE id = ?1").bind(id.as_str()).fetch_optional(&mut *conn).await?;
        if row.is_some() {
            self.seen.insert(id.clone());
        }
        Ok(row.is_some())
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
            Request::Fold => Outcome::Unit(Err(bug("fold in apply"))),
            Request::CreateChannel(channel, members) => {
                if self.exists(conn, &channel.id).await? || !Self::insert_channel(conn, &channel).await? {
                    return Ok(Outcome::Unit(Err(StoreError::ChannelExists(channel.id))));
                }
                Self::insert_members(&mut *conn, &channel.id, &members).await?;
                self.seen.insert(channel.id);
                Outcome::Unit(Ok(()))
            }
            Request::EnsureChannel(channel, members) => {
                if !self.exists(conn, &channel.id).await? && Self::insert_channel(conn, &channel).await? {
                    Self::insert_members(&mut *conn, &channel.id, &members).await?;
                    self.seen.insert(channel.id.clone());
                    return Ok(Outcome::Channel(Ok(channel)));
                }
                let row = sqlx::query("SELECT created_by, created_at FROM channels WHERE id = ?1")
                    .bind(channel.id.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
                Outcome::Channel(rows::channel(&channel.id, &row))
            }
            Request::AddMembers(id, users) => {
                if !self.exists(conn, &id).await? {
                    return Ok(Outcome::Unit(Err(StoreError::ChannelNotFound(id))));
                }
                Self::insert_members(&mut *conn, &id, &users).await?;
                Outcome::Unit(Ok(()))
            }
            Request::RemoveMember(id, user) => {
                if !self.exists(conn, &id).await? {
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
                if !self.exists(conn, &id).await? {
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
}

/// `head` (`INSERT ... VALUES `) followed by `rows` placeholder tuples of `columns` parameters each.
///
/// Neither `OR FAIL` nor `OR IGNORE` statements need statement-level rollback, so SQLite keeps no statement
/// journal (a copy of every page the statement changes) for them.
pub(crate) fn insert_statement(head: &str, columns: usize, rows: usize) -> Arc<str> {
    let tuple = format!("({})", vec!["?"; columns].join(","));
    let mut sql = String::from(head);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&tuple);
    }
    Arc::from(sql)
}
