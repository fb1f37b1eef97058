//! The appender: the durable append path, on its own thread, with its own database file (the append log).
//!
//! The append log is one rowid table with no other index: `log(pos INTEGER PRIMARY KEY, <message columns>)`. Every
//! batch of appends (whatever is queued, up to `batch_max`) is one transaction that only adds rows at the end of
//! that table, so a commit writes about the rows' own bytes whatever the number of channels they span. The batch
//! is committed with `synchronous = FULL` before any waiter is answered; then its rows go into the in-memory
//! [`Tail`], where readers find them until the folder (the main database's writer, `writer.rs`) has copied them
//! into the channels' clustered `messages` table.
//!
//! The appender is the only one to assign seqs. It keeps each channel's last seq in a bounded map; on a miss it
//! asks the tail (which holds the newest rows of the channel, if any) and then the main database
//! (`channels.last_seq`, advanced by every fold in the same transaction as the rows it folds) and takes the larger.
//! In that order the answer is always current: rows leave the tail only after the fold that moved them committed.
//! Resent client ids are looked up the same way: the tail's dedup map, then the main database's unique index.
//!
//! After a fold committed its watermark (`log_watermark.folded_upto`, in the main database), the appender deletes
//! the log rows up to it, in its next transaction. At open it does the same, then loads what is left of the log
//! into the tail: those rows are acknowledged but maybe not folded.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use herald_core::id::{ChannelId, ClientMsgId};
use herald_core::model::{Appended, Message, NewMessage, Seq};
use herald_core::store::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::{BatchFailure, Closed, OpenError, WriterGone};
use crate::rows::{self, int, kind_str, message_columns};
use crate::tail::{DedupKey, Tail};
use crate::worker::Worker;
use crate::writer::{INSERT_CHUNK, checkpoint_loop, insert_statement, json};

/// The append log's schema (created when missing).
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS log (
    pos        INTEGER PRIMARY KEY,
    channel    TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    id         BLOB    NOT NULL,
    sender     TEXT    NOT NULL,
    client_id  TEXT,
    kind       TEXT    NOT NULL,
    refers     INTEGER,
    ts         INTEGER NOT NULL,
    body       TEXT    NOT NULL
)";

/// The log's columns an `INSERT` names, in bind order.
const INSERT_HEAD: &str = "INSERT INTO log (pos, channel, seq, id, sender, client_id, kind, refers, ts, body) VALUES ";

/// Where the folder tells the appender how far the main database holds the log.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    /// The highest position folded and committed in the main database.
    upto: AtomicI64,
    /// Signalled when `upto` grew.
    changed: Notify,
}

impl Folded {
    /// Records a committed fold up to `pos`.
    pub(crate) fn advance(&self, pos: i64) {
        self.upto.fetch_max(pos, Ordering::AcqRel);
        self.changed.notify_one();
    }

    fn get(&self) -> i64 {
        self.upto.load(Ordering::Acquire)
    }
}

/// What the appender thread needs.
#[derive(Debug)]
pub(crate) struct Setup {
    /// The append log's database.
    pub(crate) options: SqliteConnectOptions,
    /// A read-only connection to the main database (channels, folded messages, the watermark).
    pub(crate) main: SqliteConnectOptions,
    pub(crate) path: PathBuf,
    pub(crate) batch_max: usize,
    pub(crate) queue_bound: usize,
    pub(crate) channel_cache: usize,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) tail: Arc<Tail>,
    pub(crate) folded: Arc<Folded>,
}

/// One queued append.
#[derive(Debug)]
struct Op {
    msg: NewMessage,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// The store's side of the appender.
#[derive(Debug)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Op>,
    /// Declared after `tx`: dropping the handle closes the queue first, then stops the thread and waits for it.
    worker: Worker,
}

