//! A minimal codec for the Engine.IO v4 / Socket.IO v5 text protocol over a raw WebSocket, enough for a load
//! client of a Socket.IO server (`/socket.io/?EIO=4&transport=websocket`).
//!
//! One WebSocket text message is one Engine.IO packet: a type digit, then data. Engine.IO `4` (message)
//! carries one Socket.IO packet: a type digit, an optional `/namespace,`, an optional ack id, then JSON.
//!
//! | on the wire | meaning |
//! |---|---|
//! | `0{"sid":…,"pingInterval":25000,…}` | Engine.IO open (server → client, first frame) |
//! | `2` / `3` | ping (the server sends it in v4) / pong (the client answers) |
//! | `40` or `40{"token":…}` | Socket.IO connect to the main namespace (client), `40{"sid":…}` (server's answer) |
//! | `42["event",arg…]`, `4212["event",…]` | an event, the second with ack id 12 |
//! | `44{"message":…}` | connect error |
//!
//! ```
//! use herald_bench::sio::{self, Packet};
//! assert_eq!(sio::parse("42[\"m\",{\"a\":1}]"), Ok(Packet::Event { nsp: "/", ack: None, args: "[\"m\",{\"a\":1}]" }));
//! assert_eq!(sio::event("m", "{\"a\":1}"), "42[\"m\",{\"a\":1}]");
//! ```

/// One decoded Engine.IO packet (with its Socket.IO packet, for messages). Borrowed from the frame text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Engine.IO open, with its JSON handshake data.
    Open(&'a str),
    /// Engine.IO close.
    Close,
    /// Engine.IO ping, with its optional data (the client must answer with a pong carrying the same data).
    Ping(&'a str),
    /// Engine.IO pong.
    Pong(&'a str),
    /// Engine.IO noop.
    Noop,
    /// Engine.IO upgrade (not used over a WebSocket-only connection).
    Upgrade,
    /// Socket.IO connect (from the server: accepted, with `{"sid":…}`).
    Connect {
        /// Namespace.
        nsp: &'a str,
        /// JSON data, if any.
        data: Option<&'a str>,
    },
    /// Socket.IO disconnect.
    Disconnect {
        /// Namespace.
        nsp: &'a str,
    },
    /// Socket.IO event: `args` is the JSON array text `["name", …]`.
    Event {
        /// Namespace.
        nsp: &'a str,
        /// Ack id, when the sender wants an acknowledgement.
        ack: Option<u64>,
        /// The JSON array `["name", arg…]`.
        args: &'a str,
    },
    /// Socket.IO ack: `args` is the JSON array of the ack's arguments.
    Ack {
        /// Namespace.
        nsp: &'a str,
        /// The acknowledged id.
        ack: u64,
        /// The JSON array of the arguments.
        args: &'a str,
    },
    /// Socket.IO connect error, with its JSON data.
    ConnectError {
        /// Namespace.
        nsp: &'a str,
        /// JSON data.
        data: &'a str,
    },
}

/// Why a frame is not a packet this codec understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioError {
    /// The frame is empty.
    Empty,
    /// Unknown Engine.IO packet type.
    UnknownEngineType(char),
    /// An Engine.IO message without a Socket.IO packet type, or an unknown one.
    UnknownSocketType,
    /// Binary packets (types 5 and 6) are not supported.
    Binary,
    /// An event or ack without its JSON array.
    MissingArgs,
}

impl std::fmt::Display for SioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("empty Engine.IO frame"),
            Self::UnknownEngineType(c) => write!(f, "unknown Engine.IO packet type {c:?}"),
            Self::UnknownSocketType => f.write_str("unknown or missing Socket.IO packet type"),
            Self::Binary => f.write_str("binary Socket.IO packets are not supported"),
            Self::MissingArgs => f.write_str("Socket.IO event or ack without a JSON array"),
        }
    }
}

impl std::error::Error for SioError {}

/// Decodes one WebSocket text frame.
pub fn parse(frame: &str) -> Result<Packet<'_>, SioError> {
    let mut chars = frame.chars();
    let engine = chars.next().ok_or(SioError::Empty)?;
    let rest = &frame[1..];
    match engine {
        '0' => Ok(Packet::Open(rest)),
        '1' => Ok(Packet::Close),
        '2' => Ok(Packet::Ping(rest)),
        '3' => Ok(Packet::Pong(rest)),
        '4' => parse_socket(rest),
        '5' => Ok(Packet::Upgrade),
        '6' => Ok(Packet::Noop),
        c => Err(SioError::UnknownEngineType(c)),
    }
}

fn parse_socket(text: &str) -> Result<Packet<'_>, SioError> {
    let kind = text.chars().next().ok_or(SioError::UnknownSocketType)?;
    let mut rest = &text[1..];
    if matches!(kind, '5' | '6') {
        return Err(SioError::Binary);
    }
    // Optional namespace: `/name,`.
    let mut nsp = "/";
    if rest.starts_with('/') {
        match rest.find(',') {
            Some(i) => {
                nsp = &rest[..i];
                rest = &rest[i + 1..];
            }
            None => {
                nsp = rest;
                rest = "";
            }
        }
    }
    // Optional ack id: digits.
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = if digits > 0 { rest[..digits].parse::<u64>().ok() } else { None };
    let body = &rest[digits..];
    let data = (!body.is_empty()).then_some(body);
    match kind {
        '0' => Ok(Packet::Connect { nsp, data }),
        '1' => Ok(Packet::Disconnect { nsp }),
        '2' => match data {
            Some(args) if args.starts_with('[') => Ok(Packet::Event { nsp, ack, args }),
            _ => Err(SioError::MissingArgs),
        },
        '3' => match (ack, data) {
            (Some(ack), Some(args)) if args.starts_with('[') => Ok(Packet::Ack { nsp, ack, args }),
            _ => Err(SioError::MissingArgs),
        },
        '4' => Ok(Packet::ConnectError { nsp, data: body }),
        _ => Err(SioError::UnknownSocketType),
    }
}

