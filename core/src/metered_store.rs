//! [`MeteredStore`]: a [`Store`] decorator that times every operation and runs it in a tracing span.
//!
//! [`HubBuilder::build`](crate::hub::HubBuilder::build) wraps the hub's store in one, so every store — memory,
//! SQLite, Postgres — reports the same `herald_store_duration_seconds{operation, result}` histogram and the same
//! `store.<operation>` debug spans (with the channel, and for `append` the assigned seq), without any code of its
//! own. Inside a command the spans are children of the `command` span.
//!
//! **When a method is added to [`Store`], forward it here too**: a defaulted trait method that is not forwarded
//! would silently run its default instead of the wrapped store's implementation.
//! `storage/memory/tests/metered.rs` runs the conformance suite through this decorator.
//!
//! ```
//! # use std::sync::Arc;
//! # use herald_core::Store;
//! use herald_core::metered_store::MeteredStore;
//! fn metered(store: Arc<dyn Store>) -> Arc<dyn Store> {
//!     Arc::new(MeteredStore::new(store))
//! }
//! ```

use std::future::Future;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use metrics::Histogram;
use tokio::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

use crate::id::{ChannelId, UserId};
use crate::metrics::STORE_DURATION_SECONDS;
use crate::model::{Appended, Channel, CursorKind, Message, NewMessage, Page, Seq};
use crate::store::{ReadRange, Store, StoreError};

/// The operations, as label values, in [`Op`] order.
const OPERATIONS: [&str; 13] = [
    "append",
    "read",
    "get",
    "last_seq",
    "create_channel",
    "ensure_channel",
    "channel",
    "add_members",
    "remove_member",
    "is_member",
    "members",
    "set_cursor",
    "cursor",
];

/// The results, as label values.
const RESULTS: [&str; 6] = ["ok", "not_found", "exists", "unavailable", "internal", "too_large"];

#[derive(Clone, Copy)]
enum Op {
    Append,
    Read,
    Get,
    LastSeq,
    CreateChannel,
    EnsureChannel,
    Channel,
    AddMembers,
    RemoveMember,
    IsMember,
    Members,
    SetCursor,
    Cursor,
}

fn result_index<T>(r: &Result<T, StoreError>) -> usize {
    match r {
        Ok(_) => 0,
        Err(StoreError::ChannelNotFound(_)) => 1,
        Err(StoreError::ChannelExists(_)) => 2,
        Err(StoreError::Unavailable(_)) => 3,
        Err(StoreError::Internal(_)) => 4,
        Err(StoreError::TooLarge { .. }) => 5,
    }
}

/// Times each operation of the wrapped store (histogram [`STORE_DURATION_SECONDS`]) and runs it in a
/// `store.<operation>` span.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    /// Histograms per (operation, result), registered on first use.
    durations: [[OnceLock<Histogram>; RESULTS.len()]; OPERATIONS.len()],
}

impl std::fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStore").finish_non_exhaustive()
    }
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner, durations: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())) }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    async fn measure<T>(
        &self,
        op: Op,
        span: tracing::Span,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = fut.instrument(span.clone()).await;
        let (o, r) = (op as usize, result_index(&result));
        self.durations[o][r]
            .get_or_init(
                || metrics::histogram!(STORE_DURATION_SECONDS, "operation" => OPERATIONS[o], "result" => RESULTS[r]),
            )
            .record(started.elapsed().as_secs_f64());
        if r != 0 {
            span.record("result", RESULTS[r]);
        }
        result
    }
}

/// A `store.<op>` debug span with the channel and an empty `result` field (recorded on failure).
macro_rules! store_span {
    ($name:literal, $channel:expr $(, $($field:tt)*)?) => {
        tracing::debug_span!($name, channel = %$channel, result = Empty $(, $($field)*)?)
    };
}

#[async_trait]
impl Store for MeteredStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        let span = store_span!("store.append", msg.channel, seq = Empty, duplicate = Empty);
        let result = self.measure(Op::Append, span.clone(), self.inner.append(msg)).await;
        if let Ok(a) = &result {
            span.record("seq", a.message.seq);
            span.record("duplicate", a.duplicate);
        }
        result
    }

    async fn read(&self, channel: &ChannelId, range: ReadRange, limit: usize) -> Result<Page, StoreError> {
        let span = store_span!("store.read", channel, range = ?range, limit);
        self.measure(Op::Read, span, self.inner.read(channel, range, limit)).await
    }

    async fn get(&self, channel: &ChannelId, seq: Seq) -> Result<Option<Message>, StoreError> {
        self.measure(Op::Get, store_span!("store.get", channel, seq), self.inner.get(channel, seq)).await
    }

    async fn last_seq(&self, channel: &ChannelId) -> Result<Seq, StoreError> {
        self.measure(Op::LastSeq, store_span!("store.last_seq", channel), self.inner.last_seq(channel)).await
    }

    async fn create_channel(&self, channel: Channel, members: &[UserId]) -> Result<(), StoreError> {
        let span = store_span!("store.create_channel", channel.id, members = members.len());
        self.measure(Op::CreateChannel, span, self.inner.create_channel(channel, members)).await
    }

    async fn ensure_channel(&self, channel: Channel, members: &[UserId]) -> Result<Channel, StoreError> {
        let span = store_span!("store.ensure_channel", channel.id, members = members.len());
        self.measure(Op::EnsureChannel, span, self.inner.ensure_channel(channel, members)).await
    }

    async fn channel(&self, id: &ChannelId) -> Result<Option<Channel>, StoreError> {
        self.measure(Op::Channel, store_span!("store.channel", id), self.inner.channel(id)).await
    }

    async fn add_members(&self, id: &ChannelId, users: &[UserId]) -> Result<(), StoreError> {
        let span = store_span!("store.add_members", id, members = users.len());
        self.measure(Op::AddMembers, span, self.inner.add_members(id, users)).await
    }

    async fn remove_member(&self, id: &ChannelId, user: &UserId) -> Result<(), StoreError> {
        self.measure(Op::RemoveMember, store_span!("store.remove_member", id), self.inner.remove_member(id, user)).await
    }

    async fn is_member(&self, id: &ChannelId, user: &UserId) -> Result<bool, StoreError> {
        self.measure(Op::IsMember, store_span!("store.is_member", id), self.inner.is_member(id, user)).await
    }

    async fn members(&self, id: &ChannelId) -> Result<Vec<UserId>, StoreError> {
        self.measure(Op::Members, store_span!("store.members", id), self.inner.members(id)).await
    }

    async fn set_cursor(
        &self,
        channel: &ChannelId,
        user: &UserId,
        kind: CursorKind,
        seq: Seq,
    ) -> Result<Seq, StoreError> {
        let span = store_span!("store.set_cursor", channel, kind = ?kind, seq);
        self.measure(Op::SetCursor, span, self.inner.set_cursor(channel, user, kind, seq)).await
    }

    async fn cursor(&self, channel: &ChannelId, user: &UserId, kind: CursorKind) -> Result<Seq, StoreError> {
        let span = store_span!("store.cursor", channel, kind = ?kind);
        self.measure(Op::Cursor, span, self.inner.cursor(channel, user, kind)).await
    }

    fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes()
    }
}