impl Handle {
    /// Starts the appender: it opens the log, deletes what the main database holds already, loads the rest into
    /// the tail, and then serves appends. Resolves once that is done (or failed).
    pub(crate) async fn start(setup: Setup) -> Result<Self, OpenError> {
        let (tx, rx) = mpsc::channel(setup.queue_bound);
        let worker = Worker::spawn("appender", move |shutdown, ready| thread_main(setup, rx, shutdown, ready)).await?;
        Ok(Self { tx, worker })
    }

    /// Queues an append (waiting while the queue is full) and waits for its answer.
    pub(crate) async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Op { msg, reply }).await.map_err(|_| StoreError::Unavailable(Box::new(Closed)))?;
        answer.await.unwrap_or_else(|_| Err(StoreError::Internal(Box::new(WriterGone))))
    }

    /// Asks the appender to finish: it refuses new appends, commits those already queued and closes the log.
    pub(crate) fn stop(&self) {
        self.worker.stop();
    }

    /// The appender thread, unless it was taken already.
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
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(OpenError::Writer(format!("cannot build the appender's runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let path = setup.path.clone();
        let (mut appender, checkpointer) = match Appender::open(&setup).await {
            Ok(opened) => opened,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let dirty = Arc::new(Notify::new());
        appender.dirty = dirty.clone();
        let (stop_checkpoints, stopped) = oneshot::channel();
        let checkpoints = tokio::spawn(checkpoint_loop(checkpointer, dirty, stopped, setup.checkpoint_interval));
        if ready.send(Ok(())).is_ok() {
            appender.serve(rx, shutdown).await;
        }
        appender.close().await;
        let _ = stop_checkpoints.send(());
        let _ = checkpoints.await;
        tracing::debug!(path = %path.display(), "SQLite appender stopped");
    });
}

/// The appender's state.
struct Appender {
    /// The append log.
    log: SqliteConnection,
    /// Read-only, to the main database.
    main: SqliteConnection,
    batch_max: usize,
    /// The last seq of channels known to exist (committed in the log or the main database).
    known: HashMap<ChannelId, Seq>,
    known_max: usize,
    /// The next log position.
    next_pos: i64,
    /// Log rows up to this position are deleted.
    deleted: i64,
    /// A batch failed and re-reading the log afterwards failed too: the log may hold rows the tail lacks, so it
    /// must be read again before the next batch.
    resync: bool,
    tail: Arc<Tail>,
    folded: Arc<Folded>,
    /// `INSERT` statements by row count, built on first use.
    insert_sql: Vec<Option<Arc<str>>>,
    /// Wakes the log's background checkpointer after a commit.
    dirty: Arc<Notify>,
}

impl Appender {
    /// Opens the log (creating it), deletes what the main database holds already and loads the rest into the tail.
    /// Returns the appender and the checkpointer's connection.
    async fn open(setup: &Setup) -> Result<(Self, SqliteConnection), OpenError> {
        let database = |source| OpenError::Database { path: setup.path.clone(), source };
        let log = SqliteConnection::connect_with(&setup.options).await.map_err(database)?;
        let main = match SqliteConnection::connect_with(&setup.main).await {
            Ok(c) => c,
            Err(e) => {
                let _ = log.close().await;
                return Err(database(e));
            }
        };
        let mut appender = Self {
            log,
            main,
            batch_max: setup.batch_max,
            known: HashMap::new(),
            known_max: setup.channel_cache,
            next_pos: 1,
            deleted: 0,
            resync: false,
            tail: setup.tail.clone(),
            folded: setup.folded.clone(),
            insert_sql: vec![None; INSERT_CHUNK + 1],
            dirty: Arc::new(Notify::new()),
        };
        let recovered = appender.recover(setup).await;
        let checkpointer = match recovered {
            Ok(()) => SqliteConnection::connect_with(&setup.options).await.map_err(database),
            Err(e) => Err(e),
        };
        match checkpointer {
            Ok(c) => Ok((appender, c)),
            Err(e) => {
                appender.close().await;
                Err(e)
            }
        }
    }

    async fn recover(&mut self, setup: &Setup) -> Result<(), OpenError> {
        let database = |source| OpenError::Database { path: setup.path.clone(), source };
        let mode: String =
            sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut self.log).await.map_err(database)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::Unsupported {
                path: setup.path.clone(),
                reason: format!("the file system does not support WAL journaling (journal_mode is {mode:?})"),
            });
        }
        sqlx::query(SCHEMA).execute(&mut self.log).await.map_err(database)?;
        let watermark: Option<i64> = sqlx::query_scalar("SELECT folded_upto FROM log_watermark WHERE id = 1")
            .fetch_optional(&mut self.main)
            .await
            .map_err(database)?;
        let watermark = watermark.unwrap_or(0);
        sqlx::query("DELETE FROM log WHERE pos <= ?1")
            .bind(watermark)
            .execute(&mut self.log)
            .await
            .map_err(database)?;
        self.deleted = watermark;
        self.folded.advance(watermark);
        let last = self.load_log_after(watermark).await.map_err(database)?;
        // Positions continue beyond both the log and the watermark: a log file deleted or replaced by an older one
        // must never make new rows look folded.
        self.next_pos = last.max(watermark).saturating_add(1);
        tracing::debug!(
            path = %setup.path.display(),
            watermark,
            unfolded = self.tail.rows(),
            "SQLite append log recovered"
        );
        Ok(())
    }

    /// Loads the log rows with `pos > after` into the tail (they are committed); returns the highest position
    /// found (or `after`).
    async fn load_log_after(&mut self, after: i64) -> Result<i64, sqlx::Error> {
        let sql = concat!("SELECT ", message_columns!(), ", channel, pos FROM log WHERE pos > ?1 ORDER BY pos");
        let found = sqlx::query(sql).bind(after).fetch_all(&mut self.log).await?;
        let mut last = after;
        let mut loaded = Vec::with_capacity(found.len());
        let decode = |e: StoreError| sqlx::Error::Decode(Box::new(e));
        for row in &found {
            let channel: &str = row.try_get(8)?;
            let channel = ChannelId::new(channel).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let pos: i64 = row.try_get(9)?;
            let message = rows::message(&channel, row).map_err(decode)?;
            // A row the tail holds already (after a failed commit that did commit, it is loaded again).
            if self.tail.get(&channel, message.seq).is_some() {
                last = last.max(pos);
                continue;
            }
            last = last.max(pos);
            loaded.push(crate::tail::Row { pos, message: Arc::new(message) });
        }
        self.tail.add(loaded);
        Ok(last)
    }

    async fn close(self) {
        let Self { log, main, .. } = self;
        if let Err(e) = log.close().await {
            tracing::warn!(error = %e, "closing the SQLite append log failed");
        }
        let _ = main.close().await;
    }

    async fn serve(&mut self, mut rx: mpsc::Receiver<Op>, shutdown: oneshot::Receiver<()>) {
        let mut shutdown = Some(shutdown);
        let mut ops = Vec::with_capacity(self.batch_max);
        let folded = self.folded.clone();
        loop {
            let received = match shutdown.as_mut() {
                Some(signal) => tokio::select! {
                    n = rx.recv_many(&mut ops, self.batch_max) => n,
                    // Folded rows to delete while no appends come.
                    _ = folded.changed.notified() => {
                        if self.folded.get() > self.deleted {
                            self.delete_folded().await;
                        }
                        continue;
                    }
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

    /// Waits until the tail has room (the folder removes rows after each fold).
    async fn wait_for_room(&self) {
        loop {
            let room = self.tail.space.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.tail.rows() < self.tail.max_rows {
                return;
            }
            // Make sure the folder knows.
            self.tail.full.notify_one();
            room.await;
        }
    }

    /// Deletes the folded log rows in a transaction of their own.
    async fn delete_folded(&mut self) {
        let upto = self.folded.get();
        let result = async {
            let mut tx = self.log.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query("DELETE FROM log WHERE pos <= ?1").bind(upto).execute(&mut *tx).await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => {
                self.deleted = upto;
                self.dirty.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "deleting folded rows from the SQLite append log failed"),
        }
    }

    async fn run_batch(&mut self, ops: Vec<Op>) {
        self.wait_for_room().await;
        let (msgs, replies): (Vec<NewMessage>, Vec<_>) = ops.into_iter().map(|op| (op.msg, op.reply)).unzip();
        let first_pos = self.next_pos;
        match self.execute(msgs).await {
            Ok(outcomes) => {
                self.dirty.notify_one();
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(failure) => {
                tracing::warn!(error = %failure, operations = replies.len(), "SQLite append batch failed");
                // The commit may have happened after all: whatever the log holds beyond what the tail knows is
                // committed, so it goes into the tail, and seqs are looked up afresh.
                self.known.clear();
                self.resync = true;
                if let Err(e) = self.resync(first_pos).await {
                    tracing::error!(error = %e, "re-reading the SQLite append log failed");
                }
                for reply in replies {
                    let _ = reply.send(Err(failure.to_store_error()));
                }
            }
        }
    }

    /// Loads the log rows from position `from` on into the tail (committed by a batch whose commit reported a
    /// failure) and moves the next position beyond them.
    async fn resync(&mut self, from: i64) -> Result<(), sqlx::Error> {
        let last = self.load_log_after(from.saturating_sub(1)).await?;
        self.next_pos = self.next_pos.max(last.saturating_add(1));
        self.resync = false;
        Ok(())
    }

    /// Runs one batch: assigns seqs, answers duplicates, commits the new rows to the log and adds them to the tail.
    /// Returns the answers in request order.
    async fn execute(&mut self, msgs: Vec<NewMessage>) -> Result<Vec<Result<Appended, StoreError>>, BatchFailure> {
        let started = Instant::now();
        if self.resync {
            let from = self.next_pos;
            self.resync(from).await.map_err(BatchFailure::before_commit)?;
        }
        let mut seen = self.last_seqs(msgs.iter().map(|m| &m.channel)).await.map_err(BatchFailure::before_commit)?;
        let mut originals = self.originals(&msgs, &seen).await.map_err(BatchFailure::before_commit)?;

        let mut outcomes = Vec::with_capacity(msgs.len());
        let mut fresh: Vec<crate::tail::Row> = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let Some(last) = seen.get_mut(&msg.channel) else {
                outcomes.push(Err(StoreError::ChannelNotFound(msg.channel)));
                continue;
            };
            let key = msg.client_id.clone().map(|c| (msg.channel.clone(), msg.sender.clone(), c));
            if let Some(original) = key.as_ref().and_then(|k| originals.get(k)) {
                outcomes.push(Ok(Appended { message: original.clone(), duplicate: true }));
                continue;
            }
            *last += 1;
            let message = msg.into_message(*last);
            if let Some(key) = key {
                originals.insert(key, message.clone());
            }
            outcomes.push(Ok(Appended { message: message.clone(), duplicate: false }));
            fresh.push(crate::tail::Row { pos: self.next_pos + fresh.len() as i64, message: Arc::new(message) });
        }

        let delete_upto = self.folded.get();
        let mut tx = self.log.begin_with("BEGIN IMMEDIATE").await.map_err(BatchFailure::before_commit)?;
        if delete_upto > self.deleted {
            sqlx::query("DELETE FROM log WHERE pos <= ?1")
                .bind(delete_upto)
                .execute(&mut *tx)
                .await
                .map_err(BatchFailure::before_commit)?;
        }
        for chunk in fresh.chunks(INSERT_CHUNK) {
            let sql = self.insert_sql[chunk.len()]
                .get_or_insert_with(|| insert_statement(INSERT_HEAD, 10, chunk.len()))
                .clone();
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for row in chunk {
                let m = &row.message;
                query = query
                    .bind(row.pos)
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
            query.execute(&mut *tx).await.map_err(BatchFailure::before_commit)?;
        }
        let committing = Instant::now();
        tx.commit().await.map_err(BatchFailure::at_commit)?;
        self.deleted = self.deleted.max(delete_upto);
        self.next_pos += fresh.len() as i64;
        tracing::trace!(
            appended = fresh.len(),
            work_us = (committing - started).as_micros() as u64,
            commit_us = committing.elapsed().as_micros() as u64,
            "SQLite append batch committed"
        );
        self.tail.add(fresh);
        if self.known.len().saturating_add(seen.len()) > self.known_max {
            self.known.clear();
        }
        self.known.extend(seen.into_iter().take(self.known_max));
        Ok(outcomes)
    }

    /// The last seq of every existing channel among `channels`: from `known`, else the larger of the tail's and
    /// the main database's (one query). Channels that do not exist are left out.
    ///
    /// The tail is asked first: a row leaves it only after the main database's `last_seq` counts it, so whichever
    /// holds the channel's newest message, the answer is current. Asking both (rather than the main database only
    /// when the tail holds nothing) also keeps seqs unique should the main database ever be ahead of the log (a
    /// backup that copied the two files at different times).
    async fn last_seqs<'m>(
        &mut self,
        channels: impl Iterator<Item = &'m ChannelId>,
    ) -> Result<HashMap<ChannelId, Seq>, sqlx::Error> {
        let mut seen = HashMap::new();
        let mut missing: HashMap<&str, Option<Seq>> = HashMap::new();
        for id in channels {
            if let Some(seq) = self.known.get(id) {
                seen.insert(id.clone(), *seq);
            } else if !missing.contains_key(id.as_str()) {
                missing.insert(id.as_str(), self.tail.last_seq(id));
            }
        }
        if missing.is_empty() {
            return Ok(seen);
        }
        let asked: Vec<&str> = missing.keys().copied().collect();
        let found = sqlx::query("SELECT id, last_seq FROM channels WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(json(&asked)?)
            .fetch_all(&mut self.main)
            .await?;
        for row in found {
            let id: &str = row.try_get(0)?;
            let seq: i64 = row.try_get(1)?;
            let seq = Seq::try_from(seq).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let tail = missing.get(id).copied().flatten().unwrap_or(0);
            let id = ChannelId::new(id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            seen.insert(id, seq.max(tail));
        }
        Ok(seen)
    }

    /// The stored originals of the client ids `msgs` carry (existing channels only): from the tail, else the main
    /// database's unique index (one query).
    async fn originals(
        &mut self,
        msgs: &[NewMessage],
        channels: &HashMap<ChannelId, Seq>,
    ) -> Result<HashMap<DedupKey, Message>, sqlx::Error> {
        let mut found = HashMap::new();
        let mut keys: Vec<DedupKey> = Vec::new();
        let mut asked: HashMap<DedupKey, ()> = HashMap::new();
        for m in msgs {
            let Some(cid) = &m.client_id else { continue };
            if !channels.contains_key(&m.channel) {
                continue;
            }
            if let Entry::Vacant(e) = asked.entry((m.channel.clone(), m.sender.clone(), cid.clone())) {
                // The tail first: a row leaves it only after the main database holds it.
                match self.tail.original(e.key()) {
                    Some(original) => {
                        found.insert(e.key().clone(), original);
                    }
                    None => keys.push(e.key().clone()),
                }
                e.insert(());
            }
        }
        if keys.is_empty() {
            return Ok(found);
        }
        let wire: Vec<(&str, &str, &str)> =
            keys.iter().map(|(c, s, id)| (c.as_str(), s.as_str(), id.as_str())).collect();
        // The columns of `rows::message`, qualified (json_each has an `id` column too), then the key's index.
        let sql = "SELECT m.seq, m.id, m.sender, m.client_id, m.kind, m.refers, m.ts, m.body, j.key \
                   FROM json_each(?1) AS j JOIN messages AS m \
                   ON m.channel = j.value ->> 0 AND m.sender = j.value ->> 1 AND m.client_id = j.value ->> 2";
        for row in sqlx::query(sql).bind(json(&wire)?).fetch_all(&mut self.main).await? {
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
