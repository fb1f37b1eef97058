//! Cross-node fan-out: the [`Broker`] trait.
//!
//! After a message is stored, the hub publishes it on the broker; every node's hub receives it through its
//! [`Inbox`] and delivers it to its local subscribers. [`LocalBroker`] is the single-node broker: publishing
//! delivers straight to the local hub, with no copy and no queue.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;

use crate::id::{ChannelId, UserId};
use crate::model::{CursorKind, Message, Seq};
use crate::store::BoxError;

/// An event that every node must see.
#[derive(Debug, Clone)]
pub enum BrokerEvent {
    /// A newly stored message.
    Message(Arc<Message>),
    /// A user's read or delivered cursor moved.
    Receipt {
        /// Channel.
        channel: ChannelId,
        /// Whose cursor.
        user: UserId,
        /// Which cursor.
        kind: CursorKind,
        /// New position.
        seq: Seq,
    },
    /// A user started or stopped typing.
    Typing {
        /// Channel.
        channel: ChannelId,
        /// Who.
        user: UserId,
        /// True while typing.
        active: bool,
    },
}

impl BrokerEvent {
    /// The channel the event belongs to.
    pub fn channel(&self) -> &ChannelId {
        match self {
            Self::Message(m) => &m.channel,
            Self::Receipt { channel, .. } | Self::Typing { channel, .. } => channel,
        }
    }
}

/// What a broker can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached; the event was not published.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// [`Broker::publish`] was called before [`Broker::bind`].
    #[error("broker has no inbox bound")]
    NotBound,
}

/// Receives the events published by any node (including this one).
pub trait Inbox: Send + Sync + 'static {
    /// Delivers `event` to local subscribers. Must not block.
    fn deliver(&self, event: BrokerEvent);
}

/// Cross-node event bus.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Connects the local hub; called once when the hub starts.
    fn bind(&self, inbox: Arc<dyn Inbox>);

    /// Publishes `event` to every node, this one included.
    async fn publish(&self, event: BrokerEvent) -> Result<(), BrokerError>;
}

/// The single-node broker: publish delivers to the local inbox synchronously.
#[derive(Default)]
pub struct LocalBroker {
    inbox: OnceLock<Arc<dyn Inbox>>,
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker").field("bound", &self.inbox.get().is_some()).finish()
    }
}

impl LocalBroker {
    /// A broker with no inbox bound yet.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Broker for LocalBroker {
    fn bind(&self, inbox: Arc<dyn Inbox>) {
        // A second bind is ignored: one hub per broker.
        let _ = self.inbox.set(inbox);
    }

    async fn publish(&self, event: BrokerEvent) -> Result<(), BrokerError> {
        let inbox = self.inbox.get().ok_or(BrokerError::NotBound)?;
        inbox.deliver(event);
        Ok(())
    }
}
