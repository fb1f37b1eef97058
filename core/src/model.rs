//! The data model: channels, messages, cursors, principals.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::id::{ChannelId, ChannelKind, ClientMsgId, DeviceId, MessageId, UserId};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// A per-channel sequence number. The first message of a channel has seq 1; 0 means "before everything".
pub type Seq = u64;

/// What a log entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// An ordinary message.
    #[default]
    Message,
    /// A replacement body for an earlier message of the same sender (`refers` names it).
    Edit,
    /// Withdraws an earlier message of the same sender (`refers` names it); carries no body.
    Recall,
    /// Written by the application or the server, not by a client.
    System,
}

/// A JSON body, kept as the exact bytes the sender sent (validated JSON, never re-encoded).
pub type Body = Arc<RawValue>;

/// The JSON `null` body used for recalls.
pub fn null_body() -> Body {
    Arc::from(RawValue::NULL.to_owned())
}

/// A stored message: one entry of a channel's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    /// The channel whose log holds it.
    pub channel: ChannelId,
    /// Its position in the channel's log (1, 2, 3, ... without gaps).
    pub seq: Seq,
    /// The server's id for it.
    pub id: MessageId,
    /// Who sent it.
    pub sender: UserId,
    /// The sender's idempotency key, if it gave one.
    pub client_id: Option<ClientMsgId>,
    /// What it does.
    pub kind: MessageKind,
    /// For edits and recalls: the seq of the message they change.
    pub refers: Option<Seq>,
    /// When the server stored it (ms since the epoch).
    pub ts: Millis,
    /// The application's payload.
    pub body: Body,
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.channel == other.channel
            && self.seq == other.seq
            && self.id == other.id
            && self.sender == other.sender
            && self.client_id == other.client_id
            && self.kind == other.kind
            && self.refers == other.refers
            && self.ts == other.ts
            && self.body.get() == other.body.get()
    }
}

/// A message about to be appended; the store assigns `seq`.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Target channel.
    pub channel: ChannelId,
    /// Server id, generated before the append.
    pub id: MessageId,
    /// Sender.
    pub sender: UserId,
    /// Idempotency key: a second append with the same `(channel, sender, client_id)` returns the first.
    pub client_id: Option<ClientMsgId>,
    /// Kind.
    pub kind: MessageKind,
    /// Target of an edit or recall.
    pub refers: Option<Seq>,
    /// Server timestamp.
    pub ts: Millis,
    /// Payload.
    pub body: Body,
}

impl NewMessage {
    /// The stored form of this message at `seq`.
    pub fn into_message(self, seq: Seq) -> Message {
        Message {
            channel: self.channel,
            seq,
            id: self.id,
            sender: self.sender,
            client_id: self.client_id,
            kind: self.kind,
            refers: self.refers,
            ts: self.ts,
            body: self.body,
        }
    }
}

/// The result of [`Store::append`](crate::store::Store::append).
#[derive(Debug, Clone)]
pub struct Appended {
    /// The stored message: the new one, or on a duplicate the original.
    pub message: Message,
    /// True when the client id had been used before and nothing was stored.
    pub duplicate: bool,
}

/// Channel metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Its id (which also gives its kind).
    pub id: ChannelId,
    /// Who created it (for direct channels: the first sender).
    pub created_by: UserId,
    /// Creation time.
    pub created_at: Millis,
}

impl Channel {
    /// Its kind.
    pub fn kind(&self) -> ChannelKind {
        self.id.kind()
    }
}

/// Which per-user position in a channel a cursor records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CursorKind {
    /// Everything up to seq has reached one of the user's devices (cumulative ack).
    Delivered,
    /// The user has read everything up to seq.
    Read,
}

/// Who is acting: the outcome of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user: UserId,
    /// The device, when the credentials name one.
    pub device: Option<DeviceId>,
    /// When the session must end (ms since the epoch): the credentials' expiry plus any leeway the
    /// authenticator grants. The connection is closed then (4002).
    pub expires_at: Option<Millis>,
}

impl Principal {
    /// A principal for `user` with no device and no expiry.
    pub fn user(user: UserId) -> Self {
        Self { user, device: None, expires_at: None }
    }
}

/// A page of history.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Messages in ascending seq order.
    pub messages: Vec<Message>,
    /// True when more messages exist beyond this page in the direction read.
    pub more: bool,
}
