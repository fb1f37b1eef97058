//! The conformance suite must fail a store that breaks the contract: each test wraps [`MemoryStore`] with
//! one deliberate bug and checks that `run_all` panics.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::id::{ChannelId, UserId};
use herald_core::model::{Appended, Channel, CursorKind, Message, NewMessage, Page, Seq};
use herald_core::store::{ReadRange, Store, StoreError};
use herald_core::testkit::store::{run_all, run_durable};
use herald_memory::MemoryStore;

#[derive(Debug, Clone, Copy)]
enum Bug {
    /// Reports duplicates as new messages.
    DuplicateFlagLost,
    /// `Before` pages return the oldest messages instead of the newest.
    BeforeReturnsOldest,
    /// `more` is true whenever the page is full.
    MoreWhenFull,
    /// `set_cursor` returns the requested value instead of the effective one.
    CursorReturnsRequested,
    /// Members come back unsorted (in reverse).
    MembersUnsorted,
    /// `ensure_channel` returns the channel it was given.
    EnsureReturnsArgument,
    /// Bodies are re-encoded (whitespace dropped).
    BodyReencoded,
    /// `add_members` on an unknown channel succeeds.
    AddMembersToUnknown,
    /// Claims a 1 KiB body limit but stores bodies up to the inner store's 1 MiB.
    BodyLimitIgnored,
    /// Loses the last message of a channel when paging forward: the final full page reports `more`.
    MoreOnExactLastPage,
}

#[derive(Debug)]
struct Buggy {
    inner: MemoryStore,
    bug: Bug,
}

#[async_trait]
impl Store for Buggy {
    async fn append(&self, mut msg: NewMessage) -> Result<Appended, StoreError> {
        if let Bug::BodyReencoded = self.bug {
            let value: serde_json::Value = serde_json::from_str(msg.body.get()).expect("valid JSON");
            msg.body = Arc::from(serde_json::value::to_raw_value(&value).expect("serializable"));
        }
        let mut appended = self.inner.append(msg).await?;
        if let Bug::DuplicateFlagLost = self.bug {
            appended.duplicate = false;
        }
        Ok(appended)
    }

    async fn read(&self, channel: &ChannelId, range: ReadRange, limit: usize) -> Result<Page, StoreError> {
        match (self.bug, range) {
            (Bug::BeforeReturnsOldest, ReadRange::Before(before)) => {
                let mut page = self.inner.read(channel, ReadRange::After(0), limit).await?;
                page.messages.retain(|m| m.seq < before);
                Ok(page)
            }
            (Bug::MoreOnExactLastPage, ReadRange::After(_)) => {
                let mut page = self.inner.read(channel, range, limit).await?;
                page.more |= page.messages.len() == limit && limit > 1;
                Ok(page)
            }
            (Bug::MoreWhenFull, _) => {
                let mut page = self.inner.read(channel, range, limit).await?;
                page.more = page.messages.len() == limit;
                Ok(page)
            }
            _ => self.inner.read(channel, range, limit).await,
        }
    }

    async fn get(&self, channel: &ChannelId, seq: Seq) -> Result<Option<Message>, StoreError> {
        self.inner.get(channel, seq).await
    }

    async fn last_seq(&self, channel: &ChannelId) -> Result<Seq, StoreError> {
        self.inner.last_seq(channel).await
    }

    async fn create_channel(&self, channel: Channel, members: &[UserId]) -> Result<(), StoreError> {
        self.inner.create_channel(channel, members).await
    }

    async fn ensure_channel(&self, channel: Channel, members: &[UserId]) -> Result<Channel, StoreError> {
        let stored = self.inner.ensure_channel(channel.clone(), members).await?;
        Ok(if let Bug::EnsureReturnsArgument = self.bug { channel } else { stored })
    }

    async fn channel(&self, id: &ChannelId) -> Result<Option<Channel>, StoreError> {
        self.inner.channel(id).await
    }

