//! The wire-level status: the only failure a client ever sees.
//!
//! Every local error type ([`StoreError`](crate::store::StoreError), [`AuthError`](crate::auth::AuthError), ...)
//! converts into a [`Status`]. Internal details (database messages, file paths) stay in the server's logs; the
//! client gets a stable [`Code`] and a short human-readable message.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable, machine-readable failure code. The set is closed for protocol v1; clients must treat an
/// unknown code like `internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The frame is not valid JSON, not an object, lacks a required field or a field has the wrong type or value.
    BadRequest,
    /// The frame's `type` is not a command of this protocol version.
    UnknownCommand,
    /// No valid credentials: missing, malformed, badly signed or expired token.
    Unauthenticated,
    /// Authenticated, but not allowed to do this on this channel (for example: not a member).
    Forbidden,
    /// The channel, or the message an edit or recall refers to, does not exist.
    NotFound,
    /// The thing to create exists already.
    Conflict,
    /// A frame, body or field exceeds its size limit.
    TooLarge,
    /// A per-session or per-user limit other than size was reached (subscriptions, members, ...).
    LimitExceeded,
    /// Too many requests; retry after `retry_after_ms`.
    RateLimited,
    /// The command took longer than the server's deadline. Its effect is unknown: retry idempotently.
    Timeout,
    /// A dependency (the store, the broker) is unavailable; nothing was done. Safe to retry.
    Unavailable,
    /// A bug or an unexpected failure on the server.
    Internal,
}

impl Code {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownCommand => "unknown_command",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::LimitExceeded => "limit_exceeded",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure as the client sees it: a [`Code`], a message, and for `rate_limited` a retry hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The stable code.
    pub code: Code,
    /// A short explanation for humans; not meant to be parsed.
    pub message: Cow<'static, str>,
    /// When to retry, for `rate_limited` and `unavailable`.
    pub retry_after_ms: Option<u64>,
}

impl Status {
    /// A status with `code` and `message`.
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, message: message.into(), retry_after_ms: None }
    }

    /// Adds a retry hint.
    pub fn with_retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// `bad_request` with `message`.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    /// `forbidden` with `message`.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    /// `internal`, with a generic message (details belong in the server log, not on the wire).
    pub fn internal() -> Self {
        Self::new(Code::Internal, "internal error")
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}
