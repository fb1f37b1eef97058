//! Group commit: appends are queued to writer tasks, and each writer stores everything waiting in one
//! transaction.
//!
//! A batch transaction, for any number of channels:
//! 1. `SELECT ... FROM channels WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE`: locks the batch's channels in one fixed
//!    order (so writers of other nodes sharing the database cannot deadlock with this one), reads each channel's
//!    `last_seq` and the transaction id. Channels not found fail their appends with `ChannelNotFound`.
//! 2. Only now, holding the channel locks, looks up the batch's client ids among the stored messages: no other
//!    writer of any node can insert into these channels until this transaction ends, so the lookup is exact.
//! 3. Assigns seqs in queue order: a client id already stored, or already used earlier in the batch, is a
//!    duplicate and takes no seq.
//! 4. Inserts all new rows with one `INSERT ... SELECT FROM unnest(...)` and advances every channel's `last_seq` in
//!    the same statement.
//! 5. Commits, and only then answers the waiters.
//!
//! A failure before the commit rolls everything back (the seq counters included, so no seq is lost) and every
//! waiter gets the error: `Unavailable` when the database could not be reached, `Internal` otherwise. A failure
//! of the commit itself is ambiguous: the writer asks the database for the transaction's fate
//! (`txid_status`, ending the old backend if it is still running) and answers success only when the transaction
//! committed. If the fate cannot be learned, the waiters get `Internal` ("outcome unknown"), never success.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use herald_core::id::ChannelId;
use herald_core::model::{Appended, Message, NewMessage, Seq};
use herald_core::store::StoreError;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep, timeout, timeout_at};

use crate::config::{PgConfig, REQUEST_OVERHEAD_BYTES};
use crate::error::{internal, store_error, unavailable};
use crate::rows::{MESSAGE_COLUMNS, kind_str, message_from_row, seq_from_db, seq_to_db};

/// Locks the batch's channels in byte order of their ids; the transaction id names the transaction if its
/// commit outcome must be looked up later.
const LOCK_SQL: &str =
    "SELECT id, last_seq, txid_current() FROM channels WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";

/// Messages already stored under the given (channel, sender, client id) keys, with the key's position (from 1).
static DEDUP_SQL: LazyLock<String> = LazyLock::new(dedup_sql);

fn dedup_sql() -> String {
    let columns: Vec<String> = MESSAGE_COLUMNS.split(", ").map(|c| format!("m.{c}")).collect();
    format!(
        "SELECT k.n, {} FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(channel, sender, client_id, n) \
         JOIN messages m ON m.channel = k.channel AND m.sender = k.sender AND m.client_id = k.client_id \
         WHERE m.client_id IS NOT NULL",
        columns.join(", ")
    )
}

/// Inserts the batch's new messages and advances the channels' counters, in one statement.
const INSERT_SQL: &str = "WITH inserted AS (\
     INSERT INTO messages (channel, seq, id, sender, client_id, kind, refers, ts, body) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::int8[], \
     $8::int8[], $9::text[])) \
     UPDATE channels AS c SET last_seq = u.last_seq FROM unnest($10::text[], $11::int8[]) AS u(id, last_seq) \
     WHERE c.id = u.id";

/// One queued append.
pub(crate) struct Request {
    msg: NewMessage,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
    /// Its share of the queue's byte budget, returned when the request is answered.
    _permit: OwnedSemaphorePermit,
}

/// The appending side of the store: the queues of the writer tasks.
pub(crate) struct Writers {
    queues: Vec<mpsc::Sender<Request>>,
    bytes: Arc<Semaphore>,
    hasher: RandomState,
    enqueue_timeout: Duration,
}

