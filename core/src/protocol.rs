//! The JSON v1 wire protocol: commands (client to server) and events (server to client).
//!
//! One JSON object per frame. Every command carries an `id` (an unsigned integer chosen by the client) that its
//! `reply` or `error` echoes. The full specification is `docs/protocol.md`; this module is its implementation
//! and the two must agree.
//!
//! Decoding is two-step so that a bad field never loses the command id: the frame is first read into a loose
//! `WireCommand` (strings and numbers, unknown fields ignored), then validated into a typed [`Command`].

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::id::{ChannelId, ClientMsgId, IdError, MessageId, SessionId, UserId};
use crate::model::{CursorKind, Message, MessageKind, Millis, Page, Seq};
use crate::status::{Code, Status};
use crate::trace_context::TraceParent;

/// The protocol version implemented here.
pub const PROTOCOL_VERSION: u32 = 1;

/// A client command, validated.
#[derive(Debug, Clone)]
pub enum Command {
    /// `auth`: authenticate the connection with a token.
    Auth {
        /// The bearer token.
        token: String,
    },
    /// `sub`: subscribe to a channel, replaying everything after `since` first.
    Subscribe {
        /// Channel.
        channel: ChannelId,
        /// Replay messages with seq > since before going live; `None` starts live from now.
        since: Option<Seq>,
    },
    /// `unsub`: stop live delivery of a channel.
    Unsubscribe {
        /// Channel.
        channel: ChannelId,
    },
    /// `send`: append a message to a channel.
    Send {
        /// Channel.
        channel: ChannelId,
        /// Idempotency key.
        client_id: Option<ClientMsgId>,
        /// Message, edit or recall.
        kind: MessageKind,
        /// For edit and recall: the seq of the message changed.
        refers: Option<Seq>,
        /// The payload (JSON `null` for recalls).
        body: Arc<RawValue>,
    },
    /// `ack`: everything up to `seq` in `channel` has been received (cumulative).
    Ack {
        /// Channel.
        channel: ChannelId,
        /// Highest seq received without gaps.
        seq: Seq,
    },
    /// `history`: a page of the channel's log.
    History {
        /// Channel.
        channel: ChannelId,
        /// Where to read.
        range: HistoryRange,
        /// Page size requested (capped by the server).
        limit: Option<u32>,
    },
    /// `read`: the user has read everything up to `seq` (read receipt).
    Read {
        /// Channel.
        channel: ChannelId,
        /// Highest seq read.
        seq: Seq,
    },
    /// `typing`: the user started or stopped typing.
    Typing {
        /// Channel.
        channel: ChannelId,
        /// True while typing.
        active: bool,
    },
    /// `create`: create a group channel.
    Create {
        /// The `group:` channel to create.
        channel: ChannelId,
        /// Initial members besides the creator.
        members: Vec<UserId>,
    },
    /// `ping`: a no-op that gets a reply (application-level keep-alive and latency probe).
    Ping,
}

/// Which part of the log a `history` command reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryRange {
    /// The newest messages.
    Latest,
    /// Messages with seq < the value (older page).
    Before(Seq),
    /// Messages with seq > the value (newer page).
    After(Seq),
}

/// The kind of a command, for metrics, tracing, rate limits and per-command policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// `auth`
    Auth,
    /// `sub`
    Subscribe,
    /// `unsub`
    Unsubscribe,
    /// `send`
    Send,
    /// `ack`
    Ack,
    /// `history`
    History,
    /// `read`
    Read,
    /// `typing`
    Typing,
    /// `create`
    Create,
    /// `ping`
    Ping,
}

impl CommandKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Subscribe => "sub",
            Self::Unsubscribe => "unsub",
            Self::Send => "send",
            Self::Ack => "ack",
            Self::History => "history",
            Self::Read => "read",
            Self::Typing => "typing",
            Self::Create => "create",
            Self::Ping => "ping",
        }
    }
}

impl Command {
    /// Its kind.
    pub fn kind(&self) -> CommandKind {
        match self {
            Self::Auth { .. } => CommandKind::Auth,
            Self::Subscribe { .. } => CommandKind::Subscribe,
            Self::Unsubscribe { .. } => CommandKind::Unsubscribe,
            Self::Send { .. } => CommandKind::Send,
            Self::Ack { .. } => CommandKind::Ack,
            Self::History { .. } => CommandKind::History,
            Self::Read { .. } => CommandKind::Read,
            Self::Typing { .. } => CommandKind::Typing,
            Self::Create { .. } => CommandKind::Create,
            Self::Ping => CommandKind::Ping,
        }
    }

