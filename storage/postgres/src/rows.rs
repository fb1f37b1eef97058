//! Conversions between Herald's model and the database's rows and columns.

use std::sync::Arc;

use herald_core::id::{ChannelId, ClientMsgId, MessageId, UserId};
use herald_core::model::{CursorKind, Message, MessageKind, Seq};
use herald_core::store::StoreError;
use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::error::{internal, store_error};

/// The columns of a message, in the order [`message_from_row`] reads them (after any leading columns).
pub(crate) const MESSAGE_COLUMNS: &str = "seq, id, sender, client_id, kind, refers, ts, body";

/// The database spelling of a message kind.
pub(crate) fn kind_str(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Message => "message",
        MessageKind::Edit => "edit",
        MessageKind::Recall => "recall",
        MessageKind::System => "system",
    }
}

fn parse_kind(s: &str) -> Result<MessageKind, StoreError> {
    Ok(match s {
        "message" => MessageKind::Message,
        "edit" => MessageKind::Edit,
        "recall" => MessageKind::Recall,
        "system" => MessageKind::System,
        other => return Err(internal(format!("unknown message kind {other:?} in the database"))),
    })
}

/// The database spelling of a cursor kind.
pub(crate) fn cursor_kind_str(kind: CursorKind) -> &'static str {
    match kind {
        CursorKind::Delivered => "delivered",
        CursorKind::Read => "read",
    }
}

/// A seq as a database bigint, saturating (seqs beyond `i64::MAX` do not exist in the database, so a bound past
/// them behaves like `i64::MAX`).
pub(crate) fn seq_to_db(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A database bigint as a seq.
pub(crate) fn seq_from_db(v: i64) -> Result<Seq, StoreError> {
    Seq::try_from(v).map_err(|_| internal(format!("negative seq {v} in the database")))
}

/// Reads a message whose columns start at `at` in [`MESSAGE_COLUMNS`] order; its channel is `channel`.
pub(crate) fn message_from_row(row: &PgRow, at: usize, channel: &ChannelId) -> Result<Message, StoreError> {
    let get_err = |e: sqlx::Error| store_error(e);
    let seq: i64 = row.try_get(at).map_err(get_err)?;
    let id: uuid::Uuid = row.try_get(at + 1).map_err(get_err)?;
    let sender: &str = row.try_get(at + 2).map_err(get_err)?;
    let client_id: Option<&str> = row.try_get(at + 3).map_err(get_err)?;
    let kind: &str = row.try_get(at + 4).map_err(get_err)?;
    let refers: Option<i64> = row.try_get(at + 5).map_err(get_err)?;
    let ts: i64 = row.try_get(at + 6).map_err(get_err)?;
    let body: String = row.try_get(at + 7).map_err(get_err)?;
    let corrupt = |what: &str, e: &dyn std::fmt::Display| internal(format!("corrupt {what} in {channel}: {e}"));
    Ok(Message {
        channel: channel.clone(),
        seq: seq_from_db(seq)?,
        id: MessageId(id),
        sender: UserId::new(sender).map_err(|e| corrupt("sender", &e))?,
        client_id: client_id.map(ClientMsgId::new).transpose().map_err(|e| corrupt("client id", &e))?,
        kind: parse_kind(kind)?,
        refers: refers.map(seq_from_db).transpose()?,
        ts,
        body: Arc::from(RawValue::from_string(body).map_err(|e| corrupt("body", &e))?),
    })
}

/// Parses a user id read from the database.
pub(crate) fn user_from_db(s: &str) -> Result<UserId, StoreError> {
    UserId::new(s).map_err(|e| internal(format!("corrupt user id in the database: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for kind in [MessageKind::Message, MessageKind::Edit, MessageKind::Recall, MessageKind::System] {
            assert_eq!(parse_kind(kind_str(kind)).expect("known kind"), kind);
            // The database spelling is the protocol's.
            assert_eq!(serde_json::to_string(&kind).expect("serializes"), format!("\"{}\"", kind_str(kind)));
        }
        assert!(parse_kind("bogus").is_err());
        for kind in [CursorKind::Delivered, CursorKind::Read] {
            assert_eq!(serde_json::to_string(&kind).expect("serializes"), format!("\"{}\"", cursor_kind_str(kind)));
        }
    }

    #[test]
    fn seqs() {
        assert_eq!(seq_to_db(5), 5);
        assert_eq!(seq_to_db(Seq::MAX), i64::MAX);
        assert_eq!(seq_from_db(7).expect("positive"), 7);
        assert!(seq_from_db(-1).is_err());
    }
}