impl Writers {
    /// Connects `config.writers` writers with `options` and starts their tasks.
    pub(crate) async fn start(options: &PgConnectOptions, config: &PgConfig) -> Result<Self, sqlx::Error> {
        // Every statement of a batch looks rows up by key. A plan cached while a table was small (a seq scan and a
        // hash join) stays in use as the table grows, until statistics are refreshed: steer the writers' plans to
        // the indexes, whatever the statistics say.
        let options = options.clone().options([
            ("enable_seqscan", "off"),
            ("enable_hashjoin", "off"),
            ("enable_mergejoin", "off"),
        ]);
        let per_writer = config.queue_max_messages.div_ceil(config.writers).max(1);
        let mut queues = Vec::with_capacity(config.writers);
        for index in 0..config.writers {
            let conn =
                timeout(config.acquire_timeout, connect(&options)).await.map_err(|_| sqlx::Error::PoolTimedOut)??;
            let (tx, rx) = mpsc::channel(per_writer);
            let writer = Writer {
                index,
                rx,
                options: options.clone(),
                conn: Some(conn),
                connect_timeout: config.acquire_timeout,
                write_timeout: config.write_timeout,
                batch_max_messages: config.batch_max_messages,
                batch_max_bytes: config.batch_max_bytes,
            };
            tokio::spawn(writer.run());
            queues.push(tx);
        }
        Ok(Self {
            queues,
            bytes: Arc::new(Semaphore::new(config.queue_max_bytes)),
            hasher: RandomState::new(),
            enqueue_timeout: config.acquire_timeout,
        })
    }

    /// Queues `msg` to its channel's writer and waits for the outcome of its batch.
    ///
    /// The caller has checked the body size. When the queue stays full for the enqueue timeout, the append fails
    /// with `Unavailable` without being queued.
    pub(crate) async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        let deadline = Instant::now() + self.enqueue_timeout;
        let size = u32::try_from(msg.body.get().len() + REQUEST_OVERHEAD_BYTES)
            .map_err(|_| internal("message body too large for the append queue"))?;
        let permit = timeout_at(deadline, Arc::clone(&self.bytes).acquire_many_owned(size))
            .await
            .map_err(|_| unavailable("the append queue is full (bytes); retry later"))?
            .map_err(|_| unavailable("the store is closed"))?;
        let queue = &self.queues[self.hasher.hash_one(msg.channel.as_str()) as usize % self.queues.len()];
        let (reply, answer) = oneshot::channel();
        timeout_at(deadline, queue.send(Request { msg, reply, _permit: permit }))
            .await
            .map_err(|_| unavailable("the append queue is full; retry later"))?
            .map_err(|_| unavailable("the store is closed"))?;
        answer
            .await
            .map_err(|_| internal("the writer stopped before answering: the append may or may not have been stored"))?
    }
}

/// What a batch decided for one request.
#[derive(Debug, Clone)]
enum Planned {
    /// Stored at this seq.
    New(Seq),
    /// Its client id was stored before: this is the original.
    Duplicate(Message),
    /// Its client id is used by an earlier request of the same batch (by index).
    DuplicateInBatch(usize),
    /// Its channel does not exist.
    NoChannel,
}

/// How far a batch got; read after a failure or a timeout.
#[derive(Debug, Default)]
struct Progress {
    /// The batch transaction's id, once known.
    xid: Option<i64>,
    /// The decisions, once made.
    plan: Option<Vec<Planned>>,
    /// Whether COMMIT was sent: from here on, a failure leaves the outcome unknown until looked up.
    commit_sent: bool,
}

/// The fate of a transaction whose commit failed.
enum Fate {
    Committed,
    Aborted,
    Unknown(String),
}

/// An open writer connection and its backend's process id.
struct WriterConn {
    conn: PgConnection,
    pid: i32,
}

/// One writer task.
struct Writer {
    index: usize,
    rx: mpsc::Receiver<Request>,
    options: PgConnectOptions,
    conn: Option<WriterConn>,
    connect_timeout: Duration,
    write_timeout: Duration,
    batch_max_messages: usize,
    batch_max_bytes: usize,
}