    async fn add_members(&self, id: &ChannelId, users: &[UserId]) -> Result<(), StoreError> {
        match self.inner.add_members(id, users).await {
            Err(StoreError::ChannelNotFound(_)) if matches!(self.bug, Bug::AddMembersToUnknown) => Ok(()),
            other => other,
        }
    }

    async fn remove_member(&self, id: &ChannelId, user: &UserId) -> Result<(), StoreError> {
        self.inner.remove_member(id, user).await
    }

    async fn is_member(&self, id: &ChannelId, user: &UserId) -> Result<bool, StoreError> {
        self.inner.is_member(id, user).await
    }

    async fn members(&self, id: &ChannelId) -> Result<Vec<UserId>, StoreError> {
        let mut members = self.inner.members(id).await?;
        if let Bug::MembersUnsorted = self.bug {
            members.reverse();
        }
        Ok(members)
    }

    async fn set_cursor(
        &self,
        channel: &ChannelId,
        user: &UserId,
        kind: CursorKind,
        seq: Seq,
    ) -> Result<Seq, StoreError> {
        let effective = self.inner.set_cursor(channel, user, kind, seq).await?;
        Ok(if let Bug::CursorReturnsRequested = self.bug { seq } else { effective })
    }

    async fn cursor(&self, channel: &ChannelId, user: &UserId, kind: CursorKind) -> Result<Seq, StoreError> {
        self.inner.cursor(channel, user, kind).await
    }

    fn max_body_bytes(&self) -> usize {
        if let Bug::BodyLimitIgnored = self.bug { 1024 } else { self.inner.max_body_bytes() }
    }
}

/// Runs the suite against the buggy store in its own task and asserts that it panicked.
async fn assert_suite_fails(bug: Bug) {
    let store = Buggy { inner: MemoryStore::new(), bug };
    let outcome = tokio::spawn(async move { run_all(&store).await }).await;
    assert!(outcome.is_err_and(|e| e.is_panic()), "the suite passed a store with bug {bug:?}");
}

#[tokio::test]
async fn catches_lost_duplicate_flag() {
    assert_suite_fails(Bug::DuplicateFlagLost).await;
}

#[tokio::test]
async fn catches_before_returning_oldest() {
    assert_suite_fails(Bug::BeforeReturnsOldest).await;
}

#[tokio::test]
async fn catches_more_when_full() {
    assert_suite_fails(Bug::MoreWhenFull).await;
}

#[tokio::test]
async fn catches_cursor_returning_requested() {
    assert_suite_fails(Bug::CursorReturnsRequested).await;
}

#[tokio::test]
async fn catches_unsorted_members() {
    assert_suite_fails(Bug::MembersUnsorted).await;
}

#[tokio::test]
async fn catches_ensure_returning_argument() {
    assert_suite_fails(Bug::EnsureReturnsArgument).await;
}

#[tokio::test]
async fn catches_reencoded_body() {
    assert_suite_fails(Bug::BodyReencoded).await;
}

#[tokio::test]
async fn catches_add_members_to_unknown() {
    assert_suite_fails(Bug::AddMembersToUnknown).await;
}

#[tokio::test]
async fn catches_ignored_body_limit() {
    assert_suite_fails(Bug::BodyLimitIgnored).await;
}

#[tokio::test]
async fn catches_more_on_exact_last_page() {
    assert_suite_fails(Bug::MoreOnExactLastPage).await;
}

/// `run_durable` fails a store that forgets everything on restart (here: a new in-memory store each time).
#[tokio::test]
async fn durable_suite_catches_a_forgetful_store() {
    let outcome =
        tokio::spawn(async { run_durable(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await }).await;
    assert!(outcome.is_err_and(|e| e.is_panic()), "the durable suite passed a store that forgets on restart");
}

/// `run_durable` passes a store that keeps its data (here: the same in-memory store handed out again), so the
/// failure above is about forgetting, not about the suite.
#[tokio::test]
async fn durable_suite_passes_a_store_that_remembers() {
    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    run_durable(|| {
        let shared = Arc::clone(&shared);
        async move { shared }
    })
    .await;
}
