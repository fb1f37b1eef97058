//! The in-memory tail: every message that is durable in the append log but not yet folded into the main database.
//!
//! The appender adds rows after its log commit (before it answers anyone); the folder copies them into the main
//! database and removes them only after that commit; readers look here first and then in the main database. Per
//! channel the tail holds the newest messages, with contiguous seqs: everything older is in the main database.
//!
//! Every row carries its log position (`pos`); positions grow with every append, and within a channel with its
//! seqs, so "every row with `pos <= p`" is a prefix of each channel's rows. A fold takes such a prefix.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use herald_core::id::{ChannelId, ClientMsgId, UserId};
use herald_core::model::{Message, Seq};
use tokio::sync::Notify;

/// A resent message's identity.
pub(crate) type DedupKey = (ChannelId, UserId, ClientMsgId);

/// One tail row: a message and its position in the append log. Shared, so that a fold's copy under the lock
/// costs a reference count per row.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) pos: i64,
    pub(crate) message: Arc<Message>,
}

/// The rows of one channel, oldest first, with contiguous seqs.
#[derive(Debug, Default)]
struct ChannelRows {
    rows: VecDeque<Row>,
    /// The seq of every held message with a client id, by sender and client id (nested, so that look-ups and
    /// removals need no owned key).
    dedup: HashMap<UserId, HashMap<ClientMsgId, Seq>>,
}

impl ChannelRows {
    fn first_seq(&self) -> Option<Seq> {
        self.rows.front().map(|r| r.message.seq)
    }

    fn last_seq(&self) -> Option<Seq> {
        self.rows.back().map(|r| r.message.seq)
    }

    /// The index of `seq` in `rows`, if held.
    fn index(&self, seq: Seq) -> Option<usize> {
        let first = self.first_seq()?;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        (i < self.rows.len()).then_some(i)
    }
}

#[derive(Debug, Default)]
struct Inner {
    channels: HashMap<ChannelId, ChannelRows>,
    rows: usize,
    /// The highest position added.
    last_pos: i64,
}

/// What a reader got from the tail for one channel: the held rows it asked for and the channel's seq span in the
/// tail (`None` when the tail holds nothing of the channel).
#[derive(Debug, Default)]
pub(crate) struct Slice {
    /// The messages, ascending by seq.
    pub(crate) messages: Vec<Message>,
    /// The first and last seq the tail held for the channel.
    pub(crate) span: Option<(Seq, Seq)>,
}

/// A fold's share of one channel: its rows up to the fold's position.
#[derive(Debug)]
pub(crate) struct FoldChannel {
    pub(crate) channel: ChannelId,
    pub(crate) messages: Vec<Arc<Message>>,
}

/// The shared tail.
#[derive(Debug)]
pub(crate) struct Tail {
    inner: Mutex<Inner>,
    /// Rows beyond which the appender waits for the folder.
    pub(crate) max_rows: usize,
    /// Rows from which the folder starts a fold without waiting for its interval.
    pub(crate) fold_rows: usize,
    /// Signalled when a fold removed rows (the appender may go on).
    pub(crate) space: Notify,
    /// Signalled when `fold_rows` rows wait (the folder should fold now).
    pub(crate) full: Notify,
}

