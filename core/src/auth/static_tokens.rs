//! Static development tokens: a fixed map from bearer token to user (and optionally device).
//!
//! Lookups do not compare the presented token byte by byte against stored tokens with an early exit: tokens are
//! bucketed by a hash keyed with a per-instance random key (unknown to clients), and the candidates of a bucket are
//! compared in constant time. Only the token's length can influence timing. Tokens are never logged or printed.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};

use async_trait::async_trait;

use super::{Auth, AuthError, Credentials};
use crate::id::{DeviceId, UserId};
use crate::model::Principal;

#[derive(Clone)]
struct Entry {
    token: Box<[u8]>,
    user: UserId,
    device: Option<DeviceId>,
}

/// A fixed map from token to user (and optionally device), for development and tests. Principals never expire.
///
/// ```
/// # use herald_core::auth::StaticTokens;
/// # use herald_core::id::UserId;
/// # fn main() -> Result<(), herald_core::id::IdError> {
/// let mut tokens = StaticTokens::new();
/// tokens.insert("alice-token", UserId::new("alice")?);
/// let tokens: StaticTokens = [("bob-token".to_owned(), UserId::new("bob")?)].into_iter().collect();
/// # let _ = tokens; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct StaticTokens {
    /// Keyed hash of the token -> the entries with that hash.
    buckets: HashMap<u64, Vec<Entry>>,
    hasher: RandomState,
    len: usize,
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print tokens.
        f.debug_struct("StaticTokens").field("tokens", &self.len).finish_non_exhaustive()
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The entry for `token` among `candidates` (entries whose keyed hash equals the token's). Every candidate is
/// compared, without early exit.
fn find<'a>(candidates: &'a [Entry], token: &[u8]) -> Option<&'a Entry> {
    let mut found = None;
    for entry in candidates {
        if constant_time_eq(&entry.token, token) {
            found = Some(entry);
        }
    }
    found
}

impl StaticTokens {
    /// An empty map (which accepts nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `token` to `user` (with no device), replacing any earlier mapping of `token`.
    /// An empty token is stored but never accepted (it authenticates as [`AuthError::Missing`]).
    pub fn insert(&mut self, token: impl Into<String>, user: UserId) -> &mut Self {
        self.put(token.into(), user, None)
    }

    /// Maps `token` to `user` on `device`, replacing any earlier mapping of `token`.
    pub fn insert_with_device(&mut self, token: impl Into<String>, user: UserId, device: DeviceId) -> &mut Self {
        self.put(token.into(), user, Some(device))
    }

    fn put(&mut self, token: String, user: UserId, device: Option<DeviceId>) -> &mut Self {
        let hash = self.hasher.hash_one(token.as_bytes());
        let bucket = self.buckets.entry(hash).or_default();
        let entry = Entry { token: token.into_bytes().into_boxed_slice(), user, device };
        match bucket.iter_mut().find(|e| constant_time_eq(&e.token, &entry.token)) {
            Some(existing) => *existing = entry,
            None => {
                bucket.push(entry);
                self.len += 1;
            }
        }
        self
    }

    /// How many tokens are mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no token is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn lookup(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let hash = self.hasher.hash_one(token.as_bytes());
        let candidates = self.buckets.get(&hash).map(Vec::as_slice).unwrap_or_default();
        find(candidates, token.as_bytes())
            .map(|e| Principal { user: e.user.clone(), device: e.device.clone(), expires_at: None })
            .ok_or(AuthError::Unknown)
    }
}

impl FromIterator<(String, UserId)> for StaticTokens {
    fn from_iter<I: IntoIterator<Item = (String, UserId)>>(iter: I) -> Self {
        let mut tokens = Self::new();
        tokens.extend(iter);
        tokens
    }
}

impl Extend<(String, UserId)> for StaticTokens {
    fn extend<I: IntoIterator<Item = (String, UserId)>>(&mut self, iter: I) {
        for (token, user) in iter {
            self.insert(token, user);
        }
    }
}