    /// The channel the command acts on, if any.
    pub fn channel(&self) -> Option<&ChannelId> {
        match self {
            Self::Subscribe { channel, .. }
            | Self::Unsubscribe { channel }
            | Self::Send { channel, .. }
            | Self::Ack { channel, .. }
            | Self::History { channel, .. }
            | Self::Read { channel, .. }
            | Self::Typing { channel, .. }
            | Self::Create { channel, .. } => Some(channel),
            Self::Auth { .. } | Self::Ping => None,
        }
    }
}

/// A decoding failure, with the command id when it could be recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The frame's `id`, if the frame was an object with a valid id.
    pub id: Option<u64>,
    /// What to tell the client.
    pub status: Status,
}

/// The loose first-step form of a command frame. Unknown fields are ignored (forward compatibility).
#[derive(Deserialize)]
struct WireCommand<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
    id: Option<u64>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    since: Option<u64>,
    #[serde(borrow)]
    cid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "ref")]
    refers: Option<u64>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    seq: Option<u64>,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
    active: Option<bool>,
    #[serde(borrow)]
    members: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    traceparent: Option<Cow<'a, str>>,
}

/// A decoded command frame: the id, the command, and the W3C trace context the client attached, if valid.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The command id.
    pub id: u64,
    /// The command.
    pub command: Command,
    /// The frame's `traceparent` field, when present and valid (an invalid one is ignored, as W3C Trace Context
    /// asks).
    pub trace_parent: Option<TraceParent>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

/// Decodes one command frame.
pub fn decode_command(frame: &[u8]) -> Result<(u64, Command), DecodeError> {
    decode_frame(frame).map(|d| (d.id, d.command))
}

/// Decodes one command frame, keeping its optional `traceparent` field.
pub fn decode_frame(frame: &[u8]) -> Result<Decoded, DecodeError> {
    // serde would also accept a JSON array, positionally; a frame must be an object.
    if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DecodeError { id: None, status: Status::bad_request("a frame must be a JSON object") });
    }
    let wire: WireCommand<'_> = match serde_json::from_slice(frame) {
        Ok(w) => w,
        Err(e) => {
            // Recover the id if the frame is at least an object with a numeric id.
            let id = serde_json::from_slice::<IdOnly>(frame).ok().and_then(|i| i.id);
            let msg = if e.is_syntax() || e.is_eof() {
                format!("frame is not valid JSON: {e}")
            } else {
                format!("malformed command: {e}")
            };
            return Err(DecodeError { id, status: Status::bad_request(msg) });
        }
    };
    let Some(id) = wire.id else {
        return Err(DecodeError { id: None, status: Status::bad_request("missing field `id`") });
    };
    let fail = |status: Status| DecodeError { id: Some(id), status };
    let ty = wire.ty.as_deref().ok_or_else(|| fail(Status::bad_request("missing field `type`")))?;
    let channel = || -> Result<ChannelId, DecodeError> {
        let raw = wire.channel.as_deref().ok_or_else(|| fail(Status::bad_request("missing field `channel`")))?;
        ChannelId::new(raw).map_err(|e| fail(id_error("channel", e)))
    };
    let seq = || wire.seq.ok_or_else(|| fail(Status::bad_request("missing field `seq`")));
    let command = match ty {
        "auth" => {
            let token = wire.token.as_deref().ok_or_else(|| fail(Status::bad_request("missing field `token`")))?;
            Command::Auth { token: token.to_owned() }
        }
        "sub" => Command::Subscribe { channel: channel()?, since: wire.since },
        "unsub" => Command::Unsubscribe { channel: channel()? },
        "send" => {
            let channel = channel()?;
            let kind = match wire.kind.as_deref() {
                None | Some("message") => MessageKind::Message,
                Some("edit") => MessageKind::Edit,
                Some("recall") => MessageKind::Recall,
                Some(other) => {
                    return Err(fail(Status::bad_request(format!(
                        "field `kind` must be \"message\", \"edit\" or \"recall\", not {other:?}"
                    ))));
                }
            };
            let client_id = match wire.cid.as_deref() {
                Some(c) => Some(ClientMsgId::new(c).map_err(|e| fail(id_error("cid", e)))?),
                None => None,
            };
            let refers = match kind {
                MessageKind::Edit | MessageKind::Recall => Some(
                    wire.refers
                        .filter(|r| *r > 0)
                        .ok_or_else(|| fail(Status::bad_request("edit and recall need field `ref` (a seq > 0)")))?,
                ),
                _ => None,
            };
            let body = match (kind, wire.body) {
                (MessageKind::Recall, _) => crate::model::null_body(),
                (_, Some(b)) => Arc::from(b.to_owned()),
                (_, None) => return Err(fail(Status::bad_request("missing field `body` (any JSON value but null)"))),
            };
            Command::Send { channel, client_id, kind, refers, body }
        }
        "ack" => Command::Ack { channel: channel()?, seq: seq()? },
        "read" => Command::Read { channel: channel()?, seq: seq()? },
        "history" => {
            let range = match (wire.before, wire.after) {
                (None, None) => HistoryRange::Latest,
                (Some(b), None) => HistoryRange::Before(b),
                (None, Some(a)) => HistoryRange::After(a),
                (Some(_), Some(_)) => {
                    return Err(fail(Status::bad_request("give at most one of `before` and `after`")));
                }
            };
            if wire.limit == Some(0) {
                return Err(fail(Status::bad_request("field `limit` must be at least 1")));
            }
            Command::History { channel: channel()?, range, limit: wire.limit }
        }
        "typing" => Command::Typing { channel: channel()?, active: wire.active.unwrap_or(true) },
        "create" => {
            let channel = channel()?;
            let members = wire
                .members
                .unwrap_or_default()
                .iter()
                .map(|m| UserId::new(m).map_err(|e| fail(id_error("members", e))))
                .collect::<Result<Vec<_>, _>>()?;
            Command::Create { channel, members }
        }
        "ping" => Command::Ping,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(fail(Status::new(Code::UnknownCommand, format!("unknown command type {shown:?}"))));
        }
    };
    let trace_parent = wire.traceparent.as_deref().and_then(TraceParent::parse);
    Ok(Decoded { id, command, trace_parent })
}

