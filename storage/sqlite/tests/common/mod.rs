//! What the SQLite store's own test files share: scratch directories, ids and new messages.

use std::sync::Arc;

use herald_core::id::{ChannelId, ChannelName, ClientMsgId, MessageId, UserId};
use herald_core::model::{MessageKind, NewMessage, now_millis};
use serde_json::value::RawValue;

pub(crate) fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

pub(crate) fn user(name: &str) -> UserId {
    UserId::new(name).expect("a valid user id")
}

pub(crate) fn group(name: &str) -> ChannelId {
    ChannelId::group(&ChannelName::new(name).expect("a valid channel name"))
}

/// A new message from `sender` to `ch` with body `json` (a JSON text) and, optionally, a client message id.
pub(crate) fn message(ch: &ChannelId, sender: &UserId, client_id: Option<&str>, json: &str) -> NewMessage {
    NewMessage {
        channel: ch.clone(),
        id: MessageId::generate(),
        sender: sender.clone(),
        client_id: client_id.map(|c| ClientMsgId::new(c).expect("a valid client id")),
        kind: MessageKind::Message,
        refers: None,
        ts: now_millis(),
        body: Arc::from(RawValue::from_string(json.to_owned()).expect("valid JSON")),
    }
}
