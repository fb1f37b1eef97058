#![doc = include_str!("../README.md")]

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use herald_core::id::{ChannelId, ClientMsgId, UserId};
use herald_core::model::{Appended, Channel, CursorKind, Message, NewMessage, Page, Seq};
use herald_core::store::{DEFAULT_MAX_BODY_BYTES, ReadRange, Store, StoreError, check_body_size};

/// Number of shards of the channel map (a power of two).
const SHARDS: usize = 64;

type Shard = RwLock<HashMap<ChannelId, ChannelState>>;

/// A [`Store`] that keeps everything in process memory.
///
/// Channels live in a sharded map; each channel has its own lock for its log, its members and its cursors,
/// so appends to different channels never wait for each other and readers of a channel's members or cursors
/// do not wait for its appends. Nothing survives the process: use it for tests, development and single-node
/// setups that need no durability.
pub struct MemoryStore {
    shards: Box<[Shard]>,
    hasher: RandomState,
    max_body_bytes: usize,
}

/// One channel: immutable metadata and separately locked parts.
struct ChannelState {
    meta: Channel,
    log: Mutex<Log>,
    members: RwLock<BTreeSet<UserId>>,
    cursors: Mutex<HashMap<(UserId, CursorKind), Seq>>,
}

/// A channel's messages; `messages[i]` has seq `i + 1`.
#[derive(Default)]
struct Log {
    messages: Vec<Message>,
    /// Seq of the message each `(sender, client_id)` produced.
    by_client_id: HashMap<(UserId, ClientMsgId), Seq>,
}

impl ChannelState {
    fn new(meta: Channel, members: &[UserId]) -> Self {
        Self {
            meta,
            log: Mutex::new(Log::default()),
            members: RwLock::new(members.iter().cloned().collect()),
            cursors: Mutex::new(HashMap::new()),
        }
    }
}

impl Log {
    fn append(&mut self, msg: NewMessage) -> Appended {
        let seq = self.messages.len() as Seq + 1;
        if let Some(client_id) = &msg.client_id {
            match self.by_client_id.entry((msg.sender.clone(), client_id.clone())) {
                Entry::Occupied(e) => {
                    let original = self.messages[seq_index(*e.get())].clone();
                    return Appended { message: original, duplicate: true };
                }
                Entry::Vacant(e) => {
                    e.insert(seq);
                }
            }
        }
        let message = msg.into_message(seq);
        self.messages.push(message.clone());
        Appended { message, duplicate: false }
    }

    fn read(&self, range: ReadRange, limit: usize) -> Page {
        let len = self.messages.len();
        // Messages with seq <= s are exactly `messages[..clamp(s)]`.
        let clamp = |s: Seq| usize::try_from(s).map_or(len, |s| s.min(len));
        let (start, end, more) = match range {
            ReadRange::After(after) => {
                let start = clamp(after);
                let end = start.saturating_add(limit).min(len);
                (start, end, end < len)
            }
            ReadRange::Before(before) => {
                let end = clamp(before.saturating_sub(1));
                let start = end.saturating_sub(limit);
                (start, end, start > 0)
            }
        };
        Page { messages: self.messages[start..end].to_vec(), more }
    }

    fn get(&self, seq: Seq) -> Option<Message> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.messages.get(index).cloned()
    }
}