fn id_error(field: &str, e: IdError) -> Status {
    match e {
        IdError::TooLong { .. } => Status::new(Code::TooLarge, format!("field `{field}`: {e}")),
        _ => Status::bad_request(format!("field `{field}`: {e}")),
    }
}

/// The successful result of a command, encoded as a `reply` event.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `auth` succeeded.
    Authenticated {
        /// The user.
        user: UserId,
        /// The session.
        session: SessionId,
        /// Token expiry (ms since the epoch).
        expires_at: Option<Millis>,
    },
    /// `sub` succeeded: every message with seq <= `seq` was sent before this reply; later ones follow live.
    Subscribed {
        /// Channel.
        channel: ChannelId,
        /// The live switch-over point.
        seq: Seq,
    },
    /// `send` succeeded: the message is durable.
    Sent {
        /// Its seq.
        seq: Seq,
        /// Its server id.
        mid: MessageId,
        /// Its server timestamp.
        ts: Millis,
        /// True when this was a resend of an already stored client id.
        dup: bool,
    },
    /// `ack` or `read` succeeded; the cursor's value afterwards.
    Cursor {
        /// Effective cursor value (never moves backward).
        seq: Seq,
    },
    /// `history` page.
    History(Page),
    /// `create` succeeded.
    Created {
        /// The new channel.
        channel: ChannelId,
    },
    /// A command with nothing to report (`unsub`, `typing`, `ping`).
    Ok,
}

#[derive(Serialize)]
struct MessageFields<'a> {
    channel: &'a ChannelId,
    seq: Seq,
    mid: MessageId,
    from: &'a UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<&'a ClientMsgId>,
    kind: MessageKind,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    refers: Option<Seq>,
    ts: Millis,
    body: &'a RawValue,
}

impl<'a> From<&'a Message> for MessageFields<'a> {
    fn from(m: &'a Message) -> Self {
        Self {
            channel: &m.channel,
            seq: m.seq,
            mid: m.id,
            from: &m.sender,
            cid: m.client_id.as_ref(),
            kind: m.kind,
            refers: m.refers,
            ts: m.ts,
            body: &m.body,
        }
    }
}

fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    to_bytes_sized(value, 128)
}

/// [`to_bytes`] into a buffer of `capacity` bytes to start with (enough for the frame: no regrowth).
fn to_bytes_sized<T: Serialize>(value: &T, capacity: usize) -> Bytes {
    let mut v = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut v, value) {
        Ok(()) => Bytes::from(v),
        // Serializing these plain structs cannot fail (no maps with non-string keys, no failing Serialize impls).
        Err(e) => {
            tracing::error!(error = %e, "failed to encode an event");
            Bytes::from_static(br#"{"type":"error","code":"internal","message":"encoding failure"}"#)
        }
    }
}

/// Encodes a `message` event.
pub fn encode_message(m: &Message) -> Bytes {
    // `type` and the fields of `MessageFields` in one struct rather than flattened: a flattened struct is
    // serialized through serde's map machinery, which is slower and allocates. Same bytes (tests compare them).
    #[derive(Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        channel: &'a ChannelId,
        seq: Seq,
        mid: MessageId,
        from: &'a UserId,
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a ClientMsgId>,
        kind: MessageKind,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        refers: Option<Seq>,
        ts: Millis,
        body: &'a RawValue,
    }
    let event = Event {
        ty: "message",
        channel: &m.channel,
        seq: m.seq,
        mid: m.id,
        from: &m.sender,
        cid: m.client_id.as_ref(),
        kind: m.kind,
        refers: m.refers,
        ts: m.ts,
        body: &m.body,
    };
    // The fixed part is under 200 bytes; ids are at most a few hundred.
    let size = 200 + m.body.get().len() + m.channel.as_str().len() + m.sender.as_str().len();
    to_bytes_sized(&event, size + m.client_id.as_ref().map_or(0, |c| c.as_str().len()))
}

/// Encodes a `receipt` event.
pub fn encode_receipt(channel: &ChannelId, user: &UserId, kind: CursorKind, seq: Seq) -> Bytes {
    #[derive(Serialize)]
    struct Receipt<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        channel: &'a ChannelId,
        user: &'a UserId,
        kind: CursorKind,
        seq: Seq,
    }
    to_bytes(&Receipt { ty: "receipt", channel, user, kind, seq })
}

/// Encodes a `typing` event.
pub fn encode_typing(channel: &ChannelId, user: &UserId, active: bool) -> Bytes {
    #[derive(Serialize)]
    struct Typing<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        channel: &'a ChannelId,
        user: &'a UserId,
        active: bool,
    }
    to_bytes(&Typing { ty: "typing", channel, user, active })
}

/// Encodes a `resync` event: live delivery of `channel` stopped after `seq`; subscribe again with `since`.
pub fn encode_resync(channel: &ChannelId, seq: Seq) -> Bytes {
    #[derive(Serialize)]
    struct Resync<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        channel: &'a ChannelId,
        seq: Seq,
    }
    to_bytes(&Resync { ty: "resync", channel, seq })
}

/// What the server announces in its `hello` event.
#[derive(Debug, Clone, Serialize)]
pub struct Hello {
    /// Protocol version.
    pub version: u32,
    /// The session id.
    pub session: SessionId,
    /// The user, when the connection was authenticated at connect time.
    pub user: Option<UserId>,
    /// When the session ends (ms since the epoch), when authenticated at connect time with expiring credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
    /// Idle timeout: the server closes a connection that sent nothing for this long.
    pub idle_timeout_ms: u64,
    /// Largest accepted frame in bytes.
    pub max_frame_bytes: usize,
    /// Largest accepted message body in bytes.
    pub max_body_bytes: usize,
}

/// Encodes the `hello` event.
pub fn encode_hello(hello: &Hello) -> Bytes {
    #[derive(Serialize)]
    struct Ev<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        #[serde(flatten)]
        hello: &'a Hello,
    }
    to_bytes(&Ev { ty: "hello", hello })
}

/// Encodes an `error` event (the reply to a failed command when `id` is given).
pub fn encode_error(id: Option<u64>, status: &Status) -> Bytes {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: Code,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    }
    to_bytes(&Error {
        ty: "error",
        id,
        code: status.code,
        message: &status.message,
        retry_after_ms: status.retry_after_ms,
    })
}