#[async_trait]
impl Auth for StaticTokens {
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
        match credentials {
            Credentials::Bearer(token) => self.lookup(token),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("user id")
    }

    async fn check(tokens: &StaticTokens, token: &str) -> Result<Principal, AuthError> {
        tokens.authenticate(&Credentials::Bearer(token.to_owned())).await
    }

    #[tokio::test]
    async fn known_tokens_authenticate() {
        let mut tokens = StaticTokens::new();
        tokens.insert("t-alice", user("alice")).insert("t-bob", user("bob"));
        tokens.insert_with_device("t-phone", user("alice"), DeviceId::new("phone").expect("device id"));
        assert_eq!(tokens.len(), 3);

        let p = check(&tokens, "t-alice").await.expect("known");
        assert_eq!((p.user.as_str(), p.device, p.expires_at), ("alice", None, None));
        assert_eq!(check(&tokens, "t-bob").await.map(|p| p.user), Ok(user("bob")));
        let p = check(&tokens, "t-phone").await.expect("known");
        assert_eq!(p.user, user("alice"));
        assert_eq!(p.device.as_ref().map(DeviceId::as_str), Some("phone"));
    }

    #[tokio::test]
    async fn unknown_and_empty_tokens_are_refused() {
        let tokens: StaticTokens = [("t-alice".to_owned(), user("alice"))].into_iter().collect();
        assert_eq!(check(&tokens, "t-alic").await, Err(AuthError::Unknown));
        assert_eq!(check(&tokens, "t-alicE").await, Err(AuthError::Unknown));
        assert_eq!(check(&tokens, "t-alice ").await, Err(AuthError::Unknown));
        assert_eq!(check(&tokens, "").await, Err(AuthError::Missing));
        assert_eq!(check(&StaticTokens::new(), "t-alice").await, Err(AuthError::Unknown));

        let mut with_empty = StaticTokens::new();
        with_empty.insert("", user("alice"));
        assert_eq!(check(&with_empty, "").await, Err(AuthError::Missing));
    }

    #[tokio::test]
    async fn reinserting_replaces() {
        let mut tokens = StaticTokens::new();
        tokens.insert("t", user("alice"));
        tokens.insert("t", user("bob"));
        assert_eq!(tokens.len(), 1);
        assert_eq!(check(&tokens, "t").await.map(|p| p.user), Ok(user("bob")));
    }

    #[tokio::test]
    async fn many_tokens() {
        let tokens: StaticTokens = (0..1000).map(|i| (format!("token-{i}"), user(&format!("u{i}")))).collect();
        assert_eq!(tokens.len(), 1000);
        for i in [0, 1, 499, 999] {
            assert_eq!(check(&tokens, &format!("token-{i}")).await.map(|p| p.user), Ok(user(&format!("u{i}"))));
        }
        assert_eq!(check(&tokens, "token-1000").await, Err(AuthError::Unknown));
    }

    #[test]
    fn debug_does_not_print_tokens() {
        let mut tokens = StaticTokens::new();
        tokens.insert("super-secret-token", user("alice"));
        let shown = format!("{tokens:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(!shown.contains("alice"), "{shown}");
    }

    #[test]
    fn find_picks_the_matching_candidate() {
        // As if all three tokens had the same hash.
        let entry = |t: &str, u: &str| Entry { token: t.as_bytes().into(), user: user(u), device: None };
        let bucket = [entry("t-1", "a"), entry("t-2", "b"), entry("t-3", "c")];
        for (token, expected) in [("t-1", "a"), ("t-2", "b"), ("t-3", "c")] {
            assert_eq!(find(&bucket, token.as_bytes()).map(|e| e.user.as_str()), Some(expected));
        }
        assert!(find(&bucket, b"t-4").is_none());
        assert!(find(&[], b"t-1").is_none());
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"xbc", b"abc"));
    }
}
