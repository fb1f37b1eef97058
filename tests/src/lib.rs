//! Cross-crate end-to-end tests for Herald. The tests live in `tests/`; this library holds shared helpers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use herald::core::id::{ChannelId, UserId};
use herald::core::model::{Appended, Channel, CursorKind, Message, NewMessage, Page, Seq};
use herald::core::store::{ReadRange, Store, StoreError};
use herald::core::testkit::protocol::TestTokens;
use herald::core::{Hub, HubConfig};
use herald::memory::MemoryStore;

pub mod metrics;
pub mod xport;

/// A hub over a fresh memory store, authenticating with `tokens`.
pub fn memory_hub(tokens: &TestTokens, config: HubConfig) -> Hub {
    hub_over(Arc::new(MemoryStore::new()), tokens, config)
}

/// A hub over `store`, authenticating with `tokens`.
pub fn hub_over(store: Arc<dyn Store>, tokens: &TestTokens, config: HubConfig) -> Hub {
    Hub::builder(store, Arc::new(tokens.auth())).config(config).build()
}

/// A store that can be switched "down" (every call then fails with [`StoreError::Unavailable`]) or made slow
/// (every append takes at least a set time, like a durable store's commit), and that records how many appends
/// were in flight at once.
#[derive(Debug, Default)]
pub struct FlakyStore {
    inner: MemoryStore,
    down: AtomicBool,
    append_delay_us: AtomicU64,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl FlakyStore {
    /// Takes the store down (`true`) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Makes every append wait `delay` before it is applied.
    pub fn set_append_delay(&self, delay: Duration) {
        self.append_delay_us.store(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// The most appends that were in flight at the same time so far.
    pub fn most_appends_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("database is down (test)".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for FlakyStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.check()?;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = self.append_delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        let appended = self.inner.append(msg).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        appended
    }
    async fn read(&self, channel: &ChannelId, range: ReadRange, limit: usize) -> Result<Page, StoreError> {
        self.check()?;
        self.inner.read(channel, range, limit).await
    }
    async fn get(&self, channel: &ChannelId, seq: Seq) -> Result<Option<Message>, StoreError> {
        self.check()?;
        self.inner.get(channel, seq).await
    }
    async fn last_seq(&self, channel: &ChannelId) -> Result<Seq, StoreError> {
        self.check()?;
        self.inner.last_seq(channel).await
    }
    async fn create_channel(&self, channel: Channel, members: &[UserId]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.create_channel(channel, members).await
    }
    async fn ensure_channel(&self, channel: Channel, members: &[UserId]) -> Result<Channel, StoreError> {
        self.check()?;
        self.inner.ensure_channel(channel, members).await
    }
    async fn channel(&self, id: &ChannelId) -> Result<Option<Channel>, StoreError> {
        self.check()?;
        self.inner.channel(id).await
    }
    async fn add_members(&self, id: &ChannelId, users: &[UserId]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.add_members(id, users).await
    }
    async fn remove_member(&self, id: &ChannelId, user: &UserId) -> Result<(), StoreError> {
        self.check()?;
        self.inner.remove_member(id, user).await
    }
    async fn is_member(&self, id: &ChannelId, user: &UserId) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.is_member(id, user).await
    }
    async fn members(&self, id: &ChannelId) -> Result<Vec<UserId>, StoreError> {
        self.check()?;
        self.inner.members(id).await
    }
    async fn set_cursor(&self, c: &ChannelId, u: &UserId, k: CursorKind, seq: Seq) -> Result<Seq, StoreError> {
        self.check()?;
        self.inner.set_cursor(c, u, k, seq).await
    }
    async fn cursor(&self, c: &ChannelId, u: &UserId, k: CursorKind) -> Result<Seq, StoreError> {
        self.check()?;
        self.inner.cursor(c, u, k).await
    }
}
