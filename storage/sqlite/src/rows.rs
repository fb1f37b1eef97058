//! Row encoding and decoding shared by the readers and the writer.

use std::sync::Arc;

use herald_core::id::{ChannelId, ClientMsgId, MessageId, UserId};
use herald_core::model::{Channel, CursorKind, Message, MessageKind, Seq};
use herald_core::store::StoreError;
use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::error::corrupt;

/// The columns [`message`] decodes, in order (the channel is known to the caller).
macro_rules! message_columns {
    () => {
        "seq, id, sender, client_id, kind, refers, ts, body"
    };
}
pub(crate) use message_columns;

/// A `u64` argument as SQLite's signed 64-bit integer, clamped (seqs never come near `i64::MAX`).
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored seq (never negative: a CHECK constraint guards it).
fn seq(v: i64) -> Result<Seq, StoreError> {
    Seq::try_from(v).map_err(|_| corrupt(format_args!("negative seq {v}")))
}

pub(crate) fn kind_str(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Message => "message",
        MessageKind::Edit => "edit",
        MessageKind::Recall => "recall",
        MessageKind::System => "system",
    }
}

fn kind(s: &str) -> Result<MessageKind, StoreError> {
    Ok(match s {
        "message" => MessageKind::Message,
        "edit" => MessageKind::Edit,
        "recall" => MessageKind::Recall,
        "system" => MessageKind::System,
        other => return Err(corrupt(format_args!("unknown message kind {other:?}"))),
    })
}

pub(crate) fn cursor_kind_str(kind: CursorKind) -> &'static str {
    match kind {
        CursorKind::Delivered => "delivered",
        CursorKind::Read => "read",
    }
}

fn get<'r, T>(row: &'r SqliteRow, column: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(column).map_err(corrupt)
}

/// Decodes a message row of `channel` selected with [`message_columns`].
pub(crate) fn message(channel: &ChannelId, row: &SqliteRow) -> Result<Message, StoreError> {
    let id: &[u8] = get(row, 1)?;
    let id = uuid::Uuid::from_slice(id).map_err(|e| corrupt(format_args!("message id: {e}")))?;
    let sender: &str = get(row, 2)?;
    let client_id: Option<&str> = get(row, 3)?;
    let refers: Option<i64> = get(row, 5)?;
    let body: &str = get(row, 7)?;
    let body = RawValue::from_string(body.to_owned()).map_err(|e| corrupt(format_args!("message body: {e}")))?;
    Ok(Message {
        channel: channel.clone(),
        seq: seq(get(row, 0)?)?,
        id: MessageId(id),
        sender: UserId::new(sender).map_err(corrupt)?,
        client_id: client_id.map(ClientMsgId::new).transpose().map_err(corrupt)?,
        kind: kind(get(row, 4)?)?,
        refers: refers.map(seq).transpose()?,
        ts: get(row, 6)?,
        body: Arc::from(body),
    })
}

/// Decodes `created_by, created_at` of channel `id`.
pub(crate) fn channel(id: &ChannelId, row: &SqliteRow) -> Result<Channel, StoreError> {
    let created_by: &str = get(row, 0)?;
    Ok(Channel { id: id.clone(), created_by: UserId::new(created_by).map_err(corrupt)?, created_at: get(row, 1)? })
}

/// Decodes a seq in column 0 (`last_seq`, a cursor).
pub(crate) fn seq_column(row: &SqliteRow) -> Result<Seq, StoreError> {
    seq(get(row, 0)?)
}

/// Decodes a user id in column 0.
pub(crate) fn user(row: &SqliteRow) -> Result<UserId, StoreError> {
    let user: &str = get(row, 0)?;
    UserId::new(user).map_err(corrupt)
}