/// The event name of an event's argument array (`["name", …]`), when it is a plain string without escapes.
pub fn event_name(args: &str) -> Option<&str> {
    let rest = args.strip_prefix("[\"")?;
    let end = rest.find('"')?;
    let name = &rest[..end];
    (!name.contains('\\')).then_some(name)
}

/// The Socket.IO connect packet for the main namespace, with optional JSON auth data.
pub fn connect(auth: Option<&str>) -> String {
    match auth {
        Some(a) => format!("40{a}"),
        None => "40".to_owned(),
    }
}

/// An event on the main namespace: `42["name",<arg>]`. `name` must not need JSON escaping; `arg_json` is
/// JSON text.
pub fn event(name: &str, arg_json: &str) -> String {
    format!("42[\"{name}\",{arg_json}]")
}

/// An event with several JSON arguments: `42["name",a,b,…]`.
pub fn event_args(name: &str, args_json: &[&str]) -> String {
    let mut s = format!("42[\"{name}\"");
    for a in args_json {
        s.push(',');
        s.push_str(a);
    }
    s.push(']');
    s
}

/// The pong answering a ping with `data`.
pub fn pong(data: &str) -> String {
    format!("3{data}")
}

/// The WebSocket path of a Socket.IO server (Engine.IO v4, WebSocket transport only).
pub const WS_PATH: &str = "/socket.io/?EIO=4&transport=websocket";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets() {
        assert_eq!(parse("0{\"sid\":\"a\"}"), Ok(Packet::Open("{\"sid\":\"a\"}")));
        assert_eq!(parse("2"), Ok(Packet::Ping("")));
        assert_eq!(parse("2probe"), Ok(Packet::Ping("probe")));
        assert_eq!(parse("3"), Ok(Packet::Pong("")));
        assert_eq!(parse("1"), Ok(Packet::Close));
        assert_eq!(parse("6"), Ok(Packet::Noop));
        assert_eq!(parse(""), Err(SioError::Empty));
        assert_eq!(parse("9"), Err(SioError::UnknownEngineType('9')));
    }

    #[test]
    fn socket_packets() {
        assert_eq!(parse("40"), Ok(Packet::Connect { nsp: "/", data: None }));
        assert_eq!(parse("40{\"sid\":\"x\"}"), Ok(Packet::Connect { nsp: "/", data: Some("{\"sid\":\"x\"}") }));
        assert_eq!(
            parse("40/admin,{\"sid\":\"x\"}"),
            Ok(Packet::Connect { nsp: "/admin", data: Some("{\"sid\":\"x\"}") })
        );
        assert_eq!(parse("41"), Ok(Packet::Disconnect { nsp: "/" }));
        assert_eq!(parse("41/admin,"), Ok(Packet::Disconnect { nsp: "/admin" }));
        assert_eq!(parse("4212[\"e\",1]"), Ok(Packet::Event { nsp: "/", ack: Some(12), args: "[\"e\",1]" }));
        assert_eq!(parse("42/chat,7[\"e\"]"), Ok(Packet::Event { nsp: "/chat", ack: Some(7), args: "[\"e\"]" }));
        assert_eq!(parse("437[1,2]"), Ok(Packet::Ack { nsp: "/", ack: 7, args: "[1,2]" }));
        assert_eq!(
            parse("44{\"message\":\"no\"}"),
            Ok(Packet::ConnectError { nsp: "/", data: "{\"message\":\"no\"}" })
        );
    }

    #[test]
    fn malformed_socket_packets() {
        assert_eq!(parse("4"), Err(SioError::UnknownSocketType));
        assert_eq!(parse("49"), Err(SioError::UnknownSocketType));
        assert_eq!(parse("42"), Err(SioError::MissingArgs));
        assert_eq!(parse("42{\"a\":1}"), Err(SioError::MissingArgs));
        assert_eq!(parse("43[1]"), Err(SioError::MissingArgs));
        assert_eq!(parse("451-[\"e\",{\"_placeholder\":true,\"num\":0}]"), Err(SioError::Binary));
    }

    #[test]
    fn encoding() {
        assert_eq!(connect(None), "40");
        assert_eq!(connect(Some("{\"token\":\"t\"}")), "40{\"token\":\"t\"}");
        assert_eq!(event("join", "\"room\""), "42[\"join\",\"room\"]");
        assert_eq!(event_args("dm", &["\"u1\"", "{\"x\":1}"]), "42[\"dm\",\"u1\",{\"x\":1}]");
        assert_eq!(pong(""), "3");
        assert_eq!(pong("probe"), "3probe");
    }

    #[test]
    fn round_trip_and_event_names() {
        let text = event_args("m", &["{\"hb_n\":1}"]);
        let Ok(Packet::Event { args, .. }) = parse(&text) else { panic!("not an event: {text}") };
        assert_eq!(event_name(args), Some("m"));
        assert_eq!(event_name("[\"a\\\"b\"]"), None);
        assert_eq!(event_name("[1]"), None);
    }
}
