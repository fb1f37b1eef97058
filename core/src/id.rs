//! Validated identifiers.
//!
//! Every identifier that crosses the wire is a newtype that can only be built through validation, so the rest of
//! the code never sees an empty, oversized or oddly-charactered id. The rules are part of the protocol
//! (`docs/protocol.md`, "Identifiers").

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier was being parsed.
        kind: &'static str,
    },
    /// The string is longer than allowed.
    #[error("{kind} is {len} bytes long, at most {max} are allowed")]
    TooLong {
        /// Which identifier was being parsed.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The string contains a character outside the allowed set.
    #[error("{kind} contains {found:?}; allowed are ASCII letters, digits and {allowed}")]
    BadChar {
        /// Which identifier was being parsed.
        kind: &'static str,
        /// The first offending character.
        found: char,
        /// The punctuation that is allowed.
        allowed: &'static str,
    },
    /// A channel id without a known `kind:` prefix, or with a malformed remainder.
    #[error("channel id {0:?} is malformed: expected dm:<user>:<user>, group:<name>, topic:<name> or user:<user>")]
    BadChannel(String),
}

/// Characters allowed in names besides ASCII alphanumerics.
const NAME_PUNCT: &str = "-_.@";

fn validate(kind: &'static str, s: &str, max: usize, punct: &'static str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong { kind, len: s.len(), max });
    }
    if let Some(found) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || punct.contains(*c))) {
        return Err(IdError::BadChar { kind, found, allowed: punct });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $max:expr, $punct:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `s`.
            pub fn new(s: impl AsRef<str>) -> Result<Self, IdError> {
                let s = s.as_ref();
                Self::check(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// Whether `s` is a valid value (what [`Self::new`] checks, without making one).
            pub fn check(s: &str) -> Result<(), IdError> {
                validate($kind, s, Self::MAX_LEN, $punct)
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A user: the account a principal authenticates as. 1–64 bytes of `[A-Za-z0-9-_.@]`.
    UserId, "user id", 64, NAME_PUNCT
);
name_id!(
    /// One device of a user (a phone, a browser profile). 1–64 bytes of `[A-Za-z0-9-_.@]`.
    DeviceId, "device id", 64, NAME_PUNCT
);
name_id!(
    /// The sender's own id for a message, used to make sends idempotent. 1–64 bytes of `[A-Za-z0-9-_.:]`.
    ClientMsgId, "client message id", 64, "-_.:"
);
name_id!(
    /// The name part of a group or topic channel. 1–100 bytes of `[A-Za-z0-9-_.@]`.
    ChannelName, "channel name", 100, NAME_PUNCT
);

/// One live connection of one device, assigned by the server.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

/// The server's id for a stored message: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub uuid::Uuid);

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

/// What kind of conversation a channel is; it is the prefix of the [`ChannelId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// A direct conversation between exactly two users: `dm:<a>:<b>` with `a < b`.
    Direct,
    /// A group conversation with an explicit member list: `group:<name>`.
    Group,
    /// A broadcast topic: members read, only the application publishes: `topic:<name>`.
    Topic,
    /// A user's own channel (notifications, sync between the user's devices): `user:<user>`.
    User,
}

impl ChannelKind {
    /// The id prefix, without the colon.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Direct => "dm",
            Self::Group => "group",
            Self::Topic => "topic",
            Self::User => "user",
        }
    }
}

/// A channel: the unit of ordering, history and subscription.
///
/// The textual form is `kind:rest`:
/// - `dm:<user>:<user>` — the two user ids in ascending byte order (use [`ChannelId::direct`]);
/// - `group:<name>`, `topic:<name>` — a [`ChannelName`];
/// - `user:<user>` — a [`UserId`].
///
/// At most [`ChannelId::MAX_LEN`] bytes in all.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    raw: Arc<str>,
    kind: ChannelKind,
}

impl ChannelId {
    /// The longest accepted value, in bytes.
    pub const MAX_LEN: usize = 140;

    /// Parses and validates a channel id.
    pub fn new(s: impl AsRef<str>) -> Result<Self, IdError> {
        let s = s.as_ref();
        if s.is_empty() {
            return Err(IdError::Empty { kind: "channel id" });
        }
        if s.len() > Self::MAX_LEN {
            return Err(IdError::TooLong { kind: "channel id", len: s.len(), max: Self::MAX_LEN });
        }
        let bad = || IdError::BadChannel(s.chars().take(Self::MAX_LEN).collect());
        let (prefix, rest) = s.split_once(':').ok_or_else(bad)?;
        let kind = match prefix {
            "dm" => {
                let (a, b) = rest.split_once(':').ok_or_else(bad)?;
                UserId::check(a)?;
                UserId::check(b)?;
                if a >= b {
                    return Err(bad());
                }
                ChannelKind::Direct
            }
            "group" => {
                ChannelName::check(rest)?;
                ChannelKind::Group
            }
            "topic" => {
                ChannelName::check(rest)?;
                ChannelKind::Topic
            }
            "user" => {
                UserId::check(rest)?;
                ChannelKind::User
            }
            _ => return Err(bad()),
        };
        Ok(Self { raw: Arc::from(s), kind })
    }

