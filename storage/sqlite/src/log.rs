//! The appender: the durable append path, on its own thread, with its own files (the append log).
//!
//! The append log is a sequence of segment files of framed records (`segment.rs`). Every batch of appends
//! (whatever is queued, up to `batch_max`) is one `write` at the end of the current segment and one
//! `fdatasync` before any waiter is answered; then its rows go into the in-memory [`Tail`], where readers find them
//! until the folder (the main database's writer, `writer.rs`) has copied them into the channels' clustered
//! `messages` table. Nothing is ever deleted on this path: once a fold committed its watermark
//! (`log_watermark.folded_upto`, in the main database), the segment keeper recycles or deletes the segments whose
//! every record is at or below it, on its own thread.
//!
//! The appender is the only one to assign seqs. It keeps each channel's last seq in a bounded map; on a miss it
//! asks the tail (which holds the newest rows of the channel, if any) and then the main database
//! (`channels.last_seq`, advanced by every fold in the same transaction as the rows it folds) and takes the larger.
//! In that order the answer is always current: rows leave the tail only after the fold that moved them committed.
//! Resent client ids are looked up the same way: the tail's dedup map, then the main database's unique index, but
//! only for client ids that a Bloom filter of the main database's client ids (`filter.rs`) may hold: a fresh
//! client id costs no query.
//!
//! At open it reads every segment and loads the records beyond the watermark into the tail: they are acknowledged
//! but maybe not folded. An append log of the earlier layout (one SQLite database, `<path>-log`) is read the same
//! way once, copied into a segment and removed.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use herald_core::id::ChannelId;
use herald_core::model::{Appended, Message, NewMessage, Seq};
use herald_core::store::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot};

use crate::error::{BatchFailure, Closed, OpenError, WriterGone};
use crate::filter::{self, ClientIds};
use crate::rows::{self, message_columns};
use crate::segment::{self, Log};
use crate::tail::{DedupKey, Tail};
use crate::worker::Worker;
use crate::writer::json;

/// Where the folder tells the appender's segment keeper how far the main database holds the log.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    /// The highest position folded and committed in the main database.
    upto: AtomicI64,
}

impl Folded {
    /// Records a committed fold up to `pos`.
    pub(crate) fn advance(&self, pos: i64) {
        self.upto.fetch_max(pos, Ordering::AcqRel);
    }

    pub(crate) fn get(&self) -> i64 {
        self.upto.load(Ordering::Acquire)
    }
}

/// What the appender thread needs.
#[derive(Debug)]
pub(crate) struct Setup {
    /// The main database file; the segments live next to it.
    pub(crate) path: PathBuf,
    /// A read-only connection to the main database (channels, folded messages, the watermark).
    pub(crate) main: SqliteConnectOptions,
    /// The append log of the earlier layout (`<path>-log`, a SQLite database), read once if it exists.
    pub(crate) legacy: SqliteConnectOptions,
    pub(crate) segment_bytes: u64,
    pub(crate) batch_max: usize,
    pub(crate) queue_bound: usize,
    pub(crate) channel_cache: usize,
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
    let Some((runtime, ready)) = crate::worker::runtime("appender", ready) else { return };
    runtime.block_on(async move {
        let path = setup.path.clone();
        let mut appender = match Appender::open(&setup).await {
            Ok(opened) => opened,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if ready.send(Ok(())).is_ok() {
            appender.serve(rx, shutdown).await;
        }
        appender.close().await;
        tracing::debug!(path = %path.display(), "SQLite appender stopped");
    });
}

/// The appender's state.
struct Appender {
    /// The append log.
    log: Log,
    /// Read-only, to the main database.
    main: SqliteConnection,
    batch_max: usize,
    /// The last seq of channels known to exist (committed in the log or the main database).
    known: HashMap<ChannelId, Seq>,
    known_max: usize,
    /// The next log position.
    next_pos: i64,
    tail: Arc<Tail>,
    /// Which client ids the main database may hold.
    client_ids: ClientIds,
}

impl Appender {
    /// Reads the append log (and an append log of the earlier layout), loads what the main database does not hold
    /// yet into the tail and starts the segment keeper.
    async fn open(setup: &Setup) -> Result<Self, OpenError> {
        let database = |source| OpenError::Database { path: setup.path.clone(), source };
        let mut main = SqliteConnection::connect_with(&setup.main).await.map_err(database)?;
        match Self::recover(setup, &mut main).await {
            Ok((log, next_pos)) => {
                let mut client_ids = ClientIds::new(setup.main.clone());
                // Every message of the main database counts (an upper bound on those with a client id).
                let expected: f64 =
                    match sqlx::query_scalar("SELECT total(last_seq) FROM channels").fetch_one(&mut main).await {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = main.close().await;
                            return Err(database(e));
                        }
                    };
                client_ids.start_build((expected as usize).saturating_add(setup.tail.rows()), &setup.tail);
                Ok(Self {
                    log,
                    main,
                    batch_max: setup.batch_max,
                    known: HashMap::new(),
                    known_max: setup.channel_cache,
                    next_pos,
                    tail: setup.tail.clone(),
                    client_ids,
                })
            }
            Err(e) => {
                let _ = main.close().await;
                Err(e)
            }
        }
    }