impl Writer {
    /// Runs until every sender is gone (the store was dropped) and the queue is drained.
    async fn run(mut self) {
        let mut batch: Vec<Request> = Vec::new();
        while let Some(first) = self.rx.recv().await {
            let mut bytes = first.msg.body.get().len();
            batch.push(first);
            while batch.len() < self.batch_max_messages && bytes < self.batch_max_bytes {
                match self.rx.try_recv() {
                    Ok(next) => {
                        bytes += next.msg.body.get().len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let results = self.execute(&batch).await;
            for (request, result) in batch.drain(..).zip(results) {
                // The caller may have given up waiting; the outcome stands either way.
                let _ = request.reply.send(result);
            }
        }
        if let Some(WriterConn { conn, .. }) = self.conn.take() {
            let _ = conn.close().await;
        }
        tracing::debug!(writer = self.index, "writer stopped");
    }

    /// Stores the batch; one result per request.
    async fn execute(&mut self, batch: &[Request]) -> Vec<Result<Appended, StoreError>> {
        let all = |make: &dyn Fn() -> StoreError| batch.iter().map(|_| Err(make())).collect::<Vec<_>>();
        let mut progress = Progress::default();
        let write_timeout = self.write_timeout;
        let outcome = match self.connection().await {
            Ok(wc) => timeout(write_timeout, write_batch(&mut wc.conn, batch, &mut progress))
                .await
                .unwrap_or_else(|_| Err(BatchError::TimedOut)),
            Err(e) => {
                tracing::warn!(writer = self.index, error = %e, "cannot connect the writer");
                let message = format!("cannot connect to the database: {e}");
                return all(&|| unavailable(message.clone()));
            }
        };
        let failure = match outcome {
            Ok(()) => match progress.plan {
                Some(plan) => return results(batch, plan),
                None => return all(&|| internal("a batch ended without a plan")),
            },
            Err(e) => e,
        };
        // The connection is broken or in an unknown state: the next batch opens a new one.
        let old = self.conn.take();
        tracing::warn!(writer = self.index, error = %failure, commit_sent = progress.commit_sent, size = batch.len(),
            "batch failed");
        if !progress.commit_sent {
            // Nothing was committed; the server rolls back when the connection closes.
            drop(old);
            let message = failure.to_string();
            return if failure.is_transient() {
                all(&|| unavailable(message.clone()))
            } else {
                all(&|| internal(message.clone()))
            };
        }
        let pid = old.map(|old| old.pid);
        match (self.fate(progress.xid, pid).await, progress.plan) {
            (Fate::Committed, Some(plan)) => {
                tracing::info!(writer = self.index, "the failed commit had succeeded: answering success");
                results(batch, plan)
            }
            (Fate::Aborted, _) => {
                let message = format!("the transaction was rolled back: {failure}");
                all(&|| unavailable(message.clone()))
            }
            (Fate::Committed, None) => all(&|| internal("a committed batch has no plan")),
            (Fate::Unknown(why), _) => {
                let message = format!("the commit failed ({failure}) and its outcome is unknown ({why})");
                tracing::error!(writer = self.index, "{message}");
                all(&|| internal(message.clone()))
            }
        }
    }

    /// The writer's connection, opened if needed.
    async fn connection(&mut self) -> Result<&mut WriterConn, StoreError> {
        if self.conn.is_none() {
            let opened = timeout(self.connect_timeout, connect(&self.options))
                .await
                .map_err(|_| unavailable("connecting timed out"))?
                .map_err(store_error)?;
            self.conn = Some(opened);
        }
        self.conn.as_mut().ok_or_else(|| internal("writer connection missing"))
    }

    /// Looks up whether transaction `xid`, whose commit failed on backend `pid`, committed.
    async fn fate(&self, xid: Option<i64>, pid: Option<i32>) -> Fate {
        let Some(xid) = xid else { return Fate::Unknown("no transaction id".to_owned()) };
        let deadline = Instant::now() + self.write_timeout;
        let mut last_error = String::from("the deadline passed");
        let mut terminated = false;
        while Instant::now() < deadline {
            match timeout_at(deadline, txid_status(&self.options, xid, if terminated { None } else { pid })).await {
                Ok(Ok(Some(status))) => match status.as_str() {
                    "committed" => return Fate::Committed,
                    "aborted" => return Fate::Aborted,
                    // The old backend is still running (it may not have noticed the broken connection yet);
                    // txid_status ended it (when its pid was known), so look again.
                    _ => terminated = true,
                },
                Ok(Ok(None)) => return Fate::Unknown("the transaction id is too old".to_owned()),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => break,
            }
            sleep(Duration::from_millis(50)).await;
        }
        Fate::Unknown(last_error)
    }
}

/// Opens a writer connection and learns its backend's process id.
async fn connect(options: &PgConnectOptions) -> Result<WriterConn, sqlx::Error> {
    let mut conn = options.connect().await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await?;
    Ok(WriterConn { conn, pid })
}

/// On a new connection: ends backend `pid` if it still runs (so an in-flight transaction reaches its end), then
/// returns `txid_status(xid)`: `committed`, `aborted`, `in progress`, or `None` when too old to tell.
async fn txid_status(options: &PgConnectOptions, xid: i64, pid: Option<i32>) -> Result<Option<String>, sqlx::Error> {
    let mut conn = options.connect().await?;
    if let Some(pid) = pid {
        let status: Option<String> =
            sqlx::query_scalar("SELECT txid_status($1)::text").bind(xid).fetch_one(&mut conn).await?;
        if status.as_deref() == Some("in progress") {
            let _: bool =
                sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)").bind(pid).fetch_one(&mut conn).await?;
        } else {
            let _ = conn.close().await;
            return Ok(status);
        }
    }
    let status: Option<String> =
        sqlx::query_scalar("SELECT txid_status($1)::text").bind(xid).fetch_one(&mut conn).await?;
    let _ = conn.close().await;
    Ok(status)
}

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// The driver failed.
    #[error("{0}")]
    Db(#[from] sqlx::Error),
    /// A stored row does not decode.
    #[error("{0}")]
    Corrupt(#[from] StoreError),
    /// The batch's deadline passed.
    #[error("the batch transaction timed out")]
    TimedOut,
}

impl BatchError {
    /// Whether a retry can succeed (a failure of the connection or a passing condition of the server).
    fn is_transient(&self) -> bool {
        match self {
            Self::Db(e) => crate::error::is_transient(e),
            Self::Corrupt(_) => false,
            Self::TimedOut => true,
        }
    }
}

/// Runs the batch transaction, recording its progress.
async fn write_batch(conn: &mut PgConnection, batch: &[Request], progress: &mut Progress) -> Result<(), BatchError> {
    // The batch's requests by channel, channels in byte order, requests in queue order.
    let mut by_channel: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, request) in batch.iter().enumerate() {
        by_channel.entry(request.msg.channel.as_str()).or_default().push(i);
    }
    let channel_ids: Vec<&str> = by_channel.keys().copied().collect();

    // BEGIN, COMMIT and ROLLBACK go as simple queries: one round trip each, and on any failure the caller drops
    // the connection, which ends the transaction on the server.
    let t0 = Instant::now();
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
    let t_begin = t0.elapsed();
    let rows = sqlx::query(LOCK_SQL).bind(&channel_ids).fetch_all(&mut *conn).await?;
    let t_lock = t0.elapsed();
    let mut last_seqs: HashMap<String, i64> = HashMap::with_capacity(rows.len());
    for row in &rows {
        last_seqs.insert(row.try_get(0)?, row.try_get(1)?);
        progress.xid = Some(row.try_get(2)?);
    }

    // The stored originals of the batch's client ids, looked up under the channel locks.
    let mut keys: Vec<(&str, &str, &str)> = Vec::new();
    let mut seen: HashSet<(&str, &str, &str)> = HashSet::new();
    for request in batch {
        let m = &request.msg;
        if let Some(cid) = &m.client_id
            && last_seqs.contains_key(m.channel.as_str())
        {
            let key = (m.channel.as_str(), m.sender.as_str(), cid.as_str());
            if seen.insert(key) {
                keys.push(key);
            }
        }
    }
    let mut stored: HashMap<(&str, &str, &str), Message> = HashMap::new();
    if !keys.is_empty() {
        let key_channels: Vec<&str> = keys.iter().map(|k| k.0).collect();
        let key_senders: Vec<&str> = keys.iter().map(|k| k.1).collect();
        let key_cids: Vec<&str> = keys.iter().map(|k| k.2).collect();
        let channels: HashMap<&str, &ChannelId> =
            batch.iter().map(|r| (r.msg.channel.as_str(), &r.msg.channel)).collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(DEDUP_SQL.as_str()))
            .bind(&key_channels)
            .bind(&key_senders)
            .bind(&key_cids)
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            let n: i64 = row.try_get(0)?;
            let key = usize::try_from(n - 1)
                .ok()
                .and_then(|i| keys.get(i))
                .ok_or_else(|| internal(format!("the duplicate lookup returned key #{n} of {}", keys.len())))?;
            let channel = channels.get(key.0).ok_or_else(|| internal("duplicate lookup: unknown channel"))?;
            stored.insert(*key, message_from_row(row, 1, channel)?);
        }
    }