impl Tail {
    pub(crate) fn new(max_rows: usize, fold_rows: usize) -> Self {
        Self { inner: Mutex::new(Inner::default()), max_rows, fold_rows, space: Notify::new(), full: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under the lock panics half-way through an update that matters; take the data as it is.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rows held.
    pub(crate) fn rows(&self) -> usize {
        self.lock().rows
    }

    /// The highest log position added (0 before any).
    pub(crate) fn last_pos(&self) -> i64 {
        self.lock().last_pos
    }

    /// Adds committed rows (ascending by position; each channel's seqs continue its held ones).
    pub(crate) fn add(&self, rows: impl IntoIterator<Item = Row>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for row in rows {
            inner.last_pos = inner.last_pos.max(row.pos);
            inner.rows += 1;
            let channel = inner.channels.entry(row.message.channel.clone()).or_default();
            if let Some(cid) = &row.message.client_id {
                channel.dedup.entry(row.message.sender.clone()).or_default().insert(cid.clone(), row.message.seq);
            }
            channel.rows.push_back(row);
        }
        if inner.rows >= self.fold_rows {
            self.full.notify_one();
        }
    }

    /// The newest seq the tail holds for `channel`.
    pub(crate) fn last_seq(&self, channel: &ChannelId) -> Option<Seq> {
        self.lock().channels.get(channel).and_then(ChannelRows::last_seq)
    }

    /// The held message of `channel` at `seq`.
    pub(crate) fn get(&self, channel: &ChannelId, seq: Seq) -> Option<Message> {
        let inner = self.lock();
        let rows = inner.channels.get(channel)?;
        rows.index(seq).map(|i| Message::clone(&rows.rows[i].message))
    }

    /// The hashes of the dedup keys of every held message with a client id (for the client id filter).
    pub(crate) fn dedup_hashes(&self) -> Vec<u64> {
        let inner = self.lock();
        let mut hashes = Vec::new();
        for (channel, rows) in &inner.channels {
            for (sender, ids) in &rows.dedup {
                hashes
                    .extend(ids.keys().map(|cid| crate::filter::hash(channel.as_str(), sender.as_str(), cid.as_str())));
            }
        }
        hashes
    }

    /// The held original of a resent message.
    pub(crate) fn original(&self, key: &DedupKey) -> Option<Message> {
        let inner = self.lock();
        let rows = inner.channels.get(&key.0)?;
        let seq = *rows.dedup.get(&key.1)?.get(&key.2)?;
        rows.index(seq).map(|i| Message::clone(&rows.rows[i].message))
    }

    /// Up to `limit` held messages of `channel` with `seq > after`, ascending.
    pub(crate) fn after(&self, channel: &ChannelId, after: Seq, limit: usize) -> Slice {
        let inner = self.lock();
        let Some(rows) = inner.channels.get(channel) else { return Slice::default() };
        let (Some(first), Some(last)) = (rows.first_seq(), rows.last_seq()) else { return Slice::default() };
        let start = usize::try_from(after.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        let messages = rows.rows.iter().skip(start).take(limit).map(|r| Message::clone(&r.message)).collect();
        Slice { messages, span: Some((first, last)) }
    }

    /// Up to `limit` held messages of `channel` with `seq < before`, the newest ones, ascending.
    pub(crate) fn before(&self, channel: &ChannelId, before: Seq, limit: usize) -> Slice {
        let inner = self.lock();
        let Some(rows) = inner.channels.get(channel) else { return Slice::default() };
        let (Some(first), Some(last)) = (rows.first_seq(), rows.last_seq()) else { return Slice::default() };
        // Rows with seq < before: the first `end` rows.
        let end = usize::try_from(before.saturating_sub(first)).unwrap_or(usize::MAX).min(rows.rows.len());
        let start = end.saturating_sub(limit);
        let messages = rows.rows.range(start..end).map(|r| Message::clone(&r.message)).collect();
        Slice { messages, span: Some((first, last)) }
    }

    /// The rows a fold up to position `upto` takes: every channel's held rows with `pos <= upto`, channels sorted
    /// by id.
    pub(crate) fn fold_plan(&self, upto: i64) -> Vec<FoldChannel> {
        let inner = self.lock();
        let mut plan: Vec<FoldChannel> = inner
            .channels
            .iter()
            .filter_map(|(channel, rows)| {
                let messages: Vec<Arc<Message>> =
                    rows.rows.iter().take_while(|r| r.pos <= upto).map(|r| r.message.clone()).collect();
                (!messages.is_empty()).then(|| FoldChannel { channel: channel.clone(), messages })
            })
            .collect();
        plan.sort_unstable_by(|a, b| a.channel.cmp(&b.channel));
        plan
    }

    /// Drops the held rows of each `(channel, seq)` up to that seq: they are committed in the main database.
    pub(crate) fn remove_folded<'c>(&self, folded: impl IntoIterator<Item = (&'c ChannelId, Seq)>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        for (channel, upto) in folded {
            let Some(rows) = inner.channels.get_mut(channel) else { continue };
            while let Some(row) = rows.rows.pop_front_if(|r| r.message.seq <= upto) {
                if let Some(cid) = &row.message.client_id
                    && let Some(ids) = rows.dedup.get_mut(&row.message.sender)
                {
                    ids.remove(cid);
                    if ids.is_empty() {
                        rows.dedup.remove(&row.message.sender);
                    }
                }
                inner.rows -= 1;
            }
            if rows.rows.is_empty() {
                inner.channels.remove(channel);
            }
        }
        drop(guard);
        self.space.notify_waiters();
    }
}