    /// Returns the log and the next position.
    async fn recover(setup: &Setup, main: &mut SqliteConnection) -> Result<(Log, i64), OpenError> {
        let database = |source| OpenError::Database { path: setup.path.clone(), source };
        let io = |action, path: &std::path::Path| {
            let path = path.to_owned();
            move |source| OpenError::Io { action, path, source }
        };
        let watermark: Option<i64> = sqlx::query_scalar("SELECT folded_upto FROM log_watermark WHERE id = 1")
            .fetch_optional(&mut *main)
            .await
            .map_err(database)?;
        let watermark = watermark.unwrap_or(0);
        setup.folded.advance(watermark);
        let recovered = segment::recover(&setup.path).map_err(|e| OpenError::AppendLog(e.to_string()))?;
        // Positions continue beyond both the log and the watermark: a log deleted or replaced by an older one must
        // never make new rows look folded.
        let mut last = recovered.records.last().map_or(0, |(pos, _)| *pos).max(watermark);
        let mut rows: Vec<crate::tail::Row> = recovered
            .records
            .iter()
            .filter(|(pos, _)| *pos > watermark)
            .map(|(pos, m)| crate::tail::Row { pos: *pos, message: Arc::new(m.clone()) })
            .collect();
        let mut log = Log::start(&setup.path, setup.segment_bytes, &recovered, setup.folded.clone())
            .map_err(io("start the append log of", &setup.path))?;
        drop(recovered);
        // The earlier layout: its rows beyond what the segments hold (a copy made before a crash) are copied into
        // a segment, synced, and only then is the old file removed.
        let legacy_file = crate::legacy_log_path(&setup.path);
        if legacy_file.exists() {
            let legacy = read_legacy(&setup.legacy, last)
                .await
                .map_err(|source| OpenError::Database { path: legacy_file.clone(), source })?;
            if !legacy.is_empty() {
                log.append(legacy.iter().map(|r| (r.pos, &*r.message)))
                    .map_err(io("copy the earlier append log into", &setup.path))?;
                last = last.max(legacy.last().map_or(0, |r| r.pos));
                rows.extend(legacy);
            }
            for suffix in ["", "-wal", "-shm"] {
                let mut name = legacy_file.clone().into_os_string();
                name.push(suffix);
                match std::fs::remove_file(&name) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("remove", std::path::Path::new(&name))(e)),
                }
            }
            tracing::info!(path = %legacy_file.display(), "the earlier SQLite append log was copied and removed");
        }
        tracing::debug!(path = %setup.path.display(), watermark, unfolded = rows.len(), "SQLite append log recovered");
        setup.tail.add(rows);
        Ok((log, last.saturating_add(1)))
    }

    async fn close(mut self) {
        self.log.close();
        let _ = self.main.close().await;
    }

    async fn serve(&mut self, mut rx: mpsc::Receiver<Op>, shutdown: oneshot::Receiver<()>) {
        let mut shutdown = Some(shutdown);
        let mut ops = Vec::with_capacity(self.batch_max);
        loop {
            let received = match shutdown.as_mut() {
                Some(signal) => tokio::select! {
                    n = rx.recv_many(&mut ops, self.batch_max) => n,
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

    async fn run_batch(&mut self, ops: Vec<Op>) {
        self.wait_for_room().await;
        let (msgs, replies): (Vec<NewMessage>, Vec<_>) = ops.into_iter().map(|op| (op.msg, op.reply)).unzip();
        match self.execute(msgs).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(failure) => {
                tracing::warn!(error = %failure, operations = replies.len(), "SQLite append batch failed");
                // Nothing of the batch went into the tail, and its positions and seqs are given out again: the
                // log moved to a new segment, where the next batch's records void whatever of this one reached
                // the disk.
                self.known.clear();
                for reply in replies {
                    let _ = reply.send(Err(failure.to_store_error()));
                }
            }
        }
    }

    /// Runs one batch: assigns seqs, answers duplicates, commits the new rows to the log and adds them to the tail.
    /// Returns the answers in request order.
    async fn execute(&mut self, msgs: Vec<NewMessage>) -> Result<Vec<Result<Appended, StoreError>>, BatchFailure> {
        let started = Instant::now();
        self.client_ids.poll(&self.tail).await;
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

        let writing = Instant::now();
        self.log.append(fresh.iter().map(|r| (r.pos, &*r.message))).map_err(BatchFailure::io_at_commit)?;
        self.next_pos += fresh.len() as i64;
        let hashes: Vec<u64> = fresh
            .iter()
            .filter_map(|r| {
                let m = &r.message;
                m.client_id.as_ref().map(|c| filter::hash(m.channel.as_str(), m.sender.as_str(), c.as_str()))
            })
            .collect();
        self.client_ids.insert(&hashes);
        tracing::trace!(
            appended = fresh.len(),
            work_us = (writing - started).as_micros() as u64,
            write_us = writing.elapsed().as_micros() as u64,
            "SQLite append batch written"
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
                // The tail first: a row leaves it only after the main database holds it. Then the main database,
                // unless the filter knows it does not hold the key.
                match self.tail.original(e.key()) {
                    Some(original) => {
                        found.insert(e.key().clone(), original);
                    }
                    None if self.client_ids.may_contain(filter::key_hash(e.key())) => keys.push(e.key().clone()),
                    None => {}
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

/// The rows with `pos > after` of an append log of the earlier layout (a SQLite database with one `log` table),
/// ascending.
async fn read_legacy(options: &SqliteConnectOptions, after: i64) -> Result<Vec<crate::tail::Row>, sqlx::Error> {
    let mut conn = SqliteConnection::connect_with(options).await?;
    let sql = concat!("SELECT ", message_columns!(), ", channel, pos FROM log WHERE pos > ?1 ORDER BY pos");
    let found = sqlx::query(sql).bind(after).fetch_all(&mut conn).await;
    let _ = conn.close().await;
    let decode = |e: StoreError| sqlx::Error::Decode(Box::new(e));
    let mut rows = Vec::new();
    for row in &found? {
        let channel: &str = row.try_get(8)?;
        let channel = ChannelId::new(channel).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let pos: i64 = row.try_get(9)?;
        let message = rows::message(&channel, row).map_err(decode)?;
        rows.push(crate::tail::Row { pos, message: Arc::new(message) });
    }
    Ok(rows)
}