    let t_dedup = t0.elapsed();
    // Seqs in queue order per channel; duplicates take none.
    let mut plan = vec![Planned::NoChannel; batch.len()];
    let mut new_rows = NewRows::with_capacity(batch.len());
    let mut counter_ids: Vec<&str> = Vec::new();
    let mut counter_values: Vec<i64> = Vec::new();
    for (&channel, indexes) in &by_channel {
        let Some(&last) = last_seqs.get(channel) else { continue };
        let last = seq_from_db(last)?;
        let mut next = last;
        let mut in_batch: HashMap<(&str, &str), usize> = HashMap::new();
        for &i in indexes {
            let m = &batch[i].msg;
            if let Some(cid) = &m.client_id {
                if let Some(original) = stored.get(&(channel, m.sender.as_str(), cid.as_str())) {
                    plan[i] = Planned::Duplicate(original.clone());
                    continue;
                }
                match in_batch.entry((m.sender.as_str(), cid.as_str())) {
                    Entry::Occupied(first) => {
                        plan[i] = Planned::DuplicateInBatch(*first.get());
                        continue;
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(i);
                    }
                }
            }
            next += 1;
            plan[i] = Planned::New(next);
            new_rows.push(m, next);
        }
        if next > last {
            counter_ids.push(channel);
            counter_values.push(seq_to_db(next));
        }
    }