    /// The direct conversation between `a` and `b` (in either order). `None` when `a == b`.
    pub fn direct(a: &UserId, b: &UserId) -> Option<Self> {
        let (lo, hi) = match a.cmp(b) {
            std::cmp::Ordering::Less => (a, b),
            std::cmp::Ordering::Greater => (b, a),
            std::cmp::Ordering::Equal => return None,
        };
        Some(Self { raw: Arc::from(format!("dm:{lo}:{hi}")), kind: ChannelKind::Direct })
    }

    /// The group channel with this name.
    pub fn group(name: &ChannelName) -> Self {
        Self { raw: Arc::from(format!("group:{name}")), kind: ChannelKind::Group }
    }

    /// The topic channel with this name.
    pub fn topic(name: &ChannelName) -> Self {
        Self { raw: Arc::from(format!("topic:{name}")), kind: ChannelKind::Topic }
    }

    /// The user's own channel.
    pub fn user(user: &UserId) -> Self {
        Self { raw: Arc::from(format!("user:{user}")), kind: ChannelKind::User }
    }

    /// What kind of channel this is.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// [`Self::implied_members`] as string slices of the id (validated when the id was made): no allocation.
    pub fn implied_member_names(&self) -> Option<(&str, &str)> {
        match self.kind {
            ChannelKind::Direct => self.raw.strip_prefix("dm:")?.split_once(':'),
            ChannelKind::User => {
                let u = self.raw.strip_prefix("user:")?;
                Some((u, u))
            }
            _ => None,
        }
    }

    /// For a direct channel, its two users; for a user channel, its owner twice; otherwise `None`.
    pub fn implied_members(&self) -> Option<(UserId, UserId)> {
        let (a, b) = self.implied_member_names()?;
        let a = UserId::new(a).ok()?;
        let b = if self.kind == ChannelKind::User { a.clone() } else { UserId::new(b).ok()? };
        Some((a, b))
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({:?})", &*self.raw)
    }
}

impl std::str::FromStr for ChannelId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl Serialize for ChannelId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for ChannelId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&*s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_validated() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("a.b-c_d@e").is_ok());
        assert_eq!(UserId::new(""), Err(IdError::Empty { kind: "user id" }));
        assert!(matches!(UserId::new("a".repeat(65)), Err(IdError::TooLong { len: 65, max: 64, .. })));
        assert!(matches!(UserId::new("al ice"), Err(IdError::BadChar { found: ' ', .. })));
        assert!(matches!(UserId::new("a:b"), Err(IdError::BadChar { found: ':', .. })));
        assert!(matches!(UserId::new("é"), Err(IdError::BadChar { .. })));
    }

    #[test]
    fn channel_ids_parse_by_kind() {
        assert_eq!(ChannelId::new("dm:alice:bob").map(|c| c.kind()), Ok(ChannelKind::Direct));
        assert_eq!(ChannelId::new("group:team-1").map(|c| c.kind()), Ok(ChannelKind::Group));
        assert_eq!(ChannelId::new("topic:news").map(|c| c.kind()), Ok(ChannelKind::Topic));
        assert_eq!(ChannelId::new("user:alice").map(|c| c.kind()), Ok(ChannelKind::User));
        // Direct ids are canonical: sorted and distinct.
        assert!(ChannelId::new("dm:bob:alice").is_err());
        assert!(ChannelId::new("dm:alice:alice").is_err());
        assert!(ChannelId::new("dm:alice").is_err());
        assert!(ChannelId::new("room:x").is_err());
        assert!(ChannelId::new("group:").is_err());
        assert!(ChannelId::new("group:a b").is_err());
        assert!(ChannelId::new("nocolon").is_err());
        assert!(ChannelId::new("x".repeat(200)).is_err());
    }

    #[test]
    fn direct_is_order_independent() {
        let a = UserId::new("alice").unwrap_or_else(|e| panic!("{e}"));
        let b = UserId::new("bob").unwrap_or_else(|e| panic!("{e}"));
        let ab = ChannelId::direct(&a, &b);
        assert_eq!(ab, ChannelId::direct(&b, &a));
        assert_eq!(ab.as_ref().map(|c| c.as_str()), Some("dm:alice:bob"));
        assert_eq!(ChannelId::direct(&a, &a), None);
        assert_eq!(ab.as_ref().and_then(|c| c.implied_member_names()), Some(("alice", "bob")));
        assert_eq!(ab.and_then(|c| c.implied_members()), Some((a, b)));
        let own = ChannelId::new("user:carol").ok();
        assert_eq!(own.as_ref().and_then(|c| c.implied_member_names()), Some(("carol", "carol")));
        assert_eq!(ChannelId::new("group:g").ok().and_then(|c| c.implied_member_names().map(|_| ())), None);
    }

    #[test]
    fn ids_round_trip_through_json() {
        let c: ChannelId = serde_json::from_str("\"group:g1\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::to_string(&c).ok().as_deref(), Some("\"group:g1\""));
        let err = serde_json::from_str::<ChannelId>("\"group:bad name\"");
        assert!(err.is_err());
    }
}