/// Encodes the `reply` event for a successful command.
pub fn encode_reply(id: u64, reply: &Reply) -> Bytes {
    #[derive(Serialize)]
    struct Ev<'a, T: Serialize> {
        #[serde(rename = "type")]
        ty: &'static str,
        id: u64,
        #[serde(flatten)]
        fields: &'a T,
    }
    fn ev<T: Serialize>(id: u64, fields: &T) -> Bytes {
        to_bytes(&Ev { ty: "reply", id, fields })
    }
    #[derive(Serialize)]
    struct Empty {}
    match reply {
        Reply::Authenticated { user, session, expires_at } => {
            #[derive(Serialize)]
            struct F<'a> {
                user: &'a UserId,
                session: SessionId,
                #[serde(skip_serializing_if = "Option::is_none")]
                expires_at: Option<Millis>,
            }
            ev(id, &F { user, session: *session, expires_at: *expires_at })
        }
        Reply::Subscribed { channel, seq } => {
            #[derive(Serialize)]
            struct F<'a> {
                channel: &'a ChannelId,
                seq: Seq,
            }
            ev(id, &F { channel, seq: *seq })
        }
        Reply::Sent { seq, mid, ts, dup } => {
            // Not flattened (see `encode_message`): the reply to every send.
            #[derive(Serialize)]
            struct F {
                #[serde(rename = "type")]
                ty: &'static str,
                id: u64,
                seq: Seq,
                mid: MessageId,
                ts: Millis,
                dup: bool,
            }
            to_bytes(&F { ty: "reply", id, seq: *seq, mid: *mid, ts: *ts, dup: *dup })
        }
        Reply::Cursor { seq } => {
            #[derive(Serialize)]
            struct F {
                seq: Seq,
            }
            ev(id, &F { seq: *seq })
        }
        Reply::History(page) => {
            #[derive(Serialize)]
            struct F<'a> {
                messages: Vec<MessageFields<'a>>,
                more: bool,
            }
            ev(id, &F { messages: page.messages.iter().map(MessageFields::from).collect(), more: page.more })
        }
        Reply::Created { channel } => {
            #[derive(Serialize)]
            struct F<'a> {
                channel: &'a ChannelId,
            }
            ev(id, &F { channel })
        }
        Reply::Ok => ev(id, &Empty {}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<(u64, Command), DecodeError> {
        decode_command(s.as_bytes())
    }

    fn code_of(s: &str) -> (Option<u64>, Code) {
        match decode(s) {
            Ok(c) => panic!("expected an error for {s}, got {c:?}"),
            Err(e) => (e.id, e.status.code),
        }
    }

    #[test]
    fn decodes_every_command() {
        let cases = [
            (r#"{"type":"auth","id":1,"token":"t"}"#, CommandKind::Auth),
            (r#"{"type":"sub","id":2,"channel":"group:g","since":5}"#, CommandKind::Subscribe),
            (r#"{"type":"unsub","id":3,"channel":"group:g"}"#, CommandKind::Unsubscribe),
            (r#"{"type":"send","id":4,"channel":"dm:a:b","cid":"c-1","body":{"text":"hi"}}"#, CommandKind::Send),
            (r#"{"type":"ack","id":5,"channel":"dm:a:b","seq":3}"#, CommandKind::Ack),
            (r#"{"type":"history","id":6,"channel":"dm:a:b","before":9,"limit":10}"#, CommandKind::History),
            (r#"{"type":"read","id":7,"channel":"dm:a:b","seq":3}"#, CommandKind::Read),
            (r#"{"type":"typing","id":8,"channel":"dm:a:b"}"#, CommandKind::Typing),
            (r#"{"type":"create","id":9,"channel":"group:g","members":["a","b"]}"#, CommandKind::Create),
            (r#"{"type":"ping","id":10,"future_field":[1,2]}"#, CommandKind::Ping),
        ];
        for (i, (frame, kind)) in cases.iter().enumerate() {
            let (id, cmd) = decode(frame).unwrap_or_else(|e| panic!("{frame}: {e:?}"));
            assert_eq!(id, i as u64 + 1);
            assert_eq!(cmd.kind(), *kind);
        }
    }

    #[test]
    fn body_bytes_are_kept_verbatim() {
        let (_, cmd) = decode(r#"{"type":"send","id":1,"channel":"dm:a:b","body":{"z": 1,  "a":[true]}}"#)
            .unwrap_or_else(|e| panic!("{e:?}"));
        match cmd {
            Command::Send { body, kind, .. } => {
                assert_eq!(body.get(), r#"{"z": 1,  "a":[true]}"#);
                assert_eq!(kind, MessageKind::Message);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_keep_the_id_when_possible() {
        assert_eq!(code_of("not json"), (None, Code::BadRequest));
        assert_eq!(code_of("[1,2]"), (None, Code::BadRequest));
        assert_eq!(code_of(r#"["ping", 1]"#), (None, Code::BadRequest));
        assert_eq!(code_of(r#"{"type":"ping"}"#), (None, Code::BadRequest));
        assert_eq!(code_of(r#"{"id":3}"#), (Some(3), Code::BadRequest));
        assert_eq!(code_of(r#"{"type":"launch","id":4}"#), (Some(4), Code::UnknownCommand));
        // A field of the wrong type fails the loose parse; the id is still recovered.
        assert_eq!(code_of(r#"{"type":"sub","id":5,"channel":7}"#), (Some(5), Code::BadRequest));
        assert_eq!(code_of(r#"{"type":"sub","id":6,"channel":"room:x"}"#), (Some(6), Code::BadRequest));
        assert_eq!(code_of(r#"{"type":"sub","id":7}"#), (Some(7), Code::BadRequest));
        assert_eq!(code_of(r#"{"type":"send","id":8,"channel":"dm:a:b"}"#), (Some(8), Code::BadRequest));
        assert_eq!(code_of(r#"{"type":"send","id":9,"channel":"dm:a:b","body":null}"#), (Some(9), Code::BadRequest));
        assert_eq!(
            code_of(r#"{"type":"send","id":10,"channel":"dm:a:b","kind":"edit","body":1}"#),
            (Some(10), Code::BadRequest)
        );
        assert_eq!(
            code_of(r#"{"type":"send","id":11,"channel":"dm:a:b","kind":"boom","body":1}"#),
            (Some(11), Code::BadRequest)
        );
        let long = "x".repeat(65);
        assert_eq!(
            code_of(&format!(r#"{{"type":"send","id":12,"channel":"dm:a:b","cid":"{long}","body":1}}"#)),
            (Some(12), Code::TooLarge)
        );
        assert_eq!(code_of(r#"{"type":"history","id":13,"channel":"dm:a:b","limit":0}"#), (Some(13), Code::BadRequest));
        assert_eq!(
            code_of(r#"{"type":"history","id":14,"channel":"dm:a:b","before":1,"after":2}"#),
            (Some(14), Code::BadRequest)
        );
        assert_eq!(code_of(r#"{"type":"ack","id":15,"channel":"dm:a:b"}"#), (Some(15), Code::BadRequest));
        assert_eq!(code_of(r#"{"type":"ping","id":-1}"#), (None, Code::BadRequest));
    }

    #[test]
    fn traceparent_is_optional_and_ignored_when_invalid() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let d = decode_frame(format!(r#"{{"type":"ping","id":1,"traceparent":"{tp}"}}"#).as_bytes())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(d.trace_parent.as_ref().map(TraceParent::as_str), Some(tp));
        let d = decode_frame(br#"{"type":"ping","id":2,"traceparent":"nonsense"}"#).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(d.trace_parent.is_none());
        assert!(decode_frame(br#"{"type":"ping","id":3}"#).is_ok_and(|d| d.trace_parent.is_none()));
        // The wrong JSON type fails the frame, like any known field.
        assert_eq!(code_of(r#"{"type":"ping","id":4,"traceparent":7}"#), (Some(4), Code::BadRequest));
    }

    #[test]
    fn recall_needs_no_body() {
        let (_, cmd) = decode(r#"{"type":"send","id":1,"channel":"dm:a:b","kind":"recall","ref":4}"#)
            .unwrap_or_else(|e| panic!("{e:?}"));
        match cmd {
            Command::Send { kind, refers, body, .. } => {
                assert_eq!(kind, MessageKind::Recall);
                assert_eq!(refers, Some(4));
                assert_eq!(body.get(), "null");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn events_encode_exactly() {
        let status = Status::new(Code::Forbidden, "no").with_retry_after(5);
        assert_eq!(
            &encode_error(Some(7), &status)[..],
            br#"{"type":"error","id":7,"code":"forbidden","message":"no","retry_after_ms":5}"#
        );
        assert_eq!(
            &encode_error(None, &Status::bad_request("x"))[..],
            br#"{"type":"error","code":"bad_request","message":"x"}"#
        );
        assert_eq!(&encode_reply(3, &Reply::Ok)[..], br#"{"type":"reply","id":3}"#);
        assert_eq!(&encode_reply(4, &Reply::Cursor { seq: 9 })[..], br#"{"type":"reply","id":4,"seq":9}"#);
        let ch = ChannelId::new("dm:a:b").unwrap_or_else(|e| panic!("{e}"));
        let user = UserId::new("a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            &encode_receipt(&ch, &user, CursorKind::Read, 4)[..],
            br#"{"type":"receipt","channel":"dm:a:b","user":"a","kind":"read","seq":4}"#
        );
        assert_eq!(
            &encode_typing(&ch, &user, true)[..],
            br#"{"type":"typing","channel":"dm:a:b","user":"a","active":true}"#
        );
        assert_eq!(&encode_resync(&ch, 12)[..], br#"{"type":"resync","channel":"dm:a:b","seq":12}"#);
        let msg = Message {
            channel: ch,
            seq: 2,
            id: MessageId(uuid::Uuid::nil()),
            sender: user,
            client_id: None,
            kind: MessageKind::Edit,
            refers: Some(1),
            ts: 1000,
            body: Arc::from(RawValue::from_string(r#"{"t": 1}"#.into()).unwrap_or_else(|e| panic!("{e}"))),
        };
        assert_eq!(
            std::str::from_utf8(&encode_message(&msg)).ok(),
            Some(
                r#"{"type":"message","channel":"dm:a:b","seq":2,"mid":"00000000-0000-0000-0000-000000000000","from":"a","kind":"edit","ref":1,"ts":1000,"body":{"t": 1}}"#
            )
        );
        let plain = Message {
            kind: MessageKind::Message,
            refers: None,
            client_id: Some(ClientMsgId::new("c-1").unwrap_or_else(|e| panic!("{e}"))),
            ..msg
        };
        assert_eq!(
            std::str::from_utf8(&encode_message(&plain)).ok(),
            Some(
                r#"{"type":"message","channel":"dm:a:b","seq":2,"mid":"00000000-0000-0000-0000-000000000000","from":"a","cid":"c-1","kind":"message","ts":1000,"body":{"t": 1}}"#
            )
        );
        let sent = Reply::Sent { seq: 3, mid: MessageId(uuid::Uuid::nil()), ts: 5, dup: true };
        assert_eq!(
            std::str::from_utf8(&encode_reply(7, &sent)).ok(),
            Some(r#"{"type":"reply","id":7,"seq":3,"mid":"00000000-0000-0000-0000-000000000000","ts":5,"dup":true}"#)
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_command(&bytes);
        }

        #[test]
        fn decoding_arbitrary_json_objects_never_panics(
            ty in proptest::sample::select(vec!["auth", "sub", "unsub", "send", "ack", "history", "read", "typing", "create", "ping", "x"]),
            id in proptest::option::of(proptest::num::u64::ANY),
            channel in proptest::option::of(".{0,160}"),
            since in proptest::option::of(proptest::num::u64::ANY),
            kind in proptest::option::of(".{0,10}"),
            refers in proptest::option::of(proptest::num::u64::ANY),
            limit in proptest::option::of(proptest::num::u32::ANY),
            members in proptest::option::of(proptest::collection::vec(".{0,70}", 0..5)),
        ) {
            let frame = serde_json::json!({
                "type": ty, "id": id, "channel": channel, "since": since, "kind": kind, "ref": refers,
                "limit": limit, "members": members, "body": {"t": 1}, "seq": since, "token": "t", "cid": kind,
            });
            match decode_command(frame.to_string().as_bytes()) {
                Ok((decoded_id, _)) => proptest::prop_assert_eq!(Some(decoded_id), id),
                Err(e) => proptest::prop_assert!(!e.status.message.is_empty()),
            }
        }
    }
}