/// The index of `seq` in a log; only for seqs known to be stored.
fn seq_index(seq: Seq) -> usize {
    (seq - 1) as usize
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections keep their data consistent even if a panic interrupts them.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Sets the largest body [`Store::append`] accepts (default [`DEFAULT_MAX_BODY_BYTES`], 1 MiB).
    pub fn with_max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    fn shard(&self, id: &ChannelId) -> &Shard {
        &self.shards[self.hasher.hash_one(id) as usize & (SHARDS - 1)]
    }

    /// Runs `f` on the channel while holding its shard's read lock (briefly: `f` never awaits).
    fn with_channel<R>(&self, id: &ChannelId, f: impl FnOnce(&ChannelState) -> R) -> Option<R> {
        read(self.shard(id)).get(id).map(f)
    }

    /// Like [`Self::with_channel`], but an unknown channel is [`StoreError::ChannelNotFound`].
    fn with_existing<R>(&self, id: &ChannelId, f: impl FnOnce(&ChannelState) -> R) -> Result<R, StoreError> {
        self.with_channel(id, f).ok_or_else(|| StoreError::ChannelNotFound(id.clone()))
    }

    fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("channels", &self.channel_count())
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        check_body_size(&msg, self.max_body_bytes)?;
        let channel = msg.channel.clone();
        self.with_existing(&channel, |c| lock(&c.log).append(msg))
    }

    async fn read(&self, channel: &ChannelId, range: ReadRange, limit: usize) -> Result<Page, StoreError> {
        Ok(self.with_channel(channel, |c| lock(&c.log).read(range, limit)).unwrap_or_default())
    }

    async fn get(&self, channel: &ChannelId, seq: Seq) -> Result<Option<Message>, StoreError> {
        Ok(self.with_channel(channel, |c| lock(&c.log).get(seq)).flatten())
    }

    async fn last_seq(&self, channel: &ChannelId) -> Result<Seq, StoreError> {
        Ok(self.with_channel(channel, |c| lock(&c.log).messages.len() as Seq).unwrap_or(0))
    }

    async fn create_channel(&self, channel: Channel, members: &[UserId]) -> Result<(), StoreError> {
        match write(self.shard(&channel.id)).entry(channel.id.clone()) {
            Entry::Occupied(_) => Err(StoreError::ChannelExists(channel.id)),
            Entry::Vacant(e) => {
                e.insert(ChannelState::new(channel, members));
                Ok(())
            }
        }
    }

    async fn ensure_channel(&self, channel: Channel, members: &[UserId]) -> Result<Channel, StoreError> {
        if let Some(meta) = self.with_channel(&channel.id, |c| c.meta.clone()) {
            return Ok(meta);
        }
        let mut shard = write(self.shard(&channel.id));
        let state = shard.entry(channel.id.clone()).or_insert_with(|| ChannelState::new(channel, members));
        Ok(state.meta.clone())
    }

    async fn channel(&self, id: &ChannelId) -> Result<Option<Channel>, StoreError> {
        Ok(self.with_channel(id, |c| c.meta.clone()))
    }

    async fn add_members(&self, id: &ChannelId, users: &[UserId]) -> Result<(), StoreError> {
        self.with_existing(id, |c| write(&c.members).extend(users.iter().cloned()))
    }

    async fn remove_member(&self, id: &ChannelId, user: &UserId) -> Result<(), StoreError> {
        self.with_existing(id, |c| {
            write(&c.members).remove(user);
        })
    }

    async fn is_member(&self, id: &ChannelId, user: &UserId) -> Result<bool, StoreError> {
        Ok(self.with_channel(id, |c| read(&c.members).contains(user)).unwrap_or(false))
    }

    async fn members(&self, id: &ChannelId) -> Result<Vec<UserId>, StoreError> {
        Ok(self.with_channel(id, |c| read(&c.members).iter().cloned().collect()).unwrap_or_default())
    }

    /// Moves the cursor forward; [`StoreError::ChannelNotFound`] for an unknown channel.
    async fn set_cursor(
        &self,
        channel: &ChannelId,
        user: &UserId,
        kind: CursorKind,
        seq: Seq,
    ) -> Result<Seq, StoreError> {
        self.with_existing(channel, |c| {
            let mut cursors = lock(&c.cursors);
            let cursor = cursors.entry((user.clone(), kind)).or_insert(0);
            *cursor = (*cursor).max(seq);
            *cursor
        })
    }

    async fn cursor(&self, channel: &ChannelId, user: &UserId, kind: CursorKind) -> Result<Seq, StoreError> {
        Ok(self
            .with_channel(channel, |c| lock(&c.cursors).get(&(user.clone(), kind)).copied().unwrap_or(0))
            .unwrap_or(0))
    }

    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}
