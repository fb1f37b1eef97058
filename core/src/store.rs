//! The durable side: message logs, channels and membership, cursors.
//!
//! A [`Store`] is object-safe so that a configuration can choose one at run time (`Arc<dyn Store>`).
//! Every implementation must pass the store conformance suite in
//! `testkit::store` (feature `testkit`).
//!
//! The contract, in short:
//! - [`Store::append`] assigns the next sequence number of the channel (1, 2, 3, ... strictly increasing,
//!   no gaps, even under concurrent appends) and returns only once the message is durable to the store's
//!   own standard. With a client message id, a second append with the same `(channel, sender, client_id)`
//!   stores nothing and returns the original with `duplicate = true`.
//! - Reads return messages in ascending seq order.
//! - Cursors only move forward.
//! - A body larger than [`Store::max_body_bytes`] is refused with [`StoreError::TooLarge`] and nothing is stored.
//! - A durable store keeps all of this across a restart, including the duplicate-id index
//!   (`testkit::store::run_durable` checks it).

use async_trait::async_trait;

use crate::id::{ChannelId, UserId};
use crate::model::{Appended, Channel, CursorKind, NewMessage, Page, Seq};
use crate::status::{Code, Status};

/// Boxed source error kept for logs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a [`Store`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The channel does not exist.
    #[error("channel {0} not found")]
    ChannelNotFound(ChannelId),
    /// The channel to create exists already.
    #[error("channel {0} already exists")]
    ChannelExists(ChannelId),
    /// The message body exceeds the store's limit ([`Store::max_body_bytes`]); nothing was stored.
    #[error("message body of {size} bytes exceeds the store's limit of {max} bytes")]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The store's limit in bytes.
        max: usize,
    },
    /// The backend cannot be reached or refused the operation temporarily; nothing was changed.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// Anything else: corrupt data, a bug, an unexpected backend reply. The operation may or may not have happened.
    #[error("store failure: {0}")]
    Internal(#[source] BoxError),
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ChannelNotFound(c) => Status::new(Code::NotFound, format!("channel {c} does not exist")),
            StoreError::ChannelExists(c) => Status::new(Code::Conflict, format!("channel {c} already exists")),
            StoreError::TooLarge { size, max } => {
                Status::new(Code::TooLarge, format!("body of {size} bytes exceeds the store's limit of {max} bytes"))
            }
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "store unavailable");
                Status::new(Code::Unavailable, "storage is unavailable, retry later").with_retry_after(1000)
            }
            StoreError::Internal(e) => {
                tracing::error!(error = %e, "store failure");
                Status::internal()
            }
        }
    }
}

/// The body size limit of a store that was not configured otherwise: 1 MiB.
///
/// The hub's own limit (`Limits::max_body_bytes`, 32 KiB by default) is lower; the store's limit guards the
/// store itself against callers that bypass the hub.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Checks `msg`'s body against `max`: the check every [`Store::append`] makes before storing anything.
pub fn check_body_size(msg: &NewMessage, max: usize) -> Result<(), StoreError> {
    let size = msg.body.get().len();
    if size > max { Err(StoreError::TooLarge { size, max }) } else { Ok(()) }
}

/// Which part of a channel's log to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRange {
    /// Messages with `seq > after`, oldest first (resume, forward paging).
    After(Seq),
    /// Messages with `seq < before`, the newest `limit` of them, returned oldest first (backward paging).
    Before(Seq),
}

/// Durable storage for Herald.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends `msg` to its channel's log, assigning the next seq; see the module docs for the dedup rule.
    /// The channel must exist ([`StoreError::ChannelNotFound`] otherwise); a body larger than
    /// [`max_body_bytes`](Store::max_body_bytes) is refused with [`StoreError::TooLarge`].
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError>;

    /// Reads at most `limit` messages of `channel` in `range`, ascending by seq. `more` tells whether the
    /// range holds further messages beyond the page. An unknown channel reads as empty.
    async fn read(&self, channel: &ChannelId, range: ReadRange, limit: usize) -> Result<Page, StoreError>;

    /// Reads one message by seq.
    async fn get(&self, channel: &ChannelId, seq: Seq) -> Result<Option<crate::model::Message>, StoreError>;

    /// The seq of the channel's newest message; 0 when it has none or does not exist.
    async fn last_seq(&self, channel: &ChannelId) -> Result<Seq, StoreError>;

    /// Creates a channel with initial `members`. [`StoreError::ChannelExists`] when it exists.
    async fn create_channel(&self, channel: Channel, members: &[UserId]) -> Result<(), StoreError>;

    /// Creates the channel with `members` unless it exists; either way returns the stored channel.
    async fn ensure_channel(&self, channel: Channel, members: &[UserId]) -> Result<Channel, StoreError>;

    /// The channel's metadata, if it exists.
    async fn channel(&self, id: &ChannelId) -> Result<Option<Channel>, StoreError>;

    /// Adds members (idempotent). The channel must exist.
    async fn add_members(&self, id: &ChannelId, users: &[UserId]) -> Result<(), StoreError>;

    /// Removes a member (idempotent). The channel must exist.
    async fn remove_member(&self, id: &ChannelId, user: &UserId) -> Result<(), StoreError>;

    /// Whether `user` is a member of `id`; false for an unknown channel.
    async fn is_member(&self, id: &ChannelId, user: &UserId) -> Result<bool, StoreError>;

    /// All members of `id`, sorted; empty for an unknown channel.
    async fn members(&self, id: &ChannelId) -> Result<Vec<UserId>, StoreError>;

    /// Moves `user`'s cursor of `kind` in `channel` forward to `seq` (never backward) and returns the
    /// cursor's value afterwards.
    async fn set_cursor(
        &self,
        channel: &ChannelId,
        user: &UserId,
        kind: CursorKind,
        seq: Seq,
    ) -> Result<Seq, StoreError>;

    /// `user`'s cursor of `kind` in `channel`; 0 when never set.
    async fn cursor(&self, channel: &ChannelId, user: &UserId, kind: CursorKind) -> Result<Seq, StoreError>;

    /// The largest message body, in bytes, that [`append`](Store::append) accepts.
    fn max_body_bytes(&self) -> usize {
        DEFAULT_MAX_BODY_BYTES
    }
}