    if new_rows.is_empty() {
        // Nothing to write: duplicates and unknown channels only.
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        progress.plan = Some(plan);
        return Ok(());
    }
    sqlx::query(INSERT_SQL)
        .bind(&new_rows.channels)
        .bind(&new_rows.seqs)
        .bind(&new_rows.ids)
        .bind(&new_rows.senders)
        .bind(&new_rows.client_ids)
        .bind(&new_rows.kinds)
        .bind(&new_rows.refers)
        .bind(&new_rows.ts)
        .bind(&new_rows.bodies)
        .bind(&counter_ids)
        .bind(&counter_values)
        .execute(&mut *conn)
        .await?;
    let t_insert = t0.elapsed();
    progress.plan = Some(plan);
    progress.commit_sent = true;
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
    tracing::trace!(
        size = batch.len(),
        channels = channel_ids.len(),
        begin_us = t_begin.as_micros(),
        lock_us = (t_lock - t_begin).as_micros(),
        dedup_us = (t_dedup - t_lock).as_micros(),
        insert_us = (t_insert - t_dedup).as_micros(),
        commit_us = (t0.elapsed() - t_insert).as_micros(),
        "batch committed"
    );
    Ok(())
}

/// The columns of the rows to insert, as arrays for `unnest`.
struct NewRows<'a> {
    channels: Vec<&'a str>,
    seqs: Vec<i64>,
    ids: Vec<uuid::Uuid>,
    senders: Vec<&'a str>,
    client_ids: Vec<Option<&'a str>>,
    kinds: Vec<&'static str>,
    refers: Vec<Option<i64>>,
    ts: Vec<i64>,
    bodies: Vec<&'a str>,
}

impl<'a> NewRows<'a> {
    fn with_capacity(n: usize) -> Self {
        Self {
            channels: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            senders: Vec::with_capacity(n),
            client_ids: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            refers: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, m: &'a NewMessage, seq: Seq) {
        self.channels.push(m.channel.as_str());
        self.seqs.push(seq_to_db(seq));
        self.ids.push(m.id.0);
        self.senders.push(m.sender.as_str());
        self.client_ids.push(m.client_id.as_ref().map(|c| c.as_str()));
        self.kinds.push(kind_str(m.kind));
        self.refers.push(m.refers.map(seq_to_db));
        self.ts.push(m.ts);
        self.bodies.push(m.body.get());
    }

    fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// The answers of a committed (or read-only) batch.
fn results(batch: &[Request], plan: Vec<Planned>) -> Vec<Result<Appended, StoreError>> {
    let seq_of = |i: usize| match plan.get(i) {
        Some(Planned::New(seq)) => Some(*seq),
        _ => None,
    };
    plan.iter()
        .enumerate()
        .map(|(i, planned)| {
            let msg = &batch[i].msg;
            match planned {
                Planned::New(seq) => Ok(Appended { message: msg.clone().into_message(*seq), duplicate: false }),
                Planned::Duplicate(original) => Ok(Appended { message: original.clone(), duplicate: true }),
                Planned::DuplicateInBatch(first) => match seq_of(*first) {
                    Some(seq) => Ok(Appended { message: batch[*first].msg.clone().into_message(seq), duplicate: true }),
                    None => Err(internal("a duplicate's original in the batch has no seq")),
                },
                Planned::NoChannel => Err(StoreError::ChannelNotFound(msg.channel.clone())),
            }
        })
        .collect()
}
