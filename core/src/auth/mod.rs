//! Authentication (who is this?) and authorization (may they do this on this channel?).
//!
//! - [`Auth`] turns credentials into a [`Principal`]. Implementations: [`JwtAuth`] (HS256, RS256, ES256,
//!   EdDSA) and [`StaticTokens`] (development).
//! - [`Authorizer`] decides each action on each channel. The default, [`MembersOnly`], lets only members
//!   read or write a channel (see its docs for the per-kind rules).

use std::sync::Arc;

use async_trait::async_trait;

use crate::id::{ChannelId, ChannelKind};
use crate::model::Principal;
use crate::status::{Code, Status};
use crate::store::{Store, StoreError};

mod jwt;
mod static_tokens;

pub use jwt::{JwtAuth, JwtConfigError, JwtKey, TokenClaims, mint_hs256};
pub use static_tokens::StaticTokens;

/// Credentials presented by a client.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A bearer token (a JWT or a static token).
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log secrets.
        match self {
            Self::Bearer(t) => write!(f, "Bearer(<{} bytes>)", t.len()),
        }
    }
}

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials were presented.
    #[error("no credentials")]
    Missing,
    /// The token is not well-formed (not a JWT, bad base64, bad JSON, unknown or forbidden algorithm).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify, or the token was signed with an algorithm this server does not accept.
    #[error("invalid signature")]
    BadSignature,
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// A claim is missing or wrong (`iss`, `aud`, `sub`, ...).
    #[error("invalid claim: {0}")]
    InvalidClaim(String),
    /// The token is unknown (static tokens) or revoked.
    #[error("unknown token")]
    Unknown,
    /// The authentication backend could not be reached.
    #[error("authentication backend unavailable")]
    Unavailable,
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable => Status::new(Code::Unavailable, "authentication backend unavailable"),
            other => Status::new(Code::Unauthenticated, other.to_string()),
        }
    }
}

/// Authenticates credentials into a principal.
#[async_trait]
pub trait Auth: Send + Sync + 'static {
    /// Checks `credentials` and returns who they belong to.
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError>;
}

#[async_trait]
impl<T: Auth + ?Sized> Auth for Arc<T> {
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
        (**self).authenticate(credentials).await
    }
}

/// What a principal wants to do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Subscribe, read history, ack and mark read (what one can read, one can acknowledge).
    Read,
    /// Send, edit, recall, signal typing.
    Write,
    /// Create the channel.
    Create,
}

/// Why authorization failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// The principal may not do this.
    #[error("{0}")]
    Denied(String),
    /// The decision needed the store, which failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AuthzError> for Status {
    fn from(e: AuthzError) -> Self {
        match e {
            AuthzError::Denied(m) => Status::forbidden(m),
            AuthzError::Store(s) => s.into(),
        }
    }
}

/// Decides whether a principal may perform an action on a channel.
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(())` to allow; [`AuthzError::Denied`] to refuse.
    async fn authorize(&self, who: &Principal, action: Action, channel: &ChannelId) -> Result<(), AuthzError>;
}

/// The default policy: only members read or write a channel.
///
/// | kind | read | write | create (by a client) |
/// |---|---|---|---|
/// | `dm:a:b` | a, b | a, b | a, b (implicitly, on first use) |
/// | `group:*` | members | members | any authenticated user (becomes a member) |
/// | `topic:*` | members | nobody (the application publishes) | nobody |
/// | `user:u` | u | nobody (the application publishes) | nobody |
#[derive(Clone)]
pub struct MembersOnly {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for MembersOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembersOnly").finish_non_exhaustive()
    }
}

impl MembersOnly {
    /// The policy, reading membership from `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

fn denied(action: Action, channel: &ChannelId) -> AuthzError {
    let verb = match action {
        Action::Read => "read",
        Action::Write => "write to",
        Action::Create => "create",
    };
    AuthzError::Denied(format!("not allowed to {verb} {channel}"))
}

#[async_trait]
impl Authorizer for MembersOnly {
    async fn authorize(&self, who: &Principal, action: Action, channel: &ChannelId) -> Result<(), AuthzError> {
        let allowed = match (channel.kind(), action) {
            (ChannelKind::Direct, _) => {
                channel.implied_member_names().is_some_and(|(a, b)| a == who.user.as_str() || b == who.user.as_str())
            }
            (ChannelKind::User, Action::Read) => {
                channel.implied_member_names().is_some_and(|(u, _)| u == who.user.as_str())
            }
            (ChannelKind::User | ChannelKind::Topic, Action::Write | Action::Create) => false,
            (ChannelKind::Group, Action::Create) => true,
            (ChannelKind::Group, _) | (ChannelKind::Topic, Action::Read) => {
                self.store.is_member(channel, &who.user).await?
            }
        };
        if allowed { Ok(()) } else { Err(denied(action, channel)) }
    }
}

/// A policy that allows everything: for tests and trusted server-side bots only.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl Authorizer for AllowAll {
    async fn authorize(&self, _: &Principal, _: Action, _: &ChannelId) -> Result<(), AuthzError> {
        Ok(())
    }
}
